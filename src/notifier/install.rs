//! `install`: copies the running executable into the shared volume, from where the wrapped
//! container and the sidecar run it. It is statically linked, so it runs in any image.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::files::{sync_parent, temp_sibling};

/// The file name used when DEST is a directory.
pub const BINARY_NAME: &str = "backup-notifier";

/// Copies `/proc/self/exe` to `dest` (or `dest/backup-notifier` when `dest` is a directory)
/// through a temporary sibling and a rename, so a reader never runs a half-written binary.
/// Returns the installed path.
pub fn install(dest: &Path) -> anyhow::Result<PathBuf> {
    let dest = if dest.is_dir() {
        dest.join(BINARY_NAME)
    } else {
        dest.to_path_buf()
    };
    // Only a file (or a link, which the rename replaces) is replaced: never a device such as
    // /dev/null, a FIFO or a directory in the way.
    if let Ok(meta) = fs::symlink_metadata(&dest)
        && !meta.is_file()
        && !meta.is_symlink()
    {
        anyhow::bail!(
            "installing to {}: it exists and is not a regular file",
            dest.display()
        );
    }
    let tmp = temp_sibling(&dest);
    let copied = copy_self(&tmp);
    let copied = copied.and_then(|()| {
        fs::rename(&tmp, &dest).with_context(|| format!("renaming into {}", dest.display()))
    });
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("installing to {}", dest.display()));
    }
    sync_parent(&dest);
    Ok(dest)
}

fn copy_self(tmp: &Path) -> anyhow::Result<()> {
    let mut src = File::open("/proc/self/exe").context("opening /proc/self/exe")?;
    let mut out = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o755)
        .open(tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    io::copy(&mut src, &mut out).with_context(|| format!("writing {}", tmp.display()))?;
    // The mode given at creation is reduced by the umask; the result must be 0755 regardless.
    out.set_permissions(Permissions::from_mode(0o755))
        .with_context(|| format!("setting the mode of {}", tmp.display()))?;
    out.sync_all()
        .with_context(|| format!("flushing {}", tmp.display()))?;
    Ok(())
}
