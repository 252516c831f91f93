//! The result file: how the wrapped command ended, as `exec` records it and `notify` reads it.
//!
//! ```json
//! {"exit_code":137,"signal":9,"started_at":"2025-01-01T02:00:00.000Z","finished_at":"2025-01-01T02:41:07.512Z"}
//! ```
//!
//! `error` is present when the command could not be started at all (exit code 126 or 127).

use std::io;
use std::path::Path;

use anyhow::Context;
use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::Outcome;

use super::files::write_atomically;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    /// What `exec` exited with: the command's own code, 128+signal when a signal killed it, or
    /// 126/127 when it could not be started.
    pub exit_code: i32,
    /// The signal that killed the command, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    /// Why the command could not be started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepResult {
    /// Success if and only if the recorded exit code is 0.
    pub fn outcome(&self) -> Outcome {
        if self.exit_code == 0 {
            Outcome::Success
        } else {
            Outcome::Failure
        }
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let json = serde_json::to_vec(self).context("serialising the result")?;
        write_atomically(path, &json, 0o644)
            .with_context(|| format!("writing the result file {}", path.display()))
    }

    /// `Ok(None)` when there is no result file.
    pub fn read(path: &Path) -> anyhow::Result<Option<StepResult>> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("reading the result file {}", path.display()));
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .with_context(|| format!("the result file {} is not valid", path.display()))
    }
}

/// Now, in the format of the result file's timestamps.
pub fn now_rfc3339() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_decides_by_exit_code_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        assert_eq!(StepResult::read(&p).unwrap(), None);
        let r = StepResult {
            exit_code: 137,
            signal: Some(9),
            started_at: now_rfc3339(),
            finished_at: now_rfc3339(),
            error: None,
        };
        r.write(&p).unwrap();
        let back = StepResult::read(&p).unwrap().unwrap();
        assert_eq!(back, r);
        assert_eq!(back.outcome(), Outcome::Failure);
        let ok = StepResult {
            exit_code: 0,
            signal: None,
            ..r
        };
        assert_eq!(ok.outcome(), Outcome::Success);
    }

    #[test]
    fn a_corrupt_result_is_an_error_not_a_success() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("result.json");
        std::fs::write(&p, b"{\"exit_code\":").unwrap();
        assert!(StepResult::read(&p).is_err());
    }
}
