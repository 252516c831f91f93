//! The `backup-notifier` command line: argument parsing, help texts, logging, exit codes.

use std::ffi::{OsStr, OsString};
use std::io::{IsTerminal, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand};
use tracing::{error, info};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::contract::{BackupKind, Outcome, Payload, env};
use crate::url_policy::{PolicyArgs, UrlPolicy};

use super::deliver::{Client, DEFAULT_TIMEOUT, deliver_logged};
use super::exec::{self, EXIT_WRAPPER_ERROR};
use super::files::StepFiles;
use super::install;
use super::notify::{self, NotifyConfig};
use super::result::now_rfc3339;
use super::tls;
use super::wait::{Mode, TermSignals};
use crate::duration::show;

/// Longest accepted `--timeout`: the send has to fit in the pod's termination grace period.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(300);

const ABOUT: &str = "Webhook notifications from inside a backup Job pod";

const LONG_ABOUT: &str = "\
Webhook notifications from inside a backup Job pod.

An init container copies this binary into a shared volume (install); the backup container runs \
its command through it (exec), which records how the command ended; the notifier container \
waits for that and sends one HTTP POST to the success or failure URL (notify). send makes a test \
delivery through the same code.

Logs are one line per record on stderr. URLs in logs show scheme and host only: paths, queries \
and userinfo of webhook URLs are treated as secrets.";

#[derive(Debug, Parser)]
#[command(
    name = "backup-notifier",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Install(InstallArgs),
    Exec(ExecArgs),
    Notify(NotifyArgs),
    Send(SendArgs),
}

/// Copy this executable to DEST, atomically, with mode 0755.
#[derive(Debug, Args)]
#[command(long_about = "\
Copy this executable to DEST, atomically, with mode 0755.

The copy is written to a temporary file beside DEST and renamed into place, so nothing ever runs \
a half-written binary. When DEST is an existing directory the copy is DEST/backup-notifier. The \
binary is statically linked and runs in any image (alpine, distroless, scratch).

Exit status: 0 when installed, 1 with a one-line error when the copy fails, 2 for invalid \
arguments.")]
pub struct InstallArgs {
    /// Where to put the copy (a file path, or a directory).
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,
}

/// Run a command, pass signals on to it, and record how it ended.
#[derive(Debug, Args)]
#[command(long_about = "\
Run CMD with ARGS as a child, pass signals on to it, and record how it ended.

- CMD runs in its own process group. SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 \
received by the wrapper are sent to that whole group. stdin, stdout and stderr are passed \
through untouched.
- The wrapper exits with CMD's exit code, or with 128+N when signal N killed it.
- The result is written to FILE (temporary file + rename) as JSON: exit_code, signal (when \
one killed CMD), started_at, finished_at (RFC 3339 UTC), and error when CMD could not start.
- For its whole life the wrapper holds an flock on FILE.lock (locked under a temporary name, \
then renamed into place). The kernel releases it however the wrapper ends, so a waiter that \
finds it released but no result knows the wrapper was killed (e.g. by the OOM killer).
- A CMD that does not exist exits 127, one that cannot be executed 126; both with a one-line \
error and a failure result in FILE.
- 125: the wrapper itself failed: bad arguments (CMD is not started), or it could not block, \
wait for or reap signals and children; a failure result is written to FILE when FILE is known.
- When FILE.lock cannot be created, or a result left in FILE by an earlier run in the same pod \
cannot be removed, the wrapper says so in one ERROR line and runs CMD anyway: the notifier must \
never decide whether a backup runs. Without the lock a sidecar notifier decides at SIGTERM from \
what FILE holds then; a container-mode notifier waits for FILE, so a CMD killed before writing it \
leaves the pod running until the Job's deadline.

Works as PID 1: it also reaps orphaned processes while CMD runs.")]
pub struct ExecArgs {
    /// Where to write the result; FILE.lock is created beside it.
    #[arg(long, value_name = "FILE")]
    pub result: PathBuf,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD ARGS")]
    pub command: Vec<OsString>,
}

