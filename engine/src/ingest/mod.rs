//! Ingest of insert events from JSON Lines into a project's log store.
//!
//! ```text
//!  reader ─► decode thread (validate each line, build record batches of
//!            `chunk_rows` rows) ─► bounded channel (2 batches) ─► Delta writer
//!            (Parquet files rolled at `target_file_bytes`) ─► one commit
//! ```
//!
//! One line is one insert event, in the shape of
//! `POST /v1/project_logs/{id}/insert`, applied in file order. Memory is
//! bounded by `chunk_rows` and the writer's row groups, not by the input size
//! (plus 16 bytes per distinct id of the project, to tell a new id from an
//! update of a known one).
//!
//! # Validation rules
//! A line is rejected when it is not UTF-8, not a JSON object, lacks `id`
//! (or `id` is not a non-empty string), or a known field has the wrong type:
//! `created` (ISO-8601 datetime string), `span_id`, `root_span_id` (string),
//! `span_parents`, `tags` (array of strings), `scores` (object of numbers in
//! [0, 1] or null), `metrics` (object of numbers or null), `metadata`,
//! `span_attributes`, `context`, `origin`, `facets`, `classifications`
//! (object), `comments` (array), `_is_merge`, `_object_delete` (boolean),
//! `_merge_paths`, `_array_delete` (see [`crate::store::merge`]); any of them may
//! also be `null`. Blank lines are skipped. Server-assigned fields
//! (`_xact_id`, `_pagination_key`, `org_id`, `project_id`, `log_id`,
//! `is_root`, `audit_data`, `_async_scoring_state`) and unknown fields are
//! ignored and counted in the report.
//!
//! # Atomicity
//! By default the whole input is one commit: if any line is invalid, every
//! error is listed (up to `max_listed_errors`) with its line number and
//! nothing is committed (data files already written are deleted). With
//! `rejects`, invalid lines are written there with their reasons and the
//! valid ones are committed. With `commit_rows`, a commit is made every that
//! many rows; an invalid line then stops the input after the last commit.
//!
//! # Durability
//! A commit reported in [`IngestReport::commits`] is on disk: with the
//! store's fsync on (the default), its data files were fsynced before it and
//! its log entry after it, folders included. Once a log entry exists the
//! commit is reported, even if the work after it (checkpoint, fsync of the
//! entry, the record of when it landed) failed: that is logged, so a caller
//! never retries rows that are committed.

pub mod group;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanBuilder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::logical_expr::col;
use deltalake::kernel::Action;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use object_store::ObjectStoreExt;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use spanlake_dsl::schema::JSON_COLUMNS;

use crate::error::{Error, Result};
use crate::registry::Project;
use crate::store::merge;
use crate::store::scan::VersionScan;
use crate::store::schema::{self, VersionOp, physical_schema, xact_id_for_version};
use crate::store::{ProjectLogs, Store, commit_durably};

/// Options of an ingest.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Rows decoded into one record batch before it goes to the writer.
    pub chunk_rows: usize,
    /// A data file is closed past this many bytes.
    pub target_file_bytes: u64,
    /// Commit every this many rows (`None`: the whole input is one commit).
    pub commit_rows: Option<u64>,
    /// Skip invalid lines, writing them with their reasons to this file.
    pub rejects: Option<PathBuf>,
    /// How many line errors to keep for the report.
    pub max_listed_errors: usize,
    /// Entries added to the `commitInfo` of every commit (e.g. the request
    /// digests of a server's group commit, to recognise a replay after a crash).
    pub commit_metadata: HashMap<String, Value>,
    /// Keep the set of known ids between ingests of one process: a server
    /// commits many small batches, and reading every id back each time would
    /// cost as much as the table.
    pub writer_cache: Option<Arc<WriterCache>>,
}

