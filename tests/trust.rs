//! The mount daemon's trust boundary: its API answers root, its own uid, the uids given
//! with --allow-uid and callers in a group given with --allow-gid, as the kernel reports
//! the caller (SO_PEERCRED, and the supplementary groups of its process); anyone else gets
//! PERMISSION_DENIED from every service on the socket, health and reflection included.
//! Checked with the real grpcurl run as other uids and groups.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use fusestream_tests::{FuseStream, Options, grpcurl_for_others, skip_unless_root, tool};

/// An unprivileged uid with no account needed.
const NOBODY: u32 = 65534;

/// grpcurl arguments that call `method` from the .proto files, without reflection.
fn without_reflection<'a>(
    grpcurl: &std::path::Path,
    proto: &'a str,
    method: &'a str,
) -> Vec<String> {
    let protos = grpcurl.parent().unwrap().join("protos");
    vec![
        "-import-path".into(),
        protos.to_string_lossy().into_owned(),
        "-proto".into(),
        proto.into(),
        method.into(),
    ]
}

/// Who grpcurl runs as: uid, primary gid, supplementary groups.
#[derive(Clone, Copy)]
struct Caller<'a> {
    uid: u32,
    gid: u32,
    groups: &'a [u32],
}

const PLAIN_NOBODY: Caller<'static> = Caller {
    uid: NOBODY,
    gid: NOBODY,
    groups: &[],
};

