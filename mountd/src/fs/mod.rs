//! The filesystem core: namespace, open handles, read-ahead policy and the read path,
//! independent of FUSE (the `fuse` module is a thin adapter over it, and the gRPC service
//! uses it to stage entries), so it is testable without a mount.
//!
//! Locks (none is ever held across I/O, and none is held while calling out of this crate):
//! - `namespace`: tree bookkeeping; `files` and `dirs`: handle tables; a directory
//!   handle's `cursors`. Each is taken alone, never two at once, and the namespace lock
//!   only for O(log n) work or a bounded page (statfs keeps running totals; readdir pages).
//! - a handle's `readahead`, then a store's state lock (see `store`), under which only a
//!   parked read's reply slot is looked at (`reads`, a leaf). Metadata ops never take a
//!   store lock (the fetched-byte count they report is an atomic).
//! - a shard of the read table and a read's reply slot (`reads`), each taken alone; under
//!   a reply slot only the op registry's shard (a leaf).
//! - an object's `fetch_spans` (only while spans are exported) is a leaf, taken alone.
//!
//! Every operation here returns promptly: metadata is in memory, present data is a pread
//! of the page cache, and missing data parks the read (see `store`).
//!
//! Every read that reaches [`Fs::read`] ends exactly once: it is registered in the read
//! table first (an interrupt that came before it answers it there), and every path that
//! can answer it (page cache, blocking pool, the fetch that brings its bytes, a failed
//! fetch, its deadline, an interrupt) takes its reply through its `PendingRead`. A read
//! not answered at once gets a deadline timer on the timer runtime, a runtime of its own,
//! so that worker threads busy with store writes can never delay it. Proven by the
//! shuttle model in `reads`, the store's unit tests, and the reference test in `tests`
//! (random stage, unstage, replace, open, read, interrupt, evict and release against a
//! model, over a faulty in-memory source).

mod namespace;
#[cfg(all(test, not(feature = "shuttle")))]
mod tests;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

/// The pinned version of an object, as the API hands it in with a new entry.
pub use crate::object::Version;
use namespace::{Namespace, NodeKind};
pub use namespace::{NamespaceError, Unlinked};

use crate::FsError;
use crate::cache::Cache;
use crate::events::{Events, HandleCount};
use crate::fetch::{Fetcher, Keep};
use crate::object::Object;
use crate::reads::{DataReply, Interrupt, PendingRead, ReadTable};
use crate::store::{BackingStore, CHUNK_SIZE, MAX_FETCH_CHUNKS, ReadPlan, chunks_of};
use fusestream_shared::names;
use fusestream_shared::telemetry::TraceParent;

/// Attribute block size and the unit `statfs` reports in.
pub const BLOCK_SIZE: u32 = 4096;
/// Read-ahead window bounds for a sequential reader: the upper one grows with the
/// streams the object's remote rewards (see `fetch::parallelism`): the window is refilled
/// when half of it is consumed, so twice a fetch's worth per stream keeps every stream
/// busy, and the climb sees them all used.
const MIN_READAHEAD: u64 = 1 << 20;
const MAX_READAHEAD: u64 = 64 << 20;
const FETCH_BYTES: u64 = MAX_FETCH_CHUNKS * CHUNK_SIZE;

/// The largest read-ahead window for an object fetched by up to `streams` at once.
fn max_readahead(streams: usize) -> u64 {
    MAX_READAHEAD.max((2 * streams as u64 + 2) * FETCH_BYTES)
}
/// Reads this far past the furthest one, or this far behind it, still count as sequential
/// (see `ReadAhead`).
const SEQUENTIAL_SLACK: u64 = 1 << 20;
const REORDER_SLACK: u64 = 32 << 20;
/// Added to `Fs::handles` by an open (one more change, one more handle) and by a release
/// (one more change, and, wrapping, one handle fewer).
const HANDLE_OPENED: u64 = (1 << 32) + 1;
const HANDLE_CLOSED: u64 = (1 << 32) - 1;

