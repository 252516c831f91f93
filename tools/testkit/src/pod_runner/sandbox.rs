//! The container sandbox: a fresh root in a private mount namespace, set up between fork and
//! exec.
//!
//! Everything that needs memory (paths, flags, the order of mounts) is computed in the parent as
//! a list of [`Step`]s; the child only walks that list making system calls, because after `fork`
//! in a multi-threaded process allocating is not safe. When a step fails, the child writes the
//! step's index and errno to a pipe so the parent can name the step in its error.
//!
//! Layout of a container's root (a tmpfs that exists only in the container's mount namespace):
//! - `/usr`, `/etc` and the other top-level system directories that are real directories on the
//!   host: overlayfs with the host directory as the lower layer and a private tmpfs as the upper
//!   one, so the container can write there (unless `readOnlyRootFilesystem`) without ever
//!   touching the host, and image files can be placed anywhere below them;
//! - host top-level symlinks such as `/bin -> usr/bin` recreated as the same symlinks;
//! - host mounts below those directories (e.g. a bind-mounted `/etc/resolv.conf`) bound
//!   read-only on top, because overlayfs only sees the directory underneath;
//! - `/dev` bound from the host, a new procfs on `/proc`, a private `/tmp`, `/root`;
//! - after `pivot_root`, the image files and the pod's volumes bound at their paths, resolved
//!   inside the new root so that symlinks in the container cannot lead to host paths.

use std::ffi::{CString, OsStr};
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};

/// The top-level host directories a container sees (if they exist on the host).
const HOST_TOPS: &[&str] = &[
    "usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "etc",
];
const OLD_ROOT: &str = "/.podrunner-oldroot";
const LAYERS: &str = ".podrunner-layers";

