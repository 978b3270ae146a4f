//! Linux backend: systemd-logind's `Manager.Inhibit` on the system bus.
//!
//! logind hands back one end of a FIFO; sleep stays inhibited until every copy of that fd
//! is closed, so the inhibition *is* the fd: dropping it releases, and a control plane that
//! dies releases too (the kernel closes it). `what = "sleep:idle"`, `mode = "block"`: the
//! machine neither suspends on idle nor on request while files are being streamed.
//!
//! The bus connection is made when first needed (the control plane may never have a file
//! open) and kept; a failed call drops it so the next attempt connects afresh (the system
//! bus may have restarted). zbus reads `DBUS_SYSTEM_BUS_ADDRESS`, which the tests use to
//! point it at a private bus with a fake logind.

use std::sync::{Arc, Mutex};

use zbus::Connection;
use zbus::zvariant::OwnedFd;

use super::{Acquiring, InhibitError, Inhibition, Inhibitor};

const WHAT: &str = "sleep:idle";
const WHO: &str = "FuseStream";
const WHY: &str = "Files of the FuseStream mount are open";
const MODE: &str = "block";

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_blocking = false
)]
trait Manager {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<OwnedFd>;
}

#[derive(Default)]
pub struct Logind {
    /// The system bus, once connected. Locked only to copy or replace the handle.
    connection: Arc<Mutex<Option<Connection>>>,
}

impl Inhibitor for Logind {
    fn acquire(&self) -> Acquiring {
        let cached = self.connection.clone();
        Box::pin(async move {
            let known = cached.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let connection = match known {
                Some(connection) => connection,
                None => Connection::system()
                    .await
                    .map_err(|e| InhibitError::Unreachable(format!("no system D-Bus: {e}")))?,
            };
            let result = inhibit(&connection).await;
            *cached.lock().unwrap_or_else(|e| e.into_inner()) =
                result.is_ok().then_some(connection);
            result
        })
    }
}

async fn inhibit(connection: &Connection) -> Result<Inhibition, InhibitError> {
    let manager = ManagerProxy::new(connection).await.map_err(error_of)?;
    let fd = manager
        .inhibit(WHAT, WHO, WHY, MODE)
        .await
        .map_err(error_of)?;
    Ok(Box::new(fd))
}

/// logind's (or polkit's, or the bus's) own words: they are what status shows.
fn error_of(error: zbus::Error) -> InhibitError {
    match error {
        zbus::Error::MethodError(name, message, _) => InhibitError::Refused(match message {
            Some(message) => format!("{name}: {message}"),
            None => name.to_string(),
        }),
        zbus::Error::FDO(fdo) => InhibitError::Refused(fdo.to_string()),
        other => InhibitError::Unreachable(format!("logind: {other}")),
    }
}
