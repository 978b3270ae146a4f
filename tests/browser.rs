//! The original app's deadlock, end to end: a real browser uploads files from the mount.
//!
//! FuseStream started from a post-mortem: in the original app, a browser uploading a file
//! from its FUSE mount through a web form deadlocked the app when the file's remote
//! stalled. This test replays that with the real pieces. Debian's Chromium, headless and
//! driven through chromedriver (WebDriver), uploads a staged file through a web form to a
//! local server while the file's remote stalls after the head the daemon fetched at
//! staging. While that upload is stuck, `ls` of the mount and `fusestreamctl ops` answer,
//! and an upload of a healthy staged file from another tab of the same browser succeeds,
//! with exact bytes on the server, before the stuck one ends. The stuck upload ends by
//! itself at the read deadline (`--read-timeout`): Chromium aborts it with its error page
//! (`ERR_TIMED_OUT`, the read's ETIMEDOUT), and the server never records wrong bytes as a
//! complete upload.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fusestream_tests::browser::Browser;
use fusestream_tests::faulty::{FaultyServer, Mode};
use fusestream_tests::upload::{Outcome, Upload, UploadServer};
use fusestream_tests::{FuseStream, Options, completes, names_in, random_bytes, sha256};

const MIB: usize = 1 << 20;
/// The mount daemon's read deadline: the stuck upload's file read fails after it.
const READ_TIMEOUT: u64 = 10;
/// How long after its first read deadline the stuck upload may take to end: a liveness
/// bound (it ends about 20 s after it here: see the end of the test).
const END_BOUND: Duration = Duration::from_secs(40);