#[derive(Debug, Clone)]
pub struct FsConfig {
    pub mountpoint: PathBuf,
    /// How long a read may wait for data before it fails with ETIMEDOUT.
    pub read_timeout: Duration,
    /// Bytes at the start of each newly staged file fetched at once (0: none).
    pub prefetch_head: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// Attributes of an inode, independent of FUSE's representation.
#[derive(Debug, Clone)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    /// 512-byte blocks present locally (so `du` shows what has been fetched).
    pub blocks: u64,
    pub perm: u16,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
}

#[derive(Debug, Clone)]
pub struct DirEntry {
    pub ino: u64,
    pub kind: Kind,
    pub name: String,
}

#[derive(Debug, Clone, Copy)]
pub struct Statfs {
    pub blocks: u64,
    pub files: u64,
    pub block_size: u32,
    pub name_max: u32,
}

/// An entry to stage, as the mount API receives it.
#[derive(Debug, Clone)]
pub struct NewEntry {
    pub name: String,
    pub url: String,
    pub url_expires_unix: i64,
    pub version: Version,
    pub source: String,
    /// The staging caller's (uid, gid): the file's owner.
    pub owner: (u32, u32),
    /// Permission bits in the mount: 0400 (private), 0440 (group) or 0444 (all).
    pub mode: u16,
}

/// Who calls the management API (from the Unix socket's peer credentials). Entries belong
/// to the uid that staged them: only that uid or root may replace, remove or renew one,
/// and listings show a caller only its own (root sees all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
}

impl Caller {
    pub const ROOT: Caller = Caller { uid: 0 };

    /// Whether this caller may see or manage what `owner` staged.
    pub fn may_manage(self, owner: u32) -> bool {
        self.uid == 0 || self.uid == owner
    }
}

/// A staged entry, as the mount API reports it.
#[derive(Debug, Clone)]
pub struct EntryInfo {
    pub name: String,
    pub path: PathBuf,
    pub ino: u64,
    pub size: u64,
    pub bytes_fetched: u64,
    pub open_handles: u32,
    pub source: String,
    pub etag: String,
    pub url_expires_unix: i64,
    /// Why reads fail, if they do.
    pub error: Option<FsError>,
    pub mode: u16,
    pub owner_uid: u32,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub entries: u32,
    pub open_handles: u32,
    pub bytes_fetched: u64,
    pub reads_waiting: u32,
    pub uptime: Duration,
}

/// Entries looked at per hold of the namespace lock while listing (see
/// [`Fs::entries_page`]).
const LIST_WALK_BUDGET: usize = 1024;

/// What a paged walk over the files does with one (see `Fs::files_page`).
enum Pick<T> {
    Take(T),
    Skip,
    /// Past what the walk is for: it ends here.
    End,
}

/// Why an entry could not be staged.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error(transparent)]
    Namespace(#[from] NamespaceError),
}

/// Tells the kernel to drop names it may have cached (entries are cached for a TTL).
/// Implemented over FUSE notifications by the adapter; must not be called from a FUSE
/// callback or with a core lock held (the kernel may wait on a request in that directory).
pub trait KernelCache: Send + Sync {
    fn forget_name(&self, unlinked: &Unlinked);
}

/// Most entries one `readdir` call returns (the kernel takes what fits its buffer).
const READDIR_PAGE: usize = 256;

/// An open directory. Nothing of it is copied at `opendir`: each `readdir` pages through
/// the live, name-ordered directory. The FUSE offset of each entry sent is a cookie that
/// stands for the name it follows; the cookies of the last page are kept, so the next call
/// resumes after whichever entry the kernel took last. Cookies are never reused, and 1
/// and 2 stand for `.` and `..`.
#[derive(Debug)]
struct DirHandle {
    ino: u64,
    cursors: Mutex<Cursors>,
}

