//! The filesystem core's error type and the one place that maps it to an errno.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum FsError {
    #[error("no such entry")]
    NotFound,
    #[error("not a directory")]
    NotADirectory,
    #[error("is a directory")]
    IsADirectory,
    #[error("unknown file handle")]
    BadHandle,
    #[error("the mount is read-only")]
    ReadOnly,
    #[error("read timed out after {0:?} waiting for data")]
    TimedOut(std::time::Duration),
    #[error("read interrupted")]
    Interrupted,
    #[error("fetch failed: {0}")]
    Fetch(String),
    /// The entry's origin is down (its circuit breaker is open): failed without trying.
    #[error("remote unavailable: {0}")]
    Unavailable(String),
    #[error("remote object changed since it was staged: {0}")]
    Changed(String),
    #[error("backing store: {0}")]
    Store(String),
}

impl FsError {
    /// The errno a FUSE reply carries for this error.
    pub fn errno(&self) -> i32 {
        match self {
            FsError::NotFound => libc::ENOENT,
            FsError::NotADirectory => libc::ENOTDIR,
            FsError::IsADirectory => libc::EISDIR,
            FsError::BadHandle => libc::EBADF,
            FsError::ReadOnly => libc::EROFS,
            FsError::TimedOut(_) => libc::ETIMEDOUT,
            FsError::Interrupted => libc::EINTR,
            FsError::Fetch(_)
            | FsError::Unavailable(_)
            | FsError::Changed(_)
            | FsError::Store(_) => libc::EIO,
        }
    }
}