/// Calls `f` every 50 ms until it returns something, failing after `bound`.
fn poll<T>(what: &str, bound: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = f() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the current tab shows: its location, title and text.
fn page(browser: &Browser) -> Option<(String, String, String)> {
    let script = "return [location.href, document.title, \
                  document.body ? document.body.innerText : ''];";
    let value = browser.execute(script).ok()?;
    let text = |i: usize| value[i].as_str().unwrap_or_default().to_string();
    Some((text(0), text(1), text(2)))
}

/// Opens the form in the current tab, picks the file at `path` and submits it.
fn submit(browser: &Browser, server: &UploadServer, path: &std::path::Path) {
    browser.navigate(&server.url());
    let input = poll("the form has loaded", Duration::from_secs(60), || {
        browser.find("#file")
    });
    browser.send_keys(&input, path.to_str().expect("utf-8 path"));
    let button = browser.find("#submit").expect("the submit button");
    browser.click(&button);
}

#[test]
fn a_browser_upload_from_a_stalled_remote_never_hangs_the_mount_or_the_browser() {
    // First, so that a missing chromium fails the test at once (naming tests/setup.sh).
    let browser = Browser::start();
    let fs = Arc::new(FuseStream::start_with(Options {
        read_timeout: READ_TIMEOUT,
        ..Options::default()
    }));
    let healthy_data = random_bytes(6 * MIB);
    let stuck_data = random_bytes(8 * MIB);
    let healthy = FaultyServer::start(healthy_data.clone(), Mode::Healthy);
    let stuck = FaultyServer::start(stuck_data.clone(), Mode::Healthy);
    fs.ctl_ok(["stage", "--name", "healthy.bin", &healthy.url("h")]);
    fs.ctl_ok(["stage", "--name", "stuck.bin", &stuck.url("s")]);
    // The daemon fetches the head (128 KiB) at staging; then the remote stalls: it sends
    // response heads and never a body byte, so every later fetch of the file hangs (and
    // its retries too: no byte ever arrives, so no read past the head is ever answered).
    let fetched = |fs: &FuseStream| -> u64 {
        let ls = fs.ctl_ok(["ls"]);
        let row = ls.lines().find(|l| l.starts_with("stuck.bin "));
        let column = row.and_then(|r| r.split_whitespace().nth(2)?.parse().ok());
        column.unwrap_or_else(|| panic!("no stuck.bin in ls:\n{ls}"))
    };
    fs.wait_until("the stuck file's head is fetched", |fs| fetched(fs) > 0);
    stuck.set_mode(Mode::Stall { after_bytes: 0 });
    let sources = [
        ("healthy.bin", sha256(&healthy_data), healthy_data.len()),
        ("stuck.bin", sha256(&stuck_data), stuck_data.len()),
    ];

    // The browser uploads the stuck file: it sends the head, then its read waits.
    let server = UploadServer::start();
    let stuck_tab = browser.window();
    submit(&browser, &server, &fs.mountpoint.join("stuck.bin"));
    let in_progress = |server: &UploadServer| {
        let uploads = server.uploads_of("stuck.bin");
        uploads
            .iter()
            .any(|u| u.outcome == Outcome::InProgress && u.received > 0)
    };
    fs.wait_until("the upload of the stuck file waits for its remote", |fs| {
        in_progress(&server) && fs.status_number("reads waiting") > 0
    });
    let waiting = Instant::now();

    // The mount answers while the upload waits, and shows what the upload waits for.
    let mnt = fs.mountpoint.clone();
    let names = completes("ls of the mount", 30, move || names_in(&mnt));
    assert_eq!(names, ["healthy.bin", "stuck.bin"]);
    let f = fs.clone();
    let ops = completes("fusestreamctl ops", 30, move || f.ctl_ok(["ops"]));
    let of_stuck = format!("of {}", stuck.url("s"));
    assert!(
        ops.lines()
            .any(|l| l.contains("fuse.read") && l.contains("stuck.bin") && l.contains(&of_stuck)),
        "the upload's read is listed with what it waits for:\n{ops}"
    );

    // Meanwhile, an upload of a healthy file from another tab of the same browser succeeds,
    // with exact bytes on the server, while the stuck upload still waits: a browser whose
    // file reads queued behind the stuck one would finish it only after that one failed.
    let healthy_tab = browser.new_tab();
    browser.switch_to(&healthy_tab);
    submit(&browser, &server, &fs.mountpoint.join("healthy.bin"));
    let (_, _, text) = poll(
        "the healthy upload is answered",
        Duration::from_secs(60),
        || page(&browser).filter(|(_, title, _)| title == "uploaded"),
    );
    let (_, healthy_sha, healthy_len) = &sources[0];
    assert!(
        text.contains(healthy_sha),
        "the answer shows the upload's sha256: {text}"
    );
    let uploads = server.uploads_of("healthy.bin");
    assert!(
        matches!(&uploads[..], [Upload { outcome: Outcome::Complete { sha256, len }, .. }]
            if sha256 == healthy_sha && len == healthy_len),
        "the healthy file arrived whole and exact, once: {uploads:?}"
    );
    assert!(
        in_progress(&server),
        "the stuck upload still waited while the healthy one went through: {:?}",
        server.uploads()
    );

    // The stuck upload ends by itself, a bounded time after its read deadline: the daemon
    // fails each waiting read with ETIMEDOUT at its deadline, and so the single-page reads
    // the kernel's page cache makes after a failed read-ahead (Chromium gets the error
    // after three deadlines in a row here). Chromium aborts the request and shows its
    // error page with net::ERR_TIMED_OUT, its name for that errno.
    browser.switch_to(&stuck_tab);
    let bound = Duration::from_secs(READ_TIMEOUT) + END_BOUND;
    let (url, title, text) = poll("the stuck upload ends in the browser", bound, || {
        page(&browser).filter(|(_, title, _)| title != "upload")
    });
    eprintln!(
        "the stuck upload ended {:.1} s after its read began to wait: {url} {title:?}: {:?}",
        waiting.elapsed().as_secs_f64(),
        text.lines()
            .find(|l| l.starts_with("ERR_"))
            .unwrap_or(&text)
    );
    assert!(
        url.starts_with("chrome-error://") && text.contains("ERR_TIMED_OUT"),
        "Chromium shows its network error page for the failed read: {url} {title:?}: {text}"
    );
    let uploads = poll(
        "the server sees the stuck upload end",
        Duration::from_secs(30),
        || {
            let uploads = server.uploads_of("stuck.bin");
            uploads
                .iter()
                .all(|u| u.outcome != Outcome::InProgress)
                .then_some(uploads)
        },
    );
    assert!(
        matches!(&uploads[..], [Upload { outcome: Outcome::Failed(_), received, expected, .. }]
            if received < expected),
        "the stuck upload was cut short, once: {uploads:?}"
    );

    // No upload ever arrived as a complete file with bytes other than its source's.
    for upload in server.uploads() {
        if let Outcome::Complete { sha256, len } = &upload.outcome {
            let source = sources
                .iter()
                .find(|(name, ..)| upload.filename.as_deref() == Some(name));
            assert!(
                source.is_some_and(|(_, s, l)| s == sha256 && l == len),
                "a complete upload with wrong bytes: {upload:?}"
            );
        }
    }
    // And the mount is idle again: every read of the stuck file has ended.
    fs.wait_until("no read waits", |fs| fs.status_number("reads waiting") == 0);
}
