//! The admission server as a real process over real TLS: hostile requests, readiness,
//! certificate rotation without restart, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};
use testkit::wait_for;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn one_line(body: &str) -> bool {
    body.trim_end().lines().count() == 1 && !body.trim().is_empty()
}

#[tokio::test]
async fn hostile_requests_get_clear_status_codes_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let mut op = Operator::start(&cert, &key, &["--no-controller"]);
    let tls = tls_client(&ca.cert);
    let json = Some("application/json");

    let valid = review(
        "backups.k8s.bnerd.com",
        "VolumeBackup",
        "CREATE",
        volume_backup(None, Some("ftp://hooks.example.com/x")),
        None,
    );
    let mut no_request = valid.clone();
    no_request.as_object_mut().unwrap().remove("request");
    let mut beta = valid.clone();
    beta["apiVersion"] = json!("admission.k8s.io/v1beta1");
    let full = serde_json::to_vec(&valid).unwrap();
    let truncated = full[..full.len() / 2].to_vec();
    // Small in bytes, huge once decoded: a hundred thousand empty tolerations.
    let mut swollen = valid.clone();
    swollen["request"]["object"]["spec"]["tolerations"] = json!(vec![json!({}); 100_001]);
    let mut forged = valid.clone();
    forged["request"]["operation"] = json!(format!("X\n{}", "y".repeat(1_000_000)));

    // (case, method, content type, body, expected status, text the one-line answer contains)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("wrong method", "GET", json, vec![], 405, "use POST"),
        (
            "wrong method PUT",
            "PUT",
            json,
            full.clone(),
            405,
            "use POST",
        ),
        (
            "wrong content type",
            "POST",
            Some("text/plain"),
            full.clone(),
            415,
            "application/json",
        ),
        (
            "no content type",
            "POST",
            None,
            full.clone(),
            415,
            "application/json",
        ),
        (
            "truncated JSON",
            "POST",
            json,
            truncated,
            400,
            "not an AdmissionReview",
        ),
        (
            "JSON that is no AdmissionReview",
            "POST",
            json,
            br#"{"hello":"world"}"#.to_vec(),
            400,
            "not an AdmissionReview",
        ),
        (
            "a JSON array",
            "POST",
            json,
            b"[1,2]".to_vec(),
            400,
            "not an AdmissionReview",
        ),
        (
            "empty body",
            "POST",
            json,
            vec![],
            400,
            "not an AdmissionReview",
        ),
        (
            "review without request",
            "POST",
            json,
            serde_json::to_vec(&no_request).unwrap(),
            400,
            "has no request",
        ),
        (
            "v1beta1 review",
            "POST",
            json,
            serde_json::to_vec(&beta).unwrap(),
            400,
            "admission.k8s.io/v1",
        ),
        (
            "too many JSON values",
            "POST",
            json,
            serde_json::to_vec(&swollen).unwrap(),
            400,
            "more than 100000 JSON values",
        ),
        (
            "a long forged operation",
            "POST",
            json,
            serde_json::to_vec(&forged).unwrap(),
            400,
            "unknown variant",
        ),
    ];
    for (name, method, ct, body, want, text) in cases {
        let mut conn = connect(op.https, tls.clone()).await;
        let (status, body) = conn.request(method, "/validate", ct, body).await;
        assert_eq!(status, want, "{name}: {body}");
        assert!(body.contains(text), "{name}: {body:?} lacks {text:?}");
        assert!(one_line(&body), "{name}: not one line: {body:?}");
        assert!(body.len() < 2048, "{name}: {} bytes", body.len());
    }

    // A request head that never ends is cut off at hyper's read buffer, not held whole.
    let mut raw = raw_tls(&op, tls.clone()).await;
    raw.write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\nX-Pad: ")
        .await
        .unwrap();
    let _ = raw.write_all(&[b'a'; 64 * 1024]).await;
    let _ = raw.flush().await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");

    // A client that goes away while its body is still arriving leaves nothing in flight.
    let mut raw = raw_tls(&op, tls.clone()).await;
    raw.write_all(b"POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    raw.flush().await.unwrap();
    wait_in_flight(&op, 1).await;
    drop(raw);
    wait_in_flight(&op, 0).await;

    // A body over the limit whose length is not announced (chunked; an announced one is refused
    // before it is read, see below). Sent by hand: the server answers 413 and closes as soon as
    // the limit is passed, and a client still writing the rest would get a reset that can
    // destroy the answer before it is read. So the chunk stops one byte past the limit, where
    // the server stops reading.
    let mut raw = raw_tls(&op, tls.clone()).await;
    let limit = backup_operator::admission::DEFAULT_MAX_REQUEST_BYTES;
    raw.write_all(
        format!("POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n", limit + 1).as_bytes(),
    )
    .await
    .unwrap();
    raw.write_all(&vec![b' '; limit + 1]).await.unwrap();
    raw.flush().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    let text = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert!(text.contains("larger than"), "{answer:?}");
    assert!(one_line(text), "not one line: {text:?}");

    // An unknown kind is answered (allowed, with a warning), not dropped.
    let pod = review(
        "",
        "Pod",
        "CREATE",
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}),
        None,
    );
    let mut conn = connect(op.https, tls.clone()).await;
    let (status, body) = conn
        .request("POST", "/validate", json, serde_json::to_vec(&pod).unwrap())
        .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["response"]["allowed"], true);
    assert!(
        answer["response"]["warnings"][0]
            .as_str()
            .unwrap()
            .contains("does not validate /Pod")
    );

    // And after all of that, a valid review on one keep-alive connection, twice.
    let mut conn = connect(op.https, tls.clone()).await;
    for _ in 0..2 {
        let (status, body) = conn.request("POST", "/validate", json, full.clone()).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], valid["request"]["uid"]);
        assert_eq!(answer["response"]["allowed"], false);
        assert_eq!(
            answer["response"]["status"]["message"],
            "spec.webhooks.failure: scheme \"ftp\" is not allowed; use https:// or http://"
        );
    }
    assert!(
        op.child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    let metrics = fixtures::http_get(op.admin, "/metrics").await.1;
    assert!(
        metrics
            .contains(r#"backup_operator_webhook_requests_total{webhook="validate",code="413"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"backup_operator_admission_denials_total{webhook="validate",reason="scheme"} 2"#
        ),
        "{metrics}"
    );
}

