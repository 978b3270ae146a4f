//! Chunks of sequential streams held in memory instead of the store file.
//!
//! A file streamed once (an upload, a video played through) is read in order, each byte
//! once; the kernel keeps what it read in its own page cache of the mount's file
//! (keep_cache), which serves re-reads. Writing those bytes to the store file as well
//! costs a copy into the page cache, a copy back out, and writeback to disk for data
//! that is never read from there: on a sustained stream that, and the dirty-page
//! throttling it brings, is most of the daemon's CPU and caps its throughput. So a
//! sequential reader's fetches keep each completed chunk in memory, as received, and
//! reads are answered from there; a chunk is let go once a read has consumed it
//! to its end (and no parked read still needs it), when the object is closed, or with
//! the store. Random reads, the head prefetch and anything beyond the memory budget go
//! to the file as before.
//!
//! [`StreamMemory`] is the daemon-wide budget, so memory never grows with what readers
//! ask for; [`Source`] is where a ready read's bytes are (memory chunks, the file, or
//! both), captured under the store's lock like the file itself, so it stays valid however
//! the store changes before the answer is written.
//!
//! No byte of a stream is copied in user space between the socket and the reader: a
//! [`StreamChunk`] is the list of pieces of the HTTP client's receive buffers that hold
//! it (reference-counted slices, put together by [`ChunkAssembler`]), and a read is
//! answered with one `writev` of the pieces it covers. Copying each byte into a chunk
//! buffer and again into a reply buffer was a quarter of the daemon's CPU on a sustained
//! stream.
//!
//! A kept slice keeps its whole receive buffer allocated (hyper's, at most 408 KiB, filled
//! with the same connection's bytes, which are read in order) until every slice of it is
//! let go. So only pieces received at least [`MIN_SHARED_PIECE`] long are kept as slices;
//! shorter ones are copied together. That bounds what the budget does not count: a kept
//! buffer holds at least 64 KiB of counted bytes, so memory is at most ~6.4 times the budget
//! in the worst case (hyper sizes its buffers by the reads that filled them: a remote would
//! have to alternate full and short reads for long; ~1x is what streams show). It also
//! bounds a chunk to a few slices, whatever pieces a remote sends (a reply can carry at
//! most 1023). On a loopback stream about nine in ten received pieces are 64 KiB or more.

use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};

use super::{CHUNK_SIZE, StoreFile};

/// Received pieces at least this long are kept as slices; shorter ones are copied
/// together. A chunk then has at most [`MAX_CHUNK_PIECES`] pieces.
pub const MIN_SHARED_PIECE: usize = 64 * 1024;

/// Slices of one chunk: at most `CHUNK_SIZE / MIN_SHARED_PIECE + 1` of long received
/// pieces, each maybe preceded by a run of short ones copied together, and one run after.
pub const MAX_CHUNK_PIECES: usize = 2 * (CHUNK_SIZE as usize / MIN_SHARED_PIECE + 1) + 1;

/// Pieces a read's reply may carry; more (not reached with the bound above) are copied
/// into one buffer. The kernel takes at most 1024 iovecs per write, the header is one.
pub const MAX_REPLY_PIECES: usize = 1023;

/// One chunk's bytes as received, in order: slices of the receive buffers.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    pieces: std::sync::Arc<[Bytes]>,
    len: usize,
}

