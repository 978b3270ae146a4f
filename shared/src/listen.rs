//! Accepting connections so that no local user can deny service to another: every listener
//! of both daemons (the gRPC sockets, the metrics endpoint, the control plane's local file
//! server) takes its connections from here.
//!
//! - Per-peer caps: a peer is a uid. On a Unix socket the kernel says who connected
//!   (SO_PEERCRED); on TCP loopback the kernel is asked who owns the peer's socket, one
//!   exact sock_diag netlink lookup per connection (loopback connections all come from
//!   127.0.0.1, and any local user may bind any 127.x address, so an IP cap alone would
//!   let one user fill it for all). Reading `/proc/net/tcp` instead would cost time in the
//!   number of sockets on the machine at every accept: an attacker's own connections would
//!   slow everyone's. When the owner can not be found the peer's IP is the key. A connection over its
//!   peer's cap is closed at once; the others are untouched.
//! - First bytes: a new connection must send its first bytes (the HTTP/2 preface, a
//!   request line) within a deadline, so idle sockets held open by the thousand cost their
//!   owner's cap, not everyone's descriptors. Later idleness is the protocol's business
//!   (HTTP/2 keepalive pings, hyper's header read timeout).
//! - Accept errors: out of descriptors (EMFILE, ENFILE) or memory, the accept loop backs off
//!   (5 ms doubling to 1 s) instead of spinning on a listener that stays readable.
//!
//! Both daemons also raise RLIMIT_NOFILE to its hard limit at start
//! (`process::harden`), so caps bind long before the process runs out.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Sleep;

/// What a listener allows each peer.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections one peer (uid) may hold open at once.
    pub per_peer: usize,
    /// Bytes a new connection must send within `first_bytes_within`.
    pub first_bytes: usize,
    pub first_bytes_within: Duration,
}

impl Limits {
    /// gRPC (HTTP/2): the 24-byte connection preface within 10 s; 64 connections a uid.
    pub const GRPC: Limits = Limits {
        per_peer: 64,
        first_bytes: 24,
        first_bytes_within: Duration::from_secs(10),
    };
    /// HTTP/1 servers: a request line's start within 10 s (hyper then bounds the headers).
    /// 128 a uid: the mount daemon fetches with up to 16 connections, and pools some.
    pub const HTTP1: Limits = Limits {
        per_peer: 128,
        first_bytes: 4,
        first_bytes_within: Duration::from_secs(10),
    };
}

/// How long an HTTP/1 server waits for a request's headers.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end, as far as caps go.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    Uid(u32),
    Ip(IpAddr),
    Unknown,
}

/// Open connections per peer.
#[derive(Debug, Default)]
struct Counts(Mutex<HashMap<Peer, usize>>);

impl Counts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Peer, usize>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A peer's place among its capped connections; given back when the connection closes.
#[derive(Debug)]
pub struct Slot {
    counts: Arc<Counts>,
    peer: Peer,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock();
        if let Some(n) = counts.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// The caps of one listener, and its accept back-off.
#[derive(Debug)]
struct Gate {
    name: &'static str,
    limits: Limits,
    counts: Arc<Counts>,
    backoff: Duration,
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Gate {
    fn new(name: &'static str, limits: Limits) -> Gate {
        Gate {
            name,
            limits,
            counts: Arc::default(),
            backoff: Duration::ZERO,
        }
    }

    /// `io` with a slot of `peer`'s, or `None` (and `io` closed) if `peer` is at its cap.
    fn admit<IO>(&mut self, io: IO, peer: Peer) -> Option<Limited<IO>> {
        self.backoff = Duration::ZERO;
        let slot = take_slot(&self.counts, peer, self.limits.per_peer);
        if slot.is_none() {
            tracing::debug!(
                listener = self.name,
                "connection over its peer's cap closed"
            );
        }
        let slot = slot?;
        Some(Limited {
            io,
            _slot: slot,
            needed: self.limits.first_bytes,
            deadline: Some(Box::pin(tokio::time::sleep(self.limits.first_bytes_within))),
        })
    }

    /// Waits after a failed accept. Out of descriptors or memory, the listener stays
    /// readable: retrying at once would spin a core. Other errors (a peer that reset
    /// before we took it) are retried at once.
    async fn failed(&mut self, e: io::Error) {
        let exhausted = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
        );
        if !exhausted {
            tracing::debug!(listener = self.name, "accept: {e}");
            return;
        }
        if self.backoff.is_zero() {
            tracing::warn!(listener = self.name, "accept: {e}; backing off");
            self.backoff = BACKOFF_MIN;
        } else {
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
        tokio::time::sleep(self.backoff).await;
    }
}

fn take_slot(counts: &Arc<Counts>, peer: Peer, cap: usize) -> Option<Slot> {
    let mut map = counts.lock();
    let n = map.entry(peer.clone()).or_insert(0);
    if *n >= cap {
        return None;
    }
    *n += 1;
    Some(Slot {
        counts: counts.clone(),
        peer,
    })
}

/// Connections accepted from `listener`, capped per uid (see the module note).
pub fn unix(
    name: &'static str,
    listener: UnixListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Limited<UnixStream>>> + Send {
    futures_util::stream::unfold(
        (listener, Gate::new(name, limits)),
        |(listener, mut gate)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, _)) => {
                        let peer = stream
                            .peer_cred()
                            .map_or(Peer::Unknown, |c| Peer::Uid(c.uid()));
                        if let Some(conn) = gate.admit(stream, peer) {
                            return Some((Ok(conn), (listener, gate)));
                        }
                    }
                    Err(e) => gate.failed(e).await,
                }
            }
        },
    )
}

