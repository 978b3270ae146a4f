//! The commands that stream many answers: `stage` (one `StageMany` call, answered per
//! entry) and `ls REMOTE:` (one `ListRemote` call, answered per page). Both print as the
//! answers come, so a folder or bucket of any size never piles up in the CLI either.
//!
//! `stage` prints each staged entry's path on stdout and each skip and failure as a line
//! on stderr; with more than one source or `-r`, a summary "N staged, M skipped, K
//! failed" ends it (on stderr), and the exit code is 1 if any failed. On a terminal, a
//! progress line on stderr shows the counts while a long run goes on. `--output json`
//! prints one JSON object per entry instead, then one with the counts.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use fusestream_shared::api::{self, remote_item::Kind, stage_result::Outcome};
use fusestream_shared::limits::MAX_STAGE_ITEMS;
use serde_json::json;

use super::{Client, Failure, code_name, printable};
use crate::sources::listing::format_timestamp;

/// How `stage` went so far.
#[derive(Default)]
struct Tally {
    staged: u64,
    skipped: u64,
    failed: u64,
}

impl Tally {
    fn summary(&self) -> String {
        format!(
            "{} staged, {} skipped, {} failed",
            self.staged, self.skipped, self.failed
        )
    }
}

/// The progress line on a terminal's stderr: redrawn at most every 200 ms, cleared before
/// any other line is printed there.
struct Progress {
    shown: bool,
    enabled: bool,
    last: Option<Instant>,
}

impl Progress {
    fn new(enabled: bool) -> Progress {
        Progress {
            shown: false,
            enabled: enabled && std::io::stderr().is_terminal(),
            last: None,
        }
    }

    fn update(&mut self, tally: &Tally) {
        if !self.enabled
            || self
                .last
                .is_some_and(|t| t.elapsed() < Duration::from_millis(200))
        {
            return;
        }
        self.last = Some(Instant::now());
        self.shown = true;
        let mut err = std::io::stderr();
        let _ = write!(err, "\r\x1b[K{}", tally.summary());
        let _ = err.flush();
    }

    fn clear(&mut self) {
        if std::mem::take(&mut self.shown) {
            eprint!("\r\x1b[K");
        }
    }
}