const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// `struct mount_attr` of mount_setattr(2), which libc does not define.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// One system call (or a tiny group of them) run in the child before exec.
#[derive(Debug)]
pub(crate) enum Step {
    Umask(libc::mode_t),
    UnshareMountNamespace,
    /// Stops mount events from propagating back to the host.
    MakeRootPrivate,
    MountTmpfs {
        target: CString,
        data: CString,
    },
    /// `mkdir`, tolerating an existing entry.
    Mkdir {
        path: CString,
        mode: libc::mode_t,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    /// Creates an empty file as a bind-mount target, tolerating an existing one.
    CreateFile {
        path: CString,
    },
    Bind {
        source: CString,
        target: CString,
        recursive: bool,
    },
    ReadOnly {
        target: CString,
        recursive: bool,
    },
    Overlay {
        target: CString,
        data: CString,
    },
    /// A new procfs, or a bind of the host's /proc where a new one is not allowed.
    MountProc {
        target: CString,
    },
    PivotRoot {
        new_root: CString,
        put_old: CString,
    },
    Chdir {
        path: CString,
    },
    DetachUnmount {
        path: CString,
    },
    Rmdir {
        path: CString,
    },
    /// A new session, so the container's processes form one process group.
    Setsid,
    NoNewPrivs,
    SetIds {
        uid: libc::uid_t,
        gid: libc::gid_t,
        groups: Vec<libc::gid_t>,
    },
    /// SIGKILL when the runner dies, so a killed runner leaves no container behind. After
    /// SetIds, because changing credentials clears the setting.
    DieWithParent {
        parent: libc::pid_t,
    },
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

fn check(ret: libc::c_int) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

fn check_long(ret: libc::c_long) -> Result<(), i32> {
    if ret < 0 { Err(errno()) } else { Ok(()) }
}

impl Step {
    /// Runs the step. Async-signal-safe: system calls only, no allocation.
    ///
    /// # Safety
    /// Must only be called in the forked child.
    unsafe fn run(&self) -> Result<(), i32> {
        let null = std::ptr::null::<libc::c_char>();
        // SAFETY: every pointer passed below comes from a CString (NUL-terminated) or is null
        // where the system call allows it; the child is single-threaded.
        unsafe {
            match self {
                Step::Umask(mode) => {
                    libc::umask(*mode);
                    Ok(())
                }
                Step::UnshareMountNamespace => check(libc::unshare(libc::CLONE_NEWNS)),
                Step::MakeRootPrivate => check(libc::mount(
                    null,
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                )),
                Step::MountTmpfs { target, data } => check(libc::mount(
                    c"tmpfs".as_ptr(),
                    target.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )),
                Step::Mkdir { path, mode } => match check(libc::mkdir(path.as_ptr(), *mode)) {
                    Err(libc::EEXIST) => Ok(()),
                    other => other,
                },
                Step::Symlink { target, link } => {
                    check(libc::symlink(target.as_ptr(), link.as_ptr()))
                }
                Step::CreateFile { path } => {
                    // O_RDONLY: an existing file in an overlay must not be copied up.
                    let fd = libc::open(
                        path.as_ptr(),
                        libc::O_RDONLY | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOCTTY,
                        0o644 as libc::c_uint,
                    );
                    if fd < 0 {
                        return Err(errno());
                    }
                    libc::close(fd);
                    Ok(())
                }
                Step::Bind {
                    source,
                    target,
                    recursive,
                } => {
                    let rec = if *recursive { libc::MS_REC } else { 0 };
                    check(libc::mount(
                        source.as_ptr(),
                        target.as_ptr(),
                        null,
                        libc::MS_BIND | rec,
                        std::ptr::null(),
                    ))
                }
                Step::ReadOnly { target, recursive } => {
                    // mount_setattr changes only the read-only bit; a remount would also have
                    // to restate nosuid/nodev/noexec of the source mount.
                    let attr = MountAttr {
                        attr_set: MOUNT_ATTR_RDONLY,
                        attr_clr: 0,
                        propagation: 0,
                        userns_fd: 0,
                    };
                    let flags = if *recursive { libc::AT_RECURSIVE } else { 0 };
                    check_long(libc::syscall(
                        libc::SYS_mount_setattr,
                        libc::AT_FDCWD,
                        target.as_ptr(),
                        flags as libc::c_uint,
                        &attr as *const MountAttr,
                        std::mem::size_of::<MountAttr>(),
                    ))
                }
                Step::Overlay { target, data } => check(libc::mount(
                    c"overlay".as_ptr(),
                    target.as_ptr(),
                    c"overlay".as_ptr(),
                    0,
                    data.as_ptr().cast(),
                )),
                Step::MountProc { target } => {
                    let fresh = check(libc::mount(
                        c"proc".as_ptr(),
                        target.as_ptr(),
                        c"proc".as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                        std::ptr::null(),
                    ));
                    match fresh {
                        Err(libc::EPERM) | Err(libc::EBUSY) => check(libc::mount(
                            c"/proc".as_ptr(),
                            target.as_ptr(),
                            null,
                            libc::MS_BIND | libc::MS_REC,
                            std::ptr::null(),
                        )),
                        other => other,
                    }
                }
                Step::PivotRoot { new_root, put_old } => check_long(libc::syscall(
                    libc::SYS_pivot_root,
                    new_root.as_ptr(),
                    put_old.as_ptr(),
                )),
                Step::Chdir { path } => check(libc::chdir(path.as_ptr())),
                Step::DetachUnmount { path } => {
                    check(libc::umount2(path.as_ptr(), libc::MNT_DETACH))
                }
                Step::Rmdir { path } => check(libc::rmdir(path.as_ptr())),
                Step::Setsid => check(libc::setsid()),
                Step::NoNewPrivs => check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)),
                Step::SetIds { uid, gid, groups } => {
                    // Raw system calls: glibc's wrappers coordinate all threads of the process,
                    // which is pointless in the forked child.
                    check_long(libc::syscall(
                        libc::SYS_setgroups,
                        groups.len(),
                        groups.as_ptr(),
                    ))?;
                    check_long(libc::syscall(libc::SYS_setresgid, *gid, *gid, *gid))?;
                    check_long(libc::syscall(libc::SYS_setresuid, *uid, *uid, *uid))
                }
                Step::DieWithParent { parent } => {
                    check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
                    // The runner may have died before the prctl.
                    if libc::getppid() != *parent {
                        return Err(libc::ESRCH);
                    }
                    Ok(())
                }
            }
        }
    }

