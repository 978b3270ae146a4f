//! The mount daemon's trust boundary: its API answers root, its own uid and the uids given
//! with --allow-uid, as the kernel reports the caller (SO_PEERCRED); anyone else gets
//! PERMISSION_DENIED. Checked with the real grpcurl run as another uid.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Command;

use fusestream_tests::{FuseStream, Options};

/// An unprivileged uid with no account needed.
const NOBODY: u32 = 65534;

/// A copy of grpcurl that `NOBODY` may run (the installed one may sit under root's home).
fn grpcurl_for_others(dir: &std::path::Path) -> PathBuf {
    let installed = fusestream_tests::grpcurl_binary();
    let copy = dir.join("grpcurl");
    std::fs::copy(&installed, &copy).expect("copy grpcurl");
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// ListEntries on the mount daemon as uid `uid`: (success, stderr).
fn list_as(uid: u32, grpcurl: &std::path::Path, socket: &std::path::Path) -> (bool, String) {
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            &uid.to_string(),
            "--regid",
            &uid.to_string(),
            "--clear-groups",
        ])
        .arg(grpcurl)
        .args(["-unix", "-plaintext"])
        .arg(socket)
        .arg("fusestream.v1.Mount/ListEntries")
        .output()
        .expect("run setpriv (util-linux)");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn only_allowed_uids_may_use_the_mount_daemon() {
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());

    // Another uid is allowed: the socket is open to all, the caller's uid decides.
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![NOBODY - 1],
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mode = std::fs::metadata(&fs.mountd_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o666);
    let (ok, err) = list_as(NOBODY, &grpcurl, &fs.mountd_socket);
    assert!(!ok, "uid {NOBODY} was let in");
    assert!(
        err.contains("Code: PermissionDenied")
            && err.contains(&format!("uid {NOBODY} may not use the mount daemon")),
        "{err}"
    );
    drop(fs);

    // Listed, it is let in.
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![NOBODY],
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, err) = list_as(NOBODY, &grpcurl, &fs.mountd_socket);
    assert!(ok, "uid {NOBODY} is listed: {err}");
    drop(fs);

    // Without --allow-uid the socket is private to the daemon's user.
    let fs = FuseStream::start();
    let mode = std::fs::metadata(&fs.mountd_socket)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
