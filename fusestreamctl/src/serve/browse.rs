//! `Control.ListRemote`: browsing a remote for `fusestreamctl ls REMOTE:...`. The control
//! plane holds the credentials, so the CLI asks it; the remote's listing pages are passed
//! on as they come (`sources::listing::pages`), one response message each, so neither
//! side ever holds more than a page.

use std::pin::Pin;

use fusestream_shared::api::{self, remote_item::Kind as ApiKind};
use fusestream_shared::names;
use futures_util::{Stream, StreamExt};
use tonic::Status;

use crate::sources::listing::{self, Item, Kind, Location};
use crate::sources::{self, Remotes, SourceKind};

pub type PageStream =
    Pin<Box<dyn Stream<Item = Result<api::ListRemoteResponse, Status>> + Send + 'static>>;

/// The pages of `request.location` (`REMOTE:[container[/prefix/]]`).
pub fn list(remotes: &Remotes, request: api::ListRemoteRequest) -> Result<PageStream, Status> {
    let SourceKind::Remote { remote, path } = sources::classify(&request.location)? else {
        return Err(Status::invalid_argument(format!(
            "{:?} is not REMOTE:[container[/prefix/]] (a remote of the config)",
            fusestream_shared::redact::url(&request.location)
        )));
    };
    let location = Location::parse(path, request.recursive);
    let pages = listing::pages(remotes.get(remote)?, location.clone());
    Ok(Box::pin(pages.map(move |page| {
        let items = page?
            .items
            .into_iter()
            .map(|item| remote_item(&location, item))
            .collect();
        Ok(api::ListRemoteResponse { items })
    })))
}

/// A listed item as the API shows it: its full name under the remote, and why staging it
/// would fail if it would (its name is not one the mount allows).
fn remote_item(location: &Location, item: Item) -> api::RemoteItem {
    let (kind, name, unstageable) = match (&location.container, item.kind) {
        (_, Kind::Container) | (None, _) => (ApiKind::Container, item.name, String::new()),
        (Some(container), Kind::Directory) => (
            ApiKind::Directory,
            format!("{container}/{}", item.name),
            String::new(),
        ),
        (Some(container), Kind::Object) => {
            let unstageable = object_name_problem(&item.name).unwrap_or_default();
            (
                ApiKind::Object,
                format!("{container}/{}", item.name),
                unstageable,
            )
        }
    };
    api::RemoteItem {
        name,
        kind: kind.into(),
        size: item.size,
        last_modified_unix: item.last_modified_unix,
        etag: item.etag,
        unstageable,
    }
}

/// Why an object named `key` can not be staged under its own path, if it can not (a
/// component longer than the mount allows, an empty or dot component, a control
/// character).
pub fn object_name_problem(key: &str) -> Option<String> {
    names::validate(key)
        .err()
        .map(|e| format!("its name can not be a path in the mount: {e}"))
}