/// What one process keeps between its ingests into one project (see
/// [`IngestOptions::writer_cache`]): the ids of one table version, used only
/// while the table has not moved. (Keeping the table itself open and
/// updating it was measured slower: its in-memory log grows with every
/// commit, while reopening starts from the latest checkpoint.)
#[derive(Debug, Default)]
pub struct WriterCache {
    ids: std::sync::Mutex<Option<(i64, HashSet<u64, IdHasher>)>>,
}

impl WriterCache {
    fn take_ids(&self, version: i64) -> Option<HashSet<u64, IdHasher>> {
        let mut cached = self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cached.take() {
            Some((at, ids)) if at == version => Some(ids),
            _ => None,
        }
    }

    fn put(&self, version: i64, ids: HashSet<u64, IdHasher>) {
        *self
            .ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((version, ids));
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            chunk_rows: 16 * 1024,
            target_file_bytes: 128 * 1024 * 1024,
            commit_rows: None,
            rejects: None,
            max_listed_errors: 100,
            commit_metadata: HashMap::new(),
            writer_cache: None,
        }
    }
}

pub use crate::error::LineError;

/// One commit made by an ingest.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CommitSummary {
    /// Delta table version.
    pub version: i64,
    /// Transaction id of every row of the commit.
    pub xact_id: String,
    /// Events in the commit.
    pub rows: u64,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct IngestReport {
    /// Lines read (including blank and rejected ones).
    pub lines: u64,
    /// Events committed.
    pub rows: u64,
    /// Lines rejected (with `rejects` set).
    pub rejected: u64,
    /// The commits, in order.
    pub commits: Vec<CommitSummary>,
    /// Fields that were present but ignored, with the number of events.
    pub ignored_fields: BTreeMap<String, u64>,
}

type IdHasher = BuildHasherDefault<DefaultHasher>;

/// Ingest JSON Lines from `input` into `project`.
pub async fn ingest(
    store: &Store,
    project: &Project,
    input: Box<dyn BufRead + Send>,
    source_name: &str,
    options: &IngestOptions,
) -> Result<IngestReport> {
    if options.chunk_rows == 0 {
        return Err(Error::InvalidArgument(
            "`chunk_rows` must be at least 1".into(),
        ));
    }
    if options.commit_rows == Some(0) {
        return Err(Error::InvalidArgument(
            "`commit_rows` must be at least 1".into(),
        ));
    }
    let (mut logs, lock) = store.logs_for_write(project).await?;
    let base_version = logs
        .version()
        .ok_or_else(|| Error::Internal("table has no version after creation".into()))?;
    let cached = options
        .writer_cache
        .as_ref()
        .and_then(|c| c.take_ids(base_version));
    let known_ids = match cached {
        Some(ids) => ids,
        None => load_id_hashes(&logs).await?,
    };

    let rejects = match &options.rejects {
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).map_err(|e| Error::io(path, e))?,
        )),
        None => None,
    };
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Chunk>(2);
    let decoder = Decoder {
        now: store.clock().now_micros(),
        project: project.clone(),
        options: options.clone(),
        base_version,
        known_ids,
        sender,
        rejects,
        errors: Vec::new(),
        error_count: 0,
        report: IngestReport::default(),
    };
    let decode_task = tokio::task::spawn_blocking(move || decoder.run(input));

    let result = write_chunks(
        &mut logs,
        &mut receiver,
        base_version,
        &options.commit_metadata,
        store.fsync(),
    )
    .await;
    // Whatever happened to the writer, let the decoder finish (or see the
    // closed channel and stop) before reporting.
    drop(receiver);
    let decoded = decode_task
        .await
        .map_err(|e| Error::Internal(format!("decode task failed: {e}")))?;
    let written = result?;
    let (mut report, errors, error_count, strict_failed, known_ids) = decoded?;
    drop(lock);
    if let (Some(cache), false) = (&options.writer_cache, strict_failed) {
        cache.put(base_version + written.commits.len() as i64, known_ids);
    }

    report.commits = written.commits;
    // When each commit landed, for exports that wait until traces are idle.
    // Approximate (after the fact) and best effort: a missing record only
    // makes a commit count as old.
    let committed = store.clock().now_micros();
    // Never an error: the rows are committed, and a caller told otherwise
    // would retry them.
    for commit in &report.commits {
        if let Ok(xact) = commit.xact_id.parse::<i64>()
            && let Err(e) =
                store.with_registry(|r| r.record_commit(project.table_id(), xact, committed))
        {
            tracing::warn!(project = %project.id, xact, error = %e, "could not record when a commit landed");
        }
    }
    report.rows = report.commits.iter().map(|c| c.rows).sum();
    if strict_failed {
        delete_uncommitted(&logs, &written.uncommitted).await;
        if report.commits.is_empty() {
            let mut errors = errors;
            if error_count > errors.len() as u64 {
                errors.push(LineError {
                    line: 0,
                    message: format!(
                        "... and {} more invalid line(s)",
                        error_count - errors.len() as u64
                    ),
                });
            }
            return Err(Error::InvalidInput {
                source_name: source_name.to_string(),
                errors,
            });
        }
        let last = report.commits.last().map(|c| c.xact_id.clone());
        return Err(Error::InvalidArgument(format!(
            "{}; {} row(s) before it were committed (last `_xact_id` {}), nothing after",
            errors.first().map(ToString::to_string).unwrap_or_default(),
            report.rows,
            last.unwrap_or_default()
        )));
    }
    Ok(report)
}

