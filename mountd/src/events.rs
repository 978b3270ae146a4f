//! Events the mount daemon publishes to subscribers (the control plane) over
//! `WatchEvents`: a broadcast channel with a fixed capacity. Publishing never waits; a
//! subscriber that falls behind skips events and is told how many it missed, so a slow
//! or absent subscriber can never slow the daemon down.
//!
//! Each event belongs to the owner (uid) of the entry it is about: a subscriber sees only
//! its own entries' events (root sees all), like every listing of the Mount API.
//!
//! Handle events (opened/closed) come from the FUSE open and release callbacks, so they
//! must cost next to nothing: one small copy of the entry's name and a broadcast send, no
//! lock held. They carry the mount's absolute handle count and a change number rather than
//! a delta, because a subscriber that missed some (it lagged, or it reconnected) must be
//! right again with the next one it gets; the change number lets it drop events that two
//! FUSE threads published out of order.

use fusestream_shared::api::{self, mount_event::Event};
use tokio::sync::broadcast;

/// Events kept for a subscriber that is behind.
const CAPACITY: usize = 1024;

/// An event, with the uid of the owner of the entry it is about.
#[derive(Debug, Clone)]
pub struct Owned {
    pub owner: u32,
    pub event: Event,
}

#[derive(Debug)]
pub struct Events {
    tx: broadcast::Sender<Owned>,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }
}

impl Events {
    /// Publishes `event` about an entry of `owner` to whoever is subscribed. Never waits.
    pub fn publish(&self, owner: u32, event: Event) {
        let _ = self.tx.send(Owned { owner, event });
    }

    pub fn url_rejected(&self, name: &str, owner: u32, http_status: u16) {
        self.publish(
            owner,
            Event::UrlRejected(api::UrlRejected {
                name: name.to_string(),
                http_status: http_status.into(),
            }),
        );
    }

    /// A file handle of entry `name` was opened; `handles` is the mount's count after it.
    pub fn handle_opened(&self, name: &str, owner: u32, handles: HandleCount) {
        self.publish(owner, Event::HandleOpened(handles.change_of(name)));
    }

    /// A file handle of entry `name` was closed; `handles` is the mount's count after it.
    pub fn handle_closed(&self, name: &str, owner: u32, handles: HandleCount) {
        self.publish(owner, Event::HandleClosed(handles.change_of(name)));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Owned> {
        self.tx.subscribe()
    }
}

/// The mount's open file handles and how many opens and closes led there (wrapping), taken
/// together in one atomic step (see `fs::Fs`), so the pair is consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandleCount {
    pub open: u32,
    pub change: u32,
}

impl HandleCount {
    /// Unpacks the `fs` core's counter: changes in the high 32 bits, open handles in the low.
    pub fn unpack(packed: u64) -> HandleCount {
        HandleCount {
            open: packed as u32,
            change: (packed >> 32) as u32,
        }
    }

    fn change_of(self, name: &str) -> api::HandleChange {
        api::HandleChange {
            name: name.to_string(),
            open_handles: self.open,
            change: self.change,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handle_events_carry_the_absolute_count() {
        let events = Events::default();
        let mut rx = events.subscribe();
        events.handle_opened("a", 1000, HandleCount::unpack((7 << 32) | 2));
        events.handle_closed("a", 1000, HandleCount::unpack((8 << 32) | 1));
        let Ok(Owned {
            owner: 1000,
            event: Event::HandleOpened(opened),
        }) = rx.try_recv()
        else {
            panic!("expected an open event");
        };
        assert_eq!(
            (opened.name.as_str(), opened.open_handles, opened.change),
            ("a", 2, 7)
        );
        let Ok(Owned {
            event: Event::HandleClosed(closed),
            ..
        }) = rx.try_recv()
        else {
            panic!("expected a close event");
        };
        assert_eq!((closed.open_handles, closed.change), (1, 8));
    }

    #[test]
    fn publishing_with_no_subscriber_does_not_fail() {
        Events::default().handle_opened("a", 0, HandleCount { open: 1, change: 1 });
    }
}
