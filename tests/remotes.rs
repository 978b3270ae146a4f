//! Remotes against a real OpenStack Swift: TempAuth + TempURL, and the same cluster's S3
//! API through SigV4 presigned URLs. Errors are the documented ones, secrets stay out of
//! every log, and URLs the real server refuses as expired are renewed.

use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;

use fusestream_tests::swift::SwiftServer;
use fusestream_tests::{
    FuseStream, Options, Prng, completes, random_bytes, random_file, sha256, sha256_file, stderr,
};

const MIB: usize = 1 << 20;

/// A config with a Swift remote and an S3 remote on `swift`, secrets from the environment.
fn config(
    fs_dir: &std::path::Path,
    swift: &SwiftServer,
    extra: &str,
) -> (PathBuf, Vec<(String, String)>) {
    let path = fs_dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[remotes.archive]\ntype = \"swift\"\nauth_url = \"{}\"\nuser = \"{}\"\nkey_env = \"ARCHIVE_KEY\"\n\
             [remotes.media]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
             access_key_id_env = \"MEDIA_AK\"\nsecret_access_key_env = \"MEDIA_SK\"\n{extra}",
            swift.var("SWIFT_AUTH_URL"),
            swift.var("SWIFT_USER"),
            swift.var("S3_ENDPOINT"),
            swift.var("S3_REGION"),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let env = vec![
        ("ARCHIVE_KEY".into(), swift.var("SWIFT_KEY").into()),
        ("MEDIA_AK".into(), swift.var("S3_ACCESS_KEY").into()),
        ("MEDIA_SK".into(), swift.var("S3_SECRET_KEY").into()),
        ("WRONG_KEY".into(), "not-the-key".into()),
    ];
    (path, env)
}

fn start(swift: &SwiftServer, extra: &str, options: Options) -> FuseStream {
    let dir = tempfile::tempdir().unwrap().keep();
    let (config, mut control_env) = config(&dir, swift, extra);
    control_env.extend(options.control_env.iter().cloned());
    FuseStream::start_with(Options {
        config: Some(config),
        control_env,
        ..options
    })
}

/// No TempURL signature, S3 signature or credential in `text`.
fn assert_no_secrets(what: &str, text: &str) {
    for marker in ["temp_url_sig=", "X-Amz-Signature=", "X-Amz-Credential="] {
        for (i, _) in text.match_indices(marker) {
            let value = &text[i + marker.len()..];
            assert!(
                value.starts_with("REDACTED"),
                "{what} leaks {marker}: {}",
                &value[..value.len().min(40)]
            );
        }
    }
    assert!(
        !text.contains("testing"),
        "{what} contains the account's key"
    );
}

#[test]
fn swift_tempurls_and_s3_presigned_urls_read_back_exactly() {
    let swift = SwiftServer::start();
    let data = random_bytes(8 * MIB);
    swift.put("media", "dir/a file.bin", &data);
    assert_eq!(
        swift.admin("POST", "", &["-H", "X-Account-Meta-Temp-URL-Key: tempkey"]),
        204
    );
    // A second remote signing with SHA-512 and a TempURL key from the config.
    let strong = format!(
        "[remotes.strong]\ntype = \"swift\"\nauth_url = \"{}\"\nuser = \"test:tester\"\n\
         key_env = \"ARCHIVE_KEY\"\ntemp_url_digest = \"sha512\"\ntemp_url_key_env = \"TEMPKEY\"\n",
        swift.var("SWIFT_AUTH_URL")
    );
    let fs = start(
        &swift,
        &strong,
        Options {
            control_env: vec![("TEMPKEY".into(), "tempkey".into())],
            ..Options::default()
        },
    );

    let printed = fs.ctl_ok([
        "stage",
        "--name",
        "swift.bin",
        "archive:media/dir/a file.bin",
    ]);
    let path = fs.mountpoint.join("swift.bin");
    assert_eq!(printed.trim(), path.to_str().unwrap());
    let file = std::fs::File::open(&path).unwrap();
    let mut rng = Prng::new(7);
    for _ in 0..20 {
        let offset = rng.below(data.len() as u64 - 5000) as usize;
        let mut buf = vec![0; 5000];
        file.read_exact_at(&mut buf, offset as u64).unwrap();
        assert!(buf == data[offset..offset + 5000], "pread at {offset}");
    }
    assert_eq!(sha256_file(&path), sha256(&data));
    let log = swift.proxy_log();
    assert!(
        log.contains("temp_url_expires") && log.contains(" 206 "),
        "TempURL range reads reach Swift"
    );

    fs.ctl_ok([
        "stage",
        "--name",
        "sha512.bin",
        "strong:media/dir/a file.bin",
    ]);
    assert_eq!(
        sha256_file(&fs.mountpoint.join("sha512.bin")),
        sha256(&data)
    );

    fs.ctl_ok(["stage", "--name", "s3.bin", "media:media/dir/a file.bin"]);
    assert_eq!(sha256_file(&fs.mountpoint.join("s3.bin")), sha256(&data));
    assert!(
        swift.proxy_log().contains("X-Amz-Signature"),
        "S3 presigned reads reach Swift"
    );

    let ls = fs.ctl_ok(["ls"]);
    assert!(
        ls.contains("archive:media/dir/a file.bin") && ls.contains("media:media/dir/a file.bin"),
        "{ls}"
    );
    let status = fs.ctl_ok(["status"]);
    assert!(status.contains("remotes:       archive, media"), "{status}");
    for (what, text) in [
        ("ls", ls),
        ("status", status),
        ("control log", fs.control.logs()),
        ("mountd log", fs.mountd.logs()),
    ] {
        assert_no_secrets(what, &text);
    }
}