async fn load_id_hashes(logs: &ProjectLogs) -> Result<HashSet<u64, IdHasher>> {
    let mut ids = HashSet::with_hasher(IdHasher::default());
    let Some(table) = logs.table() else {
        return Ok(ids);
    };
    if table.snapshot()?.log_data().num_files() == 0 {
        return Ok(ids);
    }
    let ctx = crate::session::session(&crate::session::SessionOptions::default())?;
    let mut stream = VersionScan::of(table)
        .read(&ctx)?
        .select(vec![col("id")])?
        .execute_stream()
        .await?;
    let hasher = IdHasher::default();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Utf8)?;
        ids.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(|id| hasher.hash_one(id)),
        );
    }
    Ok(ids)
}

/// A message from the decoder to the writer.
#[derive(Debug)]
enum Chunk {
    Rows(RecordBatch),
    /// Commit what was written so far.
    Commit,
}

#[derive(Debug, Default)]
struct Written {
    commits: Vec<CommitSummary>,
    uncommitted: Vec<Action>,
}

async fn write_chunks(
    logs: &mut ProjectLogs,
    receiver: &mut tokio::sync::mpsc::Receiver<Chunk>,
    base_version: i64,
    commit_metadata: &HashMap<String, Value>,
    fsync: bool,
) -> Result<Written> {
    let table = logs
        .table_mut()
        .ok_or_else(|| Error::Internal("no table to write to".into()))?;
    let mut writer =
        RecordBatchWriter::for_table(table)?.with_writer_properties(schema::writer_properties());
    let mut written = Written::default();
    let mut rows_in_commit = 0u64;
    while let Some(chunk) = receiver.recv().await {
        match chunk {
            Chunk::Rows(batch) => {
                rows_in_commit += batch.num_rows() as u64;
                writer.write(batch).await?;
            }
            Chunk::Commit => {
                let adds: Vec<Action> =
                    writer.flush().await?.into_iter().map(Action::Add).collect();
                if rows_in_commit > 0 {
                    let expected = base_version + 1 + written.commits.len() as i64;
                    let version = commit(table, adds, commit_metadata, fsync).await?;
                    if version != expected {
                        return Err(Error::Internal(format!(
                            "commit landed at version {version}, expected {expected}: another writer bypassed the lock"
                        )));
                    }
                    written.commits.push(CommitSummary {
                        version,
                        xact_id: xact_id_for_version(version).to_string(),
                        rows: rows_in_commit,
                    });
                }
                rows_in_commit = 0;
            }
        }
    }
    // The channel closed without a final `Commit`: the decoder stopped on an
    // error. Whatever was written since the last commit must not stay.
    written.uncommitted = writer.flush().await?.into_iter().map(Action::Add).collect();
    Ok(written)
}

