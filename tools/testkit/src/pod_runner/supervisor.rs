//! Runs a prepared pod: the kubelet-like ordering of init containers, sidecars and regular
//! containers, their logs, restarts of sidecars and the termination sequence.
//!
//! One supervisor thread owns the lifecycle. Each running process has a waiter thread (which
//! reaps it and reports on a channel) and two log threads. The shared state (behind a mutex) is
//! what the [`PodHandle`] reads and signals through; processes are signalled through pidfds, so
//! a signal can never reach a recycled pid.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::jiff::Timestamp;

use super::plan::{PreparedContainer, PreparedPod};
use super::sandbox;
use super::{ContainerKind, ContainerReport, Echo, PodPhase, PodReport, RunnerConfig};

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// The least time the kubelet gives a container between SIGTERM and SIGKILL
/// (`minimumGracePeriodInSeconds`), whatever is left of the pod's grace period.
const MINIMUM_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for processes to disappear after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a waiter waits for the log pipes to drain after the process is gone (a process that
/// escaped the container's process group could hold them open forever).
const LOG_DRAIN: Duration = Duration::from_secs(2);

fn now() -> String {
    Timestamp::now().to_string()
}

struct Running {
    pidfd: OwnedFd,
}

struct Slot {
    report: ContainerReport,
    running: Option<Running>,
}

struct State {
    slots: Vec<Slot>,
    abort: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

enum Event {
    Exited {
        index: usize,
        status: std::io::Result<ExitStatus>,
        at: String,
    },
    /// Wakes the supervisor after the handle asked to abort.
    Wake,
}

/// A pod running in the background.
///
/// Dropping the handle without [`wait`](Self::wait) kills every container (SIGKILL) and waits
/// for the pod to be torn down, so a failing test does not leave processes behind.
pub struct PodHandle {
    shared: Arc<Shared>,
    events: Sender<Event>,
    thread: Option<JoinHandle<PodReport>>,
    output_dir: PathBuf,
}

impl PodHandle {
    /// Sends `signal` to the container's main process, as `kill` into a container would.
    pub fn signal(&self, container: &str, signal: i32) -> Result<()> {
        let state = self.shared.lock();
        let slot = state
            .slots
            .iter()
            .find(|s| s.report.name == container)
            .with_context(|| format!("the pod has no container {container:?}"))?;
        let running = slot
            .running
            .as_ref()
            .with_context(|| format!("container {container:?} is not running"))?;
        send_signal(running, signal)
            .with_context(|| format!("cannot signal container {container:?}"))
    }

    /// Waits until the container's process has started (for a restarted sidecar: is running
    /// again), or fails after `timeout` or when the pod is over.
    pub fn wait_running(&self, container: &str, timeout: Duration) -> Result<()> {
        self.wait_for(container, timeout, "running", |slot| slot.running.is_some())
    }

    /// Waits until the container has run and exited.
    pub fn wait_exited(&self, container: &str, timeout: Duration) -> Result<()> {
        self.wait_for(container, timeout, "exited", |slot| {
            slot.running.is_none() && slot.report.finished_at.is_some()
        })
    }

    fn wait_for(
        &self,
        container: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&Slot) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut state = self.shared.lock();
        loop {
            let slot = state
                .slots
                .iter()
                .find(|s| s.report.name == container)
                .with_context(|| format!("the pod has no container {container:?}"))?;
            if done(slot) {
                return Ok(());
            }
            let finished = self.thread.as_ref().is_none_or(|t| t.is_finished());
            let left = deadline.saturating_duration_since(Instant::now());
            if finished || left.is_zero() {
                bail!("container {container:?} was not {what} within {timeout:?}");
            }
            // Short slices: the supervisor finishing does not notify the condition variable.
            let slice = left.min(Duration::from_millis(100));
            state = self
                .shared
                .changed
                .wait_timeout(state, slice)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    /// A snapshot of the containers' state so far.
    pub fn containers(&self) -> Vec<ContainerReport> {
        self.shared
            .lock()
            .slots
            .iter()
            .map(|s| s.report.clone())
            .collect()
    }

    pub fn output_dir(&self) -> &std::path::Path {
        &self.output_dir
    }

    pub fn aborter(&self) -> PodAborter {
        PodAborter {
            shared: Arc::clone(&self.shared),
            events: self.events.clone(),
        }
    }

    /// Waits for the pod to finish.
    pub fn wait(mut self) -> Result<PodReport> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| anyhow!("the pod was already waited for"))?;
        thread
            .join()
            .map_err(|_| anyhow!("the pod supervisor thread panicked"))
    }

    /// Kills every container at once (SIGKILL) and waits for the pod to finish.
    pub fn abort(self) -> Result<PodReport> {
        self.shared.lock().abort = true;
        let _ = self.events.send(Event::Wake);
        self.wait()
    }
}

/// Aborts a running pod from another thread (e.g. a signal handler thread), while the
/// [`PodHandle`] is busy in [`wait`](PodHandle::wait).
#[derive(Clone)]
pub struct PodAborter {
    shared: Arc<Shared>,
    events: Sender<Event>,
}

impl PodAborter {
    /// Kills every container at once (SIGKILL); the pod ends Failed with reason "aborted".
    pub fn abort(&self) {
        self.shared.lock().abort = true;
        let _ = self.events.send(Event::Wake);
    }
}

impl Drop for PodHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shared.lock().abort = true;
            let _ = self.events.send(Event::Wake);
            let _ = thread.join();
        }
    }
}