impl StreamChunk {
    /// A chunk of one piece (tests build chunks so; fetches through [`ChunkAssembler`]).
    #[cfg(test)]
    pub fn from_bytes(bytes: Bytes) -> StreamChunk {
        let len = bytes.len();
        StreamChunk {
            pieces: std::sync::Arc::from([bytes]),
            len,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces covering bytes `start..end` of the chunk, in order.
    pub fn slices(&self, start: usize, end: usize) -> impl Iterator<Item = &[u8]> {
        let mut at = 0;
        self.pieces.iter().filter_map(move |piece| {
            let (from, to) = (at, at + piece.len());
            at = to;
            (from < end && to > start).then(|| &piece[start.max(from) - from..end.min(to) - from])
        })
    }

    /// Copies bytes `start..start + out.len()` of the chunk into `out`; false if the
    /// chunk is shorter.
    pub fn copy_to(&self, start: usize, out: &mut [u8]) -> bool {
        if start + out.len() > self.len {
            return false;
        }
        let mut done = 0;
        for slice in self.slices(start, start + out.len()) {
            out[done..done + slice.len()].copy_from_slice(slice);
            done += slice.len();
        }
        true
    }
}

/// A piece of a body as received, and whether its bytes are kept as slices (see
/// [`MIN_SHARED_PIECE`]): decided by its received length, however chunks split it.
#[derive(Debug)]
pub struct Received {
    bytes: Bytes,
    shared: bool,
}

impl Received {
    pub fn new(bytes: Bytes) -> Received {
        let shared = bytes.len() >= MIN_SHARED_PIECE;
        Received { bytes, shared }
    }

    /// Bytes not yet taken into chunks.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Drops what lies beyond the first `n` bytes.
    pub fn truncate(&mut self, n: usize) {
        self.bytes.truncate(n);
    }
}

/// Puts received pieces together into [`StreamChunk`]s without copying them (but for
/// pieces shorter than [`MIN_SHARED_PIECE`]).
#[derive(Debug, Default)]
pub struct ChunkAssembler {
    pieces: Vec<Bytes>,
    len: usize,
    /// Short pieces copied together, not yet in `pieces`.
    small: BytesMut,
}

impl ChunkAssembler {
    /// Bytes gathered towards the current chunk.
    pub fn gathered(&self) -> usize {
        self.len + self.small.len()
    }

    /// Takes bytes from the front of `data` towards a chunk of `chunk_len` bytes and
    /// returns the chunk once it is complete. The caller calls again while `data` has
    /// bytes left.
    pub fn push(&mut self, data: &mut Received, chunk_len: usize) -> Option<StreamChunk> {
        let take = (chunk_len - self.gathered()).min(data.len());
        let piece = data.bytes.split_to(take);
        if data.shared {
            self.flush_small();
            self.len += piece.len();
            self.pieces.push(piece);
        } else if !piece.is_empty() {
            if self.small.capacity() == 0 {
                self.small.reserve(chunk_len - self.gathered());
            }
            self.small.extend_from_slice(&piece);
        }
        if self.gathered() < chunk_len {
            return None;
        }
        self.flush_small();
        let pieces = std::mem::take(&mut self.pieces);
        Some(StreamChunk {
            pieces: pieces.into(),
            len: std::mem::take(&mut self.len),
        })
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            let small = self.small.split().freeze();
            self.len += small.len();
            self.pieces.push(small);
        }
    }
}

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
    pub(super) memory: Vec<(u64, StreamChunk)>,
}

impl Source {
    /// Whether answering needs the file (and so maybe the disk).
    pub fn needs_file(&self) -> bool {
        self.file.is_some()
    }