/// One commit of the rows written so far (see [`commit_durably`]): once its
/// log entry exists it is a success, whatever happens to the after-commit
/// work (fsync of the entry, checkpoint), so a caller is never told to retry
/// rows that are committed.
async fn commit(
    table: &mut deltalake::DeltaTable,
    adds: Vec<Action>,
    metadata: &HashMap<String, Value>,
    fsync: bool,
) -> Result<i64> {
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: None,
        predicate: None,
    };
    // The transaction id goes into `commitInfo` too, so that what a commit
    // was (e.g. which server requests) can be matched to its rows later.
    let expected = table.snapshot()?.version() + 1;
    let mut metadata = metadata.clone();
    metadata.insert(
        "spanlake.xact_id".to_string(),
        Value::String(xact_id_for_version(i64::try_from(expected).unwrap_or(i64::MAX)).to_string()),
    );
    commit_durably(table, adds, operation, metadata, fsync).await
}

async fn delete_uncommitted(logs: &ProjectLogs, actions: &[Action]) {
    let Some(table) = logs.table() else { return };
    let store = table.object_store();
    for action in actions {
        if let Action::Add(add) = action {
            let path = deltalake::Path::from(add.path.as_str());
            if let Err(e) = store.delete(&path).await {
                tracing::warn!(path = %add.path, error = %e, "could not delete an uncommitted data file; vacuum will remove it");
            }
        }
    }
}

/// Decodes lines into record batches on a blocking thread.
struct Decoder {
    /// The time a row without `created` is created (the store's clock when
    /// the ingest starts).
    now: i64,
    project: Project,
    options: IngestOptions,
    base_version: i64,
    known_ids: HashSet<u64, IdHasher>,
    sender: tokio::sync::mpsc::Sender<Chunk>,
    rejects: Option<std::io::BufWriter<std::fs::File>>,
    errors: Vec<LineError>,
    error_count: u64,
    report: IngestReport,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("project", &self.project.id)
            .finish_non_exhaustive()
    }
}

type Decoded = (
    IngestReport,
    Vec<LineError>,
    u64,
    bool,
    HashSet<u64, IdHasher>,
);

impl Decoder {
    fn run(mut self, mut input: Box<dyn BufRead + Send>) -> Result<Decoded> {
        let now = self.now;
        let mut commit_index = 0i64;
        let mut builder = PhysicalBatchBuilder::new(self.options.chunk_rows);
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut line_no = 0u64;
        let mut rows_in_commit = 0u64;
        let mut seq = 0i64;
        let strict = self.options.rejects.is_none();
        let mut stopped = false;
        let hasher = IdHasher::default();
        loop {
            buf.clear();
            let n = input
                .read_until(b'\n', &mut buf)
                .map_err(|e| Error::io("<input>", e))?;
            if n == 0 {
                break;
            }
            line_no += 1;
            let text = match std::str::from_utf8(&buf) {
                Ok(t) => t.trim_end_matches(['\n', '\r']),
                Err(e) => {
                    let message = format!("not valid UTF-8 (at byte {})", e.valid_up_to());
                    self.reject(line_no, message, &String::from_utf8_lossy(&buf))?;
                    stopped |= strict;
                    continue;
                }
            };
            if text.trim().is_empty() {
                continue;
            }
            let event = match parse_event(text) {
                Ok(event) => event,
                Err(message) => {
                    self.reject(line_no, message, text)?;
                    stopped |= strict;
                    continue;
                }
            };
            for name in &event.ignored {
                *self
                    .report
                    .ignored_fields
                    .entry(name.to_string())
                    .or_default() += 1;
            }
            if stopped {
                continue; // keep validating to list every error, write nothing
            }
            let id_hash = hasher.hash_one(event.id.as_ref());
            let first_version = self.known_ids.insert(id_hash);
            let op = match event.op {
                ParsedOp::Replace if first_version => VersionOp::NewReplace,
                ParsedOp::Replace => VersionOp::Replace,
                ParsedOp::Merge => VersionOp::Merge,
                ParsedOp::Delete => VersionOp::Delete,
            };
            let xact = xact_id_for_version(self.base_version + 1 + commit_index);
            builder.push(&event, op, xact, seq, &self.project, now);
            seq += 1;
            rows_in_commit += 1;
            if builder.len() >= self.options.chunk_rows {
                self.send(Chunk::Rows(builder.finish()?))?;
            }
            if self
                .options
                .commit_rows
                .is_some_and(|n| rows_in_commit >= n)
            {
                if builder.len() > 0 {
                    self.send(Chunk::Rows(builder.finish()?))?;
                }
                self.send(Chunk::Commit)?;
                commit_index += 1;
                rows_in_commit = 0;
                seq = 0;
            }
        }
        self.report.lines = line_no;
        if let Some(mut rejects) = self.rejects.take() {
            rejects
                .flush()
                .map_err(|e| Error::io("<rejects file>", e))?;
        }
        if !stopped {
            if builder.len() > 0 {
                self.send(Chunk::Rows(builder.finish()?))?;
            }
            self.send(Chunk::Commit)?;
        }
        Ok((
            self.report,
            self.errors,
            self.error_count,
            stopped,
            self.known_ids,
        ))
    }