fn send_signal(running: &Running, signal: i32) -> std::io::Result<()> {
    // SAFETY: the pidfd is open for as long as `running` lives; no siginfo is passed.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            running.pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if ret < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn pidfd_open(pid: u32) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the descriptor was just created and belongs to nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub(crate) fn start(config: &RunnerConfig, pod: PreparedPod) -> Result<PodHandle> {
    let slots = pod
        .containers
        .iter()
        .map(|c| Slot {
            report: ContainerReport {
                name: c.name.clone(),
                kind: c.kind,
                image: c.image.clone(),
                exit_code: None,
                signal: None,
                started_at: None,
                finished_at: None,
                restarts: 0,
                log_path: c.log_path.clone(),
                error: None,
            },
            running: None,
        })
        .collect();
    for container in &pod.containers {
        File::create(&container.log_path)
            .with_context(|| format!("cannot create log file {}", container.log_path.display()))?;
    }
    if config.echo != Echo::None {
        for warning in &pod.warnings {
            eprintln!("local-pod-runner: warning: {warning}");
        }
    }
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            slots,
            abort: false,
        }),
        changed: Condvar::new(),
    });
    let (events_tx, events_rx) = mpsc::channel();
    let output_dir = config.output_dir.clone();
    let supervisor = Supervisor {
        shared: Arc::clone(&shared),
        events_tx: events_tx.clone(),
        events_rx,
        restart_at: vec![None; pod.containers.len()],
        deadline: pod.active_deadline.map(|d| Instant::now() + d),
        terminating: false,
        echo: config.echo,
        backoff: config.sidecar_restart_backoff,
        pod_name: config.pod_name.clone(),
        namespace: config.namespace.clone(),
        output_dir: output_dir.clone(),
        pod,
    };
    let thread = std::thread::Builder::new()
        .name("pod-supervisor".into())
        .spawn(move || supervisor.run())
        .context("cannot start the pod supervisor thread")?;
    Ok(PodHandle {
        shared,
        events: events_tx,
        thread: Some(thread),
        output_dir,
    })
}

/// Why a wait ended early.
enum Interrupt {
    Deadline,
    Aborted,
    Timeout,
}

