//! fusestream-mountd: the privileged mount daemon. It owns the FUSE session and the
//! backing stores, serves the `fusestream.v1.Mount` gRPC API, and only ever sees temp URLs.
//!
//! Layout: `fuse` (thin fuser adapter) → `fs` (filesystem core: namespace, handles, read
//! path) → `reads` (each read answered exactly once; interrupts), `store` (sparse backing
//! store, parked reads) and `fetch` (range fetches from a `RangeSource`: retry policy,
//! per-origin slots and circuit breakers); `timers` runs read deadlines and the watchdog on
//! a runtime of their own; `sync` is where the model checker swaps in its primitives;
//! `cache` keeps the stores within their disk budget; `events` tells subscribers;
//! `api` is the gRPC service; `mount` mounts and unmounts; `ops` tracks each FUSE op from
//! ENTER to EXIT; `watchdog` flags ops in flight too long; `metrics` is what the
//! Prometheus endpoint shows.

pub mod api;
pub mod cache;
mod error;
pub mod events;
pub mod fetch;
pub mod fs;
pub mod fuse;
pub mod metrics;
pub mod mount;
pub mod object;
pub mod ops;
pub mod reads;
pub mod store;
pub mod sync;
pub mod timers;
pub mod watchdog;

pub use error::FsError;

/// The configuration of the crate's property tests: `cases` cases from a fixed seed (so CI
/// runs the same cases every time), no failure files written into the tree.
#[cfg(test)]
pub(crate) fn proptest_config(cases: u32) -> proptest::prelude::ProptestConfig {
    proptest::prelude::ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(20261202),
        failure_persistence: None,
        ..proptest::prelude::ProptestConfig::default()
    }
}
