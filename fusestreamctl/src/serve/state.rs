//! The control plane's persisted state: the staged entries whose URLs it renews, so that
//! after a restart (or a crash) it takes them up again and reads that failed meanwhile
//! recover. Only what is needed to sign again is kept (a local path, or a remote's name and
//! the object's path), never a key or token; a URL given as the source is kept only if it
//! carries nothing secret (no signature, credential or token that `redact` would hide),
//! else it lives in memory only and does not survive a restart of the control plane.
//!
//! The store is one redb file (`control-state.redb` in the private state dir). Why redb:
//! pure Rust, so no C compile on the build machines (SQLite's bundled build would cost
//! minutes on two cores), one file with ACID transactions and copy-on-write B-trees, so a
//! change is O(log N) and a `kill -9` at any moment leaves the last committed transaction
//! (the JSON file this replaces was rewritten whole on every change: O(N) each, O(N^2) to
//! stage N entries). Rows are the same serde shapes the JSON file had, as compact JSON.
//!
//! Tables: `entries` (name → [`SavedEntry`]), `intents` (id → [`Intent`]: a stage asked
//! of the mount daemon and not yet answered; see `tracking`), `meta` (`mountd` →
//! [`MountdIdentity`]).
//!
//! Writes go through one writer thread ([`Store::submit`]): a submission is a list of
//! [`Change`]s applied in one transaction, and submissions waiting together share one
//! commit (group commit: one fsync for many concurrent stages). A submission is answered
//! only once committed, so an RPC that waits for it acknowledges only what is on disk.
//! Submissions are applied in the order they were made: callers make them under their
//! own lock, together with the in-memory change they mirror.
//!
//! Opening: the file is opened mode 0600, never through a symlink (O_NOFOLLOW), and locked
//! (a second control plane on the same state dir is refused). A store that is not a valid
//! redb file is reported and set aside (renamed `.bad`), never overwritten. The JSON state
//! file of earlier versions (`control-state.json`) is imported once, in one transaction,
//! then renamed `.migrated`; a crash in between imports it again, which is idempotent.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use redb::{Database, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::sources::Renewal;
use crate::sources::local::FileIdentity;

/// The store's file, in the state dir.
pub const STORE_FILE: &str = "control-state.redb";
/// The JSON state file of earlier versions, migrated once.
pub const LEGACY_FILE: &str = "control-state.json";

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const MOUNTD_KEY: &str = "mountd";

/// redb's page cache: the whole state of 100,000 entries is a few MiB.
const CACHE_BYTES: usize = 16 << 20;
/// Changes committed together at most (more wait for the next commit), so one commit's
/// memory is bounded whatever the number of callers; one submission is never split.
const MAX_CHANGES_PER_COMMIT: usize = 20_000;

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

/// A stage asked of the mount daemon, saved before asking: after a crash, the entry the
/// mount daemon shows under `name` is this one if its ETag and size are these (then it is
/// taken up as staged), else the stage never happened there (the intent is dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    pub name: String,
    pub entry: SavedEntry,
    pub etag: String,
    pub size: u64,
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

/// What the store held when opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// By name, in name order.
    pub entries: Vec<(String, SavedEntry)>,
    pub intents: Vec<(u64, Intent)>,
    pub mountd: Option<MountdIdentity>,
}

/// One change of the store.
#[derive(Debug, Clone)]
pub enum Change {
    Put(String, SavedEntry),
    Remove(String),
    Intend(u64, Intent),
    /// The intent was settled (its entry tracked, or the stage failed).
    Settle(u64),
    Mountd(MountdIdentity),
}

/// Why the store could not be opened or written.
#[derive(Debug, Clone, thiserror::Error)]
#[error("state store: {0}")]
pub struct StoreError(String);

impl StoreError {
    fn at(path: &Path, e: impl std::fmt::Display) -> StoreError {
        StoreError(format!("{}: {e}", path.display()))
    }
}