/// Connections accepted from `listener`, capped per uid of the peer's socket (else IP).
pub fn tcp(
    name: &'static str,
    listener: TcpListener,
    limits: Limits,
) -> impl Stream<Item = io::Result<Limited<TcpStream>>> + Send {
    futures_util::stream::unfold(
        (listener, Gate::new(name, limits)),
        |(listener, mut gate)| async move {
            loop {
                match listener.accept().await {
                    Ok((stream, remote)) => {
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().ok();
                        let peer = local
                            .and_then(|local| tcp_peer_uid(remote, local))
                            .map_or(Peer::Ip(remote.ip()), Peer::Uid);
                        if let Some(conn) = gate.admit(stream, peer) {
                            return Some((Ok(conn), (listener, gate)));
                        }
                    }
                    Err(e) => gate.failed(e).await,
                }
            }
        },
    )
}

/// The uid owning the TCP socket at `remote` that is connected to our `local` (Linux:
/// an exact `SOCK_DIAG_BY_FAMILY` lookup of the socket whose source is `remote` and
/// destination `local`; elsewhere unknown).
pub fn tcp_peer_uid(remote: SocketAddr, local: SocketAddr) -> Option<u32> {
    #[cfg(target_os = "linux")]
    {
        diag::socket_uid(remote, local)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (remote, local);
        None
    }
}

#[cfg(target_os = "linux")]
mod diag {
    //! The few netlink sock_diag structures an exact lookup needs (linux/inet_diag.h).

