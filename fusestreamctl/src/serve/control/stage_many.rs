//! `Control.StageMany`: many sources in one call (`stage SOURCE...`, `stage -r FOLDER`,
//! `stage -r REMOTE:container/prefix/`), answered per entry as it goes.
//!
//! The work is a pipeline, bounded at every stage so that a folder or prefix of any size
//! costs a constant amount of memory:
//! - expanding: each item becomes candidates (name in the mount, source). A local folder
//!   is walked on a blocking thread that hands its findings over a small channel, never
//!   following a symlink (so a symlink loop can not make it go round) and skipping what is
//!   not a regular file, with the reason; a remote prefix is listed page by page
//!   (`sources::listing`). The control plane does this itself: it runs as the user, so it
//!   sees only what the user may see, and it holds the credentials.
//! - resolving: [`CONCURRENT_RESOLVES`] sources at a time (answered in order), each as `Stage` resolves
//!   one (`ControlService::resolve`): local files are opened with the user's rights,
//!   remote objects are asked for their version and signed.
//! - staging: resolved entries go, `MAX_ADD_ENTRIES` at a time, through
//!   `ControlService::stage_all`, the path of every stage (intents saved, the mount
//!   daemon asked in `Mount.AddEntries` batches, the staged ones tracked in one commit);
//!   each batch's outcomes go to the caller as one response message, after its commit.
//!
//! No lock is held across any of it. What was staged stays staged when others fail; if
//! the caller goes away, the pipeline stops at its next answer, having staged (and
//! tracked) what it had sent.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use fusestream_shared::api::{self, stage_result::Outcome};
use fusestream_shared::limits::{MAX_ADD_ENTRIES, MAX_STAGE_ITEMS};
use fusestream_shared::{names, redact};
use futures_util::stream::{self, BoxStream};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};
use tracing::Instrument;

use super::{ControlService, ToStage};
use crate::serve::browse::object_name_problem;
use crate::sources::listing::{self, Kind, Location};
use crate::sources::{self, SourceKind};

/// Sources resolved at the same time.
const CONCURRENT_RESOLVES: usize = 32;

/// Candidates a folder walk may have found ahead of the resolvers.
const WALK_AHEAD: usize = 256;

pub type ResultStream =
    Pin<Box<dyn Stream<Item = Result<api::StageManyResponse, Status>> + Send + 'static>>;

/// Checks `request` and starts staging it; the outcomes follow on the returned stream.
pub fn start(
    service: Arc<ControlService>,
    request: api::StageManyRequest,
) -> Result<ResultStream, Status> {
    if request.items.len() > MAX_STAGE_ITEMS {
        return Err(Status::invalid_argument(format!(
            "{} items in one call; at most {MAX_STAGE_ITEMS}",
            request.items.len()
        )));
    }
    for item in &request.items {
        api::Sharing::try_from(item.share).map_err(|_| {
            Status::invalid_argument(format!("share {} is not a known sharing", item.share))
        })?;
    }
    let (tx, rx) = mpsc::channel(4);
    // In the call's span: the mount daemon's AddEntries calls are part of its trace.
    let staging = async move {
        if let Err(status) = service.stage_many(request, &tx).await {
            let _ = tx.send(Err(status)).await;
        }
    };
    tokio::spawn(staging.instrument(tracing::Span::current()));
    Ok(Box::pin(ReceiverStream::new(rx)))
}

/// What expanding an item finds.
enum Found {
    Stage(Candidate),
    /// Decided already: skipped, or failed.
    Done(api::StageResult),
}

/// A source to stage, and how.
struct Candidate {
    /// As `Stage` takes it (an absolute path, a URL, REMOTE:path).
    source: String,
    name: String,
    /// Found in a folder or under a prefix: an unreadable file or an impossible name is
    /// skipped with the reason, rather than failed.
    in_folder: bool,
    replace: bool,
    share: api::Sharing,
}

/// A candidate, resolved: ready for the mount daemon.
struct Ready {
    candidate: Candidate,
    resolved: sources::Resolved,
}

enum Resolution {
    Ready(Ready),
    Done(api::StageResult),
}

