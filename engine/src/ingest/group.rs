//! Group commit with replay protection: the rows of many requests in one
//! Delta commit per project, each request committed once however often it
//! is sent.
//!
//! ```text
//!  submit(project, rows as JSON Lines) ─► digest = SHA-256(project, rows) ─► the project's committer
//!  committer (one task per project):
//!      take the queued requests (waiting at most `linger` for more)
//!      ─► drop replays (digest already committed) and duplicates
//!      ─► one engine ingest (one Delta commit, digests in its commitInfo)
//!      ─► record the digests ─► answer every request of the group
//! ```
//!
//! - A request whose rows are invalid is answered with each bad row and
//!   commits nothing; the other requests of its group are committed without
//!   it.
//! - A client resends identical bodies on retry. A request's digest is
//!   recorded with its transaction, so a replay is answered with the first
//!   answer and commits nothing: no duplicate row version, and an old body
//!   replayed after a newer one cannot undo it. Digests are also written
//!   into the Delta commit itself, and recovered from the table's recent
//!   commits when a committer starts, so a crash between the commit and
//!   recording the digest does not let a replay in. Digests are kept for
//!   [`REPLAY_WINDOW`].
//!
//! The HTTP server (`/logs3`, `/v1/project_logs/{id}/insert`) puts its
//! memory budget and its answers around this; the commit itself is here.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};

use super::{IngestOptions, WriterCache, ingest};
use crate::error::Error;
use crate::registry::Project;
use crate::store::Store;

/// Key of the request digests in a commit's `commitInfo`.
const DIGESTS_KEY: &str = "spanlake.requests";
/// Bytes of rows after which a group commit stops gathering requests (its
/// input is held in memory, twice, while it commits).
const GROUP_MAX_BYTES: usize = 64 * 1024 * 1024;
/// How long a committer also keeps its own digests in memory.
const REPLAY_MEMORY: Duration = Duration::from_secs(3600);
/// How long request digests are kept: far longer than the SDK's retries
/// (seconds to minutes), short enough that a client deliberately sending
/// the same body again an hour later is heard.
pub const REPLAY_WINDOW: Duration = Duration::from_secs(3600);
/// How long a committer waits for another writer (CLI ingest, retention,
/// compaction) to release a project's write lock.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// How group commits gather requests.
#[derive(Debug, Clone, Copy)]
pub struct GroupOptions {
    /// How long a commit waits for more requests to join it.
    pub linger: Duration,
    /// Rows after which a commit stops gathering (at least 1).
    pub max_rows: usize,
}

/// Told what each project's committer does, for the server's metrics.
pub trait CommitObserver: Send + Sync + fmt::Debug {
    /// A request was a replay of a committed one: answered, not committed.
    fn replayed(&self);
    /// A commit of `rows` rows landed, `took` after it started.
    fn committed(&self, rows: u64, took: Duration);
}

/// The observer of `project`'s committer.
pub type ObserverOf = dyn Fn(&Project) -> Arc<dyn CommitObserver> + Send + Sync;

/// One invalid row of a request: its index in the request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: usize,
    pub message: String,
}

/// Why a request was not committed.
#[derive(Debug, Clone)]
pub enum Rejected {
    /// Its rows (by index in the request) are invalid: nothing of it was
    /// committed.
    Rows(Vec<RowError>),
    /// The commit failed (for every request of its group).
    Failed(Arc<Error>),
}

impl Rejected {
    fn internal(message: &str) -> Self {
        Self::Failed(Arc::new(Error::Internal(message.to_string())))
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rows(errors) => {
                let first = errors.first();
                write!(
                    f,
                    "{} invalid row(s), nothing of this request was committed; rows[{}]: {}",
                    errors.len(),
                    first.map_or(0, |e| e.row),
                    first.map_or("", |e| e.message.as_str())
                )
            }
            Self::Failed(error) => write!(f, "{error}"),
        }
    }
}

/// The rows of one request for one project.
struct Pending {
    /// JSON Lines, one row per line.
    lines: Vec<u8>,
    /// Index in the request of each line's row (for error messages).
    rows: Vec<usize>,
    digest: String,
    reply: oneshot::Sender<Result<i64, Rejected>>,
    /// Whatever the caller holds until the request is answered and has
    /// left the queue (the server's share of its ingest budget).
    _hold: Arc<dyn Send + Sync>,
}

/// The group committers, one per project, started on first use.
pub struct GroupCommitter {
    store: Arc<Store>,
    options: GroupOptions,
    observer: Arc<ObserverOf>,
    committers: Mutex<HashMap<String, mpsc::Sender<Pending>>>,
}