/// Decisions that refuse, warn or change something are logged at INFO; a plain "allowed" only
/// at DEBUG, so that the apiserver's every create does not drown them.
#[tokio::test]
async fn only_denials_warnings_and_patches_are_logged_at_info() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let named = |name: &str, success: &str| {
        let mut vb = volume_backup(Some(success), None);
        vb["metadata"]["name"] = json!(name);
        serde_json::to_vec(&review(
            "backups.k8s.bnerd.com",
            "VolumeBackup",
            "CREATE",
            vb,
            None,
        ))
        .unwrap()
    };
    for (level, quiet_logged) in [("info", false), ("backup_operator=debug", true)] {
        let op = Operator::start(&cert, &key, &["--no-controller", "--log-level", level]);
        let mut conn = connect(op.https, tls_client(&ca.cert)).await;
        for (name, url) in [
            ("quiet-allow", "https://hooks.example.com/x"),
            ("warned-http", "http://hooks.example.com/x"),
            ("refused-metadata", "http://169.254.169.254/x"),
        ] {
            let (status, answer) = conn
                .request(
                    "POST",
                    "/validate",
                    Some("application/json"),
                    named(name, url),
                )
                .await;
            assert_eq!(status, 200, "{answer}");
        }
        wait_logged(&op, "refused-metadata", Duration::from_secs(10)).await;
        // Lines arrive in order, so the earlier requests' lines are in by now if they were logged.
        let log = op.log();
        let line = |name: &str| log.lines().find(|l| l.contains(name)).map(str::to_owned);
        let denied = line("refused-metadata").unwrap();
        assert!(
            denied.contains("INFO") && denied.contains("denied"),
            "{log}"
        );
        let warned = line("warned-http").unwrap_or_else(|| panic!("warning not logged:\n{log}"));
        assert!(
            warned.contains("INFO") && warned.contains("warnings=1"),
            "{log}"
        );
        match line("quiet-allow") {
            Some(l) => assert!(
                quiet_logged && l.contains("DEBUG"),
                "--log-level {level}: {l}"
            ),
            None => assert!(
                !quiet_logged,
                "--log-level {level}: allowed not logged:\n{log}"
            ),
        }
    }
}

