//! The local pod runner against real processes, mounts and files. Needs root, like the runner.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::jiff::Timestamp;
use testkit::pod_runner::{
    ContainerKind, ContainerReport, Echo, PodPhase, PodReport, PodRunner, RunnerConfig,
    parse_manifest,
};

const SECOND: Duration = Duration::from_secs(1);

/// A test pod's directories: container logs, and a host directory served as PVC `data`.
struct Dirs {
    out: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Dirs {
    fn new() -> Self {
        let dirs = Dirs {
            out: tempfile::tempdir().unwrap(),
            data: tempfile::tempdir().unwrap(),
        };
        // Writable by the non-root users of some tests.
        std::fs::set_permissions(dirs.data.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        dirs
    }

    fn config(&self) -> RunnerConfig {
        let mut config = RunnerConfig::new(self.out.path());
        config.images.add_host_image("busybox*").unwrap();
        config
            .pvcs
            .insert("data".into(), self.data.path().to_owned());
        config.sidecar_restart_backoff = Duration::from_millis(100);
        config.echo = Echo::Inherit;
        // A container that waits for something that never comes fails its test (DeadlineExceeded)
        // instead of hanging it.
        config.active_deadline = Some(60 * SECOND);
        config
    }

    fn data(&self, name: &str) -> String {
        std::fs::read_to_string(self.data.path().join(name))
            .unwrap_or_else(|e| panic!("data file {name}: {e}"))
    }

    fn log(&self, container: &str) -> String {
        std::fs::read_to_string(self.out.path().join(format!("{container}.log"))).unwrap()
    }
}

fn spec(yaml: &str) -> PodSpec {
    parse_manifest(yaml).expect("test manifest").spec
}

fn run(config: RunnerConfig, yaml: &str) -> PodReport {
    PodRunner::new(config).unwrap().run(&spec(yaml)).unwrap()
}

fn container<'a>(report: &'a PodReport, name: &str) -> &'a ContainerReport {
    report
        .container(name)
        .unwrap_or_else(|| panic!("no container {name} in {report:#?}"))
}

fn time(rfc3339: &Option<String>) -> Timestamp {
    rfc3339
        .as_deref()
        .expect("a time")
        .parse()
        .expect("RFC 3339")
}

/// A `date +%s%N` value written by a container.
fn nanos(text: &str) -> Timestamp {
    let n: i128 = text.trim().parse().expect("nanoseconds");
    Timestamp::from_nanosecond(n).unwrap()
}

const DATA_VOLUME: &str = "
volumes:
- name: data
  persistentVolumeClaim: {claimName: data}";

#[test]
fn init_containers_run_in_order_and_a_failing_one_stops_the_pod() {
    let dirs = Dirs::new();
    let yaml = format!(
        "{DATA_VOLUME}
initContainers:
- name: first
  image: busybox
  command: [sh, -c, 'echo first >> /data/order']
  volumeMounts: [{{name: data, mountPath: /data}}]
- name: sidecar
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'trap \"echo sidecar-term >> /data/order; exit 0\" TERM; touch /data/trapped; while true; do sleep 0.05; done']
  volumeMounts: [{{name: data, mountPath: /data}}]
- name: failing
  image: busybox
  command: [sh, -c, 'until [ -e /data/trapped ]; do sleep 0.01; done; echo failing >> /data/order; exit 3']
  volumeMounts: [{{name: data, mountPath: /data}}]
- name: never
  image: busybox
  command: [sh, -c, 'echo never >> /data/order']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: main
  image: busybox
  command: [sh, -c, 'echo main >> /data/order']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Failed, "{report:#?}");
    assert_eq!(dirs.data("order"), "first\nfailing\nsidecar-term\n");
    assert_eq!(container(&report, "first").exit_code, Some(0));
    assert_eq!(container(&report, "failing").exit_code, Some(3));
    assert_eq!(container(&report, "sidecar").kind, ContainerKind::Sidecar);
    assert_eq!(container(&report, "sidecar").exit_code, Some(0));
    for never in ["never", "main"] {
        let c = container(&report, never);
        assert_eq!((c.started_at.as_ref(), c.exit_code), (None, None), "{c:#?}");
    }
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("\"failing\""),
        "{report:#?}"
    );
}