fn outcome(source: &str, name: &str, outcome: Outcome) -> api::StageResult {
    api::StageResult {
        source: redact::url(source),
        name: name.to_string(),
        outcome: Some(outcome),
    }
}

fn skipped(source: &str, name: &str, reason: impl Into<String>) -> api::StageResult {
    outcome(source, name, Outcome::Skipped(reason.into()))
}

fn failed(source: &str, name: &str, status: &Status) -> api::StageResult {
    outcome(
        source,
        name,
        Outcome::Failed(api::EntryFailure {
            code: status.code() as i32,
            message: status.message().to_string(),
        }),
    )
}

/// Sends the outcomes gathered so far; false if the caller is gone.
async fn send(
    tx: &mpsc::Sender<Result<api::StageManyResponse, Status>>,
    results: &mut Vec<api::StageResult>,
) -> bool {
    if results.is_empty() {
        return true;
    }
    let results = std::mem::take(results);
    tx.send(Ok(api::StageManyResponse { results }))
        .await
        .is_ok()
}

impl ControlService {
    /// Runs the pipeline of the module note for `request`, sending outcomes to `tx`. An
    /// error ends the call (the mount daemon or the state store is unreachable); entry
    /// errors do not.
    async fn stage_many(
        self: Arc<Self>,
        request: api::StageManyRequest,
        tx: &mpsc::Sender<Result<api::StageManyResponse, Status>>,
    ) -> Result<(), Status> {
        let recursive = request.recursive;
        let (expander, resolver) = (self.clone(), self.clone());
        // Boxed: the combinators' own types, held across awaits, trip the compiler's
        // check that this future is Send.
        let mut resolutions: BoxStream<'static, Resolution> = stream::iter(request.items)
            .flat_map(move |item| expander.expand(item, recursive))
            .map(move |found| {
                let resolver = resolver.clone();
                async move { resolver.resolution(found).await }
            })
            .buffered(CONCURRENT_RESOLVES)
            .boxed();
        let mut batch = Vec::new();
        let mut results = Vec::new();
        while let Some(resolution) = resolutions.next().await {
            match resolution {
                Resolution::Done(result) => results.push(result),
                Resolution::Ready(ready) => batch.push(ready),
            }
            if batch.len() >= MAX_ADD_ENTRIES {
                results.extend(self.add_batch(std::mem::take(&mut batch)).await?);
            }
            if results.len() >= MAX_ADD_ENTRIES && !send(tx, &mut results).await {
                return Ok(());
            }
        }
        results.extend(self.add_batch(batch).await?);
        send(tx, &mut results).await;
        Ok(())
    }