    use std::mem::size_of;
    use std::net::{IpAddr, SocketAddr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const NLM_F_REQUEST: u16 = 1;
    const INET_DIAG_NOCOOKIE: u32 = !0;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct NlMsgHdr {
        len: u32,
        kind: u16,
        flags: u16,
        seq: u32,
        pid: u32,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct SockId {
        sport: [u8; 2],
        dport: [u8; 2],
        src: [u8; 16],
        dst: [u8; 16],
        ifindex: u32,
        cookie: [u32; 2],
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Request {
        hdr: NlMsgHdr,
        family: u8,
        protocol: u8,
        ext: u8,
        pad: u8,
        states: u32,
        id: SockId,
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Reply {
        hdr: NlMsgHdr,
        family: u8,
        state: u8,
        timer: u8,
        retrans: u8,
        id: SockId,
        expires: u32,
        rqueue: u32,
        wqueue: u32,
        uid: u32,
        inode: u32,
    }

    fn family_and_bytes(ip: IpAddr) -> (u8, [u8; 16]) {
        let mut bytes = [0u8; 16];
        match ip.to_canonical() {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                (libc::AF_INET as u8, bytes)
            }
            IpAddr::V6(v6) => (libc::AF_INET6 as u8, v6.octets()),
        }
    }

    pub fn socket_uid(remote: SocketAddr, local: SocketAddr) -> Option<u32> {
        let (family, src) = family_and_bytes(remote.ip());
        let (local_family, dst) = family_and_bytes(local.ip());
        if family != local_family {
            return None;
        }
        let request = Request {
            hdr: NlMsgHdr {
                len: size_of::<Request>() as u32,
                kind: SOCK_DIAG_BY_FAMILY,
                flags: NLM_F_REQUEST,
                seq: 1,
                pid: 0,
            },
            family,
            protocol: libc::IPPROTO_TCP as u8,
            ext: 0,
            pad: 0,
            states: !0,
            id: SockId {
                sport: remote.port().to_be_bytes(),
                dport: local.port().to_be_bytes(),
                src,
                dst,
                ifindex: 0,
                cookie: [INET_DIAG_NOCOOKIE; 2],
            },
        };
        // SAFETY: socket() takes no pointers; the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if raw < 0 {
            return None;
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is "the kernel" as destination.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `request` and `kernel` are valid for reads of the sizes given, for the
        // duration of the call.
        let sent = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                (&request as *const Request).cast(),
                size_of::<Request>(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent != size_of::<Request>() as isize {
            return None;
        }
        // The kernel answers within sendto; MSG_DONTWAIT makes sure a missing answer
        // never blocks the accept loop.
        let mut buf = [0u8; 1024];
        // SAFETY: `buf` is valid for writes of its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n < size_of::<Reply>() as isize {
            return None;
        }
        // SAFETY: `buf` holds at least size_of::<Reply>() initialized bytes; Reply is
        // plain data with no invalid bit patterns, read unaligned.
        let reply: Reply = unsafe { std::ptr::read_unaligned(buf.as_ptr().cast()) };
        if reply.hdr.kind == NLMSG_ERROR || reply.hdr.kind != SOCK_DIAG_BY_FAMILY {
            return None;
        }
        let same = reply.id.sport == request.id.sport
            && reply.id.dport == request.id.dport
            && reply.id.src == request.id.src
            && reply.id.dst == request.id.dst;
        same.then_some(reply.uid)
    }
}

/// An accepted connection holding its peer's slot, closed with a timeout error if its
/// first bytes do not arrive in time.
#[derive(Debug)]
pub struct Limited<IO> {
    io: IO,
    _slot: Slot,
    /// First bytes still expected, and by when.
    needed: usize,
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<IO> Limited<IO> {
    pub fn get_ref(&self) -> &IO {
        &self.io
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Limited<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                this.needed = this.needed.saturating_sub(n);
                if this.needed == 0 || n == 0 {
                    this.deadline = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Limited<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Limited<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_are_per_peer_and_slots_come_back() {
        let counts = Arc::<Counts>::default();
        let alice = Peer::Uid(1000);
        let eve = Peer::Uid(1001);
        let held: Vec<Slot> = (0..3)
            .map(|_| take_slot(&counts, eve.clone(), 3).expect("under the cap"))
            .collect();
        assert!(
            take_slot(&counts, eve.clone(), 3).is_none(),
            "eve is at her cap"
        );
        assert!(
            take_slot(&counts, alice.clone(), 3).is_some(),
            "alice is not"
        );
        drop(held);
        assert!(take_slot(&counts, eve, 3).is_some());
        assert!(counts.lock().is_empty(), "no counts left behind");
    }

    #[tokio::test(start_paused = true)]
    async fn out_of_descriptors_the_accept_loop_backs_off() {
        let mut gate = Gate::new("test", Limits::GRPC);
        let emfile = || io::Error::from_raw_os_error(libc::EMFILE);
        let mut waits = Vec::new();
        for _ in 0..10 {
            gate.failed(emfile()).await;
            waits.push(gate.backoff);
        }
        assert_eq!(waits[0], BACKOFF_MIN);
        assert_eq!(waits[1], BACKOFF_MIN * 2);
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        // A connection accepted again resets it; other errors never wait.
        let _ = gate.admit((), Peer::Uid(1));
        assert!(gate.backoff.is_zero());
        gate.failed(io::Error::from_raw_os_error(libc::ECONNABORTED))
            .await;
        assert!(gate.backoff.is_zero());
    }

    #[tokio::test]
    async fn the_owner_of_a_real_loopback_peer_is_found() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (_server, remote) = listener.accept().await.unwrap();
        if cfg!(target_os = "linux") {
            // SAFETY: geteuid has no preconditions and cannot fail.
            let me = unsafe { libc::geteuid() };
            assert_eq!(tcp_peer_uid(remote, addr), Some(me));
            let elsewhere = SocketAddr::new(remote.ip(), remote.port().wrapping_add(1));
            assert_eq!(tcp_peer_uid(elsewhere, addr), None, "no such connection");
        }
    }

    #[tokio::test]
    async fn a_silent_connection_is_closed_and_a_capped_one_at_once() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            per_peer: 1,
            first_bytes: 4,
            first_bytes_within: Duration::from_millis(50),
        };
        let mut incoming = Box::pin(tcp("test", listener, limits));
        let _first = TcpStream::connect(addr).await.unwrap();
        let mut conn = futures_util::StreamExt::next(&mut incoming)
            .await
            .unwrap()
            .unwrap();
        // A second connection of the same peer is over the cap: closed without a word.
        let mut second = TcpStream::connect(addr).await.unwrap();
        let accept_next = tokio::spawn(async move {
            let next = futures_util::StreamExt::next(&mut incoming).await;
            next.map(|c| c.is_ok())
        });
        let mut byte = [0u8; 1];
        assert_eq!(second.read(&mut byte).await.unwrap_or(0), 0);
        // The first never sends anything: its read fails once the deadline passes.
        let err = conn.read(&mut byte).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        accept_next.abort();
    }
}
