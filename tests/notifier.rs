//! `backup-notifier notify` and `send` against real HTTP and HTTPS receivers on loopback:
//! the payload contract (api.md §3), every way a delivery can fail, the URL policy at send
//! time, sidecar and container modes, at-most-once across restarts, and secret URLs in logs.
//!
//! Receivers are reached through the documented allowlist (NOTIFY_ALLOW_DESTINATIONS /
//! --allow-destination), exactly as an operator would open an in-cluster relay. Host names come
//! from a private /etc/hosts in a mount namespace (the tests run as root).

mod notifier_common;

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::time::Duration;

use backup_operator::notifier::lock::LivenessLock;
use notifier_common::*;
use testkit::receiver::{Receiver, Reply};

const LIMIT: Duration = Duration::from_secs(20);
/// The short delivery timeout the failure tests use.
const TIMEOUT: Duration = Duration::from_secs(2);

fn with_urls<'a>(c: &'a mut Command, rx: &Receiver) -> &'a mut Command {
    c.env("NOTIFY_SUCCESS_URL", rx.url("/ok"))
        .env("NOTIFY_FAILURE_URL", rx.url("/fail"))
        .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1")
}

fn assert_delivered_line(r: &Run, status: u16) {
    let info = r.lines("INFO");
    let delivered: Vec<_> = info
        .iter()
        .filter(|l| l.contains("webhook delivered"))
        .collect();
    assert_eq!(delivered.len(), 1, "{}", r.stderr);
    assert!(
        delivered[0].contains(&format!("status={status}")),
        "{}",
        r.stderr
    );
    assert!(delivered[0].contains("duration_ms="), "{}", r.stderr);
    assert!(r.lines("WARN").is_empty(), "{}", r.stderr);
}

// ---------------------------------------------------------------------------------------------
// 1. The payload contract.

#[test]
fn payloads_match_the_contract_for_both_kinds_and_outcomes() {
    let cases = [
        ("VolumeBackup", "default-my-data-pvc", "my-data-pvc"),
        ("S3Backup", "default-my-bucket", "my-bucket"),
    ];
    for (kind, host, volume) in cases {
        for (script, status, path) in [("exit 0", "success", "/ok"), ("exit 2", "failure", "/fail")]
        {
            let s = Scratch::new();
            let rx = Receiver::http(Reply::Status(204));
            s.run_exec(script);
            let r = run(
                with_urls(&mut s.notify("container"), &rx)
                    .env("NOTIFY_KIND", kind)
                    .env("NOTIFY_HOST", host)
                    .env("NOTIFY_VOLUME", volume),
                LIMIT,
            );
            r.assert_code(0);
            assert_delivered_line(&r, 204);
            let reqs = rx.requests();
            assert_eq!(reqs.len(), 1, "{kind} {status}: {}", r.stderr);
            let req = &reqs[0];
            assert_eq!(req.method, "POST");
            assert_eq!(req.path, path);
            assert_eq!(req.header_count("content-type"), 1);
            assert_eq!(req.header("content-type"), Some("application/json"));
            assert!(
                req.header("user-agent")
                    .unwrap()
                    .starts_with(concat!("backup-notifier/", env!("CARGO_PKG_VERSION"))),
                "{req:?}"
            );
            let body = req.json().unwrap();
            assert_eq!(body.as_object().unwrap().len(), 4, "{body}");
            assert_eq!(body, expected_payload(status, kind, host, volume));
        }
    }
}

#[test]
fn nothing_is_sent_when_the_url_for_the_outcome_is_unset() {
    for (script, outcome, other) in [
        ("exit 0", "success", "NOTIFY_FAILURE_URL"),
        ("exit 1", "failure", "NOTIFY_SUCCESS_URL"),
    ] {
        let s = Scratch::new();
        let rx = Receiver::http(Reply::Status(200));
        s.run_exec(script);
        let r = run(
            s.notify("container")
                .env(other, rx.url("/other"))
                .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1"),
            LIMIT,
        );
        r.assert_code(0);
        assert_eq!(rx.connections(), 0, "{}", r.stderr);
        let nothing: Vec<_> = r
            .lines("INFO")
            .into_iter()
            .filter(|l| l.contains(&format!("no {outcome} URL configured; nothing sent")))
            .collect();
        assert_eq!(nothing.len(), 1, "{}", r.stderr);
        assert!(r.lines("WARN").is_empty(), "{}", r.stderr);
        assert!(!s.sent().exists(), "no marker when nothing was sent");
    }
}

#[test]
fn https_with_the_extra_ca_file_is_delivered() {
    let s = Scratch::new();
    let rx = Receiver::https(Reply::Status(200));
    let ca = s.path().join("ca.pem");
    std::fs::write(&ca, rx.ca_pem().unwrap()).unwrap();
    s.run_exec("exit 0");
    let r = run(
        with_urls(&mut s.notify("container"), &rx).env("NOTIFY_CA_FILE", &ca),
        LIMIT,
    );
    r.assert_code(0);
    assert_delivered_line(&r, 200);
    assert_eq!(rx.count(), 1);
}