    /// What `item` stands for: itself, or with `recursive` the files of a local folder or
    /// the objects under a remote prefix.
    fn expand(&self, item: api::StageRequest, recursive: bool) -> BoxStream<'static, Found> {
        // Checked by `start`.
        let share = api::Sharing::try_from(item.share).unwrap_or(api::Sharing::Private);
        let source = item.source;
        let fail =
            |status: Status| stream::iter([Found::Done(failed(&source, "", &status))]).boxed();
        let kind = match sources::classify(&source) {
            Ok(kind) => kind,
            Err(e) => return fail(e.into()),
        };
        let given = (!item.name.is_empty()).then_some(item.name);
        if let (true, SourceKind::Remote { remote, path }) = (recursive, &kind) {
            let location = Location::parse(path, true);
            return self.expand_prefix(remote, location, given, item.replace, share);
        }
        let name = match given {
            Some(name) => name,
            None => match sources::default_name(&kind) {
                Ok(name) => name,
                Err(e) => return fail(e.into()),
            },
        };
        let candidate = Candidate {
            source: source.clone(),
            name,
            in_folder: false,
            replace: item.replace,
            share,
        };
        match kind {
            SourceKind::Local(_) if recursive => walk_folder(candidate),
            _ => stream::iter([Found::Stage(candidate)]).boxed(),
        }
    }

    /// The objects under `location` of remote `remote_name`, named `top/` + their path
    /// under the prefix (`top`: given, else the prefix's last component or the container).
    /// A prefix with no objects under it fails with NOT_FOUND.
    fn expand_prefix(
        &self,
        remote_name: &str,
        location: Location,
        top: Option<String>,
        replace: bool,
        share: api::Sharing,
    ) -> BoxStream<'static, Found> {
        let shown = format!("{remote_name}:{}", location.shown());
        let fail =
            |status: Status| stream::iter([Found::Done(failed(&shown, "", &status))]).boxed();
        let remote = match self.remotes.get(remote_name) {
            Ok(remote) => remote,
            Err(e) => return fail(e.into()),
        };
        let Some(container) = location.container.clone() else {
            return fail(Status::invalid_argument(format!(
                "{shown}: name a container (or bucket) to stage: {remote_name}:container[/prefix/]"
            )));
        };
        let prefix = location.prefix.clone();
        let top = top.unwrap_or_else(|| {
            let folder = prefix.trim_end_matches('/');
            folder
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or(&container)
                .to_string()
        });
        let remote_name = remote_name.to_string();
        let prefix_shown = shown.clone();
        let found = Arc::new(AtomicUsize::new(0));
        let counted = found.clone();
        let objects = listing::pages(remote, location).flat_map(move |page| {
            let page = match page {
                Ok(page) => page,
                Err(e) => return stream::iter(vec![Found::Done(failed(&shown, "", &e.into()))]),
            };
            let found: Vec<Found> = page
                .items
                .into_iter()
                .filter(|item| item.kind == Kind::Object)
                .map(|item| {
                    counted.fetch_add(1, Ordering::Relaxed);
                    let source = format!("{remote_name}:{container}/{}", item.name);
                    let relative = item.name.strip_prefix(&prefix).unwrap_or(&item.name);
                    let name = format!("{top}/{relative}");
                    if item.name.ends_with('/') {
                        return Found::Done(skipped(
                            &source,
                            &name,
                            "a directory marker (its name ends in '/')",
                        ));
                    }
                    if let Some(problem) = object_name_problem(relative) {
                        return Found::Done(skipped(&source, &name, problem));
                    }
                    Found::Stage(Candidate {
                        source,
                        name,
                        in_folder: true,
                        replace,
                        share,
                    })
                })
                .collect();
            stream::iter(found)
        });
        let none_found = stream::once(async move {
            (found.load(Ordering::Relaxed) == 0).then(|| {
                let status = Status::not_found(format!("{prefix_shown}: no objects under it"));
                Found::Done(failed(&prefix_shown, "", &status))
            })
        })
        .filter_map(std::future::ready);
        objects.chain(none_found).boxed()
    }

    /// Resolves a candidate as `Stage` would, or says why not.
    async fn resolution(&self, found: Found) -> Resolution {
        let candidate = match found {
            Found::Done(result) => return Resolution::Done(result),
            Found::Stage(candidate) => candidate,
        };
        let (source, name) = (&candidate.source, &candidate.name);
        if let Err(e) = names::validate(name) {
            let reason = format!("invalid name {}: {e}", names::shown(name));
            return Resolution::Done(if candidate.in_folder {
                skipped(source, name, reason)
            } else {
                failed(source, name, &Status::invalid_argument(reason))
            });
        }
        match self.resolve(source).await {
            Ok(resolved) => Resolution::Ready(Ready {
                candidate,
                resolved,
            }),
            Err(status) if candidate.in_folder && status.code() == Code::PermissionDenied => {
                Resolution::Done(skipped(source, name, status.message()))
            }
            Err(status) => Resolution::Done(failed(source, name, &status)),
        }
    }

    /// Stages `batch` (see `ControlService::stage_all`); an outcome per entry. Err if no
    /// entry could be staged for want of the mount daemon or the state store (every one
    /// failed UNAVAILABLE): the next batch would fail the same.
    async fn add_batch(&self, batch: Vec<Ready>) -> Result<Vec<api::StageResult>, Status> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let shown: Vec<(String, String)> = batch
            .iter()
            .map(|r| (r.resolved.display.clone(), r.candidate.name.clone()))
            .collect();
        let batch = batch
            .into_iter()
            .map(
                |Ready {
                     candidate,
                     resolved,
                 }| ToStage {
                    name: candidate.name,
                    resolved,
                    share: candidate.share,
                    replace: candidate.replace,
                },
            )
            .collect();
        let answers = self.stage_all(batch).await;
        if let Some(Err(status)) = answers.first()
            && answers
                .iter()
                .all(|a| a.as_ref().is_err_and(|s| s.code() == Code::Unavailable))
        {
            return Err(status.clone());
        }
        let staged = answers.iter().filter(|a| a.is_ok()).count();
        tracing::info!(staged, failed = answers.len() - staged, "staged a batch");
        Ok(shown
            .iter()
            .zip(answers)
            .map(|((display, name), answer)| match answer {
                Ok(api::AddEntryResponse { entry: Some(info) }) => {
                    outcome(display, name, Outcome::Staged(info))
                }
                Ok(api::AddEntryResponse { entry: None }) => failed(
                    display,
                    name,
                    &Status::internal("the mount daemon gave no entry"),
                ),
                Err(status) => failed(display, name, &status),
            })
            .collect())
    }
}