/// Settings shared by `notify` and `send`, so a test send behaves exactly like a real one.
#[derive(Debug, Clone, Args)]
pub struct DeliveryArgs {
    /// Limit for the whole delivery: DNS, connect, TLS and response. Examples: 10s, 2s, 500ms.
    /// At most 5m.
    #[arg(long, env = env::TIMEOUT, value_name = "DURATION", default_value = "10s")]
    pub timeout: String,
    /// PEM file with extra CA certificates to trust besides the bundled public roots
    /// (webpki-roots), e.g. for an in-cluster relay with a private CA. Read at send time. For
    /// `notify`, a file that is missing or holds no usable certificate leaves the public roots
    /// alone (a public URL still gets its notification; a TLS failure names the file's
    /// problem); `send` does the same and also names the problem at once.
    // Read as any OS string: clap's path parser refuses an empty one, and an empty
    // NOTIFY_CA_FILE means none, as an empty URL or host variable does.
    #[arg(
        long,
        env = env::CA_FILE,
        value_name = "PEM",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub ca_file: Option<PathBuf>,
    #[command(flatten)]
    pub policy: PolicyArgs,
}

impl DeliveryArgs {
    /// The client, or a one-line reason why the settings are unusable.
    pub fn client(&self) -> anyhow::Result<Client> {
        let timeout = parse_timeout(&self.timeout)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{} (--timeout)", env::TIMEOUT))?;
        let ca_file = self.ca_file.clone().filter(|p| !p.as_os_str().is_empty());
        let policy = UrlPolicy::from(self.policy.clone());
        Ok(Client::new(policy, tls::Trust::new(ca_file), timeout))
    }
}

/// Wait for the wrapped backup to end and send the one webhook for its outcome.
#[derive(Debug, Args)]
#[command(long_about = "\
Wait for the backup command (run through `exec --result FILE`) to end, then send one webhook: to \
the success URL if and only if the recorded exit code is 0, otherwise to the failure URL. No \
result (the wrapper was killed, e.g. by the OOM killer, or had not reported by SIGTERM) is a \
failure.

Modes:
- sidecar (default): for a native sidecar (an init container with restartPolicy: Always). Waits \
until the wrapper has ended (FILE.lock released; FILE, or its absence, then decides), or for \
SIGTERM, which the kubelet sends once every main container has stopped. Then decides and sends. After a send that was not caused by SIGTERM \
it keeps waiting for SIGTERM, because a sidecar that exits is restarted. SIGTERM or SIGINT \
during a send does not cut the send short.
- container: for a regular container beside the backup container. Waits for FILE or the release \
of FILE.lock, decides, sends, exits.

With --restart-policy OnFailure (the pod's restartPolicy) the kubelet restarts a failed backup \
container in the same pod, so a failure is not final: the notifier waits for the next attempt \
and sends success as soon as one succeeds, or failure when SIGTERM arrives (the pod is being \
stopped: the Job reached its backoffLimit or activeDeadlineSeconds, or the pod was evicted or \
deleted, after which the Job's next pod, if any, notifies on its own).

Delivery: exactly one HTTP/1.1 POST with Content-Type: application/json and the four-key payload \
(status, message, host, volume); no retries; redirects are not followed (a 3xx is a failure); \
the timeout covers DNS, connect, TLS and the response. Before connecting, the URL and every \
address its host resolves to are checked against the URL policy, and the connection goes to one \
of those checked addresses (HTTP_PROXY and HTTPS_PROXY are not used, for the same reason). TLS trusts the bundled \
public roots plus --ca-file, read at send time (the kubelet may update a mounted ConfigMap while \
the backup runs); when that file is missing or holds no usable certificate the public roots \
alone are used, and a TLS failure says what was wrong with the file.