/// The injector mounts the CA from an optional ConfigMap: when it is missing or holds no
/// certificate, the notifier still sends what the public roots allow, and a TLS failure names the
/// file's problem in its one WARN line. `send`, for a human checking a setup, refuses it at once.
#[test]
fn a_missing_or_bad_ca_file_never_stops_a_send_and_a_tls_failure_names_it() {
    let s = Scratch::new();
    let garbage = s.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let missing = s.path().join("missing/ca.crt");
    // A successful backup's notify with that CA file, to `rx`.
    let notify = |rx: &Receiver, ca: &std::path::Path| {
        let s = Scratch::new();
        s.run_exec("exit 0");
        run(
            with_urls(&mut s.notify("container"), rx).env("NOTIFY_CA_FILE", ca),
            LIMIT,
        )
    };
    for ca in [&missing, &garbage] {
        let rx = Receiver::http(Reply::Status(200));
        let r = notify(&rx, ca);
        r.assert_code(0);
        assert_delivered_line(&r, 200);
        assert_eq!(rx.count(), 1);

        let rx = Receiver::https(Reply::Status(200));
        let r = notify(&rx, ca);
        r.assert_code(0);
        let warnings = r.lines("WARN");
        assert_eq!(warnings.len(), 1, "{}", r.stderr);
        assert!(
            warnings[0].contains("reason=\"tls\"")
                && warnings[0].contains(&*ca.to_string_lossy())
                && warnings[0].contains("only the bundled public roots are trusted"),
            "{}",
            warnings[0]
        );
        assert_eq!(rx.count(), 0);

        let connections = rx.connections();
        let r = run(
            notifier()
                .args([
                    "send", "--status", "success", "--host", "h", "--volume", "v",
                ])
                .arg("--url")
                .arg(rx.url("/x"))
                .arg("--allow-destination=127.0.0.1")
                .arg("--ca-file")
                .arg(ca),
            LIMIT,
        );
        // `send` goes on as `notify` does (its test must match a real notification), naming
        // the file's problem up front and again in the TLS failure.
        r.assert_code(1);
        let warning = r.stderr.lines().next().unwrap_or_default();
        assert!(
            warning.contains("warning") && warning.contains(&*ca.to_string_lossy()),
            "{}",
            r.stderr
        );
        assert!(
            r.stdout.starts_with("not delivered") && r.stdout.contains(": tls: "),
            "{}",
            r.stdout
        );
        assert!(rx.connections() > connections, "send did not try");
    }
}

