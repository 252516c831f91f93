//! The generated files under manifests/ are exactly what the binary prints: regenerate them with
//! `backup-operator crds > manifests/crds/crds.yaml` and
//! `backup-operator webhooks > manifests/install/webhooks.yaml`.

use std::process::Command;

const OPERATOR: &str = env!("CARGO_BIN_EXE_backup-operator");

fn assert_generated(args: &[&str], file: &str) {
    let out = Command::new(OPERATOR).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        String::from_utf8(out.stdout).unwrap() == committed,
        "{file} drifted from `backup-operator {}`; regenerate it: backup-operator {} > {file}",
        args.join(" "),
        args.join(" ")
    );
}

#[test]
fn crds_are_the_output_of_backup_operator_crds() {
    assert_generated(&["crds"], "manifests/crds/crds.yaml");
}

#[test]
fn webhook_configurations_are_the_output_of_backup_operator_webhooks() {
    assert_generated(&["webhooks"], "manifests/install/webhooks.yaml");
}

/// `backup-operator crds | head` is a normal thing to type: a reader that stops early is not an
/// error and must not make the binary panic.
#[test]
fn a_reader_that_closes_the_pipe_early_is_not_an_error() {
    for args in [["crds"], ["webhooks"]] {
        let mut child = Command::new(OPERATOR)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