struct Submission {
    changes: Vec<Change>,
    committed: oneshot::Sender<Result<(), StoreError>>,
}

/// Handle to the store's writer thread. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    submissions: std::sync::mpsc::Sender<Submission>,
    next_intent: Arc<AtomicU64>,
    /// The writer thread, which holds the file (and its lock) until the last handle goes.
    #[cfg_attr(not(test), allow(dead_code))]
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

/// A submission on its way to disk.
pub struct Pending(oneshot::Receiver<Result<(), StoreError>>);

impl Pending {
    /// Waits until the changes are committed (or failed to be).
    pub async fn committed(self) -> Result<(), StoreError> {
        self.0
            .await
            .unwrap_or_else(|_| Err(StoreError("the writer stopped".into())))
    }
}

impl Store {
    /// Opens (or creates) the store in the private state dir `dir`, migrating the legacy
    /// JSON file if one is there, reads everything once and starts the writer thread.
    /// Blocking: call it before serving.
    pub fn open(dir: &Path) -> Result<(Store, Loaded), StoreError> {
        let path = dir.join(STORE_FILE);
        let (db, loaded) = match open_and_load(&path, &dir.join(LEGACY_FILE)) {
            Err(Failure::Corrupt(why)) => {
                let bad = set_aside(&path)?;
                tracing::error!(
                    path = %path.display(),
                    moved_to = %bad.display(),
                    "state store is corrupt, set aside; starting empty: {why}"
                );
                open_and_load(&path, &dir.join(LEGACY_FILE)).map_err(|f| f.into_error(&path))?
            }
            opened => opened.map_err(|f| f.into_error(&path))?,
        };
        let next_intent = loaded.intents.iter().map(|(id, _)| id + 1).max();
        let (submissions, received) = std::sync::mpsc::channel();
        let writer = std::thread::Builder::new()
            .name("state-writer".into())
            .spawn(move || write_forever(db, path, received))
            .map_err(|e| StoreError(format!("writer thread: {e}")))?;
        let store = Store {
            submissions,
            next_intent: Arc::new(AtomicU64::new(next_intent.unwrap_or(1))),
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        };
        Ok((store, loaded))
    }

    /// Queues `changes`, to be applied in one transaction after everything submitted
    /// before. Never blocks: call it under the lock of what the changes mirror.
    pub fn submit(&self, changes: Vec<Change>) -> Pending {
        let (committed, pending) = oneshot::channel();
        // A dead writer drops the submission: `committed` then reports it.
        let _ = self.submissions.send(Submission { changes, committed });
        Pending(pending)
    }

    /// Closes the store once everything submitted is committed (the last handle only).
    #[cfg(test)]
    pub fn close(self) {
        let Store {
            submissions,
            writer,
            ..
        } = self;
        drop(submissions);
        if let Some(writer) = writer.lock().unwrap().take() {
            writer.join().unwrap();
        }
    }

    /// A new intent id (unique in this store).
    pub fn new_intent_id(&self) -> u64 {
        self.next_intent.fetch_add(1, Ordering::Relaxed)
    }
}

/// Why opening failed: a file that is not a valid store, or anything else (which is
/// reported and never touches the file).
enum Failure {
    Corrupt(String),
    Other(String),
}

impl Failure {
    fn into_error(self, path: &Path) -> StoreError {
        match self {
            Failure::Corrupt(why) => StoreError::at(path, format!("corrupt: {why}")),
            Failure::Other(why) => StoreError::at(path, why),
        }
    }
}

impl From<redb::Error> for Failure {
    fn from(e: redb::Error) -> Failure {
        match e {
            redb::Error::Corrupted(why) => Failure::Corrupt(why),
            redb::Error::UpgradeRequired(version) => Failure::Corrupt(format!(
                "not a store this version writes (format {version})"
            )),
            redb::Error::Io(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
                ) =>
            {
                Failure::Corrupt(e.to_string())
            }
            redb::Error::DatabaseAlreadyOpen => Failure::Other(
                "in use by another control plane (one state dir serves one `serve`)".into(),
            ),
            e => Failure::Other(e.to_string()),
        }
    }
}

