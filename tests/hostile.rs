//! Bad input at the boundary: a deterministic barrage of malformed, oversized and hostile
//! requests against both gRPC services (the mount daemon's Mount, the control plane's
//! Control, and health on both), with a real tonic client over their Unix sockets, plus
//! raw HTTP/2 gRPC bodies that are not valid messages at all (to every method with a
//! unary request; reflection, a client stream, answers those with OK, see `raw_barrage`).
//!
//! Every call must come back (a deadline bounds each one) with a documented status code
//! and a message that leaks none of the secrets put into the input; afterwards both
//! daemons still run and serve, a normal file stages and reads back right, and the entries
//! are exactly those the accepted requests made.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use fusestream_shared::api::{self, control_client::ControlClient, mount_client::MountClient};
use fusestream_shared::grpc::unix_channel;
use fusestream_tests::{FuseStream, Prng, completes, grpcurl_ok};
use http_body_util::BodyExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Bound of every call: a call that has not answered by then has hung.
const CALL_DEADLINE: Duration = Duration::from_secs(20);
/// Requests of each kind the generator makes.
const ROUNDS: usize = 400;
const SEED: u64 = 0x5eed_f05e;

/// Secrets planted in the input; no message may contain one.
const SECRETS: &[&str] = &["s3cr3tPW", "s3cr3tSIG", "s3cr3tFRAG", "s3cr3tTOKEN"];

/// The codes the API documents for refusals (README: gRPC API, Remotes: a remote that
/// refuses credentials is UNAUTHENTICATED).
const DOCUMENTED: &[Code] = &[
    Code::Unauthenticated,
    Code::InvalidArgument,
    Code::NotFound,
    Code::AlreadyExists,
    Code::PermissionDenied,
    Code::Unavailable,
    Code::ResourceExhausted,
    Code::FailedPrecondition,
];

const KIB64: usize = 64 << 10;

/// Names, with whether the rules accept them.
fn names() -> Vec<(String, bool)> {
    let mut names: Vec<(String, bool)> = [
        ("..", false),
        (".", false),
        ("", false),
        ("a/../b", false),
        ("../etc/passwd", false),
        ("a/./b", false),
        ("/abs", false),
        ("/", false),
        ("dir/", false),
        ("a//b", false),
        ("nul\0byte", false),
        ("\0", false),
        ("new\nline", false),
        ("tab\there", false),
        ("esc\x1b[31mred", false),
        ("del\x7f", false),
        ("c1\u{9b}31m", false),
        ("carriage\rreturn", false),
        ("ok.bin", true),
        ("deep/er/ok.bin", true),
        ("ünïcödé/файл.bin", true),
        ("emoji-🦀.bin", true),
        ("..dots..", true),
        ("space name.bin", true),
        ("rtl-\u{202e}txt.exe", true),
    ]
    .into_iter()
    .map(|(n, ok)| (n.to_string(), ok))
    .collect();
    names.push(("x".repeat(KIB64), false));
    names.push(("y".repeat(256), false));
    names.push((format!("d/{}", "z".repeat(256)), false));
    names.push(("w".repeat(255), true));
    names.push((vec!["d".repeat(200); 21].join("/"), false));
    names.push((format!("{}/\0", "q".repeat(KIB64)), false));
    names
}

/// URLs the mount daemon may be given, with whether it accepts them (http or https).
fn urls() -> Vec<(String, bool)> {
    let mut urls: Vec<(String, bool)> = [
        ("http://127.0.0.1:1/x", true),
        ("https://127.0.0.1:1/x", true),
        ("HTTP://127.0.0.1:1/upper", true),
        ("http://user:s3cr3tPW@127.0.0.1:1/x", true),
        (
            "http://127.0.0.1:1/x?X-Amz-Signature=s3cr3tSIG#s3cr3tFRAG",
            true,
        ),
        ("file:///etc/passwd", false),
        ("unix:/run/fusestream/mountd.sock", false),
        ("gopher://127.0.0.1:70/1", false),
        ("javascript:alert(1)", false),
        ("ftp://user:s3cr3tPW@127.0.0.1/x", false),
        ("data:text/plain;base64,czNjcjN0UFc=", false),
        ("", false),
        ("http:", false),
        ("relative/path", false),
        ("/etc/shadow", false),
        (" http://127.0.0.1:1/leading-space", false),
    ]
    .into_iter()
    .map(|(u, ok)| (u.to_string(), ok))
    .collect();
    urls.push((format!("http://127.0.0.1:1/{}", "a".repeat(KIB64)), true));
    urls.push((format!("gopher://{}", "b".repeat(KIB64)), false));
    urls
}