/// `local`, or if it is a folder the regular files under it (named `local.name/` + their
/// path under it), found by a walk on a blocking thread; what is not a regular file is
/// skipped, with the reason.
fn walk_folder(local: Candidate) -> BoxStream<'static, Found> {
    let (tx, rx) = mpsc::channel(WALK_AHEAD);
    tokio::task::spawn_blocking(move || {
        let top = PathBuf::from(&local.source);
        if !std::fs::metadata(&top).is_ok_and(|m| m.is_dir()) {
            let _ = tx.blocking_send(Found::Stage(local));
            return;
        }
        let (replace, share) = (local.replace, local.share);
        let mut folders = vec![(top, local.name)];
        while let Some((folder, name)) = folders.pop() {
            let shown = folder.display().to_string();
            let entries = match std::fs::read_dir(&folder) {
                Ok(entries) => entries,
                Err(e) => {
                    let reason = format!("folder not readable: {e}");
                    if tx
                        .blocking_send(Found::Done(skipped(&shown, &name, reason)))
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
            };
            for entry in entries {
                let found = match entry {
                    Ok(entry) => examine(&entry, &name, &mut folders, replace, share),
                    Err(e) => Some(Found::Done(skipped(
                        &shown,
                        &name,
                        format!("folder not readable: {e}"),
                    ))),
                };
                // The call ended: stop walking.
                if let Some(found) = found
                    && tx.blocking_send(found).is_err()
                {
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx).boxed()
}

/// What a folder `entry` (in the folder named `parent` in the mount) is to staging: a
/// candidate, a skip, or (None) a folder to walk, pushed onto `folders`.
fn examine(
    entry: &std::fs::DirEntry,
    parent: &str,
    folders: &mut Vec<(PathBuf, String)>,
    replace: bool,
    share: api::Sharing,
) -> Option<Found> {
    let path = entry.path();
    let shown = path.display().to_string();
    let Some(file_name) = entry.file_name().to_str().map(str::to_string) else {
        return Some(Found::Done(skipped(&shown, "", "its name is not UTF-8")));
    };
    let name = format!("{parent}/{file_name}");
    // The entry's own type: a symlink is never followed.
    let file_type = match entry.file_type() {
        Ok(file_type) => file_type,
        Err(e) => return Some(Found::Done(skipped(&shown, &name, e.to_string()))),
    };
    let reason = if file_type.is_symlink() {
        "a symbolic link (not followed)"
    } else if file_type.is_dir() && name.len() > names::PATH_MAX {
        "a folder whose files' names would be longer than the mount allows"
    } else if file_type.is_dir() {
        folders.push((path, name));
        return None;
    } else if file_type.is_file() {
        return Some(Found::Stage(Candidate {
            source: shown,
            name,
            in_folder: true,
            replace,
            share,
        }));
    } else if file_type.is_fifo() {
        "a FIFO (named pipe), not a regular file"
    } else if file_type.is_socket() {
        "a socket, not a regular file"
    } else if file_type.is_block_device() || file_type.is_char_device() {
        "a device, not a regular file"
    } else {
        "not a regular file"
    };
    Some(Found::Done(skipped(&shown, &name, reason)))
}
