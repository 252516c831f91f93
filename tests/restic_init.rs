//! Backups that share a repository that does not exist yet, started at the same moment (one
//! schedule, one new repository: the first night of a typical setup), with real restic. Run at
//! once, their `restic init`s would each write a key and a config and leave a repository no key
//! opens; with the delays the controller gives them (`BACKUP_INIT_DELAY`), the first initialises
//! it and the others use it. The script is the one in the generated CronJob.

use std::path::Path;
use std::process::{Command, Output};

use backup_operator::controller::job_template::{self, JobArgs};
use backup_operator::crd::VolumeBackup;
use serde_json::json;

fn backup_script() -> String {
    let vb: VolumeBackup = serde_json::from_value(json!({
        "apiVersion": "backups.k8s.bnerd.com/v1", "kind": "VolumeBackup",
        "metadata": {"name": "nightly", "namespace": "team-a"},
        "spec": {
            "volumeClaimRef": {"name": "data"},
            "schedule": "0 3 * * *",
            "repository": {"url": "/repo", "passwordSecretRef": {"name": "restic", "key": "password"}},
        }
    }))
    .unwrap();
    let args = JobArgs {
        restic_image: "restic".into(),
        rclone_image: "rclone".into(),
        backup_deadline: std::time::Duration::ZERO,
    };
    let cj = job_template::cron_job(&vb, &args, std::time::Duration::ZERO);
    let pod = job_template::pod_spec(&cj).unwrap();
    let command = pod.containers[0].command.clone().unwrap();
    assert_eq!(command[..2], ["/bin/sh", "-c"]);
    command[2].clone()
}

fn restic(repo: &Path, args: &[&str]) -> Output {
    Command::new("restic")
        .args(args)
        .env("RESTIC_REPOSITORY", repo)
        .env("RESTIC_PASSWORD", "correct horse")
        .output()
        .expect("restic must be installed (tools/test installs it)")
}

#[test]
fn backups_sharing_a_new_repository_initialise_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (src, repo) = (dir.path().join("data"), dir.path().join("repo"));
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("file"), "payload").unwrap();
    let script = backup_script();

    // The controller spaces them 20 s apart; 4 s is already far more than an init takes here.
    let runs: Vec<_> = [0, 4, 8]
        .into_iter()
        .enumerate()
        .map(|(i, delay)| {
            Command::new("sh")
                .args(["-c", &script])
                .env("RESTIC_REPOSITORY", &repo)
                .env("RESTIC_PASSWORD", "correct horse")
                .env("RESTIC_CACHE_DIR", dir.path().join(format!("cache-{i}")))
                .env("BACKUP_SOURCE", &src)
                .env("BACKUP_HOST", format!("team-a-data-{i}"))
                .env("BACKUP_TAG", format!("VolumeBackup=team-a/vb-{i}"))
                .env("BACKUP_INIT_DELAY", delay.to_string())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for (i, out) in outputs.iter().enumerate() {
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "run {i}:\n{stdout}\n{stderr}");
        let initialised = stdout.contains("initialising one");
        assert_eq!(initialised, i == 0, "run {i}:\n{stdout}");
        if i > 0 {
            assert!(
                stdout.contains("another backup initialised the repository meanwhile"),
                "run {i}:\n{stdout}"
            );
        }
    }

    let keys = std::fs::read_dir(repo.join("keys")).unwrap().count();
    assert_eq!(keys, 1, "one init, one key");
    let snapshots = restic(&repo, &["--no-lock", "snapshots", "--json"]);
    assert!(
        snapshots.status.success(),
        "{}",
        String::from_utf8_lossy(&snapshots.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&snapshots.stdout).unwrap();
    assert_eq!(list.len(), 3, "{list:?}");
}