/// Sources for Control.Stage; all are refused (`valid_file` is added separately).
fn sources(local_addr: &str) -> Vec<String> {
    let mut sources: Vec<String> = [
        "file:///etc/passwd",
        "unix:/x",
        "gopher://127.0.0.1/",
        "http://user:s3cr3tPW@127.0.0.1:1/x",
        "https://user:s3cr3tPW@127.0.0.1:1/x?sig=s3cr3tSIG",
        "javascript:alert(1)",
        "ftp://user:s3cr3tPW@127.0.0.1/x",
        "REMOTE:unknown/object",
        "nope:bucket/key",
        "no_such-remote:path",
        "relative/path.bin",
        "./relative.bin",
        "../../etc/passwd",
        "",
        "/",
        "/etc",
        "/dev/zero",
        "/dev/null",
        "/nonexistent/file",
        "/tmp/nul\0byte",
        "http://",
        "http://[::1",
        "http://127.0.0.1:99999/x",
    ]
    .into_iter()
    .map(str::to_string)
    .collect();
    sources.push(format!("http://user:s3cr3tPW@{local_addr}/nothing-here"));
    sources.push(format!("http://{local_addr}/f/1?expires=1&sig=s3cr3tSIG"));
    sources.push(format!("http://127.0.0.1:1/{}", "a".repeat(KIB64)));
    sources.push(format!("remote:{}", "p".repeat(KIB64)));
    sources.push("/".repeat(KIB64));
    sources
}

const SIZES: &[u64] = &[
    0,
    1,
    4096,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,     // -1 as uint64
    u64::MAX - 1, // -2
    1 << 63,      // i64::MIN
];
const TIMES: &[i64] = &[i64::MIN, -1, 0, 1, 4_102_444_800, i64::MAX];

fn pick<'a, T>(rng: &mut Prng, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len() as u64) as usize]
}

/// What a call returned, reduced to what is checked.
type Outcome = Result<(), Status>;

/// Checks a refusal: the server's own status (not a transport failure, which tonic
/// reports as a status with a source error), a documented code, a message, no secret.
fn check_refusal(what: &str, status: &Status) {
    assert!(
        std::error::Error::source(status).is_none(),
        "{what}: the call failed in transport, not with the server's status: {status:?}"
    );
    assert!(
        DOCUMENTED.contains(&status.code()),
        "{what}: undocumented status {:?}: {}",
        status.code(),
        status.message()
    );
    assert!(!status.message().is_empty(), "{what}: empty message");
    for secret in SECRETS {
        assert!(
            !status.message().contains(secret),
            "{what}: message leaks {secret}: {}",
            status.message()
        );
    }
}

/// A short description of a request for failure messages (inputs may be 64 KiB).
fn brief(text: &str) -> String {
    let mut shown: String = text.chars().take(48).collect();
    if shown.len() < text.len() {
        shown.push_str(&format!("...({} bytes)", text.len()));
    }
    format!("{shown:?}")
}

/// Runs `call` under the deadline; a timeout is a hang.
async fn bounded<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) -> Outcome {
    match tokio::time::timeout(CALL_DEADLINE, call).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => panic!("{what}: no answer within {CALL_DEADLINE:?}"),
    }
}

/// Runs `call` under the deadline and asserts it succeeds (read-only calls).
async fn succeeds<T>(
    what: &str,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, Status>>,
) {
    if let Err(status) = bounded(what, call).await {
        panic!("{what}: {status:?}");
    }
}

/// The entries staged so far, by name, as the accepted requests made them.
#[derive(Default)]
struct Model {
    staged: BTreeSet<String>,
}

