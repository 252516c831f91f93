//! `backup-notifier exec` and `install`, run as real processes: exit codes, signals, the result
//! file and the liveness lock.

mod notifier_common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::time::Duration;

use backup_operator::notifier::lock::{LockState, probe};
use notifier_common::*;
use testkit::receiver::{Receiver, Reply};

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn exit_codes_pass_through_and_are_recorded() {
    for code in [0, 1, 3, 255] {
        let s = Scratch::new();
        let r = s.run_exec(&format!("exit {code}"));
        r.assert_code(code);
        let result = s.result_json();
        assert_eq!(result["exit_code"], code, "{result}");
        assert!(result.get("signal").is_none(), "{result}");
        assert!(result["started_at"].as_str().unwrap().ends_with('Z'));
        assert!(result["finished_at"].as_str().unwrap().ends_with('Z'));
        // The wrapper says nothing when all is well: the backup's output is all there is.
        assert_eq!(r.stderr, "", "code {code}");
    }
}

#[test]
fn stdout_and_stderr_pass_through_untouched() {
    let s = Scratch::new();
    let r = s.run_exec("printf 'out 1\\nout 2'; printf 'err\\n' >&2; exit 0");
    r.assert_code(0);
    assert_eq!(r.stdout, "out 1\nout 2");
    assert_eq!(r.stderr, "err\n");
}

#[test]
fn a_child_killed_by_sigkill_is_137_and_notify_reports_failure() {
    let s = Scratch::new();
    let r = s.run_exec("kill -KILL $$");
    r.assert_code(137);
    let result = s.result_json();
    assert_eq!(result["exit_code"], 137);
    assert_eq!(result["signal"], 9);

    assert_container_notify_reports_failure(&s);
}

/// A container-mode `notify` on what the wrapper left in `s` sends the failure payload, once.
fn assert_container_notify_reports_failure(s: &Scratch) {
    let rx = Receiver::http(Reply::Status(200));
    let n = run(
        s.notify("container")
            .env("NOTIFY_SUCCESS_URL", rx.url("/ok"))
            .env("NOTIFY_FAILURE_URL", rx.url("/fail"))
            .env("NOTIFY_ALLOW_DESTINATIONS", "127.0.0.1"),
        LIMIT,
    );
    n.assert_code(0);
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1, "{n:#?}");
    assert_eq!(reqs[0].path, "/fail");
    assert_eq!(reqs[0].json().unwrap()["status"], "failure");
}

/// Every forwarded signal reaches the command, which can then shut down its own way; the
/// wrapper exits with whatever the command exits with.
#[test]
fn signals_sent_to_the_wrapper_reach_the_command() {
    for sig in ["TERM", "INT", "HUP", "QUIT", "USR1", "USR2"] {
        let s = Scratch::new();
        let got = s.path().join("got");
        let ready = s.path().join("ready");
        let script = format!(
            "trap 'echo got-{sig} > {got}; exit 7' {sig}; touch {ready}; \
             while :; do sleep 0.05; done",
            got = got.display(),
            ready = ready.display()
        );
        let p = spawn(&mut s.exec_sh(&script));
        wait_until(Duration::from_secs(10), || ready.exists());
        let signum = match sig {
            "TERM" => libc::SIGTERM,
            "INT" => libc::SIGINT,
            "HUP" => libc::SIGHUP,
            "QUIT" => libc::SIGQUIT,
            "USR1" => libc::SIGUSR1,
            _ => libc::SIGUSR2,
        };
        p.signal(signum);
        let r = p.finish(LIMIT);
        r.assert_code(7);
        assert_eq!(
            std::fs::read_to_string(&got).unwrap(),
            format!("got-{sig}\n")
        );
        assert_eq!(s.result_json()["exit_code"], 7);
    }
}

