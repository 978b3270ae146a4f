//! Folders and remote prefixes: `stage -r` of a real local tree (nested folders, a symlink
//! loop, a FIFO, names with spaces and unicode) and of prefixes of a real Swift, through
//! both its Swift API (marker paging) and its S3 API (ListObjectsV2 continuation tokens),
//! with listing pages smaller than the prefix; `ls REMOTE:` browsing; `unstage -r`, which
//! leaves other users' entries alone. The mount must show the right tree with the right
//! bytes. A file the staging user can not read is skipped with the reason: checked with a
//! control plane that runs as a second local user.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use fusestream_tests::swift::SwiftServer;
use fusestream_tests::{
    FuseStream, Options, command_as, grpcurl_for_others, is_root, random_file, sha256, sha256_file,
    skip_unless_root, stderr,
};

/// Every file under `dir`, as paths relative to it, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                let relative = path.strip_prefix(dir).unwrap();
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "mkfifo");
}

#[test]
fn local_folders_stage_their_regular_files_and_skip_the_rest() {
    let fs = FuseStream::start();
    let photos = fs.input("photos");
    std::fs::create_dir_all(photos.join("2024/deep")).unwrap();
    let a = random_file(&photos.join("a.jpg"), 70_000);
    let b = random_file(&photos.join("2024/b.jpg"), 1);
    let c = random_file(&photos.join("2024/deep/c d ü.jpg"), 300_000);
    std::os::unix::fs::symlink(&photos, photos.join("2024/loop")).unwrap();
    std::os::unix::fs::symlink("../a.jpg", photos.join("2024/link.jpg")).unwrap();
    mkfifo(&photos.join("pipe"));
    // Unreadable for the staging user; root reads anything, so only checked otherwise.
    let secret = photos.join("secret.jpg");
    std::fs::write(&secret, b"no").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();

    let out = fs.ctl(["stage", "-r", photos.to_str().unwrap()]);
    let (stdout, err) = (String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(out.status.success(), "{err}");
    let (staged, skipped) = if is_root() { (4, 3) } else { (3, 4) };
    assert!(
        err.contains(&format!("{staged} staged, {skipped} skipped, 0 failed")),
        "{err}"
    );
    assert!(err.contains("symbolic link (not followed)"), "{err}");
    assert!(err.contains("FIFO"), "{err}");
    // Root reads every file: the skip is checked with a second user below
    // (`a_file_the_staging_user_can_not_read_is_skipped_with_the_reason`).
    if !is_root() {
        assert!(
            err.contains("secret.jpg") && err.contains("not readable"),
            "{err}"
        );
    }
    assert_eq!(stdout.lines().count(), staged, "{stdout}");
    let mounted = fs.mountpoint.join("photos");
    let mut expected = vec!["2024/b.jpg", "2024/deep/c d ü.jpg", "a.jpg"];
    if is_root() {
        expected.push("secret.jpg");
        expected.sort();
    }
    assert_eq!(files_under(&mounted), expected);
    assert_eq!(sha256_file(&mounted.join("a.jpg")), sha256(&a));
    assert_eq!(sha256_file(&mounted.join("2024/b.jpg")), sha256(&b));
    assert_eq!(
        sha256_file(&mounted.join("2024/deep/c d ü.jpg")),
        sha256(&c)
    );

    // --name renames the top; --output json is one object per entry, then the counts.
    let json = fs.ctl_ok([
        "stage",
        "-r",
        "--name",
        "pics/old",
        "--output",
        "json",
        photos.to_str().unwrap(),
    ]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().unwrap();
    assert_eq!(last["staged"], staged as u64, "{json}");
    assert!(
        lines
            .iter()
            .any(|l| l["status"] == "staged" && l["name"] == "pics/old/2024/deep/c d ü.jpg"),
        "{json}"
    );
    assert_eq!(
        sha256_file(&fs.mountpoint.join("pics/old/a.jpg")),
        sha256(&a)
    );

    // Again without --replace: all there already, so all fail, and the exit code says so;
    // with --replace, what is new is added and what changed is replaced.
    let out = fs.ctl(["stage", "-r", photos.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("0 staged, {skipped} skipped, {staged} failed")),
        "{}",
        stderr(&out)
    );
    let new = random_file(&photos.join("2024/new.jpg"), 5000);
    let changed = random_file(&photos.join("a.jpg"), 1234);
    let out = fs.ctl_ok(["stage", "-r", "--replace", photos.to_str().unwrap()]);
    assert!(out.contains("photos/2024/new.jpg"), "{out}");
    assert_eq!(sha256_file(&mounted.join("2024/new.jpg")), sha256(&new));
    assert_eq!(sha256_file(&mounted.join("a.jpg")), sha256(&changed));

    // What was staged stays staged when a source fails.
    let missing = fs.input("missing");
    let extra = fs.input("extra.bin");
    let extra_data = random_file(&extra, 10);
    let out = fs.ctl([
        "stage",
        "-r",
        extra.to_str().unwrap(),
        missing.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("1 staged, 0 skipped, 1 failed")
            && stderr(&out).contains("does not exist"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        sha256_file(&fs.mountpoint.join("extra.bin")),
        sha256(&extra_data)
    );

    // unstage -r removes a folder's entries, and only those.
    let out = fs.ctl_ok(["unstage", "-r", "photos/2024/"]);
    assert!(out.contains("3 entries unstaged"), "{out}");
    let mut left = vec!["a.jpg"];
    if is_root() {
        left.push("secret.jpg");
    }
    assert_eq!(files_under(&mounted), left);
    assert!(fs.mountpoint.join("pics/old/2024/b.jpg").exists());
}

/// The tests' "alice" is root; mallory (a uid allowed on the mount daemon) stages into the
/// same folder. alice's `unstage -r` leaves mallory's entry, and mallory's RemoveEntries
/// call removes only hers.
#[test]
fn unstage_recursive_leaves_other_users_entries_alone() {
    if skip_unless_root("folders::unstage_recursive_leaves_other_users_entries_alone") {
        return;
    }
    const MALLORY: u32 = 65533;
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![MALLORY],
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mine = fs.input("mine");
    std::fs::create_dir_all(&mine).unwrap();
    random_file(&mine.join("a.bin"), 100);
    random_file(&mine.join("b.bin"), 100);
    fs.ctl_ok(["stage", "-r", "--name", "shared", mine.to_str().unwrap()]);
    let mallory_call = |method: &str, json: &str| {
        let out = command_as(MALLORY, &grpcurl)
            .args(["-unix", "-plaintext", "-d", json])
            .arg(&fs.mountd_socket)
            .arg(format!("fusestream.v1.Mount/{method}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{method}: {}", stderr(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let entry = r#"{"entries":[{"entry":{"name":"shared/m.bin","url":"http://127.0.0.1:9/m","version":{"size":"5","etag":"\"x\""}}}]}"#;
    let added = mallory_call("AddEntries", entry);
    assert!(added.contains("\"entry\""), "{added}");
    // Hers removes only hers: alice's two stay.
    let removed = mallory_call("RemoveEntries", r#"{"folder":"shared/nothing-here"}"#);
    assert!(!removed.contains("\"removed\""), "{removed}");

    let out = fs.ctl_ok(["unstage", "-r", "shared"]);
    assert!(out.contains("2 entries unstaged"), "{out}");
    assert_eq!(files_under(&fs.mountpoint.join("shared")), ["m.bin"]);
    let listed = mallory_call("ListEntries", "{}");
    assert!(listed.contains("shared/m.bin"), "{listed}");
    let removed = mallory_call("RemoveEntries", r#"{"folder":"shared/"}"#);
    assert!(removed.contains("\"removed\": \"1\""), "{removed}");
}

/// A config with a Swift remote (`archive`) and an S3 remote (`media`) on `swift`, with
/// listing pages of 7 items.
fn start_with_remotes(swift: &SwiftServer) -> FuseStream {
    let dir = tempfile::tempdir().unwrap().keep();
    let path = dir.join("config.toml");
    std::fs::write(
        &path,
        format!(
            "[remotes.archive]\ntype = \"swift\"\nauth_url = \"{}\"\nuser = \"{}\"\n\
             key_env = \"ARCHIVE_KEY\"\nlisting_page_size = 7\n\
             [remotes.media]\ntype = \"s3\"\nendpoint = \"{}\"\nregion = \"{}\"\n\
             access_key_id_env = \"MEDIA_AK\"\nsecret_access_key_env = \"MEDIA_SK\"\n\
             listing_page_size = 7\n",
            swift.var("SWIFT_AUTH_URL"),
            swift.var("SWIFT_USER"),
            swift.var("S3_ENDPOINT"),
            swift.var("S3_REGION"),
        ),
    )
    .unwrap();
    FuseStream::start_with(Options {
        config: Some(path),
        control_env: vec![
            ("ARCHIVE_KEY".into(), swift.var("SWIFT_KEY").into()),
            ("MEDIA_AK".into(), swift.var("S3_ACCESS_KEY").into()),
            ("MEDIA_SK".into(), swift.var("S3_SECRET_KEY").into()),
        ],
        ..Options::default()
    })
}

#[test]
fn swift_and_s3_prefixes_are_browsed_and_staged_page_by_page() {
    let swift = SwiftServer::start();
    assert_eq!(
        swift.admin("POST", "", &["-H", "X-Account-Meta-Temp-URL-Key: tempkey"]),
        204
    );
    // 20 objects under set/ (more than two pages of 7), in nested "directories", names
    // with spaces and unicode; one object outside the prefix.
    let mut objects = Vec::new();
    for i in 0..20 {
        let name = match i % 3 {
            0 => format!("top {i}.bin"),
            1 => format!("dir ü/{i}.bin"),
            _ => format!("dir ü/sub/n {i}.bin"),
        };
        let data = fusestream_tests::random_bytes(1000 + i * 17);
        swift.put("media", &format!("set/{name}"), &data);
        objects.push((name, data));
    }
    swift.put("media", "settle.bin", b"not under set/");
    let fs = start_with_remotes(&swift);

    let containers = fs.ctl_ok(["ls", "archive:"]);
    assert!(
        containers.lines().any(|l| l.ends_with(" media")),
        "{containers}"
    );
    let level = fs.ctl_ok(["ls", "archive:media/set/"]);
    assert!(level.contains("media/set/dir ü/"), "{level}");
    assert!(level.contains("media/set/top 0.bin"), "{level}");
    assert!(!level.contains("sub/"), "one level only: {level}");
    for remote in ["archive", "media"] {
        let all = fs.ctl_ok([
            "ls",
            "-r",
            "--output",
            "json",
            &format!("{remote}:media/set"),
        ]);
        let mut names: Vec<String> = all
            .lines()
            .map(|l| {
                let item: serde_json::Value = serde_json::from_str(l).unwrap();
                assert_eq!(item["kind"], "object", "{l}");
                item["name"].as_str().unwrap().to_string()
            })
            .collect();
        names.sort();
        let mut expected: Vec<String> = objects
            .iter()
            .map(|(n, _)| format!("media/set/{n}"))
            .collect();
        expected.sort();
        assert_eq!(names, expected, "{remote}");
    }
    let log = swift.proxy_log();
    // The proxy logs query strings percent-encoded.
    assert!(log.contains("marker%3D"), "Swift listings were paged");
    assert!(log.contains("continuation-token"), "S3 listings were paged");

    let out = fs.ctl(["stage", "-r", "archive:media/set/"]);
    assert!(
        out.status.success() && stderr(&out).contains("20 staged, 0 skipped, 0 failed"),
        "{}",
        stderr(&out)
    );
    let out = fs.ctl(["stage", "-r", "--name", "s3set", "media:media/set"]);
    assert!(
        out.status.success() && stderr(&out).contains("20 staged, 0 skipped, 0 failed"),
        "{}",
        stderr(&out)
    );
    for top in ["set", "s3set"] {
        let mounted = fs.mountpoint.join(top);
        assert_eq!(files_under(&mounted).len(), 20, "{top}");
        for (name, data) in &objects {
            assert_eq!(
                sha256_file(&mounted.join(name)),
                sha256(data),
                "{top}/{name}"
            );
        }
    }
    let out = fs.ctl(["stage", "-r", "archive:media/nothing/"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no objects under it"),
        "{}",
        stderr(&out)
    );
}

/// A local user of no account that the tests stage as (only numbers: setpriv needs no
/// passwd entry).
const STAGER: u32 = 65531;

#[test]
fn a_file_the_staging_user_can_not_read_is_skipped_with_the_reason() {
    if skip_unless_root("folders::a_file_the_staging_user_can_not_read_is_skipped_with_the_reason")
    {
        return;
    }
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![STAGER],
        ..Options::default()
    });
    // A tree the stager may walk, but one file of it is root's alone; outside the
    // harness's private dir.
    let tree = tempfile::Builder::new()
        .prefix("fusestream-tree-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(tree.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let open = tree.path().join("open.jpg");
    let data = random_file(&open, 50_000);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let secret = tree.path().join("secret.jpg");
    std::fs::write(&secret, b"root only").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // The stager's own control plane, in a private dir of its own.
    let home = tempfile::Builder::new()
        .prefix("fusestream-stager-")
        .tempdir()
        .unwrap();
    std::os::unix::fs::chown(home.path(), Some(STAGER), Some(STAGER)).unwrap();
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let socket = home.path().join("control.sock");
    let mut serve = command_as(STAGER, fusestream_tests::bin("fusestreamctl"))
        .arg("--socket")
        .arg(&socket)
        .arg("serve")
        .arg("--mountd-socket")
        .arg(&fs.mountd_socket)
        .arg("--state-dir")
        .arg(home.path().join("state"))
        .arg("--no-inhibit-sleep")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let as_stager = |args: &[&str]| {
        command_as(STAGER, fusestream_tests::bin("fusestreamctl"))
            .env("FUSESTREAM_SOCKET", &socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    // Ready once it answers (polled: the condition, not a pause).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !as_stager(&["status"]).status.success() {
        assert!(
            std::time::Instant::now() < deadline,
            "the stager's control plane never answered"
        );
        assert!(
            serve.try_wait().unwrap().is_none(),
            "the stager's control plane exited"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    let out = as_stager(&[
        "stage",
        "-r",
        "--name",
        "stager",
        tree.path().to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("1 staged, 1 skipped, 0 failed"), "{err}");
    assert!(
        err.contains("secret.jpg") && err.contains("not readable"),
        "{err}"
    );
    assert_eq!(files_under(&fs.mountpoint.join("stager")), ["open.jpg"]);
    assert_eq!(
        sha256_file(&fs.mountpoint.join("stager/open.jpg")),
        sha256(&data)
    );
    // Staged as the stager: its file, private to it.
    let meta = std::fs::metadata(fs.mountpoint.join("stager/open.jpg")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (STAGER, 0o400));

    let _ = serve.kill();
    let _ = serve.wait();
}