/// The apiserver reads `response.patch` as a Go `[]byte`, which JSON carries as base64. The
/// answer must be a base64 string that decodes to a JSON Patch, with `patchType: JSONPatch`.
#[tokio::test]
async fn mutate_answers_a_base64_json_patch() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(&cert, &key, &["--no-controller"]);
    let cron_job = json!({
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {
            "name": "nightly", "namespace": "default",
            "labels": {"backups.k8s.bnerd.com/notify": "true"},
            "annotations": {"backups.k8s.bnerd.com/webhook-success": "https://hooks.example.com/ok"},
        },
        "spec": {"schedule": "0 3 * * *", "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "backup", "image": "restic/restic", "command": ["restic", "backup", "/data"]}],
        }}}}},
    });
    // First one the injector leaves unchanged: logged at DEBUG only, unlike the patch below.
    let mut plain = cron_job.clone();
    plain["metadata"]["name"] = json!("plain");
    plain["metadata"]["labels"] = json!({});
    let plain = serde_json::to_vec(&review("batch", "CronJob", "CREATE", plain, None)).unwrap();
    let body = serde_json::to_vec(&review("batch", "CronJob", "CREATE", cron_job, None)).unwrap();
    let mut conn = connect(op.https, tls_client(&ca.cert)).await;
    let (status, answer) = conn
        .request("POST", "/mutate", Some("application/json"), plain)
        .await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = conn
        .request("POST", "/mutate", Some("application/json"), body)
        .await;
    assert_eq!(status, 200, "{answer}");
    wait_logged(&op, "name=\"nightly\"", Duration::from_secs(10)).await;
    let log = op.log();
    assert!(
        log.lines().any(|l| l.contains("INFO")
            && l.contains("name=\"nightly\"")
            && l.contains("decision=\"patched\"")),
        "{log}"
    );
    assert!(!log.contains("name=\"plain\""), "{log}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let response = &answer["response"];
    assert_eq!(response["allowed"], true, "{answer}");
    assert_eq!(response["patchType"], "JSONPatch", "{answer}");
    let encoded = response["patch"]
        .as_str()
        .unwrap_or_else(|| panic!("patch is not a base64 string: {answer}"));
    let patch: Value = serde_json::from_slice(
        &base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap(),
    )
    .unwrap();
    let ops = patch.as_array().unwrap();
    assert!(
        ops.iter().any(|op| op["op"] == "add"
            && op["path"] == "/spec/jobTemplate/spec/template/spec/initContainers"
            && op["value"][0]["name"] == "notifier-install"),
        "{patch:#}"
    );
}

#[tokio::test]
async fn readyz_turns_ok_once_tls_serves() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(&cert, &key, &["--no-controller"]);
    // How fast readiness comes is a benchmark matter; here only that it comes, and that it
    // means what it says. The bound only stops a hang.
    wait_for("readiness", Duration::from_secs(30), || async {
        let (status, body) = fixtures::http_get(op.admin, "/readyz").await;
        assert!(status == 200 || status == 503, "{status}: {body}");
        anyhow::ensure!(status == 200, "not ready: {body}");
        assert_eq!(body.trim(), "ok");
        Ok(())
    })
    .await
    .unwrap();
    let mut conn = connect(op.https, tls_client(&ca.cert)).await;
    let (status, _) = conn
        .request("GET", "/validate", Some("application/json"), Vec::new())
        .await;
    assert_eq!(status, 405, "ready, yet the HTTPS listener does not answer");
    assert_eq!(fixtures::http_get(op.admin, "/healthz").await.0, 200);
}

/// Lays the files out like a mounted Secret: `tls.crt -> ..data/tls.crt`, `..data -> ..<ts>`,
/// and rotates by swapping the `..data` symlink, as the kubelet does.
fn secret_volume_swap(dir: &std::path::Path, generation: u32, cert: &str, key: &str) {
    let ts = dir.join(format!("..gen{generation}"));
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join("tls.crt"), cert).unwrap();
    std::fs::write(ts.join("tls.key"), key).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(format!("..gen{generation}"), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for f in ["tls.crt", "tls.key"] {
        let link = dir.join(f);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(format!("..data/{f}"), &link).unwrap();
        }
    }
}

