//! macOS backend: `caffeinate -i -w <our pid>` runs while sleep is inhibited.
//!
//! `-i` prevents idle sleep, which is what a long read needs; `-w` makes caffeinate exit
//! by itself when the control plane does, so a crash never leaves the Mac awake. The
//! inhibition is the child process: dropping it kills and reaps it. A child process keeps
//! this small (no IOKit FFI); spawning it does not wait on anything but fork/exec.

use std::process::{Child, Command, Stdio};

use super::{Acquiring, InhibitError, Inhibition, Inhibitor};

pub struct Caffeinate;

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Inhibitor for Caffeinate {
    fn acquire(&self) -> Acquiring {
        Box::pin(async {
            let child = Command::new("/usr/bin/caffeinate")
                .arg("-i")
                .arg("-w")
                .arg(std::process::id().to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| InhibitError::Unreachable(format!("caffeinate: {e}")))?;
            Ok(Box::new(Running(child)) as Inhibition)
        })
    }
}
