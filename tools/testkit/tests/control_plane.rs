//! The control-plane harness against the real thing: etcd, kube-apiserver and
//! kube-controller-manager built by `tools/control-plane/cp build`. These tests fail (never skip)
//! when the binaries are missing.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ObjectMeta, PostParams,
};
use serde_json::json;
use testkit::control_plane::{self, COMPONENTS, ControlPlane, KUBECONFIG_ENV};
use testkit::{apply_crd_yaml, wait_for};

const WIDGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.test.example.com
spec:
  group: test.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, listKind: WidgetList}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
              color: {type: string}
"#;

#[tokio::test]
async fn custom_resource_round_trip() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("widgets").await;
    apply_crd_yaml(&client, WIDGET_CRD, Duration::from_secs(30)).await?;

    let gvk = GroupVersionKind::gvk("test.example.com", "v1", "Widget");
    let ar = ApiResource::from_gvk(&gvk);
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, ns.name(), &ar);
    let wanted = DynamicObject::new("w1", &ar)
        .within(ns.name())
        .data(json!({"spec": {"size": 3, "color": "blue", "notInSchema": "pruned"}}));
    widgets.create(&PostParams::default(), &wanted).await?;

    let got = widgets.get("w1").await?;
    assert_eq!(got.metadata.namespace.as_deref(), Some(ns.name()));
    assert!(got.metadata.uid.is_some_and(|u| !u.is_empty()));
    assert_eq!(got.data["spec"]["size"], json!(3));
    assert_eq!(got.data["spec"]["color"], json!("blue"));
    // The apiserver applied the CRD's structural schema: unknown fields are pruned …
    assert_eq!(got.data["spec"].get("notInSchema"), None, "{:?}", got.data);

    // … and its validation rejects an object that breaks it.
    let invalid = DynamicObject::new("w2", &ar)
        .within(ns.name())
        .data(json!({"spec": {"size": 0}}));
    match widgets.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 422, "{status:?}"),
        other => panic!("expected 422 Invalid for size 0, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn garbage_collector_deletes_dependents() -> Result<()> {
    let cp = ControlPlane::shared();
    let client = cp.client().await;
    let ns = cp.namespace("gc").await;
    let cms: Api<ConfigMap> = Api::namespaced(client, ns.name());

    let owner = cms
        .create(&PostParams::default(), &config_map("owner", None))
        .await?;
    let owner_ref = OwnerReference {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        name: "owner".into(),
        uid: owner.metadata.uid.context("the owner has no uid")?,
        block_owner_deletion: Some(true),
        controller: Some(true),
    };
    cms.create(
        &PostParams::default(),
        &config_map("dependent", Some(owner_ref)),
    )
    .await?;
    assert!(cms.get_opt("dependent").await?.is_some());

    cms.delete("owner", &DeleteParams::background()).await?;
    // Only kube-controller-manager's garbage collector deletes the dependent.
    wait_for(
        "the garbage collector to delete the dependent",
        Duration::from_secs(60),
        || async {
            match cms.get_opt("dependent").await? {
                None => Ok(()),
                Some(cm) => Err(anyhow!(
                    "dependent still exists (deletionTimestamp {:?})",
                    cm.metadata.deletion_timestamp
                )),
            }
        },
    )
    .await?;
    assert!(cms.get_opt("owner").await?.is_none());
    Ok(())
}

fn config_map(name: &str, owner: Option<OwnerReference>) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            owner_references: owner.map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        data: Some([("k".to_owned(), "v".to_owned())].into()),
        ..ConfigMap::default()
    }
}