    /// The pieces holding bytes `offset..offset + len` if all of them are in memory and
    /// they fit in one reply: answered without a copy.
    pub(super) fn memory_slices(&self, offset: u64, len: u32) -> Option<Vec<IoSlice<'_>>> {
        if self.file.is_some() {
            return None;
        }
        let end = offset + u64::from(len);
        let mut slices = Vec::with_capacity(self.memory.len() * MAX_CHUNK_PIECES);
        let mut covered = offset;
        for (index, chunk) in &self.memory {
            let chunk_start = index * CHUNK_SIZE;
            if chunk_start >= end {
                break;
            }
            let from = covered.checked_sub(chunk_start)? as usize;
            let to = (end - chunk_start).min(chunk.len() as u64) as usize;
            if from >= to {
                continue;
            }
            slices.extend(chunk.slices(from, to).map(IoSlice::new));
            covered = chunk_start + to as u64;
        }
        (covered == end && slices.len() <= MAX_REPLY_PIECES).then_some(slices)
    }

    /// The memory chunk `index`, if this source holds it.
    pub(super) fn chunk(&self, index: u64) -> Option<&StreamChunk> {
        self.memory
            .iter()
            .find_map(|(i, chunk)| (*i == index).then_some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `body` to an assembler in pieces of the given lengths (cycled), returning
    /// the chunks and their piece counts.
    fn assemble(body: &[u8], chunk_len: usize, piece_lens: &[usize]) -> Vec<StreamChunk> {
        let mut assembler = ChunkAssembler::default();
        let mut chunks = Vec::new();
        let mut at = 0;
        for &n in piece_lens.iter().cycle() {
            if at == body.len() {
                break;
            }
            let n = n.min(body.len() - at);
            let mut data = Received::new(Bytes::copy_from_slice(&body[at..at + n]));
            at += n;
            while !data.is_empty() {
                let remaining = body.len() - (at - data.len()) + assembler.gathered();
                if let Some(chunk) = assembler.push(&mut data, chunk_len.min(remaining)) {
                    chunks.push(chunk);
                }
            }
        }
        chunks
    }

    fn body(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    #[test]
    fn chunks_hold_the_bytes_in_order_whatever_the_pieces() {
        let chunk = 128 * 1024;
        let data = body(3 * chunk + 1000);
        for pieces in [
            &[1usize][..],
            &[4096, 70_000],
            &[200_000],
            &[16 * 1024, 5, 40_000],
        ] {
            let chunks = assemble(&data, chunk, pieces);
            assert_eq!(chunks.len(), 4, "{pieces:?}");
            let mut joined = Vec::new();
            for c in &chunks {
                let mut out = vec![0; c.len()];
                assert!(c.copy_to(0, &mut out));
                joined.extend(out);
            }
            assert_eq!(joined, data, "{pieces:?}");
        }
    }

    #[test]
    fn a_remote_sending_tiny_pieces_can_not_make_a_chunk_many_pieces() {
        let chunk = 128 * 1024;
        let data = body(2 * chunk);
        let cases = [
            &[1usize][..],
            &[MIN_SHARED_PIECE - 1, MIN_SHARED_PIECE],
            &[3, 20_000, MIN_SHARED_PIECE],
            &[1, MIN_SHARED_PIECE, 2, MIN_SHARED_PIECE + 1],
        ];
        let mut most = 0;
        for pieces in cases {
            for c in assemble(&data, chunk, pieces) {
                most = most.max(c.pieces.len());
                assert!(
                    c.pieces.len() <= MAX_CHUNK_PIECES,
                    "{pieces:?}: {}",
                    c.pieces.len()
                );
            }
        }
        assert!(
            most >= 4,
            "the cases reach several slices per chunk: {most}"
        );
        // Long pieces are shared, not copied, also where a chunk boundary splits them.
        let received = Bytes::from(body(chunk + MIN_SHARED_PIECE));
        let mut data = Received::new(received.clone());
        let mut assembler = ChunkAssembler::default();
        let first = assembler.push(&mut data, chunk).unwrap();
        assert_eq!(first.pieces[0].as_ptr(), received.as_ptr());
        let second = assembler.push(&mut data, MIN_SHARED_PIECE).unwrap();
        assert_eq!(second.pieces[0].as_ptr(), received[chunk..].as_ptr());
    }

    #[test]
    fn memory_slices_cover_exactly_the_read() {
        let chunk = CHUNK_SIZE as usize;
        let data = body(3 * chunk);
        let chunks = assemble(&data, chunk, &[50_000, 20_000]);
        let source = Source {
            file: None,
            memory: (0..).zip(chunks).collect(),
        };
        for (offset, len) in [
            (0, 4096),
            (chunk as u64 - 10, 20),
            (1000, 2 * chunk as u32),
            (0, 3 * chunk as u32),
        ] {
            let slices = source.memory_slices(offset, len).unwrap();
            let joined: Vec<u8> = slices.iter().flat_map(|s| s.iter().copied()).collect();
            assert_eq!(
                joined,
                data[offset as usize..offset as usize + len as usize]
            );
        }
        // A read beyond what the source holds is not answered from it.
        assert!(
            source
                .memory_slices(chunk as u64 * 2, chunk as u32 + 1)
                .is_none()
        );
    }
}
