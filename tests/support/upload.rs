//! A tiny web server with an upload form, for browser tests.
//!
//! `GET /` serves a page with one form: a file input (`#file`) and a submit button
//! (`#submit`), posting `multipart/form-data` to `/upload`. `POST /upload` reads the body
//! and records the upload as it arrives: the file's name (from its part's headers), the
//! body bytes expected (`Content-Length`) and received so far, and how it ended: whole and
//! well-formed (the file's sha256 and length, also shown on the answer page), or failed
//! (the connection ended or broke first, or the body was malformed). Every read is bounded:
//! the head (64 KiB), the body ([`MAX_BODY`]) and each wait for bytes ([`IDLE_TIMEOUT`], a
//! safety net only). Same design as [`crate::faulty`]: a thread per connection, and
//! dropping the server shuts every connection down.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::faulty::{Connections, header, parse_head, read_head};

/// Largest upload body accepted.
pub const MAX_BODY: usize = 64 << 20;
/// How long a connection may send nothing before the server gives up on it.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);

const FORM: &str = "<!DOCTYPE html><html><head><title>upload</title></head><body>\
<form method=\"post\" action=\"/upload\" enctype=\"multipart/form-data\">\
<input type=\"file\" name=\"file\" id=\"file\"><button type=\"submit\" id=\"submit\">Upload</button>\
</form></body></html>";

/// How an upload ended, so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The body is still arriving.
    InProgress,
    /// The whole body arrived and held one file: its sha256 and length.
    Complete { sha256: String, len: usize },
    /// The body did not arrive whole, or was malformed: why.
    Failed(String),
}

/// One `POST /upload`.
#[derive(Clone, Debug)]
pub struct Upload {
    /// The file's name, once its part's headers have arrived.
    pub filename: Option<String>,
    /// `Content-Length`.
    pub expected: usize,
    /// Body bytes received so far.
    pub received: usize,
    pub outcome: Outcome,
}

/// The running server; see the module documentation.
pub struct UploadServer {
    uploads: Arc<Mutex<Vec<Upload>>>,
    conns: Arc<Connections>,
    port: u16,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UploadServer {
    /// Serves on a fresh loopback port; it is listening when this returns.
    pub fn start() -> UploadServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local address").port();
        let server = UploadServer {
            uploads: Arc::default(),
            conns: Arc::default(),
            port,
        };
        let uploads = Arc::clone(&server.uploads);
        let serve_each = move |stream| serve(&uploads, stream);
        server.conns.accept(listener, "upload-accept", serve_each);
        server
    }

    /// `http://127.0.0.1:PORT/`: the form.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// Every upload so far, in the order they began.
    pub fn uploads(&self) -> Vec<Upload> {
        lock(&self.uploads).clone()
    }

    /// The uploads of a file named `filename` so far.
    pub fn uploads_of(&self, filename: &str) -> Vec<Upload> {
        let all = self.uploads();
        let named = |u: &Upload| u.filename.as_deref() == Some(filename);
        all.into_iter().filter(named).collect()
    }
}

impl Drop for UploadServer {
    fn drop(&mut self) {
        self.conns.stop(self.port);
    }
}

fn serve(uploads: &Mutex<Vec<Upload>>, mut stream: TcpStream) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let mut buf = Vec::new();
    while let Some(head) = read_head(&mut stream, &mut buf)
        && let Some((words, headers)) = parse_head(&head)
        && let [method, target, _version] = &words[..]
    {
        let keep = match (method.as_str(), target.as_str()) {
            ("GET", "/") => respond(&mut stream, 200, FORM),
            ("POST", "/upload") => {
                receive(uploads, &mut stream, &headers, std::mem::take(&mut buf));
                false
            }
            _ => respond(&mut stream, 404, "<title>not found</title>"),
        };
        if !keep {
            return;
        }
    }
}

/// Sends an HTML page; true if the connection can serve another request.
fn respond(stream: &mut TcpStream, status: u16, html: &str) -> bool {
    let head = format!(
        "HTTP/1.1 {status} \r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
        html.len()
    );
    stream.write_all(head.as_bytes()).is_ok() && stream.write_all(html.as_bytes()).is_ok()
}

