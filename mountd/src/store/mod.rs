//! The backing store of one staged object: a sparse temp file plus a map of which chunks
//! are present, which are being fetched, and which reads are parked waiting for them.
//!
//! Design (the rules that keep FUSE callbacks from ever blocking):
//! - The state lock guards only bitmaps and the parked list. It is never held across file
//!   or network I/O, and the only lock taken while holding it is the op registry's
//!   (`ops`, a leaf: a parked reply records what it waits for, `DataReply::waiting`).
//! - A read whose chunks are all present is answered by its caller with a pread of the
//!   temp file if the page cache has the bytes (RWF_NOWAIT), else on a blocking thread:
//!   a FUSE callback never waits for the disk. A read with a missing chunk gives its
//!   [`PendingRead`] to the store ("parks" it) and the callback returns; whoever completes
//!   the chunk answers it (unless its deadline or an interrupt did first: see `reads`).
//! - Deciding what to fetch happens under the same lock as parking, so a chunk is fetched
//!   by exactly one fetch at a time and concurrent readers of a range share it.
//! - Eviction swaps the whole file for an empty one. A read judged ready, or completed by
//!   a fetch, carries the [`StoreFile`] it was judged against (taken under the same lock),
//!   so it reads the bytes that were present, never the fresh file's zeros, however the
//!   eviction interleaves. The last holder of a replaced file closes it on the closer
//!   thread, never on a FUSE thread.
//! - Which chunks are present or being fetched is a [`ChunkSet`] of runs: memory follows
//!   what was fetched, never the size a remote declared.
//!
//! Proven by: the unit tests below (parking, sharing, abandon, poison, the page-cache-only
//! answer, eviction between judging and reading), the shuttle model below (every
//! interleaving of a read, its completing fetch, an eviction and an interrupt answers
//! once with fetched bytes), and the core's reference test (`fs::tests`).
//!
//! The temp file is created unnamed (O_TMPFILE where available) in the cache directory:
//! it disappears with the last descriptor, even if the daemon is killed. Closing it can
//! take long (the kernel frees its page cache: tens of ms per GiB), so it is never closed
//! on the thread that lets go of it: [`close_later`] hands it to a background thread, which
//! runs at the lowest priority so that freeing old stores never slows current reads.

mod chunks;
mod memory;

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Instant;

pub use chunks::ChunkSet;
pub use memory::{ChunkAssembler, Received, Source, StreamChunk, StreamMemory};

use crate::FsError;
use crate::reads::PendingRead;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, MutexGuard, lock};

/// Unit of presence tracking and fetching.
pub const CHUNK_SIZE: u64 = 128 * 1024;
/// Longest single fetch; a longer range is split so it can be fetched in parallel.
pub const MAX_FETCH_CHUNKS: u64 = 64; // 8 MiB

/// A half-open range of chunk indices, `first..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRange {
    pub first: u64,
    pub end: u64,
}

impl ChunkRange {
    pub fn overlaps(&self, other: &ChunkRange) -> bool {
        self.first < other.end && other.first < self.end
    }
}

/// A read waiting for chunks to arrive.
#[derive(Debug)]
pub struct ParkedRead {
    pub offset: u64,
    pub len: u32,
    pub read: Arc<PendingRead>,
}

impl ParkedRead {
    fn chunks(&self) -> ChunkRange {
        chunks_of(self.offset, self.len)
    }
}

/// The store's file as a reader holds it. Eviction replaces the store's file; readers
/// that hold the old one go on reading it, and whichever holder lets go last closes it
/// on the closer thread (see [`close_later`]).
#[derive(Debug, Clone)]
pub struct StoreFile(Option<Arc<File>>);

impl StoreFile {
    fn new(file: File) -> StoreFile {
        StoreFile(Some(Arc::new(file)))
    }

    fn get(&self) -> &File {
        self.0.as_deref().expect("only taken on drop")
    }
}

impl Drop for StoreFile {
    fn drop(&mut self) {
        // `into_inner` gives the file to exactly one of the holders dropping concurrently.
        if let Some(file) = self.0.take().and_then(Arc::into_inner) {
            close_later(file);
        }
    }
}

/// Where stores keep what they fetch: the directory of their files, and the memory
/// budget of sequential streams (see `memory`). One per daemon, shared by every store.
#[derive(Debug)]
pub struct StoreHome {
    pub dir: std::path::PathBuf,
    pub memory: StreamMemory,
}

/// What the caller of [`BackingStore::read`] does next.
#[derive(Debug)]
pub enum ReadPlan {
    /// All data is present there: read it with [`BackingStore::answer`].
    Ready(Source),
    /// The read is parked; it will be answered when the data arrives or the read fails.
    /// It waits for what `waiting_for` says (for the in-flight listing).
    Parked { waiting_for: String },
    /// The store can not serve reads (e.g. the object changed).
    Failed(FsError),
}

/// Parked reads whose data is now present, each with where its bytes are.
#[derive(Debug, Default)]
#[must_use = "completed reads must be answered (BackingStore::answer_all)"]
pub struct Completed {
    reads: Vec<(ParkedRead, Source)>,
}

impl Completed {
    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Adds the reads `other` completed.
    pub fn extend(&mut self, other: Completed) {
        self.reads.extend(other.reads);
    }

    /// Whether answering may wait for the disk (some bytes are in the file): then it is
    /// done off the thread that receives.
    pub fn needs_file(&self) -> bool {
        self.reads.iter().any(|(_, source)| source.needs_file())
    }
}

/// The store's file and the chunks present in it: they come and go together.
#[derive(Debug)]
struct Stored {
    file: StoreFile,
    present: ChunkSet,
}

#[derive(Debug)]
struct State {
    /// The sparse file and what it holds; `None` until the first fetch writes (an entry
    /// costs no descriptor until it is read) and again once evicted (see
    /// `reset_if_idle`): a reader holding the old file still reads valid bytes.
    stored: Option<Stored>,
    /// Chunks of sequential streams held in memory instead (see `memory`), each exactly
    /// the chunk's bytes. A chunk is present if it is here or in the file.
    memory: BTreeMap<u64, StreamChunk>,
    inflight: ChunkSet,
    /// The end (chunk index) of the furthest read so far: read-ahead planned for a read
    /// that arrives after it (the kernel's reads of one stream come on several threads)
    /// starts there, so chunks another read consumed meanwhile are not fetched again.
    furthest_read: u64,
    parked: Vec<ParkedRead>,
    /// Set once reads can never succeed again; every read fails with it.
    poisoned: Option<FsError>,
}

impl State {
    /// Whether chunk `i` is neither present nor being fetched: a fetch may claim it.
    fn missing(&self, i: u64) -> bool {
        !self.is_present(i) && !self.inflight.contains(i)
    }