/// The command's helpers (its process group) get the signal too, and a command that dies of the
/// forwarded signal is reported as 128+signal.
#[test]
fn sigterm_reaches_the_whole_group_and_death_by_it_is_143() {
    let s = Scratch::new();
    let ready = s.path().join("ready");
    let script = format!(
        // The helper's output goes elsewhere, so only its death, not a pipe it holds open, ends
        // the test's wait for it.
        "sleep 30 >/dev/null 2>&1 & echo $! > {ready}.pid; mv {ready}.pid {ready}; wait",
        ready = ready.display()
    );
    let p = spawn(&mut s.exec_sh(&script));
    let grandchild = wait_for_pid(&ready);
    p.signal(libc::SIGTERM);
    let r = p.finish(LIMIT);
    r.assert_code(143);
    assert_eq!(s.result_json()["signal"], libc::SIGTERM);
    // The background `sleep` was in the group and got SIGTERM as well.
    wait_until(Duration::from_secs(5), || {
        // SAFETY: signal 0 only checks whether the process exists.
        unsafe { libc::kill(grandchild, 0) != 0 }
    });
}

/// A stopped command (SIGTSTP, a debugger) still ends on a forwarded SIGTERM instead of waiting
/// for the kubelet's SIGKILL with no result: the wrapper continues it.
#[test]
fn a_stopped_command_ends_on_a_forwarded_sigterm() {
    let s = Scratch::new();
    let ready = s.path().join("ready");
    let script = format!(
        "echo $$ > {ready}.pid; mv {ready}.pid {ready}; kill -STOP $$; sleep 30",
        ready = ready.display()
    );
    let p = spawn(&mut s.exec_sh(&script));
    let shell = wait_for_pid(&ready);
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{shell}/stat")).is_ok_and(|stat| {
            stat.rsplit(')')
                .next()
                .is_some_and(|f| f.trim_start().starts_with('T'))
        })
    });
    p.signal(libc::SIGTERM);
    let r = p.finish(LIMIT);
    r.assert_code(143);
    assert_eq!(s.result_json()["signal"], libc::SIGTERM);
}

#[test]
fn commands_that_cannot_start_are_127_or_126_with_a_failure_result() {
    let s = Scratch::new();
    let mut c = notifier();
    c.arg("exec")
        .arg("--result")
        .arg(s.result())
        .args(["--", "/nonexistent/restic", "backup"]);
    let r = run(&mut c, LIMIT);
    r.assert_code(127);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot run \"/nonexistent/restic\""),
        "{}",
        r.stderr
    );
    let result = s.result_json();
    assert_eq!(result["exit_code"], 127);
    assert!(result["error"].as_str().unwrap().contains("cannot run"));

    let script = s.path().join("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = notifier();
    c.arg("exec")
        .arg("--result")
        .arg(s.result())
        .arg("--")
        .arg(&script);
    let r = run(&mut c, LIMIT);
    r.assert_code(126);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert_eq!(s.result_json()["exit_code"], 126);
}

/// A backup image with umask 077 (and so the wrapper) must still leave a result and a lock that
/// the notifier, another user, can read: otherwise it would report a successful backup as failed.
#[test]
fn the_result_and_the_lock_are_readable_whatever_the_umask() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let mut exec = s.exec_sh("exit 0");
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        exec.pre_exec(|| {
            libc::umask(0o077);
            Ok(())
        });
    }
    run(&mut exec, LIMIT).assert_code(0);
    for file in [s.result(), s.lock()] {
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{}", file.display());
    }
}

#[test]
fn the_lock_is_held_while_the_command_runs_and_released_after() {
    let s = Scratch::new();
    let go = s.path().join("go");
    let p = spawn(&mut s.exec_sh(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 0",
        go.display()
    )));
    s.wait_locked();
    assert!(!s.result().exists(), "no result while the command runs");
    std::fs::write(&go, "").unwrap();
    p.finish(LIMIT).assert_code(0);
    assert_eq!(probe(&s.lock()).unwrap(), LockState::Released);
    // Nothing but the result and the lock: no temporary file is left behind.
    let mut names: Vec<String> = std::fs::read_dir(s.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "go")
        .collect();
    names.sort();
    assert_eq!(names, ["result.json", "result.json.lock"]);
}