#[test]
fn sidecar_starts_before_main_and_gets_sigterm_only_after_main_exited() {
    let dirs = Dirs::new();
    let yaml = format!(
        "{DATA_VOLUME}
initContainers:
- name: notifier
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'trap \"date +%s%N > /data/sidecar-term; exit 0\" TERM; date +%s%N > /data/sidecar-start; while true; do sleep 0.05; done']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: backup
  image: busybox
  command:
  - sh
  - -c
  - |
    date +%s%N > /data/main-start
    for i in $(seq 100); do [ -f /data/sidecar-start ] && break; sleep 0.05; done
    [ -f /data/sidecar-start ] && echo yes > /data/sidecar-seen-running
    sleep 0.5
    [ -f /data/sidecar-term ] && echo early > /data/sidecar-terminated-early
    date +%s%N > /data/main-end
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let sidecar = container(&report, "notifier");
    let main = container(&report, "backup");
    // The sidecar's process had started before the main container's first command ran.
    assert!(time(&sidecar.started_at) < nanos(&dirs.data("main-start")));
    assert!(time(&sidecar.started_at) < time(&main.started_at));
    assert_eq!(dirs.data("sidecar-seen-running"), "yes\n");
    assert!(!dirs.data.path().join("sidecar-terminated-early").exists());
    // SIGTERM reached the sidecar only after the main container's last command.
    assert!(nanos(&dirs.data("main-end")) < nanos(&dirs.data("sidecar-term")));
    assert!(time(&main.finished_at) <= nanos(&dirs.data("sidecar-term")));
    assert_eq!((sidecar.exit_code, sidecar.signal), (Some(0), None));
    assert_eq!(sidecar.restarts, 0);
}

#[test]
fn sidecar_ignoring_sigterm_is_killed_after_the_grace_period() {
    let dirs = Dirs::new();
    // Main ends only once the trap is set, or SIGTERM could kill the shell before it.
    let yaml = format!(
        "{DATA_VOLUME}
terminationGracePeriodSeconds: 2
initContainers:
- name: stubborn
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'trap \"echo ignoring TERM\" TERM; touch /data/trapped; while true; do sleep 0.05; done']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: main
  image: busybox
  command: [sh, -c, 'until [ -e /data/trapped ]; do sleep 0.01; done; sleep 0.2']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let sidecar = container(&report, "stubborn");
    assert_eq!((sidecar.exit_code, sidecar.signal), (Some(137), Some(9)));
    let main_end = time(&container(&report, "main").finished_at);
    let killed = time(&sidecar.finished_at);
    let waited = killed.duration_since(main_end);
    assert!(
        waited >= k8s_openapi::jiff::SignedDuration::from_millis(1900)
            && waited < k8s_openapi::jiff::SignedDuration::from_secs(8),
        "sidecar killed {waited:?} after main ended"
    );
    assert!(dirs.log("stubborn").contains("ignoring TERM"));
}

#[test]
fn exit_codes_and_pod_phase() {
    let dirs = Dirs::new();
    let yaml = "
containers:
- name: ok
  image: busybox
  command: [sh, -c, 'exit 0']
- name: three
  image: busybox
  command: [sh, -c, 'sleep 0.2; exit 3']
";
    let report = run(dirs.config(), yaml);
    assert_eq!(report.phase, PodPhase::Failed);
    assert_eq!(container(&report, "ok").exit_code, Some(0));
    assert_eq!(container(&report, "three").exit_code, Some(3));
    assert_eq!(container(&report, "three").signal, None);
    assert_eq!(container(&report, "three").kind, ContainerKind::Main);

    let dirs = Dirs::new();
    let report = run(
        dirs.config(),
        "containers: [{name: a, image: busybox, command: ['true']}, {name: b, image: busybox, command: [sh, -c, 'exit 0']}]",
    );
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert!(report.reason.is_none());
}

#[test]
fn main_container_killed_through_the_handle_reports_signal_9() {
    let dirs = Dirs::new();
    let runner = PodRunner::new(dirs.config()).unwrap();
    let began = Instant::now();
    let handle = runner
        .start(&spec(
            "containers: [{name: main, image: busybox, command: [sleep, '60']}]",
        ))
        .unwrap();
    handle.wait_running("main", 10 * SECOND).unwrap();
    handle.signal("main", libc::SIGKILL).unwrap();
    let report = handle.wait().unwrap();
    assert!(began.elapsed() < 20 * SECOND);
    let main = container(&report, "main");
    assert_eq!((main.exit_code, main.signal), (Some(137), Some(9)));
    assert_eq!(report.phase, PodPhase::Failed);
}

fn alive(pid: &str) -> bool {
    Path::new("/proc").join(pid.trim()).exists()
}