impl Model {
    /// Records an AddEntry/Stage outcome of `name` (`valid`: the request was acceptable).
    fn added(&mut self, what: &str, name: &str, valid: bool, replace: bool, outcome: &Outcome) {
        match outcome {
            Ok(()) => {
                assert!(valid, "{what}: accepted");
                assert!(
                    replace || !self.staged.contains(name),
                    "{what}: a staged name was staged again without replace"
                );
                self.staged.insert(name.to_string());
            }
            Err(status) => {
                check_refusal(what, status);
                if valid && self.staged.contains(name) && !replace {
                    assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
                }
            }
        }
    }

    /// Records a RemoveEntry/Unstage outcome.
    fn removed(&mut self, what: &str, name: &str, outcome: &Outcome) {
        match outcome {
            Ok(()) => assert!(
                self.staged.remove(name),
                "{what}: removed what was not staged"
            ),
            Err(status) => {
                check_refusal(what, status);
                assert!(
                    !self.staged.contains(name),
                    "{what}: a staged entry was not removed: {status:?}"
                );
                assert!(
                    matches!(status.code(), Code::NotFound | Code::InvalidArgument),
                    "{what}: {status:?}"
                );
            }
        }
    }
}

/// A name for a request: mostly hostile ones, sometimes a fresh valid one or one already
/// staged (duplicates).
fn name_for(rng: &mut Prng, names: &[(String, bool)], model: &Model, i: usize) -> (String, bool) {
    match rng.below(10) {
        0 => (format!("gen/{i}.bin"), true),
        1 => match model
            .staged
            .iter()
            .nth(rng.below(model.staged.len().max(1) as u64) as usize)
        {
            Some(name) => (name.clone(), true),
            None => pick(rng, names).clone(),
        },
        _ => pick(rng, names).clone(),
    }
}

async fn mount_barrage(mount: &mut MountClient<Channel>, model: &mut Model, rng: &mut Prng) {
    let names = names();
    let urls = urls();
    for i in 0..ROUNDS {
        let (name, name_ok) = name_for(rng, &names, model, i);
        match rng.below(6) {
            0..=2 => {
                let (url, url_ok) = pick(rng, &urls).clone();
                let with_entry = rng.below(20) != 0;
                let with_version = rng.below(20) != 0;
                let size = *pick(rng, SIZES);
                let replace = rng.below(3) == 0;
                let etag = match rng.below(4) {
                    0 => String::new(),
                    1 => "x".repeat(KIB64),
                    2 => "\"s3cr3tTOKEN\0\n\"".into(),
                    _ => "\"v1\"".into(),
                };
                let source = pick(rng, &urls).0.clone();
                let last_modified_unix = *pick(rng, TIMES);
                let request = api::AddEntryRequest {
                    entry: with_entry.then(|| api::EntrySpec {
                        name: name.clone(),
                        url: url.clone(),
                        url_expires_unix: *pick(rng, TIMES),
                        version: with_version.then(|| api::ObjectVersion {
                            size,
                            etag,
                            last_modified_unix,
                            content_type: "\0".repeat(rng.below(2) as usize * KIB64),
                        }),
                        share: rng.below(3) as i32,
                        source,
                    }),
                    replace,
                };
                let what = format!(
                    "#{i} Mount.AddEntry name={} url={} size={size} replace={replace} entry={with_entry} version={with_version}",
                    brief(&name),
                    brief(&url)
                );
                let outcome = bounded(&what, mount.add_entry(request)).await;
                // Sizes past the largest object FuseStream stages (1 PiB) are invalid.
                let size_ok = size <= fusestream_shared::limits::MAX_OBJECT_SIZE;
                // HTTP dates end with the year 9999.
                let time_ok = last_modified_unix < 253_402_300_800;
                if let Err(status) = &outcome
                    && (!name_ok || (with_entry && with_version && (!size_ok || !time_ok)))
                {
                    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
                }
                model.added(
                    &what,
                    &name,
                    name_ok && url_ok && with_entry && with_version && size_ok && time_ok,
                    replace,
                    &outcome,
                );
            }
            3 => {
                let what = format!("#{i} Mount.RemoveEntry name={}", brief(&name));
                let outcome = bounded(
                    &what,
                    mount.remove_entry(api::RemoveEntryRequest { name: name.clone() }),
                )
                .await;
                model.removed(&what, &name, &outcome);
            }
            4 => {
                let (url, url_ok) = pick(rng, &urls).clone();
                let what = format!(
                    "#{i} Mount.UpdateUrl name={} url={}",
                    brief(&name),
                    brief(&url)
                );
                let request = api::UpdateUrlRequest {
                    name: name.clone(),
                    url,
                    url_expires_unix: *pick(rng, TIMES),
                };
                match bounded(&what, mount.update_url(request)).await {
                    Ok(()) => assert!(url_ok && model.staged.contains(&name), "{what}: accepted"),
                    Err(status) => check_refusal(&what, &status),
                }
            }
            _ => {
                let what = format!("#{i} Mount.ListEntries/GetStatus/ListOps");
                succeeds(
                    &what,
                    mount.list_entries(api::ListEntriesRequest::default()),
                )
                .await;
                succeeds(&what, mount.get_status(api::GetStatusRequest {})).await;
                succeeds(&what, mount.list_ops(api::ListOpsRequest {})).await;
            }
        }
    }
}