    fn is_present(&self, i: u64) -> bool {
        self.memory.contains_key(&i) || self.stored.as_ref().is_some_and(|s| s.present.contains(i))
    }

    /// The first chunk of `range` that is neither present nor being fetched. Skips runs
    /// (of the read-ahead window, thousands of chunks) a run at a time, not a lookup per
    /// chunk: it is asked on every read.
    fn first_missing(&self, range: std::ops::Range<u64>) -> Option<u64> {
        let mut i = range.start;
        while i < range.end {
            let run_end = self
                .inflight
                .run_end(i)
                .or_else(|| self.stored.as_ref()?.present.run_end(i))
                .or_else(|| {
                    let in_memory = self.memory.range(i..range.end).map(|(&k, _)| k);
                    let end = (i..).zip(in_memory).take_while(|(i, k)| i == k).count() as u64;
                    (end > 0).then_some(i + end)
                });
            match run_end {
                Some(end) => i = end,
                None => return Some(i),
            }
        }
        None
    }

    fn all_present(&self, range: std::ops::Range<u64>) -> bool {
        range.into_iter().all(|i| self.is_present(i))
    }

    /// Where the bytes of `range` are, if every chunk of it is present.
    fn source_for(&self, range: std::ops::Range<u64>) -> Option<Source> {
        let mut memory = Vec::new();
        let mut needs_file = false;
        for i in range {
            if let Some(chunk) = self.memory.get(&i) {
                memory.push((i, chunk.clone()));
            } else if self.stored.as_ref()?.present.contains(i) {
                needs_file = true;
            } else {
                return None;
            }
        }
        let file = match needs_file {
            true => Some(self.stored.as_ref()?.file.clone()),
            false => None,
        };
        Some(Source { file, memory })
    }

    fn present_in(&self, range: std::ops::Range<u64>) -> u64 {
        let in_file = self
            .stored
            .as_ref()
            .map_or(0, |s| s.present.count_in(range.clone()));
        in_file + self.memory.range(range).count() as u64
    }

    /// Whether a parked read still waits for chunk `i`.
    fn awaited(&self, i: u64) -> bool {
        self.parked.iter().any(|p| {
            let c = p.chunks();
            c.first <= i && i < c.end && !p.read.is_answered()
        })
    }

    /// Removes and returns the parked reads whose chunk range satisfies `pred`. Reads
    /// answered meanwhile by another path (deadline, interrupt) are dropped on the way.
    fn take_parked_where(&mut self, pred: impl Fn(ChunkRange, &State) -> bool) -> Vec<ParkedRead> {
        let (taken, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .filter(|p| !p.read.is_answered())
            .partition(|p| pred(p.chunks(), self));
        self.parked = waiting;
        taken
    }
}

#[derive(Debug)]
pub struct BackingStore {
    /// Where its file is created, once needed, and the memory budget its stream chunks
    /// count against (std's `Arc`: shared with the cache).
    home: std::sync::Arc<StoreHome>,
    size: u64,
    /// Bytes present in the file, readable without the lock (getattr, listings, the
    /// cache's disk budget read it).
    present_bytes: AtomicU64,
    /// Bytes held in memory chunks.
    memory_bytes: AtomicU64,
    /// When it was last read, in ms since the process started (for eviction order).
    last_read_ms: AtomicU64,
    state: Mutex<State>,
}

/// Milliseconds since this process first asked.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Closes `file` on a background thread. Never waits.
fn close_later(file: File) {
    static CLOSER: OnceLock<Option<std::sync::mpsc::Sender<File>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<File>();
        let spawned = std::thread::Builder::new()
            .name("store-closer".into())
            .spawn(move || {
                lower_priority();
                rx.into_iter().for_each(drop)
            });
        spawned.ok().map(|_| tx)
    });
    match closer {
        // Unbounded: a send never blocks.
        Some(tx) => {
            let _ = tx.send(file);
        }
        None => drop(file), // no thread could be started: close here, as a last resort
    }
}

/// Makes the calling thread yield the CPU to everything else: freeing a replaced store's
/// page cache (about 0.1 s of CPU per GiB) must not slow reads that are streaming now.
/// Nice 19, not SCHED_IDLE, so it still progresses on a machine that is never idle.
fn lower_priority() {
    // On Linux, PRIO_PROCESS with 0 is the calling thread alone.
    #[cfg(target_os = "linux")]
    // SAFETY: plain syscall on the calling thread; failure only leaves the priority as is.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, 0, 19);
    }
}

/// Whether a read of the store may wait for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// Fills `buf` from `file` at `offset`. With [`Wait::No`], reads only from the page cache
/// (RWF_NOWAIT) and returns `Ok(false)` if that would need the disk. Where the kernel can
/// not tell (not Linux, or a file system without RWF_NOWAIT), every read counts as one that
/// would wait.
fn read_at(file: &File, buf: &mut [u8], offset: u64, wait: Wait) -> io::Result<bool> {
    if wait == Wait::Yes {
        return file.read_exact_at(buf, offset).map(|()| true);
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::fd::AsRawFd;
        let mut done = 0;
        while done < buf.len() {
            let iov = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: buf.len() - done,
            };
            // SAFETY: one iovec over the unfilled part of `buf`, which outlives the call.
            let n = unsafe {
                libc::preadv2(
                    file.as_raw_fd(),
                    &iov,
                    1,
                    (offset + done as u64) as libc::off_t,
                    libc::RWF_NOWAIT,
                )
            };
            match n {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n if n > 0 => done += n as usize,
                _ => {
                    let error = io::Error::last_os_error();
                    match error.raw_os_error() {
                        Some(libc::EAGAIN | libc::EOPNOTSUPP) => return Ok(false),
                        Some(libc::EINTR) => continue,
                        _ => return Err(error),
                    }
                }
            }
        }
        Ok(true)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    Ok(false)
}

/// The chunks that bytes `offset..offset + len` touch.
pub fn chunks_of(offset: u64, len: u32) -> ChunkRange {
    ChunkRange {
        first: offset / CHUNK_SIZE,
        end: (offset + u64::from(len)).div_ceil(CHUNK_SIZE),
    }
}

impl BackingStore {
    /// An empty store of `size` bytes whose file will be created in `dir` when the first
    /// fetch needs it (see [`BackingStore::open`]). No I/O; memory does not depend on
    /// `size`.
    pub fn new(home: std::sync::Arc<StoreHome>, size: u64) -> BackingStore {
        BackingStore {
            home,
            size,
            present_bytes: AtomicU64::new(0),
            memory_bytes: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(now_ms()),
            state: Mutex::new(State {
                stored: None,
                memory: BTreeMap::new(),
                furthest_read: 0,
                inflight: ChunkSet::default(),
                parked: Vec::new(),
                poisoned: None,
            }),
        }
    }