#[tokio::test]
async fn certificate_files_replaced_while_serving_are_picked_up_without_restart() {
    let ca = backup_operator::certs::generate_ca("ca", Duration::from_secs(3600)).unwrap();
    let issue = || {
        backup_operator::certs::issue_serving(
            &ca,
            &[],
            &["127.0.0.1".parse().unwrap()],
            Duration::from_secs(3600),
        )
        .unwrap()
    };
    let (first, second) = (issue(), issue());
    let dir = tempfile::tempdir().unwrap();
    secret_volume_swap(dir.path(), 1, &first.cert, &first.key);
    // A short periodic re-read, so the waits below have a wide margin over it on a loaded
    // machine even if the file event is missed.
    let op = Operator::start(
        &dir.path().join("tls.crt"),
        &dir.path().join("tls.key"),
        &["--no-controller", "--tls-reload-interval", "2s"],
    );
    let tls = tls_client(&ca.cert);
    let der = |pem: &str| {
        use rustls_pki_types::pem::PemObject;
        rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec()
    };
    assert_eq!(
        connect(op.https, tls.clone()).await.peer_cert,
        der(&first.cert)
    );

    // A broken rotation (a key that belongs to another certificate) keeps the old certificate.
    secret_volume_swap(dir.path(), 2, &second.cert, &first.key);
    // Wait for the reload attempt itself (file event or periodic re-read), not a fixed time:
    // on a loaded machine a fixed sleep may end before the server looked.
    wait_logged(
        &op,
        "serving certificate not reloaded",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(
        connect(op.https, tls.clone()).await.peer_cert,
        der(&first.cert)
    );

    let rotated = Instant::now();
    secret_volume_swap(dir.path(), 3, &second.cert, &second.key);
    loop {
        if connect(op.https, tls.clone()).await.peer_cert == der(&second.cert) {
            break;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(15),
            "new certificate not served after 15s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "new certificate served {:?} after the swap",
        rotated.elapsed()
    );
    // The certificate is swapped in before the line is logged, and stderr is read by a thread.
    wait_logged(
        &op,
        "loaded a new serving certificate",
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_closes_idle_connections_and_a_second_signal_exits() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let mut op = Operator::start(&cert, &key, &["--no-controller"]);
    let tls = tls_client(&ca.cert);
    let body = allowed_review();

    // An idle keep-alive connection, and a request whose body is still on its way.
    let mut idle = used_connection(&op, tls.clone(), &body).await;
    let mut slow = body_on_its_way(&op, tls.clone(), &body).await;
    // hyper drops a connection whose request head it has not read yet at shutdown, so the
    // signal must come once the request is really in flight; the gauge says when.
    wait_in_flight(&op, 1).await;

    op.signal(libc::SIGTERM);
    tokio::time::timeout(Duration::from_secs(3), &mut idle.closed)
        .await
        .expect("idle keep-alive connection not closed on SIGTERM")
        .unwrap();
    let (status, text) = fixtures::http_get(op.admin, "/readyz").await;
    assert_eq!((status, text.trim()), (503, "shutting down"));

    // The in-flight request still gets its answer.
    slow.write_all(&body[10..]).await.unwrap();
    slow.flush().await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), slow.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let status = wait_exit(&mut op.child, Duration::from_secs(5));
    assert_eq!(status, Some(0), "first signal should drain and exit 0");

    // A second signal during a drain exits at once.
    let mut op = Operator::start(
        &cert,
        &key,
        &["--no-controller", "--shutdown-timeout", "60s"],
    );
    let mut stuck = raw_tls(&op, tls).await;
    stuck
        .write_all(validate_head(body.len()).as_bytes())
        .await
        .unwrap();
    stuck.flush().await.unwrap();
    wait_in_flight(&op, 1).await;
    op.signal(libc::SIGTERM);
    // The second signal must come after the first was handled, which /readyz shows.
    wait_for(
        "the first SIGTERM to be handled",
        Duration::from_secs(5),
        || async {
            let (status, text) = fixtures::http_get(op.admin, "/readyz").await;
            anyhow::ensure!(status == 503, "{status}: {text}");
            Ok(())
        },
    )
    .await
    .unwrap();
    assert_eq!(
        op.child.try_wait().unwrap(),
        None,
        "must keep draining the stuck request"
    );
    op.signal(libc::SIGTERM);
    assert_eq!(
        wait_exit(&mut op.child, Duration::from_secs(3)),
        Some(128 + libc::SIGTERM)
    );
}

/// A `POST /validate` of `body` whose head and first 10 body bytes are sent, the rest not.
async fn body_on_its_way(
    op: &Operator,
    tls: std::sync::Arc<rustls::ClientConfig>,
    body: &[u8],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut conn = raw_tls(op, tls).await;
    conn.write_all(validate_head(body.len()).as_bytes())
        .await
        .unwrap();
    conn.write_all(&body[..10]).await.unwrap();
    conn.flush().await.unwrap();
    conn
}

/// The head of a `POST /validate` with a body of `len` bytes.
fn validate_head(len: usize) -> String {
    format!(
        "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
}

/// A TLS stream to the operator's HTTPS port for requests written by hand.
async fn raw_tls(
    op: &Operator,
    tls: std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(op.https).await.unwrap();
    tokio_rustls::TlsConnector::from(tls)
        .connect(
            rustls_pki_types::ServerName::IpAddress(op.https.ip().into()),
            tcp,
        )
        .await
        .unwrap()
}

async fn wait_in_flight(op: &Operator, want: u64) {
    const GAUGE: &str = "backup_operator_webhook_requests_in_flight ";
    wait_for("requests in flight", Duration::from_secs(30), || async {
        let (_, metrics) = fixtures::http_get(op.admin, "/metrics").await;
        let now = metrics
            .lines()
            .find_map(|l| l.strip_prefix(GAUGE))
            .and_then(|v| v.trim().parse::<u64>().ok());
        anyhow::ensure!(now == Some(want), "{now:?} in flight, want {want}");
        Ok(())
    })
    .await
    .unwrap();
}

/// The operator's stderr is read by a thread, so a line may come after what it reports.
async fn wait_logged(op: &Operator, text: &str, within: Duration) {
    wait_for(text, within, || async {
        anyhow::ensure!(op.log().contains(text), "not logged:\n{}", op.log());
        Ok(())
    })
    .await
    .unwrap();
}

fn wait_exit(child: &mut std::process::Child, limit: Duration) -> Option<i32> {
    let mut code = None;
    testkit::poll(limit, Duration::from_millis(20), || {
        match child.try_wait().unwrap() {
            Some(status) => {
                code = status.code();
                true
            }
            None => false,
        }
    });
    code
}

/// Without a reachable cluster and without --no-controller, `serve` fails at once with one line
/// that says what to do; bad flags and unreadable files do too.
#[test]
fn serve_fails_fast_with_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = dev_certs(dir.path());
    let dead = dir.path().join("kubeconfig");
    std::fs::write(
        &dead,
        "apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: \"https://127.0.0.1:1\"}}]\nusers: [{name: u, user: {token: x}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
    )
    .unwrap();
    let run = |args: &[&std::ffi::OsStr], kubeconfig: &std::path::Path| {
        let started = Instant::now();
        let out = std::process::Command::new(OPERATOR)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .output()
            .unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "took {:?}",
            started.elapsed()
        );
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let certs: [&std::ffi::OsStr; 4] = [
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        key.as_os_str(),
    ];
    let (code, err) = run(&certs, &dead);
    assert_eq!(code, Some(1));
    let line = err
        .lines()
        .find(|l| l.starts_with("backup-operator: error:"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        line.contains("cannot reach the Kubernetes API") && line.contains("--no-controller"),
        "{line}"
    );
    // The cause itself, which kube keeps only in the error's sources.
    assert!(line.contains("Connection refused"), "{line}");

    let (code, err) = run(&certs, &dir.path().join("missing"));
    assert_eq!(code, Some(1));
    assert!(
        err.contains("cannot configure a Kubernetes client"),
        "{err}"
    );

    // A request above its limit: every backup pod would be refused, so the server does not start.
    let (code, err) = run(
        &[
            "--no-controller".as_ref(),
            "--notifier-memory-request".as_ref(),
            "128Mi".as_ref(),
            certs[0],
            certs[1],
            certs[2],
            certs[3],
        ],
        &dead,
    );
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(
        err.trim().lines().last().unwrap(),
        "backup-operator: error: --notifier-memory-request 128Mi is above --notifier-memory-limit 64Mi; the apiserver would refuse every backup pod"
    );

    // A self-managed certificate's setting beside certificate files would be ignored: refused.
    let (code, err) = run(
        &[
            "--no-controller".as_ref(),
            "--cert-dns".as_ref(),
            "webhook.example.com".as_ref(),
            certs[0],
            certs[1],
            certs[2],
            certs[3],
        ],
        &dead,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.lines()
            .next()
            .is_some_and(|l| l.contains("'--cert-dns <NAME>' cannot be used with '--tls-cert")),
        "{err}"
    );

    // A CA too short-lived to rotate before it expires: refused before the cluster is reached.
    let (code, err) = run(
        &[
            "--no-controller".as_ref(),
            "--tls-secret".as_ref(),
            "webhook-tls".as_ref(),
            "--ca-validity".as_ref(),
            "2h".as_ref(),
        ],
        &dead,
    );
    assert_eq!(code, Some(1), "{err}");
    let last = err.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with(
            "backup-operator: error: --ca-validity 2h is too short for --cert-validity 2160h"
        ) && last.contains("use at least 6h"),
        "{err}"
    );

    let missing = dir.path().join("nope.crt");
    let (code, err) = run(
        &[
            "--no-controller".as_ref(),
            "--tls-cert".as_ref(),
            missing.as_os_str(),
            "--tls-key".as_ref(),
            key.as_os_str(),
        ],
        &dead,
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim().lines().last().unwrap(),
        format!(
            "backup-operator: error: reading TLS certificate {}: No such file or directory (os error 2)",
            missing.display()
        )
    );

    let (code, err) = run(
        &[
            "--no-controller".as_ref(),
            "--allow-destination".as_ref(),
            "not a host".as_ref(),
        ],
        &dead,
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("\"not a host\" is neither an IP address, a CIDR, a host name nor *.domain"),
        "{err}"
    );

    // Durations: a value that would stop a timer, overflow a date or a sum is one line, not a
    // panic (exit 101) or a background task that dies quietly.
    for (flag, value, says) in [
        (
            "--tls-reload-interval",
            "0s",
            "out of range: at least 1s and at most 1h",
        ),
        ("--lease-duration", "1m-30s", "unknown unit \"m-\""),
        (
            "--ca-validity",
            "100000000h",
            "out of range: at least 1s and at most 876000h",
        ),
        ("--cert-validity", "0s", "out of range"),
        ("--backup-deadline", "99999999999999999999h", "is too long"),
        ("--shutdown-timeout", "-5s", "must not be negative"),
        ("--notifier-timeout", "10", "without a unit"),
        ("--max-request-bytes", "7", "below the least a review needs"),
        ("--log-level", "warning", "is not a log level"),
        ("--cert-dns", "10.0.0.5", "is an IP address"),
    ] {
        let arg = format!("{flag}={value}");
        let (code, err) = run(&["--no-controller".as_ref(), arg.as_ref()], &dead);
        assert_eq!(code, Some(2), "{flag} {value}: {err}");
        let line = err.lines().next().unwrap_or_default();
        assert!(
            line.contains(flag) && line.contains(says),
            "{flag} {value}: {err}"
        );
        assert!(!err.contains("panicked"), "{flag} {value}: {err}");
    }
}

/// A body that trickles is cut off with 408 once the body deadline passes; a body announced
/// larger than the limit is refused before it is read; a connection that never sends a request
/// is closed after the first-request timeout; and a keep-alive connection left idle for longer
/// than that is still served (the apiserver drops idle connections after 90 s and must be the
/// one to close them, or a review it sends races our close).
#[tokio::test]
async fn a_trickling_body_gets_408_and_an_idle_keep_alive_connection_stays_open() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(&cert, &key, &["--no-controller"]);
    let tls = tls_client(&ca.cert);
    let body = allowed_review();
    let mut idle = used_connection(&op, tls.clone(), &body).await;
    let mut silent = raw_tls(&op, tls.clone()).await;

    let answer_to = |head: String, sent: Vec<u8>| {
        let tls = tls.clone();
        let op = &op;
        async move {
            let mut conn = raw_tls(op, tls).await;
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&sent).await.unwrap();
            conn.flush().await.unwrap();
            let mut answer = Vec::new();
            // Bounded only against a hang: the server must answer by itself.
            tokio::time::timeout(Duration::from_secs(60), conn.read_to_end(&mut answer))
                .await
                .expect("no answer within 60s")
                .unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        }
    };
    let head = |len: usize| {
        format!(
            "POST /validate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        )
    };

    let too_large = answer_to(head(64 * 1024 * 1024), Vec::new()).await;
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert!(
        too_large.contains("request body is larger than 7340032 bytes"),
        "{too_large}"
    );

    let idle_since = Instant::now();
    let trickled = answer_to(head(body.len()), body[..10].to_vec()).await;
    assert!(trickled.starts_with("HTTP/1.1 408"), "{trickled}");
    assert!(
        trickled.contains("request body not received within 10s"),
        "{trickled}"
    );

    // Over 10 s now: the connection that never sent a request is closed (EOF, bounded only
    // against a hang)...
    assert!(idle_since.elapsed() >= Duration::from_secs(10));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), silent.read_to_end(&mut rest)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "a connection without a request stayed open: {closed:?}"
    );
    // ...and the idle keep-alive one is still open, and still served.
    assert!(
        !idle.closed.is_finished(),
        "idle keep-alive connection closed"
    );
    assert_eq!(
        idle.request("POST", "/validate", Some("application/json"), body)
            .await
            .0,
        200
    );
}