At most once: before sending, FILE.sent is created exclusively; if it exists, nothing is sent \
again (a restarted notifier, or a second run).

Logs: one INFO line on delivery (status, duration), one WARN line on failure (reason: policy, \
dns, connect, tls, timeout, http-status or http), one INFO line when no URL is set for the \
outcome.

Exit status: always 0. A webhook must never change the Job's outcome, and in container mode a \
non-zero exit would mark the pod failed. Invalid configuration (a bad NOTIFY_KIND, a missing \
NOTIFY_HOST, a bad NOTIFY_TIMEOUT, ...) is one ERROR line and no send. In sidecar mode the \
notifier then idles until SIGTERM instead of exiting, because the kubelet would restart it into \
the same error over and over; in container mode, when the mode itself is invalid, or when \
stderr is a terminal (a person trying it out), it exits 0 at once, so it can never hold a Job \
open.")]
pub struct NotifyArgs {
    /// Where to POST after a successful backup; unset means nothing is sent on success.
    #[arg(long, env = env::SUCCESS_URL, value_name = "URL", hide_env_values = true)]
    pub success_url: Option<String>,
    /// Where to POST after a failed backup; unset means nothing is sent on failure.
    #[arg(long, env = env::FAILURE_URL, value_name = "URL", hide_env_values = true)]
    pub failure_url: Option<String>,
    /// VolumeBackup or S3Backup; chooses the payload's message.
    #[arg(long, env = env::KIND, value_name = "KIND")]
    pub kind: Option<String>,
    /// The payload's host field (<namespace>-<pvc> or <namespace>-<bucket>).
    #[arg(long, env = env::HOST, value_name = "HOST")]
    pub host: Option<String>,
    /// The payload's volume field (<pvc> or <bucket>).
    #[arg(long, env = env::VOLUME, value_name = "VOLUME")]
    pub volume: Option<String>,
    /// The result file given to `exec --result`; FILE.lock and FILE.sent live beside it.
    #[arg(long, env = env::RESULT, value_name = "FILE")]
    pub result: Option<PathBuf>,
    /// sidecar or container.
    #[arg(long, env = env::MODE, value_name = "MODE", default_value = "sidecar")]
    pub mode: String,
    /// The backup pod's restartPolicy, Never or OnFailure. With OnFailure the kubelet restarts a
    /// failed backup container in the same pod, so a failure is final only when the pod ends.
    #[arg(long, env = env::RESTART_POLICY, value_name = "POLICY", default_value = "Never")]
    pub restart_policy: String,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

impl NotifyArgs {
    /// Every problem at once, in one line, so one look at the log fixes them all.
    fn config(&self) -> anyhow::Result<(NotifyConfig, Client)> {
        let mut problems = Vec::new();
        let mode = self
            .mode
            .parse::<Mode>()
            .map_err(|e| problems.push(format!("{} (--mode): {e}", env::MODE)))
            .ok();
        let retried_in_place = match self.restart_policy.as_str() {
            "Never" | "" => false,
            "OnFailure" => true,
            other => {
                problems.push(format!(
                    "{} (--restart-policy): unknown restart policy {other:?}: expected Never or OnFailure",
                    env::RESTART_POLICY
                ));
                false
            }
        };
        let kind = match non_empty(&self.kind) {
            Some(k) => k
                .parse::<BackupKind>()
                .map_err(|e| problems.push(format!("{} (--kind): {e}", env::KIND)))
                .ok(),
            None => {
                problems.push(format!("{} (--kind) is not set", env::KIND));
                None
            }
        };
        let mut required = |value: &Option<String>, var: &str, flag: &str| {
            let v = non_empty(value).map(str::to_owned);
            if v.is_none() {
                problems.push(format!("{var} ({flag}) is not set"));
            }
            v
        };
        let host = required(&self.host, env::HOST, "--host");
        let volume = required(&self.volume, env::VOLUME, "--volume");
        let result = self.result.clone().filter(|p| !p.as_os_str().is_empty());
        if result.is_none() {
            problems.push(format!("{} (--result) is not set", env::RESULT));
        }
        let client = self
            .delivery
            .client()
            .map_err(|e| problems.push(format!("{e:#}")))
            .ok();
        match (mode, kind, host, volume, result, client) {
            (Some(mode), Some(kind), Some(host), Some(volume), Some(result), Some(client))
                if problems.is_empty() =>
            {
                Ok((
                    NotifyConfig {
                        kind,
                        host,
                        volume,
                        success_url: non_empty(&self.success_url).map(str::to_owned),
                        failure_url: non_empty(&self.failure_url).map(str::to_owned),
                        files: StepFiles::for_result(result),
                        mode,
                        retried_in_place,
                    },
                    client,
                ))
            }
            _ => bail!("{}", problems.join("; ")),
        }
    }
}

/// Send one test notification through exactly the path `notify` uses.
#[derive(Debug, Args)]
#[command(long_about = "\
Send one test notification, through exactly the code `notify` uses: the same URL policy (checked \
on the URL and on every resolved address), resolver, TLS roots, timeout and client. For people \
checking a webhook URL, e.g. with kubectl exec in the notifier container, where the NOTIFY_* \
environment is already set.

The URL is --url, or else NOTIFY_SUCCESS_URL / NOTIFY_FAILURE_URL for the chosen --status.

Prints one line on stdout: what was delivered, or why not. The usual log line goes to stderr.

Exit status: 0 delivered (2xx), 1 not delivered, 2 invalid arguments or settings.")]
pub struct SendArgs {
    /// Which payload to send.
    #[arg(long, value_name = "success|failure")]
    pub status: Outcome,
    /// The URL to POST to (default: the NOTIFY_*_URL for --status).
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// VolumeBackup or S3Backup; chooses the payload's message.
    #[arg(long, env = env::KIND, value_name = "KIND", default_value = "VolumeBackup")]
    pub kind: BackupKind,
    /// The payload's host field.
    #[arg(
        long,
        env = env::HOST,
        value_name = "HOST",
        default_value = "backup-notifier-test"
    )]
    pub host: String,
    /// The payload's volume field.
    #[arg(
        long,
        env = env::VOLUME,
        value_name = "VOLUME",
        default_value = "backup-notifier-test"
    )]
    pub volume: String,
    #[command(flatten)]
    pub delivery: DeliveryArgs,
}