#[test]
fn processes_left_behind_by_a_container_are_killed_with_it() {
    let dirs = Dirs::new();
    let yaml = format!(
        "{DATA_VOLUME}
containers:
- name: main
  image: busybox
  command: [sh, -c, 'sleep 60 & echo $! > /data/background; exit 0']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let pid = dirs.data("background");
    let deadline = Instant::now() + 5 * SECOND;
    while alive(&pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !alive(&pid),
        "background process {} survived its container",
        pid.trim()
    );
}

#[test]
fn dropping_the_handle_kills_the_pod() {
    let dirs = Dirs::new();
    // `$$$$` is `$$` after Kubernetes expansion: the shell's pid. Written through a rename so
    // that the file is never seen empty.
    let yaml = format!(
        "{DATA_VOLUME}
initContainers:
- name: side
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'trap \"\" TERM; echo $$$$ > /data/side.tmp; mv /data/side.tmp /data/side; while true; do sleep 0.05; done']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: main
  image: busybox
  command: [sh, -c, 'echo $$$$ > /data/main.tmp; mv /data/main.tmp /data/main; exec sleep 60']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let runner = PodRunner::new(dirs.config()).unwrap();
    let handle = runner.start(&spec(&yaml)).unwrap();
    handle.wait_running("main", 10 * SECOND).unwrap();
    let deadline = Instant::now() + 5 * SECOND;
    while !(dirs.data.path().join("main").exists() && dirs.data.path().join("side").exists())
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    let (main, side) = (dirs.data("main"), dirs.data("side"));
    assert!(alive(&main) && alive(&side));
    let began = Instant::now();
    drop(handle);
    // No grace period on abort: SIGKILL at once, even for a sidecar that ignores SIGTERM.
    assert!(began.elapsed() < 5 * SECOND, "{:?}", began.elapsed());
    assert!(!alive(&main) && !alive(&side));
}

#[test]
fn signalling_an_unknown_or_finished_container_is_an_error() {
    let dirs = Dirs::new();
    let runner = PodRunner::new(dirs.config()).unwrap();
    let handle = runner
        .start(&spec(
            "containers: [{name: quick, image: busybox, command: ['true']}, {name: slow, image: busybox, command: [sleep, '1']}]",
        ))
        .unwrap();
    handle.wait_exited("quick", 10 * SECOND).unwrap();
    let err = handle
        .signal("quick", libc::SIGTERM)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not running"), "{err}");
    let err = handle
        .signal("nope", libc::SIGTERM)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no container \"nope\""), "{err}");
    assert_eq!(handle.wait().unwrap().phase, PodPhase::Succeeded);
}

#[test]
fn empty_dir_is_shared_and_writable_by_non_root_users() {
    let dirs = Dirs::new();
    let yaml = "
volumes:
- name: scratch
  emptyDir: {}
initContainers:
- name: writer
  image: busybox
  securityContext: {runAsUser: 1234, runAsGroup: 1234}
  command: [sh, -c, 'test \"$(id -u):$(id -g)\" = 1234:1234 && echo hello > /scratch/note']
  volumeMounts: [{name: scratch, mountPath: /scratch}]
containers:
- name: reader
  image: busybox
  securityContext: {runAsUser: 4321}
  command:
  - sh
  - -c
  - |
    set -e
    test \"$(id -u)\" = 4321
    test \"$(cat /cache/note)\" = hello
    test \"$(stat -c %u /cache/note)\" = 1234
    echo more > /cache/reader-note
    ! touch /etc/not-allowed-for-non-root 2>/dev/null
  volumeMounts: [{name: scratch, mountPath: /cache}]
";
    let report = run(dirs.config(), yaml);
    assert_eq!(
        report.phase,
        PodPhase::Succeeded,
        "{report:#?}\n{}",
        dirs.log("reader")
    );
}