/// Reads an upload's body (`buf` holds what came with the head), recording it as it
/// arrives, and answers it; the connection is closed after.
fn receive(
    uploads: &Mutex<Vec<Upload>>,
    stream: &mut TcpStream,
    headers: &[(String, String)],
    mut body: Vec<u8>,
) {
    let expected = header(headers, "content-length").and_then(|l| l.parse::<usize>().ok());
    let boundary = header(headers, "content-type").and_then(|t| {
        let (kind, params) = t.split_once(';')?;
        let boundary = params.trim().strip_prefix("boundary=")?;
        (kind.trim() == "multipart/form-data").then(|| boundary.trim_matches('"').to_string())
    });
    let (Some(expected), Some(boundary)) = (expected.filter(|&l| l <= MAX_BODY), boundary) else {
        respond(stream, 400, "<title>bad upload</title>");
        return;
    };
    let index = {
        let mut uploads = lock(uploads);
        uploads.push(Upload {
            filename: None,
            expected,
            received: 0,
            outcome: Outcome::InProgress,
        });
        uploads.len() - 1
    };
    let update = |f: &dyn Fn(&mut Upload)| f(&mut lock(uploads)[index]);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut filename = None;
    let ended = loop {
        filename = filename.or_else(|| part_filename(&body, &boundary));
        update(&|u| {
            u.received = body.len().min(expected);
            u.filename.clone_from(&filename);
        });
        if body.len() >= expected {
            break None;
        }
        let want = chunk.len().min(expected - body.len());
        match stream.read(&mut chunk[..want]) {
            Ok(0) => break Some("the connection ended".to_string()),
            Ok(n) => body.extend_from_slice(&chunk[..n]),
            Err(e) => break Some(format!("the connection failed: {e}")),
        }
    };
    if let Some(why) = ended {
        let why = format!("{why} after {} of {expected} bytes", body.len());
        update(&|u| u.outcome = Outcome::Failed(why.clone()));
        return;
    }
    body.truncate(expected);
    match file_part(&body, &boundary) {
        Some(file) => {
            let (sha256, len) = (hex::encode(Sha256::digest(file)), file.len());
            let page = format!(
                "<!DOCTYPE html><html><head><title>uploaded</title></head><body>\
                 <p id=\"sha256\">{sha256}</p><p id=\"len\">{len}</p></body></html>"
            );
            update(&|u| {
                u.outcome = Outcome::Complete {
                    sha256: sha256.clone(),
                    len,
                }
            });
            respond(stream, 200, &page);
        }
        None => {
            let why = "a malformed multipart body".to_string();
            update(&|u| u.outcome = Outcome::Failed(why.clone()));
            respond(stream, 400, "<title>bad upload</title>");
        }
    }
}

/// The headers of the body's first part, once they have arrived, and where its content
/// starts.
fn first_part(body: &[u8], boundary: &str) -> Option<(String, usize)> {
    let opening = format!("--{boundary}\r\n");
    let rest = body.strip_prefix(opening.as_bytes())?;
    // Part headers are short: look for their end in the first 64 KiB only.
    let window = &rest[..rest.len().min(64 * 1024)];
    let end = window.windows(4).position(|w| w == b"\r\n\r\n")?;
    let headers = String::from_utf8_lossy(&rest[..end]).into_owned();
    Some((headers, opening.len() + end + 4))
}

/// The file name in the first part's `Content-Disposition`, once it has arrived.
fn part_filename(body: &[u8], boundary: &str) -> Option<String> {
    let (headers, _) = first_part(body, boundary)?;
    let value = headers.split("filename=\"").nth(1)?;
    Some(value.split('"').next()?.to_string())
}

/// The content of a body made of exactly one file part (the form has one field).
fn file_part<'a>(body: &'a [u8], boundary: &str) -> Option<&'a [u8]> {
    let (_, start) = first_part(body, boundary)?;
    let closing = format!("\r\n--{boundary}--\r\n");
    let end = body.len().checked_sub(closing.len())?;
    (end >= start && body[end..] == *closing.as_bytes()).then(|| &body[start..end])
}