impl fmt::Debug for GroupCommitter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCommitter")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl GroupCommitter {
    pub fn new(store: Arc<Store>, options: GroupOptions, observer: Arc<ObserverOf>) -> Self {
        Self {
            store,
            options: GroupOptions {
                max_rows: options.max_rows.max(1),
                ..options
            },
            observer,
            committers: Mutex::new(HashMap::new()),
        }
    }

    fn committer(&self, project: &Project) -> mpsc::Sender<Pending> {
        let mut committers = self
            .committers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(sender) = committers.get(project.table_id())
            && !sender.is_closed()
        {
            return sender.clone();
        }
        let (sender, receiver) = mpsc::channel(1024);
        let committer = Committer {
            store: Arc::clone(&self.store),
            project: project.clone(),
            options: self.options,
            observer: (self.observer)(project),
            cache: Arc::new(WriterCache::default()),
            recent: Mutex::new(HashMap::new()),
        };
        tokio::spawn(committer.run(receiver));
        committers.insert(project.table_id().to_string(), sender.clone());
        sender
    }

    /// Commit `lines` (JSON Lines; rows `rows` of a request) to `project`;
    /// the transaction id they were committed in (or were, for a replay).
    /// `hold` is dropped once the request is answered and out of the queue.
    pub async fn submit(
        &self,
        project: &Project,
        lines: Vec<u8>,
        rows: Vec<usize>,
        hold: Arc<dyn Send + Sync>,
    ) -> Result<i64, Rejected> {
        let mut hasher = Sha256::new();
        hasher.update(project.table_id().as_bytes());
        hasher.update(b"\n");
        hasher.update(&lines);
        let digest: String = hasher
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            lines,
            rows,
            digest,
            reply,
            _hold: hold,
        };
        self.committer(project)
            .send(pending)
            .await
            .map_err(|_| Rejected::internal("the project's committer stopped; retry"))?;
        answer.await.map_err(|_| {
            Rejected::internal("the project's committer stopped before answering; retry")
        })?
    }
}

/// Forget the request digests older than [`REPLAY_WINDOW`]; how many.
pub fn forget_old_digests(store: &Store) -> crate::Result<usize> {
    let since =
        store.clock().now_micros() - i64::try_from(REPLAY_WINDOW.as_micros()).unwrap_or(i64::MAX);
    store.with_registry(|r| r.forget_requests_before(since))
}

struct Committer {
    store: Arc<Store>,
    project: Project,
    options: GroupOptions,
    observer: Arc<dyn CommitObserver>,
    cache: Arc<WriterCache>,
    /// Digests this committer committed, with their transaction and when:
    /// replays are recognised even if recording them in the state database
    /// failed.
    recent: Mutex<HashMap<String, (i64, Instant)>>,
}

enum Failure {
    /// These requests (by index in the group) have invalid rows.
    Rows(HashMap<usize, Vec<RowError>>),
    /// The commit failed for everyone.
    All(Rejected),
}

impl Committer {
    fn recent_xact(&self, digest: &str) -> Option<i64> {
        let recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.get(digest).map(|(xact, _)| *xact)
    }

    fn remember(&self, digests: &[String], xact: i64) {
        let mut recent = self
            .recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        recent.retain(|_, (_, at)| now.duration_since(*at) < REPLAY_MEMORY);
        for digest in digests {
            recent.insert(digest.clone(), (xact, now));
        }
    }

    async fn run(self, mut receiver: mpsc::Receiver<Pending>) {
        if let Err(e) = self.recover_digests().await {
            tracing::warn!(project = %self.project.table_id(), error = %e, "could not recover request digests from the table's commits");
        }
        while let Some(first) = receiver.recv().await {
            let mut group = vec![first];
            let mut rows = group[0].rows.len();
            let mut bytes = group[0].lines.len();
            // Requests queued while the last commit ran join this one, and
            // those arriving within the linger. (Committing at once when the
            // queue is empty was measured slower: the fixed cost of a commit
            // then serves fewer rows.)
            let deadline = tokio::time::Instant::now() + self.options.linger;
            while rows < self.options.max_rows && bytes < GROUP_MAX_BYTES {
                let pending = match receiver.try_recv() {
                    Ok(pending) => pending,
                    Err(_) => match tokio::time::timeout_at(deadline, receiver.recv()).await {
                        Ok(Some(pending)) => pending,
                        _ => break,
                    },
                };
                rows += pending.rows.len();
                bytes += pending.lines.len();
                group.push(pending);
            }
            self.commit_group(group).await;
        }
    }

    /// Digests of the table's recent commits that the registry may not have
    /// recorded (the process died between the commit and the record).
    async fn recover_digests(&self) -> crate::Result<()> {
        let logs = self.store.logs(&self.project).await?;
        let Some(table) = logs.table() else {
            return Ok(());
        };
        let infos: Vec<_> = table.history(Some(1000)).try_collect().await?;
        for info in infos {
            let (Some(digests), Some(xact)) = (
                info.info.get(DIGESTS_KEY),
                info.info.get("spanlake.xact_id"),
            ) else {
                continue;
            };
            let digests: Vec<String> = digests
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|d| d.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if let Some(xact) = xact.as_str().and_then(|x| x.parse::<i64>().ok()) {
                self.store.with_registry(|r| {
                    r.record_requests(self.project.table_id(), &digests, xact)
                })?;
            }
        }
        Ok(())
    }

