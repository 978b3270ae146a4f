//! Events the mount daemon publishes to subscribers (the control plane) over
//! `WatchEvents`: a broadcast channel with a fixed capacity. Publishing never waits; a
//! subscriber that falls behind skips events and is told how many it missed, so a slow
//! or absent subscriber can never slow the daemon down.

use fusestream_shared::api::{self, mount_event::Event};
use tokio::sync::broadcast;

/// Events kept for a subscriber that is behind.
const CAPACITY: usize = 1024;

#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Event>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Publishes `event` to whoever is subscribed. Never waits.
    pub fn publish(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    pub fn url_rejected(&self, name: &str, http_status: u16) {
        self.publish(Event::UrlRejected(api::UrlRejected {
            name: name.to_string(),
            http_status: http_status.into(),
        }));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}