/// The binary's `main`.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "exec") {
        // First of all, see exec::block_signals. A failure here is reported by exec::run, which
        // blocks them again.
        let _ = exec::block_signals();
    }
    init_logging();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => return usage_error(e, &args),
    };
    match cli.command {
        Command::Install(a) => match install::install(&a.dest) {
            Ok(path) => {
                info!("installed backup-notifier to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                error!("backup-notifier install: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Exec(a) => ExitCode::from(exec::run(&a.result, &a.command)),
        Command::Notify(a) => notify_main(&a),
        Command::Send(a) => send_main(&a),
    }
}

fn init_logging() {
    // rustls logs a TLS peer's warning alerts and unexpected messages at WARN itself; the
    // notifier's contract is one WARN line per failed delivery, naming the reason, which
    // deliver.rs writes.
    let filter = Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("rustls", LevelFilter::ERROR);
    // A log line that cannot be written (stderr closed, a terminal refusing a background write)
    // is dropped: tracing would report it with eprint!, which panics when stderr is what fails,
    // and the wrapper is PID 1 of the backup container.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .log_internal_errors(false)
        .finish()
        .with(filter)
        .init();
}

/// Help and version as clap prints them; any other parse error as one line. For `notify` a bad
/// argument is a configuration error like any other (ERROR line, exit 0), and for `exec` it is
/// the wrapper's own failure (125).
fn usage_error(e: clap::Error, args: &[OsString]) -> ExitCode {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
    }
    // clap's first paragraph is the error itself (a list of missing arguments continues on
    // the next lines); usage and tips follow after a blank line.
    let rendered = e.to_string();
    let first_paragraph: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let joined = first_paragraph.join(" ");
    let line = match joined.trim_start_matches("error: ") {
        "" => "invalid arguments",
        l => l,
    };
    match args.get(1).and_then(|a| a.to_str()) {
        Some("notify") => {
            error!("invalid configuration: {line}; nothing will be sent");
            config_error_exit(fallback_mode(args))
        }
        Some("exec") => {
            error!("backup-notifier exec: {line} (see backup-notifier exec --help)");
            if let Some(result) = result_arg(args) {
                exec::record_wrapper_failure(
                    &result,
                    now_rfc3339(),
                    format!("invalid arguments: {line}"),
                );
            }
            ExitCode::from(EXIT_WRAPPER_ERROR)
        }
        _ => {
            crate::errors::say(format_args!(
                "backup-notifier: {line} (see backup-notifier --help)"
            ));
            ExitCode::from(2)
        }
    }
}

/// `exec`'s `--result FILE` as far as it can be read from arguments that did not parse: before
/// `--`, the last one given.
fn result_arg(args: &[OsString]) -> Option<PathBuf> {
    let mut found = None;
    let mut it = args.iter().skip(2).take_while(|a| *a != "--");
    while let Some(a) = it.next() {
        if let Some(v) = a.as_bytes().strip_prefix(b"--result=") {
            found = Some(PathBuf::from(OsStr::from_bytes(v)));
        } else if a == "--result" {
            found = it.next().map(PathBuf::from);
        }
    }
    // A flag where FILE should be (`--result --bogus`) is no file name to write to.
    found.filter(|p| !p.as_os_str().is_empty() && !p.as_os_str().as_bytes().starts_with(b"-"))
}

/// The mode when the arguments did not parse: `--mode` or NOTIFY_MODE as far as they can be
/// read, sidecar when neither is given. `None` when the mode itself is unusable.
fn fallback_mode(args: &[OsString]) -> Option<Mode> {
    let mut from_args = None;
    let mut it = args.iter().skip(2).map(|a| a.to_string_lossy());
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--mode=") {
            from_args = Some(v.to_owned());
        } else if a == "--mode" {
            from_args = it.next().map(|v| v.into_owned());
        }
    }
    from_args
        .or_else(|| std::env::var(env::MODE).ok())
        .unwrap_or_else(|| "sidecar".to_owned())
        .parse()
        .ok()
}

