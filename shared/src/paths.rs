//! Default locations of the daemons' sockets.
//!
//! The control plane is per user: its socket lives in the user's runtime directory
//! (`$XDG_RUNTIME_DIR/fusestream/control.sock`), or in a private directory under the
//! system temp dir when there is none. The mount daemon is a system service with a socket
//! under `/run/fusestream`.

use std::path::PathBuf;

/// Environment variable that overrides the control socket for the CLI and `serve`.
pub const CONTROL_SOCKET_ENV: &str = "FUSESTREAM_SOCKET";
/// Environment variable that overrides the mount daemon's socket.
pub const MOUNTD_SOCKET_ENV: &str = "FUSESTREAM_MOUNTD_SOCKET";

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
