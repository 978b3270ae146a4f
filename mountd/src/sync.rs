//! The synchronisation primitives of the data path's shared state, in one place, so that
//! the model checker can take them over: with the `shuttle` feature, `Mutex` and the
//! atomics are shuttle's, and the tests under `cfg(feature = "shuttle")` explore the
//! interleavings of threads that park, complete, interrupt, time out and evict reads
//! (as mountpoint-s3's `sync.rs` does). `Arc` and `Weak` stay std's: they carry no
//! ordering of their own that the model needs, and they cross into fuser and tokio.
//!
//! Every lock here is taken with [`lock`]: the critical sections leave their data
//! consistent before anything in them can panic, so a poisoned lock still holds valid
//! data and is used as is.

pub use std::sync::{Arc, Weak};

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{Mutex, MutexGuard, atomic};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{Mutex, MutexGuard, atomic};

/// Takes `mutex`, whether or not a panic poisoned it (see the module note).
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
