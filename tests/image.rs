//! The container image, built from this tree by `tools/image build` and used the way a cluster
//! uses it: the operator as uid 65532 with the Deployment's restrictions, the manifests it
//! prints, and the notifier-install init container copying a static notifier that then runs in
//! an unrelated image.
//!
//! The image is built with podman on local stand-in base images (docker.io and gcr.io cannot be
//! reached where this runs; see tools/image). Needs root, podman, runc and the stand-ins:
//! `tools/image setup && tools/image stand-ins`, which tools/test does. The first build takes about
//! 14 minutes on two cores; afterwards podman's layer and cargo caches make it incremental.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use backup_operator::contract::pod;

const TAG: &str = "localhost/backup-operator:image-test";
/// tools/image's Debian stand-in: glibc, but no musl, so only a static binary runs in it.
const DEBIAN: &str = "localhost/backup-operator-stand-in/debian:bookworm";
const OPERATOR_BIN: &str = "/usr/local/bin/backup-operator";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The restrictions of the Deployment's and the injected containers' securityContext that
/// podman can express.
const RESTRICTED: [&str; 3] = [
    "--read-only",
    "--cap-drop=all",
    "--security-opt=no-new-privileges",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tools_image() -> Command {
    Command::new(repo().join("tools/image"))
}

/// Builds the image once for all tests of this binary; a failed build fails each of them with
/// the tool's stderr instead of building again.
fn image() -> &'static str {
    static BUILT: OnceLock<Result<String, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(tag) => tag,
        Err(e) => panic!("{e}"),
    }
}

/// Streams the build's progress (visible with --nocapture) and keeps it for the failure message.
fn build() -> Result<String, String> {
    let mut child = tools_image()
        .args(["build", TAG])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run tools/image: {e}"))?;
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.map_err(|e| format!("reading tools/image's stderr: {e}"))?;
        eprintln!("{line}");
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "tools/image build {TAG} failed ({}):\n{stderr}",
            out.status
        ));
    }
    let printed = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if printed != TAG {
        return Err(format!("tools/image build printed {printed:?}, not {TAG}"));
    }
    Ok(printed)
}

/// podman with tools/image's configuration (runc, capped ulimits).
fn podman(args: &[&str]) -> Output {
    tools_image()
        .arg("podman")
        .args(args)
        .output()
        .expect("running tools/image podman")
}

fn podman_ok(args: &[&str]) -> Vec<u8> {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `podman run --rm` without network and with the restricted security context.
fn run(image: &str, extra: &[&str], args: &[&str]) -> String {
    let mut all = vec!["run", "--rm", "--network=none"];
    all.extend(RESTRICTED);
    all.extend(extra);
    all.push(image);
    all.extend(args);
    String::from_utf8(podman_ok(&all)).unwrap()
}

#[test]
fn image_config_runs_the_operator_as_65532() {
    let tag = image();
    let inspect: serde_json::Value =
        serde_json::from_slice(&podman_ok(&["image", "inspect", tag])).unwrap();
    let config = &inspect[0]["Config"];
    assert_eq!(config["User"], "65532:65532", "{config:#}");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!([OPERATOR_BIN]),
        "{config:#}"
    );
    assert_eq!(config["Cmd"][0], "serve", "{config:#}");
}

#[test]
fn both_binaries_run_as_non_root_with_the_restricted_context() {
    let tag = image();
    // No --user: the image's own USER applies, as it does in the cluster.
    assert_eq!(
        run(tag, &[], &["--version"]).trim(),
        format!("backup-operator {VERSION}")
    );
    let help = run(tag, &[], &["--help"]);
    assert!(help.contains("serve"), "{help}");
    let notifier = ["--entrypoint", pod::IMAGE_BIN];
    assert_eq!(
        run(tag, &notifier, &["--version"]).trim(),
        format!("backup-notifier {VERSION}")
    );
    let help = run(tag, &notifier, &["--help"]);
    assert!(help.contains("install"), "{help}");
}

#[test]
fn manifests_printed_by_the_image_are_the_committed_ones() {
    let tag = image();
    for (args, file) in [
        ("crds", "manifests/crds/crds.yaml"),
        ("webhooks", "manifests/install/webhooks.yaml"),
    ] {
        let committed = std::fs::read_to_string(repo().join(file)).unwrap();
        assert!(
            run(tag, &[], &[args]) == committed,
            "`podman run {tag} {args}` differs from {file}"
        );
    }
}

/// The init container's exact command (see `inject::install_container`) into a volume that is
/// world-writable like an emptyDir; then the copy runs in Debian, which has no musl.
#[test]
fn the_notifier_installs_into_a_volume_and_runs_in_another_image() {
    let tag = image();
    let volume = tempfile::tempdir().unwrap();
    std::fs::set_permissions(volume.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let mount = format!("{}:{}", volume.path().display(), pod::MOUNT_PATH);

    run(
        tag,
        &["-v", &mount, "--entrypoint", pod::IMAGE_BIN],
        &["install", pod::INSTALLED_BIN],
    );
    let installed = volume.path().join("backup-notifier");
    let meta = std::fs::metadata(&installed).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o755, "{}", installed.display());
    // Rootful podman maps no uids: the owner is the uid the container really ran as.
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        copy_out(tag, pod::IMAGE_BIN),
        "the installed notifier is not the image's binary"
    );

    let no_musl = podman(&[
        "run",
        "--rm",
        "--network=none",
        DEBIAN,
        "test",
        "!",
        "-e",
        "/lib/ld-musl-x86_64.so.1",
    ]);
    assert!(
        no_musl.status.success(),
        "{DEBIAN} has a musl loader, so it cannot tell a static binary from a dynamic musl one"
    );
    let ran = run(
        DEBIAN,
        &["-v", &format!("{mount}:ro"), "--user", "65532:65532"],
        &[pod::INSTALLED_BIN, "--version"],
    );
    assert_eq!(ran.trim(), format!("backup-notifier {VERSION}"));
}

#[test]
fn both_binaries_in_the_image_are_static() {
    let this_test = std::fs::read(std::env::current_exe().unwrap()).unwrap();
    assert!(
        has_interpreter(&this_test),
        "the PT_INTERP check misses the dynamic loader of this (dynamically linked) test binary"
    );
    let tag = image();
    for bin in [OPERATOR_BIN, pod::IMAGE_BIN] {
        let elf = copy_out(tag, bin);
        assert!(
            !has_interpreter(&elf),
            "{bin} in {tag} has a PT_INTERP program header: it is dynamically linked"
        );
    }
}

/// A file of the image, through a created (never started) container that is removed again.
fn copy_out(tag: &str, path: &str) -> Vec<u8> {
    struct Created(String);
    impl Drop for Created {
        fn drop(&mut self) {
            let _ = podman(&["rm", "--force", &self.0]);
        }
    }
    let id = String::from_utf8(podman_ok(&["create", tag])).unwrap();
    let container = Created(id.trim().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let dest: PathBuf = dir.path().join("copy");
    podman_ok(&[
        "cp",
        &format!("{}:{path}", container.0),
        dest.to_str().unwrap(),
    ]);
    std::fs::read(&dest).unwrap()
}

/// Whether a 64-bit little-endian ELF file asks for a dynamic loader (a PT_INTERP header).
fn has_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    assert!(
        elf.len() >= 64 && elf[..4] == *b"\x7fELF" && elf[4] == 2 && elf[5] == 1,
        "not a 64-bit little-endian ELF file"
    );
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    (0..phnum).any(|i| {
        let at = phoff + i * phentsize;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == PT_INTERP
    })
}