#[test]
fn remote_errors_are_the_documented_ones_and_stage_nothing() {
    let swift = SwiftServer::start();
    swift.put("media", "obj.bin", b"hello");
    let wrong = "[remotes.wrong]\ntype = \"swift\"\nauth_url = \"AUTH\"\nuser = \"test:tester\"\nkey_env = \"WRONG_KEY\"\n\
                 [remotes.badsecret]\ntype = \"s3\"\nendpoint = \"S3\"\nregion = \"us-east-1\"\naccess_key_id = \"test:tester\"\nsecret_access_key_env = \"WRONG_KEY\"\n\
                 [remotes.noadmin]\ntype = \"swift\"\nauth_url = \"AUTH\"\nuser = \"test:tester3\"\nkey_env = \"NOADMIN_KEY\"\n\
                 [remotes.down]\ntype = \"swift\"\nauth_url = \"http://127.0.0.1:1/auth/v1.0\"\nuser = \"test:tester\"\nkey_env = \"WRONG_KEY\"\n"
        .replace("AUTH", swift.var("SWIFT_AUTH_URL"))
        .replace("S3", swift.var("S3_ENDPOINT"));
    let fs = start(
        &swift,
        &wrong,
        Options {
            control_env: vec![("NOADMIN_KEY".into(), swift.var("SWIFT_KEY_NOADMIN").into())],
            ..Options::default()
        },
    );
    // No TempURL key on AUTH_test yet: staging says how to set one.
    let cases: [(&str, &str); 9] = [
        (
            "noadmin:media/obj.bin",
            "permission denied: noadmin:media/obj.bin: HTTP 403",
        ),
        ("down:media/obj.bin", "unavailable: remote down:"),
        (
            "wrong:media/obj.bin",
            "unauthenticated: remote wrong: login refused (HTTP 401)",
        ),
        (
            "archive:nocontainer/obj.bin",
            "not found: archive:nocontainer/obj.bin: container \"nocontainer\" does not exist",
        ),
        (
            "archive:media/missing.bin",
            "not found: archive:media/missing.bin: object does not exist",
        ),
        (
            "archive:media/obj.bin",
            "failed precondition: remote archive: no TempURL key",
        ),
        (
            "badsecret:media/obj.bin",
            "unauthenticated: badsecret:media/obj.bin: SignatureDoesNotMatch",
        ),
        (
            "media:media/missing.bin",
            "not found: media:media/missing.bin: NoSuchKey",
        ),
        (
            "nosuchremote:media/obj.bin",
            "invalid argument: unknown remote \"nosuchremote\"",
        ),
    ];
    for (source, expected) in cases {
        let out = fs.ctl(["stage", source]);
        assert_eq!(out.status.code(), Some(1), "{source}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(expected),
            "{source}: expected {expected:?} in {}",
            stderr(&out)
        );
    }
    assert!(
        stderr(&fs.ctl(["stage", "archive:media/obj.bin"]))
            .contains("swift-set-temp-url-key archive")
    );
    assert_eq!(fs.ctl_ok(["ls"]).lines().count(), 1, "nothing was staged");
    fs.ctl_ok(["status"]);

    // Setting the key: only Swift remotes have one; the account's admin may set it.
    let out = fs.ctl(["swift-set-temp-url-key", "nosuchremote"]);
    assert!(stderr(&out).contains("unknown remote"), "{}", stderr(&out));
    let out = fs.ctl(["swift-set-temp-url-key", "media"]);
    assert!(
        stderr(&out).contains("not a Swift remote"),
        "{}",
        stderr(&out)
    );
    fs.ctl_ok(["swift-set-temp-url-key", "archive"]);
    fs.ctl_ok(["stage", "archive:media/obj.bin"]);
    assert_eq!(
        std::fs::read(fs.mountpoint.join("obj.bin")).unwrap(),
        b"hello"
    );

    // A key of one's own comes on stdin, never in argv (where `ps` shows it).
    let set_key = |stdin: &[u8]| {
        let mut child = std::process::Command::new(fusestream_tests::bin("fusestreamctl"))
            .env("FUSESTREAM_SOCKET", &fs.control_socket)
            .args(["swift-set-temp-url-key", "archive", "--key-stdin"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let out = set_key(b"");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = set_key(b"my-own-key\n");
    assert!(out.status.success(), "{}", stderr(&out));
}

/// A Swift with a TempURL key and `media/big.bin` of `size` random bytes, and the config
/// of a remote `short` whose TempURLs live `lifetime` seconds.
fn swift_with_big_object(size: usize, lifetime: u64) -> (SwiftServer, Vec<u8>, String) {
    let swift = SwiftServer::start();
    let data = random_bytes(size);
    swift.put("media", "big.bin", &data);
    assert_eq!(
        swift.admin("POST", "", &["-H", "X-Account-Meta-Temp-URL-Key: tempkey"]),
        204
    );
    let short = format!(
        "[remotes.short]\ntype = \"swift\"\nauth_url = \"{}\"\nuser = \"test:tester\"\n\
         key_env = \"ARCHIVE_KEY\"\nurl_lifetime = {lifetime}\n",
        swift.var("SWIFT_AUTH_URL")
    );
    (swift, data, short)
}

#[test]
fn a_tempurl_that_swift_refuses_as_expired_is_renewed() {
    // TempURLs that live 3 s, renewed only when refused.
    let (swift, data, short) = swift_with_big_object(16 * MIB, 3);
    let fs = start(
        &swift,
        &short,
        Options {
            renew_interval: 3600,
            ..Options::default()
        },
    );
    fs.ctl_ok(["stage", "--name", "big.bin", "short:media/big.bin"]);
    let file = std::fs::File::open(fs.mountpoint.join("big.bin")).unwrap();
    let mut head = vec![0; 4096];
    file.read_exact_at(&mut head, 0).unwrap();
    assert!(head == data[..4096]);

    fs.wait_for_url_expiry_of("big.bin");

    let read = completes("a read after the TempURL expired", 90, move || {
        let mut buf = vec![0; 4096];
        file.read_exact_at(&mut buf, 12 * MIB as u64).map(|()| buf)
    });
    assert!(read.expect("the read resumes with a renewed URL") == data[12 * MIB..12 * MIB + 4096]);
    assert!(
        swift
            .proxy_log()
            .lines()
            .any(|l| l.contains("temp_url_expires") && l.contains(" 401 ")),
        "Swift refused the expired TempURL"
    );
    fs.wait_for_control_log("temp URL refused by the remote; issued a new one");
}

#[test]
fn with_the_control_plane_down_staged_files_fail_cleanly_and_recover_when_it_is_back() {
    let (swift, data, short) = swift_with_big_object(16 * MIB, 6);
    let mut fs = start(
        &swift,
        &short,
        Options {
            read_timeout: 4,
            url_lifetime: 6,
            ..Options::default()
        },
    );
    fs.ctl_ok(["stage", "--name", "remote.bin", "short:media/big.bin"]);
    let local_src = fs.input("local.bin");
    let local = random_file(&local_src, 8 * MIB);
    fs.ctl_ok(["stage", "--name", "local.bin", local_src.to_str().unwrap()]);
    let remote_file = std::fs::File::open(fs.mountpoint.join("remote.bin")).unwrap();
    let local_file = std::fs::File::open(fs.mountpoint.join("local.bin")).unwrap();
    let read = |file: &std::fs::File, at: usize| {
        let mut buf = vec![0; 4096];
        file.read_exact_at(&mut buf, at as u64).map(|()| buf)
    };
    assert!(read(&remote_file, 0).unwrap() == data[..4096]);

    // The control plane dies. The remote object keeps streaming while its URL is valid
    // (the mount daemon fetches from Swift itself); the local file's server is gone.
    fs.control.stop_with(libc::SIGKILL);
    assert!(read(&remote_file, 4 * MIB).unwrap() == data[4 * MIB..4 * MIB + 4096]);
    let error = read(&local_file, 6 * MIB).unwrap_err();
    assert!(
        matches!(error.raw_os_error(), Some(libc::EIO | libc::ETIMEDOUT)),
        "{error}"
    );
    // Once the URL expires, reads of the remote object fail cleanly too.
    fs.wait_for_url_expiry_of("remote.bin");
    let error = read(&remote_file, 12 * MIB).unwrap_err();
    assert!(
        matches!(error.raw_os_error(), Some(libc::EIO | libc::ETIMEDOUT)),
        "{error}"
    );

    // A new control plane takes the entries up again from its saved state.
    fs.restart_control(libc::SIGTERM);
    let again = completes("reads after the control plane is back", 60, move || {
        (
            read(&remote_file, 12 * MIB).unwrap(),
            read(&local_file, 6 * MIB).unwrap(),
        )
    });
    assert!(again.0 == data[12 * MIB..12 * MIB + 4096]);
    assert!(again.1 == local[6 * MIB..6 * MIB + 4096]);
    let ls = fs.ctl_ok(["ls"]);
    assert!(
        ls.contains("remote.bin") && ls.contains("local.bin"),
        "{ls}"
    );
}

#[test]
fn an_http_remote_with_a_bearer_token_streams_and_the_token_stays_in_the_control_plane() {
    let www = tempfile::tempdir().unwrap();
    std::fs::create_dir(www.path().join("dir")).unwrap();
    let data = random_file(&www.path().join("dir/file.bin"), 3 * MIB);
    let nginx = fusestream_tests::nginx::Nginx::serve_with_token(www.path(), Some("s3cr3t-token"));
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[remotes.web]\ntype = \"http\"\nbase_url = \"{base}\"\nheaders_env = {{ Authorization = \"WEB_AUTH\" }}\n\
             [remotes.badweb]\ntype = \"http\"\nbase_url = \"{base}\"\nheaders_env = {{ Authorization = \"BAD_AUTH\" }}\n",
            base = nginx.url("")
        ),
    )
    .unwrap();
    let fs = FuseStream::start_with(Options {
        config: Some(config),
        control_env: vec![
            ("WEB_AUTH".into(), "Bearer s3cr3t-token".into()),
            ("BAD_AUTH".into(), "Bearer wrong".into()),
        ],
        ..Options::default()
    });
    fs.ctl_ok(["stage", "web:dir/file.bin"]);
    let path = fs.mountpoint.join("file.bin");
    let file = std::fs::File::open(&path).unwrap();
    let mut buf = vec![0; 4096];
    file.read_exact_at(&mut buf, 2 * MIB as u64).unwrap();
    assert!(buf == data[2 * MIB..2 * MIB + 4096]);
    assert_eq!(sha256_file(&path), sha256(&data));
    assert!(
        nginx.access_log().contains("\" 206 "),
        "range requests reach the server"
    );

    let out = fs.ctl(["stage", "badweb:dir/file.bin"]);
    assert!(
        stderr(&out).contains("unauthenticated: badweb:dir/file.bin: HTTP 401"),
        "{}",
        stderr(&out)
    );
    let out = fs.ctl(["stage", "web:dir/missing.bin"]);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
    for text in [
        fs.ctl_ok(["ls"]),
        fs.ctl_ok(["status"]),
        fs.mountd.logs(),
        fs.control.logs(),
    ] {
        assert!(!text.contains("s3cr3t-token"), "the token leaked: {text}");
    }
    // Unstaged, the proxied object is no longer served.
    fs.ctl_ok(["unstage", "file.bin"]);
    assert!(!fs.ctl_ok(["ls"]).contains("file.bin"));
}

#[test]
fn a_read_that_outlives_several_tempurl_lifetimes_completes_exactly() {
    // TempURLs that live 4 s, renewed every second.
    let (swift, data, short) = swift_with_big_object(8 * MIB, 4);
    let fs = start(
        &swift,
        &short,
        Options {
            renew_interval: 1,
            ..Options::default()
        },
    );
    fs.ctl_ok(["stage", "--name", "long.bin", "short:media/big.bin"]);
    // O_DIRECT and backwards: no read-ahead (the kernel's or ours), so every step fetches.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(fs.mountpoint.join("long.bin"))
        .unwrap();
    let mut read_back = vec![0; data.len()];
    for step in (0..4).rev() {
        // Each step reads bytes not fetched yet, under a newer URL than the last.
        let before = fs.url_expiry_of("long.bin");
        fs.wait_until("the TempURL was renewed", |fs| {
            fs.url_expiry_of("long.bin") > before
        });
        let range = step * 2 * MIB..(step + 1) * 2 * MIB;
        file.read_exact_at(&mut read_back[range.clone()], range.start as u64)
            .unwrap();
    }
    assert_eq!(sha256(&read_back), sha256(&data));
    // Swift saw the object fetched under several TempURLs.
    let log = swift.proxy_log();
    let expiries: std::collections::BTreeSet<&str> = log
        .lines()
        .filter(|l| l.contains("big.bin") && l.contains(" 206 "))
        // The proxy logs the query percent-encoded: temp_url_expires%3D<unix time>.
        .filter_map(|l| {
            let rest = l.split("temp_url_expires").nth(1)?;
            let value = rest
                .strip_prefix("%3D")
                .or_else(|| rest.strip_prefix('='))?;
            value.split(['&', '%', ' ']).next()
        })
        .collect();
    assert!(
        expiries.len() >= 4,
        "fetches under {} TempURLs: {expiries:?}",
        expiries.len()
    );
}

#[test]
fn a_tampered_tempurl_is_refused_by_swift_and_replaced() {
    // Proactive renewal far off: only the refusal can bring a good URL.
    let (swift, data, short) = swift_with_big_object(8 * MIB, 3600);
    let fs = start(
        &swift,
        &short,
        Options {
            renew_interval: 3600,
            ..Options::default()
        },
    );
    fs.ctl_ok(["stage", "--name", "t.bin", "short:media/big.bin"]);
    // A TempURL with a forged signature and a far expiry, installed as a renewal would be.
    let forged = format!(
        "{}/media/big.bin?temp_url_sig={}&temp_url_expires=4102444800",
        swift.var("SWIFT_STORAGE_URL"),
        "0".repeat(64)
    );
    let update = format!(r#"{{"name":"t.bin","url":"{forged}","urlExpiresUnix":"4102444800"}}"#);
    fusestream_tests::grpcurl_ok(&[
        "-unix",
        "-plaintext",
        "-d",
        &update,
        fs.mountd_socket.to_str().unwrap(),
        "fusestream.v1.Mount/UpdateUrl",
    ]);
    let file = std::fs::File::open(fs.mountpoint.join("t.bin")).unwrap();
    let mut buf = vec![0; 4096];
    file.read_exact_at(&mut buf, 4 * MIB as u64).unwrap();
    assert!(buf == data[4 * MIB..4 * MIB + 4096]);
    assert!(
        swift
            .proxy_log()
            .lines()
            .any(|l| l.contains("temp_url_sig%3D0000") && l.contains(" 401 ")),
        "Swift refused the forged TempURL"
    );
    fs.wait_for_control_log("temp URL refused by the remote; issued a new one");
}