impl Client {
    /// Stages `sources` (with `recursive`, folders and prefixes too) in `StageMany` calls.
    pub async fn stage(
        &self,
        sources: &[String],
        name: Option<String>,
        options: StageOptions,
    ) -> Result<(), Failure> {
        if name.is_some() && sources.len() != 1 {
            return Err(Failure::Usage("--name needs exactly one source".into()));
        }
        let items = sources
            .iter()
            .map(|source| {
                Ok(api::StageRequest {
                    source: super::absolute_source(source)?,
                    name: name.clone().unwrap_or_default(),
                    replace: options.replace,
                    share: options.share.into(),
                })
            })
            .collect::<Result<Vec<_>, Failure>>()?;
        let summarize = options.recursive || items.len() > 1;
        let mut tally = Tally::default();
        let mut progress = Progress::new(!options.json);
        let mut only_failure = None;
        for chunk in items.chunks(MAX_STAGE_ITEMS) {
            let request = api::StageManyRequest {
                items: chunk.to_vec(),
                recursive: options.recursive,
            };
            let mut answers = self
                .control
                .clone()
                .stage_many(request)
                .await
                .map_err(|s| self.failure("stage", s))?
                .into_inner();
            loop {
                let message = match answers.message().await {
                    Ok(Some(message)) => message,
                    Ok(None) => break,
                    Err(status) => {
                        progress.clear();
                        return Err(self.failure("stage", status));
                    }
                };
                for result in message.results {
                    progress.clear();
                    let failure = report(&result, &mut tally, options.json);
                    match failure {
                        Some(failure) if !summarize && !options.json => {
                            only_failure = Some(failure)
                        }
                        Some(failure) => {
                            eprintln!("fusestreamctl: {failure}");
                        }
                        None => {}
                    }
                    progress.update(&tally);
                }
            }
        }
        progress.clear();
        if options.json {
            println!(
                "{}",
                json!({"staged": tally.staged, "skipped": tally.skipped, "failed": tally.failed})
            );
        }
        if let Some(failure) = only_failure {
            return Err(Failure::Request(failure));
        }
        match (summarize, tally.failed) {
            (_, 1..) => Err(Failure::Request(tally.summary())),
            (true, 0) if !options.json => {
                eprintln!("{}", tally.summary());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Lists `location` (`REMOTE:[container[/prefix/]]`), page by page.
    pub async fn ls_remote(
        &self,
        location: &str,
        recursive: bool,
        json: bool,
    ) -> Result<(), Failure> {
        let request = api::ListRemoteRequest {
            location: location.to_string(),
            recursive,
        };
        let context = format!("ls {location}");
        let mut pages = self
            .control
            .clone()
            .list_remote(request)
            .await
            .map_err(|s| self.failure(&context, s))?
            .into_inner();
        if !json {
            println!("{:>15}  {:19}  NAME", "SIZE", "MODIFIED");
        }
        while let Some(page) = pages
            .message()
            .await
            .map_err(|s| self.failure(&context, s))?
        {
            for item in page.items {
                println!("{}", item_line(&item, json));
            }
        }
        Ok(())
    }
}

/// What `stage` takes besides its sources and name.
#[derive(Debug, Clone, Copy)]
pub struct StageOptions {
    pub replace: bool,
    pub share: api::Sharing,
    pub recursive: bool,
    pub json: bool,
}

/// Prints one outcome and counts it; a failure's message is returned instead of printed.
fn report(result: &api::StageResult, tally: &mut Tally, json: bool) -> Option<String> {
    let source = printable(&result.source);
    let (status, failure) = match &result.outcome {
        Some(Outcome::Staged(entry)) => {
            tally.staged += 1;
            if json {
                println!(
                    "{}",
                    json!({"status": "staged", "source": result.source, "name": result.name,
                           "path": entry.path, "size": entry.size})
                );
            } else {
                println!("{}", printable(&entry.path));
            }
            return None;
        }
        Some(Outcome::Skipped(reason)) => {
            tally.skipped += 1;
            if json {
                println!(
                    "{}",
                    json!({"status": "skipped", "source": result.source, "name": result.name,
                           "reason": reason})
                );
            } else {
                eprintln!("fusestreamctl: skipped {source}: {}", printable(reason));
            }
            return None;
        }
        Some(Outcome::Failed(failure)) => ("failed", failure.clone()),
        None => (
            "failed",
            api::EntryFailure {
                code: tonic::Code::Unknown as i32,
                message: "no outcome".into(),
            },
        ),
    };
    tally.failed += 1;
    let code = code_name(tonic::Code::from(failure.code));
    if json {
        println!(
            "{}",
            json!({"status": status, "source": result.source, "name": result.name,
                   "code": code, "message": failure.message})
        );
        return None;
    }
    Some(format!(
        "stage {source}: {code}: {}",
        printable(&failure.message)
    ))
}

/// One listed item: a line of the table, or a JSON object.
fn item_line(item: &api::RemoteItem, json: bool) -> String {
    let kind = match item.kind() {
        Kind::Object => "object",
        Kind::Directory => "directory",
        Kind::Container => "container",
        Kind::Unspecified => "unknown",
    };
    if json {
        return json!({"name": item.name, "kind": kind, "size": item.size,
                       "last_modified_unix": item.last_modified_unix, "etag": item.etag,
                       "unstageable": item.unstageable})
        .to_string();
    }
    let size = match item.kind() {
        Kind::Object | Kind::Container => item.size.to_string(),
        _ => "-".to_string(),
    };
    let modified = match item.last_modified_unix {
        0 => "-".to_string(),
        t => format_timestamp(t),
    };
    let mut line = format!("{size:>15}  {modified:19}  {}", printable(&item.name));
    if !item.unstageable.is_empty() {
        line.push_str(&format!(
            "  (not stageable: {})",
            printable(&item.unstageable)
        ));
    }
    line
}