struct Supervisor {
    shared: Arc<Shared>,
    events_tx: Sender<Event>,
    events_rx: Receiver<Event>,
    pod: PreparedPod,
    restart_at: Vec<Option<Instant>>,
    deadline: Option<Instant>,
    terminating: bool,
    echo: Echo,
    backoff: Duration,
    pod_name: String,
    namespace: String,
    output_dir: PathBuf,
}

impl Supervisor {
    fn run(mut self) -> PodReport {
        let started_at = now();
        let mut failure: Option<String> = None;
        let mut interrupted: Option<Interrupt> = None;
        let kinds: Vec<ContainerKind> = self.pod.containers.iter().map(|c| c.kind).collect();

        for (index, kind) in kinds.iter().enumerate() {
            match kind {
                ContainerKind::Main => continue,
                ContainerKind::Sidecar => {
                    if let Err(e) = self.launch(index) {
                        failure = Some(format!(
                            "sidecar {:?} could not start: {e:#}",
                            self.name(index)
                        ));
                        break;
                    }
                }
                ContainerKind::Init => {
                    if let Err(e) = self.launch(index) {
                        failure = Some(format!(
                            "init container {:?} could not start: {e:#}",
                            self.name(index)
                        ));
                        break;
                    }
                    if let Err(why) = self.wait_until(None, |s| s.slot_running(index)) {
                        interrupted = Some(why);
                        break;
                    }
                    let code = self.shared.lock().slots[index].report.exit_code;
                    if code != Some(0) {
                        failure = Some(format!(
                            "init container {:?} failed with exit code {}",
                            self.name(index),
                            code.map_or("unknown".to_owned(), |c| c.to_string())
                        ));
                        break;
                    }
                }
            }
        }

        let mains: Vec<usize> = (0..kinds.len())
            .filter(|i| kinds[*i] == ContainerKind::Main)
            .collect();
        if failure.is_none() && interrupted.is_none() {
            for &index in &mains {
                // A container that cannot start is recorded as such; the others still run.
                let _ = self.launch(index);
            }
            if let Err(why) = self.wait_until(None, |s| mains.iter().any(|i| s.slot_running(*i))) {
                interrupted = Some(why);
            }
        }

        match interrupted {
            Some(Interrupt::Aborted) => {
                failure = Some("aborted".to_owned());
                self.kill_all();
            }
            Some(Interrupt::Deadline) => {
                failure = Some("DeadlineExceeded: the pod ran past its active deadline".to_owned());
                self.terminate();
            }
            Some(Interrupt::Timeout) | None => self.terminate(),
        }

        let state = self.shared.lock();
        let containers: Vec<ContainerReport> =
            state.slots.iter().map(|s| s.report.clone()).collect();
        drop(state);
        if failure.is_none() {
            failure = containers
                .iter()
                .filter(|c| c.kind == ContainerKind::Main && c.exit_code != Some(0))
                .map(|c| match (&c.error, c.exit_code) {
                    (Some(error), _) => format!("container {:?} could not start: {error}", c.name),
                    (None, Some(code)) => format!("container {:?} exited with code {code}", c.name),
                    (None, None) => format!("container {:?} did not run", c.name),
                })
                .next();
        }
        let mut warnings = self.pod.warnings.clone();
        let work_dir = self.pod.work_dir.path().to_owned();
        if let Err(e) = self.pod.work_dir.close() {
            warnings.push(format!(
                "cannot remove the pod directory {}: {e}",
                work_dir.display()
            ));
        }
        PodReport {
            pod_name: self.pod_name.clone(),
            namespace: self.namespace.clone(),
            phase: if failure.is_none() {
                PodPhase::Succeeded
            } else {
                PodPhase::Failed
            },
            reason: failure,
            started_at,
            finished_at: now(),
            output_dir: self.output_dir.clone(),
            containers,
            warnings,
        }
    }

    fn name(&self, index: usize) -> &str {
        &self.pod.containers[index].name
    }

    fn slot_running(&self, index: usize) -> bool {
        self.shared.lock().slots[index].running.is_some()
    }

