//! End to end through a real FUSE mount: stage files with the CLI, read them with
//! ordinary file I/O, compare bytes with the source.

use std::os::unix::fs::FileExt;
use std::path::Path;

use fusestream_tests::nginx::Nginx;
use fusestream_tests::{FuseStream, Prng, is_mounted, random_file, sha256, sha256_file, stderr};

const MIB: usize = 1 << 20;

fn path_arg(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn staged_files_read_back_byte_for_byte() {
    let fs = FuseStream::start();
    let big = random_file(&fs.input("big.bin"), 64 * MIB);
    let small = random_file(&fs.input("small.bin"), 1000);
    std::fs::write(fs.input("hello.txt"), "hello, world\n").unwrap();

    // Several sources at once: one mount path printed per line.
    let printed = fs.ctl_ok([
        "stage",
        path_arg(&fs.input("big.bin")),
        path_arg(&fs.input("small.bin")),
    ]);
    let paths: Vec<&str> = printed.lines().collect();
    let big_path = fs.mountpoint.join("big.bin");
    assert_eq!(
        paths,
        [
            path_arg(&big_path),
            path_arg(&fs.mountpoint.join("small.bin"))
        ]
    );
    // A name with directories, from a relative path (the CLI resolves it).
    let out = std::process::Command::new(fusestream_tests::bin("fusestreamctl"))
        .env("FUSESTREAM_SOCKET", &fs.control_socket)
        .current_dir(fs.input(""))
        .args(["stage", "--name", "docs/greetings/hello.txt", "hello.txt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let hello_path = fs.mountpoint.join("docs/greetings/hello.txt");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        path_arg(&hello_path)
    );

    // Names and sizes, as ls and stat see them.
    let mut top: Vec<String> = std::fs::read_dir(&fs.mountpoint)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    top.sort();
    assert_eq!(top, ["big.bin", "docs", "small.bin"]);
    assert_eq!(
        std::fs::metadata(&big_path).unwrap().len(),
        big.len() as u64
    );
    assert!(
        std::fs::metadata(fs.mountpoint.join("docs/greetings"))
            .unwrap()
            .is_dir()
    );
    assert_eq!(std::fs::metadata(&hello_path).unwrap().len(), 13);

    // Cold, scattered preads first (each fetches only what it needs), then whole files.
    let file = std::fs::File::open(&big_path).unwrap();
    let mut rng = Prng::new(0x5eed);
    for _ in 0..200 {
        let offset = rng.below(big.len() as u64) as usize;
        let len = (rng.below(256 * 1024) as usize + 1).min(big.len() - offset);
        let mut buf = vec![0; len];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(
            buf == big[offset..offset + len],
            "pread at {offset}+{len} differs"
        );
    }
    // Reads at and past the end.
    let mut tail = vec![0; 100];
    assert_eq!(file.read_at(&mut tail, big.len() as u64 - 10).unwrap(), 10);
    assert_eq!(file.read_at(&mut tail, big.len() as u64 + 5).unwrap(), 0);
    drop(file);
    assert_eq!(sha256_file(&big_path), sha256(&big));
    assert_eq!(
        std::fs::read(fs.mountpoint.join("small.bin")).unwrap(),
        small
    );
    assert_eq!(
        std::fs::read_to_string(&hello_path).unwrap(),
        "hello, world\n"
    );

    // The listing reports sizes and what is held (a file read front to back was served
    // from stream memory and let go once read: at most its unread tail is held).
    let ls = fs.ctl_ok(["ls"]);
    let big_row: Vec<&str> = ls
        .lines()
        .find(|l| l.starts_with("big.bin "))
        .expect("big.bin listed")
        .split_whitespace()
        .collect();
    assert_eq!([big_row[1], big_row[3]], [&*big.len().to_string(), "0"]);
    assert!(big_row[2].parse::<usize>().unwrap() <= big.len(), "{ls}");
    assert!(ls.contains("docs/greetings/hello.txt"));

    // The mount is read-only, says statfs, and access() agrees.
    let write = std::fs::OpenOptions::new().write(true).open(&big_path);
    assert_eq!(write.unwrap_err().raw_os_error(), Some(libc::EROFS));
    let c_path = std::ffi::CString::new(path_arg(&big_path)).unwrap();
    // SAFETY: valid NUL-terminated path.
    assert_eq!(unsafe { libc::access(c_path.as_ptr(), libc::R_OK) }, 0);
    assert_eq!(unsafe { libc::access(c_path.as_ptr(), libc::W_OK) }, -1);
    let c_mnt = std::ffi::CString::new(path_arg(&fs.mountpoint)).unwrap();
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and a statvfs to fill.
    assert_eq!(unsafe { libc::statvfs(c_mnt.as_ptr(), &mut st) }, 0);
    assert_eq!(st.f_namemax, 255);
    assert_ne!(st.f_flag & libc::ST_RDONLY, 0);
    let staged_bytes = (big.len() + small.len() + 13) as u64;
    assert_eq!(
        st.f_blocks * st.f_frsize,
        staged_bytes.div_ceil(4096) * 4096
    );

    // Unstage removes the entry, and the directories left empty.
    fs.ctl_ok(["unstage", "docs/greetings/hello.txt", "small.bin"]);
    assert!(!hello_path.exists());
    assert!(!fs.mountpoint.join("docs").exists());
    assert!(!fs.mountpoint.join("small.bin").exists());
    assert!(!fs.ctl_ok(["ls"]).contains("small.bin"));

    // SIGTERM unmounts, even while a file is open (the busy mount is detached), before
    // the harness's own clean-up could hide a leftover mount.
    let mut fs = fs;
    let open_file = std::fs::File::open(&big_path).unwrap();
    fs.mountd.stop_with(libc::SIGTERM);
    assert!(
        !is_mounted(&fs.mountpoint),
        "mount left behind after SIGTERM"
    );
    assert!(
        fs.mountd.exited_cleanly(),
        "mountd exit: {}",
        fs.mountd.logs()
    );
    drop(open_file);
}

#[test]
fn bad_names_and_sources_get_clear_errors_and_change_nothing() {
    let fs = FuseStream::start();
    let a = fs.input("a.bin");
    random_file(&a, 5000);
    fs.ctl_ok(["stage", path_arg(&a)]);

    let cases: [(&[&str], &str); 8] = [
        (
            &["--name", "../escape"],
            "invalid argument: invalid name \"../escape\": name has a '..' component",
        ),
        (&["--name", "a/./b"], "name has a '.' component"),
        (&["--name", "/abs"], "empty component"),
        (&["--name", "dir/"], "empty component"),
        (
            &["--name", &"n".repeat(256)],
            "is 256 bytes long; the limit is 255",
        ),
        (
            &["--name", &vec!["d".repeat(200); 21].join("/")],
            "the limit is 4095",
        ),
        (
            &["--name", "a.bin"],
            "already exists: \"a.bin\" is already staged",
        ),
        (
            &["--name", "a.bin/under"],
            "already exists: \"a.bin/under\" conflicts with \"a.bin\", which is a staged file",
        ),
    ];
    for (args, expected) in cases {
        let mut argv = vec!["stage"];
        argv.extend_from_slice(args);
        argv.push(path_arg(&a));
        let out = fs.ctl(&argv);
        assert_eq!(out.status.code(), Some(1), "{argv:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(expected),
            "{argv:?}: expected {expected:?} in {err:?}"
        );
        assert_eq!(err.lines().count(), 1, "one line per error: {err:?}");
    }

    // A NUL can not be passed on a command line; the API refuses it too (see grpcurl test).
    let missing = fs.input("does-not-exist.bin");
    let out = fs.ctl(["stage", path_arg(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("not found: {} does not exist", missing.display())),
        "{}",
        stderr(&out)
    );
    let out = fs.ctl(["stage", path_arg(&fs.input(""))]);
    assert!(
        stderr(&out).contains("is not a regular file"),
        "{}",
        stderr(&out)
    );
    let out = fs.ctl(["unstage", "never-staged"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found: \"never-staged\" is not staged"));
    let out = fs.ctl(["stage", "--name", "x", path_arg(&a), path_arg(&a)]);
    assert_eq!(out.status.code(), Some(2), "usage error: {}", stderr(&out));

    // Nothing was staged by the failures.
    let names: Vec<String> = fs
        .ctl_ok(["ls"])
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect();
    assert_eq!(names, ["a.bin"]);

    // --replace swaps the content behind a name.
    let b = fs.input("b.bin");
    let b_data = random_file(&b, 7000);
    fs.ctl_ok(["stage", "--replace", "--name", "a.bin", path_arg(&b)]);
    assert_eq!(std::fs::read(fs.mountpoint.join("a.bin")).unwrap(), b_data);
}

#[test]
fn control_plane_down_is_reported_with_its_own_exit_code() {
    let mut fs = FuseStream::start();
    fs.control.stop_with(libc::SIGTERM);
    let out = fs.ctl(["ls"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("is not running"), "{}", stderr(&out));
}

#[test]
fn http_urls_stage_directly_and_fetch_ranges() {
    let fs = FuseStream::start();
    let root = fs.input("www");
    std::fs::create_dir_all(&root).unwrap();
    let data = random_file(&root.join("movie file.bin"), 3 * MIB + 17);
    let nginx = Nginx::serve(&root);

    let url = nginx.url("movie%20file.bin");
    let printed = fs.ctl_ok(["stage", &url]);
    let path = fs.mountpoint.join("movie file.bin");
    assert_eq!(printed.trim(), path_arg(&path));
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0; 4096];
    file.read_exact_at(&mut buf, 2 * MIB as u64).unwrap();
    assert!(buf == data[2 * MIB..2 * MIB + 4096]);
    assert_eq!(sha256_file(&path), sha256(&data));
    assert!(
        nginx.access_log().contains("\" 206 "),
        "range requests reach the server"
    );

    let out = fs.ctl(["stage", &nginx.url("missing.bin")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}

#[test]
fn a_killed_mount_daemon_leaves_a_mount_the_next_one_recovers_with_its_entries() {
    let mut fs = FuseStream::start();
    let a = fs.input("a.bin");
    let data = random_file(&a, 3 * MIB);
    fs.ctl_ok(["stage", path_arg(&a)]);
    let file = std::fs::File::open(fs.mountpoint.join("a.bin")).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    drop(file);

    fs.restart_mountd(libc::SIGKILL);
    assert!(is_mounted(&fs.mountpoint));
    // The control plane notices the new daemon and stages its entries on it again.
    fs.wait_until("the entry is staged again", |fs| {
        fs.ctl_ok(["ls"]).contains("a.bin")
    });
    assert_eq!(sha256_file(&fs.mountpoint.join("a.bin")), sha256(&data));
}

#[test]
fn an_entry_removed_while_the_control_plane_was_down_stays_removed() {
    let mut fs = FuseStream::start();
    let a = fs.input("a.bin");
    random_file(&a, 100_000);
    fs.ctl_ok(["stage", path_arg(&a)]);
    fs.control.stop_with(libc::SIGTERM);
    fusestream_tests::grpcurl_ok(&[
        "-unix",
        "-plaintext",
        "-d",
        r#"{"name":"a.bin"}"#,
        fs.mountd_socket.to_str().unwrap(),
        "fusestream.v1.Mount/RemoveEntry",
    ]);
    fs.restart_control(libc::SIGTERM);
    // Same mount daemon: the entry was unstaged on purpose, and is not brought back.
    fs.wait_for_control_log("reconciled with the mount daemon");
    assert!(
        fs.control.logs().contains("let_go=1"),
        "{}",
        fs.control.logs()
    );
    assert!(!fs.ctl_ok(["ls"]).contains("a.bin"));
    // Let go in the saved state too: a restarted mount daemon does not get it back.
    fs.restart_mountd(libc::SIGKILL);
    fs.wait_until(
        "the control plane reconciled with the new mount daemon",
        |fs| {
            fs.control
                .logs()
                .matches("reconciled with the mount daemon")
                .count()
                >= 2
        },
    );
    assert!(!fs.ctl_ok(["ls"]).contains("a.bin"));
}

#[test]
fn a_replaced_entry_is_what_the_next_open_sees() {
    let fs = FuseStream::start();
    let (a, b) = (fs.input("a.bin"), fs.input("b.bin"));
    std::fs::write(&a, vec![b'a'; 1000]).unwrap();
    std::fs::write(&b, vec![b'b'; 2000]).unwrap();
    fs.ctl_ok(["stage", "--name", "x.bin", path_arg(&a)]);
    let path = fs.mountpoint.join("x.bin");
    for i in 0..100 {
        // Keep the name hot in the kernel's cache, then replace it.
        std::fs::metadata(&path).unwrap();
        let (source, byte, len) = if i % 2 == 0 {
            (&b, b'b', 2000)
        } else {
            (&a, b'a', 1000)
        };
        fs.ctl_ok(["stage", "--replace", "--name", "x.bin", path_arg(source)]);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(
            (data.len(), data[0]),
            (len, byte),
            "round {i}: the old entry was opened"
        );
    }
}

/// `fusestreamctl ls | head`: a reader that goes away ends the command as it ends any
/// Unix tool (SIGPIPE), never with a panic.
#[test]
fn a_closed_stdout_ends_the_cli_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::{Command, Stdio};
    let fs = FuseStream::start();
    let input = fs.input("a.bin");
    random_file(&input, 10);
    fs.ctl_ok(["stage", path_arg(&input)]);
    let mut child = Command::new(fusestream_tests::bin("fusestreamctl"))
        .env("FUSESTREAM_SOCKET", &fs.control_socket)
        .arg("ls")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fusestreamctl");
    // The reader is gone before the listing arrives (it needs a round trip first).
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{out:?}");
}