    /// Makes sure the store has a file for fetched bytes, creating it if it has none.
    /// Returns whether it created one (the caller tells the cache, which bounds how many
    /// stores are open). Disk I/O outside the lock: called by fetches, never on a FUSE
    /// thread. A fetch calls it before writing; the chunks it holds in flight keep the
    /// file from being evicted until it completes them.
    pub fn open(&self) -> io::Result<bool> {
        if self.lock().stored.is_some() {
            return Ok(false);
        }
        let file = Self::empty_file(&self.home.dir, self.size)?;
        let mut state = self.lock();
        if state.stored.is_some() {
            drop(state);
            close_later(file); // another fetch was first
            return Ok(false);
        }
        state.stored = Some(Stored {
            file: StoreFile::new(file),
            present: ChunkSet::default(),
        });
        Ok(true)
    }

    /// Whether the store holds a file (and so a descriptor) now.
    pub fn is_open(&self) -> bool {
        self.lock().stored.is_some()
    }

    /// An unnamed sparse file of `size` bytes in `dir`, opened so that reading it never
    /// updates its access time (on ext4 that is a journal write per read). Disk I/O: never
    /// on the FUSE path.
    fn empty_file(dir: &Path, size: u64) -> io::Result<File> {
        let file = tempfile::tempfile_in(dir)?;
        file.set_len(size)?;
        no_atime(&file);
        Ok(file)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn last_read_ms(&self) -> u64 {
        self.last_read_ms.load(Ordering::Relaxed)
    }

    fn file(&self) -> io::Result<StoreFile> {
        let state = self.lock();
        let stored = state.stored.as_ref();
        stored.map(|s| s.file.clone()).ok_or_else(|| {
            // Not reached: a fetch opens the store first and its chunks keep it open.
            io::Error::other("the store has no file")
        })
    }

    /// Closes the store's file, dropping every present byte, if it has one, nothing is
    /// being fetched or waited for and `idle` (asked under the store's lock) agrees.
    /// Returns the bytes freed, or `None` if the store is busy or has no file. Readers
    /// holding the old file keep reading it; the last of them closes it (see
    /// [`StoreFile`]). The next fetch opens a fresh one.
    pub fn reset_if_idle(&self, idle: impl FnOnce() -> bool) -> Option<u64> {
        let (old, memory) = {
            let mut state = self.lock();
            if (state.stored.is_none() && state.memory.is_empty())
                || state.parked.iter().any(|p| !p.read.is_answered())
                || state.inflight.any()
                || !idle()
            {
                return None;
            }
            state.parked.clear();
            (state.stored.take(), std::mem::take(&mut state.memory))
        };
        drop(old);
        self.release_memory(memory.into_values());
        Some(self.present_bytes.swap(0, Ordering::Relaxed))
    }

    /// Gives the memory of `chunks` (taken out of the state) back to the budget.
    fn release_memory(&self, chunks: impl Iterator<Item = StreamChunk>) {
        let bytes: u64 = chunks.map(|c| c.len() as u64).sum();
        if bytes > 0 {
            self.memory_bytes.fetch_sub(bytes, Ordering::Relaxed);
            self.home.memory.give_back(bytes);
        }
    }

    /// Lets go of the memory chunks no parked read waits for (the object was closed:
    /// the kernel's page cache has what was read). Never waits.
    pub fn drop_memory(&self) {
        let dropped: BTreeMap<u64, StreamChunk> = {
            let mut state = self.lock();
            let all = std::mem::take(&mut state.memory);
            let (kept, dropped) = all.into_iter().partition(|(i, _)| state.awaited(*i));
            state.memory = kept;
            dropped
        };
        // Freed outside the lock.
        self.release_memory(dropped.into_values());
    }

    /// Lets go of the memory chunks a read of `offset..offset + len` consumed to their
    /// end, unless a parked read still waits for them. Called under the lock.
    fn consume(&self, state: &mut State, offset: u64, len: u32) {
        if state.memory.is_empty() {
            return;
        }
        let end = offset + u64::from(len);
        let range = chunks_of(offset, len);
        let done: Vec<u64> = state
            .memory
            .range(range.first..range.end)
            .map(|(&i, chunk)| (i, i * CHUNK_SIZE + chunk.len() as u64))
            .filter(|&(i, chunk_end)| end >= chunk_end && !state.awaited(i))
            .map(|(i, _)| i)
            .collect();
        let released = done.iter().filter_map(|i| state.memory.remove(i));
        self.release_memory(released);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Bytes present in the store. Lock-free.
    pub fn present_bytes(&self) -> u64 {
        self.present_bytes.load(Ordering::Relaxed)
    }

    /// Why every read fails, if it does (see [`BackingStore::poison`]).
    pub fn failure(&self) -> Option<FsError> {
        self.lock().poisoned.clone()
    }

    /// Starts a read of `len` bytes at `offset` (already clamped to the object size).
    /// Chunks in `readahead` (bytes; from the reader's furthest read on) may be fetched
    /// ahead. Returns what to do with
    /// the read and the chunk ranges the caller must fetch (now marked in flight). `label`
    /// names the object in what a parked read says it waits for.
    pub fn read(
        &self,
        offset: u64,
        len: u32,
        readahead: std::ops::Range<u64>,
        label: &str,
        read: &Arc<PendingRead>,
    ) -> (ReadPlan, Vec<ChunkRange>) {
        let needed = chunks_of(offset, len);
        self.last_read_ms.store(now_ms(), Ordering::Relaxed);
        let mut state = self.lock();
        if let Some(error) = &state.poisoned {
            return (ReadPlan::Failed(error.clone()), Vec::new());
        }
        let fetches = self.plan_fetches(&mut state, needed, readahead);
        let range = needed.first..needed.end;
        if let Some(source) = state.source_for(range.clone()) {
            self.consume(&mut state, offset, len);
            return (ReadPlan::Ready(source), fetches);
        }
        let missing = (range.end - range.start) - state.present_in(range.clone());
        let waiting_for = format!(
            "bytes {offset}..{} of {label} ({missing} of {} chunks being fetched)",
            offset + u64::from(len),
            range.end - range.start
        );
        // Reads answered by another path (deadline, interrupt) leave with the next park.
        state.parked.retain(|p| !p.read.is_answered());
        state.parked.push(ParkedRead {
            offset,
            len,
            read: read.clone(),
        });
        (ReadPlan::Parked { waiting_for }, fetches)
    }

    /// Marks the first run of chunks of `wanted` that are neither present nor being fetched
    /// (at most one fetch's worth) in flight and returns it, for the caller to fetch; no
    /// read waits for it yet.
    pub fn prefetch(&self, wanted: ChunkRange) -> Option<ChunkRange> {
        let mut state = self.lock();
        if state.poisoned.is_some() {
            return None;
        }
        let first = (wanted.first..wanted.end).find(|&i| state.missing(i))?;
        let limit = wanted.end.min(first + MAX_FETCH_CHUNKS);
        let end = (first..limit).find(|&i| !state.missing(i)).unwrap_or(limit);
        state.inflight.insert(first..end);
        Some(ChunkRange { first, end })
    }

    /// Picks the missing chunks of `needed`, plus the missing ones of `readahead` when the
    /// fetched frontier is less than half the read-ahead window ahead of the reader (so
    /// read-ahead goes out in large requests, not one chunk per read), and marks them in
    /// flight. Read-ahead never reaches back before `readahead.start`: what lies behind
    /// the reader's furthest read was read already (a streamed chunk read is let go, and
    /// must not be fetched again for a read that arrived out of order). The chunks looked
    /// at are bounded by the read and the read-ahead window.
    fn plan_fetches(
        &self,
        state: &mut State,
        needed: ChunkRange,
        readahead: std::ops::Range<u64>,
    ) -> Vec<ChunkRange> {
        let mut wanted: Vec<u64> = (needed.first..needed.end)
            .filter(|&i| state.missing(i))
            .collect();
        let ra_end = readahead.end.min(self.size).div_ceil(CHUNK_SIZE);
        let mut ahead_from = needed.end.max(readahead.start / CHUNK_SIZE);
        if state.furthest_read < ra_end {
            ahead_from = ahead_from.max(state.furthest_read);
        }
        state.furthest_read = state.furthest_read.max(needed.end);
        if ra_end > ahead_from {
            let frontier = state.first_missing(ahead_from..ra_end).unwrap_or(ra_end);
            if (frontier - needed.end) * 2 <= ra_end - needed.end {
                wanted.extend((frontier..ra_end).filter(|&i| state.missing(i)));
            }
        }
        let mut ranges: Vec<ChunkRange> = Vec::new();
        for i in wanted {
            match ranges.last_mut() {
                Some(r) if r.end == i && r.end - r.first < MAX_FETCH_CHUNKS => r.end += 1,
                _ => ranges.push(ChunkRange {
                    first: i,
                    end: i + 1,
                }),
            }
        }
        for r in &ranges {
            state.inflight.insert(r.first..r.end);
        }
        ranges
    }

    /// Answers `read` with `len` bytes at `offset` from `source`, where they are present.
    /// May wait for the disk: off FUSE threads only (see
    /// [`BackingStore::answer_if_cached`]).
    pub fn answer(source: &Source, offset: u64, len: u32, read: &PendingRead) {
        let answered = Self::answer_from(source, offset, len, read, Wait::Yes);
        debug_assert!(answered, "a read that may wait always answers");
    }

    /// Answers `read` now if the bytes (present in `file`) are in the page cache, as they
    /// nearly always are, and returns true; false if reading them needs the disk, which a
    /// FUSE callback must never wait for: the caller then answers it off its thread with
    /// [`BackingStore::answer`]. A read answered already by another path is left alone.
    #[must_use = "a read not answered here must be answered off this thread"]
    pub fn answer_if_cached(source: &Source, offset: u64, len: u32, read: &PendingRead) -> bool {
        Self::answer_from(source, offset, len, read, Wait::No)
    }

    fn answer_from(source: &Source, offset: u64, len: u32, read: &PendingRead, wait: Wait) -> bool {
        // A buffer per thread, reused: a fresh MiB per read would be a new mapping,
        // page-faulted and zeroed every time.
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        if read.is_answered() {
            return true;
        }
        if let Some(slices) = source.memory_slices(offset, len) {
            read.data(&slices);
            return true;
        }
        BUFFER.with_borrow_mut(|buf| {
            if buf.len() < len as usize {
                buf.resize(len as usize, 0);
            }
            let buf = &mut buf[..len as usize];
            match Self::gather(source, buf, offset, wait) {
                Ok(true) => read.data(&[io::IoSlice::new(buf)]),
                Ok(false) => return false,
                Err(e) => read.error(FsError::Store(format!("read: {e}"))),
            };
            true
        })
    }

    /// Fills `buf` with the bytes at `offset` from `source`'s memory chunks and file;
    /// `Ok(false)` if that would wait for the disk and `wait` says not to.
    fn gather(source: &Source, buf: &mut [u8], offset: u64, wait: Wait) -> io::Result<bool> {
        let file = || {
            let file = source.file.as_ref().map(StoreFile::get);
            file.ok_or_else(|| io::Error::other("a present chunk is in neither memory nor file"))
        };
        if source.memory.is_empty() {
            return read_at(file()?, buf, offset, wait);
        }
        let mut done = 0;
        while done < buf.len() {
            let at = offset + done as u64;
            let (index, within) = (at / CHUNK_SIZE, (at % CHUNK_SIZE) as usize);
            let n = (CHUNK_SIZE as usize - within).min(buf.len() - done);
            let piece = &mut buf[done..done + n];
            match source.chunk(index) {
                Some(chunk) => {
                    if !chunk.copy_to(within, piece) {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
                None => {
                    if !read_at(file()?, piece, at, wait)? {
                        return Ok(false);
                    }
                }
            }
            done += n;
        }
        Ok(true)
    }

    /// Reserves disk blocks for `range` before its bytes arrive. The writes that follow then
    /// find their blocks allocated (ext4 then spends about a quarter less CPU per written byte
    /// than on a hole), and a full disk fails the fetch up front. Called by the fetcher, never
    /// under the lock. Where the file system or the system can not preallocate, this does
    /// nothing.
    pub fn allocate(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        #[cfg(target_os = "linux")]
        {
            use std::os::fd::AsRawFd;
            let file = self.file()?;
            // SAFETY: fallocate on a descriptor we own; mode 0 only allocates (the size is set).
            let rc = unsafe {
                libc::fallocate(
                    file.get().as_raw_fd(),
                    0,
                    range.start as libc::off_t,
                    (range.end - range.start) as libc::off_t,
                )
            };
            if rc != 0 {
                let error = io::Error::last_os_error();
                if error.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(error);
                }
            }
        }
        let _ = range;
        Ok(())
    }

    /// Writes fetched bytes at `offset`. Called by the fetcher, never under the lock; the
    /// chunks being written are in flight, so the file can not be swapped meanwhile.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file()?.get().write_all_at(data, offset)
    }

    /// Byte range covered by `chunks`.
    pub fn byte_range(&self, chunks: ChunkRange) -> std::ops::Range<u64> {
        chunks.first * CHUNK_SIZE..(chunks.end * CHUNK_SIZE).min(self.size)
    }

    /// Marks `chunks` present (their bytes are written) and returns the parked reads that
    /// are now complete, with the file that holds their bytes, for the caller to answer
    /// (see [`BackingStore::answer_all`]).
    pub fn complete(&self, chunks: ChunkRange) -> Completed {
        let mut state = self.lock();
        let range = chunks.first..chunks.end;
        let Some(stored) = state.stored.as_mut() else {
            // Not reached (chunks in flight keep the file open); fail rather than panic.
            drop(state);
            self.abandon(
                chunks,
                FsError::Store("the store closed during a fetch".into()),
            );
            return Completed::default();
        };
        let newly = (range.end - range.start) - stored.present.count_in(range.clone());
        let mut bytes = newly * CHUNK_SIZE;
        // Every chunk holds CHUNK_SIZE bytes but the object's last, which may hold fewer.
        let last = self.size.div_ceil(CHUNK_SIZE).saturating_sub(1);
        if range.contains(&last)
            && !stored.present.contains(last)
            && !self.size.is_multiple_of(CHUNK_SIZE)
        {
            bytes -= CHUNK_SIZE - self.size % CHUNK_SIZE;
        }
        self.present_bytes.fetch_add(bytes, Ordering::Relaxed);
        stored.present.insert(range.clone());
        state.inflight.remove(range);
        self.take_completed(&mut state, chunks)
    }

    /// Marks `chunks` present in memory (a sequential stream's fetch: see `memory`), one
    /// per chunk from `first` on, and returns the parked reads now complete. The caller
    /// took their size from the memory budget; it is given back when they go.
    pub fn complete_in_memory(&self, first: u64, chunks: Vec<StreamChunk>) -> Completed {
        let range = ChunkRange {
            first,
            end: first + chunks.len() as u64,
        };
        let mut state = self.lock();
        let mut surplus = Vec::new();
        for (i, chunk) in (first..).zip(chunks) {
            if state.is_present(i) {
                surplus.push(chunk); // not reached: the fetch held these chunks
            } else {
                self.memory_bytes
                    .fetch_add(chunk.len() as u64, Ordering::Relaxed);
                state.memory.insert(i, chunk);
            }
        }
        state.inflight.remove(range.first..range.end);
        let completed = self.take_completed(&mut state, range);
        drop(state);
        // Counted in `memory_bytes` only once inserted; the budget was taken for all.
        let surplus: u64 = surplus.iter().map(|c| c.len() as u64).sum();
        self.home.memory.give_back(surplus);
        completed
    }

    /// Takes the parked reads that `chunks` completed, with where their bytes are, and
    /// lets go of the memory chunks they consume. Under the lock.
    fn take_completed(&self, state: &mut State, chunks: ChunkRange) -> Completed {
        let taken = state.take_parked_where(|c, state| {
            c.first < chunks.end && c.end > chunks.first && state.all_present(c.first..c.end)
        });
        let reads: Vec<(ParkedRead, Source)> = taken
            .into_iter()
            .filter_map(|parked| {
                let c = parked.chunks();
                let source = state.source_for(c.first..c.end)?;
                Some((parked, source))
            })
            .collect();
        for (parked, _) in &reads {
            self.consume(state, parked.offset, parked.len);
        }
        Completed { reads }
    }

    /// Answers completed parked reads from where their bytes are.
    pub fn answer_all(completed: Completed) {
        for (parked, source) in &completed.reads {
            Self::answer(source, parked.offset, parked.len, &parked.read);
        }
    }

    /// Whether a parked read waits for chunk `i`.
    pub fn awaited(&self, i: u64) -> bool {
        self.lock().awaited(i)
    }

    /// Bytes held in memory chunks. Lock-free.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// The store's home (its file's directory and the stream memory budget).
    pub fn home(&self) -> &StoreHome {
        &self.home
    }

    /// Gives up on `chunks` (a fetch failed): clears their in-flight marks and fails the
    /// parked reads that needed them. A later read fetches them again.
    pub fn abandon(&self, chunks: ChunkRange, error: FsError) {
        let failed: Vec<ParkedRead> = {
            let mut state = self.lock();
            state.inflight.remove(chunks.first..chunks.end);
            state.take_parked_where(|c, state| {
                let overlap = c.first.max(chunks.first)..c.end.min(chunks.end);
                !overlap.is_empty() && !state.all_present(overlap)
            })
        };
        for parked in failed {
            parked.read.error(error.clone());
        }
    }

    /// Makes every current and future read fail with `error` (e.g. the object changed).
    pub fn poison(&self, error: FsError) {
        let failed = {
            let mut state = self.lock();
            state.poisoned = Some(error.clone());
            std::mem::take(&mut state.parked)
        };
        for parked in failed {
            parked.read.error(error.clone());
        }
    }
}

impl Drop for BackingStore {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.lock().memory);
        self.release_memory(memory.into_values());
    }
}

