//! The notifier injection (api.md §4) on CronJob JSON: its shape, idempotency, in-place updates,
//! warnings, and a property test over generated pod specs.

use std::time::Duration;

use backup_operator::admission;
use backup_operator::inject::{self, InjectorConfig, NotifierCa, NotifierMode};
use proptest::prelude::*;
use serde_json::{Value, json};

fn config(mode: NotifierMode) -> InjectorConfig {
    InjectorConfig {
        image: "registry.example/backup-operator:test".into(),
        mode,
        timeout: Duration::from_secs(10),
        resources: json!({"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}}),
        policy_env: vec![
            ("NOTIFY_REQUIRE_HTTPS", "false".into()),
            ("NOTIFY_ALLOW_DESTINATIONS", "10.0.0.0/8".into()),
        ],
        ca: None,
        run_as_user: Some(65532),
    }
}

fn relay_ca() -> Option<NotifierCa> {
    Some(NotifierCa {
        config_map: "relay-ca".into(),
        key: "bundle.pem".into(),
    })
}

fn cron_job(pod_spec: Value, annotations: Value) -> Value {
    json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": "nightly", "namespace": "default",
            "labels": {"backups.k8s.bnerd.com/notify": "true"},
            "annotations": annotations,
        },
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"spec": pod_spec}}}}
    })
}

fn default_annotations() -> Value {
    json!({
        "backups.k8s.bnerd.com/webhook-success": "https://hooks.example.com/ok",
        "backups.k8s.bnerd.com/webhook-failure": "https://hooks.example.com/fail",
        "backups.k8s.bnerd.com/notify-kind": "VolumeBackup",
        "backups.k8s.bnerd.com/notify-host": "default-data",
        "backups.k8s.bnerd.com/notify-volume": "data",
    })
}

fn restic_pod() -> Value {
    json!({
        "restartPolicy": "Never",
        "containers": [{"name": "backup", "image": "restic/restic:0.17.3", "command": ["restic", "backup", "/data"], "args": ["--verbose"]}]
    })
}

fn apply(doc: &Value, ops: &[json_patch::PatchOperation]) -> Value {
    let mut out = doc.clone();
    json_patch::patch(&mut out, ops).unwrap();
    out
}

