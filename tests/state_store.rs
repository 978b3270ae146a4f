//! The control plane's state store, end to end with the real daemons: `kill -9` of
//! `fusestreamctl serve` while thousands of stages from concurrent clients are in flight
//! loses no acknowledged entry and leaves no half one (what the mount shows is what the
//! store holds, and every entry reads its source's bytes), and the JSON state file of
//! earlier versions is migrated on a real restart. The same for a `stage -r` of a large
//! folder killed in the middle: the tree in the mount is what the store holds, every file
//! of it reads right, and `stage -r --replace` then completes it.
//!
//! The store is read here directly (redb, with the control plane stopped: it holds the
//! file's lock while it runs), by the layout `fusestreamctl/src/serve/state.rs` defines.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use fusestream_shared::api::{self, control_client::ControlClient};
use fusestream_shared::grpc::unix_channel;
use fusestream_tests::{FuseStream, Prng, completes, names_in};

/// Stages asked for in all, by this many clients at once.
const STAGES: usize = 2000;
const CLIENTS: usize = 8;
/// The control plane is killed once this many were acknowledged.
const KILL_AFTER: usize = 600;
const RECONCILED: &str = "reconciled with the mount daemon";

/// The names of the entries in the store in `state_dir`, and how many intents it holds.
fn stored(state_dir: &std::path::Path) -> (BTreeSet<String>, usize) {
    use redb::{ReadableTable, ReadableTableMetadata, TableDefinition};
    const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
    const INTENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("intents");
    let db = redb::Database::open(state_dir.join("control-state.redb")).unwrap();
    let txn = db.begin_read().unwrap();
    let names = txn
        .open_table(ENTRIES)
        .unwrap()
        .iter()
        .unwrap()
        .map(|row| row.unwrap().0.value().to_string())
        .collect();
    let intents = txn.open_table(INTENTS).unwrap().len().unwrap() as usize;
    (names, intents)
}

/// `count` small files with distinct contents, `NNNN.bin` under `dir`.
fn make_sources(dir: &std::path::Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    let mut rng = Prng::new(13);
    (0..count)
        .map(|i| {
            let path = dir.join(format!("{i:04}.bin"));
            let len = 1 + rng.below(4096) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            std::fs::write(&path, data).unwrap();
            path
        })
        .collect()
}

/// The names under `crash/` in the mount, each checked to read its source's bytes.
fn readable_entries(fs: &FuseStream, sources: &std::path::Path) -> BTreeSet<String> {
    let dir = fs.mountpoint.join("crash");
    let names: BTreeSet<String> = names_in(&dir).into_iter().collect();
    for name in &names {
        let got = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("crash/{name} in the mount does not read: {e}"));
        assert!(
            got == std::fs::read(sources.join(name)).unwrap(),
            "crash/{name} reads other bytes than its source"
        );
    }
    names
}

/// Waits until the control plane has reconciled with the mount daemon.
fn wait_for_reconcile(fs: &FuseStream) {
    fs.wait_for_control_log(RECONCILED);
}

#[test]
fn killing_the_control_plane_mid_stage_loses_no_acknowledged_entry_and_leaves_no_half_one() {
    let mut fs = FuseStream::start();
    let sources_dir = fs.input("crash");
    let sources = make_sources(&sources_dir, STAGES);

    // Clients stage over the Control API, each its share in turn; every acknowledged stage
    // is reported on `acks`. Once the control plane is gone, each client stops.
    let (acks_tx, acks) = mpsc::channel::<String>();
    let socket = fs.control_socket.clone();
    let clients = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let channel = unix_channel(&socket, Duration::from_secs(30));
            let mut tasks = Vec::new();
            for client in 0..CLIENTS {
                let mut control = ControlClient::new(channel.clone());
                let mine: Vec<PathBuf> = sources
                    .iter()
                    .skip(client)
                    .step_by(CLIENTS)
                    .cloned()
                    .collect();
                let acks = acks_tx.clone();
                tasks.push(tokio::spawn(async move {
                    for source in mine {
                        let name =
                            format!("crash/{}", source.file_name().unwrap().to_str().unwrap());
                        let request = api::StageRequest {
                            source: source.to_str().unwrap().to_string(),
                            name: name.clone(),
                            replace: false,
                            share: 0,
                        };
                        match control.stage(request).await {
                            Ok(_) => {
                                let _ = acks.send(name);
                            }
                            Err(_) => return,
                        }
                    }
                }));
            }
            drop(acks_tx);
            for task in tasks {
                task.await.unwrap();
            }
        });
    });
    let mut acknowledged = BTreeSet::new();
    while acknowledged.len() < KILL_AFTER {
        let name = acks
            .recv_timeout(Duration::from_secs(120))
            .expect("stages are acknowledged");
        acknowledged.insert(name);
    }
    fs.control.stop_with(libc::SIGKILL);
    // Stages answered in the moment before the kill count too.
    acknowledged.extend(acks.iter());
    completes("the clients stop", 120, move || clients.join().unwrap());
    assert!(
        acknowledged.len() < STAGES,
        "the kill came after every stage: the test proves nothing"
    );

    // Restarted on the same state and the same mount daemon: every acknowledged entry is
    // there, and everything there reads right (an entry the store did not know would keep
    // the dead control plane's URL, and fail).
    fs.restart_control(libc::SIGKILL);
    wait_for_reconcile(&fs);
    let after_crash = readable_entries(&fs, &sources_dir);
    let lost: Vec<&String> = acknowledged
        .iter()
        .filter(|n| !after_crash.contains(n.trim_start_matches("crash/")))
        .collect();
    assert!(lost.is_empty(), "acknowledged, then lost: {lost:?}");

    // The store holds exactly what the mount shows, and no stage left unsettled.
    fs.control.stop_with(libc::SIGTERM);
    let (names, intents) = stored(&fs.dir.path().join("state"));
    let in_mount: BTreeSet<String> = after_crash.iter().map(|n| format!("crash/{n}")).collect();
    assert_eq!(names, in_mount, "the store and the mount disagree");
    assert_eq!(intents, 0, "stages left unsettled");
}