/// Asks the kernel not to update the file's access time on reads (O_NOATIME; allowed to
/// the file's owner, which the daemon is). Where it can not, reads update it as usual.
fn no_atime(file: &File) {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL on a descriptor we own; only the status flags change.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NOATIME);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = file;
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;
    use crate::reads::tests::{Answer, reply};
    use std::sync::mpsc;

    fn pending() -> (Arc<PendingRead>, mpsc::Receiver<Answer>) {
        let (r, rx) = reply();
        (PendingRead::untracked(r), rx)
    }

    fn home(dir: &tempfile::TempDir, memory: u64) -> std::sync::Arc<StoreHome> {
        std::sync::Arc::new(StoreHome {
            dir: dir.path().to_path_buf(),
            memory: StreamMemory::new(memory),
        })
    }

    fn store_in(dir: &tempfile::TempDir, size: u64) -> BackingStore {
        BackingStore::new(home(dir, 0), size)
    }

    /// Chunk `i` of an object whose byte `n` is `n % 251`.
    fn chunk_bytes(store: &BackingStore, i: u64) -> StreamChunk {
        let r = store.byte_range(ChunkRange {
            first: i,
            end: i + 1,
        });
        StreamChunk::from_bytes(r.map(|n| (n % 251) as u8).collect::<Vec<u8>>().into())
    }

    fn expected(offset: u64, len: u64) -> Vec<u8> {
        (offset..offset + len).map(|n| (n % 251) as u8).collect()
    }

    fn fill(store: &BackingStore, chunks: ChunkRange, byte: u8) {
        store.open().unwrap();
        let r = store.byte_range(chunks);
        store
            .write(r.start, &vec![byte; (r.end - r.start) as usize])
            .unwrap();
        BackingStore::answer_all(store.complete(chunks));
    }

    #[test]
    fn parks_a_missing_read_and_answers_it_when_the_chunk_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, 3 * CHUNK_SIZE + 10);
        let (r, rx) = pending();
        let (plan, fetches) = store.read(CHUNK_SIZE - 2, 4, 0..0, "test", &r);
        assert!(matches!(plan, ReadPlan::Parked { .. }));
        assert_eq!(fetches, [ChunkRange { first: 0, end: 2 }]);
        // A second reader of the same range shares the fetch.
        let (r2, rx2) = pending();
        let (_, fetches2) = store.read(CHUNK_SIZE, 1, 0..0, "test", &r2);
        assert!(fetches2.is_empty());

        fill(&store, ChunkRange { first: 1, end: 2 }, 7);
        assert!(rx.try_recv().is_err(), "chunk 0 still missing");
        assert_eq!(rx2.try_recv().unwrap().unwrap(), vec![7]);
        fill(&store, ChunkRange { first: 0, end: 1 }, 5);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![5, 5, 7, 7]);
        assert_eq!(store.present_bytes(), 2 * CHUNK_SIZE);
        assert!(store.lock().parked.is_empty());
    }

    #[test]
    fn present_data_is_ready_and_the_last_chunk_counts_its_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, CHUNK_SIZE + 10);
        fill(&store, ChunkRange { first: 0, end: 2 }, 1);
        assert_eq!(store.present_bytes(), CHUNK_SIZE + 10);
        fill(&store, ChunkRange { first: 1, end: 2 }, 1);
        assert_eq!(store.present_bytes(), CHUNK_SIZE + 10, "counted once");
        let (r, _rx) = pending();
        let (plan, fetches) = store.read(CHUNK_SIZE, 10, 0..0, "test", &r);
        assert!(matches!(plan, ReadPlan::Ready(_)) && fetches.is_empty());
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config(256))]

        /// `first_missing` (run by run) finds what a chunk-by-chunk search finds.
        #[test]
        fn first_missing_is_the_first_chunk_neither_present_nor_in_flight(
            kinds in proptest::collection::vec(0u8..4, 0..64),
            from in 0u64..64,
            len in 0u64..64,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let store = store_in(&dir, 64 * CHUNK_SIZE);
            let mut state = store.lock();
            state.stored = Some(Stored {
                file: StoreFile::new(tempfile::tempfile().unwrap()),
                present: ChunkSet::default(),
            });
            for (i, kind) in (0u64..).zip(&kinds) {
                match kind {
                    1 => state.inflight.insert(i..i + 1),
                    2 => state.stored.as_mut().unwrap().present.insert(i..i + 1),
                    3 => {
                        let chunk = StreamChunk::from_bytes(vec![0; CHUNK_SIZE as usize].into());
                        state.memory.insert(i, chunk);
                    }
                    _ => {}
                }
            }
            let range = from..from + len;
            let expected = range.clone().find(|&i| state.missing(i));
            proptest::prop_assert_eq!(state.first_missing(range), expected);
        }
    }

    #[test]
    fn an_absurd_declared_size_costs_no_memory() {
        let dir = tempfile::tempdir().unwrap();
        // Sparse files this large are refused by some file systems; the point is memory.
        let store = store_in(&dir, i64::MAX as u64);
        if store.open().is_err() {
            return;
        }
        let (r, _rx) = pending();
        let (_, fetches) = store.read(i64::MAX as u64 - 10, 10, 0..0, "test", &r);
        assert_eq!(fetches.len(), 1);
        fill(&store, fetches[0], 1);
        assert_eq!(store.present_bytes(), CHUNK_SIZE - 1);
    }

    #[test]
    fn readahead_goes_out_in_large_requests_split_at_the_fetch_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, 200 * CHUNK_SIZE);
        let (r, _rx) = pending();
        let (_, fetches) = store.read(0, 4096, 0..100 * CHUNK_SIZE, "test", &r);
        assert_eq!(
            fetches,
            [
                ChunkRange { first: 0, end: 64 },
                ChunkRange {
                    first: 64,
                    end: 100
                }
            ]
        );
        // The next read is well inside the fetched frontier: no new requests.
        let (r, _rx) = pending();
        let (_, fetches) = store.read(4096, 4096, 0..4096 + 100 * CHUNK_SIZE, "test", &r);
        assert!(fetches.is_empty());
    }

    #[test]
    fn a_late_read_of_a_stream_does_not_fetch_again_what_later_reads_consumed() {
        let dir = tempfile::tempdir().unwrap();
        let home = home(&dir, 64 * CHUNK_SIZE);
        let store = BackingStore::new(home.clone(), 64 * CHUNK_SIZE);
        // Chunks 0..16 arrive in memory; the reads of 8..16 come first and consume them.
        let (r, _rx) = pending();
        let (_, fetches) = store.read(0, CHUNK_SIZE as u32, 0..16 * CHUNK_SIZE, "t", &r);
        assert_eq!(fetches, [ChunkRange { first: 0, end: 16 }]);
        assert!(home.memory.try_take(16 * CHUNK_SIZE));
        let chunks = (0..16).map(|i| chunk_bytes(&store, i)).collect();
        BackingStore::answer_all(store.complete_in_memory(0, chunks));
        for i in 8..16 {
            let (r, _rx) = pending();
            let _ = store.read(i * CHUNK_SIZE, CHUNK_SIZE as u32, 0..0, "t", &r);
        }
        // The read of chunk 4 arrives late, its read-ahead window computed from chunk 5:
        // chunks 8..16 were read (and let go), so read-ahead starts after them.
        let (r, _rx) = pending();
        let window = 5 * CHUNK_SIZE..24 * CHUNK_SIZE;
        let (plan, fetches) = store.read(4 * CHUNK_SIZE, CHUNK_SIZE as u32, window, "t", &r);
        assert!(matches!(plan, ReadPlan::Ready(_)));
        assert!(fetches.iter().all(|f| f.first >= 16), "{fetches:?}");
    }

    #[test]
    fn abandon_fails_waiters_and_allows_a_refetch_and_poison_fails_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, 4 * CHUNK_SIZE);
        let (r, rx) = pending();
        let (_, fetches) = store.read(0, 10, 0..0, "test", &r);
        store.open().unwrap(); // as the fetch does
        store.abandon(fetches[0], FsError::Fetch("reset".into()));
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Fetch("reset".into())));
        let (r, _rx) = pending();
        let (_, again) = store.read(0, 10, 0..0, "test", &r);
        assert_eq!(again, fetches, "abandoned chunks are fetched again");

        store.poison(FsError::Changed("etag".into()));
        let (r, _rx) = pending();
        assert!(matches!(
            store.read(0, 1, 0..0, "test", &r).0,
            ReadPlan::Failed(FsError::Changed(_))
        ));
        // Released chunks leave nothing in flight: the poisoned store can be evicted.
        store.abandon(again[0], FsError::Changed("etag".into()));
        assert!(store.reset_if_idle(|| true).is_some());
    }

    #[test]
    fn a_prefetch_is_fetched_once_and_shared_by_the_reads_that_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, 4 * CHUNK_SIZE);
        let head = ChunkRange { first: 0, end: 1 };
        assert_eq!(store.prefetch(head), Some(head));
        assert_eq!(store.prefetch(head), None, "already in flight");
        let (r, rx) = pending();
        let (plan, fetches) = store.read(0, 10, 0..0, "test", &r);
        assert!(matches!(plan, ReadPlan::Parked { .. }) && fetches.is_empty());
        fill(&store, head, 9);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![9; 10]);
        assert_eq!(store.prefetch(head), None, "present");
        // Only the missing part, and never more than one fetch's worth.
        let big = store_in(&dir, 200 * CHUNK_SIZE);
        fill(&big, ChunkRange { first: 0, end: 2 }, 1);
        let all = ChunkRange { first: 0, end: 200 };
        assert_eq!(
            big.prefetch(all),
            Some(ChunkRange {
                first: 2,
                end: 2 + MAX_FETCH_CHUNKS
            })
        );
    }

    #[test]
    fn a_ready_read_is_answered_at_once_only_from_the_page_cache() {
        use std::os::fd::AsRawFd;
        // On disk: tmpfs would keep the pages whatever we advise.
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        let store = store_in(&dir, CHUNK_SIZE);
        let all = ChunkRange { first: 0, end: 1 };
        fill(&store, all, 4);
        let file = store.file().unwrap();
        let source = Source {
            file: Some(file.clone()),
            memory: Vec::new(),
        };
        // Written back first: a page that writeback holds locked is not readable without
        // waiting, which a busy disk would otherwise turn into a spurious hand-back.
        file.get().sync_all().unwrap();
        let (r, rx) = pending();
        assert!(
            BackingStore::answer_if_cached(&source, 0, 100, &r),
            "written and in the page cache"
        );
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![4; 100]);

        // Dropped from the page cache: reading needs the disk.
        // SAFETY: advice on a descriptor we own.
        let rc =
            unsafe { libc::posix_fadvise(file.get().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let (r, rx) = pending();
        assert!(
            !BackingStore::answer_if_cached(&source, 0, 100, &r),
            "handed back: the bytes are on disk only"
        );
        assert!(rx.try_recv().is_err(), "not answered yet");
        BackingStore::answer(&source, 0, 100, &r);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![4; 100]);
    }

    #[test]
    fn a_read_answered_elsewhere_is_not_answered_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, CHUNK_SIZE);
        let (r, rx) = pending();
        let (ReadPlan::Parked { .. }, fetches) = store.read(0, 1, 0..0, "test", &r) else {
            panic!()
        };
        assert!(r.error(FsError::Interrupted));
        fill(&store, fetches[0], 3);
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Interrupted));
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn eviction_never_turns_a_ready_read_into_zeros() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, CHUNK_SIZE);
        fill(&store, ChunkRange { first: 0, end: 1 }, 8);
        let (r, rx) = pending();
        let (ReadPlan::Ready(file), _) = store.read(0, 16, 0..0, "test", &r) else {
            panic!("present")
        };
        // Evicted between the judgement and the answer.
        assert_eq!(store.reset_if_idle(|| true), Some(CHUNK_SIZE));
        assert!(!store.is_open(), "eviction closes the file");
        BackingStore::answer(&file, 0, 16, &r);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![8; 16]);
        // The next read finds nothing present and fetches again.
        let (r, _rx) = pending();
        assert!(matches!(
            store.read(0, 16, 0..0, "test", &r).0,
            ReadPlan::Parked { .. }
        ));
        // Busy (a fetch in flight, a read parked) or not idle by the caller's word: kept.
        store.open().unwrap();
        assert_eq!(store.reset_if_idle(|| true), None);
        let idle = store_in(&dir, CHUNK_SIZE);
        fill(&idle, ChunkRange { first: 0, end: 1 }, 1);
        assert_eq!(idle.reset_if_idle(|| false), None);
    }

    #[test]
    fn streamed_chunks_are_answered_from_memory_and_let_go_once_read() {
        let dir = tempfile::tempdir().unwrap();
        let home = home(&dir, 3 * CHUNK_SIZE);
        let store = BackingStore::new(home.clone(), 4 * CHUNK_SIZE + 100);
        let (r, rx) = pending();
        let (ReadPlan::Parked { .. }, fetches) = store.read(0, CHUNK_SIZE as u32, 0..0, "t", &r)
        else {
            panic!("nothing present")
        };
        assert_eq!(fetches, [ChunkRange { first: 0, end: 1 }]);
        // A parked read waiting for chunk 1 too keeps it from being let go.
        let (r2, rx2) = pending();
        let across = CHUNK_SIZE - 10;
        let _ = store.read(across, 20, 0..0, "t", &r2);
        let chunks = vec![chunk_bytes(&store, 0), chunk_bytes(&store, 1)];
        assert!(home.memory.try_take(2 * CHUNK_SIZE));
        BackingStore::answer_all(store.complete_in_memory(0, chunks));
        assert_eq!(rx.try_recv().unwrap().unwrap(), expected(0, CHUNK_SIZE));
        assert_eq!(rx2.try_recv().unwrap().unwrap(), expected(across, 20));
        assert!(!store.is_open(), "no file: nothing was written");
        // Both reads reached chunk 0's end, the second chunk 1's start only.
        assert_eq!(store.memory_bytes(), CHUNK_SIZE);
        assert_eq!(home.memory.used(), CHUNK_SIZE);
        // A read of chunk 0 again is fetched again; one to chunk 1's end lets it go.
        let (r, _rx) = pending();
        assert!(matches!(
            store.read(0, 10, 0..0, "t", &r).0,
            ReadPlan::Parked { .. }
        ));
        let (r, rx) = pending();
        let (ReadPlan::Ready(source), _) = store.read(2 * CHUNK_SIZE - 8, 8, 0..0, "t", &r) else {
            panic!("present in memory")
        };
        assert!(!source.needs_file());
        BackingStore::answer(&source, 2 * CHUNK_SIZE - 8, 8, &r);
        assert_eq!(
            rx.try_recv().unwrap().unwrap(),
            expected(2 * CHUNK_SIZE - 8, 8)
        );
        assert_eq!((store.memory_bytes(), home.memory.used()), (0, 0));
    }

    #[test]
    fn a_read_across_memory_and_file_chunks_gets_both_and_the_budget_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = home(&dir, CHUNK_SIZE);
        let store = BackingStore::new(home.clone(), 3 * CHUNK_SIZE);
        // Chunk 0 in the file, chunk 1 in memory.
        let (r, _rx) = pending();
        let (_, fetches) = store.read(0, 2 * CHUNK_SIZE as u32, 0..0, "t", &r);
        assert_eq!(fetches, [ChunkRange { first: 0, end: 2 }]);
        store.open().unwrap();
        let chunk = chunk_bytes(&store, 0);
        let mut bytes = vec![0; chunk.len()];
        assert!(chunk.copy_to(0, &mut bytes));
        store.write(0, &bytes).unwrap();
        assert!(home.memory.try_take(CHUNK_SIZE));
        assert!(!home.memory.try_take(1), "the budget is spent");
        let first = store.complete(ChunkRange { first: 0, end: 1 });
        assert!(first.is_empty(), "chunk 1 still missing");
        let done = store.complete_in_memory(1, vec![chunk_bytes(&store, 1)]);
        assert!(done.needs_file());
        BackingStore::answer_all(done);
        // Read again across both, before anything is let go... it was consumed: so read
        // the file part alone and a fresh memory chunk.
        let (r, rx) = pending();
        let (ReadPlan::Ready(source), _) = store.read(100, 200, 0..0, "t", &r) else {
            panic!("in the file")
        };
        BackingStore::answer(&source, 100, 200, &r);
        assert_eq!(rx.try_recv().unwrap().unwrap(), expected(100, 200));
        // An unread memory chunk: dropped on close, or with the store.
        let (r, _rx) = pending();
        let (_, fetches) = store.read(2 * CHUNK_SIZE, 10, 0..0, "t", &r);
        assert_eq!(fetches, [ChunkRange { first: 2, end: 3 }]);
        assert!(home.memory.try_take(CHUNK_SIZE));
        let (w, wx) = pending();
        let _ = store.read(2 * CHUNK_SIZE + 20, 10, 0..0, "t", &w);
        BackingStore::answer_all(store.complete_in_memory(2, vec![chunk_bytes(&store, 2)]));
        assert_eq!(
            wx.try_recv().unwrap().unwrap(),
            expected(2 * CHUNK_SIZE + 20, 10)
        );
        assert_eq!(home.memory.used(), CHUNK_SIZE, "read, but not to its end");
        drop(store);
        assert_eq!(home.memory.used(), 0, "given back with the store");
    }

    #[test]
    fn a_store_has_a_file_only_from_its_first_fetch_until_evicted() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir, 2 * CHUNK_SIZE);
        assert!(!store.is_open(), "staging costs no descriptor");
        assert_eq!(store.reset_if_idle(|| true), None, "nothing to close");
        let (r, rx) = pending();
        let (ReadPlan::Parked { .. }, fetches) = store.read(0, 8, 0..0, "test", &r) else {
            panic!("nothing is present before a fetch")
        };
        assert!(store.open().unwrap(), "the first fetch opens it");
        assert!(!store.open().unwrap(), "once");
        fill(&store, fetches[0], 2);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![2; 8]);
        assert_eq!(store.reset_if_idle(|| true), Some(CHUNK_SIZE));
        assert!(!store.is_open());
        // Reopened empty: what was present is fetched again.
        let (r, _rx) = pending();
        assert!(matches!(
            store.read(0, 8, 0..0, "test", &r),
            (ReadPlan::Parked { .. }, f) if f == fetches
        ));
    }
}

