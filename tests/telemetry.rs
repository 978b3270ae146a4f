//! Telemetry end to end, against a real OTLP receiver (`support/otlp.rs`): a span for
//! every FUSE op, bracketing the syscall that caused it; fetches as children of reads;
//! one trace from a Control RPC into the Mount RPC it causes; a stalled read visible
//! while it is stalled (`ops`, gRPC, metrics, and a `fuse.stalled` span); and telemetry
//! that cannot be delivered (a wedged collector, a log file nobody drains) dropped and
//! counted, never waited for.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::SystemTime;

use fusestream_tests::faulty::{FaultyServer, Mode};
use fusestream_tests::otlp::{Blackhole, OtlpSink, SpanRecord};
use fusestream_tests::{
    FuseStream, Options, completes, grpcurl_ok, metric, random_bytes, random_file, sha256,
    sha256_file,
};

const MIB: usize = 1 << 20;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The daemons export to `sink`: the mount daemon over gRPC, the control plane over
/// HTTP, so both transports are exercised. Batches go out every 100 ms.
fn exporting_to(sink: &OtlpSink) -> Options {
    Options {
        mountd_env: env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.grpc_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]),
        control_env: env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &sink.http_endpoint()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ]),
        mountd_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    }
}

/// Runs `f` and returns the wall-clock window around it.
fn bracketed(f: impl FnOnce()) -> (SystemTime, SystemTime) {
    let before = SystemTime::now();
    f();
    (before, SystemTime::now())
}

fn within(span: &SpanRecord, (before, after): (SystemTime, SystemTime)) -> bool {
    span.start >= before && span.end <= after && span.start <= span.end
}