#[test]
fn sub_paths_file_mounts_groups_proc_and_dev() {
    let dirs = Dirs::new();
    std::fs::write(dirs.data.path().join("app.conf"), "setting=1\n").unwrap();
    let yaml = format!(
        "{DATA_VOLUME}
- name: scratch
  emptyDir: {{}}
securityContext: {{fsGroup: 2000, supplementalGroups: [3000]}}
initContainers:
- name: writer
  image: busybox
  command: [sh, -c, 'echo deep > /sub/x']
  volumeMounts: [{{name: scratch, mountPath: /sub, subPath: a/b}}]
containers:
- name: main
  image: busybox
  securityContext: {{runAsUser: 1000, runAsGroup: 1500}}
  command:
  - sh
  - -c
  - |
    set -e
    test \"$(cat /full/a/b/x)\" = deep
    test \"$(cat /etc/app.conf)\" = setting=1
    test \"$(id -g)\" = 1500
    for g in 1500 2000 3000; do id -G | tr ' ' '\\n' | grep -qx $g; done
    test -r /proc/self/status
    grep -q '^Uid:.*1000' /proc/self/status
    echo discarded > /dev/null
    echo ok > /data/result
  volumeMounts:
  - {{name: scratch, mountPath: /full}}
  - {{name: data, mountPath: /etc/app.conf, subPath: app.conf, readOnly: true}}
  - {{name: data, mountPath: /data}}
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(
        report.phase,
        PodPhase::Succeeded,
        "{report:#?}\n{}",
        dirs.log("main")
    );
    assert_eq!(dirs.data("result"), "ok\n");
    assert!(!Path::new("/etc/app.conf").exists());
}

#[test]
fn read_only_volume_mounts_are_read_only() {
    let dirs = Dirs::new();
    std::fs::write(dirs.data.path().join("existing"), "keep").unwrap();
    let yaml = format!(
        "{DATA_VOLUME}
containers:
- name: main
  image: busybox
  command: [sh, -c, 'cat /ro/existing; touch /ro/new; echo \"ro=$?\"; echo changed > /ro/existing; touch /rw/new; echo \"rw=$?\"']
  volumeMounts:
  - {{name: data, mountPath: /ro, readOnly: true}}
  - {{name: data, mountPath: /rw}}
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let log = dirs.log("main");
    assert!(log.contains("keep"), "{log}");
    assert!(log.contains("Read-only file system"), "{log}");
    assert!(log.contains("ro=1"), "{log}");
    assert!(log.contains("rw=0"), "{log}");
    assert_eq!(dirs.data("existing"), "keep");
    // The read-write mount of the same volume did write.
    assert!(dirs.data.path().join("new").exists());
}

#[test]
fn read_only_root_filesystem_makes_the_root_read_only_and_never_touches_the_host() {
    let dirs = Dirs::new();
    let marker = format!("podrunner-test-{}", std::process::id());
    let yaml = format!(
        "{DATA_VOLUME}
containers:
- name: locked
  image: busybox
  securityContext: {{readOnlyRootFilesystem: true}}
  command: [sh, -c, 'for p in /{marker} /tmp/{marker} /usr/local/{marker} /etc/{marker}; do touch $p || echo \"denied $p\"; done; echo ok > /out/locked']
  volumeMounts: [{{name: data, mountPath: /out}}]
- name: writable
  image: busybox
  command: [sh, -c, 'touch /{marker} /usr/local/{marker} /etc/{marker} && echo ok > /out/writable']
  volumeMounts: [{{name: data, mountPath: /out}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let log = dirs.log("locked");
    for p in ["", "/tmp", "/usr/local", "/etc"] {
        assert!(log.contains(&format!("denied {p}/{marker}")), "{p}: {log}");
    }
    assert_eq!(log.matches("Read-only file system").count(), 4, "{log}");
    // Volumes stay writable; the other container's root is writable, into its own layer only.
    assert_eq!(dirs.data("locked"), "ok\n");
    assert_eq!(dirs.data("writable"), "ok\n");
    for p in ["/", "/usr/local", "/etc"] {
        assert!(
            !Path::new(p).join(&marker).exists(),
            "{p}/{marker} leaked to the host"
        );
    }
}

#[test]
fn env_values_and_kubernetes_variable_expansion() {
    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.pod_name = "pod-x".into();
    config.namespace = "ns-y".into();
    let yaml = format!(
        "{DATA_VOLUME}
containers:
- name: main
  image: busybox
  env:
  - {{name: A, value: alpha}}
  - {{name: B, value: '$(A)-beta'}}
  - {{name: ESCAPED, value: '$$(A)'}}
  - {{name: UNDEFINED, value: '$(NOPE)'}}
  - {{name: LATER, value: '$(C)'}}
  - {{name: C, value: gamma}}
  - {{name: POD, valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}}}
  - {{name: NS, valueFrom: {{fieldRef: {{fieldPath: metadata.namespace}}}}}}
  - {{name: A, value: overridden}}
  command: [sh, -c, 'printf \"%s|\" \"$A\" \"$B\" \"$ESCAPED\" \"$UNDEFINED\" \"$LATER\" \"$POD\" \"$NS\" \"$HOSTNAME\" \"$0\" \"$1\" > /data/env; env | grep -c . > /data/count']
  args: ['$(B)', '$(C)/$(POD)']
  workingDir: /work/dir
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(config, &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert_eq!(
        dirs.data("env"),
        "overridden|alpha-beta|$(A)|$(NOPE)|$(C)|pod-x|ns-y|pod-x|alpha-beta|gamma/pod-x|"
    );
    // Nothing of the runner's own environment leaks in: PATH, HOSTNAME, HOME, PWD, SHLVL and
    // the pod's nine variables (A counted once).
    let count: usize = dirs.data("count").trim().parse().unwrap();
    assert!(count <= 14, "{count} variables");
}

#[test]
fn image_map_places_host_files_and_gives_entrypoints() {
    let dirs = Dirs::new();
    let tool_dir = tempfile::tempdir().unwrap();
    let tool = tool_dir.path().join("hello-tool");
    std::fs::write(&tool, "#!/bin/sh\necho \"from-image $0 $*\"\n").unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut config = dirs.config();
    config
        .images
        .add_file_arg(&format!(
            "reg.example/tool=/usr/local/bin/podrunner-hello:{}",
            tool.display()
        ))
        .unwrap();
    config
        .images
        .add_file("reg.example/tool", "/opt/podrunner-tool/bin/hello", &tool)
        .unwrap();
    config
        .images
        .set_entrypoint_arg(r#"reg.example/tool=["/opt/podrunner-tool/bin/hello","first"]"#)
        .unwrap();
    let yaml = "
containers:
- name: by-entrypoint
  image: reg.example/tool:1.2.3
  args: [second]
- name: by-path
  image: reg.example/tool@sha256:0123
  command: [podrunner-hello, x]
";
    let report = run(config, yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert_eq!(
        dirs.log("by-entrypoint"),
        "from-image /opt/podrunner-tool/bin/hello first second\n"
    );
    assert_eq!(
        dirs.log("by-path"),
        "from-image /usr/local/bin/podrunner-hello x\n"
    );
    assert!(!Path::new("/usr/local/bin/podrunner-hello").exists());
    assert!(!Path::new("/opt/podrunner-tool").exists());
}

fn root_entries() -> Vec<String> {
    let mut entries: Vec<String> = std::fs::read_dir("/")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    entries.sort();
    entries
}

#[test]
fn the_host_root_gets_no_new_directories() {
    let dirs = Dirs::new();
    let before = root_entries();
    let yaml = "
volumes:
- name: scratch
  emptyDir: {}
containers:
- name: main
  image: busybox
  workingDir: /podrunner-workdir-test/deeper
  command: [sh, -c, 'pwd; echo x > /data-podrunner-test/file; mkdir -p /podrunner-mkdir-test/a; ls -d /data-podrunner-test /podrunner-mkdir-test']
  volumeMounts: [{name: scratch, mountPath: /data-podrunner-test}]
";
    let report = run(dirs.config(), yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert!(
        dirs.log("main")
            .starts_with("/podrunner-workdir-test/deeper\n")
    );
    for p in [
        "/data-podrunner-test",
        "/podrunner-workdir-test",
        "/podrunner-mkdir-test",
    ] {
        assert!(!Path::new(p).exists(), "{p} exists on the host");
    }
    assert_eq!(before, root_entries());
}

#[test]
fn the_pod_directory_is_removed_afterwards() {
    let dirs = Dirs::new();
    let work = tempfile::tempdir().unwrap();
    let mut config = dirs.config();
    config.work_dir = Some(work.path().to_owned());
    let report = run(
        config,
        "volumes: [{name: s, emptyDir: {}}]\ncontainers: [{name: m, image: busybox, command: [sh, -c, 'echo x > /s/f'], volumeMounts: [{name: s, mountPath: /s}]}]",
    );
    assert_eq!(report.phase, PodPhase::Succeeded);
    assert!(report.warnings.is_empty(), "{report:#?}");
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn a_sidecar_that_exits_is_restarted_while_the_pod_runs() {
    let dirs = Dirs::new();
    // Main waits for four starts of the sidecar (at most 20 s) instead of a fixed time, so a
    // loaded machine changes only how long it takes.
    let yaml = format!(
        "{DATA_VOLUME}
initContainers:
- name: flaky
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'date +%s%N >> /data/runs; exit 1']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: main
  image: busybox
  command: [sh, -c, 'for i in $(seq 2000); do [ $(cat /data/runs 2>/dev/null | wc -l) -ge 4 ] && exit 0; sleep 0.01; done; exit 1']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    let sidecar = container(&report, "flaky");
    let runs: Vec<Timestamp> = dirs.data("runs").lines().map(nanos).collect();
    assert!(runs.len() >= 4, "runs: {runs:?}");
    // Restarted with the kubelet's doubling backoff (100 ms, 200 ms, 400 ms here), not in a
    // busy loop: each start is at least its backoff after the previous one.
    for (i, backoff_ms) in [100, 200, 400].into_iter().enumerate() {
        let gap = runs[i + 1].duration_since(runs[i]);
        assert!(
            gap >= k8s_openapi::jiff::SignedDuration::from_millis(backoff_ms - 10),
            "start {} came {gap:?} after start {i}, backoff {backoff_ms} ms",
            i + 1
        );
    }
    // Every start ran the command, except that the termination sequence may SIGTERM the last
    // start before its `date` (or between `date` and `exit`).
    let starts = sidecar.restarts as usize + 1;
    if sidecar.signal.is_some() {
        assert!(
            (starts - 1..=starts).contains(&runs.len()),
            "runs {}, starts {starts}, last start killed: {sidecar:#?}",
            runs.len()
        );
    } else {
        assert_eq!(runs.len(), starts, "{sidecar:#?}");
    }
}

#[test]
fn the_active_deadline_fails_the_pod() {
    let dirs = Dirs::new();
    let began = Instant::now();
    let report = run(
        dirs.config(),
        "activeDeadlineSeconds: 1\nterminationGracePeriodSeconds: 1\ncontainers: [{name: m, image: busybox, command: [sleep, '60']}]",
    );
    assert!(began.elapsed() < 10 * SECOND);
    assert_eq!(report.phase, PodPhase::Failed);
    assert!(
        report
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("DeadlineExceeded")
    );
    // `sleep` dies of the SIGTERM sent at the deadline.
    assert_eq!(container(&report, "m").signal, Some(libc::SIGTERM));
}

/// A sidecar always gets its SIGTERM, with the kubelet's minimum of 2 s, even when a regular
/// container stopped at the deadline used up the whole grace period (the notifier sends the
/// failure notice on that SIGTERM).
#[test]
fn a_sidecar_gets_sigterm_after_the_main_container_used_up_the_grace_period() {
    let dirs = Dirs::new();
    let yaml = format!(
        "{DATA_VOLUME}
activeDeadlineSeconds: 1
terminationGracePeriodSeconds: 1
initContainers:
- name: sidecar
  image: busybox
  restartPolicy: Always
  command: [sh, -c, 'trap \"echo sidecar-term > /data/term; exit 0\" TERM; while true; do sleep 0.05; done']
  volumeMounts: [{{name: data, mountPath: /data}}]
containers:
- name: main
  image: busybox
  command: [sh, -c, 'trap \"\" TERM; while true; do sleep 0.05; done']
"
    );
    let report = run(dirs.config(), &yaml);
    assert_eq!(report.phase, PodPhase::Failed, "{report:#?}");
    assert_eq!(container(&report, "main").signal, Some(libc::SIGKILL));
    assert_eq!(dirs.data("term"), "sidecar-term\n");
    let sidecar = container(&report, "sidecar");
    assert_eq!(
        (sidecar.exit_code, sidecar.signal),
        (Some(0), None),
        "{report:#?}"
    );
}

#[test]
fn a_missing_program_fails_the_container_with_a_clear_error() {
    let dirs = Dirs::new();
    let report = run(
        dirs.config(),
        "containers: [{name: m, image: busybox, command: [/no/such/program]}]",
    );
    assert_eq!(report.phase, PodPhase::Failed);
    let error = container(&report, "m").error.clone().unwrap_or_default();
    assert!(error.contains("/no/such/program"), "{error}");
    assert!(dirs.log("m").contains("cannot start"));
}

fn start_error(config: RunnerConfig, yaml: &str) -> String {
    let runner = PodRunner::new(config).unwrap();
    match runner.start(&spec(yaml)) {
        Ok(_) => panic!("the pod started"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn bad_input_is_one_clear_error_before_anything_starts() {
    let dirs = Dirs::new();
    let cases = [
        (
            "containers: [{name: m, image: unmapped/image:1, command: ['true']}]",
            "image \"unmapped/image:1\" is not in the image map",
        ),
        (
            "volumes: [{name: host, hostPath: {path: /}}]\ncontainers: [{name: m, image: busybox, command: ['true']}]",
            "volume \"host\": type hostPath is not supported",
        ),
        (
            "volumes: [{name: v, persistentVolumeClaim: {claimName: other}}]\ncontainers: [{name: m, image: busybox, command: ['true']}]",
            "--pvc other=DIR",
        ),
        (
            "containers: [{name: m, image: busybox}]",
            "no command, and image \"busybox\" has no entrypoint",
        ),
        (
            "containers: [{name: m, image: busybox, command: ['true'], env: [{name: S, valueFrom: {secretKeyRef: {name: creds, key: k}}}]}]",
            "needs secret default/creds: give --kubeconfig",
        ),
        (
            "containers: [{name: m, image: busybox, command: ['true'], volumeMounts: [{name: missing, mountPath: /x}]}]",
            "there is no volume \"missing\"",
        ),
        (
            "containers: [{name: m, image: busybox, command: ['true'], securityContext: {runAsNonRoot: true}}]",
            "runAsNonRoot",
        ),
        (
            "restartPolicy: Always\ncontainers: [{name: m, image: busybox, command: ['true']}]",
            "restartPolicy Always is not supported",
        ),
        (
            "containers: [{name: m, image: busybox, command: ['true']}, {name: m, image: busybox, command: ['true']}]",
            "used twice",
        ),
        (
            "volumes: [{name: s, emptyDir: {}}]\ncontainers: [{name: m, image: busybox, command: ['true'], volumeMounts: [{name: s, mountPath: /x, subPath: ../../etc}]}]",
            "without '..'",
        ),
        // The kubelet refuses an unset or empty variable in subPathExpr.
        (
            "volumes: [{name: s, emptyDir: {}}]\ncontainers: [{name: m, image: busybox, command: ['true'], env: [{name: EMPTY, value: ''}], volumeMounts: [{name: s, mountPath: /x, subPathExpr: '$(NOPE)/$(EMPTY)/$$(LITERAL)'}]}]",
            "subPathExpr: missing value for EMPTY, NOPE",
        ),
    ];
    for (yaml, want) in cases {
        let error = start_error(dirs.config(), yaml);
        assert!(
            error.contains(want),
            "{yaml}\n=> {error}\n(wanted {want:?})"
        );
        assert!(!error.contains('\n'), "multi-line error: {error}");
    }
    // Nothing ran, so no log was written.
    assert_eq!(std::fs::read_dir(dirs.out.path()).unwrap().count(), 0);
}

fn cli() -> Command {
    Command::new(env!("CARGO_BIN_EXE_local-pod-runner"))
}

#[test]
fn cli_runs_a_cronjob_and_reports() {
    let dirs = Dirs::new();
    let manifest = dirs.out.path().join("cronjob.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: backups}
spec:
  schedule: '@daily'
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          initContainers:
          - {name: notifier, image: reg.example/op:v1, restartPolicy: Always, command: [sh, -c, 'trap \"exit 0\" TERM; while true; do sleep 0.05; done']}
          containers:
          - {name: backup, image: restic/restic:0.17, command: [sh, -c, 'echo backing up $(NS); exit 3'], env: [{name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}]}
",
    )
    .unwrap();
    let logs = dirs.out.path().join("logs");
    let output = cli()
        .arg(&manifest)
        .args(["--host-image", "reg.example/op", "--host-image", "restic/*"])
        .arg("--output-dir")
        .arg(&logs)
        .args(["--report", "-"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("[backup] backing up backups"), "{stderr}");
    let report: PodReport = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report.phase, PodPhase::Failed);
    assert_eq!(report.pod_name, "nightly-local");
    assert_eq!(container(&report, "backup").exit_code, Some(3));
    assert_eq!(container(&report, "notifier").kind, ContainerKind::Sidecar);
    assert_eq!(
        std::fs::read_to_string(logs.join("backup.log")).unwrap(),
        "backing up backups\n"
    );

    let ok = dirs.out.path().join("ok.json");
    std::fs::write(
        &ok,
        r#"{"kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"c","image":"busybox","command":["true"]}]}}"#,
    )
    .unwrap();
    let report_file = dirs.out.path().join("report.json");
    let status = cli()
        .arg(&ok)
        .args(["--host-image", "*", "--quiet", "-o"])
        .arg(dirs.out.path().join("ok-logs"))
        .arg("--report")
        .arg(&report_file)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let report: PodReport =
        serde_json::from_str(&std::fs::read_to_string(&report_file).unwrap()).unwrap();
    assert_eq!(report.phase, PodPhase::Succeeded);
}

#[test]
fn cli_configuration_errors_exit_2_with_one_line() {
    let dirs = Dirs::new();
    let tmp = tempfile::tempdir().unwrap();
    let manifest = dirs.out.path().join("pod.yaml");
    std::fs::write(
        &manifest,
        "containers: [{name: c, image: nowhere/x, command: ['true']}]",
    )
    .unwrap();
    for args in [
        vec![manifest.to_str().unwrap().to_owned()],
        vec!["/no/such/manifest.yaml".to_owned()],
        vec![
            manifest.to_str().unwrap().to_owned(),
            "--image".into(),
            "bad".into(),
        ],
        vec![
            manifest.to_str().unwrap().to_owned(),
            "--pvc".into(),
            "novalue".into(),
        ],
    ] {
        let output = cli()
            .args(&args)
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("local-pod-runner: error: "), "{stderr}");
    }
    // The default output directory of a run that never started is not left behind.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
    let help = cli().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("This is a test tool and not a kubelet"),
        "{help}"
    );
}

/// Starts the CLI on a pod whose container records its pid and sleeps; returns the CLI process
/// and the container's pid.
fn cli_with_sleeping_pod(dirs: &Dirs, tmp: &Path) -> (std::process::Child, String) {
    let manifest = dirs.out.path().join("sleepy.yaml");
    std::fs::write(
        &manifest,
        format!(
            "{DATA_VOLUME}
containers:
- name: sleepy
  image: busybox
  command: [sh, -c, 'echo $$$$ > /data/pid.tmp; mv /data/pid.tmp /data/pid; exec sleep 60']
  volumeMounts: [{{name: data, mountPath: /data}}]
"
        ),
    )
    .unwrap();
    let child = cli()
        .arg(&manifest)
        .args(["--host-image", "*", "--quiet", "-o"])
        .arg(dirs.out.path().join("logs"))
        .arg("--report")
        .arg(dirs.out.path().join("report.json"))
        .arg("--pvc")
        .arg(format!("data={}", dirs.data.path().display()))
        .env("TMPDIR", tmp)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + 10 * SECOND;
    while !dirs.data.path().join("pid").exists() {
        assert!(Instant::now() < deadline, "the container did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, dirs.data("pid"))
}

fn wait_with_timeout(
    child: &mut std::process::Child,
    timeout: Duration,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "the runner did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_gone(pid: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn cli_sigterm_kills_the_pod_and_still_reports() {
    let dirs = Dirs::new();
    let tmp = tempfile::tempdir().unwrap();
    let (mut runner, pid) = cli_with_sleeping_pod(&dirs, tmp.path());
    assert!(alive(&pid));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(runner.id() as libc::pid_t, libc::SIGTERM) };
    let status = wait_with_timeout(&mut runner, 10 * SECOND);
    assert_eq!(status.code(), Some(1));
    assert!(
        wait_gone(&pid, 5 * SECOND),
        "container {pid} outlived the runner"
    );
    let report: PodReport = serde_json::from_str(
        &std::fs::read_to_string(dirs.out.path().join("report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report.phase, PodPhase::Failed);
    assert_eq!(report.reason.as_deref(), Some("aborted"));
    assert_eq!(container(&report, "sleepy").signal, Some(libc::SIGKILL));
    // The pod directory was cleaned up too.
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn a_runner_killed_with_sigkill_leaves_no_container_behind() {
    let dirs = Dirs::new();
    let tmp = tempfile::tempdir().unwrap();
    let (mut runner, pid) = cli_with_sleeping_pod(&dirs, tmp.path());
    assert!(alive(&pid));
    runner.kill().unwrap();
    runner.wait().unwrap();
    assert!(
        wait_gone(&pid, 5 * SECOND),
        "container {pid} outlived the runner"
    );
}

/// Secrets and ConfigMaps from a real apiserver (this test binary's control plane): env
/// (secretKeyRef, configMapKeyRef, envFrom) and volumes.
#[test]
fn secrets_and_config_maps_from_a_real_apiserver() {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
    use kube::api::{DeleteParams, PostParams};

    let kubeconfig = testkit::ControlPlane::shared()
        .kubeconfig_path()
        .to_path_buf();
    let namespace = format!("podrunner-{}", std::process::id());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = runtime.block_on(async {
        let file = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    });
    runtime.block_on(async {
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": namespace}})).unwrap();
        namespaces
            .create(&PostParams::default(), &ns)
            .await
            .unwrap();
        let secrets: kube::Api<Secret> = kube::Api::namespaced(client.clone(), &namespace);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "creds"},
            "stringData": {"password": "s3cret", "AWS_KEY": "ak"}
        }))
        .unwrap();
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .unwrap();
        let cms: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), &namespace);
        let cm: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "settings"},
            "data": {"mode": "fast", "config.yaml": "a: 1\n"}
        }))
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    });

    let dirs = Dirs::new();
    let mut config = dirs.config();
    config.namespace = namespace.clone();
    config.kubeconfig = Some(kubeconfig);
    let yaml = format!(
        "{DATA_VOLUME}
- name: secret-vol
  secret: {{secretName: creds, defaultMode: 0400}}
- name: cm-vol
  configMap: {{name: settings, items: [{{key: config.yaml, path: sub/config.yaml}}]}}
containers:
- name: main
  image: busybox
  env:
  - {{name: PASSWORD, valueFrom: {{secretKeyRef: {{name: creds, key: password}}}}}}
  - {{name: MODE, valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}
  - {{name: MISSING, valueFrom: {{secretKeyRef: {{name: creds, key: nope, optional: true}}}}}}
  - {{name: mode, value: env-wins}}
  - {{name: FROM_ENVFROM, value: '$(S_AWS_KEY)-$(mode)'}}
  - {{name: EMPTY_VALUE, value: '', valueFrom: {{configMapKeyRef: {{name: settings, key: mode}}}}}}
  envFrom:
  - {{prefix: S_, secretRef: {{name: creds}}}}
  - {{configMapRef: {{name: settings}}}}
  command: [sh, -c, 'echo \"$PASSWORD $MODE $S_AWS_KEY ${{MISSING-unset}} $(cat /secret/password) $(stat -c %a /secret/password) $(cat /cm/sub/config.yaml)\" > /data/out; echo \"$mode $FROM_ENVFROM $EMPTY_VALUE\" > /data/precedence; touch /secret/x || true']
  volumeMounts:
  - {{name: data, mountPath: /data}}
  - {{name: secret-vol, mountPath: /secret}}
  - {{name: cm-vol, mountPath: /cm}}
"
    );
    let missing = start_error(
        config.clone(),
        "containers: [{name: m, image: busybox, command: ['true'], envFrom: [{secretRef: {name: absent}}]}]",
    );
    assert!(
        missing.contains(&format!("envFrom secret {namespace}/absent does not exist")),
        "{missing}"
    );
    let report = run(config, &yaml);
    runtime.block_on(async {
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let _ = namespaces
            .delete(&namespace, &DeleteParams::default())
            .await;
    });
    assert_eq!(report.phase, PodPhase::Succeeded, "{report:#?}");
    assert_eq!(dirs.data("out"), "s3cret fast ak unset s3cret 400 a: 1\n");
    // env wins over envFrom and expands against it; an empty value leaves valueFrom to decide.
    assert_eq!(dirs.data("precedence"), "env-wins ak-env-wins fast\n");
    assert!(dirs.log("main").contains("Read-only file system"));
}

/// The CLI blocks SIGTERM/SIGINT/SIGHUP for its own signal handling; containers must start with
/// nothing blocked, as under a container runtime, or a sidecar never sees its SIGTERM.
#[test]
fn cli_containers_start_with_no_signal_blocked() {
    let dirs = Dirs::new();
    let manifest = dirs.out.path().join("pod.json");
    std::fs::write(
        &manifest,
        r#"{"kind":"Pod","metadata":{"name":"mask"},"spec":{"containers":[{"name":"c","image":"busybox","command":["grep","SigBlk","/proc/self/status"]}]}}"#,
    )
    .unwrap();
    let logs = dirs.out.path().join("logs");
    let status = cli()
        .arg(&manifest)
        .args(["--host-image", "*", "--quiet", "-o"])
        .arg(&logs)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    let log = std::fs::read_to_string(logs.join("c.log")).unwrap();
    assert_eq!(log.trim(), "SigBlk:\t0000000000000000");
}