#[test]
fn a_result_from_an_earlier_run_is_not_mistaken_for_this_one() {
    let s = Scratch::new();
    s.run_exec("exit 0").assert_code(0);
    let go = s.path().join("go");
    let p = spawn(&mut s.exec_sh(&format!(
        "while [ ! -e {} ]; do sleep 0.05; done; exit 4",
        go.display()
    )));
    s.wait_locked();
    // Removed right after the new lock is published.
    wait_until(Duration::from_secs(5), || !s.result().exists());
    std::fs::write(&go, "").unwrap();
    p.finish(LIMIT).assert_code(4);
    assert_eq!(s.result_json()["exit_code"], 4);
}

/// Bad arguments are the wrapper's failure (125, one line), and when FILE can be made out a
/// failure result says so: a container-mode notifier waits for it (a wrapper that failed this
/// early takes no lock) and reports failure instead of keeping the pod running.
#[test]
fn bad_exec_arguments_are_one_line_and_125_with_a_failure_result() {
    let s = Scratch::new();
    let result = s.result();
    let result = result.to_str().unwrap();
    let with_result = format!("--result={result}");
    for (args, recorded) in [
        (vec!["exec", "--result", result], true),
        (
            vec!["exec", with_result.as_str(), "--bogus", "--", "true"],
            true,
        ),
        (vec!["exec", "--", "true"], false),
    ] {
        let _ = std::fs::remove_file(result);
        let r = run(notifier().args(&args), LIMIT);
        r.assert_code(125);
        assert_eq!(r.stderr.lines().count(), 1, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains(" ERROR "), "{}", r.stderr);
        if recorded {
            let json = s.result_json();
            assert_eq!(json["exit_code"], 125, "{json}");
            assert!(
                json["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("invalid arguments: "),
                "{json}"
            );
        } else {
            assert!(!s.result().exists(), "{args:?}");
        }
    }

    // A flag where FILE should be is not taken for one.
    let r = run(
        notifier()
            .current_dir(s.path())
            .args(["exec", "--result", "--bogus", "--", "true"]),
        LIMIT,
    );
    r.assert_code(125);
    assert!(!s.path().join("--bogus").exists(), "{r:#?}");

    run(
        notifier().args(["exec", "--result", result, "--bogus"]),
        LIMIT,
    )
    .assert_code(125);
    assert_container_notify_reports_failure(&s);
}

/// A command that leaves the wrapper's process group (a setpgid of its own) still gets the
/// forwarded signal: a send to the group alone would miss it, and it would run on to the
/// kubelet's SIGKILL with no result.
#[test]
fn a_command_that_left_its_process_group_still_gets_the_signal() {
    let s = Scratch::new();
    let ready = s.path().join("ready");
    // The command moves itself into the wrapper's group, which a kill of the command's own
    // group does not reach.
    let script = format!(
        "import os, signal, sys, time\n\
         os.setpgid(0, os.getpgid(os.getppid()))\n\
         signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n\
         open('{ready}', 'w').close()\n\
         time.sleep(30)\n\
         sys.exit(9)\n",
        ready = ready.display()
    );
    let mut cmd = notifier();
    cmd.args(["exec", "--result"])
        .arg(s.result())
        .args(["--", "python3", "-c", &script]);
    // Its own group, so that the command's move lands in a group the test does not share.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let p = spawn(&mut cmd);
    wait_until(Duration::from_secs(10), || ready.exists());
    p.signal(libc::SIGTERM);
    let r = p.finish(LIMIT);
    r.assert_code(7);
    assert_eq!(s.result_json()["exit_code"], 7);
}

/// A notifier volume the wrapper cannot use (here: a result directory that does not exist) is
/// no reason to skip the backup: the command runs and its exit code is the container's.
#[test]
fn the_command_runs_even_when_the_notifier_files_cannot_be_written() {
    let s = Scratch::new();
    let ran = s.path().join("ran");
    let r = run(
        notifier()
            .args(["exec", "--result", "/nonexistent/dir/r.json", "--"])
            .args(["sh", "-c", &format!("touch {}; exit 7", ran.display())]),
        LIMIT,
    );
    r.assert_code(7);
    assert!(ran.exists(), "the command did not run: {}", r.stderr);
    let errors = r.lines("ERROR");
    assert!(
        errors[0].contains("/nonexistent/dir/r.json.lock")
            && errors[0].contains("running the command anyway"),
        "{}",
        r.stderr
    );
}

/// Mode 0755 whatever the umask: an init container with umask 077 must still leave a binary
/// the other containers (another user) can run.
#[test]
fn install_copies_itself_atomically_with_mode_0755() {
    let s = Scratch::new();
    let dest = s.path().join("backup-notifier");
    let mut install = notifier();
    install.arg("install").arg(&dest);
    // SAFETY: umask is async-signal-safe and touches no memory.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut install, || {
            libc::umask(0o077);
            Ok(())
        });
    }
    let r = run(&mut install, LIMIT);
    r.assert_code(0);
    let meta = std::fs::metadata(&dest).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(std::fs::read(&dest).unwrap(), std::fs::read(BIN).unwrap());
    let v = run(std::process::Command::new(&dest).arg("--version"), LIMIT);
    v.assert_code(0);
    assert!(v.stdout.starts_with("backup-notifier "), "{}", v.stdout);

    // Installing again replaces the file; a directory as DEST gets DEST/backup-notifier.
    run(notifier().arg("install").arg(&dest), LIMIT).assert_code(0);
    let sub = s.path().join("bin");
    std::fs::create_dir(&sub).unwrap();
    run(notifier().arg("install").arg(&sub), LIMIT).assert_code(0);
    assert!(sub.join("backup-notifier").is_file());
    let names: Vec<_> = std::fs::read_dir(s.path()).unwrap().collect();
    assert_eq!(names.len(), 2, "no temporary file is left behind");

    let r = run(
        notifier()
            .arg("install")
            .arg(s.path().join("missing/backup-notifier")),
        LIMIT,
    );
    r.assert_code(1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);

    // A FIFO (or a device such as /dev/null) is never replaced.
    let fifo = s.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo reads the NUL-terminated path only.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let r = run(notifier().arg("install").arg(&fifo), LIMIT);
    r.assert_code(1);
    assert!(r.stderr.contains("not a regular file"), "{}", r.stderr);
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
}

