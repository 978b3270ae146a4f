//! A fake HTTP/1.1 object server that misbehaves on demand, for fault-injection tests.
//!
//! It serves one object at every path (GET and HEAD) with a strong `ETag`, single byte
//! ranges (`206`/`416`), `If-Match` (`412`) and keep-alive, like a real object store.
//! The [`Mode`] can be switched at any time through [`FaultyServer::set_mode`]; every
//! request reads the mode when it arrives, so a test can break the server mid-transfer.
//!
//! Design: a plain `std::net::TcpListener` on `127.0.0.1:0` (listening before
//! [`FaultyServer::start`] returns, so no readiness polling) and one thread per connection.
//! That keeps the faults exact and easy to reason about: a stall is a thread blocked in
//! `read`, a reset is `SO_LINGER 0` plus `close`. Dropping the server stops accepting and
//! `shutdown`s every open socket (a `try_clone` of each is kept), which ends stalled and
//! idle threads without joining anything that could hang. Chaos is a deterministic
//! xorshift of the seed and a request sequence number, so a failing seed can be replayed
//! (exactly, when requests arrive one at a time).

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::Prng;

/// Longest request head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// A slow drip sends at most this much in small pieces, then the rest at full speed.
const DRIP_LIMIT: usize = 64 * 1024;

/// How the server behaves for requests that arrive from now on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A correct server.
    Healthy,
    /// Sends the head and the first `after_bytes` body bytes, then hangs without closing
    /// (until the client closes or the server is dropped).
    Stall { after_bytes: usize },
    /// Each request gets a pseudo-random [`Fault`] (40 % healthy, 10 % each fault).
    Chaos { seed: u64 },
    /// The object was replaced: other ETag, every byte XOR 0xFF.
    Changed,
    /// A host that accepts connections and requests and never answers (until the client
    /// closes or the server is dropped).
    Silent,
    /// Every request is answered 503 with this Retry-After (seconds).
    Unavailable { retry_after: u32 },
    /// Correct responses whose whole body is written in pieces (`TCP_NODELAY`): nine in
    /// ten of 1-512 bytes, one in ten of 16-64 KiB, lengths drawn from `seed`. A client
    /// receives them in pieces of every size, in no fixed relation to its own units.
    Pieces { seed: u64 },
}

/// What [`Mode::Chaos`] did to one request.
///
/// `Reset`: the head and a random part of the body (maybe none), then a TCP reset.
/// `Status500`/`Status503`/`Status429` (with `Retry-After: 1`): empty body, connection kept.
/// `Drip`: a correct response whose first 64 KiB come in 1–4 KiB pieces ~1 ms apart.
/// `Short`: the head with the full `Content-Length`, fewer body bytes, an orderly close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Healthy,
    Reset,
    Status500,
    Status503,
    Status429,
    Drip,
    Short,
}

struct Object {
    body: Vec<u8>,
    etag: String,
}

impl Object {
    fn new(body: Vec<u8>, version: &str) -> Object {
        let hash = hex::encode(&Sha256::digest(&body)[..8]);
        Object {
            etag: format!("\"{version}-{hash}\""),
            body,
        }
    }
}

/// The open connections of a test server, one thread each, so that stopping the server
/// can `shutdown` them all (which ends threads blocked on them) without joining anything.
#[derive(Default)]
pub(crate) struct Connections(Mutex<Conns>);

#[derive(Default)]
struct Conns {
    stopping: bool,
    next_id: u64,
    open: HashMap<u64, TcpStream>,
}

