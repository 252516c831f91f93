//! The generated files under manifests/ are exactly what the binary prints: regenerate them with
//! `backup-operator crds > manifests/crds/crds.yaml` and
//! `backup-operator webhooks > manifests/install/webhooks.yaml`.

use std::process::Command;

const OPERATOR: &str = env!("CARGO_BIN_EXE_backup-operator");

/// `backup-operator ARGS`, which must succeed; its stdout.
fn operator_ok(args: &[&str]) -> String {
    let out = Command::new(OPERATOR).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn assert_generated(args: &[&str], file: &str) {
    let printed = operator_ok(args);
    let path = format!("{}/{file}", env!("CARGO_MANIFEST_DIR"));
    let committed = std::fs::read_to_string(&path).unwrap();
    assert!(
        printed == committed,
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

/// The names and files these commands put into certificates and webhook configurations are
/// checked first: a bad one is refused in one line naming the flag, not written into an object
/// that then fails every call or handshake.
#[test]
fn bad_names_urls_and_bundles_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().to_str().unwrap();
    let ca_key = dir.path().join("ca.key");
    let refused: &[(&[&str], &str)] = &[
        (
            &["cert", "generate", "--out-dir", out_dir, "--dns", ""],
            "--dns",
        ),
        (
            &["cert", "generate", "--out-dir", out_dir, "--dns", "a b"],
            "--dns",
        ),
        (
            &[
                "cert",
                "generate",
                "--out-dir",
                out_dir,
                "--service",
                "svc",
                "--namespace",
                "",
            ],
            "--namespace",
        ),
        (&["webhooks", "--namespace", ""], "--namespace"),
        (&["webhooks", "--url", "foo bar"], "--url"),
        (&["webhooks", "--url", "http://127.0.0.1:8443"], "--url"),
        (
            &["webhooks", "--url", "https://u:p@127.0.0.1:8443"],
            "--url",
        ),
        (
            &[
                "serve",
                "--notifier-image",
                "",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
            ],
            "--notifier-image",
        ),
        (
            &[
                "serve",
                "--restic-image",
                "restic ",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
            ],
            "--restic-image",
        ),
        (
            &[
                "serve",
                "--identity",
                "",
                "--tls-cert",
                "c",
                "--tls-key",
                "k",
            ],
            "--identity",
        ),
        (&["serve", "--tls-secret", "Bad_Name"], "--tls-secret"),
    ];
    for (args, flag) in refused {
        let out = Command::new(OPERATOR).args(*args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        let first = stderr.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("error: invalid value") && first.contains(flag),
            "{args:?}: {stderr}"
        );
    }
    // Nothing was written by the refused `cert generate`s.
    assert!(!ca_key.exists());

    operator_ok(&[
        "cert",
        "generate",
        "--out-dir",
        out_dir,
        "--dns",
        "webhook.example.com",
    ]);
    // A second run does not replace the CA and its key unless told to.
    let first_key = std::fs::read_to_string(&ca_key).unwrap();
    let again = [
        "cert",
        "generate",
        "--out-dir",
        out_dir,
        "--dns",
        "x.example.com",
    ];
    let out = Command::new(OPERATOR).args(again).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "replaced without --force");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&ca_key).unwrap(), first_key);
    operator_ok(&[again.as_slice(), &["--force"]].concat());
    assert_ne!(std::fs::read_to_string(&ca_key).unwrap(), first_key);
    // A key is never a CA bundle.
    let out = Command::new(OPERATOR)
        .args(["webhooks", "--ca-bundle-file", ca_key.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && out.stdout.is_empty(), "{stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "backup-operator: error: {} holds no PEM certificate",
            ca_key.display()
        )
    );
    // A file with the CA and its key: only the certificate goes into caBundle.
    let ca_crt = std::fs::read_to_string(dir.path().join("ca.crt")).unwrap();
    let key = std::fs::read_to_string(&ca_key).unwrap();
    let both = dir.path().join("both.pem");
    std::fs::write(&both, format!("{ca_crt}{key}")).unwrap();
    let yaml = operator_ok(&["webhooks", "--ca-bundle-file", both.to_str().unwrap()]);
    let bundles: Vec<String> = yaml
        .lines()
        .filter_map(|l| l.trim().strip_prefix("caBundle: "))
        .map(|b64| {
            use base64::Engine;
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap();
            String::from_utf8(der).unwrap()
        })
        .collect();
    assert_eq!(
        bundles.len(),
        yaml.matches("clientConfig:").count(),
        "{yaml}"
    );
    assert!(!bundles.is_empty());
    for bundle in bundles {
        assert_eq!(bundle.replace("\r\n", "\n"), ca_crt.replace("\r\n", "\n"));
    }
}