#[test]
fn every_fuse_op_is_a_span_from_request_to_reply_and_fetches_are_children_of_reads() {
    let sink = OtlpSink::start();
    let fs = FuseStream::start_with(exporting_to(&sink));
    let input = fs.input("traced.bin");
    let data = random_file(&input, 3 * MIB);
    fs.ctl_ok(["stage", "--name", "dir/traced.bin", input.to_str().unwrap()]);
    let path = fs.mountpoint.join("dir/traced.bin");

    // Each syscall, with the wall-clock window it ran in. Synchronous FUSE ops (the
    // kernel waits for the reply before the syscall returns) must fall inside it.
    let stat = bracketed(|| {
        std::fs::metadata(&path).expect("stat");
    });
    let listing = bracketed(|| {
        assert_eq!(
            std::fs::read_dir(fs.mountpoint.join("dir"))
                .unwrap()
                .count(),
            1
        );
    });
    let file = File::open(&path).expect("open");
    let mut buf = vec![0u8; 4096];
    // O_DIRECT is not needed: the first read of a cold file goes to the daemon.
    let read = bracketed(|| {
        file.read_exact_at(&mut buf, 2 * MIB as u64).expect("read");
    });
    assert_eq!(buf, data[2 * MIB..2 * MIB + 4096]);
    drop(file);
    let statfs = bracketed(|| {
        Command::new("stat")
            .args(["-f", fs.mountpoint.to_str().unwrap()])
            .stdout(Stdio::null())
            .status()
            .expect("stat -f");
    });
    assert_eq!(sha256_file(&path), sha256(&data));

    let kinds = [
        "fuse.init",
        "fuse.lookup",
        "fuse.getattr",
        "fuse.opendir",
        "fuse.readdir",
        "fuse.releasedir",
        "fuse.open",
        "fuse.read",
        "fuse.release",
        "fuse.statfs",
        "fetch",
    ];
    let in_window = |spans: &[SpanRecord], name: &str, window| {
        spans.iter().any(|s| s.name == name && within(s, window))
    };
    sink.wait_for("every op kind exercised has a span", |spans| {
        let names: BTreeSet<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        kinds.iter().all(|k| names.contains(k))
    });
    for (name, window) in [
        ("fuse.lookup", stat),
        ("fuse.readdir", listing),
        ("fuse.read", read),
        ("fuse.statfs", statfs),
    ] {
        sink.wait_for(&format!("a {name} within {window:?}"), |spans| {
            in_window(spans, name, window)
        });
    }
    let spans = sink.wait_for("the Stage span", |spans| {
        spans
            .iter()
            .any(|s| s.name == "fusestream.v1.Control/StageMany")
    });
    let of = |name: &'static str| spans.iter().filter(move |s| s.name == name);

    // Attributes: op, pid of the caller, inode, and what was read.
    let op_spans = spans
        .iter()
        .filter(|s| s.name.starts_with("fuse.") && s.name != "fuse.stalled");
    for span in op_spans {
        assert_eq!(span.service, "fusestream-mountd");
        assert_eq!(span.attr("op"), span.name.strip_prefix("fuse."), "{span:?}");
        assert!(
            span.attr("pid").is_some() && span.attr("ino").is_some(),
            "{span:?}"
        );
    }
    let lookup = of("fuse.lookup")
        .find(|s| s.attr("name") == Some("\"traced.bin\"") && within(s, stat))
        .unwrap_or_else(|| panic!("no lookup of traced.bin during stat: {spans:#?}"));
    assert!(lookup.end >= lookup.start);
    let first_read = of("fuse.read")
        .find(|s| within(s, read) && s.attr("offset") == Some(&(2 * MIB).to_string()))
        .unwrap_or_else(|| panic!("no read at 2 MiB during pread: {spans:#?}"));
    assert!(
        first_read.attr("bytes").is_some_and(|b| b != "0"),
        "{first_read:?}"
    );

    // The read that found its bytes missing started the fetch: the fetch is its child,
    // in its trace, and inside it in time (the read is answered once the chunk arrives).
    let fetch = of("fetch")
        .find(|f| f.parent_span_id == first_read.span_id)
        .unwrap_or_else(|| panic!("no fetch child of {first_read:?}: {spans:#?}"));
    assert_eq!(fetch.trace_id, first_read.trace_id);
    assert!(fetch.start >= first_read.start, "{fetch:?} {first_read:?}");
    assert!(fetch.attr("http.status_code").is_some(), "{fetch:?}");

    // Staging was one trace across the gRPC boundary: the control plane's StageMany span
    // (the CLI stages through it, even one file) is the parent of the mount daemon's
    // AddEntries span.
    let stage = spans
        .iter()
        .find(|s| s.service == "fusestream-control" && s.name == "fusestream.v1.Control/StageMany")
        .unwrap_or_else(|| panic!("no StageMany span: {spans:#?}"));
    let add = spans
        .iter()
        .find(|s| s.name == "fusestream.v1.Mount/AddEntries" && s.service == "fusestream-mountd")
        .unwrap_or_else(|| panic!("no AddEntries span: {spans:#?}"));
    assert_eq!(add.trace_id, stage.trace_id);
    assert_eq!(add.parent_span_id, stage.span_id);

    // And nothing was dropped on the way.
    let metrics = fs.mountd_metrics();
    assert_eq!(
        metric(&metrics, "fusestream_spans_dropped_total"),
        Some(0.0)
    );
}

/// `dd` reading one 4 KiB block of `path` at `block` with O_DIRECT (so it parks a read).
fn direct_reader(path: &Path, block: u64) -> Child {
    Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["of=/dev/null", "bs=4096", "count=1", "iflag=direct"])
        .arg(format!("skip={block}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn dd")
}