#[derive(Debug, Default)]
struct Cursors {
    /// The next cookie to give (from 3).
    next: u64,
    /// The last page's cookies, with the name of the entry each follows.
    page: Vec<(u64, String)>,
}

impl Cursors {
    /// The name cookie `cookie` follows, if this handle gave it with its last page.
    fn name_before(&self, cookie: u64) -> Option<String> {
        self.page
            .iter()
            .find(|(c, _)| *c == cookie)
            .map(|(_, name)| name.clone())
    }

    /// Gives the entries of `page` after the dots their cookies and keeps them.
    fn remember(&mut self, page: &mut [(u64, DirEntry)]) {
        self.next = self.next.max(3);
        self.page.clear();
        for (offset, entry) in page.iter_mut().filter(|(o, _)| *o == 0) {
            *offset = self.next;
            self.next += 1;
            self.page.push((*offset, entry.name.clone()));
        }
    }
}

/// Sequential-read detection for one open handle.
///
/// The kernel reads ahead on its own (up to `--kernel-readahead-kib`) and hands those reads
/// to several FUSE threads, so a sequential reader's reads arrive somewhat out of order: a
/// read up to [`REORDER_SLACK`] behind the furthest one, or up to [`SEQUENTIAL_SLACK`]
/// past it, continues the run. The window is anchored at the furthest read, and read-ahead
/// starts there: what lies behind it was read already.
#[derive(Debug, Default)]
struct ReadAhead {
    /// The end of the furthest read of the current run.
    furthest: u64,
    window: u64,
}

impl ReadAhead {
    /// Records a read and returns the bytes to fetch ahead (the window at most
    /// `max_window` bytes), and whether the reader is sequential.
    fn advance(&mut self, offset: u64, len: u32, max_window: u64) -> (std::ops::Range<u64>, bool) {
        let end = offset + u64::from(len);
        let continues =
            offset <= self.furthest + SEQUENTIAL_SLACK && offset + REORDER_SLACK >= self.furthest;
        if continues {
            self.window = (self.window * 2).clamp(MIN_READAHEAD, max_window);
            self.furthest = self.furthest.max(end);
        } else {
            self.window = 0;
            self.furthest = end;
        }
        (self.furthest..self.furthest + self.window, self.window > 0)
    }
}

#[derive(Debug)]
struct FileHandle {
    object: Arc<Object>,
    readahead: Mutex<ReadAhead>,
}