/// A request whose client goes away mid-body is counted (as the 400 its handler answers, which
/// nobody reads) and leaves the in-flight gauge. (A handler hyper drops outright is counted as
/// 499; ours answer too fast for a test to catch one.)
#[tokio::test]
async fn a_request_cut_off_mid_body_is_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(&cert, &key, &["--no-controller"]);
    let body = allowed_review();
    let conn = body_on_its_way(&op, tls_client(&ca.cert), &body).await;
    wait_in_flight(&op, 1).await;
    drop(conn);
    wait_in_flight(&op, 0).await;
    let (_, metrics) = fixtures::http_get(op.admin, "/metrics").await;
    let counted: Vec<_> = metrics
        .lines()
        .filter(|l| l.starts_with("backup_operator_webhook_requests_total{"))
        .collect();
    assert_eq!(counted.len(), 1, "{metrics}");
    assert_eq!(
        counted[0], "backup_operator_webhook_requests_total{webhook=\"validate\",code=\"400\"} 1",
        "{metrics}"
    );
}

/// A client that pipelines requests and never reads the answers: once the server's writes to it
/// have made no progress for 10 s the connection is closed (hyper has no write timeout of its
/// own, so it would hold the connection and its buffers for good), and others are still served.
#[tokio::test]
async fn a_client_that_never_reads_its_answers_is_disconnected() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(&cert, &key, &["--no-controller"]);
    let tls = tls_client(&ca.cert);
    // A small receive buffer on this side, so the answers back up into the server soon.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(op.https).await.unwrap();
    let mut greedy = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(
            rustls_pki_types::ServerName::IpAddress(op.https.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let requests = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(256);
    let started = Instant::now();
    // Bounded only against a hang: the server must close the connection by itself.
    let error = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            if let Err(e) = greedy.write_all(requests.as_bytes()).await {
                return e;
            }
        }
    })
    .await
    .expect("a client that never reads was still connected after 120 s");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "closed before the stall timeout: {error}"
    );
    let body = allowed_review();
    let mut other = used_connection(&op, tls, &body).await;
    assert_eq!(
        other
            .request("POST", "/validate", Some("application/json"), body)
            .await
            .0,
        200
    );
}