    fn send(&self, chunk: Chunk) -> Result<()> {
        // A closed channel means the writer failed; its error is reported.
        self.sender
            .blocking_send(chunk)
            .map_err(|_| Error::Internal("writer stopped".into()))
    }

    fn reject(&mut self, line: u64, message: String, text: &str) -> Result<()> {
        self.error_count += 1;
        self.report.rejected += u64::from(self.rejects.is_some());
        if let Some(rejects) = &mut self.rejects {
            let record = serde_json::json!({"line": line, "error": message, "text": text});
            writeln!(rejects, "{record}").map_err(|e| Error::io("<rejects file>", e))?;
        }
        if self.errors.len() < self.options.max_listed_errors {
            self.errors.push(LineError { line, message });
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParsedOp {
    Replace,
    Merge,
    Delete,
}

/// A validated event, borrowing from its line.
#[derive(Debug)]
struct ParsedEvent<'a> {
    id: Cow<'a, str>,
    op: ParsedOp,
    created_micros: Option<i64>,
    span_id: Option<Cow<'a, str>>,
    root_span_id: Option<Cow<'a, str>>,
    is_root: bool,
    /// Raw JSON text per entry of `JSON_COLUMNS`; `Some("null")` is an explicit null.
    json: [Option<&'a str>; JSON_COLUMNS.len()],
    /// `{"_merge_paths": .., "_array_delete": ..}` for merges that have them.
    merge_control: Option<String>,
    ignored: Vec<Cow<'a, str>>,
}

/// A JSON object as (key, raw value) pairs, in order, borrowing from the text.
#[derive(Debug)]
struct RawObject<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::with_capacity(16);
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    fields.push((key, value));
                }
                Ok(RawObject(fields))
            }
        }
        deserializer.deserialize_map(ObjectVisitor)
    }
}

fn type_name(raw: &RawValue) -> &'static str {
    match raw.get().as_bytes().first() {
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b'"') => "a string",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

fn expect_string<'a>(name: &str, raw: &'a RawValue) -> Result<Option<Cow<'a, str>>, String> {
    if is_null(raw) {
        return Ok(None);
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get())
        .map(Some)
        .map_err(|_| format!("`{name}` must be a string, found {}", type_name(raw)))
}

fn expect_string_array(name: &str, raw: &RawValue) -> Result<Option<Vec<String>>, String> {
    if is_null(raw) {
        return Ok(None);
    }
    serde_json::from_str::<Vec<String>>(raw.get())
        .map(Some)
        .map_err(|_| {
            format!(
                "`{name}` must be an array of strings, found {}",
                describe(raw)
            )
        })
}

