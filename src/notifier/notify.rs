//! `notify`: waits for the wrapped step, decides success or failure, and sends at most one
//! notification per pod, also across restarts of the notifier.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use tracing::{info, warn};

use crate::contract::{BackupKind, Outcome, Payload};

use super::deliver::{Client, deliver_logged};
use super::exec::signal_name;
use super::files::StepFiles;
use super::result::{StepResult, now_rfc3339};
use super::wait::{Mode, TermSignals, Trigger, wait_for_retry, wait_for_step};

/// Everything `notify` needs besides the client.
#[derive(Clone, Debug)]
pub struct NotifyConfig {
    pub kind: BackupKind,
    pub host: String,
    pub volume: String,
    pub success_url: Option<String>,
    pub failure_url: Option<String>,
    pub files: StepFiles,
    pub mode: Mode,
    /// The pod's restartPolicy is OnFailure: the kubelet reruns a failed backup container in
    /// the same pod, so only SIGTERM (the Job gave up on the pod) makes a failure final.
    pub retried_in_place: bool,
}

impl NotifyConfig {
    pub fn url_for(&self, outcome: Outcome) -> Option<&str> {
        match outcome {
            Outcome::Success => self.success_url.as_deref(),
            Outcome::Failure => self.failure_url.as_deref(),
        }
    }
}

/// The whole of `notify` once the configuration is valid. Never fails: delivery must not change
/// the Job's outcome, so every problem ends up as a log line.
pub async fn run(cfg: &NotifyConfig, client: &Client, signals: &mut TermSignals) {
    let mut trigger = wait_for_step(&cfg.files, cfg.mode, signals).await;
    let (outcome, why) = loop {
        let read = StepResult::read(&cfg.files.result);
        // What a retry must differ from; an unreadable result is nothing to compare with.
        let failed = read.as_ref().ok().cloned().flatten();
        let (outcome, why) = decide(read, trigger);
        if !(cfg.retried_in_place && trigger == Trigger::Finished && outcome == Outcome::Failure) {
            break (outcome, why);
        }
        info!(
            "backup attempt {why}; the pod's restartPolicy is OnFailure, so the kubelet runs it \
             again: waiting for that attempt (or for the Job to stop the pod) before sending"
        );
        trigger = match wait_for_retry(&cfg.files, failed.as_ref(), signals).await {
            Some(terminated) => terminated,
            None => wait_for_step(&cfg.files, cfg.mode, signals).await,
        };
    };
    info!(outcome = outcome.as_str(), "backup {why}");
    send_once(cfg, client, outcome).await;
    if cfg.mode == Mode::Sidecar && trigger == Trigger::Finished {
        // A native sidecar that exits is restarted by the kubelet; it stays until the pod ends.
        signals.recv().await;
    }
}

/// Success if and only if a result was read and its exit code is 0.
fn decide(read: anyhow::Result<Option<StepResult>>, trigger: Trigger) -> (Outcome, String) {
    match read {
        Ok(Some(r)) => (r.outcome(), describe(&r)),
        Ok(None) => (
            Outcome::Failure,
            match trigger {
                Trigger::Finished => "command ended without recording a result (the wrapper was \
                                      killed, e.g. by the OOM killer)"
                    .to_owned(),
                Trigger::Terminated(sig) => {
                    format!("command recorded no result by the time {sig} arrived")
                }
            },
        ),
        Err(e) => (Outcome::Failure, format!("result is unusable: {e:#}")),
    }
}

fn describe(r: &StepResult) -> String {
    match (r.signal, &r.error) {
        (_, Some(err)) => format!("command could not start (exit code {}): {err}", r.exit_code),
        (Some(sig), None) => format!(
            "command was killed by {} (exit code {})",
            signal_name(sig),
            r.exit_code
        ),
        (None, None) => format!("command exited with code {}", r.exit_code),
    }
}

/// What claiming the sent-marker found.
#[derive(Debug)]
pub enum Claim {
    /// This process created the marker: it may send.
    Claimed,
    /// The marker was there already: a notification was sent (or begun) before.
    AlreadySent,
    /// The marker could not be created for another reason.
    Unavailable(io::Error),
}

/// Creates `path` with O_CREAT|O_EXCL, which succeeds for exactly one caller, ever. Claimed
/// before sending, so a notifier killed mid-send does not send again when restarted: at most
/// once, and once in every run that reaches this point.
pub fn claim_marker(path: &Path, outcome: Outcome) -> Claim {
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
    {
        Ok(mut f) => {
            // For people looking at the volume; nothing reads it back.
            let _ = writeln!(
                f,
                "{{\"status\":\"{}\",\"claimed_at\":\"{}\"}}",
                outcome.as_str(),
                now_rfc3339()
            );
            Claim::Claimed
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Claim::AlreadySent,
        Err(e) => Claim::Unavailable(e),
    }
}

/// Sends the notification for `outcome` unless its URL is unset or one was already sent.
pub async fn send_once(cfg: &NotifyConfig, client: &Client, outcome: Outcome) {
    let Some(url) = cfg.url_for(outcome) else {
        info!(
            outcome = outcome.as_str(),
            "no {} URL configured; nothing sent",
            outcome.as_str()
        );
        return;
    };
    match claim_marker(&cfg.files.sent, outcome) {
        Claim::Claimed => {}
        Claim::AlreadySent => {
            info!(
                outcome = outcome.as_str(),
                "a notification for this backup was already sent ({} exists); not sending again",
                cfg.files.sent.display()
            );
            return;
        }
        Claim::Unavailable(e) => warn!(
            "cannot create {}: {e}; sending anyway, but a restarted notifier could send again",
            cfg.files.sent.display()
        ),
    }
    let payload = Payload::new(cfg.kind, outcome, &cfg.host, &cfg.volume);
    let _ = deliver_logged(client, url, &payload).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_claimed_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.sent");
        assert!(matches!(claim_marker(&p, Outcome::Success), Claim::Claimed));
        assert!(matches!(
            claim_marker(&p, Outcome::Success),
            Claim::AlreadySent
        ));
        assert!(matches!(
            claim_marker(&dir.path().join("missing/r.sent"), Outcome::Success),
            Claim::Unavailable(_)
        ));
    }

    #[test]
    fn no_result_is_a_failure_and_exit_code_zero_alone_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let files = StepFiles::for_result(dir.path().join("r.json"));
        assert_eq!(
            decide(StepResult::read(&files.result), Trigger::Finished).0,
            Outcome::Failure
        );
        assert_eq!(
            decide(
                StepResult::read(&files.result),
                Trigger::Terminated("SIGTERM")
            )
            .0,
            Outcome::Failure
        );
        let mut r = StepResult {
            exit_code: 0,
            signal: None,
            started_at: now_rfc3339(),
            finished_at: now_rfc3339(),
            error: None,
        };
        r.write(&files.result).unwrap();
        assert_eq!(
            decide(StepResult::read(&files.result), Trigger::Finished).0,
            Outcome::Success
        );
        r.exit_code = 1;
        r.write(&files.result).unwrap();
        assert_eq!(
            decide(
                StepResult::read(&files.result),
                Trigger::Terminated("SIGTERM")
            )
            .0,
            Outcome::Failure
        );
    }
}
