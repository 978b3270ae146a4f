//! Mounting and unmounting the FUSE session, including recovery from a stale mount left by
//! a daemon that died ("transport endpoint is not connected").
//!
//! Unmounting never wedges: a busy mount (files still open) is detached lazily, so the
//! daemon can always exit and the next start finds a clean mount point.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;

/// Makes `mountpoint` usable: creates it if missing and unmounts a stale FUSE mount.
pub fn prepare(mountpoint: &Path) -> io::Result<()> {
    match std::fs::metadata(mountpoint) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", mountpoint.display()),
        )),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "stale FUSE mount found; unmounting it");
            unmount(mountpoint)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::create_dir_all(mountpoint),
        Err(e) => Err(e),
    }
}

/// Unmounts `mountpoint`, detaching it lazily if it is busy.
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    for flags in [0, libc::MNT_DETACH] {
        // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
        if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EBUSY) => continue,
            Some(libc::EPERM) => return fusermount_unmount(mountpoint),
            Some(libc::EINVAL) => return Ok(()), // not mounted (any more)
            _ => return Err(error),
        }
    }
    Err(io::Error::other(format!(
        "could not unmount {}",
        mountpoint.display()
    )))
}

/// Unprivileged unmount through the setuid helper, lazily if busy.
fn fusermount_unmount(mountpoint: &Path) -> io::Result<()> {
    for args in [&["-u", "-q"][..], &["-u", "-q", "-z"][..]] {
        let status = Command::new("fusermount3")
            .args(args)
            .arg(mountpoint)
            .status()?;
        if status.success() {
            return Ok(());
        }
    }
    Err(io::Error::other(format!(
        "fusermount3 could not unmount {}",
        mountpoint.display()
    )))
}