/// Certificate checks use the URL's host name (SNI and name verification), while the connection
/// goes to the address the policy checked.
#[test]
fn https_to_an_allowlisted_name_verifies_the_name() {
    let s = Scratch::new();
    let rx = Receiver::https(Reply::Status(200));
    let ca = s.path().join("ca.pem");
    std::fs::write(&ca, rx.ca_pem().unwrap()).unwrap();
    s.run_exec("exit 0");
    let mut c = notifier_with_hosts(s.path(), "127.0.0.1 receiver.test\n");
    s.notify_env(&mut c, "container");
    let r = run(
        c.arg("notify")
            .env(
                "NOTIFY_SUCCESS_URL",
                rx.url_with_host("receiver.test", "/ok"),
            )
            .env("NOTIFY_ALLOW_DESTINATIONS", "receiver.test")
            .env("NOTIFY_CA_FILE", &ca),
        LIMIT,
    );
    r.assert_code(0);
    assert_delivered_line(&r, 200);
    assert_eq!(rx.count(), 1);
    assert_eq!(
        rx.requests()[0].header("host"),
        Some(&*format!("receiver.test:{}", rx.port()))
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Failed deliveries: one attempt, one WARN line, the backup's exit code untouched, exit 0,
//    finished within the timeout plus one second.

struct FailureCase<'a> {
    /// The receiver, when there is one to count on.
    rx: Option<&'a Receiver>,
    failure_url: String,
    reason: &'a str,
    /// Requests the receiver may see: 1 when the request got there, 0 when it could not.
    requests: usize,
    /// Run inside a mount namespace with this /etc/hosts.
    hosts: Option<&'a str>,
}

fn check_failed_delivery(case: FailureCase<'_>) {
    let s = Scratch::new();
    let exec = s.run_exec("echo backing up; exit 3");
    exec.assert_code(3);
    let mut c = match case.hosts {
        Some(hosts) => {
            let mut c = notifier_with_hosts(s.path(), hosts);
            s.notify_env(&mut c, "container");
            c.arg("notify");
            c
        }
        None => s.notify("container"),
    };
    c.env("NOTIFY_FAILURE_URL", &case.failure_url)
        .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1")
        .env("NOTIFY_TIMEOUT", "2s");
    let r = run(&mut c, LIMIT);

    r.assert_code(0);
    let warns = r.lines("WARN");
    assert_eq!(warns.len(), 1, "{}", r.stderr);
    // Within the timeout plus one second: by the notifier's own clock for the attempt, and by
    // the wall clock for the whole process. The `unshare` wrapper of the DNS case (a shell and
    // two mounts before the notifier starts) is not the notifier's time, so it gets a margin.
    let attempt_ms: u64 = warns[0]
        .split_whitespace()
        .find_map(|f| f.strip_prefix("duration_ms="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no duration_ms in {}", warns[0]));
    assert!(
        Duration::from_millis(attempt_ms) < TIMEOUT + Duration::from_secs(1),
        "attempt took {attempt_ms} ms: {}",
        warns[0]
    );
    let wrapper = if case.hosts.is_some() {
        Duration::from_secs(2)
    } else {
        Duration::ZERO
    };
    assert!(
        // Process start and exit on a loaded machine get one more second than the attempt.
        r.elapsed < TIMEOUT + Duration::from_secs(2) + wrapper,
        "took {:?}: {}",
        r.elapsed,
        r.stderr
    );
    assert!(
        warns[0].contains(&format!("reason=\"{}\"", case.reason)),
        "expected reason {}: {}",
        case.reason,
        warns[0]
    );
    assert!(warns[0].contains("webhook not delivered"), "{}", warns[0]);
    assert!(r.lines("ERROR").is_empty(), "{}", r.stderr);
    // The backup's outcome is what it was.
    assert_eq!(s.result_json()["exit_code"], 3);
    if let Some(rx) = case.rx {
        assert_eq!(rx.count(), case.requests, "{}", r.stderr);
        if case.requests == 1 {
            assert_eq!(rx.requests()[0].path, "/fail");
        }
        assert!(rx.connections() <= 1, "at most one attempt");
    }
}

#[test]
fn receiver_answers_500() {
    let rx = Receiver::http(Reply::Status(500));
    check_failed_delivery(FailureCase {
        rx: Some(&rx),
        failure_url: rx.url("/fail"),
        reason: "http-status",
        requests: 1,
        hosts: None,
    });
}

#[test]
fn receiver_is_not_listening() {
    let closed = ClosedPort::any();
    check_failed_delivery(FailureCase {
        rx: None,
        failure_url: format!("http://{}/fail", closed.addr),
        reason: "connect",
        requests: 0,
        hosts: None,
    });
}

#[test]
fn receiver_hangs_past_the_timeout() {
    let rx = Receiver::http(Reply::Hang);
    check_failed_delivery(FailureCase {
        rx: Some(&rx),
        failure_url: rx.url("/fail"),
        reason: "timeout",
        requests: 1,
        hosts: None,
    });
}

#[test]
fn receiver_serves_a_certificate_from_an_untrusted_ca() {
    let rx = Receiver::https(Reply::Status(200));
    check_failed_delivery(FailureCase {
        rx: Some(&rx),
        failure_url: rx.url("/fail"),
        reason: "tls",
        requests: 0,
        hosts: None,
    });
    assert_eq!(rx.connections(), 1, "the one TLS handshake was tried");
}

/// rustls logs a peer's TLS warning alert at WARN itself; the failed delivery is still the one
/// WARN line the notifier writes.
#[test]
fn a_tls_warning_alert_from_the_receiver_is_still_one_warn_line() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = {
        let (accepted, done) = (accepted.clone(), done.clone());
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            use std::sync::atomic::Ordering;
            // Keeps accepting until the test is over, so a second attempt would be counted.
            while !done.load(Ordering::SeqCst) {
                let Ok((mut conn, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                accepted.fetch_add(1, Ordering::SeqCst);
                conn.set_nonblocking(false).unwrap();
                let mut hello = [0u8; 4096];
                let _ = conn.read(&mut hello);
                // An alert record (21), TLS 1.2, two bytes: level warning (1), unrecognized_name
                // (112); then the connection closes mid-handshake.
                let _ = conn.write_all(&[21, 3, 3, 0, 2, 1, 112]);
            }
        })
    };
    check_failed_delivery(FailureCase {
        rx: None,
        failure_url: format!("https://{addr}/fail"),
        reason: "tls",
        requests: 0,
        hosts: None,
    });
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    server.join().unwrap();
    assert_eq!(
        accepted.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "exactly one connection attempt"
    );
}

#[test]
fn receiver_answers_302_and_the_redirect_is_not_followed() {
    let rx = Receiver::http(Reply::Redirect {
        status: 302,
        location: "/redirected".into(),
    });
    check_failed_delivery(FailureCase {
        rx: Some(&rx),
        failure_url: rx.url("/fail"),
        reason: "http-status",
        requests: 1,
        hosts: None,
    });
}

#[test]
fn host_name_does_not_resolve() {
    check_failed_delivery(FailureCase {
        rx: None,
        failure_url: "http://nowhere.test/fail".into(),
        reason: "dns",
        requests: 0,
        hosts: Some("127.0.0.1 localhost\n"),
    });
}

// ---------------------------------------------------------------------------------------------
// 5. The URL policy at send time.

/// `send` with a private /etc/hosts and `env`; returns the run.
fn send_with_env(s: &Scratch, hosts: &str, url: &str, env: &[(&str, &str)]) -> Run {
    let mut c = notifier_with_hosts(s.path(), hosts);
    c.envs(env.iter().copied());
    c.args([
        "send",
        "--status",
        "failure",
        "--timeout",
        "2s",
        "--url",
        url,
    ]);
    run(&mut c, LIMIT)
}

/// `send` with a private /etc/hosts and an allowlist (none when empty); returns the run.
fn send_with_hosts(s: &Scratch, hosts: &str, url: &str, allow: &str) -> Run {
    let env: &[(&str, &str)] = if allow.is_empty() {
        &[]
    } else {
        &[("NOTIFY_ALLOW_DESTINATIONS", allow)]
    };
    send_with_env(s, hosts, url, env)
}

fn assert_refused_by_policy(r: &Run, what: &str) {
    r.assert_code(1);
    assert!(r.stdout.starts_with("not delivered"), "{}", r.stdout);
    let warns = r.lines("WARN");
    assert_eq!(warns.len(), 1, "{}", r.stderr);
    assert!(warns[0].contains("reason=\"policy\""), "{}", warns[0]);
    assert!(warns[0].contains(what), "expected {what:?} in {}", warns[0]);
}

/// The policy the operator enforces at admission reaches the notifier as the environment the
/// injector writes (`UrlPolicy::to_env`), and each part of it is enforced at send time.
#[test]
fn the_policy_in_the_injected_environment_is_enforced_at_send_time() {
    let p = backup_operator::url_policy::UrlPolicy {
        require_https: true,
        deny_private: true,
        deny: vec!["bad.example".parse().unwrap()],
        ..Default::default()
    };
    let env = p.to_env();
    let s = Scratch::new();
    for (url, what) in [
        ("http://hooks.example.com/x", "--require-https"),
        ("https://10.0.0.1/x", "--deny-private-networks"),
        ("https://bad.example/x", "denied destination bad.example"),
    ] {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = send_with_env(&s, "127.0.0.1 localhost\n", url, &env);
        assert_refused_by_policy(&r, what);
    }
}

#[test]
fn loopback_and_metadata_hosts_are_refused_by_default() {
    let rx = Receiver::http(Reply::Status(200));
    let port = rx.port();
    for url in [
        rx.url("/fail"),
        format!("http://localhost:{port}/fail"),
        format!("http://2130706433:{port}/fail"),
        format!("http://0x7f.1:{port}/fail"),
        format!("http://[::ffff:127.0.0.1]:{port}/fail"),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://metadata.google.internal/computeMetadata/v1/".to_owned(),
    ] {
        let r = run(
            notifier().args([
                "send",
                "--status",
                "failure",
                "--timeout",
                "2s",
                "--url",
                &url,
            ]),
            LIMIT,
        );
        r.assert_code(1);
        let warns = r.lines("WARN");
        assert_eq!(warns.len(), 1, "{url}: {}", r.stderr);
        assert!(
            warns[0].contains("reason=\"policy\""),
            "{url}: {}",
            warns[0]
        );
    }
    assert_eq!(rx.connections(), 0);
}

#[test]
fn a_name_that_resolves_to_loopback_is_refused() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let r = send_with_hosts(
        &s,
        "127.0.0.1 receiver.test\n",
        &rx.url_with_host("receiver.test", "/fail"),
        "",
    );
    assert_refused_by_policy(&r, "resolves to 127.0.0.1");
    assert_eq!(rx.connections(), 0);
}

#[test]
fn allowlisting_a_name_opens_it_but_never_a_metadata_address() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let hosts = "127.0.0.1 receiver.test\n169.254.169.254 meta.test\n";
    let r = send_with_hosts(
        &s,
        hosts,
        &rx.url_with_host("receiver.test", "/ok"),
        "receiver.test,meta.test",
    );
    r.assert_code(0);
    assert_delivered_line(&r, 200);
    assert_eq!(rx.count(), 1);

    let r = send_with_hosts(
        &s,
        hosts,
        "http://meta.test/latest/meta-data",
        "receiver.test,meta.test",
    );
    assert_refused_by_policy(&r, "resolves to 169.254.169.254");
    // Not even an allow rule for the whole link-local range opens it.
    let r = send_with_hosts(
        &s,
        hosts,
        "http://meta.test/latest/meta-data",
        "169.254.0.0/16,meta.test",
    );
    assert_refused_by_policy(&r, "169.254.169.254");
}