macro_rules! redb_failure {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(e: $t) -> Failure {
                Failure::from(redb::Error::from(e))
            }
        }
    )*};
}
redb_failure!(
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// Opens the file without following a symlink, private to the user.
fn open_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(file)
}

fn open_and_load(path: &Path, legacy: &Path) -> Result<(Database, Loaded), Failure> {
    let file = open_file(path).map_err(|e| match e.raw_os_error() {
        Some(libc::ELOOP) => Failure::Other("is a symbolic link; refusing to follow it".into()),
        _ => Failure::Other(e.to_string()),
    })?;
    let db = redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create_file(file)?;
    let txn = db.begin_write()?;
    txn.open_table(ENTRIES)?;
    txn.open_table(INTENTS)?;
    txn.open_table(META)?;
    txn.commit()?;
    migrate_legacy(&db, legacy)?;
    let loaded = load(&db)?;
    Ok((db, loaded))
}

fn set_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let mut bad = path.as_os_str().to_owned();
    bad.push(".bad");
    let bad = PathBuf::from(bad);
    std::fs::rename(path, &bad).map_err(|e| StoreError::at(path, format!("setting aside: {e}")))?;
    Ok(bad)
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("saved shapes always serialize")
}

fn load(db: &Database) -> Result<Loaded, Failure> {
    let txn = db.begin_read()?;
    let mut loaded = Loaded::default();
    for row in txn.open_table(ENTRIES)?.iter()? {
        let (name, value) = row?;
        match serde_json::from_slice(value.value()) {
            Ok(entry) => loaded.entries.push((name.value().to_string(), entry)),
            // A newer version's shape, say: left in place, not taken up.
            Err(e) => tracing::warn!(name = name.value(), "saved entry not understood: {e}"),
        }
    }
    for row in txn.open_table(INTENTS)?.iter()? {
        let (id, value) = row?;
        match serde_json::from_slice(value.value()) {
            Ok(intent) => loaded.intents.push((id.value(), intent)),
            Err(e) => tracing::warn!(id = id.value(), "saved intent not understood: {e}"),
        }
    }
    if let Some(value) = txn.open_table(META)?.get(MOUNTD_KEY)? {
        loaded.mountd = serde_json::from_slice(value.value()).ok();
    }
    Ok(loaded)
}

/// The JSON state file of earlier versions.
#[derive(Debug, Default, Deserialize)]
struct LegacyState {
    entries: std::collections::BTreeMap<String, SavedEntry>,
    #[serde(default)]
    mountd: Option<MountdIdentity>,
}

/// Imports `legacy` (if there) in one transaction, then renames it `.migrated`. An
/// unreadable one is reported and set aside (`.bad`), as that version did.
fn migrate_legacy(db: &Database, legacy: &Path) -> Result<(), Failure> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut text = String::new();
    let read = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(legacy)
        .and_then(|mut f| f.read_to_string(&mut text));
    match read {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            tracing::warn!(path = %legacy.display(), "old state file unreadable, not migrated: {e}");
            return Ok(());
        }
    }
    let state: LegacyState = match serde_json::from_str(&text) {
        Ok(state) => state,
        Err(e) => {
            let bad = legacy.with_extension("bad");
            let _ = std::fs::rename(legacy, &bad);
            tracing::warn!(path = %legacy.display(), moved_to = %bad.display(), "old state file corrupt, not migrated: {e}");
            return Ok(());
        }
    };
    let txn = db.begin_write()?;
    {
        let mut entries = txn.open_table(ENTRIES)?;
        for (name, entry) in &state.entries {
            entries.insert(name.as_str(), encode(entry).as_slice())?;
        }
        let mut meta = txn.open_table(META)?;
        if let Some(mountd) = state.mountd
            && meta.get(MOUNTD_KEY)?.is_none()
        {
            meta.insert(MOUNTD_KEY, encode(&mountd).as_slice())?;
        }
    }
    txn.commit()?;
    let migrated = legacy.with_extension("json.migrated");
    std::fs::rename(legacy, &migrated).map_err(|e| {
        Failure::Other(format!(
            "renaming {} after migrating it: {e}",
            legacy.display()
        ))
    })?;
    tracing::info!(
        entries = state.entries.len(),
        moved_to = %migrated.display(),
        "old state file migrated to the state store"
    );
    Ok(())
}