    async fn commit_group(&self, group: Vec<Pending>) {
        // Replays of committed requests, and duplicates within the group.
        let mut fresh: Vec<Pending> = Vec::with_capacity(group.len());
        let mut duplicates: Vec<(Pending, usize)> = Vec::new();
        for pending in group {
            let known = match self.recent_xact(&pending.digest) {
                Some(xact) => Ok(Some(xact)),
                None => self
                    .store
                    .with_registry(|r| r.request_xact(&pending.digest)),
            };
            match known {
                Ok(Some(xact)) => {
                    self.observer.replayed();
                    let _ = pending.reply.send(Ok(xact));
                }
                Ok(None) => match fresh.iter().position(|p| p.digest == pending.digest) {
                    Some(first) => duplicates.push((pending, first)),
                    None => fresh.push(pending),
                },
                Err(e) => {
                    let _ = pending.reply.send(Err(Rejected::Failed(Arc::new(e))));
                }
            }
        }
        let mut results: Vec<Option<Result<i64, Rejected>>> = vec![None; fresh.len()];
        let mut remaining: Vec<usize> = (0..fresh.len()).collect();
        while !remaining.is_empty() {
            match self.commit(&fresh, &remaining).await {
                Ok(xact) => {
                    let digests: Vec<String> =
                        remaining.iter().map(|&i| fresh[i].digest.clone()).collect();
                    self.remember(&digests, xact);
                    if let Err(e) = self.store.with_registry(|r| {
                        r.record_requests(self.project.table_id(), &digests, xact)
                    }) {
                        // Committed all the same: the digests are in the
                        // commit and are recovered when a committer starts.
                        tracing::warn!(error = %e, "could not record request digests");
                    }
                    for &i in &remaining {
                        results[i] = Some(Ok(xact));
                    }
                    remaining.clear();
                }
                Err(Failure::Rows(mut by_request)) => {
                    remaining.retain(|i| match by_request.remove(i) {
                        Some(errors) => {
                            results[*i] = Some(Err(Rejected::Rows(errors)));
                            false
                        }
                        None => true,
                    });
                }
                Err(Failure::All(error)) => {
                    for &i in &remaining {
                        results[i] = Some(Err(error.clone()));
                    }
                    remaining.clear();
                }
            }
        }
        let missing = || Err(Rejected::internal("no result for the request"));
        for (pending, first) in duplicates {
            let _ = pending
                .reply
                .send(results[first].clone().unwrap_or_else(missing));
        }
        for (pending, result) in fresh.into_iter().zip(results) {
            let _ = pending.reply.send(result.unwrap_or_else(missing));
        }
    }

    /// One engine ingest of the requests `which` of `group`.
    async fn commit(&self, group: &[Pending], which: &[usize]) -> Result<i64, Failure> {
        let mut input = Vec::new();
        // Line ranges of each request in the input: (first line, request).
        let mut starts: Vec<(u64, usize)> = Vec::with_capacity(which.len());
        let mut line = 1u64;
        for &i in which {
            starts.push((line, i));
            input.extend_from_slice(&group[i].lines);
            line += group[i].rows.len() as u64;
        }
        let rows = line - 1;
        let digests: Vec<serde_json::Value> = which
            .iter()
            .map(|&i| serde_json::Value::String(group[i].digest.clone()))
            .collect();
        let options = IngestOptions {
            commit_metadata: HashMap::from([(
                DIGESTS_KEY.to_string(),
                serde_json::Value::Array(digests),
            )]),
            writer_cache: Some(Arc::clone(&self.cache)),
            max_listed_errors: usize::try_from(rows).unwrap_or(usize::MAX),
            ..IngestOptions::default()
        };
        let started = Instant::now();
        let give_up = started + LOCK_WAIT;
        loop {
            let reader = Box::new(std::io::Cursor::new(input.clone()));
            match ingest(&self.store, &self.project, reader, "request", &options).await {
                Ok(report) => {
                    let Some(last) = report.commits.last() else {
                        return Err(Failure::All(Rejected::internal(
                            "the ingest made no commit",
                        )));
                    };
                    self.observer.committed(report.rows, started.elapsed());
                    return last
                        .xact_id
                        .parse::<i64>()
                        .map_err(|_| Failure::All(Rejected::internal("bad transaction id")));
                }
                Err(Error::Locked { .. }) if Instant::now() < give_up => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(Error::InvalidInput {
                    errors,
                    source_name,
                }) => {
                    let mut by_request: HashMap<usize, Vec<RowError>> = HashMap::new();
                    for error in &errors {
                        let Some(&(first, request)) =
                            starts.iter().rev().find(|(first, _)| *first <= error.line)
                        else {
                            continue;
                        };
                        let row = usize::try_from(error.line - first)
                            .ok()
                            .and_then(|i| group[request].rows.get(i).copied())
                            .unwrap_or_default();
                        by_request.entry(request).or_default().push(RowError {
                            row,
                            message: error.message.clone(),
                        });
                    }
                    if by_request.is_empty() {
                        return Err(Failure::All(Rejected::Failed(Arc::new(
                            Error::InvalidInput {
                                source_name,
                                errors,
                            },
                        ))));
                    }
                    return Err(Failure::Rows(by_request));
                }
                Err(e) => return Err(Failure::All(Rejected::Failed(Arc::new(e)))),
            }
        }
    }
}
