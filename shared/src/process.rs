//! Process-wide hardening both daemons apply first thing in `main`.
//!
//! - RLIMIT_NOFILE is raised to its hard limit: the soft default (often 1024) is what let
//!   one local user's idle connections make staging fail for everyone. Raising it costs
//!   nothing until descriptors are used, and the listeners' per-peer caps (`listen`) keep
//!   any one user far below it.
//! - No core dumps, and no ptrace or /proc/PID/mem access by other processes of the same
//!   uid (PR_SET_DUMPABLE 0): both daemons hold secrets in memory (signing keys, temp URLs,
//!   the control plane's remote credentials and API token), and a core file or a debugger
//!   attached by another process of the user would carry them out.

use std::io;

/// Applies everything above; failures are returned for the caller to log, never fatal.
pub fn harden() -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = raise_fd_limit() {
        problems.push(format!("raising RLIMIT_NOFILE: {e}"));
    }
    if let Err(e) = no_dumps() {
        problems.push(format!("disabling core dumps: {e}"));
    }
    problems
}

/// [`harden`], printing what failed to stderr as `program: ...` (called before logging is
/// set up).
pub fn harden_or_report(program: &str) {
    for problem in harden() {
        eprintln!("{program}: {problem}");
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_fd_limit() -> io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we pass, valid for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let target = limit.rlim_max;
    // macOS refuses more than OPEN_MAX for the soft limit even when the hard one is
    // unlimited.
    #[cfg(target_os = "macos")]
    let target = target.min(libc::OPEN_MAX as libc::rlim_t);
    if limit.rlim_cur >= target {
        return Ok(limit.rlim_cur);
    }
    limit.rlim_cur = target;
    // SAFETY: setrlimit reads the struct we pass, valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(target)
}

/// No core dumps, and no same-uid ptrace (Linux: PR_SET_DUMPABLE 0; elsewhere RLIMIT_CORE 0).
pub fn no_dumps() -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let none = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass, valid for the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &none) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fd_limit_ends_at_the_hard_limit() {
        let soft = super::raise_fd_limit().unwrap();
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as in raise_fd_limit.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, soft);
        assert!(soft >= 1024);
    }
}