impl Connections {
    /// Accepts connections on `listener` on a thread named `name`, and serves each with
    /// `serve` on a thread of its own, until [`Connections::stop`].
    pub(crate) fn accept(
        self: &Arc<Self>,
        listener: TcpListener,
        name: &str,
        serve: impl Fn(TcpStream) + Send + Sync + 'static,
    ) {
        let conns = Arc::clone(self);
        let serve = Arc::new(serve);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                for stream in listener.incoming() {
                    let mut open = lock(&conns.0);
                    if open.stopping {
                        return;
                    }
                    let Some((stream, clone)) =
                        stream.ok().and_then(|s| Some((s.try_clone().ok()?, s)))
                    else {
                        continue;
                    };
                    let id = open.next_id;
                    open.next_id += 1;
                    open.open.insert(id, clone);
                    drop(open);
                    let (conns, serve) = (Arc::clone(&conns), Arc::clone(&serve));
                    std::thread::spawn(move || {
                        serve(stream);
                        lock(&conns.0).open.remove(&id);
                    });
                }
            })
            .expect("spawn accept thread");
    }

    /// Stops accepting on `port` (the listener's) and shuts every open connection down.
    pub(crate) fn stop(&self, port: u16) {
        let mut conns = lock(&self.0);
        conns.stopping = true;
        for stream in conns.open.values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        drop(conns);
        // Wake the accept loop so it sees `stopping` and closes the listener.
        let _ = TcpStream::connect(("127.0.0.1", port));
    }
}

struct Shared {
    /// The object, and the one [`Mode::Changed`] serves instead.
    objects: [Object; 2],
    mode: Mutex<Mode>,
    requests: AtomicU64,
    statuses: Mutex<HashMap<u16, u64>>,
    faults: [AtomicU64; 7],
    chaos_seq: AtomicU64,
    conns: Arc<Connections>,
}

/// The running server; see the module documentation.
pub struct FaultyServer {
    shared: Arc<Shared>,
    port: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FaultyServer {
    /// Serves `data` on a fresh loopback port; it is listening when this returns.
    pub fn start(data: Vec<u8>, mode: Mode) -> FaultyServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let changed = data.iter().map(|b| b ^ 0xFF).collect();
        let shared = Arc::new(Shared {
            objects: [Object::new(data, "v1"), Object::new(changed, "v2")],
            mode: Mutex::new(mode),
            requests: AtomicU64::new(0),
            statuses: Mutex::default(),
            faults: Default::default(),
            chaos_seq: AtomicU64::new(0),
            conns: Arc::default(),
        });
        let serve_shared = Arc::clone(&shared);
        let serve_each = move |stream| serve(&serve_shared, stream);
        shared.conns.accept(listener, "faulty-accept", serve_each);
        FaultyServer { shared, port }
    }

