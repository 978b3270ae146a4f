//! Default locations of the daemons' sockets, and the checks on the directories that hold
//! them.
//!
//! The control plane is per user: its socket lives in the user's runtime directory
//! (`$XDG_RUNTIME_DIR/fusestream/control.sock`), or in a private directory under the
//! system temp dir when there is none. The mount daemon is a system service with a socket
//! under `/run/fusestream`.
//!
//! Directories that hold sockets, tokens, state and logs are checked before use
//! ([`private_dir`], [`safe_dir`]): a directory another user created first (the
//! `/tmp/fusestream-UID` fallback is guessable) or a symlink planted in its place would
//! let that user receive our requests or read what we write. Only the last component is
//! checked: ancestors such as a home directory reached through a symlink are the system's
//! layout, not an attacker's (an attacker who controls an ancestor controls the rest).

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable that overrides the control socket for the CLI and `serve`.
pub const CONTROL_SOCKET_ENV: &str = "FUSESTREAM_SOCKET";
/// Environment variable that overrides the mount daemon's socket.
pub const MOUNTD_SOCKET_ENV: &str = "FUSESTREAM_MOUNTD_SOCKET";

/// The effective uid of this process.
pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Per-user runtime directory for FuseStream.
pub fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("fusestream"),
        // SAFETY: getuid has no preconditions and cannot fail.
        _ => std::env::temp_dir().join(format!("fusestream-{}", unsafe { libc::getuid() })),
    }
}

pub fn default_control_socket() -> PathBuf {
    runtime_dir().join("control.sock")
}

/// The control plane's API token file for the control socket `socket`: `control.token`
/// next to `control.sock` (see `auth`).
pub fn token_file(socket: &Path) -> PathBuf {
    socket.with_extension("token")
}

pub fn default_mountd_socket() -> PathBuf {
    PathBuf::from("/run/fusestream/mountd.sock")
}

/// Per-user state directory for FuseStream: `$XDG_STATE_HOME/fusestream`, else
/// `~/.local/state/fusestream`, else the runtime dir.
pub fn state_dir() -> PathBuf {
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state"));
    match xdg.or(home) {
        Some(base) => base.join("fusestream"),
        None => runtime_dir(),
    }
}

fn refused(dir: &Path, why: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!("{}: {why}; refusing to use it", dir.display()),
    )
}

fn not_ours(dir: &Path, meta: &std::fs::Metadata) -> io::Error {
    refused(
        dir,
        format!(
            "it belongs to uid {}, not to us (uid {})",
            meta.uid(),
            euid()
        ),
    )
}

/// Creates `dir` (mode 0700, parents as needed) if missing, and checks it is a real
/// directory (not a symlink) owned by us and closed to others; a directory of ours with a
/// looser mode is tightened to 0700. For directories only we should use: the runtime
/// dir, the state dir.
pub fn private_dir(dir: &Path) -> io::Result<()> {
    let meta = create_or_inspect(dir)?;
    if meta.uid() != euid() {
        return Err(not_ours(dir, &meta));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `dir` (mode 0700) if missing, and checks that no other user can replace what
/// we put in it: a real directory (not a symlink), owned by us or by root, and not
/// writable by others unless sticky (like `/tmp`, where only an entry's owner may remove
/// or rename it). For directories given on the command line (a socket's, a log file's).
pub fn safe_dir(dir: &Path) -> io::Result<()> {
    let meta = create_or_inspect(dir)?;
    let sticky = meta.mode() & 0o1000 != 0;
    let owner_ok = meta.uid() == euid() || meta.uid() == 0;
    if !owner_ok {
        return Err(not_ours(dir, &meta));
    }
    if meta.mode() & 0o022 != 0 && !sticky {
        return Err(refused(
            dir,
            format!("others may write to it (mode {:o})", meta.mode() & 0o7777),
        ));
    }
    Ok(())
}

/// `dir`'s own metadata (never a symlink's target), creating it with mode 0700 first if it
/// does not exist.
fn create_or_inspect(dir: &Path) -> io::Result<std::fs::Metadata> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                // Someone made it meanwhile: inspected below like any other.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.file_type().is_symlink() {
        return Err(refused(dir, "it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refused(dir, "it is not a directory".into()));
    }
    Ok(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_dirs_are_created_0700_and_tightened() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("a/b/fusestream");
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn symlinks_and_files_are_refused() {
        let base = tempfile::tempdir().unwrap();
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = private_dir(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(
            safe_dir(&link)
                .unwrap_err()
                .to_string()
                .contains("symbolic link")
        );
        let file = base.path().join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(
            private_dir(&file)
                .unwrap_err()
                .to_string()
                .contains("not a directory")
        );
    }

    #[test]
    fn shared_dirs_need_the_sticky_bit() {
        let base = tempfile::tempdir().unwrap();
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            safe_dir(&open)
                .unwrap_err()
                .to_string()
                .contains("others may write")
        );
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        safe_dir(&open).unwrap();
        // Another owner: refused (only testable as root, who can chown).
        if euid() == 0 {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), None).unwrap();
            let err = private_dir(&theirs).unwrap_err().to_string();
            assert!(err.contains("belongs to uid 65534"), "{err}");
            assert!(safe_dir(&theirs).is_err());
        }
    }
}