#[test]
fn a_stalled_read_is_visible_while_it_is_stalled_and_gone_once_it_ends() {
    let sink = OtlpSink::start();
    let mut options = exporting_to(&sink);
    options.read_timeout = 600; // the reader is released by being killed
    let fs = FuseStream::start_with(options);
    let server = FaultyServer::start(random_bytes(8 * MIB), Mode::Stall { after_bytes: 4096 });
    let url = server.url("stuck.bin");
    fs.ctl_ok(["stage", "--name", "stuck.bin", &url]);
    let mut reader = direct_reader(&fs.mountpoint.join("stuck.bin"), 100);

    // `fusestreamctl ops`: stalled, what it is, and what it waits for.
    fs.wait_until("the read is listed as stalled", |fs| {
        fs.ctl_ok(["ops"])
            .lines()
            .any(|l| l.contains("STALLED") && l.contains("fuse.read"))
    });
    let ops = fs.ctl_ok(["ops", "--output", "json"]);
    let ops: serde_json::Value = serde_json::from_str(&ops).expect("ops json");
    let read = ops
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["op"] == "fuse.read" && o["stalled"] == true)
        .unwrap_or_else(|| panic!("{ops}"));
    assert_eq!(read["pid"], reader.id());
    assert_eq!(read["process"], "dd");
    assert!(
        read["path"].as_str().unwrap().ends_with("/stuck.bin"),
        "{read}"
    );
    let waiting = read["waiting_for"].as_str().unwrap();
    assert!(
        waiting.contains("bytes 409600..413696") && waiting.contains(&url),
        "{waiting}"
    );

    // The same over gRPC, with grpcurl as a dashboard script would.
    let listed = grpcurl_ok(&[
        "-unix",
        "-plaintext",
        fs.mountd_socket.to_str().unwrap(),
        "fusestream.v1.Mount/ListOps",
    ]);
    assert!(
        listed.contains("\"stalled\": true") && listed.contains("409600..413696"),
        "{listed}"
    );

    // Metrics: stalled now, and how old the oldest read is.
    let metrics = fs.mountd_metrics();
    assert!(
        metric(&metrics, "fusestream_fuse_ops_stalled{op=\"read\"}") >= Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "fusestream_fuse_oldest_op_age_seconds{op=\"read\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    // Counted by the watchdog at its next scan (the gauges read the registry directly).
    fs.wait_until("the watchdog counted the stall", |fs| {
        metric(
            &fs.mountd_metrics(),
            "fusestream_fuse_op_stalls_total{op=\"read\"}",
        ) >= Some(1.0)
    });

    // A trace backend sees it now too, though the read's own span has not ended.
    let spans = sink.wait_for("a fuse.stalled span for the read", |spans| {
        spans.iter().any(|s| {
            s.name == "fuse.stalled"
                && s.attr("op") == Some("read")
                && s.attr("waiting_for")
                    .is_some_and(|w| w.contains("409600..413696"))
        })
    });
    assert!(
        !spans
            .iter()
            .any(|s| s.name == "fuse.read" && s.attr("offset") == Some("409600")),
        "the read has not ended, so its span has not been exported"
    );

    // Killed, the reader is released; the op, the gauge and the listing let it go.
    reader.kill().expect("kill");
    completes("the killed reader exits", 30, move || reader.wait()).expect("wait");
    fs.wait_until("no read is in flight", |fs| {
        !fs.ctl_ok(["ops"]).contains("fuse.read")
    });
    let metrics = fs.mountd_metrics();
    assert_eq!(
        metric(&metrics, "fusestream_fuse_ops_stalled{op=\"read\"}"),
        Some(0.0)
    );
    assert_eq!(
        metric(&metrics, "fusestream_fuse_ops_in_flight{op=\"read\"}"),
        Some(0.0)
    );
    assert!(
        metric(
            &metrics,
            "fusestream_fuse_op_errors_total{op=\"read\",errno=\"EINTR\"}"
        ) >= Some(1.0),
        "{metrics}"
    );
    // Its span ends with it, carrying the error.
    sink.wait_for("the interrupted read's span", |spans| {
        spans.iter().any(|s| {
            s.name == "fuse.read"
                && s.attr("offset") == Some("409600")
                && s.attr("errno") == Some("EINTR")
        })
    });
}