async fn control_barrage(
    control: &mut ControlClient<Channel>,
    model: &mut Model,
    rng: &mut Prng,
    local_addr: &str,
    valid_file: &str,
) {
    let names = names();
    let sources = sources(local_addr);
    for i in 0..ROUNDS {
        let (name, name_ok) = name_for(rng, &names, model, i);
        match rng.below(5) {
            0..=2 => {
                // A valid source with a (mostly hostile) name, or a hostile source.
                let (source, source_ok) = if rng.below(2) == 0 {
                    (valid_file.to_string(), true)
                } else {
                    (pick(rng, &sources).clone(), false)
                };
                let replace = rng.below(3) == 0;
                let what = format!(
                    "#{i} Control.Stage source={} name={} replace={replace}",
                    brief(&source),
                    brief(&name)
                );
                let request = api::StageRequest {
                    source: source.clone(),
                    name: name.clone(),
                    replace,
                    share: rng.below(3) as i32,
                };
                let outcome = bounded(&what, control.stage(request)).await;
                // An empty name means: the source's own (the valid file's is staged as such).
                let (name, name_ok) = if name.is_empty() && source_ok {
                    (valid_file.rsplit('/').next().unwrap().to_string(), true)
                } else {
                    (name, name_ok)
                };
                if source_ok
                    && !name_ok
                    && let Err(status) = &outcome
                {
                    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
                }
                model.added(&what, &name, source_ok && name_ok, replace, &outcome);
            }
            3 => {
                let what = format!("#{i} Control.Unstage name={}", brief(&name));
                let outcome = bounded(
                    &what,
                    control.unstage(api::UnstageRequest {
                        name: name.clone(),
                        recursive: false,
                    }),
                )
                .await;
                model.removed(&what, &name, &outcome);
            }
            _ => {
                let remote = match rng.below(5) {
                    0 => String::new(),
                    1 => "nope".into(),
                    2 => "../etc".into(),
                    3 => "r".repeat(KIB64),
                    _ => "archive\0".into(),
                };
                let long_key = "k".repeat(KIB64);
                let key = ["", "s3cr3tTOKEN", &long_key][rng.below(3) as usize];
                let what = format!("#{i} Control.SetTempUrlKey remote={}", brief(&remote));
                let request = api::SetTempUrlKeyRequest {
                    remote,
                    key: key.to_string(),
                };
                match bounded(&what, control.set_temp_url_key(request)).await {
                    Ok(()) => panic!("{what}: accepted without any remote configured"),
                    Err(status) => check_refusal(&what, &status),
                }
                let what = format!("#{i} Control.List/Status/ListOps");
                succeeds(&what, control.list(api::ListRequest::default())).await;
                succeeds(&what, control.status(api::StatusRequest {})).await;
                succeeds(&what, control.list_ops(api::ListOpsRequest {})).await;
            }
        }
    }
}

