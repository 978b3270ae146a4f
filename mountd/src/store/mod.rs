//! The backing store of one staged object: a sparse temp file plus a map of which chunks
//! are present, which are being fetched, and which reads are parked waiting for them.
//!
//! Design (the rules that keep FUSE callbacks from ever blocking):
//! - The state lock guards only bitmaps and the parked list. It is never held across file
//!   or network I/O, and the only lock taken while holding it is the op registry's
//!   (`ops`, a leaf: a parked reply records what it waits for, `DataReply::waiting`).
//! - A read whose chunks are all present is answered by its caller with a pread of the
//!   temp file if the page cache has the bytes (RWF_NOWAIT), else on a blocking thread:
//!   a FUSE callback never waits for the disk. A read with a missing chunk gives its reply
//!   to the store ("parks" it) and the callback returns; whoever completes the chunk
//!   answers it.
//! - Deciding what to fetch happens under the same lock as parking, so a chunk is fetched
//!   by exactly one fetch at a time and concurrent readers of a range share it.
//!
//! The temp file is created unnamed (O_TMPFILE where available) in the cache directory:
//! it disappears with the last descriptor, even if the daemon is killed. Closing it can
//! take long (the kernel frees its page cache: tens of ms per GiB), so it is never closed
//! on the thread that lets go of it: [`close_later`] hands it to a background thread, which
//! runs at the lowest priority so that freeing old stores never slows current reads.

mod bitmap;

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use bitmap::Bitmap;

use crate::FsError;

/// Unit of presence tracking and fetching.
pub const CHUNK_SIZE: u64 = 128 * 1024;
/// Longest single fetch; a longer range is split so it can be fetched in parallel.
pub const MAX_FETCH_CHUNKS: u64 = 64; // 8 MiB

/// Where a read's answer goes: a FUSE reply in the daemon, a channel in tests.
pub trait DataReply: Send {
    fn data(self: Box<Self>, data: &[u8]);
    fn error(self: Box<Self>, error: FsError);
    /// The reply is parked, waiting for `what` (for the in-flight listing).
    fn waiting(&self, _what: String) {}
    /// The span of the op this reply answers: fetches it starts are traced as its children.
    fn span(&self) -> tracing::Span {
        tracing::Span::none()
    }
}

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
pub struct ParkedRead {
    pub id: u64,
    /// The FUSE request it answers (for FUSE_INTERRUPT).
    pub unique: u64,
    pub offset: u64,
    pub len: u32,
    reply: Box<dyn DataReply>,
}

impl std::fmt::Debug for ParkedRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedRead")
            .field("id", &self.id)
            .field("unique", &self.unique)
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}

impl ParkedRead {
    fn chunks(&self) -> ChunkRange {
        chunks_of(self.offset, self.len)
    }

    pub fn fail(self, error: FsError) {
        self.reply.error(error);
    }
}

/// What the caller of [`BackingStore::read`] does next.
pub enum ReadPlan {
    /// All data is present: read it with [`BackingStore::answer`].
    Ready(Box<dyn DataReply>),
    /// The reply is parked; it will be answered when the data arrives or the read fails.
    Parked(u64),
    /// The store can not serve reads (e.g. the object changed).
    Failed(Box<dyn DataReply>, FsError),
}

#[derive(Debug)]
struct State {
    /// The sparse file. Replaced whole when the store is evicted (see `reset_if_idle`),
    /// so a reader holding the old one still reads valid bytes. `None` only once dropped.
    file: Option<Arc<File>>,
    present: Bitmap,
    inflight: Bitmap,
    parked: Vec<ParkedRead>,
    next_parked_id: u64,
    /// Set once reads can never succeed again; every read fails with it.
    poisoned: Option<FsError>,
}

impl State {
    /// Whether chunk `i` is neither present nor being fetched: a fetch may claim it.
    fn missing(&self, i: u64) -> bool {
        !self.present.get(i) && !self.inflight.get(i)
    }

    /// Removes and returns the parked reads whose chunk range satisfies `pred`.
    fn take_parked_where(&mut self, pred: impl Fn(ChunkRange, &Bitmap) -> bool) -> Vec<ParkedRead> {
        let (taken, waiting) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|p| pred(p.chunks(), &self.present));
        self.parked = waiting;
        taken
    }
}

#[derive(Debug)]
pub struct BackingStore {
    size: u64,
    /// Bytes present, readable without the lock (getattr and listings read it).
    present_bytes: AtomicU64,
    /// When it was last read, in ms since the process started (for eviction order).
    last_read_ms: AtomicU64,
    state: Mutex<State>,
}