/// After an invalid configuration: a sidecar idles until SIGTERM (the kubelet restarts a sidecar
/// that exits, which would only repeat the error); everything else exits 0 at once, as does a
/// notifier run by hand (stderr a terminal, which the injected sidecar never has).
fn config_error_exit(mode: Option<Mode>) -> ExitCode {
    if mode == Some(Mode::Sidecar) && !std::io::stderr().is_terminal() {
        let idle = runtime().and_then(|rt| {
            rt.block_on(async {
                let mut signals = TermSignals::install().context("installing signal handlers")?;
                signals.recv().await;
                Ok::<_, anyhow::Error>(())
            })
        });
        if let Err(e) = idle {
            error!("{e:#}");
        }
    }
    ExitCode::SUCCESS
}

fn notify_main(args: &NotifyArgs) -> ExitCode {
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            error!("{e:#}; nothing will be sent");
            return ExitCode::SUCCESS;
        }
    };
    let mode = args.mode.parse::<Mode>().ok();
    let configured = rt.block_on(async {
        // First, so that a SIGTERM from here on is handled, never fatal.
        let mut signals = TermSignals::install().context("installing signal handlers")?;
        let (cfg, client) = args.config()?;
        info!(
            mode = %cfg.mode,
            result = %cfg.files.result.display(),
            timeout = %show(client.timeout()),
            extra_ca = %client.trust().extra_ca().map_or("none".into(), |p| p.display().to_string()),
            "waiting for the backup to end"
        );
        notify::run(&cfg, &client, &mut signals).await;
        Ok::<_, anyhow::Error>(())
    });
    // A DNS lookup that outlived its timeout is still running on a blocking thread; waiting for
    // it would break the timeout promise.
    rt.shutdown_background();
    match configured {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("invalid configuration: {e:#}; nothing will be sent");
            config_error_exit(mode)
        }
    }
}