/// A name with one refused address is refused as a whole: trying only the allowed addresses
/// would let whoever controls the name choose where the request goes.
#[test]
fn one_refused_address_refuses_the_name() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let r = send_with_hosts(
        &s,
        "127.0.0.1 both.test\n127.0.0.2 both.test\n",
        &rx.url_with_host("both.test", "/fail"),
        "127.0.0.1",
    );
    assert_refused_by_policy(&r, "127.0.0.2");
    assert_eq!(rx.connections(), 0);
}

/// The connection goes to the checked addresses in order: the first refuses the connection,
/// the second takes the request.
#[test]
fn checked_addresses_are_tried_in_order() {
    let s = Scratch::new();
    // The receiver listens on 127.0.0.2 only; the same port on 127.0.0.1 is held closed.
    let (rx, _closed) = loop {
        let rx = Receiver::builder()
            .ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))
            .reply(Reply::Status(200))
            .start();
        let port = rx.port();
        if let Some(closed) = ClosedPort::try_on(Ipv4Addr::LOCALHOST, port) {
            break (rx, closed);
        }
    };
    // glibc orders 127.0.0.1 first (it matches the source address best).
    let r = send_with_hosts(
        &s,
        "127.0.0.1 multi.test\n127.0.0.2 multi.test\n",
        &rx.url_with_host("multi.test", "/ok"),
        "127.0.0.0/8",
    );
    r.assert_code(0);
    assert!(
        r.stdout.contains(&format!("127.0.0.2:{}", rx.port())),
        "{}",
        r.stdout
    );
    assert_eq!(rx.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Sidecar mode, the wrapper killed (OOM), restarts.

#[test]
fn sidecar_started_first_sends_success_once_and_exits_on_sigterm() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let mut sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx));
    std::thread::sleep(Duration::from_millis(400));
    assert!(sidecar.running());
    assert_eq!(rx.count(), 0, "nothing before the backup ends");

    s.run_exec("sleep 0.3; exit 0").assert_code(0);
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    // It stays up after sending: the kubelet would restart a sidecar that exits.
    std::thread::sleep(Duration::from_millis(500));
    assert!(sidecar.running());

    sidecar.signal(libc::SIGTERM);
    let r = sidecar.finish(LIMIT);
    r.assert_code(0);
    assert_delivered_line(&r, 200);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/ok");
    assert_eq!(
        reqs[0].json().unwrap(),
        expected_payload(
            "success",
            "VolumeBackup",
            "default-my-data-pvc",
            "my-data-pvc"
        )
    );
}