    fn describe(&self) -> String {
        let s = |c: &CString| c.to_string_lossy().into_owned();
        match self {
            Step::Umask(mode) => format!("umask {mode:o}"),
            Step::UnshareMountNamespace => "unshare the mount namespace".into(),
            Step::MakeRootPrivate => "make mount propagation of / private".into(),
            Step::MountTmpfs { target, .. } => format!("mount a tmpfs on {}", s(target)),
            Step::Mkdir { path, .. } => format!("create directory {}", s(path)),
            Step::Symlink { target, link } => {
                format!("create symlink {} -> {}", s(link), s(target))
            }
            Step::CreateFile { path } => format!("create mount point file {}", s(path)),
            Step::Bind { source, target, .. } => {
                format!("bind-mount {} on {}", s(source), s(target))
            }
            Step::ReadOnly { target, .. } => format!(
                "make {} read-only (mount_setattr, Linux >= 5.12)",
                s(target)
            ),
            Step::Overlay { target, data } => {
                format!("mount overlayfs on {} ({})", s(target), s(data))
            }
            Step::MountProc { target } => format!("mount procfs on {}", s(target)),
            Step::PivotRoot { new_root, .. } => format!("pivot_root to {}", s(new_root)),
            Step::Chdir { path } => format!("change directory to {}", s(path)),
            Step::DetachUnmount { path } => format!("unmount {}", s(path)),
            Step::Rmdir { path } => format!("remove directory {}", s(path)),
            Step::Setsid => "start a new session".into(),
            Step::NoNewPrivs => "set no_new_privs".into(),
            Step::SetIds { uid, gid, groups } => {
                format!("switch to uid {uid}, gid {gid}, groups {groups:?}")
            }
            Step::DieWithParent { .. } => "set the parent-death signal".into(),
        }
    }
}

fn cstring(path: impl AsRef<OsStr>) -> Result<CString> {
    let path = path.as_ref();
    CString::new(path.as_bytes()).with_context(|| format!("path {:?} contains a NUL byte", path))
}

/// What the host offers as the base of every container root.
#[derive(Clone, Debug)]
pub(crate) struct HostLayout {
    dirs: Vec<String>,
    symlinks: Vec<(String, PathBuf)>,
    /// Host mount points below `dirs`, each with whether it is a directory.
    submounts: Vec<(PathBuf, bool)>,
}