fn describe(raw: &RawValue) -> String {
    let text = raw.get();
    if text.len() <= 40 {
        format!("`{text}`")
    } else {
        type_name(raw).to_string()
    }
}

fn expect_kind(name: &str, raw: &RawValue, open: u8, what: &str) -> Result<(), String> {
    if is_null(raw) || raw.get().as_bytes().first() == Some(&open) {
        Ok(())
    } else {
        Err(format!("`{name}` must be {what}, found {}", type_name(raw)))
    }
}

fn expect_numbers(name: &str, raw: &RawValue, unit_range: bool) -> Result<(), String> {
    if is_null(raw) {
        return Ok(());
    }
    let Ok(map) = serde_json::from_str::<BTreeMap<&str, Option<f64>>>(raw.get()) else {
        return Err(format!(
            "`{name}` must be an object of numbers, found {}",
            describe(raw)
        ));
    };
    if unit_range
        && let Some((key, value)) = map
            .iter()
            .find_map(|(k, v)| v.filter(|v| !(0.0..=1.0).contains(v)).map(|v| (k, v)))
    {
        return Err(format!(
            "score `{name}.{key}` is {value}, but scores must be between 0 and 1"
        ));
    }
    Ok(())
}

fn expect_bool(name: &str, raw: &RawValue) -> Result<bool, String> {
    match raw.get() {
        "true" => Ok(true),
        "false" | "null" => Ok(false),
        _ => Err(format!(
            "`{name}` must be a boolean, found {}",
            type_name(raw)
        )),
    }
}

/// Parse `text` as a datetime: RFC 3339, or without an offset (taken as UTC).
pub fn parse_datetime_micros(text: &str) -> Option<i64> {
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_micros());
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(text, format) {
            return Some(dt.and_utc().timestamp_micros());
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|dt| dt.and_utc().timestamp_micros())
}

/// Check one insert event (one line) by the rules of this module, without
/// ingesting it: `Err` says what is wrong.
pub fn validate_event(text: &str) -> Result<(), String> {
    parse_event(text).map(|_| ())
}

fn parse_event(text: &str) -> Result<ParsedEvent<'_>, String> {
    let object: RawObject<'_> = serde_json::from_str(text).map_err(|e| {
        if e.is_syntax() || e.is_eof() {
            format!("not valid JSON: {e}")
        } else {
            "not a JSON object".to_string()
        }
    })?;
    let mut event = ParsedEvent {
        id: Cow::Borrowed(""),
        op: ParsedOp::Replace,
        created_micros: None,
        span_id: None,
        root_span_id: None,
        is_root: true,
        json: [None; JSON_COLUMNS.len()],
        merge_control: None,
        ignored: Vec::new(),
    };
    let mut id = None;
    let (mut is_merge, mut is_delete) = (false, false);
    let mut control = Map::new();
    for (key, raw) in object.0 {
        if let Some(index) = JSON_COLUMNS.iter().position(|c| *c == key.as_ref()) {
            event.json[index] = Some(raw.get());
        }
        match key.as_ref() {
            "id" => id = expect_string("id", raw)?,
            "created" => {
                if let Some(text) = expect_string("created", raw)? {
                    event.created_micros = Some(parse_datetime_micros(&text).ok_or_else(|| {
                        format!("`created` must be an ISO-8601 datetime, found `{text}`")
                    })?);
                }
            }
            "span_id" => event.span_id = expect_string("span_id", raw)?,
            "root_span_id" => event.root_span_id = expect_string("root_span_id", raw)?,
            "span_parents" => {
                let parents = expect_string_array("span_parents", raw)?;
                event.is_root = parents.is_none_or(|p| p.is_empty());
            }
            "tags" => {
                expect_string_array("tags", raw)?;
            }
            "scores" => expect_numbers("scores", raw, true)?,
            "metrics" => expect_numbers("metrics", raw, false)?,
            "metadata" | "span_attributes" | "context" | "origin" | "facets"
            | "classifications" => expect_kind(&key, raw, b'{', "an object")?,
            "comments" => expect_kind(&key, raw, b'[', "an array")?,
            "_is_merge" => is_merge = expect_bool("_is_merge", raw)?,
            "_object_delete" => is_delete = expect_bool("_object_delete", raw)?,
            "_merge_paths" | "_array_delete" => {
                let value: Value =
                    serde_json::from_str(raw.get()).map_err(|e| format!("`{key}`: {e}"))?;
                control.insert(key.to_string(), value);
            }
            name if JSON_COLUMNS.contains(&name) => {}
            // Server-assigned, derived and unknown fields.
            _ => event.ignored.push(key),
        }
    }
    // Validate the merge control fields with the same rules the fold uses.
    let mut check = control.clone();
    check.insert("_is_merge".into(), Value::Bool(is_merge));
    check.insert("_object_delete".into(), Value::Bool(is_delete));
    merge::split_control_fields(&mut check).map_err(|e| e.to_string())?;

    event.id = id.filter(|id| !id.is_empty()).ok_or_else(|| {
        "`id` is missing or empty: every event needs a non-empty string `id`".to_string()
    })?;
    event.op = if is_delete {
        ParsedOp::Delete
    } else if is_merge {
        ParsedOp::Merge
    } else {
        ParsedOp::Replace
    };
    if event.op == ParsedOp::Merge {
        control.retain(|_, v| !v.is_null());
        if !control.is_empty() {
            event.merge_control = Some(Value::Object(control).to_string());
        }
    }
    Ok(event)
}

