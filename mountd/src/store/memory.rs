//! Chunks of sequential streams held in memory instead of the store file.
//!
//! A file streamed once (an upload, a video played through) is read in order, each byte
//! once; the kernel keeps what it read in its own page cache of the mount's file
//! (keep_cache), which serves re-reads. Writing those bytes to the store file as well
//! costs a copy into the page cache, a copy back out, and writeback to disk for data
//! that is never read from there: on a sustained stream that, and the dirty-page
//! throttling it brings, is most of the daemon's CPU and caps its throughput. So a
//! sequential reader's fetches keep each completed chunk as the `Bytes` it was received
//! into, and reads are answered from them; a chunk is let go once a read has consumed it
//! to its end (and no parked read still needs it), when the object is closed, or with
//! the store. Random reads, the head prefetch and anything beyond the memory budget go
//! to the file as before.
//!
//! [`StreamMemory`] is the daemon-wide budget, so memory never grows with what readers
//! ask for; [`Source`] is where a ready read's bytes are (memory chunks, the file, or
//! both), captured under the store's lock like the file itself, so it stays valid however
//! the store changes before the answer is written.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use super::{CHUNK_SIZE, StoreFile};

/// The bytes all stores may hold in memory together.
#[derive(Debug)]
pub struct StreamMemory {
    used: AtomicU64,
    max: u64,
}

impl StreamMemory {
    pub fn new(max: u64) -> StreamMemory {
        StreamMemory {
            used: AtomicU64::new(0),
            max,
        }
    }

    /// Takes `n` bytes of the budget if they are free. Never waits.
    pub fn try_take(&self, n: u64) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + n <= self.max).then_some(used + n)
            })
            .is_ok()
    }

    pub fn give_back(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }

    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Acquire)
    }

    pub fn max(&self) -> u64 {
        self.max
    }
}

/// Where the bytes of a ready read are: the chunks it needs that are in memory, and the
/// store file for the others (if any).
#[derive(Debug, Clone)]
pub struct Source {
    pub(super) file: Option<StoreFile>,
    /// (chunk index, its bytes), in order.
    pub(super) memory: Vec<(u64, Bytes)>,
}

impl Source {
    /// Whether answering needs the file (and so maybe the disk).
    pub fn needs_file(&self) -> bool {
        self.file.is_some()
    }

    /// The bytes `offset..offset + len` if they lie within one memory chunk: answered
    /// without a copy.
    pub(super) fn single_slice(&self, offset: u64, len: u32) -> Option<&[u8]> {
        let (index, bytes) = self.memory.first()?;
        let start = offset.checked_sub(index * CHUNK_SIZE)? as usize;
        bytes.get(start..start + len as usize)
    }

    /// The memory chunk `index`, if this source holds it.
    pub(super) fn chunk(&self, index: u64) -> Option<&Bytes> {
        self.memory
            .iter()
            .find_map(|(i, bytes)| (*i == index).then_some(bytes))
    }
}