fn send_main(args: &SendArgs) -> ExitCode {
    let var = match args.status {
        Outcome::Success => env::SUCCESS_URL,
        Outcome::Failure => env::FAILURE_URL,
    };
    let url = match args.url.clone().or_else(|| std::env::var(var).ok()) {
        Some(u) if !u.is_empty() => u,
        _ => {
            crate::errors::say(format_args!(
                "backup-notifier send: no URL: pass --url or set {var}"
            ));
            return ExitCode::from(2);
        }
    };
    let client = match args.delivery.client() {
        Ok(c) => c,
        Err(e) => {
            crate::errors::say(format_args!("backup-notifier send: {e:#}"));
            return ExitCode::from(2);
        }
    };
    // Named now for the human checking a setup, but not fatal: a real notification goes on with
    // the public roots (a namespace without the optional CA ConfigMap), and so does this one.
    if let Err(e) = client.trust().check() {
        crate::errors::say(format_args!(
            "backup-notifier send: warning: {e:#}; sending with the bundled public roots only, as a real notification would"
        ));
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            crate::errors::say(format_args!("backup-notifier send: {e:#}"));
            return ExitCode::from(2);
        }
    };
    let payload = Payload::new(args.kind, args.status, &args.host, &args.volume);
    let delivered = rt.block_on(deliver_logged(&client, &url, &payload));
    rt.shutdown_background();
    match delivered {
        // The outcome line is for a human; a closed stdout (`| head -0`) must not turn a
        // delivery into a panic, and the exit code still says what happened.
        Ok(d) => {
            let _ = writeln!(
                std::io::stdout(),
                "delivered: {} payload to {} ({}): HTTP {} in {} ms",
                args.status.as_str(),
                d.target,
                d.peer,
                d.status.as_u16(),
                d.elapsed.as_millis()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = writeln!(
                std::io::stdout(),
                "not delivered: {} payload to {}: {}: {}",
                args.status.as_str(),
                e.target,
                e.reason,
                e.detail
            );
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn non_empty(v: &Option<String>) -> Option<&str> {
    v.as_deref().filter(|s| !crate::contract::is_blank(s))
}

/// `10s`, `2.5s`, `500ms`, `1m`, or a bare number of seconds; more than 0, at most 5m.
pub fn parse_timeout(raw: &str) -> Result<Duration, String> {
    let d = crate::duration::parse_or_seconds(raw.trim())?;
    if d.is_zero() || d > MAX_TIMEOUT {
        return Err(format!(
            "{raw:?} is out of range: more than 0 and at most {} (default {})",
            show(MAX_TIMEOUT),
            show(DEFAULT_TIMEOUT)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_timeout("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_timeout("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_timeout("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_timeout("1m"), Ok(Duration::from_secs(60)));
        for bad in [
            "",
            "0",
            "0s",
            "abc",
            "10h",
            "-1s",
            "6m",
            "1e9",
            "1m-30s",
            "9999999999999h",
        ] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn fallback_mode_reads_the_flag_or_defaults_to_sidecar() {
        let args = |v: &[&str]| v.iter().map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            fallback_mode(&args(&["b", "notify", "--mode", "container", "--bogus"])),
            Some(Mode::Container)
        );
        assert_eq!(fallback_mode(&args(&["b", "notify", "--mode=weird"])), None);
    }
}
