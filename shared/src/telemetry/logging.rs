//! Logging that never blocks the caller.
//!
//! Each formatted log line goes into a bounded queue with `try_send`; a dedicated thread
//! writes the queue to stderr or a file. When the queue is full (a stuck terminal, a full
//! or slow disk) the line is dropped and counted, never waited for: a FUSE callback that
//! logs can not be stalled by its logger (the original app's deadlock). The drop count is
//! exported as `fusestream_log_lines_dropped_total`.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{EnvFilter, Layer};

/// Lines that may wait in the queue before new ones are dropped.
const QUEUE_LINES: usize = 8192;

/// Environment variable with the log filter (`info`, `fusestream_mountd=debug`, ...).
pub const LOG_ENV: &str = "FUSESTREAM_LOG";

/// Where log lines go.
#[derive(Debug, Clone)]
pub enum LogTarget {
    Stderr,
    File(PathBuf),
}

/// Counters of the logging pipeline, for status and metrics.
#[derive(Debug, Clone, Default)]
pub struct LogStats {
    dropped: Arc<AtomicU64>,
}

impl LogStats {
    /// Lines dropped because the queue was full.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The log layer: lines filtered by `FUSESTREAM_LOG` (else `default_filter`), formatted,
/// and queued for the writer thread. Never blocks the thread that logs.
pub(super) fn layer<S>(
    target: &LogTarget,
    default_filter: &str,
) -> io::Result<(impl Layer<S> + use<S>, LogStats)>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let sink: Box<dyn Write + Send> = match target {
        LogTarget::Stderr => Box::new(io::stderr()),
        LogTarget::File(path) => Box::new(open_log_file(path)?),
    };
    let (tx, rx) = sync_channel(QUEUE_LINES);
    std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(rx, sink))?;
    let stats = LogStats::default();
    let writer = QueueWriter {
        tx,
        dropped: stats.dropped.clone(),
    };
    let filter =
        EnvFilter::try_from_env(LOG_ENV).unwrap_or_else(|_| EnvFilter::new(default_filter));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false)
        .with_filter(filter);
    Ok((layer, stats))
}

/// Opens (creating) the log file `path` for appending: mode 0600, never through a symlink
/// (O_NOFOLLOW), in a directory no other user can replace it in (`paths::safe_dir`). An
/// existing log of ours with a looser mode is tightened: logs name files and sources.
pub fn open_log_file(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::paths::safe_dir(dir)?;
    }
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))?;
    // A FIFO or a device (`/dev/stderr`) is left as it is; a regular file of ours is
    // made private.
    let meta = file.metadata()?;
    if meta.is_file() && meta.uid() == crate::paths::euid() && meta.mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

fn write_lines(rx: Receiver<Vec<u8>>, mut sink: Box<dyn Write + Send>) {
    for line in rx {
        // A failing sink loses the line; there is nowhere better to report it.
        let _ = sink.write_all(&line);
        let _ = sink.flush();
    }
}

/// `MakeWriter` handing out one buffer per event; the buffer is queued when dropped.
#[derive(Clone)]
struct QueueWriter {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl<'a> MakeWriter<'a> for QueueWriter {
    type Writer = QueuedLine;

    fn make_writer(&'a self) -> QueuedLine {
        QueuedLine {
            buf: Vec::with_capacity(256),
            queue: self.clone(),
        }
    }
}

struct QueuedLine {
    buf: Vec<u8>,
    queue: QueueWriter,
}

impl Write for QueuedLine {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QueuedLine {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        match self.queue.tx.try_send(std::mem::take(&mut self.buf)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queue.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that never accepts a byte: the writer thread is stuck forever.
    struct Stuck(std::sync::mpsc::Receiver<()>);
    impl Write for Stuck {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(0)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn log_files_are_private_and_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("logs/d.log");
        drop(open_log_file(&path).unwrap());
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&path) & 0o777, 0o600);
        assert_eq!(mode(path.parent().unwrap()) & 0o777, 0o700);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(open_log_file(&path).unwrap());
        assert_eq!(mode(&path) & 0o777, 0o600, "tightened");
        let target = dir.path().join("secret");
        std::fs::write(&target, b"x").unwrap();
        let link = dir.path().join("link.log");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(open_log_file(&link).is_err());
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn a_stuck_sink_drops_and_counts_instead_of_blocking() {
        let (_never, blocker) = std::sync::mpsc::channel();
        let (tx, rx) = sync_channel(4);
        std::thread::spawn(move || write_lines(rx, Box::new(Stuck(blocker))));
        let writer = QueueWriter {
            tx,
            dropped: Arc::default(),
        };
        for i in 0..100 {
            let mut line = writer.make_writer();
            writeln!(line, "line {i}").unwrap();
        }
        // At most 4 queued + 1 taken by the stuck thread; the rest were dropped.
        assert!(writer.dropped.load(Ordering::Relaxed) >= 95);
    }
}