/// Model checks of the parked-read state machine: every interleaving of a read, the fetch
/// that completes its chunk, an eviction and an interrupt answers the read exactly once,
/// and never with bytes other than the fetched ones (an eviction between judging a read
/// ready and reading it must not yield the fresh file's zeros).
#[cfg(all(test, feature = "shuttle"))]
mod shuttle_model {
    use super::*;
    use crate::reads::tests::{Answer, reply};
    use shuttle::thread;

    const SIZE: u64 = 16;

    #[test]
    fn shuttle_park_complete_evict_and_interrupt_answer_once_with_fetched_bytes() {
        check(Keep::File);
    }

    /// The same with the chunk kept in memory (a sequential stream), and the object
    /// closed (its memory let go) at any point.
    #[test]
    fn shuttle_memory_chunks_answer_once_with_fetched_bytes() {
        check(Keep::Memory);
    }

    #[derive(Clone, Copy, PartialEq)]
    enum Keep {
        File,
        Memory,
    }

    fn check(keep: Keep) {
        let mut config = shuttle::Config::default();
        config.max_steps = shuttle::MaxSteps::FailAfter(100_000);
        let scheduler = shuttle::scheduler::RandomScheduler::new_from_seed(11, 1_000);
        shuttle::Runner::new(scheduler, config).run(move || {
            let dir = tempfile::tempdir().unwrap();
            let home = std::sync::Arc::new(StoreHome {
                dir: dir.path().to_path_buf(),
                memory: StreamMemory::new(SIZE),
            });
            let store = Arc::new(BackingStore::new(home.clone(), SIZE));
            let all = ChunkRange { first: 0, end: 1 };
            assert_eq!(store.prefetch(all), Some(all), "the fetch owns the chunk");
            let (r, rx) = reply();
            let read = PendingRead::untracked(r);

            let reader = {
                let (store, read) = (store.clone(), read.clone());
                thread::spawn(move || {
                    // Parked, or a fresh fetch it would start: the interrupt answers it.
                    if let (ReadPlan::Ready(file), _) = store.read(0, SIZE as u32, 0..0, "m", &read)
                    {
                        BackingStore::answer(&file, 0, SIZE as u32, &read);
                    }
                })
            };
            let fetcher = {
                let store = store.clone();
                thread::spawn(move || {
                    let completed = if keep == Keep::Memory {
                        assert!(store.home().memory.try_take(SIZE));
                        store.complete_in_memory(
                            0,
                            vec![StreamChunk::from_bytes(vec![0xab; SIZE as usize].into())],
                        )
                    } else {
                        store.open().unwrap();
                        store.write(0, &[0xab; SIZE as usize]).unwrap();
                        store.complete(all)
                    };
                    BackingStore::answer_all(completed);
                })
            };
            let evictor = {
                let store = store.clone();
                thread::spawn(move || {
                    store.reset_if_idle(|| true);
                    store.drop_memory();
                })
            };
            let interrupter = {
                let read = read.clone();
                thread::spawn(move || read.error(FsError::Interrupted))
            };
            reader.join().unwrap();
            fetcher.join().unwrap();
            interrupter.join().unwrap();
            evictor.join().unwrap();
            let answers: Vec<Answer> = rx.try_iter().collect();
            assert_eq!(answers.len(), 1, "answered exactly once: {answers:?}");
            drop(store);
            assert_eq!(home.memory.used(), 0, "the budget comes back");
            match &answers[0] {
                Ok(bytes) => assert_eq!(bytes, &[0xab; SIZE as usize], "only fetched bytes"),
                Err(e) => assert_eq!(e, &FsError::Interrupted),
            }
        });
    }
}