#[tokio::test]
async fn server_version_and_kubectl() -> Result<()> {
    let cp = ControlPlane::shared();
    let info = cp.client().await.apiserver_version().await?;
    if cp.is_local() {
        // Without the version ldflags the build would report v0.0.0-master.
        assert_eq!(info.git_version, control_plane::pinned_version()?);
    } else {
        // A real cluster is at its own version; it must be one k8s-openapi's v1_33 floor covers.
        let minor: u32 = info.minor.trim_end_matches('+').parse()?;
        assert!(
            info.major == "1" && minor >= 33,
            "unsupported cluster version {info:?}"
        );
    }

    let out = run(cp.kubectl().args(["version", "-o", "json"]))?;
    let version: serde_json::Value = serde_json::from_str(&out)?;
    assert_eq!(
        version["serverVersion"]["gitVersion"],
        json!(info.git_version)
    );

    let out = run(cp.kubectl().args(["get", "namespaces", "-o", "name"]))?;
    let names: Vec<&str> = out.lines().collect();
    assert!(names.contains(&"namespace/default"), "{names:?}");
    assert!(names.contains(&"namespace/kube-system"), "{names:?}");
    Ok(())
}

fn run(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        out.status.success(),
        "{command:?} exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

// ---------------------------------------------------------------------------------------------
// No orphans. Each test below starts a control plane of its own; they take turns, so that two
// core machines do not start three planes at once.

static OWN_PLANES: Mutex<()> = Mutex::new(());

/// In a child: which way to die (`panic`, `sigkill`, `sigint`) and where to report the plane.
const CHILD_MODE: &str = "TESTKIT_ORPHAN_CHILD_MODE";
const CHILD_REPORT: &str = "TESTKIT_ORPHAN_CHILD_REPORT";

#[test]
fn no_orphans_after_cp_down() -> Result<()> {
    let _turn = OWN_PLANES.lock().unwrap_or_else(|e| e.into_inner());
    let plane = ControlPlane::start()?;
    let dir = plane
        .dir()
        .context("a started plane has a directory")?
        .to_owned();
    let pids = plane.pids()?;
    for (name, pid) in &pids {
        assert!(
            alive(name, *pid),
            "{name} (pid {pid}) is not running after cp up"
        );
    }

    let status = Command::new(control_plane::cp_script())
        .arg("down")
        .arg(&dir)
        .status()?;
    assert!(status.success(), "cp down exited with {status}");
    // `cp down` returns only when its processes are gone, so no waiting here.
    assert_gone(&pids)?;

    plane.stop()?;
    assert!(!dir.exists(), "{} survived stop()", dir.display());
    Ok(())
}

#[test]
fn no_orphans_after_panic() -> Result<()> {
    child_or_parent("no_orphans_after_panic", "panic")
}

#[test]
fn no_orphans_after_sigkill() -> Result<()> {
    child_or_parent("no_orphans_after_sigkill", "sigkill")
}

/// Ctrl-C signals the terminal's foreground process group; the watcher must not be in it.
#[test]
fn no_orphans_after_sigint_to_process_group() -> Result<()> {
    child_or_parent("no_orphans_after_sigint_to_process_group", "sigint")
}

fn child_or_parent(test: &str, mode: &str) -> Result<()> {
    match std::env::var(CHILD_MODE) {
        Ok(m) => {
            assert_eq!(m, mode, "child started for the wrong test");
            child(mode)
        }
        Err(_) => parent(test, mode),
    }
}

/// The child uses the shared plane exactly as tests do, reports it, then dies.
fn child(mode: &str) -> ! {
    let plane = ControlPlane::shared();
    let report = PathBuf::from(std::env::var_os(CHILD_REPORT).expect("CHILD_REPORT is set"));
    let dir = plane.dir().expect("the child's plane is local");
    let mut text = format!("dir {}\n", dir.display());
    for (name, pid) in plane.pids().expect("pids of the child's plane") {
        text.push_str(&format!("{name} {pid}\n"));
    }
    // Renamed into place so the parent never reads half a report.
    let partial = report.with_extension("partial");
    fs::write(&partial, text).expect("writing the report");
    fs::rename(&partial, &report).expect("publishing the report");
    match mode {
        "panic" => panic!("the child panics on purpose, with its control plane running"),
        _ => loop {
            // Wait for the parent's signal.
            std::thread::sleep(Duration::from_secs(1));
        },
    }
}

fn parent(test: &str, mode: &str) -> Result<()> {
    let _turn = OWN_PLANES.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir()?;
    let report = work.path().join("report");
    let output = work.path().join("child.log");
    let log = fs::File::create(&output)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD_MODE, mode)
        .env(CHILD_REPORT, &report)
        // The child must start a plane of its own, whatever this process uses.
        .env_remove(KUBECONFIG_ENV)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, to deliver a Ctrl-C-like SIGINT to exactly the child's group.
        .process_group(0)
        .spawn()?;
    let child_log = || fs::read_to_string(&output).unwrap_or_default();

    let status: ExitStatus;
    let deadline = Instant::now() + Duration::from_secs(240);
    if mode == "panic" {
        status = loop {
            if let Some(s) = child.try_wait()? {
                break s;
            }
            ensure!(
                Instant::now() < deadline,
                "the child did not exit:\n{}",
                child_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        ensure!(
            !status.success(),
            "the child should have failed:\n{}",
            child_log()
        );
    } else {
        while !report.exists() {
            if let Some(s) = child.try_wait()? {
                panic!(
                    "the child exited with {s} before reporting:\n{}",
                    child_log()
                );
            }
            ensure!(
                Instant::now() < deadline,
                "the child did not report:\n{}",
                child_log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let pid = i32::try_from(child.id())?;
        // SAFETY: plain syscalls on a child we have not reaped yet, so the pid is still ours.
        let rc = unsafe {
            match mode {
                "sigkill" => libc::kill(pid, libc::SIGKILL),
                _ => libc::kill(-pid, libc::SIGINT),
            }
        };
        ensure!(
            rc == 0,
            "signalling the child: {}",
            std::io::Error::last_os_error()
        );
        status = child.wait()?;
    }
    let text = fs::read_to_string(&report).with_context(|| {
        format!(
            "the child wrote no report (it exited with {status}):\n{}",
            child_log()
        )
    })?;
    let (dir, pids) = parse_report(&text)?;
    ensure!(pids.len() == COMPONENTS.len(), "incomplete report: {text}");

    // The watcher tears down asynchronously once the child is gone.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let gone = assert_gone(&pids).and_then(|()| {
            ensure!(!dir.exists(), "{} still exists", dir.display());
            Ok(())
        });
        match gone {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!(
                    "the child's control plane outlived it (child exited with {status}); child output:\n{}",
                    child_log()
                )));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

fn parse_report(text: &str) -> Result<(PathBuf, BTreeMap<String, i32>)> {
    let mut dir = None;
    let mut pids = BTreeMap::new();
    for line in text.lines() {
        let (key, value) = line.split_once(' ').context("malformed report line")?;
        if key == "dir" {
            dir = Some(PathBuf::from(value));
        } else {
            pids.insert(key.to_owned(), value.parse()?);
        }
    }
    Ok((dir.context("the report names no dir")?, pids))
}

/// Fails unless none of `pids` runs, both by /proc and by `pgrep -x`.
fn assert_gone(pids: &BTreeMap<String, i32>) -> Result<()> {
    for (name, pid) in pids {
        ensure!(!alive(name, *pid), "{name} (pid {pid}) still runs");
        // pgrep -x matches the kernel's 15-character name; with the full
        // "kube-controller-manager" it would match nothing and prove nothing.
        let out = Command::new("pgrep")
            .args(["-x", comm_name(name)])
            .output()?;
        let listed: Vec<i32> = String::from_utf8(out.stdout)?
            .split_whitespace()
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        ensure!(
            !listed.contains(pid),
            "pgrep -x {name} still lists pid {pid}"
        );
    }
    Ok(())
}

/// Whether `pid` is a live (not zombie) process called `name`.
fn alive(name: &str, pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("stat")) else {
        return false;
    };
    // stat is "PID (COMM) STATE …"; COMM may hold spaces or parentheses, so split at the last ')'.
    let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
        return false;
    };
    let comm = &stat[open + 1..close];
    let state = stat[close + 1..].split_whitespace().next().unwrap_or("");
    comm == comm_name(name) && state != "Z"
}

/// The name the kernel keeps for a process: at most 15 bytes.
fn comm_name(name: &str) -> &str {
    &name[..name.len().min(15)]
}