/// The wrapper blocks the signals it forwards; the command must start with none blocked, or a
/// forwarded signal would stay pending in it forever. (A shell would hide a leak, as dash
/// clears its own mask, so the command here reads its mask directly.)
#[test]
fn the_command_starts_with_no_signal_blocked() {
    let s = Scratch::new();
    let mut c = notifier();
    c.arg("exec").arg("--result").arg(s.result()).args([
        "--",
        "grep",
        "^SigBlk:",
        "/proc/self/status",
    ]);
    let r = run(&mut c, LIMIT);
    r.assert_code(0);
    assert_eq!(r.stdout.trim(), "SigBlk:\t0000000000000000");
}

/// A wrapper started with SIGCHLD ignored (a launcher may leave it so) still learns that its
/// command ended: otherwise the kernel reaps the child unseen and the wrapper waits forever.
#[test]
fn a_wrapper_started_with_sigchld_ignored_still_ends_with_the_command() {
    use std::os::unix::process::CommandExt;
    let s = Scratch::new();
    let mut c = s.exec_sh("exit 3");
    // SAFETY: signal is async-signal-safe, as required between fork and exec.
    unsafe {
        c.pre_exec(|| {
            libc::signal(libc::SIGCHLD, libc::SIG_IGN);
            Ok(())
        });
    }
    let r = run(&mut c, LIMIT);
    r.assert_code(3);
    assert_eq!(s.result_json()["exit_code"], 3);
    assert_eq!(probe(&s.lock()).unwrap(), LockState::Released);
}