    /// Changes the behaviour for requests that arrive from now on.
    pub fn set_mode(&self, mode: Mode) {
        *lock(&self.shared.mode) = mode;
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT/path` (every path serves the same object).
    pub fn url(&self, path: &str) -> String {
        let path = path.trim_start_matches('/');
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// The ETag served in the current mode.
    pub fn etag(&self) -> String {
        let changed = *lock(&self.shared.mode) == Mode::Changed;
        self.shared.objects[usize::from(changed)].etag.clone()
    }

    /// Requests received (complete heads), whatever happened to them.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(SeqCst)
    }

    /// Responses sent with `status`, counted when the head is sent (so a reset or short
    /// `206` counts as a `206`).
    pub fn count(&self, status: u16) -> u64 {
        let statuses = lock(&self.shared.statuses);
        statuses.get(&status).copied().unwrap_or(0)
    }

    /// How many requests [`Mode::Chaos`] gave this outcome.
    pub fn faults(&self, fault: Fault) -> u64 {
        self.shared.faults[fault as usize].load(SeqCst)
    }
}

impl Drop for FaultyServer {
    fn drop(&mut self) {
        self.shared.conns.stop(self.port);
    }
}

/// Header (name, value) pairs; names are lowercased.
pub(crate) type Headers = Vec<(String, String)>;

/// Splits a head into the words of its first line and its headers (names lowercased).
pub(crate) fn parse_head(head: &[u8]) -> Option<(Vec<String>, Headers)> {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.lines().skip_while(|l| l.trim().is_empty());
    let first = lines.next()?.split_whitespace().map(str::to_string);
    let headers = lines.map(|line| {
        let (name, value) = line.split_once(':')?;
        Some((name.trim().to_ascii_lowercase(), value.trim().to_string()))
    });
    Some((first.collect(), headers.collect::<Option<_>>()?))
}

pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    let found = headers.iter().find(|(n, _)| n == name);
    found.map(|(_, v)| v.as_str())
}

/// End of the head in `buf`: (head length, bytes to consume). Accepts bare LF line ends.
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    (0..buf.len()).find_map(|i| match &buf[i..] {
        [b'\n', b'\n', ..] => Some((i, i + 2)),
        [b'\n', b'\r', b'\n', ..] => Some((i, i + 3)),
        _ => None,
    })
}

/// Reads the next request head; `None` on EOF, error or an oversized head.
pub(crate) fn read_head(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some((len, consumed)) = head_end(buf) {
            let head = buf[..len].to_vec();
            buf.drain(..consumed);
            return Some(head);
        }
        match stream.read(&mut chunk) {
            Ok(n) if n > 0 && buf.len() <= MAX_HEAD => buf.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

fn serve(shared: &Shared, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buf)
        && let Some((words, headers)) = parse_head(&head)
        && let [method, _target, version] = &words[..]
        && version.starts_with("HTTP/1.")
        && let Ok(true) = respond(shared, &mut stream, method, version, &headers)
    {}
}

/// A single `bytes=` range: `Some(Ok((start, end)))`, `Some(Err(()))` if unsatisfiable,
/// `None` (serve the whole object) if malformed or multiple.
fn parse_range(value: &str, total: usize) -> Option<Result<(usize, usize), ()>> {
    let (a, b) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: usize = b.parse().ok()?;
        (total.saturating_sub(n), total)
    } else if b.is_empty() {
        (a.parse().ok()?, total)
    } else {
        let (start, last): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
        (
            start,
            last.checked_add(1).filter(|&end| end > start)?.min(total),
        )
    };
    Some(if start < end {
        Ok((start, end))
    } else {
        Err(())
    })
}

impl Shared {
    /// A response head; counts the status.
    fn head(&self, status: u16, headers: &[(&str, String)], len: usize, close: bool) -> Vec<u8> {
        *lock(&self.statuses).entry(status).or_default() += 1;
        // No reason phrase: it is optional, and clients ignore it.
        let mut head = format!("HTTP/1.1 {status} \r\n");
        for (name, value) in [("Content-Length", len.to_string())].iter().chain(headers) {
            head += &format!("{name}: {value}\r\n");
        }
        if close {
            head += "Connection: close\r\n";
        }
        (head + "\r\n").into_bytes()
    }

    fn chaos(&self, seed: u64) -> (Fault, Prng) {
        let n = self.chaos_seq.fetch_add(1, SeqCst);
        let mut rng = Prng::new(seed ^ n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        rng.next_u64();
        let fault = match rng.below(100) {
            0..40 => Fault::Healthy,
            40..50 => Fault::Reset,
            50..60 => Fault::Status500,
            60..70 => Fault::Status503,
            70..80 => Fault::Status429,
            80..90 => Fault::Drip,
            _ => Fault::Short,
        };
        self.faults[fault as usize].fetch_add(1, SeqCst);
        (fault, rng)
    }
}

/// Answers one request; `Ok(true)` keeps the connection.
fn respond(
    shared: &Shared,
    stream: &mut TcpStream,
    method: &str,
    version: &str,
    headers: &[(String, String)],
) -> io::Result<bool> {
    shared.requests.fetch_add(1, SeqCst);
    let mode = *lock(&shared.mode);
    let conn = header(headers, "connection").unwrap_or("");
    let conn = conn.to_ascii_lowercase();
    let has = |token| conn.split(',').any(|t| t.trim() == token);
    // Request bodies are not read (clients send none): close instead of misparsing one.
    let body_sent = header(headers, "transfer-encoding").is_some()
        || header(headers, "content-length").is_some_and(|l| l != "0");
    let close = has("close") || (version == "HTTP/1.0" && !has("keep-alive")) || body_sent;
    let (fault, mut rng) = match mode {
        Mode::Chaos { seed } => shared.chaos(seed),
        Mode::Pieces { seed } => (
            Fault::Healthy,
            Prng::new(seed ^ shared.requests.load(SeqCst)),
        ),
        _ => (Fault::Healthy, Prng::new(1)),
    };
    if mode == Mode::Silent {
        while matches!(stream.read(&mut [0u8; 4096]), Ok(n) if n > 0) {}
        return Ok(false);
    }
    let error = match fault {
        _ if let Mode::Unavailable { retry_after } = mode => {
            Some((503, vec![("Retry-After", retry_after.to_string())]))
        }
        Fault::Status500 => Some((500, vec![])),
        Fault::Status503 => Some((503, vec![])),
        Fault::Status429 => Some((429, vec![("Retry-After", "1".to_string())])),
        _ if method != "GET" && method != "HEAD" => {
            Some((405, vec![("Allow", "GET, HEAD".into())]))
        }
        _ => None,
    };
    if let Some((status, extra)) = error {
        stream.write_all(&shared.head(status, &extra, 0, close))?;
        return Ok(!close);
    }
    let object = &shared.objects[usize::from(mode == Mode::Changed)];
    let total = object.body.len();
    let mut extra = vec![("ETag", object.etag.clone())];
    let matches = |tag: &str| tag.trim() == "*" || tag.trim() == object.etag;
    if let Some(tags) = header(headers, "if-match")
        && !tags.split(',').any(matches)
    {
        stream.write_all(&shared.head(412, &extra, 0, close))?;
        return Ok(!close);
    }
    extra.push(("Accept-Ranges", "bytes".into()));
    let range = header(headers, "range").and_then(|r| parse_range(r, total));
    let (status, start, end) = match range {
        None => (200, 0, total),
        Some(Ok((start, end))) => {
            let last = end - 1;
            extra.push(("Content-Range", format!("bytes {start}-{last}/{total}")));
            (206, start, end)
        }
        Some(Err(())) => {
            extra.push(("Content-Range", format!("bytes */{total}")));
            stream.write_all(&shared.head(416, &extra, 0, close))?;
            return Ok(!close);
        }
    };
    let body = &object.body[start..if method == "HEAD" { start } else { end }];
    stream.write_all(&shared.head(status, &extra, end - start, close))?;
    if let Mode::Stall { after_bytes } = mode {
        stream.write_all(&body[..after_bytes.min(body.len())])?;
        // Hang: wait for the peer to close or for `Drop` to shut the socket down.
        while matches!(stream.read(&mut [0u8; 4096]), Ok(n) if n > 0) {}
        return Ok(false);
    }
    if let Mode::Pieces { .. } = mode {
        stream.set_nodelay(true)?;
        let mut sent = 0;
        while sent < body.len() {
            let len = match rng.below(10) {
                0 => 16 * 1024 + rng.below(48 * 1024) as usize,
                _ => 1 + rng.below(512) as usize,
            };
            let next = (sent + len).min(body.len());
            stream.write_all(&body[sent..next])?;
            sent = next;
        }
        return Ok(!close);
    }
    let cut = rng.below(body.len().max(1) as u64) as usize;
    match fault {
        Fault::Reset => {
            stream.write_all(&body[..cut])?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            let size = size_of::<libc::linger>() as libc::socklen_t;
            let (fd, opt) = (stream.as_raw_fd(), (&raw const linger).cast());
            // SAFETY: a valid socket and a correctly sized `linger`. The last close of the
            // socket (this stream and the clone in `Connections`) then sends a reset.
            unsafe { libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, opt, size) };
            Ok(false)
        }
        Fault::Short => stream.write_all(&body[..cut]).map(|()| false),
        Fault::Drip => {
            let mut sent = 0;
            while sent < body.len().min(DRIP_LIMIT) {
                let next = (sent + 1024 * (1 + rng.below(4) as usize)).min(body.len());
                stream.write_all(&body[sent..next])?;
                sent = next;
                std::thread::sleep(Duration::from_millis(1));
            }
            stream.write_all(&body[sent..]).map(|()| !close)
        }
        _ => stream.write_all(body).map(|()| !close),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A keep-alive test client that reads bodies by Content-Length.
    struct Client {
        stream: TcpStream,
        buf: Vec<u8>,
    }

    /// A response: status, headers, body, and whether the whole body arrived.
    type Response = (u16, Headers, Vec<u8>, bool);

    impl Client {
        fn connect(server: &FaultyServer) -> Client {
            let stream = TcpStream::connect(("127.0.0.1", server.port())).expect("connect");
            let mut client = Client {
                stream,
                buf: vec![],
            };
            client.timeout(30_000); // A safety net only: no assertion depends on it.
            client
        }

        fn timeout(&mut self, ms: u64) {
            let timeout = Some(Duration::from_millis(ms));
            self.stream.set_read_timeout(timeout).expect("read timeout");
        }

        fn send(&mut self, method: &str, headers: &str) {
            let req = format!("{method} /o HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
            self.stream.write_all(req.as_bytes()).expect("send request");
        }

        /// Buffers at least `want` bytes; false if the connection ended or failed first.
        fn fill(&mut self, want: usize) -> bool {
            let mut chunk = [0u8; 16384];
            while self.buf.len() < want {
                match self.stream.read(&mut chunk) {
                    Ok(n) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                    _ => return false,
                }
            }
            true
        }

        /// Reads a response head; `None` if the connection ended or failed first.
        fn head(&mut self) -> Option<(u16, Headers)> {
            while head_end(&self.buf).is_none() {
                if !self.fill(self.buf.len() + 1) {
                    return None;
                }
            }
            let (len, consumed) = head_end(&self.buf)?;
            let (words, headers) = parse_head(&self.buf[..len]).expect("response head");
            self.buf.drain(..consumed);
            Some((words[1].parse().expect("status"), headers))
        }

        fn request(&mut self, method: &str, headers: &str) -> Option<Response> {
            self.send(method, headers);
            let (status, headers) = self.head()?;
            let len = header(&headers, "content-length").expect("length");
            let len = if method == "HEAD" {
                0
            } else {
                len.parse().unwrap()
            };
            let complete = self.fill(len);
            let body = self.buf.drain(..len.min(self.buf.len())).collect();
            Some((status, headers, body, complete))
        }

        fn get(&mut self, headers: &str) -> Response {
            self.request("GET", headers).expect("a response")
        }
    }

    fn data(len: usize) -> Vec<u8> {
        let mut rng = Prng::new(7);
        (0..len).map(|_| rng.next_u64() as u8).collect()
    }

    #[test]
    fn healthy_ranges_and_keep_alive() {
        let data = data(1000);
        let server = FaultyServer::start(data.clone(), Mode::Healthy);
        let port = server.port();
        assert_eq!(server.url("/a/b"), format!("http://127.0.0.1:{port}/a/b"));
        let mut c = Client::connect(&server);
        let cases = [
            ("bytes=100-199", 206, 100..200, "bytes 100-199/1000"),
            ("bytes=990-", 206, 990..1000, "bytes 990-999/1000"),
            ("bytes=-5", 206, 995..1000, "bytes 995-999/1000"),
            ("bytes=0-99999", 206, 0..1000, "bytes 0-999/1000"),
            ("bytes=1000-", 416, 0..0, "bytes */1000"),
        ];
        for (range, status, want, content_range) in cases {
            let (got, headers, body, complete) = c.get(&format!("Range: {range}\r\n"));
            assert_eq!(
                (got, complete, &body[..]),
                (status, true, &data[want]),
                "{range}"
            );
            assert_eq!(header(&headers, "content-range"), Some(content_range));
            assert_eq!(header(&headers, "etag"), Some(&*server.etag()));
            assert_eq!(header(&headers, "accept-ranges"), Some("bytes"));
        }
        let (status, headers, ..) = c.request("HEAD", "").expect("HEAD");
        let length = header(&headers, "content-length");
        assert_eq!((status, length), (200, Some("1000")));
        let (status, headers, body, complete) = c.get("connection: Close\r\n");
        assert!(complete && status == 200 && body == data);
        assert_eq!(header(&headers, "connection"), Some("close"));
        assert!(!c.fill(c.buf.len() + 1), "closed after Connection: close");
        let counts = (server.count(206), server.count(200), server.count(416));
        assert_eq!((server.requests(), counts), (7, (4, 2, 1)));
    }

    #[test]
    fn if_match() {
        let server = FaultyServer::start(data(1000), Mode::Healthy);
        let mut c = Client::connect(&server);
        let etag = server.etag();
        assert_eq!(c.get(&format!("If-Match: \"x\", {etag}\r\n")).0, 200);
        let (status, _, body, complete) = c.get("If-Match: \"x\"\r\nRange: bytes=0-9\r\n");
        assert_eq!((status, body.len(), complete), (412, 0, true));
        assert_eq!(c.get("If-Match: *\r\n").0, 200);
        assert_eq!(server.count(412), 1);
    }

    #[test]
    fn stall_then_drop_releases_the_connection() {
        let data = data(100_000);
        let server = FaultyServer::start(data.clone(), Mode::Stall { after_bytes: 1000 });
        let mut c = Client::connect(&server);
        c.send("GET", "Range: bytes=0-9999\r\n");
        let (status, headers) = c.head().expect("head");
        let length = header(&headers, "content-length");
        assert_eq!((status, length), (206, Some("10000")));
        assert!(c.fill(1000));
        assert_eq!(c.buf, data[..1000]);
        // Nothing more comes: the read times out (the only timing element).
        c.timeout(300);
        let kind = c.stream.read(&mut [0u8; 64]).expect_err("stalled").kind();
        assert!(matches!(
            kind,
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        drop(server);
        c.timeout(30_000);
        assert_eq!(c.stream.read(&mut [0u8; 64]).expect("EOF after drop"), 0);
    }

    #[test]
    fn changed_object() {
        let data = data(1000);
        let server = FaultyServer::start(data.clone(), Mode::Healthy);
        let old = server.etag();
        let mut c = Client::connect(&server);
        server.set_mode(Mode::Changed);
        assert_eq!(c.get(&format!("If-Match: {old}\r\n")).0, 412);
        let (_, headers, body, _) = c.get("");
        assert_ne!(header(&headers, "etag"), Some(&*old));
        assert_eq!(body, data.iter().map(|b| b ^ 0xFF).collect::<Vec<_>>());
        server.set_mode(Mode::Healthy);
        assert_eq!(c.get(&format!("If-Match: {old}\r\n")).2, data);
    }

    #[test]
    fn chaos_produces_every_fault_and_correct_healthy_bytes() {
        let data = data(256 * 1024);
        let server = FaultyServer::start(data.clone(), Mode::Chaos { seed: 42 });
        let mut rng = Prng::new(99);
        let mut client = None;
        let (mut good, mut broken, mut statuses) = (0, 0, HashMap::new());
        for _ in 0..200 {
            let c = client.get_or_insert_with(|| Client::connect(&server));
            let start = rng.below(data.len() as u64) as usize;
            let end = (start + 1 + rng.below(128 * 1024) as usize).min(data.len());
            match c.request("GET", &format!("Range: bytes={start}-{}\r\n", end - 1)) {
                Some((206, _, body, true)) => {
                    assert_eq!(body, data[start..end]);
                    good += 1;
                }
                Some((status, headers, _, true)) => {
                    let retry = header(&headers, "retry-after");
                    assert_eq!(status == 429, retry == Some("1"));
                    *statuses.entry(status).or_insert(0) += 1;
                }
                _ => (broken, client) = (broken + 1, None),
            }
        }
        let f = |fault| server.faults(fault);
        assert_eq!(server.requests(), 200);
        assert_eq!(good, f(Fault::Healthy) + f(Fault::Drip));
        assert_eq!(broken, f(Fault::Reset) + f(Fault::Short));
        let by_status = [(500, Fault::Status500), (503, Fault::Status503)];
        for (status, fault) in by_status.into_iter().chain([(429, Fault::Status429)]) {
            assert_eq!(statuses.get(&status).copied().unwrap_or(0), f(fault));
            assert_eq!(server.count(status), f(fault));
        }
        let all = [
            Fault::Healthy,
            Fault::Reset,
            Fault::Status500,
            Fault::Status503,
        ];
        for fault in all
            .into_iter()
            .chain([Fault::Status429, Fault::Drip, Fault::Short])
        {
            assert!(f(fault) > 0, "{fault:?} never happened");
        }
    }
}