/// The writer thread: applies submissions in order, those waiting together in one
/// transaction, and answers each once committed.
fn write_forever(db: Database, path: PathBuf, submissions: std::sync::mpsc::Receiver<Submission>) {
    while let Ok(first) = submissions.recv() {
        let mut changes = first.changes.len();
        let mut group = vec![first];
        while changes < MAX_CHANGES_PER_COMMIT
            && let Ok(next) = submissions.try_recv()
        {
            changes += next.changes.len();
            group.push(next);
        }
        let result = apply(&db, group.iter().flat_map(|s| &s.changes)).map_err(|f| {
            let e = f.into_error(&path);
            tracing::error!("saving state failed: {e}");
            e
        });
        for submission in group {
            let _ = submission.committed.send(result.clone());
        }
    }
}

fn apply<'a>(db: &Database, changes: impl Iterator<Item = &'a Change>) -> Result<(), Failure> {
    let txn = db.begin_write()?;
    {
        let mut entries = txn.open_table(ENTRIES)?;
        let mut intents = txn.open_table(INTENTS)?;
        let mut meta = txn.open_table(META)?;
        for change in changes {
            match change {
                Change::Put(name, entry) => {
                    entries.insert(name.as_str(), encode(entry).as_slice())?;
                }
                Change::Remove(name) => {
                    entries.remove(name.as_str())?;
                }
                Change::Intend(id, intent) => {
                    intents.insert(id, encode(intent).as_slice())?;
                }
                Change::Settle(id) => {
                    intents.remove(id)?;
                }
                Change::Mountd(identity) => {
                    meta.insert(MOUNTD_KEY, encode(identity).as_slice())?;
                }
            }
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(path: &str) -> SavedEntry {
        SavedEntry {
            source: Saved::Local {
                path: path.into(),
                identity: Some(FileIdentity {
                    dev: 1,
                    ino: 2,
                    size: 3,
                    mtime: 4,
                    mtime_nsec: 5,
                }),
            },
            share: 0,
        }
    }

    fn remote(path: &str) -> SavedEntry {
        SavedEntry {
            source: Saved::Remote {
                remote: "archive".into(),
                path: path.into(),
            },
            share: 2,
        }
    }

    /// What the store in `dir` holds, opened and closed again.
    fn reopen(dir: &Path) -> Loaded {
        let (store, loaded) = Store::open(dir).unwrap();
        store.close();
        loaded
    }

    fn submit(store: &Store, changes: Vec<Change>) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(store.submit(changes).committed()).unwrap();
    }

    #[test]
    fn round_trips_changes_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::default());
        let intent = Intent {
            name: "b.bin".into(),
            entry: remote("c/b.bin"),
            etag: "\"e\"".into(),
            size: 9,
        };
        let id = store.new_intent_id();
        submit(
            &store,
            vec![
                Change::Put("a.bin".into(), local("/home/u/a.bin")),
                Change::Put("gone.bin".into(), local("/home/u/gone.bin")),
                Change::Intend(id, intent.clone()),
                Change::Mountd(MountdIdentity {
                    pid: 7,
                    started_unix: 100,
                }),
            ],
        );
        // A batch of thousands is one submission.
        let many: Vec<Change> = (0..5000)
            .map(|i| Change::Put(format!("dir/{i:05}.bin"), remote(&format!("c/{i}"))))
            .chain([Change::Remove("gone.bin".into())])
            .collect();
        submit(&store, many);
        store.close();
        let loaded = reopen(dir.path());
        assert_eq!(loaded.entries.len(), 5001);
        assert_eq!(loaded.entries[0], ("a.bin".into(), local("/home/u/a.bin")));
        assert_eq!(
            loaded.entries[5000],
            ("dir/04999.bin".into(), remote("c/4999"))
        );
        assert_eq!(loaded.intents, vec![(id, intent)]);
        assert_eq!(
            loaded.mountd,
            Some(MountdIdentity {
                pid: 7,
                started_unix: 100
            })
        );
        // Intent ids go on from the highest saved.
        let (store, _) = Store::open(dir.path()).unwrap();
        assert!(store.new_intent_id() > id);
        submit(&store, vec![Change::Settle(id)]);
        store.close();
        assert!(reopen(dir.path()).intents.is_empty());
    }

    #[test]
    fn the_store_is_private_and_never_opened_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        Store::open(dir.path()).unwrap().0.close();
        let mode = std::fs::metadata(dir.path().join(STORE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("target");
        let linked = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&target, linked.path().join(STORE_FILE)).unwrap();
        let e = Store::open(linked.path()).err().expect("refused");
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(!target.exists(), "nothing created through the link");
    }

    #[test]
    fn a_second_control_plane_on_the_same_dir_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap();
        let e = Store::open(dir.path()).err().expect("refused");
        assert!(e.to_string().contains("another control plane"), "{e}");
        first.0.close();
    }

    #[test]
    fn a_corrupt_store_is_set_aside_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        let garbage = vec![0x5a; 64 << 10];
        std::fs::write(&path, &garbage).unwrap();
        let (store, loaded) = Store::open(dir.path()).unwrap();
        assert_eq!(loaded, Loaded::default());
        let bad = dir.path().join(format!("{STORE_FILE}.bad"));
        assert_eq!(std::fs::read(&bad).unwrap(), garbage, "kept as it was");
        // The fresh store works.
        submit(&store, vec![Change::Put("a.bin".into(), local("/a"))]);
        store.close();
        assert_eq!(reopen(dir.path()).entries.len(), 1);
    }

    #[test]
    fn the_old_state_file_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let legacy = dir.path().join(LEGACY_FILE);
        // As the JSON version wrote it: pretty, with a private local file of before
        // identities were saved, a shared remote object and the mount daemon.
        std::fs::write(
            &legacy,
            r#"{
  "entries": {
    "a.bin": {"kind": "local", "path": "/home/u/a.bin"},
    "dir/b.bin": {"kind": "remote", "remote": "archive", "path": "c/b.bin", "share": 2}
  },
  "mountd": {"pid": 7, "started_unix": 100}
}"#,
        )
        .unwrap();
        let loaded = reopen(dir.path());
        assert_eq!(
            loaded.entries,
            vec![
                (
                    "a.bin".to_string(),
                    SavedEntry {
                        source: Saved::Local {
                            path: "/home/u/a.bin".into(),
                            identity: None
                        },
                        share: 0,
                    }
                ),
                ("dir/b.bin".to_string(), remote("c/b.bin")),
            ],
            "no identity, and private: what entries from before both were"
        );
        assert_eq!(loaded.mountd.map(|m| m.pid), Some(7));
        assert!(!legacy.exists());
        assert!(dir.path().join("control-state.json.migrated").exists());
        // Once: an entry removed after the migration stays removed.
        let (store, _) = Store::open(dir.path()).unwrap();
        submit(&store, vec![Change::Remove("a.bin".into())]);
        store.close();
        assert_eq!(reopen(dir.path()).entries.len(), 1);

        // A corrupt old file is set aside, as before.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join(LEGACY_FILE), "{not json").unwrap();
        assert_eq!(reopen(other.path()), Loaded::default());
        assert!(other.path().join("control-state.bad").exists());
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