/// grpcurl `args` (flags, then the method or `list`) against the mount daemon's socket as
/// `caller`: (success, stderr).
fn grpcurl_as(
    caller: Caller<'_>,
    grpcurl: &std::path::Path,
    socket: &std::path::Path,
    args: &[&str],
) -> (bool, String) {
    let (call, flags) = args.split_last().expect("a method or list");
    let mut command = Command::new(tool("setpriv"));
    command
        .arg("--reuid")
        .arg(caller.uid.to_string())
        .arg("--regid")
        .arg(caller.gid.to_string());
    if caller.groups.is_empty() {
        command.arg("--clear-groups");
    } else {
        let groups: Vec<String> = caller.groups.iter().map(u32::to_string).collect();
        command.arg("--groups").arg(groups.join(","));
    }
    let out = command
        .arg(grpcurl)
        .args(["-unix", "-plaintext"])
        .args(flags)
        .arg(socket)
        .arg(call)
        .output()
        .expect("run setpriv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ListEntries on the mount daemon as `caller`: (success, stderr).
fn list_as(
    caller: Caller<'_>,
    grpcurl: &std::path::Path,
    socket: &std::path::Path,
) -> (bool, String) {
    grpcurl_as(
        caller,
        grpcurl,
        socket,
        &["fusestream.v1.Mount/ListEntries"],
    )
}

/// `method` of `proto` called as `caller` without reflection: (success, stderr).
fn call_as(
    caller: Caller<'_>,
    grpcurl: &std::path::Path,
    socket: &std::path::Path,
    proto: &str,
    method: &str,
) -> (bool, String) {
    let args = without_reflection(grpcurl, proto, method);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    grpcurl_as(caller, grpcurl, socket, &args)
}

/// Asserts that `caller` is refused by every service: Mount, health and reflection.
fn assert_refused_everywhere(
    caller: Caller<'_>,
    grpcurl: &std::path::Path,
    socket: &std::path::Path,
) {
    let uid = caller.uid;
    let (ok, err) = list_as(caller, grpcurl, socket);
    assert!(!ok, "uid {uid} was let in");
    // grpcurl asks reflection for the method first: that is refused already.
    assert!(
        err.contains("PermissionDenied")
            && err.contains(&format!("uid {uid} may not use the mount daemon")),
        "{err}"
    );
    // The services themselves refuse, not only reflection (grpcurl's first question).
    for (proto, method) in [
        (
            "fusestream/v1/fusestream.proto",
            "fusestream.v1.Mount/GetStatus",
        ),
        ("health.proto", "grpc.health.v1.Health/Check"),
    ] {
        let (ok, err) = call_as(caller, grpcurl, socket, proto, method);
        assert!(!ok, "uid {uid} may call {method}");
        assert!(
            err.contains("Code: PermissionDenied") && err.contains("may not use the mount daemon"),
            "{method}: {err}"
        );
    }
    let (ok, err) = grpcurl_as(caller, grpcurl, socket, &["list"]);
    assert!(!ok, "uid {uid} listed the services");
    assert!(
        err.contains("PermissionDenied") && err.contains("may not use the mount daemon"),
        "list: {err}"
    );
}

fn socket_mode(socket: &std::path::Path) -> u32 {
    std::fs::metadata(socket).unwrap().permissions().mode() & 0o777
}

#[test]
fn only_allowed_uids_may_use_the_mount_daemon() {
    // Runs grpcurl as other uids (setpriv).
    if skip_unless_root("trust::only_allowed_uids_may_use_the_mount_daemon") {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());

    // Another uid is allowed: the socket is open to all, the caller's uid decides.
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![NOBODY - 1],
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(socket_mode(&fs.mountd_socket), 0o666);
    assert_refused_everywhere(PLAIN_NOBODY, &grpcurl, &fs.mountd_socket);
    drop(fs);

    // Listed, it is let in.
    let fs = FuseStream::start_with(Options {
        allow_uids: vec![NOBODY],
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, err) = list_as(PLAIN_NOBODY, &grpcurl, &fs.mountd_socket);
    assert!(ok, "uid {NOBODY} is listed: {err}");
    let (ok, err) = grpcurl_as(PLAIN_NOBODY, &grpcurl, &fs.mountd_socket, &["list"]);
    assert!(ok, "uid {NOBODY} is listed: {err}");
    drop(fs);

    // Without --allow-uid the socket is private to the daemon's user.
    let fs = FuseStream::start();
    assert_eq!(socket_mode(&fs.mountd_socket), 0o600);
}

/// Gids no account needs, besides NOBODY's own.
const GROUP_A: u32 = 65532;
const GROUP_B: u32 = 65533;

fn start_allowing_gids(gids: &[u32]) -> FuseStream {
    let fs = FuseStream::start_with(Options {
        mountd_args: gids
            .iter()
            .flat_map(|g| ["--allow-gid".to_string(), g.to_string()])
            .collect(),
        ..Options::default()
    });
    std::fs::set_permissions(fs.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    fs
}

#[test]
fn callers_in_an_allowed_group_may_use_the_mount_daemon() {
    use std::os::unix::fs::MetadataExt;
    // Runs grpcurl as other uids and groups (setpriv).
    if skip_unless_root("trust::callers_in_an_allowed_group_may_use_the_mount_daemon") {
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let grpcurl = grpcurl_for_others(tools.path());

    // One group: the socket is that group's, 0660; members get in, by their primary
    // group or by a supplementary one.
    let fs = start_allowing_gids(&[GROUP_B]);
    assert_eq!(socket_mode(&fs.mountd_socket), 0o660);
    assert_eq!(std::fs::metadata(&fs.mountd_socket).unwrap().gid(), GROUP_B);
    let primary = Caller {
        uid: NOBODY,
        gid: GROUP_B,
        groups: &[],
    };
    let (ok, err) = list_as(primary, &grpcurl, &fs.mountd_socket);
    assert!(ok, "primary gid {GROUP_B} is allowed: {err}");
    let supplementary = Caller {
        uid: NOBODY,
        gid: NOBODY,
        groups: &[GROUP_A, GROUP_B],
    };
    let (ok, err) = list_as(supplementary, &grpcurl, &fs.mountd_socket);
    assert!(ok, "supplementary gid {GROUP_B} is allowed: {err}");
    drop(fs);

    // Several groups: the socket is open to all and each call is checked; a caller in
    // none of them is refused by every service, one in any of them gets in.
    let fs = start_allowing_gids(&[GROUP_A, GROUP_B]);
    assert_eq!(socket_mode(&fs.mountd_socket), 0o666);
    assert_refused_everywhere(PLAIN_NOBODY, &grpcurl, &fs.mountd_socket);
    assert_refused_everywhere(
        Caller {
            uid: NOBODY,
            gid: NOBODY,
            groups: &[NOBODY - 10],
        },
        &grpcurl,
        &fs.mountd_socket,
    );
    let member = Caller {
        uid: NOBODY,
        gid: NOBODY,
        groups: &[NOBODY - 10, GROUP_A],
    };
    let (ok, err) = list_as(member, &grpcurl, &fs.mountd_socket);
    assert!(ok, "supplementary gid {GROUP_A} is allowed: {err}");
    let (ok, err) = grpcurl_as(
        member,
        &grpcurl,
        &fs.mountd_socket,
        &["grpc.health.v1.Health/Check"],
    );
    assert!(ok && !err.contains("PermissionDenied"), "health: {err}");
}
