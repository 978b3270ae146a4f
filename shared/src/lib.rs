//! Code both FuseStream daemons use: the generated gRPC API, the rules for entry names,
//! URL redaction, gRPC serving/connecting over Unix sockets, default paths and the checks
//! of private dirs, readiness notification, telemetry (logs, spans, trace context), the
//! metrics endpoint, and the pieces of the privilege boundary (SECURITY.md): the API token
//! (`auth`), per-uid connection caps and timeouts on every listener (`listen`), and
//! process hardening (`process`).
//!
//! Anything that must behave identically in the mount daemon and the control plane lives
//! here exactly once (a name the control plane accepts is a name the mount daemon accepts;
//! a URL is redacted the same way in every log line).

pub mod api;
pub mod auth;
pub mod grpc;
pub mod http;
pub mod listen;
pub mod metrics;
pub mod names;
pub mod paths;
pub mod process;
pub mod readiness;
pub mod redact;
pub mod telemetry;

/// Version of this build, reported by both daemons' status calls.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Limits both daemons enforce on what comes from outside.
pub mod limits {
    /// The largest object that can be staged: 1 PiB, beyond any real object store's
    /// objects. A remote declaring more is refused by the control plane (naming the
    /// remote) and by the mount daemon (whatever the caller), so a hostile size never
    /// reaches a file system or a counter; memory never depends on the size anyway.
    pub const MAX_OBJECT_SIZE: u64 = 1 << 50;

    /// Entries one `Mount.AddEntries` call may carry (the control plane also ends a batch
    /// early when it nears 1 MiB, to stay well within gRPC's 4 MiB message limit).
    pub const MAX_ADD_ENTRIES: usize = 256;

    /// Items (sources) one `Control.StageMany` call may carry; a folder or prefix among
    /// them may expand to any number of entries, which are streamed, never collected.
    pub const MAX_STAGE_ITEMS: usize = 10_000;
}