    fn any_running(&self) -> bool {
        self.shared.lock().slots.iter().any(|s| s.running.is_some())
    }

    /// Processes events and sidecar restarts while `busy` holds. Returns early on abort, on the
    /// pod's deadline (unless terminating) or at `until`.
    fn wait_until(
        &mut self,
        until: Option<Instant>,
        busy: impl Fn(&Self) -> bool,
    ) -> Result<(), Interrupt> {
        loop {
            if self.shared.lock().abort {
                return Err(Interrupt::Aborted);
            }
            if !busy(self) {
                return Ok(());
            }
            let now = Instant::now();
            if !self.terminating && self.deadline.is_some_and(|d| d <= now) {
                return Err(Interrupt::Deadline);
            }
            if until.is_some_and(|u| u <= now) {
                return Err(Interrupt::Timeout);
            }
            for index in 0..self.restart_at.len() {
                if self.restart_at[index].is_some_and(|at| at <= now) {
                    self.restart_at[index] = None;
                    self.shared.lock().slots[index].report.restarts += 1;
                    if self.launch(index).is_err() {
                        self.schedule_restart(index);
                    }
                }
            }
            let mut wake = self.restart_at.iter().flatten().copied().min();
            for limit in [
                until,
                if self.terminating {
                    None
                } else {
                    self.deadline
                },
            ]
            .into_iter()
            .flatten()
            {
                wake = Some(wake.map_or(limit, |w| w.min(limit)));
            }
            let timeout = wake.map_or(Duration::from_secs(3600), |w| {
                w.saturating_duration_since(Instant::now())
            });
            match self.events_rx.recv_timeout(timeout) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                // Cannot happen while we hold a sender; treat like an abort rather than spin.
                Err(RecvTimeoutError::Disconnected) => return Err(Interrupt::Aborted),
            }
        }
    }

    fn handle(&mut self, event: Event) {
        let Event::Exited { index, status, at } = event else {
            return;
        };
        {
            let mut state = self.shared.lock();
            let slot = &mut state.slots[index];
            slot.running = None;
            slot.report.finished_at = Some(at);
            match status {
                Ok(status) => match (status.code(), status.signal()) {
                    (Some(code), _) => {
                        slot.report.exit_code = Some(code);
                        slot.report.signal = None;
                    }
                    (None, Some(signal)) => {
                        slot.report.exit_code = Some(128 + signal);
                        slot.report.signal = Some(signal);
                    }
                    (None, None) => slot.report.exit_code = None,
                },
                Err(e) => slot.report.error = Some(format!("cannot wait for the process: {e}")),
            }
        }
        self.shared.changed.notify_all();
        if self.pod.containers[index].kind == ContainerKind::Sidecar && !self.terminating {
            self.schedule_restart(index);
        }
    }

    fn schedule_restart(&mut self, index: usize) {
        let restarts = self.shared.lock().slots[index].report.restarts;
        let delay = self
            .backoff
            .checked_mul(1u32.checked_shl(restarts.min(16)).unwrap_or(u32::MAX))
            .unwrap_or(MAX_BACKOFF)
            .min(MAX_BACKOFF);
        self.restart_at[index] = Some(Instant::now() + delay);
    }

    /// Starts a container's process with its log and waiter threads.
    fn launch(&mut self, index: usize) -> Result<()> {
        let container = &self.pod.containers[index];
        // Everything that can fail comes before the slot is marked running: a running slot
        // without a waiter thread would never end.
        let spawned = open_log(container).and_then(|log| {
            let child = sandbox::spawn(
                &container.argv,
                &container.env,
                Arc::clone(&container.steps),
            )?;
            match pidfd_open(child.id()) {
                Ok(pidfd) => Ok((child, pidfd, log)),
                Err(e) => {
                    let mut child = child;
                    let _ = child.kill();
                    let _ = child.wait();
                    Err(anyhow!("pidfd_open failed (Linux >= 5.3 is needed): {e}"))
                }
            }
        });
        let (mut child, pidfd, log) = match spawned {
            Ok(ok) => ok,
            Err(e) => {
                let message = format!("{e:#}");
                {
                    let mut state = self.shared.lock();
                    let report = &mut state.slots[index].report;
                    report.error = Some(message.clone());
                    report.finished_at = Some(now());
                }
                self.shared.changed.notify_all();
                self.log_line(
                    container,
                    &format!("local-pod-runner: cannot start: {message}"),
                );
                return Err(e);
            }
        };
        {
            let mut state = self.shared.lock();
            let slot = &mut state.slots[index];
            slot.running = Some(Running { pidfd });
            slot.report.error = None;
            if slot.report.started_at.is_none() {
                slot.report.started_at = Some(now());
            }
        }
        self.shared.changed.notify_all();

        let (done_tx, done_rx) = mpsc::channel::<()>();
        let name = container.name.clone();
        let mut streams = 0;
        if let Some(out) = child.stdout.take() {
            streams += 1;
            spawn_log_thread(
                out,
                name.clone(),
                log.clone(),
                self.echo,
                false,
                done_tx.clone(),
            );
        }
        if let Some(err) = child.stderr.take() {
            streams += 1;
            spawn_log_thread(err, name.clone(), log, self.echo, true, done_tx);
        }
        let events = self.events_tx.clone();
        let pid = child.id() as libc::pid_t;
        if let Err(e) = std::thread::Builder::new()
            .name(format!("wait-{name}"))
            .spawn(move || waiter(child, index, streams, done_rx, events))
        {
            // The Child went with the closure: end the process here and report it as the
            // waiter would have, so the slot does not stay running for ever.
            // SAFETY: kill and waitpid have no memory-safety preconditions; `status` outlives
            // the call.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::kill(pid, libc::SIGKILL);
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
            }
            let _ = self.events_tx.send(Event::Exited {
                index,
                status: Err(std::io::Error::other(format!(
                    "cannot start a waiter thread: {e}"
                ))),
                at: now(),
            });
        }
        Ok(())
    }

    fn log_line(&self, container: &PreparedContainer, line: &str) {
        if let Ok(log) = open_log(container)
            && let Ok(mut file) = log.lock()
        {
            let _ = writeln!(file, "{line}");
        }
        if self.echo != Echo::None {
            eprintln!("[{}] {line}", container.name);
        }
    }

    fn signal_index(&self, index: usize, signal: i32) {
        let state = self.shared.lock();
        if let Some(running) = &state.slots[index].running {
            let _ = send_signal(running, signal);
        }
    }

    /// The end of the pod, as the kubelet's ordered termination: SIGTERM to regular and init
    /// containers still running (only after a deadline), SIGKILL to those left at the end of the
    /// grace period; then SIGTERM to the sidecars one by one in reverse order, each with what is
    /// left of the grace period but never less than the kubelet's minimum of 2 s (so a sidecar
    /// always gets its SIGTERM, even after a main container used up the grace period), SIGKILL
    /// to a sidecar still running after that.
    fn terminate(&mut self) {
        self.terminating = true;
        self.restart_at.iter_mut().for_each(|r| *r = None);
        let grace_end = Instant::now() + self.pod.grace;
        let kinds: Vec<ContainerKind> = self.pod.containers.iter().map(|c| c.kind).collect();
        let others: Vec<usize> = (0..kinds.len())
            .filter(|i| kinds[*i] != ContainerKind::Sidecar)
            .collect();
        if others.iter().any(|i| self.slot_running(*i)) {
            for &index in &others {
                self.signal_index(index, libc::SIGTERM);
            }
            let busy = |s: &Self| others.iter().any(|i| s.slot_running(*i));
            match self.wait_until(Some(grace_end), busy) {
                Ok(()) => {}
                Err(Interrupt::Timeout) => {
                    for &index in &others {
                        self.signal_index(index, libc::SIGKILL);
                    }
                    if self
                        .wait_until(Some(Instant::now() + KILL_WAIT), busy)
                        .is_err()
                    {
                        return self.kill_all();
                    }
                }
                Err(_) => return self.kill_all(),
            }
        }
        for index in (0..kinds.len())
            .rev()
            .filter(|i| kinds[*i] == ContainerKind::Sidecar)
        {
            if !self.slot_running(index) {
                continue;
            }
            self.signal_index(index, libc::SIGTERM);
            let end = grace_end.max(Instant::now() + MINIMUM_GRACE);
            match self.wait_until(Some(end), |s| s.slot_running(index)) {
                Ok(()) => {}
                Err(Interrupt::Timeout) => {
                    // Its turn ends when it is gone; the next sidecar's starts then.
                    self.signal_index(index, libc::SIGKILL);
                    let gone = Instant::now() + KILL_WAIT;
                    if self
                        .wait_until(Some(gone), |s| s.slot_running(index))
                        .is_err()
                    {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        self.kill_all();
    }

    fn kill_all(&mut self) {
        self.terminating = true;
        self.restart_at.iter_mut().for_each(|r| *r = None);
        for index in 0..self.pod.containers.len() {
            self.signal_index(index, libc::SIGKILL);
        }
        // Aborting must not stop us from collecting the killed processes.
        self.shared.lock().abort = false;
        let _ = self.wait_until(Some(Instant::now() + KILL_WAIT), |s| s.any_running());
    }
}

fn open_log(container: &PreparedContainer) -> Result<Arc<Mutex<File>>> {
    let file = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&container.log_path)
        .with_context(|| format!("cannot open log file {}", container.log_path.display()))?;
    Ok(Arc::new(Mutex::new(file)))
}

fn spawn_log_thread(
    stream: impl Read + Send + 'static,
    name: String,
    log: Arc<Mutex<File>>,
    echo: Echo,
    is_stderr: bool,
    done: Sender<()>,
) {
    let thread_name = format!("log-{name}");
    let body = move || {
        let mut reader = BufReader::new(stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            if let Ok(mut file) = log.lock() {
                let _ = file.write_all(&line);
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches('\n');
            match (echo, is_stderr) {
                (Echo::None, _) => {}
                (Echo::Inherit, false) => {
                    let _ = writeln!(std::io::stdout().lock(), "[{name}] {text}");
                }
                (Echo::Inherit, true) | (Echo::Stderr, _) => {
                    let _ = writeln!(std::io::stderr().lock(), "[{name}] {text}");
                }
            }
        }
        let _ = done.send(());
    };
    // If the thread cannot start, the pipe is dropped and the container sees EPIPE; the waiter
    // stops waiting for the missing thread after LOG_DRAIN.
    let _ = std::thread::Builder::new().name(thread_name).spawn(body);
}

fn waiter(
    mut child: Child,
    index: usize,
    streams: usize,
    logs_done: Receiver<()>,
    events: Sender<Event>,
) {
    let pid = child.id() as libc::pid_t;
    // The container's processes form one process group (setsid in the sandbox); when its main
    // process is gone, the rest goes too, as it would with a PID namespace. Waited for without
    // reaping first: until it is reaped the group's id cannot be reused, so the kill cannot
    // reach another process group.
    // SAFETY: waitid writes only to `info`, which outlives the call; kill has no memory-safety
    // preconditions.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) == -1
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        libc::kill(-pid, libc::SIGKILL);
    }
    let status = child.wait();
    let drain_end = Instant::now() + LOG_DRAIN;
    for _ in 0..streams {
        let left = drain_end.saturating_duration_since(Instant::now());
        if logs_done.recv_timeout(left).is_err() {
            break;
        }
    }
    let _ = events.send(Event::Exited {
        index,
        status,
        at: now(),
    });
}