impl HostLayout {
    pub(crate) fn detect() -> Result<Self> {
        let mut dirs = Vec::new();
        let mut symlinks = Vec::new();
        for top in HOST_TOPS {
            let path = Path::new("/").join(top);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = std::fs::read_link(&path)
                        .with_context(|| format!("cannot read symlink {}", path.display()))?;
                    symlinks.push(((*top).to_owned(), target));
                }
                Ok(meta) if meta.is_dir() => dirs.push((*top).to_owned()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).with_context(|| format!("cannot stat {}", path.display())),
            }
        }
        if !dirs.iter().any(|d| d == "usr") {
            bail!("the host has no /usr directory to build container roots from");
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .context("cannot read /proc/self/mountinfo")?;
        let mut submounts: Vec<(PathBuf, bool)> = Vec::new();
        for line in mountinfo.lines() {
            let Some(field) = line.split(' ').nth(4) else {
                continue;
            };
            let point = PathBuf::from(unescape_mountinfo(field));
            let under_top = dirs.iter().any(|d| {
                let top = Path::new("/").join(d);
                point.starts_with(&top) && point != top
            });
            if under_top && !submounts.iter().any(|(p, _)| *p == point) {
                let is_dir = std::fs::metadata(&point)
                    .map(|m| m.is_dir())
                    .unwrap_or(false);
                submounts.push((point, is_dir));
            }
        }
        Ok(Self {
            dirs,
            symlinks,
            submounts,
        })
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 4 <= bytes.len() {
            let digits = &bytes[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let value = digits
                    .iter()
                    .fold(0u32, |acc, d| acc * 8 + u32::from(d - b'0'));
                out.push(value as u8);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A bind mount into the container.
#[derive(Clone, Debug)]
pub(crate) struct BindSpec {
    /// Absolute path inside the container.
    pub container_path: PathBuf,
    /// Canonical host path.
    pub host_path: PathBuf,
    pub read_only: bool,
}

/// Everything the sandbox of one container needs.
#[derive(Clone, Debug)]
pub(crate) struct SandboxSpec {
    /// An empty host directory that becomes the root's mount point (only inside the container's
    /// mount namespace).
    pub root_dir: PathBuf,
    /// Image files first, then volumes, in mount order.
    pub binds: Vec<BindSpec>,
    pub working_dir: PathBuf,
    pub read_only_root: bool,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub no_new_privs: bool,
}

/// The steps that `mkdir -p` the parents of `path` (and `path` itself when `include_self`).
fn mkdir_all(steps: &mut Vec<Step>, path: &Path, include_self: bool) -> Result<()> {
    let mut current = PathBuf::from("/");
    let components: Vec<Component<'_>> = path.components().collect();
    let count = components.len();
    for (i, component) in components.into_iter().enumerate() {
        if !include_self && i + 1 == count {
            break;
        }
        match component {
            Component::RootDir | Component::CurDir => continue,
            Component::Prefix(_) => bail!("{} is not a Unix path", path.display()),
            Component::ParentDir | Component::Normal(_) => current.push(component),
        }
        steps.push(Step::Mkdir {
            path: cstring(&current)?,
            mode: 0o755,
        });
    }
    Ok(())
}

pub(crate) fn build_steps(spec: &SandboxSpec, layout: &HostLayout) -> Result<Vec<Step>> {
    let root = &spec.root_dir;
    let root_str = root.to_string_lossy();
    // The root path is spliced into overlayfs options, where these characters are separators.
    if root_str.contains([',', ':', '\\']) || !root.is_absolute() {
        bail!(
            "the pod work directory {} must be an absolute path without ',', ':' or '\\'",
            root.display()
        );
    }
    let in_root = |p: &str| cstring(root.join(p.trim_start_matches('/')));
    let layers = root.join(LAYERS);
    let mut steps = vec![
        Step::Umask(0),
        Step::UnshareMountNamespace,
        Step::MakeRootPrivate,
        Step::MountTmpfs {
            target: cstring(root)?,
            data: cstring("mode=0755")?,
        },
        Step::Mkdir {
            path: cstring(&layers)?,
            mode: 0o700,
        },
        Step::MountTmpfs {
            target: cstring(&layers)?,
            data: cstring("mode=0700")?,
        },
    ];
    for dir in &layout.dirs {
        let upper = layers.join(format!("upper-{dir}"));
        let work = layers.join(format!("work-{dir}"));
        steps.push(Step::Mkdir {
            path: in_root(dir)?,
            mode: 0o755,
        });
        steps.push(Step::Mkdir {
            path: cstring(&upper)?,
            mode: 0o755,
        });
        steps.push(Step::Mkdir {
            path: cstring(&work)?,
            mode: 0o700,
        });
        steps.push(Step::Overlay {
            target: in_root(dir)?,
            data: cstring(format!(
                "lowerdir=/{dir},upperdir={},workdir={}",
                upper.display(),
                work.display()
            ))?,
        });
    }
    for (point, is_dir) in &layout.submounts {
        let target = root.join(point.strip_prefix("/").unwrap_or(point));
        steps.push(if *is_dir {
            Step::Mkdir {
                path: cstring(&target)?,
                mode: 0o755,
            }
        } else {
            Step::CreateFile {
                path: cstring(&target)?,
            }
        });
        steps.push(Step::Bind {
            source: cstring(point)?,
            target: cstring(&target)?,
            recursive: false,
        });
        steps.push(Step::ReadOnly {
            target: cstring(&target)?,
            recursive: false,
        });
    }
    for (link, target) in &layout.symlinks {
        steps.push(Step::Symlink {
            target: cstring(target)?,
            link: in_root(link)?,
        });
    }
    let old_root = in_root(OLD_ROOT)?;
    steps.extend([
        Step::Mkdir {
            path: in_root("dev")?,
            mode: 0o755,
        },
        Step::Bind {
            source: cstring("/dev")?,
            target: in_root("dev")?,
            recursive: true,
        },
        Step::Mkdir {
            path: in_root("proc")?,
            mode: 0o555,
        },
        Step::MountProc {
            target: in_root("proc")?,
        },
        Step::Mkdir {
            path: in_root("tmp")?,
            mode: 0o1777,
        },
        Step::Mkdir {
            path: in_root("root")?,
            mode: 0o700,
        },
        Step::Mkdir {
            path: old_root.clone(),
            mode: 0o700,
        },
        Step::PivotRoot {
            new_root: cstring(root)?,
            put_old: old_root,
        },
        Step::Chdir {
            path: cstring("/")?,
        },
        // Overlayfs keeps its own reference to the upper layers, so they can leave the tree.
        Step::DetachUnmount {
            path: cstring(format!("/{LAYERS}"))?,
        },
        Step::Rmdir {
            path: cstring(format!("/{LAYERS}"))?,
        },
    ]);
    // From here on paths resolve inside the new root; host paths are reached through the old
    // root, which is detached before exec.
    for bind in &spec.binds {
        if !bind.container_path.is_absolute() || bind.container_path == Path::new("/") {
            bail!(
                "mount path {} must be an absolute path other than /",
                bind.container_path.display()
            );
        }
        let source = PathBuf::from(format!("{OLD_ROOT}{}", bind.host_path.display()));
        let is_dir = std::fs::metadata(&bind.host_path)
            .with_context(|| format!("cannot stat {}", bind.host_path.display()))?
            .is_dir();
        mkdir_all(&mut steps, &bind.container_path, false)?;
        let target = cstring(&bind.container_path)?;
        steps.push(if is_dir {
            Step::Mkdir {
                path: target.clone(),
                mode: 0o755,
            }
        } else {
            Step::CreateFile {
                path: target.clone(),
            }
        });
        steps.push(Step::Bind {
            source: cstring(&source)?,
            target: target.clone(),
            recursive: true,
        });
        if bind.read_only {
            steps.push(Step::ReadOnly {
                target,
                recursive: true,
            });
        }
    }
    // Like container runtimes, create a missing working directory.
    mkdir_all(&mut steps, &spec.working_dir, true)?;
    steps.extend([
        Step::DetachUnmount {
            path: cstring(OLD_ROOT)?,
        },
        Step::Rmdir {
            path: cstring(OLD_ROOT)?,
        },
    ]);
    if spec.read_only_root {
        steps.push(Step::ReadOnly {
            target: cstring("/")?,
            recursive: false,
        });
        for dir in &layout.dirs {
            steps.push(Step::ReadOnly {
                target: cstring(format!("/{dir}"))?,
                recursive: false,
            });
        }
    }
    steps.push(Step::Setsid);
    if spec.no_new_privs {
        steps.push(Step::NoNewPrivs);
    }
    steps.extend([
        Step::SetIds {
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.clone(),
        },
        Step::DieWithParent {
            parent: std::process::id() as libc::pid_t,
        },
        Step::Chdir {
            path: cstring(&spec.working_dir)?,
        },
        Step::Umask(0o022),
    ]);
    Ok(steps)
}

/// Spawns `argv` inside the sandbox described by `steps`, with exactly `env` as environment,
/// stdin from /dev/null and stdout/stderr piped.
pub(crate) fn spawn(
    argv: &[String],
    env: &[(String, String)],
    steps: Arc<Vec<Step>>,
) -> Result<Child> {
    let Some((program, args)) = argv.split_first() else {
        bail!("the command is empty");
    };
    let mut fds = [0; 2];
    // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error()).context("cannot create a pipe");
    }
    // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let report_fd = write_end.as_raw_fd();
    let child_steps = Arc::clone(&steps);
    let mut command = Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: the closure only makes system calls (see Step::run) and writes to a pipe.
    unsafe {
        command.pre_exec(move || {
            // A container starts with no signal blocked, as under a container runtime; the
            // runner's own CLI blocks SIGTERM/SIGINT/SIGHUP for its signal thread, and a blocked
            // mask survives exec (a sidecar would never see its SIGTERM).
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            for (index, step) in child_steps.iter().enumerate() {
                if let Err(code) = step.run() {
                    let mut record = [0u8; 8];
                    record[..4].copy_from_slice(&(index as u32).to_ne_bytes());
                    record[4..].copy_from_slice(&(code as u32).to_ne_bytes());
                    libc::write(report_fd, record.as_ptr().cast(), record.len());
                    return Err(io::Error::from_raw_os_error(code));
                }
            }
            Ok(())
        });
    }
    let spawned = command.spawn();
    drop(write_end);
    match spawned {
        Ok(child) => Ok(child),
        Err(error) => {
            let mut record = Vec::new();
            let _ = std::fs::File::from(read_end).read_to_end(&mut record);
            if record.len() >= 8 {
                let index =
                    u32::from_ne_bytes([record[0], record[1], record[2], record[3]]) as usize;
                let code = u32::from_ne_bytes([record[4], record[5], record[6], record[7]]) as i32;
                let what = steps.get(index).map(Step::describe).unwrap_or_default();
                bail!(
                    "container setup failed: cannot {what}: {}",
                    io::Error::from_raw_os_error(code)
                );
            }
            Err(error).with_context(|| format!("cannot execute {program:?}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_mountinfo;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/end\\"), "/end\\");
    }
}