#[test]
fn telemetry_that_cannot_be_delivered_is_dropped_and_counted_never_waited_for() {
    // A collector that accepts connections and never answers, with a tiny queue, and a
    // log file nobody drains (a FIFO opened for reading and never read: a stuck disk),
    // with every op logged.
    let collector = Blackhole::start();
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("mountd.log");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // Opened before the daemon so its open for writing does not wait; never read.
    let _stuck = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("open fifo");
    let wedged = env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4"),
        ("OTEL_BSP_SCHEDULE_DELAY", "10"),
        ("OTEL_BSP_EXPORT_TIMEOUT", "600000"),
    ]);
    let mut mountd_env = wedged.clone();
    mountd_env.push(("FUSESTREAM_LOG".into(), "trace".into()));
    let fs = FuseStream::start_with(Options {
        mountd_env,
        control_env: wedged,
        mountd_args: vec![
            "--metrics-listen".into(),
            "127.0.0.1:0".into(),
            "--log-file".into(),
            fifo.to_str().unwrap().into(),
        ],
        control_args: vec!["--metrics-listen".into(), "127.0.0.1:0".into()],
        ..Options::default()
    });
    let input = fs.input("busy.bin");
    let data = random_file(&input, 2 * MIB);
    fs.ctl_ok(["stage", input.to_str().unwrap()]);

    // Plenty of ops, each logged twice and a span: they all complete.
    let mountpoint = fs.mountpoint.clone();
    let expected = sha256(&data);
    completes("FUSE ops with telemetry undeliverable", 120, move || {
        for round in 0..20 {
            assert_eq!(sha256_file(&mountpoint.join("busy.bin")), expected);
            for entry in std::fs::read_dir(&mountpoint).unwrap() {
                std::fs::metadata(entry.unwrap().path()).unwrap();
            }
            // Failed lookups are not cached by the kernel: each is an op, and log lines.
            for i in 0..500 {
                let missing = mountpoint.join(format!("missing-{round}-{i}"));
                assert!(std::fs::metadata(missing).is_err());
            }
        }
    });
    fs.ctl_ok(["ls"]);

    let metrics = fs.mountd_metrics();
    assert!(
        metric(&metrics, "fusestream_log_lines_dropped_total") > Some(0.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "fusestream_spans_dropped_total") > Some(0.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "fusestream_spans_exported_total"),
        Some(0.0)
    );
    let control = fs.metrics_addrs().0.expect("control plane metrics");
    let control = fusestream_tests::http_get(&control, "/metrics");
    assert!(
        metric(&control, "fusestream_spans_exported_total") == Some(0.0),
        "{control}"
    );
}

#[test]
fn a_read_that_shares_another_reads_fetch_is_linked_to_it() {
    let sink = OtlpSink::start();
    let fs = FuseStream::start_with(exporting_to(&sink));
    let data = random_bytes(4 * MIB);
    // The first response stalls after 4 KiB: the fetch stays running while a second read
    // of the same chunk arrives; then the server heals and the retried fetch completes.
    let server = FaultyServer::start(data.clone(), Mode::Stall { after_bytes: 4096 });
    fs.ctl_ok(["stage", "--name", "shared.bin", &server.url("shared.bin")]);
    let path = fs.mountpoint.join("shared.bin");
    let first = direct_reader(&path, 100);
    fs.wait_until("the first read is parked", |fs| {
        fs.status_number("reads waiting") >= 1
    });
    let second = direct_reader(&path, 101); // the same 128 KiB chunk
    fs.wait_until("both reads are parked", |fs| {
        fs.status_number("reads waiting") >= 2
    });
    server.set_mode(Mode::Healthy);
    for mut reader in [first, second] {
        let status = completes("a reader of the healed remote", 120, move || reader.wait());
        assert!(status.expect("wait").success());
    }

    let spans = sink.wait_for("both reads and the fetch", |spans| {
        let reads = spans
            .iter()
            .filter(|s| {
                s.name == "fuse.read"
                    && ["409600", "413696"].contains(&s.attr("offset").unwrap_or(""))
            })
            .count();
        reads == 2 && spans.iter().any(|s| s.name == "fetch")
    });
    let read_at = |offset: &str| {
        spans
            .iter()
            .find(|s| s.name == "fuse.read" && s.attr("offset") == Some(offset))
            .unwrap()
    };
    let (started, shared) = (read_at("409600"), read_at("413696"));
    let fetch = spans
        .iter()
        .find(|s| s.name == "fetch" && s.parent_span_id == started.span_id)
        .unwrap_or_else(|| panic!("no fetch child of the first read: {spans:#?}"));
    assert!(
        shared.links.contains(&fetch.span_id),
        "the second read is not linked to the fetch it waited on: {shared:?} {fetch:?}"
    );
}