#[test]
fn the_json_state_file_of_earlier_versions_is_migrated_on_restart() {
    let mut fs = FuseStream::start();
    let source = fs.input("old.bin");
    let data = fusestream_tests::random_file(&source, 300_000);
    fs.ctl_ok(["stage", source.to_str().unwrap()]);
    fs.control.stop_with(libc::SIGTERM);

    // What that version saved: the local file by canonical path, before identities were
    // saved (no mount daemon recorded, so the one running is taken as the same).
    let state = fs.dir.path().join("state");
    std::fs::remove_file(state.join("control-state.redb")).unwrap();
    let canonical = source.canonicalize().unwrap();
    let legacy = serde_json::json!({
        "entries": {"old.bin": {"kind": "local", "path": canonical}}
    });
    std::fs::write(state.join("control-state.json"), legacy.to_string()).unwrap();

    fs.restart_control(libc::SIGTERM);
    wait_for_reconcile(&fs);
    assert!(!state.join("control-state.json").exists());
    assert!(state.join("control-state.json.migrated").exists());
    // Taken up: its URL was renewed by this control plane (the old one's key is gone).
    assert!(std::fs::read(fs.mountpoint.join("old.bin")).unwrap() == data);
    // And saved in the store.
    fs.control.stop_with(libc::SIGTERM);
    let (names, _) = stored(&state);
    assert_eq!(names, BTreeSet::from(["old.bin".to_string()]));
}

#[test]
fn killing_the_control_plane_mid_stage_r_leaves_a_tree_that_reads_right_and_can_be_completed() {
    const FILES: usize = 8000;
    let mut fs = FuseStream::start();
    let sources_dir = fs.input("crash");
    make_sources(&sources_dir, FILES);
    let stage = std::process::Command::new(fusestream_tests::bin("fusestreamctl"))
        .env("FUSESTREAM_SOCKET", &fs.control_socket)
        .args(["stage", "-r", sources_dir.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed as soon as the first batch is in the mount (polled: the moment matters, not
    // how long it takes to come).
    let in_mount =
        |fs: &FuseStream| std::fs::read_dir(fs.mountpoint.join("crash")).map_or(0, |d| d.count());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while in_mount(&fs) == 0 {
        assert!(std::time::Instant::now() < deadline, "nothing was staged");
        std::thread::sleep(Duration::from_millis(2));
    }
    fs.control.stop_with(libc::SIGKILL);
    let status = completes("stage -r ends", 120, move || {
        stage.wait_with_output().unwrap()
    });
    assert!(
        !status.status.success(),
        "stage -r reports the lost control plane"
    );

    fs.restart_control(libc::SIGKILL);
    wait_for_reconcile(&fs);
    let after_crash = readable_entries(&fs, &sources_dir);
    assert!(
        after_crash.len() < FILES,
        "the kill came after the whole folder: the test proves nothing"
    );
    fs.control.stop_with(libc::SIGTERM);
    let (names, intents) = stored(&fs.dir.path().join("state"));
    let shown: BTreeSet<String> = after_crash.iter().map(|n| format!("crash/{n}")).collect();
    assert_eq!(names, shown, "the store and the mount disagree");
    assert_eq!(intents, 0, "stages left unsettled");

    // Running it again completes the tree, every file with its bytes.
    fs.restart_control(libc::SIGTERM);
    wait_for_reconcile(&fs);
    fs.ctl_ok(["stage", "-r", "--replace", sources_dir.to_str().unwrap()]);
    assert_eq!(readable_entries(&fs, &sources_dir).len(), FILES);
}