/// One gRPC message frame: compression flag, declared length, payload.
fn frame(flag: u8, declared: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Request bodies no gRPC server can take as one valid message of any type.
fn malformed_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let framed = |payload: &[u8]| frame(0, payload.len() as u32, payload);
    vec![
        ("no message at all", Vec::new()),
        ("half a frame header", vec![0, 0, 0]),
        ("invalid wire type", framed(&[0x0f])),
        ("unmatched start group", framed(&[0x0b])),
        (
            "varint overflow",
            framed(&[[0x08].as_slice(), &[0xff; 11]].concat()),
        ),
        ("length past the end", framed(&[0x0a, 0x7f, 0x01])),
        ("field number 0", framed(&[0x00, 0x01])),
        ("truncated frame", frame(0, 100, &[0x0a, 0x00])),
        ("compressed flag, no encoding", frame(1, 2, &[0x0a, 0x00])),
        ("invalid compression flag", frame(7, 2, &[0x0a, 0x00])),
        ("declared 5 MiB", frame(0, 5 << 20, &[0x0a])),
        ("5 MiB of garbage", framed(&vec![0x0f; 5 << 20])),
        (
            "valid frame then garbage",
            [frame(0, 0, &[]), vec![0xde, 0xad]].concat(),
        ),
    ]
}

/// Sends `body` as a gRPC request to `path` and returns its status: from the headers of
/// a trailers-only answer, else from the trailers.
async fn raw_call(channel: &Channel, path: &str, body: Vec<u8>) -> Outcome {
    use tonic::client::GrpcService;
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let request = tonic::codegen::http::Request::builder()
        .method("POST")
        .uri(format!("http://localhost{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(tonic::body::Body::new(
            http_body_util::Full::new(Bytes::from(body)).map_err(|never| match never {}),
        ))
        .expect("request");
    let response = GrpcService::call(&mut channel, request)
        .await
        .map_err(|e| Status::unavailable(format!("transport: {e}")))?;
    if let Some(status) = Status::from_header_map(response.headers()) {
        return if status.code() == Code::Ok {
            Ok(())
        } else {
            Err(status)
        };
    }
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|e| Status::unavailable(format!("body: {e}")))?;
    match collected.trailers().and_then(Status::from_header_map) {
        Some(status) if status.code() == Code::Ok => Ok(()),
        Some(status) => Err(status),
        None => Err(Status::unknown("no grpc-status in the answer")),
    }
}

async fn raw_barrage(mount: &Channel, control: &Channel) {
    let targets: &[(&Channel, &[&str])] = &[
        (
            mount,
            &[
                "/fusestream.v1.Mount/AddEntry",
                "/fusestream.v1.Mount/AddEntries",
                "/fusestream.v1.Mount/RemoveEntry",
                "/fusestream.v1.Mount/RemoveEntries",
                "/fusestream.v1.Mount/UpdateUrl",
                "/fusestream.v1.Mount/UpdateUrls",
                "/fusestream.v1.Mount/ListEntries",
                "/fusestream.v1.Mount/WatchEvents",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            ],
        ),
        (
            control,
            &[
                "/fusestream.v1.Control/Stage",
                "/fusestream.v1.Control/StageMany",
                "/fusestream.v1.Control/ListRemote",
                "/fusestream.v1.Control/Unstage",
                "/fusestream.v1.Control/SetTempUrlKey",
                "/fusestream.v1.Control/Status",
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ],
        ),
    ];
    for (channel, paths) in targets {
        for path in *paths {
            for (kind, body) in malformed_bodies() {
                let what = format!("raw {path}: {kind}");
                let outcome = tokio::time::timeout(CALL_DEADLINE, raw_call(channel, path, body))
                    .await
                    .unwrap_or_else(|_| panic!("{what}: no answer within {CALL_DEADLINE:?}"));
                match outcome {
                    // Reflection (tonic-reflection, a client stream) ends its answer
                    // with OK at the first undecodable message instead of an error:
                    // it answers, nothing else is checked there.
                    Ok(()) if path.contains("Reflection") => {}
                    Ok(()) => panic!("{what}: accepted"),
                    Err(status) => {
                        check_refusal(&what, &status);
                        assert!(
                            matches!(
                                status.code(),
                                Code::InvalidArgument | Code::ResourceExhausted
                            ),
                            "{what}: {status:?}"
                        );
                    }
                }
            }
        }
    }
}

/// True while `pid` is a running (not zombie) process.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .next()?
                .to_string();
            Some(state != "Z" && state != "X")
        })
        .unwrap_or(false)
}

fn serving(socket: &std::path::Path) -> bool {
    grpcurl_ok(&[
        "-unix",
        "-plaintext",
        socket.to_str().expect("utf-8 path"),
        "grpc.health.v1.Health/Check",
    ])
    .contains("SERVING")
}