/// A sidecar acts on the result only once the wrapper is gone (its lock released); in container
/// mode the result alone is enough. The lock is held here by the test itself.
#[test]
fn the_sidecar_waits_for_the_lock_release_and_the_container_for_the_result() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let lock = LivenessLock::acquire(&s.lock()).unwrap();
    std::fs::write(
        s.result(),
        r#"{"exit_code":0,"started_at":"2025-01-01T00:00:00.000Z","finished_at":"2025-01-01T00:00:01.000Z"}"#,
    )
    .unwrap();
    let mut sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx));
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(rx.count(), 0, "sent while the wrapper still held its lock");
    drop(lock);
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    assert!(sidecar.running());
    sidecar.wait_handles(libc::SIGTERM);
    sidecar.signal(libc::SIGTERM);
    sidecar.finish(LIMIT).assert_code(0);

    let s = Scratch::new();
    let _lock = LivenessLock::acquire(&s.lock()).unwrap();
    std::fs::write(
        s.result(),
        r#"{"exit_code":0,"started_at":"2025-01-01T00:00:00.000Z","finished_at":"2025-01-01T00:00:01.000Z"}"#,
    )
    .unwrap();
    let r = run(with_urls(&mut s.notify("container"), &rx), LIMIT);
    r.assert_code(0);
    assert_eq!(rx.count(), 2, "{}", r.stderr);
}

#[test]
fn sidecar_sigterm_without_any_result_sends_failure() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    let sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx));
    sidecar.wait_handles(libc::SIGTERM);
    sidecar.signal(libc::SIGTERM);
    let r = sidecar.finish(LIMIT);
    r.assert_code(0);
    assert_eq!(rx.count(), 1, "{}", r.stderr);
    assert_eq!(rx.requests()[0].json().unwrap()["status"], "failure");
    assert!(
        r.stderr.contains("no result by the time SIGTERM arrived"),
        "{}",
        r.stderr
    );
}

#[test]
fn sigterm_during_a_send_does_not_cut_it_short() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Delay {
        delay: Duration::from_millis(1500),
        status: 200,
    });
    let sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx));
    s.run_exec("exit 0").assert_code(0);
    // The request has arrived; its response is still 1.5 s away.
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    sidecar.signal(libc::SIGTERM);
    let r = sidecar.finish(LIMIT);
    r.assert_code(0);
    assert_delivered_line(&r, 200);
    assert_eq!(rx.count(), 1);
}