fn pod_mut(cj: &mut Value) -> &mut Value {
    &mut cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

fn pod(cj: &Value) -> &Value {
    &cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
}

fn env_of(container: &Value) -> std::collections::BTreeMap<String, String> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                e["value"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn sidecar_injection_has_the_documented_shape() {
    let cj = cron_job(restic_pod(), default_annotations());
    let m = inject::mutate(cj.clone(), &config(NotifierMode::Sidecar));
    assert!(m.injected() && m.warnings.is_empty(), "{m:?}");
    let out = apply(&cj, &m.patch);
    let p = pod(&out);
    assert_eq!(
        p["volumes"],
        json!([{"name": "backup-notifier", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}])
    );
    let init = p["initContainers"].as_array().unwrap();
    assert_eq!(init.len(), 2);
    assert_eq!(init[0]["name"], "notifier-install");
    assert_eq!(
        init[0]["command"],
        json!([
            "/usr/local/bin/backup-notifier",
            "install",
            "/backup-notifier/backup-notifier"
        ])
    );
    assert_eq!(init[1]["name"], "notifier");
    assert_eq!(init[1]["restartPolicy"], "Always");
    assert_eq!(init[1]["image"], "registry.example/backup-operator:test");
    let env = env_of(&init[1]);
    assert_eq!(env["NOTIFY_SUCCESS_URL"], "https://hooks.example.com/ok");
    assert_eq!(env["NOTIFY_FAILURE_URL"], "https://hooks.example.com/fail");
    assert_eq!(env["NOTIFY_KIND"], "VolumeBackup");
    assert_eq!(env["NOTIFY_HOST"], "default-data");
    assert_eq!(env["NOTIFY_VOLUME"], "data");
    assert_eq!(env["NOTIFY_MODE"], "sidecar");
    assert_eq!(
        env["NOTIFY_ALLOW_DESTINATIONS"], "10.0.0.0/8",
        "the operator's URL policy travels along"
    );
    for c in init {
        let sc = &c["securityContext"];
        assert_eq!(sc["runAsNonRoot"], true);
        assert_eq!(sc["readOnlyRootFilesystem"], true);
        assert_eq!(sc["allowPrivilegeEscalation"], false);
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    }
    let main = &p["containers"][0];
    assert_eq!(
        main["command"],
        json!([
            "/backup-notifier/backup-notifier",
            "exec",
            "--result",
            "/backup-notifier/result.json",
            "--",
            "restic",
            "backup",
            "/data"
        ])
    );
    assert_eq!(main["args"], json!(["--verbose"]), "args stay as they were");
    assert_eq!(
        main["volumeMounts"],
        json!([{"name": "backup-notifier", "mountPath": "/backup-notifier"}])
    );
    assert_eq!(p["containers"].as_array().unwrap().len(), 1);
    assert!(
        p.get("terminationGracePeriodSeconds").is_none(),
        "the default 30s already fits 10s + margin"
    );
    // Everything outside the pod spec is untouched.
    assert_eq!(out["metadata"], cj["metadata"]);
    assert_eq!(out["spec"]["schedule"], cj["spec"]["schedule"]);
}

/// The backup command (the restic script, in the operator's CronJobs) is not copied into the
/// patch: only the wrapper's words go in, before it; declining takes exactly those out again.
#[test]
fn the_patch_carries_the_wrappers_words_not_the_command() {
    let cj = cron_job(restic_pod(), default_annotations());
    let command = "/spec/jobTemplate/spec/template/spec/containers/0/command";
    let ops = |m: &inject::Mutation| -> Vec<Value> {
        m.patch
            .iter()
            .map(|op| serde_json::to_value(op).unwrap())
            .filter(|op| op["path"].as_str().unwrap().starts_with(command))
            .collect()
    };
    let m = inject::mutate(cj.clone(), &config(NotifierMode::Sidecar));
    let words = [
        "/backup-notifier/backup-notifier",
        "exec",
        "--result",
        "/backup-notifier/result.json",
        "--",
    ];
    let want: Vec<Value> = words
        .iter()
        .enumerate()
        .map(|(i, w)| json!({"op": "add", "path": format!("{command}/{i}"), "value": w}))
        .collect();
    assert_eq!(ops(&m), want);
    let patch = serde_json::to_string(&m.patch).unwrap();
    assert!(!patch.contains("\"restic\""), "{patch}");

    let injected = apply(&cj, &m.patch);
    let mut unlabelled = injected.clone();
    unlabelled["metadata"]["labels"] = json!({});
    let removal = inject::mutate(unlabelled.clone(), &config(NotifierMode::Sidecar));
    let removes: Vec<Value> = (0..5)
        .map(|_| json!({"op": "remove", "path": format!("{command}/0")}))
        .collect();
    assert_eq!(ops(&removal), removes);
    assert_eq!(
        pod(&apply(&unlabelled, &removal.patch))["containers"][0]["command"],
        pod(&cj)["containers"][0]["command"]
    );
}

#[test]
fn mutating_a_mutated_cron_job_yields_an_empty_patch_even_with_apiserver_defaults() {
    let cj = cron_job(restic_pod(), default_annotations());
    let mut cfg = config(NotifierMode::Sidecar);
    cfg.ca = relay_ca();
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    // What the apiserver adds when it stores the object must not look like drift.
    once["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][1]["configMap"]["defaultMode"] =
        json!(420);
    for c in pod(&once)["initContainers"]
        .as_array()
        .unwrap()
        .clone()
        .iter()
        .enumerate()
    {
        once["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][c.0]["imagePullPolicy"] =
            json!("IfNotPresent");
        once["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][c.0]["terminationMessagePath"] =
            json!("/dev/termination-log");
    }
    once["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] =
        json!("16Mi");
    let again = inject::mutate(once.clone(), &cfg);
    assert!(again.patch.is_empty(), "{:?}", again.patch);
    assert!(again.injected());
}

#[test]
fn a_changed_url_updates_the_notifier_in_place() {
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    once["metadata"]["annotations"]["backups.k8s.bnerd.com/webhook-success"] =
        json!("https://hooks.example.com/new");
    once["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("backups.k8s.bnerd.com/webhook-failure");
    let m = inject::mutate(once.clone(), &cfg);
    assert_eq!(m.patch.len(), 1, "only the notifier changes: {:?}", m.patch);
    let twice = apply(&once, &m.patch);
    let init = pod(&twice)["initContainers"].as_array().unwrap();
    assert_eq!(init.iter().filter(|c| c["name"] == "notifier").count(), 1);
    let env = env_of(&init[1]);
    assert_eq!(env["NOTIFY_SUCCESS_URL"], "https://hooks.example.com/new");
    assert!(!env.contains_key("NOTIFY_FAILURE_URL"));
    assert_eq!(
        pod(&twice)["containers"][0]["command"],
        pod(&once)["containers"][0]["command"],
        "wrapped once, not twice"
    );
}

/// The injector's own entries are exactly what its configuration says: a field left by an
/// earlier configuration (a dropped CPU limit) or added by hand (`readOnly` on the notifier's
/// mount, which would keep the wrapper from recording the outcome) is replaced, once.
#[test]
fn fields_left_in_the_injectors_entries_are_replaced() {
    let mut limited = config(NotifierMode::Sidecar);
    limited.resources["limits"]["cpu"] = json!("100m");
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &limited).patch);
    let mounts = &mut pod_mut(&mut once)["containers"][0]["volumeMounts"];
    assert_eq!(mounts[0]["name"], "backup-notifier");
    mounts[0]["readOnly"] = json!(true);
    let m = inject::mutate(once.clone(), &cfg);
    let twice = apply(&once, &m.patch);
    for c in pod(&twice)["initContainers"].as_array().unwrap() {
        assert_eq!(c["resources"]["limits"], json!({"memory": "64Mi"}), "{c}");
    }
    assert_eq!(
        pod(&twice)["containers"][0]["volumeMounts"],
        json!([{"name": "backup-notifier", "mountPath": "/backup-notifier"}])
    );
    assert!(inject::mutate(twice, &cfg).patch.is_empty());
}

/// Another mutating webhook runs after ours (we are reinvoked, `reinvocationPolicy: IfNeeded`):
/// a container it puts in front does not move the injection to it (no `notify-container`
/// annotation: the target was the first container), and a variable it adds to our notifier (an
/// egress proxy) is kept, so our second call is empty. A `NOTIFY_` variable we no longer set is
/// still ours, and goes.
#[test]
fn another_webhooks_changes_neither_move_nor_undo_the_injection() {
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let wrapped = pod(&once)["containers"][0]["command"].clone();
    let p = pod_mut(&mut once);
    p["containers"].as_array_mut().unwrap().insert(
        0,
        json!({"name": "proxy", "image": "proxy", "command": ["proxy"]}),
    );
    p["initContainers"][1]["env"]
        .as_array_mut()
        .unwrap()
        .insert(
            0,
            json!({"name": "HTTPS_PROXY", "value": "http://proxy:3128"}),
        );
    let again = inject::mutate(once.clone(), &cfg);
    assert!(again.patch.is_empty(), "{:?}", again.patch);
    assert_eq!(pod(&once)["containers"][1]["command"], wrapped);
    assert_eq!(pod(&once)["containers"][0]["command"], json!(["proxy"]));

    let mut stale = once.clone();
    pod_mut(&mut stale)["initContainers"][1]["env"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "NOTIFY_DENY_DESTINATIONS", "value": "hooks.example.com"}));
    let fixed = apply(&stale, &inject::mutate(stale.clone(), &cfg).patch);
    let env = env_of(&pod(&fixed)["initContainers"][1]);
    assert!(!env.contains_key("NOTIFY_DENY_DESTINATIONS"), "{env:?}");
    assert!(inject::mutate(fixed, &cfg).patch.is_empty());
}

/// A command that is nothing but the wrapper's words wraps nothing: no injection, a warning.
#[test]
fn a_command_of_only_the_wrappers_words_is_not_injected() {
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let command = pod(&once)["containers"][0]["command"]
        .as_array()
        .unwrap()
        .clone();
    let words = command.len() - 3;
    let mut bare = cron_job(restic_pod(), default_annotations());
    pod_mut(&mut bare)["containers"][0]["command"] = json!(command[..words]);
    let m = inject::mutate(bare, &cfg);
    assert!(!m.injected(), "{:?}", m.patch);
    // Left as written: unwrapped, it would run the image's entrypoint instead.
    assert!(m.patch.is_empty(), "{:?}", m.patch);
    assert!(
        m.warnings.iter().any(|w| w.contains("has no command")),
        "{:?}",
        m.warnings
    );
}

/// Moving `notify-container` to another container takes the wrapper and the mount out of the
/// old one.
#[test]
fn a_new_target_leaves_nothing_in_the_old_one() {
    let cfg = config(NotifierMode::Sidecar);
    let spec = json!({"restartPolicy": "Never", "containers": [
        {"name": "a", "image": "i", "command": ["run-a"]},
        {"name": "b", "image": "i", "command": ["run-b"], "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    ]});
    let mut ann = default_annotations();
    ann["backups.k8s.bnerd.com/notify-container"] = json!("a");
    let cj = cron_job(spec.clone(), ann);
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    once["metadata"]["annotations"]["backups.k8s.bnerd.com/notify-container"] = json!("b");
    let twice = apply(&once, &inject::mutate(once.clone(), &cfg).patch);
    assert_eq!(pod(&twice)["containers"][0], spec["containers"][0]);
    assert_eq!(
        pod(&twice)["containers"][1]["volumeMounts"],
        json!([{"name": "data", "mountPath": "/data"}, {"name": "backup-notifier", "mountPath": "/backup-notifier"}])
    );
    assert!(inject::mutate(twice, &cfg).patch.is_empty());
}

/// A target that already mounts something at the notifier's path would make a pod template the
/// apiserver refuses: nothing is injected, and the warning says why.
#[test]
fn a_target_using_the_notifiers_mount_path_is_left_alone_with_a_warning() {
    let cfg = config(NotifierMode::Sidecar);
    let mut spec = restic_pod();
    spec["containers"][0]["volumeMounts"] =
        json!([{"name": "data", "mountPath": "/backup-notifier/"}]);
    let cj = cron_job(spec, default_annotations());
    let m = inject::mutate(cj, &cfg);
    assert!(m.patch.is_empty(), "{:?}", m.patch);
    assert_eq!(
        m.warnings,
        [
            "backup-operator: container \"backup\" mounts volume \"data\" at /backup-notifier, the path the notifier's files are mounted at; mount it elsewhere to receive notifications. No notification will be sent"
        ]
    );
}

#[test]
fn container_mode_and_switching_modes_keep_exactly_one_notifier() {
    let cj = cron_job(restic_pod(), default_annotations());
    let as_container = apply(
        &cj,
        &inject::mutate(cj.clone(), &config(NotifierMode::Container)).patch,
    );
    let p = pod(&as_container);
    assert_eq!(p["initContainers"].as_array().unwrap().len(), 1);
    let containers = p["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2);
    assert_eq!(containers[1]["name"], "notifier");
    assert!(containers[1].get("restartPolicy").is_none());
    assert_eq!(env_of(&containers[1])["NOTIFY_MODE"], "container");

    let back = apply(
        &as_container,
        &inject::mutate(as_container.clone(), &config(NotifierMode::Sidecar)).patch,
    );
    let p = pod(&back);
    assert_eq!(p["containers"].as_array().unwrap().len(), 1);
    assert_eq!(
        p["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["name"] == "notifier")
            .count(),
        1
    );
}

#[test]
fn a_ca_configmap_is_mounted_in_the_notifier_only_and_goes_when_the_flag_goes() {
    let cj = cron_job(restic_pod(), default_annotations());
    let mut cfg = config(NotifierMode::Sidecar);
    cfg.ca = relay_ca();
    let with_ca = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let p = pod(&with_ca);
    assert_eq!(
        p["volumes"][1],
        json!({"name": "backup-notifier-ca", "configMap": {
            "name": "relay-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}], "optional": true}})
    );
    let notifier = &p["initContainers"][1];
    assert_eq!(notifier["name"], "notifier");
    assert_eq!(
        env_of(notifier)["NOTIFY_CA_FILE"],
        "/backup-notifier-ca/ca.crt"
    );
    assert_eq!(
        notifier["volumeMounts"],
        json!([{"name": "backup-notifier", "mountPath": "/backup-notifier"},
               {"name": "backup-notifier-ca", "mountPath": "/backup-notifier-ca", "readOnly": true}])
    );
    for c in [&p["initContainers"][0], &p["containers"][0]] {
        assert_eq!(
            c["volumeMounts"],
            json!([{"name": "backup-notifier", "mountPath": "/backup-notifier"}]),
            "only the notifier reads the CA"
        );
    }
    assert!(inject::mutate(with_ca.clone(), &cfg).patch.is_empty());
    assert_eq!(inject::inspect(&with_ca), Ok(()));

    let mut other_key = config(NotifierMode::Sidecar);
    other_key.ca = Some(NotifierCa {
        config_map: "relay-ca".into(),
        key: "ca.crt".into(),
    });
    let m = inject::mutate(with_ca.clone(), &other_key);
    let replaced = apply(&with_ca, &m.patch);
    assert_eq!(
        pod(&replaced)["volumes"][1]["configMap"]["items"],
        json!([{"key": "ca.crt", "path": "ca.crt"}])
    );
    assert_eq!(pod(&replaced)["volumes"].as_array().unwrap().len(), 2);

    let without = apply(
        &with_ca,
        &inject::mutate(with_ca.clone(), &config(NotifierMode::Sidecar)).patch,
    );
    assert_eq!(
        without,
        apply(
            &cj,
            &inject::mutate(cj.clone(), &config(NotifierMode::Sidecar)).patch
        )
    );
    assert_eq!(pod(&without)["volumes"].as_array().unwrap().len(), 1);
}

/// `--notifier-run-as-user`: a fixed ID in both injected containers, or none at all (OpenShift
/// assigns one); switching updates them in place.
#[test]
fn the_user_id_flag_sets_or_leaves_out_the_injected_containers_ids() {
    let cj = cron_job(restic_pod(), default_annotations());
    let fixed = config(NotifierMode::Sidecar);
    let mut platform = config(NotifierMode::Sidecar);
    platform.run_as_user = None;
    let ids = |cj: &Value| -> Vec<(Value, Value, Value)> {
        pod(cj)["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let sc = &c["securityContext"];
                (
                    sc["runAsUser"].clone(),
                    sc["runAsGroup"].clone(),
                    sc["runAsNonRoot"].clone(),
                )
            })
            .collect()
    };
    let with_id = apply(&cj, &inject::mutate(cj.clone(), &fixed).patch);
    assert_eq!(
        ids(&with_id),
        vec![(json!(65532), json!(65532), json!(true)); 2]
    );
    let m = inject::mutate(with_id.clone(), &platform);
    assert!(
        !m.patch.is_empty(),
        "the flag's change reaches injected CronJobs"
    );
    let without = apply(&with_id, &m.patch);
    assert_eq!(
        ids(&without),
        vec![(Value::Null, Value::Null, json!(true)); 2]
    );
    assert_eq!(
        without,
        apply(&cj, &inject::mutate(cj.clone(), &platform).patch)
    );
    assert!(inject::mutate(without.clone(), &platform).patch.is_empty());
    assert_eq!(inject::inspect(&without), Ok(()));
    assert_eq!(
        pod(&without)["containers"][0]["securityContext"],
        pod(&cj)["containers"][0]["securityContext"],
        "the backup container's own context is not ours to change"
    );
}

/// With `--notifier-run-as-user none` the injected containers inherit the pod's `runAsUser`; in
/// a pod that runs as root their `runAsNonRoot` would stop the whole pod, so there they run as
/// the image's user. A non-root pod user is inherited as before, and the pod's change from one to
/// the other updates them in place.
#[test]
fn a_pod_that_runs_as_root_does_not_make_the_injected_containers_root() {
    let mut platform = config(NotifierMode::Container);
    platform.run_as_user = None;
    let users = |cj: &Value| -> Vec<(Value, Value)> {
        let spec = pod(cj);
        let all = spec["initContainers"].as_array().unwrap().iter();
        all.chain(spec["containers"].as_array().unwrap())
            .filter(|c| c["name"].as_str().unwrap().starts_with("notifier"))
            .map(|c| {
                let sc = &c["securityContext"];
                (sc["runAsUser"].clone(), sc["runAsGroup"].clone())
            })
            .collect()
    };
    let with_pod_user = |uid: i64| {
        let mut spec = restic_pod();
        spec["securityContext"] = json!({"runAsUser": uid, "fsGroup": 2000});
        cron_job(spec, default_annotations())
    };
    let root = with_pod_user(0);
    let injected = apply(&root, &inject::mutate(root.clone(), &platform).patch);
    assert_eq!(users(&injected), vec![(json!(65532), json!(65532)); 2]);
    assert!(inject::mutate(injected.clone(), &platform).patch.is_empty());

    let mut non_root = injected.clone();
    non_root["spec"]["jobTemplate"]["spec"]["template"]["spec"]["securityContext"]["runAsUser"] =
        json!(1000);
    let m = inject::mutate(non_root.clone(), &platform);
    let updated = apply(&non_root, &m.patch);
    assert_eq!(users(&updated), vec![(Value::Null, Value::Null); 2]);
    let fresh = with_pod_user(1000);
    assert_eq!(
        updated,
        apply(&fresh, &inject::mutate(fresh.clone(), &platform).patch)
    );
    // A fixed ID from the flag wins over the pod's, root or not.
    let mut fixed = config(NotifierMode::Container);
    fixed.run_as_user = Some(1_000_650_000);
    let pinned = apply(&root, &inject::mutate(root.clone(), &fixed).patch);
    assert_eq!(
        users(&pinned),
        vec![(json!(1_000_650_000), json!(1_000_650_000)); 2]
    );
}

/// A labelled CronJob a user wrote may use the name for a volume of its own: it is neither
/// replaced (with the flag) nor removed (without it).
#[test]
fn a_users_own_volume_of_the_ca_volumes_name_is_left_alone() {
    let mut spec = restic_pod();
    spec["volumes"] = json!([{"name": "backup-notifier-ca", "secret": {"secretName": "mine"}}]);
    spec["containers"][0]["volumeMounts"] =
        json!([{"name": "backup-notifier-ca", "mountPath": "/etc/mine"}]);
    let cj = cron_job(spec, default_annotations());
    let mut cfg = config(NotifierMode::Sidecar);
    cfg.ca = relay_ca();
    for cfg in [cfg, config(NotifierMode::Sidecar)] {
        let with_ca = cfg.ca.is_some();
        let m = inject::mutate(cj.clone(), &cfg);
        assert!(m.injected());
        let out = apply(&cj, &m.patch);
        assert_eq!(
            pod(&out)["volumes"][0],
            json!({"name": "backup-notifier-ca", "secret": {"secretName": "mine"}})
        );
        let notifier = &pod(&out)["initContainers"][1];
        assert!(!env_of(notifier).contains_key("NOTIFY_CA_FILE"));
        assert_eq!(notifier["volumeMounts"].as_array().unwrap().len(), 1);
        assert_eq!(
            m.warnings
                .iter()
                .any(|w| w.contains("has its own volume \"backup-notifier-ca\"")),
            with_ca,
            "{:?}",
            m.warnings
        );
        assert!(inject::mutate(out, &cfg).patch.is_empty());
    }
}

#[test]
fn a_target_without_command_or_a_missing_target_is_left_alone_with_a_warning() {
    let mut no_command = restic_pod();
    no_command["containers"][0]
        .as_object_mut()
        .unwrap()
        .remove("command");
    let cj = cron_job(no_command, default_annotations());
    let m = inject::mutate(cj.clone(), &config(NotifierMode::Sidecar));
    assert!(m.patch.is_empty() && !m.injected());
    assert!(
        m.warnings[0].contains("container \"backup\" has no command"),
        "{:?}",
        m.warnings
    );

    let mut ann = default_annotations();
    ann["backups.k8s.bnerd.com/notify-container"] = json!("restic");
    let cj = cron_job(restic_pod(), ann);
    let m = inject::mutate(cj.clone(), &config(NotifierMode::Sidecar));
    assert!(m.patch.is_empty());
    assert!(
        m.warnings[0].contains("names container \"restic\", which does not exist"),
        "{:?}",
        m.warnings
    );

    // The notifier as the target, in container mode where it is a regular container: it would
    // wrap itself, and the next request would not know it for ours. Declined from the start,
    // and after an injection the injection goes.
    let cfg = config(NotifierMode::Container);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut injected = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    injected["metadata"]["annotations"]["backups.k8s.bnerd.com/notify-container"] =
        json!("notifier");
    let m = inject::mutate(injected.clone(), &cfg);
    assert!(!m.injected());
    assert!(
        m.warnings[0].contains("names container \"notifier\", the notifier itself"),
        "{:?}",
        m.warnings
    );
    let declined = apply(&injected, &m.patch);
    let containers = &declined["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"];
    assert!(
        containers
            .as_array()
            .is_some_and(|cs| cs.iter().all(|c| c["name"] != "notifier")),
        "{containers:#}"
    );
    assert!(inject::mutate(declined, &cfg).patch.is_empty());
}

/// How a user turns an injected CronJob into one the injector declines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Decline {
    /// `kubectl apply` of a manifest without the label.
    Unlabel,
    LabelFalse,
    /// `kubectl apply` of a manifest without the target's command: the three-way merge deletes
    /// the (wrapped) command and leaves everything else the injection added.
    DropCommand,
    /// `notify-container` names a container that does not exist.
    MissingTarget,
}

fn declined(cj: &Value, how: Decline, target: &str) -> Value {
    let mut cj = cj.clone();
    let label = "backups.k8s.bnerd.com/notify";
    match how {
        Decline::Unlabel => {
            cj["metadata"]["labels"]
                .as_object_mut()
                .unwrap()
                .remove(label);
        }
        Decline::LabelFalse => cj["metadata"]["labels"][label] = json!("false"),
        Decline::DropCommand => {
            for c in cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap()
                .iter_mut()
                .filter(|c| c["name"] == target)
            {
                c.as_object_mut().unwrap().remove("command");
            }
        }
        Decline::MissingTarget => {
            cj["metadata"]["annotations"]["backups.k8s.bnerd.com/notify-container"] = json!("gone")
        }
    }
    cj
}

fn names(p: &Value, list: &str) -> Vec<String> {
    p[list]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect()
}

/// A container-mode notifier that is all `containers` holds (the user's own container removed)
/// is kept when the injector declines: a pod without containers would get the object refused,
/// where declining means admitting it with a warning.
#[test]
fn declining_never_leaves_a_pod_without_containers() {
    let cfg = config(NotifierMode::Container);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    once["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .retain(|c| c["name"] != "backup");
    let m = inject::mutate(once.clone(), &cfg);
    assert!(!m.injected());
    assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
    let out = apply(&once, &m.patch);
    assert_eq!(names(pod(&out), "containers"), ["notifier"]);
}

/// A notifier left without its wrapper reports failure on every run (sidecar) or keeps the pod
/// running forever (container mode), so declining takes an earlier injection out completely.
#[test]
fn a_declined_cron_job_loses_an_earlier_injection_and_gets_its_command_back() {
    let mut spec = restic_pod();
    spec["terminationGracePeriodSeconds"] = json!(5);
    let cj = cron_job(spec, default_annotations());
    for mode in [NotifierMode::Sidecar, NotifierMode::Container] {
        for ca in [None, relay_ca()] {
            let mut cfg = config(mode);
            cfg.ca = ca;
            let once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
            assert_eq!(pod(&once)["terminationGracePeriodSeconds"], 30);
            for how in [
                Decline::Unlabel,
                Decline::LabelFalse,
                Decline::DropCommand,
                Decline::MissingTarget,
            ] {
                let case = format!("{mode:?}, CA {}, {how:?}", cfg.ca.is_some());
                let broken = declined(&once, how, "backup");
                let m = inject::mutate(broken.clone(), &cfg);
                assert!(!m.injected(), "{case}");
                let out = apply(&broken, &m.patch);
                let p = pod(&out);
                assert!(names(p, "initContainers").is_empty(), "{case}: {p}");
                assert!(names(p, "volumes").is_empty(), "{case}: {p}");
                assert_eq!(names(p, "containers"), ["backup"], "{case}");
                let backup = &p["containers"][0];
                assert!(backup.get("volumeMounts").is_none(), "{case}: {backup}");
                if how == Decline::DropCommand {
                    assert!(backup.get("command").is_none(), "{case}: {backup}");
                } else {
                    assert_eq!(
                        backup["command"],
                        json!(["restic", "backup", "/data"]),
                        "{case}"
                    );
                }
                // Exactly the CronJob as declined before it was ever injected, but for the grace
                // period, whose value before the raise is not recorded anywhere.
                let mut expected = declined(&cj, how, "backup");
                expected["spec"]["jobTemplate"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] =
                    json!(30);
                assert_eq!(out, expected, "{case}");
                match how {
                    Decline::Unlabel | Decline::LabelFalse => {
                        assert!(m.warnings.is_empty(), "{case}: {:?}", m.warnings)
                    }
                    Decline::DropCommand | Decline::MissingTarget => {
                        assert_eq!(m.warnings.len(), 1, "{case}: {:?}", m.warnings);
                        let w = m.warnings[0].to_lowercase();
                        assert!(
                            w.contains("no notification will be sent")
                                && w.ends_with("(the notifier injected earlier has been removed)")
                                && !w.contains('\n'),
                            "{case}: {w}"
                        );
                    }
                }
                let again = inject::mutate(out.clone(), &cfg);
                assert!(again.patch.is_empty(), "{case}: {:?}", again.patch);
                assert!(
                    again
                        .warnings
                        .iter()
                        .all(|w| !w.contains("has been removed")),
                    "{case}: {:?}",
                    again.warnings
                );
            }
            // Labelled again: the same notifier as before.
            let back = declined(&once, Decline::Unlabel, "backup");
            let removed = apply(&back, &inject::mutate(back.clone(), &cfg).patch);
            let mut relabelled = removed;
            relabelled["metadata"]["labels"]["backups.k8s.bnerd.com/notify"] = json!("true");
            let m = inject::mutate(relabelled.clone(), &cfg);
            assert_eq!(apply(&relabelled, &m.patch), once);
        }
    }
}

/// Injecting would delete or overwrite a user's own entry under one of the injector's names, so
/// there is no injection, with a warning naming the clash.
#[test]
fn a_users_own_entry_under_a_reserved_name_stops_the_injection_and_is_left_alone() {
    let own_container =
        json!({"name": "notifier", "image": "busybox", "command": ["sh", "-c", "sleep 1"]});
    let cases = [
        (
            "containers",
            own_container.clone(),
            "container \"notifier\"",
        ),
        (
            "initContainers",
            json!({"name": "notifier", "image": "busybox", "command": ["true"]}),
            "init container \"notifier\"",
        ),
        (
            "initContainers",
            json!({"name": "notifier-install", "image": "busybox"}),
            "init container \"notifier-install\"",
        ),
        // Init and regular containers share their names: ours would clash with it.
        (
            "containers",
            json!({"name": "notifier-install", "image": "busybox", "command": ["true"]}),
            "container \"notifier-install\"",
        ),
        (
            "volumes",
            json!({"name": "backup-notifier", "persistentVolumeClaim": {"claimName": "mine"}}),
            "volume \"backup-notifier\"",
        ),
        (
            "volumes",
            json!({"name": "backup-notifier", "emptyDir": {}}),
            "volume \"backup-notifier\"",
        ),
    ];
    for mode in [NotifierMode::Sidecar, NotifierMode::Container] {
        for (list, entry, clash) in &cases {
            let mut spec = restic_pod();
            match spec[*list].as_array_mut() {
                Some(l) => l.push(entry.clone()),
                None => spec[*list] = json!([entry]),
            }
            let cj = cron_job(spec, default_annotations());
            let m = inject::mutate(cj.clone(), &config(mode));
            assert!(
                m.patch.is_empty() && !m.injected(),
                "{mode:?} {clash}: {m:?}"
            );
            assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
            assert!(
                m.warnings[0].starts_with(&format!(
                    "backup-operator: the pod template has its own {clash}, a name the notifier injection reserves"
                )) && m.warnings[0].ends_with("No notification will be sent"),
                "{:?}",
                m.warnings
            );
        }
    }

    // Taken after an injection (sidecar mode: the user's own init container where the notifier
    // was): the rest of the injection goes, the user's container stays.
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let mut taken = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let own_init = json!({"name": "notifier", "image": "busybox", "command": ["true"]});
    taken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"][1] =
        own_init.clone();
    let m = inject::mutate(taken.clone(), &cfg);
    assert!(!m.injected());
    let out = apply(&taken, &m.patch);
    let mut expected = cj.clone();
    expected["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"] =
        json!([own_init]);
    assert_eq!(out, expected);
    assert!(
        m.warnings.len() == 1
            && m.warnings[0].contains("its own init container \"notifier\"")
            && m.warnings[0].ends_with("(the notifier injected earlier has been removed)"),
        "{:?}",
        m.warnings
    );
}

/// What an earlier version (or the apiserver's defaults) made is still the injector's own: it
/// is updated, not taken for a user's entry.
#[test]
fn the_injectors_own_entries_are_recognised_by_shape_across_versions() {
    let cfg = config(NotifierMode::Sidecar);
    let cj = cron_job(restic_pod(), default_annotations());
    let once = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let mut older = once.clone();
    let p = &mut older["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    p["volumes"][0] = json!({"name": "backup-notifier", "emptyDir": {"medium": "Memory"}});
    for c in p["initContainers"].as_array_mut().unwrap() {
        c["image"] = json!("registry.example/backup-operator:old");
        c["command"]
            .as_array_mut()
            .unwrap()
            .push(json!("--old-flag"));
    }
    let m = inject::mutate(older.clone(), &cfg);
    assert!(m.injected() && m.warnings.is_empty(), "{m:?}");
    assert_eq!(apply(&older, &m.patch), once);
}

/// Unwrapping takes off exactly the wrapper the injector builds: a `--` in the original command
/// stays, and a command that only resembles the wrapper is not the injector's.
#[test]
fn unwrapping_restores_exactly_the_original_command() {
    let original = json!(["sh", "-c", "restic backup -- /data", "--", "x"]);
    let mut spec = restic_pod();
    spec["containers"][0]["command"] = original.clone();
    let cj = cron_job(spec, default_annotations());
    let once = apply(
        &cj,
        &inject::mutate(cj.clone(), &config(NotifierMode::Sidecar)).patch,
    );
    let wrapped = pod(&once)["containers"][0]["command"].as_array().unwrap();
    assert_eq!(
        inject::unwrapped_command(wrapped),
        Some(original.as_array().unwrap().as_slice())
    );
    let resembling = json!([
        "/backup-notifier/backup-notifier",
        "exec",
        "--result",
        "/tmp/elsewhere.json",
        "--",
        "x"
    ]);
    assert_eq!(
        inject::unwrapped_command(resembling.as_array().unwrap()),
        None
    );
}

/// With restartPolicy OnFailure a failed attempt is retried in the same pod, whose notifier must
/// wait for the last one; with Never every retry is a new pod with its own notification.
#[test]
fn the_notifier_learns_of_in_place_retries_and_retries_in_new_pods_are_warned_about() {
    let cfg = config(NotifierMode::Sidecar);
    let notifier = |cj: &Value| {
        let out = apply(cj, &inject::mutate(cj.clone(), &cfg).patch);
        let init = pod(&out)["initContainers"].as_array().unwrap().clone();
        env_of(init.iter().find(|c| c["name"] == "notifier").unwrap())
    };
    let mut on_failure = restic_pod();
    on_failure["restartPolicy"] = json!("OnFailure");
    let mut cj = cron_job(on_failure, default_annotations());
    cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] = json!(3);
    let m = inject::mutate(cj.clone(), &cfg);
    assert!(m.injected() && m.warnings.is_empty(), "{m:?}");
    assert_eq!(
        notifier(&cj)
            .get("NOTIFY_RESTART_POLICY")
            .map(String::as_str),
        Some("OnFailure")
    );
    // Switching to Never takes the variable away again.
    let once = apply(&cj, &m.patch);
    let mut never = once.clone();
    never["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] = json!("Never");
    let again = apply(&never, &inject::mutate(never.clone(), &cfg).patch);
    let init = pod(&again)["initContainers"].as_array().unwrap();
    let env = env_of(init.iter().find(|c| c["name"] == "notifier").unwrap());
    assert!(!env.contains_key("NOTIFY_RESTART_POLICY"), "{env:?}");

    let cj = cron_job(restic_pod(), default_annotations());
    assert!(!notifier(&cj).contains_key("NOTIFY_RESTART_POLICY"));
    for (limit, says) in [
        (
            Some(json!(2)),
            "backoffLimit is 2 and restartPolicy is Never",
        ),
        (None, "backoffLimit is unset (6) and restartPolicy is Never"),
    ] {
        let mut cj = cj.clone();
        match limit {
            Some(l) => cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] = l,
            None => {
                cj["spec"]["jobTemplate"]["spec"]
                    .as_object_mut()
                    .unwrap()
                    .remove("backoffLimit");
            }
        }
        let m = inject::mutate(cj, &cfg);
        assert!(m.injected(), "{m:?}");
        assert_eq!(m.warnings.len(), 1, "{:?}", m.warnings);
        assert!(
            m.warnings[0].contains(says)
                && m.warnings[0].contains("sends its own failure notification"),
            "{:?}",
            m.warnings
        );
    }
}

#[test]
fn unlabelled_cron_jobs_are_not_touched() {
    let mut cj = cron_job(restic_pod(), default_annotations());
    cj["metadata"]["labels"] = json!({"backups.k8s.bnerd.com/notify": "false"});
    let m = inject::mutate(cj.clone(), &config(NotifierMode::Sidecar));
    assert!(m.patch.is_empty() && m.warnings.is_empty() && !m.injected());
}

#[test]
fn user_init_containers_and_mounts_are_kept_and_the_grace_period_is_raised() {
    let spec = json!({
        "terminationGracePeriodSeconds": 5,
        "initContainers": [{"name": "prepare", "image": "busybox", "command": ["true"]}],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
        "containers": [
            {"name": "sidecar-log", "image": "busybox", "command": ["sleep", "1"]},
            {"name": "backup", "image": "restic", "command": ["restic", "backup", "/data"],
             "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": true}]}
        ]
    });
    let mut ann = default_annotations();
    ann["backups.k8s.bnerd.com/notify-container"] = json!("backup");
    let cj = cron_job(spec, ann);
    let out = apply(
        &cj,
        &inject::mutate(cj.clone(), &config(NotifierMode::Sidecar)).patch,
    );
    let p = pod(&out);
    let names: Vec<&str> = p["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["notifier-install", "notifier", "prepare"]);
    assert_eq!(p["volumes"][0]["name"], "data");
    assert_eq!(p["volumes"][1]["name"], "backup-notifier");
    assert_eq!(
        p["containers"][0]["command"],
        json!(["sleep", "1"]),
        "only the target is wrapped"
    );
    assert_eq!(p["containers"][1]["volumeMounts"][0]["name"], "data");
    assert_eq!(
        p["containers"][1]["volumeMounts"][1]["name"],
        "backup-notifier"
    );
    assert_eq!(p["terminationGracePeriodSeconds"], 30);
}

/// Takes out what the injection added; the grace period is restored to `original_grace`.
fn remove_injection(cj: &Value, original_grace: Option<&Value>) -> Value {
    let mut out = cj.clone();
    let p = out["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        .as_object_mut()
        .unwrap();
    let strip = |p: &mut serde_json::Map<String, Value>, key: &str, names: &[&str]| {
        if let Some(list) = p.get_mut(key).and_then(Value::as_array_mut) {
            list.retain(|c| !names.iter().any(|n| c["name"] == *n));
            if list.is_empty() {
                p.remove(key);
            }
        }
    };
    strip(p, "volumes", &["backup-notifier", "backup-notifier-ca"]);
    strip(p, "initContainers", &["notifier-install", "notifier"]);
    strip(p, "containers", &["notifier"]);
    for c in p
        .get_mut("containers")
        .and_then(Value::as_array_mut)
        .unwrap()
    {
        let c = c.as_object_mut().unwrap();
        if let Some(original) = c
            .get("command")
            .and_then(Value::as_array)
            .and_then(|cmd| inject::unwrapped_command(cmd))
            .map(<[Value]>::to_vec)
        {
            c.insert("command".into(), Value::Array(original));
        }
        strip(c, "volumeMounts", &["backup-notifier"]);
    }
    match original_grace {
        Some(g) => p.insert("terminationGracePeriodSeconds".into(), g.clone()),
        None => p.remove("terminationGracePeriodSeconds"),
    };
    out
}

fn container_strategy(name: &'static str) -> impl Strategy<Value = Value> {
    (
        prop::option::of(prop::collection::vec("[a-z/~.-]{1,8}", 1..4)),
        prop::option::of(prop::collection::vec("[a-z0-9=-]{1,6}", 1..3)),
        prop::option::of(prop::collection::vec(("[a-z]{1,5}", "/[a-z/~]{1,8}"), 1..3)),
    )
        .prop_map(move |(command, args, mounts)| {
            let mut c = json!({"name": name, "image": "img"});
            if let Some(cmd) = command {
                c["command"] = json!(cmd);
            }
            if let Some(a) = args {
                c["args"] = json!(a);
            }
            if let Some(m) = mounts {
                c["volumeMounts"] = m
                    .iter()
                    .map(|(n, p)| json!({"name": n, "mountPath": p}))
                    .collect();
            }
            c
        })
}

fn pod_strategy() -> impl Strategy<Value = (Value, Option<String>)> {
    (
        container_strategy("main"),
        prop::option::of(container_strategy("other")),
        prop::option::of(prop::collection::vec("[a-z]{1,6}", 1..3)),
        prop::option::of(prop::collection::vec("[a-z]{1,6}", 1..3)),
        prop::option::of(0u64..60),
        prop::option::of(prop_oneof![
            Just("main".to_owned()),
            Just("other".to_owned())
        ]),
        prop_oneof![Just("Never"), Just("OnFailure")],
        // The pod's user: none, root (the injected containers must not inherit it) or another.
        prop::option::of(prop_oneof![Just(0), Just(1000)]),
    )
        .prop_map(
            |(main, other, volumes, inits, grace, target, restart, user)| {
                let mut containers = vec![main];
                containers.extend(other);
                let mut spec = json!({"containers": containers, "restartPolicy": restart});
                if let Some(uid) = user {
                    spec["securityContext"] = json!({"runAsUser": uid, "fsGroup": 2000});
                }
                if let Some(v) = volumes {
                    spec["volumes"] = v
                        .iter()
                        .map(|n| json!({"name": format!("v-{n}"), "emptyDir": {}}))
                        .collect();
                }
                if let Some(i) = inits {
                    spec["initContainers"] = i
                    .iter()
                    .map(
                        |n| json!({"name": format!("init-{n}"), "image": "x", "command": ["true"]}),
                    )
                    .collect();
                }
                if let Some(g) = grace {
                    spec["terminationGracePeriodSeconds"] = json!(g);
                }
                (spec, target)
            },
        )
}

/// A generated pod spec's CronJob (with its target container annotated, if any).
fn generated(spec: Value, target: Option<&str>) -> Value {
    let mut ann = default_annotations();
    if let Some(t) = target {
        ann["backups.k8s.bnerd.com/notify-container"] = json!(t);
    }
    cron_job(spec, ann)
}

/// The operator's flags that shape the injection: the mode, which CA, if any, is mounted, and
/// whether the injected containers get a user ID.
fn config_strategy() -> impl Strategy<Value = InjectorConfig> {
    let ca = prop_oneof![
        Just(None),
        Just(relay_ca()),
        Just(Some(NotifierCa {
            config_map: "kube-root-ca.crt".into(),
            key: "ca.crt".into(),
        })),
    ];
    (any::<bool>(), ca, any::<bool>()).prop_map(|(container_mode, ca, platform_user)| {
        let mut cfg = config(if container_mode {
            NotifierMode::Container
        } else {
            NotifierMode::Sidecar
        });
        cfg.ca = ca;
        if platform_user {
            cfg.run_as_user = None;
        }
        cfg
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn patching_twice_equals_patching_once_and_removal_restores_the_original(
        (spec, target) in pod_strategy(),
        cfg in config_strategy(),
        new_cfg in config_strategy(),
    ) {
        let cj = generated(spec.clone(), target.as_deref());
        let m = inject::mutate(cj.clone(), &cfg);
        let target_name = target.as_deref().unwrap_or("main");
        let target_exists = spec["containers"].as_array().unwrap().iter().any(|c| c["name"] == target_name);
        let has_command = spec["containers"].as_array().unwrap().iter().any(|c| c["name"] == target_name && c.get("command").is_some());
        if !(target_exists && has_command) {
            prop_assert!(m.patch.is_empty());
            prop_assert!(!m.warnings.is_empty());
            return Ok(());
        }
        let once = apply(&cj, &m.patch);
        // The target, and only the target, is wrapped, and the status check agrees.
        for c in pod(&once)["containers"].as_array().unwrap() {
            let wrapped = c["command"].as_array().is_some_and(|cmd| inject::unwrapped_command(cmd).is_some());
            prop_assert_eq!(wrapped, c["name"] == target_name, "{}", c);
        }
        prop_assert_eq!(inject::inspect(&once), Ok(()));
        let again = inject::mutate(once.clone(), &cfg);
        prop_assert!(again.patch.is_empty(), "second patch not empty: {:?}", again.patch);
        prop_assert_eq!(apply(&once, &again.patch), once.clone());
        let restored = remove_injection(&once, spec.get("terminationGracePeriodSeconds"));
        prop_assert_eq!(&restored, &cj);
        // The operator restarted with other flags: its next mutation of the stored object gives
        // what it would have made of the original, with nothing of the old injection left.
        let fresh = apply(&cj, &inject::mutate(cj.clone(), &new_cfg).patch);
        let updated = apply(&once, &inject::mutate(once.clone(), &new_cfg).patch);
        prop_assert_eq!(updated, fresh);
    }
}

fn decline_strategy() -> impl Strategy<Value = Decline> {
    prop_oneof![
        Just(Decline::Unlabel),
        Just(Decline::LabelFalse),
        Just(Decline::DropCommand),
        Just(Decline::MissingTarget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    /// Whatever the pod spec and flags, a declined CronJob keeps nothing of its injection: what
    /// the webhook leaves is what removing the injection by hand leaves.
    #[test]
    fn a_declined_injection_is_removed_completely(
        (spec, target) in pod_strategy(),
        cfg in config_strategy(),
        how in decline_strategy(),
    ) {
        let cj = generated(spec, target.as_deref());
        let m = inject::mutate(cj.clone(), &cfg);
        // Only an injected CronJob has an injection to decline; proptest draws another case.
        prop_assume!(m.injected());
        let once = apply(&cj, &m.patch);
        let broken = declined(&once, how, target.as_deref().unwrap_or("main"));
        let d = inject::mutate(broken.clone(), &cfg);
        prop_assert!(!d.injected());
        let out = apply(&broken, &d.patch);
        let grace = pod(&once).get("terminationGracePeriodSeconds");
        prop_assert_eq!(&out, &remove_injection(&broken, grace));
        prop_assert!(inject::mutate(out, &cfg).patch.is_empty());
    }
}

fn mutate_review(cj: &Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {
            "uid": "0d2e1c4a-7f4b-4f5e-9a55-3c1f4c1b2a99",
            "kind": {"group": "batch", "version": "v1", "kind": "CronJob"},
            "resource": {"group": "batch", "version": "v1", "resource": "cronjobs"},
            "operation": "CREATE", "name": "nightly", "namespace": "default", "userInfo": {},
            "object": cj,
        }}),
    )
    .unwrap()
}

/// What the handler computes: the review decoded (the object through `inject::CRON_JOB_VIEW`),
/// then `admission::mutation_for`.
fn mutate_as_the_handler(cj: &Value, cfg: &InjectorConfig) -> inject::Mutation {
    let mut req = admission::decode_mutate_review(&mutate_review(cj)).unwrap();
    admission::mutation_for(&mut req, cfg)
}

/// A CronJob as the apiserver sends it: server-set metadata, managedFields, defaulted fields
/// around and inside the pod spec, status; everything the injector's view leaves out.
fn as_stored(mut cj: Value) -> Value {
    cj["metadata"]["uid"] = json!("6a1c3e55-0000-4000-8000-000000000001");
    cj["metadata"]["creationTimestamp"] = json!("2026-11-26T10:00:00Z");
    cj["metadata"]["managedFields"] = json!([{"manager": "backup-operator", "operation": "Apply",
        "fieldsV1": {"f:spec": {"f:jobTemplate": {"f:spec": {"f:template": {}}}}}}]);
    cj["spec"]["concurrencyPolicy"] = json!("Forbid");
    cj["spec"]["jobTemplate"]["spec"]["backoffLimit"] = json!(0);
    cj["spec"]["jobTemplate"]["spec"]["template"]["metadata"] = json!({"labels": {"a": "b"}});
    let pod = &mut cj["spec"]["jobTemplate"]["spec"]["template"]["spec"];
    pod["dnsPolicy"] = json!("ClusterFirst");
    if pod.get("securityContext").is_none() {
        pod["securityContext"] = json!({});
    }
    pod["securityContext"]["seLinuxOptions"] = json!({"level": "s0:c1,c2"});
    cj["status"] = json!({"lastScheduleTime": "2026-11-26T03:00:00Z"});
    cj
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    /// The handler decodes only the injector's view of the object (`inject::CRON_JOB_VIEW`); its
    /// patch must be the one the whole object gives, and apply to the whole object.
    #[test]
    fn the_handler_patches_the_whole_object_as_the_injector_would(
        (spec, target) in pod_strategy(),
        cfg in config_strategy(),
        stored in any::<bool>(),
        decline in prop::option::of(decline_strategy()),
    ) {
        let mut cj = generated(spec, target.as_deref());
        // Also a CronJob injected before and declined now, whose injection comes out again.
        if let Some(how) = decline {
            let m = inject::mutate(cj.clone(), &cfg);
            if m.injected() {
                cj = declined(&apply(&cj, &m.patch), how, target.as_deref().unwrap_or("main"));
            }
        }
        if stored {
            cj = as_stored(cj);
        }
        let whole = inject::mutate(cj.clone(), &cfg);
        let handler = mutate_as_the_handler(&cj, &cfg);
        prop_assert_eq!(&handler.patch, &whole.patch);
        prop_assert_eq!(&handler.warnings, &whole.warnings);
        let once = apply(&cj, &handler.patch);
        prop_assert!(mutate_as_the_handler(&once, &cfg).patch.is_empty());
    }
}

/// The kubelet expands `$(VAR)` and unescapes `$$` in env values, so URLs reach the notifier
/// escaped; the controller's `NotifierInjected` check (`inject::inspect`) must see through that.
#[test]
fn urls_with_dollar_signs_are_escaped_for_the_kubelet_and_inspect_agrees() {
    let mut ann = default_annotations();
    ann["backups.k8s.bnerd.com/webhook-success"] = json!("https://hooks.example.com/$(HOME)/$$");
    let cj = cron_job(restic_pod(), ann);
    let cfg = config(NotifierMode::Sidecar);
    let stored = apply(&cj, &inject::mutate(cj.clone(), &cfg).patch);
    let notifier = pod(&stored)["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "notifier")
        .unwrap();
    assert_eq!(
        env_of(notifier)["NOTIFY_SUCCESS_URL"],
        "https://hooks.example.com/$$(HOME)/$$$$"
    );
    assert_eq!(inject::inspect(&stored), Ok(()));
    let mut changed = stored.clone();
    changed["metadata"]["annotations"]["backups.k8s.bnerd.com/webhook-success"] =
        json!("https://hooks.example.com/$(HOME)/$");
    assert!(inject::inspect(&changed).is_err());
}
