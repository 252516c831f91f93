//! `backup_operator::quantity` agrees with the real apiserver on resource quantities. Every
//! spelling below, fixed and generated, goes through a server-side dry run of a ResourceQuota
//! (its `spec.hard` is a resource list, decoded and defaulted like a container's requests and
//! limits). The apiserver keeps some spellings as written ("9.903k", "+1") and rewrites the
//! rest; either way what it stores must have our canonical form's value, and our canonical
//! form must come back unchanged: that is what lets the controller compare a stored CronJob
//! with the one it would apply.

mod common;

use backup_operator::quantity;
use common::cluster::kubectl_stdin;
use serde_json::{Value, json};
use testkit::control_plane::ControlPlane;

/// Standard resource names that take any non-negative quantity, fractions included.
const KEYS: [&str; 10] = [
    "cpu",
    "memory",
    "requests.cpu",
    "requests.memory",
    "limits.cpu",
    "limits.memory",
    "requests.storage",
    "ephemeral-storage",
    "requests.ephemeral-storage",
    "limits.ephemeral-storage",
];

const FIXED: [&str; 40] = [
    "0", "1", "+1", "1.5", ".5", "5.", "0.1", "0.001", "0.0001", "1.5n", "100m", "1000m", "0.1m",
    "1500m", "1u", "250u", "1k", "1000k", "2000k", "1M", "1.5G", "1T", "1P", "1E", "1Ki", "0.5Ki",
    "1.5Ki", "1023Ki", "1024Ki", "1024Mi", "1.5Gi", "2000Mi", "1.0005Ki", "7Ei", "1e3", "1E3",
    "129e6", "1500e0", "1e-12", "12e-3",
];

/// Deterministic spellings across every suffix family: 1–7 whole digits, 0–4 fraction digits.
fn generated(count: usize) -> Vec<String> {
    let suffixes = [
        "", "n", "u", "m", "k", "M", "G", "Ki", "Mi", "Gi", "Ti", "e0", "e2", "e-1", "E3", "e-7",
    ];
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
    (0..count)
        .map(|_| {
            let whole_digits = 1 + next(7) as u32;
            let whole = next(10u64.pow(whole_digits));
            let fraction = match next(5) {
                0 => String::new(),
                n => {
                    let digits = next(10u64.pow(n as u32));
                    format!(".{digits:0width$}", width = n as usize)
                }
            };
            let suffix = suffixes[next(suffixes.len() as u64) as usize];
            format!("{whole}{fraction}{suffix}")
        })
        .collect()
}

/// What the apiserver stores for each spelling, by server-side dry run.
fn stored(cp: &ControlPlane, spellings: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for chunk in spellings.chunks(KEYS.len()) {
        let hard: serde_json::Map<String, Value> = KEYS
            .iter()
            .zip(chunk)
            .map(|(k, v)| ((*k).to_owned(), json!(v)))
            .collect();
        let quota = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "quantities", "namespace": "default"},
            "spec": {"hard": hard},
        });
        let result = kubectl_stdin(
            cp,
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            &quota.to_string(),
        );
        assert!(
            result.status.success(),
            "{chunk:?}: {}",
            String::from_utf8_lossy(&result.stderr)
        );
        let back: Value = serde_json::from_slice(&result.stdout).unwrap();
        for key in KEYS.iter().take(chunk.len()) {
            out.push(back["spec"]["hard"][*key].as_str().unwrap().to_owned());
        }
    }
    out
}

#[test]
fn canonical_quantities_are_what_the_apiserver_stores() {
    let cp = ControlPlane::shared();
    let mut spellings: Vec<String> = FIXED.iter().map(|s| (*s).to_owned()).collect();
    // Beyond 2^63-1 units (a 7-digit Ti, say) is refused by design; not a spelling to compare.
    // Only those: a refusal of anything else would hide a parser that lost a whole family.
    let (taken, refused): (Vec<String>, Vec<String>) = generated(400)
        .into_iter()
        .partition(|s| quantity::canonical(s).is_ok());
    for s in &refused {
        let e = quantity::canonical(s).unwrap_err();
        assert!(e.contains("out of range"), "{s:?} refused: {e}");
    }
    spellings.extend(taken);
    assert!(spellings.len() > 400, "{} spellings", spellings.len());
    let ours: Vec<String> = spellings
        .iter()
        .map(|s| quantity::canonical(s).unwrap_or_else(|e| panic!("{s:?}: {e}")))
        .collect();
    let theirs = stored(cp, &spellings);
    let kept = stored(cp, &ours);
    let mut wrong = Vec::new();
    for (((written, ours), theirs), kept) in spellings.iter().zip(&ours).zip(&theirs).zip(&kept) {
        if quantity::canonical(theirs).as_ref() != Ok(ours) {
            wrong.push(format!(
                "{written:?}: apiserver stores {theirs:?}, ours {ours:?}"
            ));
        }
        if kept != ours {
            wrong.push(format!("{written:?}: our {ours:?} is stored as {kept:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        spellings.len(),
        wrong.join("\n")
    );
}
