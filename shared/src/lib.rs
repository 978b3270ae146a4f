//! Code both FuseStream daemons use: the generated gRPC API, the rules for entry names,
//! the wall clock in Unix seconds, URL redaction, gRPC serving/connecting over Unix sockets, default paths and the checks
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
pub mod clock;
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

    /// Entries per page of a listing (Mount.ListEntries, Control.List) when the caller
    /// asks for none, and the most it may ask for: a page stays far below gRPC's 4 MiB
    /// message limit (an entry is a few hundred bytes), whatever is staged.
    pub const LIST_PAGE_SIZE: usize = 1000;
    pub const MAX_LIST_PAGE_SIZE: usize = 5000;

    /// The page size to use when a caller asks for `asked` (0: the default).
    pub fn list_page_size(asked: u32) -> usize {
        match asked {
            0 => LIST_PAGE_SIZE,
            n => (n as usize).min(MAX_LIST_PAGE_SIZE),
        }
    }

    /// Entries one `Mount.AddEntries` call may carry (the control plane also ends a batch
    /// early when it nears 1 MiB, to stay well within gRPC's 4 MiB message limit).
    pub const MAX_ADD_ENTRIES: usize = 256;

    /// URLs one `Mount.UpdateUrls` call may carry (the control plane also ends a batch
    /// early when it nears 1 MiB).
    pub const MAX_UPDATE_URLS: usize = 1000;

    /// Items (sources) one `Control.StageMany` call may carry; a folder or prefix among
    /// them may expand to any number of entries, which are streamed, never collected.
    pub const MAX_STAGE_ITEMS: usize = 10_000;
}