/// Plain certificate files in a watched directory: the server's own reads of them must not count
/// as changes (inotify reports opens and reads), or it re-reads them in a loop.
#[tokio::test]
async fn reading_the_certificate_files_does_not_trigger_another_read() {
    let dir = tempfile::tempdir().unwrap();
    let (_ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(
        &cert,
        &key,
        &["--no-controller", "--tls-reload-interval", "1s"],
    );
    const UNCHANGED: &str = "backup_operator_tls_reloads_total{result=\"unchanged\"}";
    wait_for("a periodic re-read", Duration::from_secs(30), || async {
        anyhow::ensure!(fixtures::metric(op.admin, UNCHANGED).await >= 1.0);
        Ok(())
    })
    .await
    .unwrap();
    let (before, since) = (fixtures::metric(op.admin, UNCHANGED).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let reads = fixtures::metric(op.admin, UNCHANGED).await - before;
    // One re-read a second, and never more (a late tick is delayed, not repeated); a loop of
    // reads triggering reads runs five a second.
    let bound = since.elapsed().as_secs_f64() + 2.0;
    assert!(
        reads <= bound,
        "{reads} re-reads in {:?}: the watcher reacts to its own reads",
        since.elapsed()
    );
}

/// Request bodies share a budget of bytes held at once, taken as the bytes arrive: with two
/// bodies stalled that fill it, a third request is refused with 503 at once instead of queueing
/// behind them; once they are gone, requests are served again.
#[tokio::test]
async fn bodies_beyond_the_shared_budget_get_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, cert, key) = dev_certs(dir.path());
    let op = Operator::start(
        &cert,
        &key,
        &[
            "--no-controller",
            "--max-request-bytes",
            "65536",
            "--max-request-bytes-in-flight",
            "131072",
        ],
    );
    let tls = tls_client(&ca.cert);
    let small = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"batch","version":"v1","kind":"CronJob"},"resource":{"group":"batch","version":"v1","resource":"cronjobs"},"operation":"DELETE","userInfo":{}}}"#.to_vec();
    let mut conn = connect(op.https, tls.clone()).await;
    assert_eq!(
        conn.request("POST", "/mutate", Some("application/json"), small.clone())
            .await
            .0,
        200
    );

    // Two bodies of 65000 bytes announced, 64600 sent: 64 KiB of the budget each (taken in whole
    // KiB as the bytes arrive).
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut raw = raw_tls(&op, tls.clone()).await;
        raw.write_all(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 65000\r\n\r\n")
            .await
            .unwrap();
        raw.write_all(&[b' '; 64600]).await.unwrap();
        raw.flush().await.unwrap();
        stalled.push(raw);
    }
    // The server reads the stalled bytes on its own time: ask until it has.
    let refused = wait_status(
        &op,
        &tls,
        &small,
        503,
        "a 503 while the budget is full",
        Duration::from_secs(8),
    )
    .await;
    assert!(
        refused.starts_with("busy: 131072 bytes of request bodies are being read")
            && one_line(&refused),
        "{refused:?}"
    );

    drop(stalled);
    wait_status(
        &op,
        &tls,
        &small,
        200,
        "the budget back",
        Duration::from_secs(10),
    )
    .await;
}