/// What an OOM kill of the backup container does: the wrapper dies by SIGKILL without writing a
/// result. Its lock is released by the kernel, and the notifier sends failure, in both modes.
#[test]
fn a_wrapper_killed_by_sigkill_is_reported_as_failure_in_both_modes() {
    for mode in ["container", "sidecar"] {
        let s = Scratch::new();
        let rx = Receiver::http(Reply::Status(200));
        let notify = spawn(with_urls(&mut s.notify(mode), &rx));
        s.kill_an_attempt_without_result();
        assert!(rx.wait_for(1, Duration::from_secs(10)), "{mode}");
        let r = notify.end_notifier(mode);
        assert!(!s.result().exists());
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1, "{mode}: {}", r.stderr);
        assert_eq!(reqs[0].path, "/fail");
        assert_eq!(
            reqs[0].json().unwrap(),
            expected_payload(
                "failure",
                "VolumeBackup",
                "default-my-data-pvc",
                "my-data-pvc"
            )
        );
        assert!(
            r.stderr.contains("without recording a result"),
            "{}",
            r.stderr
        );
    }
}

/// restartPolicy OnFailure: the kubelet reruns a failed backup container in the same pod, so a
/// failed attempt is not final. The notifier sends once, for the attempt that ends the run: the
/// first success, or, when the Job gives up and the pod is stopped (SIGTERM), the last failure.
#[test]
fn with_in_place_retries_only_the_attempt_that_ends_the_run_is_sent() {
    // A scratch volume, a receiver, and a notifier told that its pod retries in place.
    let in_place = |mode: &str| {
        let s = Scratch::new();
        let rx = Receiver::http(Reply::Status(200));
        let mut cmd = s.notify(mode);
        with_urls(&mut cmd, &rx).env("NOTIFY_RESTART_POLICY", "OnFailure");
        let notifier = spawn(&mut cmd);
        (s, rx, notifier)
    };
    let sent = |rx: &Receiver, r: &Run, status: &str, mode: &str| {
        let reqs = rx.requests();
        assert_eq!(reqs.len(), 1, "{mode}: {}", r.stderr);
        assert_eq!(reqs[0].json().unwrap()["status"], status, "{mode}");
    };
    for mode in ["sidecar", "container"] {
        // A failure, then a success.
        let (s, rx, mut notifier) = in_place(mode);
        s.run_exec("exit 3").assert_code(3);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(
            rx.count(),
            0,
            "{mode}: sent for an attempt the kubelet retries"
        );
        assert!(notifier.running(), "{mode}");
        s.run_exec("sleep 0.3; exit 0").assert_code(0);
        assert!(rx.wait_for(1, Duration::from_secs(10)), "{mode}");
        let r = notifier.end_notifier(mode);
        sent(&rx, &r, "success", mode);
        assert!(
            r.stderr.contains("exited with code 3") && r.stderr.contains("OnFailure"),
            "{mode}: {}",
            r.stderr
        );

        // Two failures, the second (a bare `exit`) most likely starting and ending between two
        // looks, then SIGTERM: both attempts are seen, and the last one is sent.
        let (s, rx, notifier) = in_place(mode);
        s.run_exec("exit 3").assert_code(3);
        std::thread::sleep(Duration::from_millis(800));
        s.run_exec("exit 4").assert_code(4);
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(rx.count(), 0, "{mode}");
        // In both modes only SIGTERM ends the wait after a failure.
        notifier.wait_handles(libc::SIGTERM);
        notifier.signal(libc::SIGTERM);
        let r = notifier.finish(LIMIT);
        r.assert_code(0);
        sent(&rx, &r, "failure", mode);
        assert_eq!(
            r.stderr.matches("restartPolicy is OnFailure").count(),
            2,
            "{mode}: {}",
            r.stderr
        );
        assert!(
            r.stderr.contains("backup command exited with code 4"),
            "{mode}: {}",
            r.stderr
        );

        // An attempt killed before it could record anything (an OOM kill), then a success.
        let (s, rx, notifier) = in_place(mode);
        s.kill_an_attempt_without_result();
        std::thread::sleep(Duration::from_millis(800));
        assert_eq!(rx.count(), 0, "{mode}");
        s.run_exec("sleep 0.5; exit 0").assert_code(0);
        assert!(rx.wait_for(1, Duration::from_secs(10)), "{mode}");
        let r = notifier.end_notifier(mode);
        sent(&rx, &r, "success", mode);
        assert!(
            r.stderr.contains("without recording a result") && r.stderr.contains("OnFailure"),
            "{mode}: {}",
            r.stderr
        );
    }

    // A failure and a success in quick succession end in one success notification.
    let (s, rx, notifier) = in_place("sidecar");
    s.run_exec("exit 3").assert_code(3);
    s.run_exec("exit 0").assert_code(0);
    assert!(rx.wait_for(1, Duration::from_secs(10)));
    let r = notifier.end_notifier("sidecar");
    sent(&rx, &r, "success", "sidecar");
}