pub struct Fs {
    config: FsConfig,
    namespace: Mutex<Namespace>,
    files: Mutex<HashMap<u64, Arc<FileHandle>>>,
    dirs: Mutex<HashMap<u64, Arc<DirHandle>>>,
    next_fh: AtomicU64,
    /// Open file handles of the whole mount (low 32 bits) and opens plus closes so far (high
    /// 32 bits, wrapping): one atomic, so each open and release gets its own consistent pair
    /// for its event without a lock (see `events`).
    handles: AtomicU64,
    cache: Arc<Cache>,
    fetcher: Fetcher,
    /// Where handle events go (never waits).
    events: Arc<Events>,
    /// Reads in flight, by FUSE request (interrupts find them here).
    reads: Arc<ReadTable>,
    runtime: tokio::runtime::Handle,
    /// Where read deadlines run: not `runtime`, whose workers write stores.
    timers: tokio::runtime::Handle,
    kernel_cache: OnceLock<Arc<dyn KernelCache>>,
    started: Instant,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Critical sections here do not panic midway; a poisoned lock still holds valid data.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Fs {
    pub fn new(
        config: FsConfig,
        cache: Arc<Cache>,
        fetcher: Fetcher,
        events: Arc<Events>,
        runtime: tokio::runtime::Handle,
        timers: tokio::runtime::Handle,
    ) -> Fs {
        Fs {
            config,
            namespace: Mutex::default(),
            files: Mutex::default(),
            dirs: Mutex::default(),
            next_fh: AtomicU64::new(1),
            handles: AtomicU64::new(0),
            cache,
            fetcher,
            events,
            reads: Arc::default(),
            runtime,
            timers,
            kernel_cache: OnceLock::new(),
            started: Instant::now(),
        }
    }

    /// Connects the kernel's name cache, once the FUSE session exists.
    pub fn set_kernel_cache(&self, cache: Arc<dyn KernelCache>) {
        let _ = self.kernel_cache.set(cache);
    }

    /// Invalidates `unlinked` names in the kernel and waits (asynchronously) until done,
    /// so that once a stage or unstage is answered, no process can still open the old
    /// entry through a cached name. The notifications run on a blocking thread: never on a
    /// FUSE thread, and with no lock held.
    async fn forget_in_kernel(&self, unlinked: Vec<Unlinked>) {
        let Some(cache) = self.kernel_cache.get().cloned() else {
            return;
        };
        if !unlinked.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                unlinked.iter().for_each(|u| cache.forget_name(u))
            })
            .await;
        }
    }

    pub fn config(&self) -> &FsConfig {
        &self.config
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    pub fn fetcher(&self) -> &Fetcher {
        &self.fetcher
    }

    // ----- FUSE operations -----

    pub fn lookup(&self, parent: u64, name: &str) -> Result<Attr, FsError> {
        let mut ns = lock(&self.namespace);
        let node = ns.lookup(parent, name)?;
        Ok(attr_of(node))
    }

    pub fn forget(&self, ino: u64, nlookup: u64) {
        lock(&self.namespace).forget(ino, nlookup);
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr, FsError> {
        let ns = lock(&self.namespace);
        ns.get(ino).map(attr_of).ok_or(FsError::NotFound)
    }

    /// Checks `ino` exists and that `write` access is not asked for.
    pub fn access(&self, ino: u64, write: bool) -> Result<(), FsError> {
        self.getattr(ino)?;
        if write {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    pub fn statfs(&self) -> Statfs {
        let totals = lock(&self.namespace).totals();
        let blocks = totals.bytes.div_ceil(u128::from(BLOCK_SIZE));
        Statfs {
            blocks: u64::try_from(blocks).unwrap_or(u64::MAX),
            files: totals.files,
            block_size: BLOCK_SIZE,
            name_max: fusestream_shared::names::NAME_MAX as u32,
        }
    }

    /// Opens a file for reading. No network or disk I/O (a store's file is created by the
    /// first fetch).
    pub fn open(&self, ino: u64, write: bool) -> Result<u64, FsError> {
        if write {
            return Err(FsError::ReadOnly);
        }
        let object = match lock(&self.namespace).get(ino).map(|n| &n.kind) {
            Some(NodeKind::File { object }) => object.clone(),
            Some(NodeKind::Dir { .. }) => return Err(FsError::IsADirectory),
            None => return Err(FsError::NotFound),
        };
        object.opened();
        let count = count_handle(&self.handles, HANDLE_OPENED);
        self.events.handle_opened(&object.name, object.uid, count);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = Arc::new(FileHandle {
            object,
            readahead: Mutex::default(),
        });
        lock(&self.files).insert(fh, handle);
        Ok(fh)
    }

    /// Reads `size` bytes at `offset` for FUSE request `unique`. Answers `reply` now if the
    /// data is present; otherwise parks it with the store, starts the fetches and returns.
    pub fn read(&self, unique: u64, fh: u64, offset: u64, size: u32, reply: Box<dyn DataReply>) {
        let read = match self.reads.begin(unique, reply) {
            Ok(read) => read,
            Err(interrupted) => return interrupted.error(FsError::Interrupted),
        };
        // A statement of its own, so the table lock is released before any reply.
        let handle = lock(&self.files).get(&fh).cloned();
        let Some(handle) = handle else {
            read.error(FsError::BadHandle);
            return;
        };
        let object = &handle.object;
        if offset >= object.size() || size == 0 {
            read.data(&[]);
            return;
        }
        let len = u64::from(size).min(object.size() - offset) as u32;
        let max_window = max_readahead(object.fetch_gate.limit());
        let (readahead, sequential) = lock(&handle.readahead).advance(offset, len, max_window);
        // A sequential reader's bytes are kept in memory until read (see `store::memory`).
        let keep = if sequential { Keep::Memory } else { Keep::File };
        // Fetches are parented on the read's place in the trace, and fetches already
        // running for these bytes (the read will share them) are linked now. The span is
        // let go of before the read can be answered (a read ends with its reply).
        let cause = match read.span() {
            Some(read_span) => {
                object.link_running_fetches(&read_span, chunks_of(offset, len));
                TraceParent::of(&read_span)
            }
            None => TraceParent::of(&tracing::Span::none()),
        };
        let (plan, fetches) = object
            .store
            .read(offset, len, readahead, &object.source, &read);
        for &chunks in &fetches {
            self.fetcher.start(object.clone(), chunks, &cause, keep);
        }
        match plan {
            ReadPlan::Ready(source) => {
                if !BackingStore::answer_if_cached(&source, offset, len, &read) {
                    // Not in the page cache: the disk read happens off this FUSE thread.
                    self.arm_deadline(&read);
                    let read = read.clone();
                    self.runtime
                        .spawn_blocking(move || BackingStore::answer(&source, offset, len, &read));
                }
            }
            ReadPlan::Parked { waiting_for } => {
                read.waiting(waiting_for);
                self.arm_deadline(&read);
            }
            ReadPlan::Failed(error) => {
                read.error(error);
            }
        }
    }

    /// Fails `read` with ETIMEDOUT if it is still unanswered after the read timeout. The
    /// timer runs on the timer runtime and ends as soon as the read is answered.
    fn arm_deadline(&self, read: &Arc<PendingRead>) {
        let timeout = self.config.read_timeout;
        let read = read.clone();
        self.timers.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(timeout) => {
                    read.error(FsError::TimedOut(timeout));
                }
                () = read.until_answered() => {}
            }
        });
    }

    /// FUSE_INTERRUPT of request `unique`: its read is answered with EINTR, now or, if it
    /// has not arrived yet, when it does. Never fails.
    pub fn interrupt(&self, unique: u64) -> Interrupt {
        self.reads.interrupt(unique)
    }

    pub fn release(&self, fh: u64) {
        // A statement of its own, so the table lock is released before the event.
        let handle = lock(&self.files).remove(&fh);
        if let Some(handle) = handle {
            if handle.object.closed() == 0 {
                // The kernel's page cache has what was read: streamed chunks can go (freed
                // off this FUSE thread: hundreds of MiB may be unmapped).
                let object = handle.object.clone();
                self.runtime
                    .spawn_blocking(move || object.store.drop_memory());
            }
            let count = count_handle(&self.handles, HANDLE_CLOSED);
            self.events
                .handle_closed(&handle.object.name, handle.object.uid, count);
        }
    }

    /// All open file handles of the mount (unstaged entries still open included), with the
    /// change number of the last open or release, for a subscriber to start from.
    pub fn handle_count(&self) -> HandleCount {
        HandleCount::unpack(self.handles.load(Ordering::Relaxed))
    }

    /// Opens directory `ino`. Nothing is copied: `readdir` pages through the live
    /// directory (see [`DirHandle`]).
    pub fn opendir(&self, ino: u64) -> Result<u64, FsError> {
        match lock(&self.namespace).get(ino).map(|n| n.is_dir()) {
            Some(true) => {}
            Some(false) => return Err(FsError::NotADirectory),
            None => return Err(FsError::NotFound),
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let handle = DirHandle {
            ino,
            cursors: Mutex::default(),
        };
        lock(&self.dirs).insert(fh, Arc::new(handle));
        Ok(fh)
    }

    /// The next page (at most [`READDIR_PAGE`] entries) of directory handle `fh`, from the
    /// FUSE `offset` the kernel gives (0, or one this handle gave), each entry with the
    /// offset of the one after it. Entries are in name order and read live, so a listing
    /// in several calls resumes after the last name the kernel took, whatever was staged
    /// or removed meanwhile (POSIX leaves it open whether those show). Work under the
    /// namespace lock is O(log n + page), whatever the directory's size.
    pub fn readdir(&self, fh: u64, offset: u64) -> Result<Vec<(u64, DirEntry)>, FsError> {
        let handle = lock(&self.dirs)
            .get(&fh)
            .cloned()
            .ok_or(FsError::BadHandle)?;
        // Where to start: the dots, or after the name the offset stands for.
        let after: Option<Option<String>> = match offset {
            0..=2 => Some(None),
            cookie => lock(&handle.cursors).name_before(cookie).map(Some),
        };
        // An offset this handle did not give (an old seekdir): the listing ends there.
        let Some(after) = after else {
            return Ok(Vec::new());
        };
        let mut page = Vec::new();
        {
            let ns = lock(&self.namespace);
            let Some(node) = ns.get(handle.ino) else {
                return Ok(Vec::new()); // the directory went away with its last entry
            };
            let NodeKind::Dir { children } = &node.kind else {
                return Err(FsError::NotADirectory);
            };
            let dir = |ino, name: &str| DirEntry {
                ino,
                kind: Kind::Dir,
                name: name.into(),
            };
            if offset == 0 {
                page.push((1, dir(handle.ino, ".")));
            }
            if offset <= 1 {
                page.push((2, dir(node.parent, "..")));
            }
            let from = match &after {
                None => Bound::Unbounded,
                Some(name) => Bound::Excluded(name.as_str()),
            };
            let rest = children
                .range::<str, _>((from, Bound::Unbounded))
                .filter_map(|(name, child)| {
                    let child = ns.get(*child)?;
                    let kind = if child.is_dir() {
                        Kind::Dir
                    } else {
                        Kind::File
                    };
                    Some((
                        0,
                        DirEntry {
                            ino: child.ino,
                            kind,
                            name: name.clone(),
                        },
                    ))
                })
                .take(READDIR_PAGE);
            page.extend(rest);
        }
        lock(&handle.cursors).remember(&mut page);
        Ok(page)
    }

    pub fn releasedir(&self, fh: u64) {
        lock(&self.dirs).remove(&fh);
    }

    // ----- management (gRPC) -----

    /// Stages `entry`: creates its backing store (no file yet: the first fetch opens it),
    /// puts it in the tree and starts fetching its head. Once this
    /// returns, no process can still open an entry it replaced through a cached name.
    /// Replacing is allowed only over an entry the new one's owner may manage.
    pub async fn stage(&self, entry: NewEntry, replace: bool) -> Result<EntryInfo, StageError> {
        let store = BackingStore::new(self.cache.home().clone(), entry.version.size);
        let object = Arc::new(Object::new(
            entry.name.clone(),
            entry.version,
            entry.source,
            (entry.url, entry.url_expires_unix),
            entry.owner,
            entry.mode,
            store,
        ));
        let caller = Caller { uid: entry.owner.0 };
        let (ino, replaced) =
            lock(&self.namespace).insert(&entry.name, object.clone(), replace, |existing| {
                caller.may_manage(existing.uid)
            })?;
        self.prefetch_head(&object);
        self.forget_in_kernel(replaced.into_iter().collect()).await;
        Ok(self.info(entry.name, ino, &object))
    }

    /// Starts fetching the head of a newly staged `object` (see `FsConfig::prefetch_head`;
    /// at most one fetch's worth), traced as part of the staging request, if a fetch slot
    /// is free (see `Fetcher::try_prefetch`). Never waits; skipped or failed, the first
    /// read fetches the head itself.
    fn prefetch_head(&self, object: &Arc<Object>) {
        let head = self.config.prefetch_head.min(object.size());
        if head == 0 {
            return;
        }
        let cause = TraceParent::of(&tracing::Span::current());
        let head = chunks_of(0, head.min(MAX_FETCH_CHUNKS * CHUNK_SIZE) as u32);
        let started = self
            .fetcher
            .try_prefetch(object.clone(), &cause, || object.store.prefetch(head));
        if !started {
            tracing::debug!(name = object.name, "fetch slots busy; head not prefetched");
        }
    }

    /// Unstages `name`, if `caller` may. Open handles keep reading; the store goes with the
    /// last of them.
    pub async fn remove(&self, name: &str, caller: Caller) -> Result<(), NamespaceError> {
        let unlinked = lock(&self.namespace).remove(name, |o| caller.may_manage(o.uid))?;
        self.forget_in_kernel(unlinked).await;
        Ok(())
    }

    /// The path of inode `ino` in the mount, if it exists (for the in-flight listing).
    pub fn path_of(&self, ino: u64) -> Option<PathBuf> {
        let path = lock(&self.namespace).path(ino)?;
        Some(self.config.mountpoint.join(path))
    }

    /// Up to `limit` of the entries `caller` may see, in name order, after the entry
    /// `after` ("" for the first); and the cursor for the next page, `None` after the last.
    /// The namespace lock is held for at most [`LIST_WALK_BUDGET`] entries at a time,
    /// however many are staged and however few of them are the caller's.
    pub fn entries_page(
        &self,
        caller: Caller,
        after: &str,
        limit: usize,
    ) -> (Vec<EntryInfo>, Option<String>) {
        let (found, next) = self.files_page(after, limit, |path, ino, object| {
            if caller.may_manage(object.uid) {
                Pick::Take((path.to_string(), ino, object.clone()))
            } else {
                Pick::Skip
            }
        });
        let entries = found
            .into_iter()
            .map(|(name, ino, object)| self.info(name, ino, &object))
            .collect();
        (entries, next)
    }

    /// Up to `limit` names of the entries `owner` staged under `folder` (see
    /// `names::is_under`), in name order, after the entry `after` ("" for the first); and
    /// the cursor for the next page, `None` after the last. The walk starts at the folder
    /// and stops past it, so it costs what the folder holds, not what the mount holds;
    /// the lock is held as for [`Fs::entries_page`].
    pub fn names_under(
        &self,
        folder: &str,
        owner: u32,
        after: &str,
        limit: usize,
    ) -> (Vec<String>, Option<String>) {
        let start = if after.is_empty() {
            folder.trim_end_matches('/')
        } else {
            after
        };
        self.files_page(start, limit, |path, _, object| {
            if !names::is_under(path, folder) {
                Pick::End
            } else if object.uid == owner {
                Pick::Take(path.to_string())
            } else {
                Pick::Skip
            }
        })
    }

    /// Up to `limit` of what `pick` takes of the files after `after`, in path order, and
    /// the cursor for the next page (`None` once the walk reached the end, or `pick`
    /// ended it). The namespace lock is held for at most [`LIST_WALK_BUDGET`] files at a
    /// time.
    fn files_page<T>(
        &self,
        after: &str,
        limit: usize,
        mut pick: impl FnMut(&str, u64, &Arc<Object>) -> Pick<T>,
    ) -> (Vec<T>, Option<String>) {
        let mut found = Vec::new();
        let mut ended = false;
        let mut cursor = after.to_string();
        let next = loop {
            let stopped_at = lock(&self.namespace).files_after(
                &cursor,
                LIST_WALK_BUDGET,
                |path, ino, object| {
                    if found.len() == limit {
                        return false;
                    }
                    match pick(path, ino, object) {
                        Pick::Take(item) => found.push(item),
                        Pick::Skip => {}
                        Pick::End => ended = true,
                    }
                    !ended
                },
            );
            match stopped_at {
                Some(_) if ended => break None,
                Some(at) if found.len() < limit => cursor = at,
                // Full: the next page starts after the last file looked at.
                Some(at) => break Some(at),
                None => break None,
            }
        };
        (found, next)
    }

    /// Every entry `caller` may see, page by page (tests and small mounts).
    #[cfg(test)]
    pub fn entries(&self, caller: Caller) -> Vec<EntryInfo> {
        let (mut all, mut next) = self.entries_page(caller, "", usize::MAX);
        while let Some(after) = next {
            let (more, then) = self.entries_page(caller, &after, usize::MAX);
            all.extend(more);
            next = then;
        }
        all
    }

    /// The owner of the file at `ino`, if it is one.
    pub fn owner_of(&self, ino: u64) -> Option<u32> {
        match &lock(&self.namespace).get(ino)?.kind {
            NodeKind::File { object } => Some(object.uid),
            NodeKind::Dir { .. } => None,
        }
    }

    /// Renews the temp URL of `name`, if `caller` may.
    pub fn update_url(
        &self,
        name: &str,
        caller: Caller,
        url: String,
        expires_unix: i64,
    ) -> Result<(), NamespaceError> {
        let (_, object) = lock(&self.namespace)
            .file(name)
            .ok_or_else(|| NamespaceError::NotFound(name.to_string()))?;
        if !caller.may_manage(object.uid) {
            return Err(NamespaceError::NotOwner(name.to_string()));
        }
        object.set_url(url, expires_unix);
        Ok(())
    }

    pub fn status(&self) -> Status {
        // Objects only (no paths), and the sums taken outside the lock.
        let objects: Vec<Arc<Object>> = lock(&self.namespace).objects().cloned().collect();
        Status {
            entries: objects.len() as u32,
            open_handles: objects.iter().map(|o| o.open_handles()).sum(),
            bytes_fetched: objects.iter().map(|o| o.store.present_bytes()).sum(),
            reads_waiting: self.reads.in_flight() as u32,
            uptime: self.started.elapsed(),
        }
    }

    fn info(&self, name: String, ino: u64, object: &Object) -> EntryInfo {
        EntryInfo {
            path: self.config.mountpoint.join(Path::new(&name)),
            name,
            ino,
            size: object.size(),
            bytes_fetched: object.store.present_bytes() + object.store.memory_bytes(),
            open_handles: object.open_handles(),
            source: object.source.clone(),
            etag: object.version.etag.clone(),
            url_expires_unix: object.url_expires_unix(),
            error: object.store.failure().or_else(|| {
                let url = object.temp_url().url;
                self.fetcher.origin_trouble(&url).map(FsError::Unavailable)
            }),
            mode: object.mode,
            owner_uid: object.uid,
        }
    }
}

/// Counts an open or a release (`delta`) in `handles` and returns the count after it.
fn count_handle(handles: &AtomicU64, delta: u64) -> HandleCount {
    HandleCount::unpack(
        handles
            .fetch_add(delta, Ordering::Relaxed)
            .wrapping_add(delta),
    )
}

fn attr_of(node: &namespace::Node) -> Attr {
    match &node.kind {
        NodeKind::File { object } => Attr {
            ino: node.ino,
            kind: Kind::File,
            size: object.size(),
            blocks: object.store.present_bytes().div_ceil(512),
            perm: object.mode,
            nlink: 1,
            uid: object.uid,
            gid: object.gid,
            mtime: object.version.last_modified.unwrap_or(node.created),
        },
        NodeKind::Dir { .. } => Attr {
            ino: node.ino,
            kind: Kind::Dir,
            size: 0,
            blocks: 0,
            perm: 0o555,
            nlink: 2,
            uid: 0,
            gid: 0,
            mtime: node.created,
        },
    }
}