/// The body of a VolumeBackup review the webhook allows.
fn allowed_review() -> Vec<u8> {
    serde_json::to_vec(&review(
        "backups.k8s.bnerd.com",
        "VolumeBackup",
        "CREATE",
        volume_backup(Some("https://hooks.example.com/x"), None),
        None,
    ))
    .unwrap()
}

/// A keep-alive connection that has carried one allowed review and is now idle.
async fn used_connection(
    op: &Operator,
    tls: std::sync::Arc<rustls::ClientConfig>,
    body: &[u8],
) -> Conn {
    let mut conn = connect(op.https, tls).await;
    assert_eq!(
        conn.request("POST", "/validate", Some("application/json"), body.to_vec())
            .await
            .0,
        200
    );
    conn
}

/// Sends `body` to /mutate on a new connection until the answer has status `want`;
/// returns that answer's body.
async fn wait_status(
    op: &Operator,
    tls: &std::sync::Arc<rustls::ClientConfig>,
    body: &[u8],
    want: u16,
    what: &str,
    within: Duration,
) -> String {
    wait_for(what, within, || async move {
        let mut conn = connect(op.https, tls.clone()).await;
        let (status, text) = conn
            .request("POST", "/mutate", Some("application/json"), body.to_vec())
            .await;
        anyhow::ensure!(status == want, "{status}: {text}");
        Ok(text)
    })
    .await
    .unwrap()
}

