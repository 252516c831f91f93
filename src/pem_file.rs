//! Reading the PEM files the binaries are pointed at (serving certificate and key, CA bundles).
//!
//! A path is a flag or a mounted volume, so it can name anything: `/dev/zero` would be read
//! until memory runs out, and a FIFO with no writer would block the open, and in the notifier
//! its only runtime thread, forever. Only a regular file of at most [`MAX_BYTES`] is read.

use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Far above any certificate, key or CA bundle (the Mozilla roots are about 220 KiB as PEM).
pub const MAX_BYTES: u64 = 4 * 1024 * 1024;

/// The file's bytes, or an error that says why it was not read.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    // Non-blocking, so that opening a FIFO does not wait for a writer; reads from a regular
    // file ignore the flag.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "larger than {} MiB, which no PEM file here is",
                MAX_BYTES >> 20
            ),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_file_is_read_and_anything_else_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ca.crt");
        std::fs::write(&ok, b"pem").unwrap();
        assert_eq!(read(&ok).unwrap(), b"pem");

        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, says) in [
            (fifo.as_path(), "not a regular file"),
            (dir.path(), "not a regular file"),
            (Path::new("/dev/zero"), "not a regular file"),
        ] {
            let e = read(path).unwrap_err();
            assert!(e.to_string().contains(says), "{}: {e}", path.display());
        }

        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_BYTES + 1).unwrap();
        assert!(
            read(&big)
                .unwrap_err()
                .to_string()
                .contains("larger than 4 MiB")
        );
    }
}
