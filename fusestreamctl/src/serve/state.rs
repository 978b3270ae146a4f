//! The control plane's persisted state: the staged entries whose URLs it renews, so that
//! after a restart (or a crash) it takes them up again and reads that failed meanwhile
//! recover. Only what is needed to sign again is kept (a local path, or a remote's name and
//! the object's path), never a key or token; a URL given as the source is kept only if it
//! carries nothing secret (no signature, credential or token that `redact` would hide),
//! else it lives in memory only and does not survive a restart of the control plane.
//!
//! Written atomically (temp file, fsync, rename) by one saver task, so saves never
//! interleave and no lock is held across the write; `stage` and `unstage` wait for theirs.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::sources::Renewal;
use crate::sources::local::FileIdentity;

/// A staged entry, as saved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Saved {
    /// A local file by canonical path, and what it was at staging (state files written
    /// before identities were saved have none: the file found next is pinned).
    Local {
        path: PathBuf,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        identity: Option<FileIdentity>,
    },
    Remote {
        remote: String,
        path: String,
    },
    Url {
        url: String,
    },
}

impl Saved {
    pub fn of(renewal: &Renewal) -> Option<Saved> {
        match renewal {
            Renewal::Never => None,
            Renewal::Url { url } => (fusestream_shared::redact::url(url) == *url)
                .then(|| Saved::Url { url: url.clone() }),
            Renewal::Local { path, identity, .. } => Some(Saved::Local {
                path: path.clone(),
                identity: Some(*identity),
            }),
            Renewal::Remote { name, path, .. } => Some(Saved::Remote {
                remote: name.clone(),
                path: path.clone(),
            }),
        }
    }
}

/// A staged entry as saved: its source, and who besides its stager may read it (a
/// `Sharing` of the API; absent, as in state files from before sharing, is private).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedEntry {
    #[serde(flatten)]
    pub source: Saved,
    #[serde(default, skip_serializing_if = "is_private")]
    pub share: i32,
}

fn is_private(share: &i32) -> bool {
    *share == 0
}

/// Which mount daemon the entries were staged on: a restarted one has none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountdIdentity {
    pub pid: u32,
    /// When it started, Unix seconds (its uptime subtracted from now: may be 1 s off).
    pub started_unix: i64,
}

impl MountdIdentity {
    pub fn same_as(&self, other: &MountdIdentity) -> bool {
        self.pid == other.pid && self.started_unix.abs_diff(other.started_unix) <= 2
    }
}

/// What is saved.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub entries: BTreeMap<String, SavedEntry>,
    #[serde(default)]
    pub mountd: Option<MountdIdentity>,
}

/// Reads the state saved at `path` (never through a symlink); a missing file is an empty
/// state, an unreadable one is reported and set aside (renamed `.bad`) rather than
/// silently overwritten. The file is written mode 0600 (a temp file renamed into place) in
/// the state dir, which `serve` checks is private.
pub fn load(path: &Path) -> State {
    let read = || -> std::io::Result<String> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut text = String::new();
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)?
            .read_to_string(&mut text)?;
        Ok(text)
    };
    let text = match read() {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return State::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), "state unreadable, starting empty: {e}");
            return State::default();
        }
    };
    match serde_json::from_str::<State>(&text) {
        Ok(state) => state,
        Err(e) => {
            let bad = path.with_extension("bad");
            let _ = std::fs::rename(path, &bad);
            tracing::warn!(path = %path.display(), moved_to = %bad.display(), "state corrupt, starting empty: {e}");
            State::default()
        }
    }
}

fn write_atomically(path: &Path, state: &State) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut file = tempfile::NamedTempFile::new_in(dir)?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.as_file().sync_all()?;
    file.persist(path).map_err(|e| e.error)?;
    Ok(())
}

type Snapshot = Box<dyn Fn() -> State + Send>;

/// Handle to the saver task.
#[derive(Clone)]
pub struct Saver {
    requests: mpsc::UnboundedSender<oneshot::Sender<()>>,
}

impl Saver {
    /// Starts the saver task; `snapshot` gives the entries to save at that moment.
    pub fn start(path: PathBuf, snapshot: Snapshot) -> Saver {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<()>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                // Every request waiting now is served by one write of the latest state.
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let entries = snapshot();
                let target = path.clone();
                let result =
                    tokio::task::spawn_blocking(move || write_atomically(&target, &entries)).await;
                if let Ok(Err(e)) | Err(e) = result.map_err(std::io::Error::other) {
                    tracing::warn!(path = %path.display(), "saving state failed: {e}");
                }
                for done in waiting {
                    let _ = done.send(());
                }
            }
        });
        Saver { requests: tx }
    }

    /// Saves the current state and waits until it is on disk.
    pub async fn save(&self) {
        let (done, saved) = oneshot::channel();
        if self.requests.send(done).is_ok() {
            let _ = saved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_sets_corrupt_files_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        assert_eq!(load(&path), State::default());
        let entries = BTreeMap::from([
            (
                "a.bin".to_string(),
                SavedEntry {
                    source: Saved::Local {
                        path: "/home/u/a.bin".into(),
                        identity: Some(FileIdentity {
                            dev: 1,
                            ino: 2,
                            size: 3,
                            mtime: 4,
                            mtime_nsec: 5,
                        }),
                    },
                    share: 0,
                },
            ),
            (
                "dir/b.bin".to_string(),
                SavedEntry {
                    source: Saved::Remote {
                        remote: "archive".into(),
                        path: "c/b.bin".into(),
                    },
                    share: 2,
                },
            ),
        ]);
        let state = State {
            entries,
            mountd: Some(MountdIdentity {
                pid: 7,
                started_unix: 100,
            }),
        };
        write_atomically(&path, &state).unwrap();
        assert_eq!(load(&path), state);
        std::fs::write(&path, "{not json").unwrap();
        assert_eq!(load(&path), State::default());
        assert!(path.with_extension("bad").exists());
    }

    #[test]
    fn state_files_without_identities_still_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        std::fs::write(
            &path,
            r#"{"entries": {"a.bin": {"kind": "local", "path": "/home/u/a.bin"}}}"#,
        )
        .unwrap();
        let state = load(&path);
        assert_eq!(
            state.entries["a.bin"],
            SavedEntry {
                source: Saved::Local {
                    path: "/home/u/a.bin".into(),
                    identity: None
                },
                share: 0,
            },
            "no identity, and private: what entries from before both were"
        );
        // Written files are private.
        use std::os::unix::fs::PermissionsExt;
        write_atomically(&path, &state).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn source_urls_are_saved_only_when_nothing_in_them_is_secret() {
        let url = |u: &str| Saved::of(&Renewal::Url { url: u.into() });
        assert_eq!(
            url("http://127.0.0.1:8080/a/b.bin"),
            Some(Saved::Url {
                url: "http://127.0.0.1:8080/a/b.bin".into()
            })
        );
        for secret in [
            "http://127.0.0.1/o?temp_url_sig=abc&temp_url_expires=1",
            "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&X-Amz-Credential=x",
            "http://user:pass@127.0.0.1/o",
        ] {
            assert_eq!(url(secret), None, "{secret}");
        }
    }
}
