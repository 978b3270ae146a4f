//! Temp URLs: a URL the remote refuses (here: expired, with proactive renewal turned far
//! down) is reported by the mount daemon, renewed by the control plane, and the read
//! resumes.

use std::os::unix::fs::FileExt;

use fusestream_tests::{FuseStream, Options, completes, random_file};

const MIB: usize = 1 << 20;

#[test]
fn a_refused_temp_url_is_renewed_and_the_read_resumes() {
    // URLs live 4 s and are not renewed ahead of time: only a refusal renews them.
    let fs = FuseStream::start_with(Options {
        url_lifetime: 4,
        renew_interval: 3600,
        ..Options::default()
    });
    let src = fs.input("data.bin");
    let data = random_file(&src, 16 * MIB);
    fs.ctl_ok(["stage", src.to_str().unwrap()]);
    let path = fs.mountpoint.join("data.bin");
    let file = std::fs::File::open(&path).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head == data[..4096]);

    // Wait until the mount daemon's URL has expired (the local file server refuses it).
    let expired = fs.url_expiry_of("data.bin");
    fs.wait_for_url_expiry_of("data.bin");

    // A read of bytes not fetched yet: the fetch is refused and waits for a new URL.
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0; 4096];
        file.read_exact_at(&mut buf, 10 * MIB as u64).map(|()| buf)
    });
    let bytes = completes("the read after renewal", 60, move || reader.join().unwrap())
        .expect("read resumes");
    assert!(bytes == data[10 * MIB..10 * MIB + 4096]);
    assert!(
        fs.mountd
            .logs()
            .contains("temp URL rejected; asking for a new one")
    );
    fs.wait_for_control_log("temp URL refused by the remote; issued a new one");
    // The new URL is a later one.
    assert!(
        fs.url_expiry_of("data.bin") > expired,
        "a later URL was installed"
    );
}
