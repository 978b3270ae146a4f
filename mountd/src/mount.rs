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

/// Runs `attempt` (something that touches `mountpoint`: resolving it, mounting on it) and,
/// if it fails with ENOTCONN, unmounts the stale FUSE mount there and tries once more. A
/// daemon killed moments ago leaves a mount whose root the kernel may still answer from
/// its attribute cache, so `prepare` can find it healthy and the mount call then fail;
/// ENOTCONN is the proof that no daemon serves it, so it is safe to remove.
pub fn retry_if_stale<T>(
    mountpoint: &Path,
    mut attempt: impl FnMut() -> io::Result<T>,
) -> io::Result<T> {
    match attempt() {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %mountpoint.display(), "stale FUSE mount found; unmounting it");
            unmount(mountpoint)?;
            attempt()
        }
        result => result,
    }
}

/// Unmounts `mountpoint`, detaching it lazily if it is busy (Linux; elsewhere, forcing
/// it).
pub fn unmount(mountpoint: &Path) -> io::Result<()> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())?;
    #[cfg(target_os = "linux")]
    let attempts = [0, libc::MNT_DETACH];
    #[cfg(not(target_os = "linux"))]
    let attempts = [0, libc::MNT_FORCE];
    for flags in attempts {
        if unmount_once(&path, flags) {
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

/// One unmount call with `flags`; true if it unmounted.
fn unmount_once(path: &CString, flags: libc::c_int) -> bool {
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    #[cfg(target_os = "linux")]
    let rc = unsafe { libc::umount2(path.as_ptr(), flags) };
    // SAFETY: as above.
    #[cfg(not(target_os = "linux"))]
    let rc = unsafe { libc::unmount(path.as_ptr(), flags) };
    rc == 0
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

/// Sets the kernel read-ahead of the FUSE mount at `mountpoint` to `kib` KiB.
///
/// The kernel's default for FUSE (128 KiB) splits a sequential read into small requests
/// issued one window at a time, which caps cold throughput far below the network's; a
/// larger window keeps several large reads in flight. Needs root (writes to sysfs); the
/// device is found in `/proc/self/mountinfo`, so the mount itself is not touched. Linux
/// only: elsewhere the kernel's default stays (an error says so).
#[cfg(not(target_os = "linux"))]
pub fn set_readahead(_mountpoint: &Path, _kib: u32) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "setting a mount's read-ahead is Linux-only",
    ))
}

/// See above: the Linux implementation.
#[cfg(target_os = "linux")]
pub fn set_readahead(mountpoint: &Path, kib: u32) -> io::Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    // mountinfo escapes spaces in paths as octal.
    let wanted = mountpoint.to_string_lossy().replace(' ', "\\040");
    // Fields: id parent major:minor root mountpoint ...; the last match is the top mount.
    let device = mountinfo
        .lines()
        .rev()
        .find_map(|line| {
            let mut fields = line.split(' ');
            let device = fields.nth(2)?;
            let mounted_on = fields.nth(1)?;
            (mounted_on == wanted).then(|| device.to_string())
        })
        .ok_or_else(|| io::Error::other(format!("{wanted} not found in mountinfo")))?;
    std::fs::write(
        format!("/sys/class/bdi/{device}/read_ahead_kb"),
        kib.to_string(),
    )
}