/// The default listeners (`[::]`) take IPv4 as well, even on a node whose
/// `net.ipv6.bindv6only` is 1, and fall back to IPv4 alone where IPv6 is off: run in a network
/// namespace of its own (so the default ports are free and the sysctls are its own), with curl
/// inside it.
#[test]
fn the_default_listeners_take_ipv4_whatever_the_nodes_ipv6_settings() {
    let dir = tempfile::tempdir().unwrap();
    let (_, cert, key) = dev_certs(dir.path());
    let script = r#"
set -e
ip link set lo up
sysctl -qw "$1"
"$2" serve --no-controller --tls-cert "$3" --tls-key "$4" 2>"$5" &
pid=$!
ready=
for _ in $(seq 50); do
  ready=$(curl -fsS -m 1 http://127.0.0.1:8080/readyz 2>/dev/null) && break
  sleep 0.1
done
https=$(curl -sk -m 2 -o /dev/null -w '%{http_code}' https://127.0.0.1:8443/validate)
kill "$pid"; wait "$pid" || true
echo "readyz=$ready https=$https"
"#;
    for sysctl in ["net.ipv6.bindv6only=1", "net.ipv6.conf.lo.disable_ipv6=1"] {
        let log = dir.path().join("operator.log");
        let out = std::process::Command::new("unshare")
            // `timeout` bounds a failing run; killing the shell takes the operator with it.
            .args([
                "-n", "timeout", "-s", "KILL", "90", "sh", "-c", script, "sh", sysctl,
            ])
            .arg(OPERATOR)
            .arg(&cert)
            .arg(&key)
            .arg(&log)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("readyz=ok https=405"),
            "{sysctl}: {stdout}{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
}