#[test]
fn hostile_requests_get_clean_refusals_and_the_daemons_keep_serving() {
    let fs = FuseStream::start();
    let valid = fs.input("valid.bin");
    fusestream_tests::random_file(&valid, 64 << 10);
    let valid_file = valid.to_str().expect("utf-8 path").to_string();
    let status = fs.ctl_ok(["status"]);
    let local_addr = status
        .lines()
        .find_map(|l| l.trim().strip_prefix("local files:"))
        .and_then(|a| a.trim().strip_prefix("served on"))
        .map(|a| a.trim().to_string())
        .unwrap_or_else(|| panic!("no local source address in status:\n{status}"));
    let (mountd_socket, control_socket) = (fs.mountd_socket.clone(), fs.control_socket.clone());

    let model = completes("the barrage", 1200, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mount_channel = unix_channel(&mountd_socket, CALL_DEADLINE);
            let control_channel = unix_channel(&control_socket, CALL_DEADLINE);
            let mut mount =
                MountClient::new(mount_channel.clone()).max_decoding_message_size(64 << 20);
            let mut control =
                ControlClient::new(control_channel.clone()).max_decoding_message_size(64 << 20);
            let mut model = Model::default();
            let mut rng = Prng::new(SEED);
            mount_barrage(&mut mount, &mut model, &mut rng).await;
            control_barrage(&mut control, &mut model, &mut rng, &local_addr, &valid_file).await;
            mount_barrage(&mut mount, &mut model, &mut rng).await;
            raw_barrage(&mount_channel, &control_channel).await;
            model
        })
    });

    // Both daemons survived and serve.
    assert!(
        alive(fs.mountd.pid()),
        "mount daemon died:\n{}",
        fs.mountd.logs()
    );
    assert!(
        alive(fs.control.pid()),
        "control plane died:\n{}",
        fs.control.logs()
    );
    assert!(serving(&fs.mountd_socket));
    assert!(serving(&fs.control_socket));
    for daemon in [&fs.mountd, &fs.control] {
        assert!(!daemon.logs().contains("panicked"), "{}", daemon.logs());
    }

    // Exactly the accepted requests' entries exist: refused ones left nothing behind.
    let listed: BTreeSet<String> = ls_names(&fs);
    assert_eq!(
        listed, model.staged,
        "entries differ from the accepted requests"
    );

    // A normal stage and read still work.
    let data = fusestream_tests::random_file(&fs.input("after.bin"), 300 << 10);
    let path = fs.ctl_ok([
        "stage",
        "--name",
        "after/after.bin",
        fs.input("after.bin").to_str().unwrap(),
    ]);
    let read = std::fs::read(path.trim()).expect("read the staged file");
    assert!(read == data, "staged file reads back wrong");
    let mut expected = model.staged.clone();
    expected.insert("after/after.bin".to_string());
    assert_eq!(ls_names(&fs), expected);
    // And `ls` shows those, one line each (names hold no control characters).
    let ls = fs.ctl_ok(["ls"]);
    let rows: Vec<&str> = ls.lines().skip(1).collect();
    assert_eq!(rows.len(), expected.len(), "{ls}");
    for name in &expected {
        assert!(
            rows.iter().any(|row| row.starts_with(name.as_str())),
            "{name:?} missing from ls:\n{ls}"
        );
    }
}

/// Entry names as the Mount API lists them (names may hold spaces and unicode, so not
/// parsed from `ls`'s table).
fn ls_names(fs: &FuseStream) -> BTreeSet<String> {
    let listing = grpcurl_ok(&[
        "-unix",
        "-plaintext",
        fs.mountd_socket.to_str().expect("utf-8 path"),
        "fusestream.v1.Mount/ListEntries",
    ]);
    let json: serde_json::Value = serde_json::from_str(if listing.trim().is_empty() {
        "{}"
    } else {
        &listing
    })
    .expect("grpcurl prints JSON");
    json["entries"]
        .as_array()
        .map(|entries| {
            entries
                .iter()
                .map(|e| e["name"].as_str().expect("name").to_string())
                .collect()
        })
        .unwrap_or_default()
}