/// Builds record batches of the physical schema.
#[derive(Debug)]
struct PhysicalBatchBuilder {
    xact: Int64Builder,
    seq: Int64Builder,
    op: Int32Builder,
    created: TimestampMicrosecondBuilder,
    id: StringBuilder,
    merge: StringBuilder,
    org_id: StringBuilder,
    project_id: StringBuilder,
    span_id: StringBuilder,
    root_span_id: StringBuilder,
    is_root: BooleanBuilder,
    json: Vec<StringBuilder>,
    len: usize,
}

impl PhysicalBatchBuilder {
    fn new(capacity: usize) -> Self {
        Self {
            xact: Int64Builder::with_capacity(capacity),
            seq: Int64Builder::with_capacity(capacity),
            op: Int32Builder::with_capacity(capacity),
            created: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            id: StringBuilder::with_capacity(capacity, capacity * 36),
            merge: StringBuilder::new(),
            org_id: StringBuilder::with_capacity(capacity, capacity * 36),
            project_id: StringBuilder::with_capacity(capacity, capacity * 36),
            span_id: StringBuilder::with_capacity(capacity, capacity * 36),
            root_span_id: StringBuilder::with_capacity(capacity, capacity * 36),
            is_root: BooleanBuilder::with_capacity(capacity),
            json: JSON_COLUMNS.iter().map(|_| StringBuilder::new()).collect(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn push(
        &mut self,
        event: &ParsedEvent<'_>,
        op: VersionOp,
        xact: i64,
        seq: i64,
        project: &Project,
        now_micros: i64,
    ) {
        let replace = matches!(op, VersionOp::NewReplace | VersionOp::Replace);
        self.xact.append_value(xact);
        self.seq.append_value(seq);
        self.op.append_value(op as i32);
        // A replace without `created` is created now; a merge keeps the
        // original `created`, so it stores none unless it sent one.
        self.created
            .append_option(
                event
                    .created_micros
                    .or(if replace { Some(now_micros) } else { None }),
            );
        self.id.append_value(&event.id);
        self.merge.append_option(event.merge_control.as_deref());
        self.org_id.append_value(&project.org_id);
        self.project_id.append_value(&project.id);
        // A replace without span ids is a span of its own: span_id = id and
        // root_span_id = span_id, as Braintrust fills them in.
        let span_id = event.span_id.as_deref().or(if replace {
            Some(event.id.as_ref())
        } else {
            None
        });
        self.span_id.append_option(span_id);
        self.root_span_id
            .append_option(
                event
                    .root_span_id
                    .as_deref()
                    .or(if replace { span_id } else { None }),
            );
        self.is_root.append_value(event.is_root);
        for (builder, raw) in self.json.iter_mut().zip(&event.json) {
            match raw {
                // On a replace an explicit null is the same as absent; on a
                // merge it overwrites, so it is kept as the text `null`.
                Some("null") if replace => builder.append_null(),
                Some(text) => builder.append_value(text),
                None => builder.append_null(),
            }
        }
        self.len += 1;
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.xact.finish()),
            Arc::new(self.seq.finish()),
            Arc::new(self.op.finish()),
            Arc::new(self.created.finish()),
            Arc::new(self.id.finish()),
            Arc::new(self.merge.finish()),
            Arc::new(self.org_id.finish()),
            Arc::new(self.project_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.root_span_id.finish()),
            Arc::new(self.is_root.finish()),
        ];
        columns.extend(
            self.json
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef),
        );
        self.len = 0;
        Ok(RecordBatch::try_new(physical_schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates_events() {
        let ok = parse_event(r#"{"id":"a","created":"2026-11-01T00:00:00Z","input":"hi","metadata":{"m":1},"span_parents":[],"project_id":"x"}"#).unwrap();
        assert_eq!(ok.id, "a");
        assert_eq!(ok.op, ParsedOp::Replace);
        assert!(ok.is_root);
        let input = JSON_COLUMNS.iter().position(|c| *c == "input").unwrap();
        assert_eq!(ok.json[input], Some("\"hi\""));
        assert_eq!(ok.ignored, vec!["project_id"]);

        let merge = parse_event(
            r#"{"id":"a","_is_merge":true,"_merge_paths":[["input"]],"span_parents":["p"]}"#,
        )
        .unwrap();
        assert_eq!(merge.op, ParsedOp::Merge);
        assert!(!merge.is_root);
        assert_eq!(
            merge.merge_control.as_deref(),
            Some(r#"{"_merge_paths":[["input"]]}"#)
        );

        let cases = [
            ("not json", "not valid JSON"),
            ("[1]", "not a JSON object"),
            (r#"{"input":1}"#, "`id` is missing"),
            (r#"{"id":""}"#, "`id` is missing or empty"),
            (r#"{"id":5}"#, "`id` must be a string, found a number"),
            (
                r#"{"id":"a","created":"yesterday"}"#,
                "`created` must be an ISO-8601 datetime",
            ),
            (
                r#"{"id":"a","tags":"x"}"#,
                "`tags` must be an array of strings",
            ),
            (r#"{"id":"a","scores":{"f":2}}"#, "between 0 and 1"),
            (
                r#"{"id":"a","metrics":{"t":"x"}}"#,
                "`metrics` must be an object of numbers",
            ),
            (
                r#"{"id":"a","metadata":[1]}"#,
                "`metadata` must be an object",
            ),
            (
                r#"{"id":"a","_is_merge":"yes"}"#,
                "`_is_merge` must be a boolean",
            ),
            (r#"{"id":"a","_merge_paths":"x"}"#, "_merge_paths"),
        ];
        for (line, expected) in cases {
            let err = parse_event(line).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
        }
    }

    #[test]
    fn datetimes() {
        assert_eq!(
            parse_datetime_micros("1970-01-01T00:00:01Z"),
            Some(1_000_000)
        );
        assert_eq!(
            parse_datetime_micros("1970-01-01T00:00:01.5"),
            Some(1_500_000)
        );
        assert_eq!(parse_datetime_micros("1970-01-02"), Some(86_400_000_000));
        assert_eq!(parse_datetime_micros("1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_datetime_micros("soon"), None);
    }
}