#[test]
fn a_second_notify_after_a_completed_send_does_not_send_again() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    s.run_exec("exit 0").assert_code(0);
    run(with_urls(&mut s.notify("container"), &rx), LIMIT).assert_code(0);
    assert_eq!(rx.count(), 1);
    assert!(s.sent().exists());

    // A container-mode rerun.
    let r = run(with_urls(&mut s.notify("container"), &rx), LIMIT);
    r.assert_code(0);
    assert!(r.stderr.contains("already sent"), "{}", r.stderr);
    // A restarted sidecar: does not send, and stays up until SIGTERM.
    let mut sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx));
    std::thread::sleep(Duration::from_millis(700));
    assert!(sidecar.running());
    sidecar.wait_handles(libc::SIGTERM);
    sidecar.signal(libc::SIGTERM);
    let r = sidecar.finish(LIMIT);
    r.assert_code(0);
    assert!(r.stderr.contains("already sent"), "{}", r.stderr);
    assert_eq!(rx.count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Invalid configuration: one ERROR line, no send, exit 0.

#[test]
fn invalid_configuration_is_one_error_line_and_no_send() {
    let cases: [(&str, &str, &str); 5] = [
        ("NOTIFY_KIND", "Bogus", "NOTIFY_KIND"),
        ("NOTIFY_RESTART_POLICY", "Always", "NOTIFY_RESTART_POLICY"),
        ("NOTIFY_TIMEOUT", "abc", "NOTIFY_TIMEOUT"),
        ("NOTIFY_HOST", "", "NOTIFY_HOST"),
        ("NOTIFY_DENY_DESTINATIONS", "not a host!", "not a host!"),
    ];
    for (var, value, mentioned) in cases {
        let s = Scratch::new();
        let rx = Receiver::http(Reply::Status(200));
        s.run_exec("exit 0").assert_code(0);
        let r = run(
            with_urls(&mut s.notify("container"), &rx).env(var, value),
            Duration::from_secs(5),
        );
        r.assert_code(0);
        let errors = r.lines("ERROR");
        assert_eq!(errors.len(), 1, "{var}: {}", r.stderr);
        assert!(errors[0].contains(mentioned), "{var}: {}", errors[0]);
        assert!(errors[0].contains("nothing will be sent"), "{}", errors[0]);
        assert_eq!(r.stderr.lines().count(), 1, "{var}: {}", r.stderr);
        assert_eq!(rx.connections(), 0);
    }
}

#[test]
fn a_misconfigured_sidecar_idles_until_sigterm_and_an_unknown_mode_exits() {
    let s = Scratch::new();
    let rx = Receiver::http(Reply::Status(200));
    s.run_exec("exit 0").assert_code(0);
    let mut sidecar = spawn(with_urls(&mut s.notify("sidecar"), &rx).env("NOTIFY_KIND", "Bogus"));
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        sidecar.running(),
        "a sidecar that exits is restarted into the same error"
    );
    sidecar.wait_handles(libc::SIGTERM);
    sidecar.signal(libc::SIGTERM);
    let r = sidecar.finish(LIMIT);
    r.assert_code(0);
    assert_eq!(r.lines("ERROR").len(), 1, "{}", r.stderr);
    assert_eq!(rx.connections(), 0);

    // A mode that cannot be read: exit at once rather than risk holding a Job open.
    let r = run(
        with_urls(&mut s.notify("sidecar"), &rx)
            .env("NOTIFY_MODE", "weird")
            .arg("--bogus-flag"),
        Duration::from_secs(5),
    );
    r.assert_code(0);
    assert_eq!(r.lines("ERROR").len(), 1, "{}", r.stderr);
    let r = run(
        with_urls(&mut s.notify("weird"), &rx),
        Duration::from_secs(5),
    );
    r.assert_code(0);
    assert_eq!(r.lines("ERROR").len(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("NOTIFY_MODE"), "{}", r.stderr);
    assert_eq!(rx.connections(), 0);

    // Run by hand (stderr a terminal, given by script(1)): the error, then back to the prompt.
    let r = run(
        std::process::Command::new("script").args([
            "-qec",
            &format!("NOTIFY_MODE=sidecar {BIN} notify --bogus-flag"),
            "/dev/null",
        ]),
        Duration::from_secs(10),
    );
    r.assert_code(0);
    assert!(
        r.stdout.contains("ERROR") && r.stdout.contains("--bogus-flag"),
        "{r:#?}"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Secret URL parts never reach the output.

const SECRET: &str = "s3cr3t-T0KEN";

fn secret_urls(rx500: &Receiver, redirect: &Receiver, closed: &ClosedPort) -> Vec<String> {
    vec![
        // Connection refused.
        format!("http://{}/hook/{SECRET}?key={SECRET}", closed.addr),
        // 500.
        rx500.url(&format!("/hook/{SECRET}?key={SECRET}")),
        // A redirect whose Location carries the token as well.
        redirect.url(&format!("/hook/{SECRET}")),
        // Refused by the policy (loopback not allowlisted under this name).
        format!("http://localhost:{}/hook/{SECRET}", rx500.port()),
        // Userinfo.
        format!("http://user:{SECRET}@127.0.0.1:{}/hook", rx500.port()),
        // Unparsable.
        format!("http://127.0.0.1:{}/hook/{SECRET} x", rx500.port()),
        format!("http://[::1/{SECRET}"),
    ]
}

#[test]
fn secret_url_parts_never_appear_in_notify_output() {
    let rx500 = Receiver::http(Reply::Status(500));
    let redirect = Receiver::http(Reply::Redirect {
        status: 302,
        location: format!("https://elsewhere.example/{SECRET}"),
    });
    let closed = ClosedPort::any();
    for url in secret_urls(&rx500, &redirect, &closed) {
        let s = Scratch::new();
        s.run_exec("exit 1");
        let r = run(
            s.notify("container")
                .env("NOTIFY_FAILURE_URL", &url)
                .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1")
                .env("NOTIFY_TIMEOUT", "2s"),
            LIMIT,
        );
        r.assert_code(0);
        assert_eq!(r.lines("WARN").len(), 1, "a failed delivery: {}", r.stderr);
        assert!(
            !r.output().contains(SECRET),
            "secret leaked:\n{}",
            r.output()
        );
    }
    assert_eq!(
        (rx500.count(), redirect.count()),
        (1, 1),
        "the failures were real"
    );
}

#[test]
fn secret_url_parts_never_appear_in_send_output() {
    let rx500 = Receiver::http(Reply::Status(500));
    let redirect = Receiver::http(Reply::Redirect {
        status: 302,
        location: format!("https://elsewhere.example/{SECRET}"),
    });
    let closed = ClosedPort::any();
    for url in secret_urls(&rx500, &redirect, &closed) {
        let r = run(
            notifier()
                .args(["send", "--status", "failure", "--timeout", "2s"])
                .args(["--allow-destination", "127.0.0.1", "--url", &url]),
            LIMIT,
        );
        r.assert_code(1);
        assert!(r.stdout.starts_with("not delivered"), "{}", r.stdout);
        assert!(
            !r.output().contains(SECRET),
            "secret leaked:\n{}",
            r.output()
        );
    }
    // The URL taken from the environment, and --help with it set, stay secret too.
    let r = run(
        notifier()
            .env("NOTIFY_SUCCESS_URL", rx500.url(&format!("/{SECRET}")))
            .args([
                "send",
                "--status",
                "success",
                "--allow-destination",
                "127.0.0.1",
            ]),
        LIMIT,
    );
    r.assert_code(1);
    assert!(!r.output().contains(SECRET), "{}", r.output());
    let r = run(
        notifier()
            .env("NOTIFY_SUCCESS_URL", format!("https://x.example/{SECRET}"))
            .env("NOTIFY_FAILURE_URL", format!("https://x.example/{SECRET}"))
            .args(["notify", "--help"]),
        LIMIT,
    );
    r.assert_code(0);
    assert!(r.stdout.contains("NOTIFY_SUCCESS_URL"), "{}", r.stdout);
    assert!(!r.output().contains(SECRET), "{}", r.output());
}

// ---------------------------------------------------------------------------------------------
// send: a test delivery through the same path.

#[test]
fn send_delivers_and_reports() {
    let rx = Receiver::http(Reply::Status(202));
    let r = run(
        notifier()
            .args(["send", "--status", "success", "--kind", "S3Backup"])
            .args([
                "--host",
                "ns-bucket",
                "--volume",
                "bucket",
                "--allow-destination",
                "127.0.0.1",
                "--url",
                &rx.url("/ok"),
            ]),
        LIMIT,
    );
    r.assert_code(0);
    assert!(
        r.stdout.starts_with("delivered: success payload"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("HTTP 202"), "{}", r.stdout);
    assert_delivered_line(&r, 202);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(
        reqs[0].json().unwrap(),
        expected_payload("success", "S3Backup", "ns-bucket", "bucket")
    );

    // The URL and the policy from the notifier's environment, as in `kubectl exec`.
    let r = run(
        notifier()
            .env("NOTIFY_FAILURE_URL", rx.url("/fail"))
            .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1")
            .args(["send", "--status", "failure"]),
        LIMIT,
    );
    r.assert_code(0);
    assert_eq!(rx.requests()[1].path, "/fail");
}

#[test]
fn send_exits_non_zero_when_delivery_fails_or_arguments_are_bad() {
    let rx = Receiver::http(Reply::Status(503));
    let r = run(
        notifier()
            .args([
                "send",
                "--status",
                "failure",
                "--allow-destination",
                "127.0.0.1",
            ])
            .args(["--url", &rx.url("/fail")]),
        LIMIT,
    );
    r.assert_code(1);
    assert!(r.stdout.contains("http-status"), "{}", r.stdout);
    assert!(r.stdout.contains("HTTP 503"), "{}", r.stdout);
    assert_eq!(rx.count(), 1);

    for args in [
        vec!["send", "--status", "maybe", "--url", "https://x.example/"],
        vec!["send", "--status", "success"],
        vec![
            "send",
            "--status",
            "success",
            "--url",
            "https://x.example/",
            "--timeout",
            "0",
        ],
        vec![
            "send",
            "--status",
            "success",
            "--url",
            "https://x.example/",
            "--kind",
            "Pvc",
        ],
    ] {
        let r = run(notifier().args(&args), LIMIT);
        r.assert_code(2);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert_eq!(r.stdout, "");
    }
}
