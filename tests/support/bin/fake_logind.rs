//! A stand-in for systemd-logind on a private D-Bus, for `tests/power.rs`.
//!
//! It owns `org.freedesktop.login1` and implements `Manager.Inhibit` as logind does: the
//! caller gets the write end of a pipe, and the inhibitor lasts until every copy of it is
//! closed, which shows here as EOF/HUP on the read end we keep. Each call and each release
//! is appended to the record file as one line, for the test to read:
//!
//! ```text
//! inhibit what=sleep:idle who=FuseStream mode=block why=...
//! released what=sleep:idle
//! ```
//!
//! Usage: `fake-logind ADDRESS RECORD [--hang SECS | --deny]`. `--hang` answers Inhibit
//! only after SECS (a logind stuck behind polkit); `--deny` refuses it as polkit would.
//! Prints `ready` on stdout once it owns the name.

use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::Duration;

use zbus::fdo;

#[derive(Clone, Copy)]
enum Mode {
    Answer,
    Hang(Duration),
    Deny,
}

struct Manager {
    record: PathBuf,
    mode: Mode,
}

fn record(path: &PathBuf, line: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open the record file");
    writeln!(file, "{line}").expect("write the record file");
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    async fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
    ) -> fdo::Result<zbus::zvariant::OwnedFd> {
        record(
            &self.record,
            &format!("inhibit what={what} who={who} mode={mode} why={why}"),
        );
        match self.mode {
            Mode::Answer => {}
            Mode::Hang(secs) => tokio::time::sleep(secs).await,
            Mode::Deny => {
                return Err(fdo::Error::AccessDenied(
                    "Permission denied by the test's polkit".into(),
                ));
            }
        }
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we pass.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(fdo::Error::Failed(
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: both fds were just created and are owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let path = self.record.clone();
        std::thread::spawn(move || {
            let mut poll = libc::pollfd {
                fd: read.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Nothing is ever written: the first event is the last writer closing (HUP).
            // SAFETY: one valid pollfd.
            while unsafe { libc::poll(&mut poll, 1, -1) } < 0 {}
            record(&path, &format!("released what={what}"));
        });
        Ok(write.into())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [address, record_path, rest @ ..] = args.as_slice() else {
        return Err("usage: fake-logind ADDRESS RECORD [--hang SECS | --deny]".into());
    };
    let mode = match rest {
        [] => Mode::Answer,
        [flag, secs] if flag == "--hang" => Mode::Hang(Duration::from_secs(secs.parse()?)),
        [flag] if flag == "--deny" => Mode::Deny,
        _ => return Err(format!("unknown arguments {rest:?}").into()),
    };
    let manager = Manager {
        record: PathBuf::from(record_path),
        mode,
    };
    let _connection = zbus::connection::Builder::address(address.as_str())?
        .name("org.freedesktop.login1")?
        .serve_at("/org/freedesktop/login1", manager)?
        .build()
        .await?;
    println!("ready");
    std::io::stdout().flush()?;
    std::future::pending::<()>().await;
    Ok(())
}