/// Milliseconds since this process first asked.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Drop for BackingStore {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(file) = state.file.take() {
            close_later(file);
        }
    }
}

/// Closes `file` (drops this reference) on a background thread. Never waits.
pub fn close_later(file: Arc<File>) {
    static CLOSER: OnceLock<Option<std::sync::mpsc::Sender<Arc<File>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Arc<File>>();
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
    /// Creates an empty sparse store of `size` bytes in `dir`. Does disk I/O: call it
    /// off the FUSE path (staging does).
    pub fn create(dir: &Path, size: u64) -> io::Result<BackingStore> {
        let file = Self::empty_file(dir, size)?;
        let chunks = size.div_ceil(CHUNK_SIZE);
        Ok(BackingStore {
            size,
            present_bytes: AtomicU64::new(0),
            last_read_ms: AtomicU64::new(now_ms()),
            state: Mutex::new(State {
                file: Some(Arc::new(file)),
                present: Bitmap::new(chunks),
                inflight: Bitmap::new(chunks),
                parked: Vec::new(),
                next_parked_id: 1,
                poisoned: None,
            }),
        })
    }

    /// An unnamed sparse file of `size` bytes in `dir`. Disk I/O: never on the FUSE path.
    pub fn empty_file(dir: &Path, size: u64) -> io::Result<File> {
        let file = tempfile::tempfile_in(dir)?;
        file.set_len(size)?;
        Ok(file)
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn last_read_ms(&self) -> u64 {
        self.last_read_ms.load(Ordering::Relaxed)
    }

    fn file(&self) -> Arc<File> {
        self.lock()
            .file
            .clone()
            .expect("the file is only taken on drop")
    }

    /// Drops every present byte by swapping in `fresh` (an empty file of the same size),
    /// if nothing is being fetched or waited for. Returns the bytes freed, or `None` if
    /// the store is busy. The old file is closed once its last reader lets go.
    pub fn reset_if_idle(&self, fresh: File) -> Option<u64> {
        let (old, freed) = {
            let mut state = self.lock();
            if !state.parked.is_empty() || state.inflight.any() {
                return None;
            }
            state.present = Bitmap::new(self.size.div_ceil(CHUNK_SIZE));
            let freed = self.present_bytes.swap(0, Ordering::Relaxed);
            (state.file.replace(Arc::new(fresh)), freed)
        };
        if let Some(old) = old {
            close_later(old);
        }
        Some(freed)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent before it can panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes present in the store. Lock-free.
    pub fn present_bytes(&self) -> u64 {
        self.present_bytes.load(Ordering::Relaxed)
    }

    /// Why every read fails, if it does (see [`BackingStore::poison`]).
    pub fn failure(&self) -> Option<FsError> {
        self.lock().poisoned.clone()
    }

    pub fn parked_reads(&self) -> usize {
        self.lock().parked.len()
    }

    /// Starts a read of `len` bytes at `offset` (already clamped to the object size) for
    /// FUSE request `unique`. Chunks up to `readahead_end` (bytes) may be fetched ahead.
    /// Returns what to do with the reply and the chunk ranges the caller must fetch (now
    /// marked in flight). `label` names the object in what a parked read says it waits for.
    pub fn read(
        &self,
        unique: u64,
        offset: u64,
        len: u32,
        readahead_end: u64,
        label: &str,
        reply: Box<dyn DataReply>,
    ) -> (ReadPlan, Vec<ChunkRange>) {
        let needed = chunks_of(offset, len);
        self.last_read_ms.store(now_ms(), Ordering::Relaxed);
        let mut state = self.lock();
        if let Some(error) = &state.poisoned {
            return (ReadPlan::Failed(reply, error.clone()), Vec::new());
        }
        let fetches = self.plan_fetches(&mut state, needed, readahead_end);
        if state.present.all(needed.first..needed.end) {
            return (ReadPlan::Ready(reply), fetches);
        }
        let missing = (needed.first..needed.end)
            .filter(|&i| !state.present.get(i))
            .count();
        reply.waiting(format!(
            "bytes {offset}..{} of {label} ({missing} of {} chunks being fetched)",
            offset + u64::from(len),
            needed.end - needed.first
        ));
        let id = state.next_parked_id;
        state.next_parked_id += 1;
        state.parked.push(ParkedRead {
            id,
            unique,
            offset,
            len,
            reply,
        });
        (ReadPlan::Parked(id), fetches)
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
        for i in first..end {
            state.inflight.set(i, true);
        }
        Some(ChunkRange { first, end })
    }

    /// Picks the missing chunks of `needed`, plus read-ahead up to `readahead_end` when the
    /// fetched frontier is less than half the read-ahead window ahead of the reader (so
    /// read-ahead goes out in large requests, not one chunk per read), and marks them in
    /// flight.
    fn plan_fetches(
        &self,
        state: &mut State,
        needed: ChunkRange,
        readahead_end: u64,
    ) -> Vec<ChunkRange> {
        let mut wanted: Vec<u64> = (needed.first..needed.end)
            .filter(|&i| state.missing(i))
            .collect();
        let ra_end = readahead_end.min(self.size).div_ceil(CHUNK_SIZE);
        if ra_end > needed.end {
            let frontier = (needed.end..ra_end)
                .find(|&i| state.missing(i))
                .unwrap_or(ra_end);
            if (frontier - needed.end) * 2 <= ra_end - needed.end {
                wanted.extend((frontier..ra_end).filter(|&i| state.missing(i)));
            }
        }
        let mut ranges: Vec<ChunkRange> = Vec::new();
        for i in wanted {
            state.inflight.set(i, true);
            match ranges.last_mut() {
                Some(r) if r.end == i && r.end - r.first < MAX_FETCH_CHUNKS => r.end += 1,
                _ => ranges.push(ChunkRange {
                    first: i,
                    end: i + 1,
                }),
            }
        }
        ranges
    }

    /// Answers `reply` with `len` bytes at `offset`, which must be present. May wait for
    /// the disk: off FUSE threads only (see [`BackingStore::answer_if_cached`]).
    pub fn answer(&self, offset: u64, len: u32, reply: Box<dyn DataReply>) {
        let unanswered = self.answer_from(offset, len, reply, Wait::Yes);
        debug_assert!(unanswered.is_none(), "a read that may wait always answers");
    }

    /// Answers `reply` now if the bytes (which must be present) are in the page cache, as
    /// they nearly always are; else hands it back for the caller to answer off its thread
    /// with [`BackingStore::answer`], since a FUSE callback must never wait for the disk.
    #[must_use = "a reply handed back must be answered"]
    pub fn answer_if_cached(
        &self,
        offset: u64,
        len: u32,
        reply: Box<dyn DataReply>,
    ) -> Option<Box<dyn DataReply>> {
        self.answer_from(offset, len, reply, Wait::No)
    }

    fn answer_from(
        &self,
        offset: u64,
        len: u32,
        reply: Box<dyn DataReply>,
        wait: Wait,
    ) -> Option<Box<dyn DataReply>> {
        // A buffer per thread, reused: a fresh MiB per read would be a new mapping,
        // page-faulted and zeroed every time.
        thread_local! {
            static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let file = self.file();
        BUFFER.with_borrow_mut(|buf| {
            if buf.len() < len as usize {
                buf.resize(len as usize, 0);
            }
            let buf = &mut buf[..len as usize];
            match read_at(&file, buf, offset, wait) {
                Ok(true) => reply.data(buf),
                Ok(false) => return Some(reply),
                Err(e) => reply.error(FsError::Store(format!("read: {e}"))),
            }
            None
        })
    }

    /// Reserves disk blocks for `range` before its bytes arrive. The writes that follow then
    /// find their blocks allocated (ext4 then spends about a quarter less CPU per written byte
    /// than on a hole), and a full disk fails the fetch up front. Called by the fetcher, never
    /// under the lock. Where the file system can not preallocate, this does nothing.
    pub fn allocate(&self, range: std::ops::Range<u64>) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let file = self.file();
        // SAFETY: fallocate on a descriptor we own; mode 0 only allocates (the size is set).
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                0,
                range.start as libc::off_t,
                (range.end - range.start) as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(()),
            _ => Err(error),
        }
    }

    /// Writes fetched bytes at `offset`. Called by the fetcher, never under the lock.
    pub fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.file().write_all_at(data, offset)
    }

    /// Byte range covered by `chunks`.
    pub fn byte_range(&self, chunks: ChunkRange) -> std::ops::Range<u64> {
        chunks.first * CHUNK_SIZE..(chunks.end * CHUNK_SIZE).min(self.size)
    }

    /// Marks `chunks` present (their bytes are written) and returns the parked reads that
    /// are now complete, for the caller to answer (see [`BackingStore::answer_all`]).
    #[must_use = "the returned reads must be answered"]
    pub fn complete(&self, chunks: ChunkRange) -> Vec<ParkedRead> {
        {
            let mut state = self.lock();
            for i in chunks.first..chunks.end {
                if !state.present.get(i) {
                    state.present.set(i, true);
                    let r = self.byte_range(ChunkRange {
                        first: i,
                        end: i + 1,
                    });
                    self.present_bytes
                        .fetch_add(r.end - r.start, Ordering::Relaxed);
                }
                state.inflight.set(i, false);
            }
            state.take_parked_where(|c, present| {
                c.first < chunks.end && c.end > chunks.first && present.all(c.first..c.end)
            })
        }
    }

    /// Answers completed parked reads from the store.
    pub fn answer_all(&self, reads: Vec<ParkedRead>) {
        for read in reads {
            self.answer(read.offset, read.len, read.reply);
        }
    }

    /// Gives up on `chunks` (a fetch failed): clears their in-flight marks and fails the
    /// parked reads that needed them. A later read fetches them again.
    pub fn abandon(&self, chunks: ChunkRange, error: FsError) {
        let failed: Vec<ParkedRead> = {
            let mut state = self.lock();
            for i in chunks.first..chunks.end {
                state.inflight.set(i, false);
            }
            state.take_parked_where(|c, present| {
                (c.first.max(chunks.first)..c.end.min(chunks.end)).any(|i| !present.get(i))
            })
        };
        for read in failed {
            read.fail(error.clone());
        }
    }

    /// Makes every current and future read fail with `error` (e.g. the object changed).
    pub fn poison(&self, error: FsError) {
        let failed = {
            let mut state = self.lock();
            state.poisoned = Some(error.clone());
            std::mem::take(&mut state.parked)
        };
        for read in failed {
            read.fail(error.clone());
        }
    }

    /// Removes parked read `id` (its deadline expired) so its caller can fail it.
    /// `None` if it was already answered.
    pub fn take_parked(&self, id: u64) -> Option<ParkedRead> {
        self.take_first(|p| p.id == id)
    }

    /// Removes the parked read answering FUSE request `unique` (interrupted), if any.
    pub fn take_parked_request(&self, unique: u64) -> Option<ParkedRead> {
        self.take_first(|p| p.unique == unique)
    }

    fn take_first(&self, pred: impl Fn(&ParkedRead) -> bool) -> Option<ParkedRead> {
        let mut state = self.lock();
        let at = state.parked.iter().position(pred)?;
        Some(state.parked.swap_remove(at))
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use std::sync::mpsc;

    type Answer = Result<Vec<u8>, FsError>;

    /// A reply that sends its answer down a channel.
    pub struct ChannelReply(pub mpsc::Sender<Answer>);
    impl DataReply for ChannelReply {
        fn data(self: Box<Self>, data: &[u8]) {
            let _ = self.0.send(Ok(data.to_vec()));
        }
        fn error(self: Box<Self>, error: FsError) {
            let _ = self.0.send(Err(error));
        }
    }

    fn reply() -> (Box<dyn DataReply>, mpsc::Receiver<Answer>) {
        let (tx, rx) = mpsc::channel();
        (Box::new(ChannelReply(tx)), rx)
    }

    fn fill(store: &BackingStore, chunks: ChunkRange, byte: u8) {
        let r = store.byte_range(chunks);
        store
            .write(r.start, &vec![byte; (r.end - r.start) as usize])
            .unwrap();
        let ready = store.complete(chunks);
        store.answer_all(ready);
    }

    #[test]
    fn parks_a_missing_read_and_answers_it_when_the_chunk_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), 3 * CHUNK_SIZE + 10).unwrap();
        let (r, rx) = reply();
        let (plan, fetches) = store.read(0, CHUNK_SIZE - 2, 4, 0, "test", r);
        assert!(matches!(plan, ReadPlan::Parked(_)));
        assert_eq!(fetches, [ChunkRange { first: 0, end: 2 }]);
        // A second reader of the same range shares the fetch.
        let (r2, rx2) = reply();
        let (_, fetches2) = store.read(0, CHUNK_SIZE, 1, 0, "test", r2);
        assert!(fetches2.is_empty());

        fill(&store, ChunkRange { first: 1, end: 2 }, 7);
        assert!(rx.try_recv().is_err(), "chunk 0 still missing");
        assert_eq!(rx2.try_recv().unwrap().unwrap(), vec![7]);
        fill(&store, ChunkRange { first: 0, end: 1 }, 5);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![5, 5, 7, 7]);
        assert_eq!(store.present_bytes(), 2 * CHUNK_SIZE);
        assert_eq!(store.parked_reads(), 0);
    }

    #[test]
    fn present_data_is_ready_and_the_last_chunk_counts_its_real_size() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), CHUNK_SIZE + 10).unwrap();
        fill(&store, ChunkRange { first: 0, end: 2 }, 1);
        assert_eq!(store.present_bytes(), CHUNK_SIZE + 10);
        let (r, _rx) = reply();
        let (plan, fetches) = store.read(0, CHUNK_SIZE, 10, 0, "test", r);
        assert!(matches!(plan, ReadPlan::Ready(_)) && fetches.is_empty());
    }

    #[test]
    fn readahead_goes_out_in_large_requests_split_at_the_fetch_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), 200 * CHUNK_SIZE).unwrap();
        let (r, _rx) = reply();
        let (_, fetches) = store.read(0, 0, 4096, 100 * CHUNK_SIZE, "test", r);
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
        let (r, _rx) = reply();
        let (_, fetches) = store.read(0, 4096, 4096, 4096 + 100 * CHUNK_SIZE, "test", r);
        assert!(fetches.is_empty());
    }

    #[test]
    fn abandon_fails_waiters_and_allows_a_refetch_and_poison_fails_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), 4 * CHUNK_SIZE).unwrap();
        let (r, rx) = reply();
        let (_, fetches) = store.read(0, 0, 10, 0, "test", r);
        store.abandon(fetches[0], FsError::Fetch("reset".into()));
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Fetch("reset".into())));
        let (r, _rx) = reply();
        let (_, again) = store.read(0, 0, 10, 0, "test", r);
        assert_eq!(again, fetches, "abandoned chunks are fetched again");

        store.poison(FsError::Changed("etag".into()));
        let (r, _rx) = reply();
        assert!(matches!(
            store.read(0, 0, 1, 0, "test", r).0,
            ReadPlan::Failed(_, FsError::Changed(_))
        ));
    }

    #[test]
    fn a_prefetch_is_fetched_once_and_shared_by_the_reads_that_follow() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), 4 * CHUNK_SIZE).unwrap();
        let head = ChunkRange { first: 0, end: 1 };
        assert_eq!(store.prefetch(head), Some(head));
        assert_eq!(store.prefetch(head), None, "already in flight");
        let (r, rx) = reply();
        let (plan, fetches) = store.read(0, 0, 10, 0, "test", r);
        assert!(matches!(plan, ReadPlan::Parked(_)) && fetches.is_empty());
        fill(&store, head, 9);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![9; 10]);
        assert_eq!(store.prefetch(head), None, "present");
        // Only the missing part, and never more than one fetch's worth.
        let big = BackingStore::create(dir.path(), 200 * CHUNK_SIZE).unwrap();
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
        let store = BackingStore::create(dir.path(), CHUNK_SIZE).unwrap();
        let all = ChunkRange { first: 0, end: 1 };
        fill(&store, all, 4);
        let (r, rx) = reply();
        assert!(
            store.answer_if_cached(0, 100, r).is_none(),
            "just written: cached"
        );
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![4; 100]);

        // Written back and dropped from the page cache: reading needs the disk.
        let file = store.file();
        file.sync_all().unwrap();
        // SAFETY: advice on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        let (r, rx) = reply();
        let r = store
            .answer_if_cached(0, 100, r)
            .expect("handed back: the bytes are on disk only");
        assert!(rx.try_recv().is_err(), "not answered yet");
        store.answer(0, 100, r);
        assert_eq!(rx.try_recv().unwrap().unwrap(), vec![4; 100]);
    }

    #[test]
    fn a_taken_parked_read_is_not_answered_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = BackingStore::create(dir.path(), CHUNK_SIZE).unwrap();
        let (r, rx) = reply();
        let (ReadPlan::Parked(id), fetches) = store.read(0, 0, 1, 0, "test", r) else {
            panic!()
        };
        store.take_parked(id).unwrap().fail(FsError::Interrupted);
        assert!(store.take_parked(id).is_none());
        fill(&store, fetches[0], 3);
        assert_eq!(rx.try_recv().unwrap(), Err(FsError::Interrupted));
        assert!(rx.try_recv().is_err());
    }
}
