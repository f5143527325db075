//! Retention of a project's log table: delete the rows whose `created` is
//! older than a cutoff, then, after a grace period, purge the data files that
//! no version of the table references any more (vacuum).
//!
//! ```text
//!  now, retention_days ──cutoff_for──► cutoff (one absolute instant per run)
//!
//!  plan_retention (reads only, never a whole row):
//!    add actions ──stats of `created` (min, max, nullCount), `_op` (max)──► per file
//!      max < cutoff, no nulls ......... old       min >= cutoff (or all null) ... new
//!      otherwise ...................... straddle
//!    ids with several versions (F) = DISTINCT id WHERE _op != 0   (only files whose `_op` max != 0)
//!    F empty:  old ─► drop (never read)   new ─► untouched (never read)   straddle ─► counted
//!    F not empty: `id, _xact_id, _seq, _op, created` of F's versions (every file but the
//!      clean new ones) ─► per id: which versions go (see "Row versions") ─► files holding
//!      versions whose fate differs from their file's side are counted too
//!    counted files: per file, rows and expired rows ─► drop | rewrite | untouched
//!
//!  run_retention:  write lock ─► plan on snapshot V ─► rewrite the straddling files
//!                  (read, drop expired rows, write new files) ─► ONE commit V+1:
//!                  remove(dropped ∪ rewritten) + add(new files), operation DELETE
//!
//!  vacuum: tombstones older than the grace (and older than the oldest pinned
//!          snapshot), and orphan files older than the grace ─► deleted, oldest first
//! ```
//!
//! # Row versions
//! The store keeps row versions: a replace, later merges (which keep the
//! row's `created`), deletes. A row is deleted by its own `created`, which is
//! the resolved row's: that of the version that started it (its replace, or
//! a merge onto no row). An id's versions split into *incarnations*, each
//! started by a replace or by the first version after a delete, and ended by
//! the next one (a delete belongs to the incarnation it ends). Then:
//! - if the last incarnation (the row queries see, or the deleted one) is
//!   expired, every version of the id goes, in the same commit: a resolved
//!   row never loses its first version while a later merge survives (which
//!   would turn it into a half row);
//! - otherwise the leading expired incarnations go (content superseded by a
//!   later replace, or deleted), and no other version: what queries see
//!   does not change;
//! - rows whose `created` is null are kept.
//!
//! An id with a single version (`_op = 0` and nothing else) goes when its
//! `created` is before the cutoff, as file statistics tell without reading.
//!
//! # Guarantees
//! - The plan changes nothing; a dry run is the plan.
//! - A run is one Delta commit (`DELETE` operation): a crash leaves the table
//!   as before or as after. Files written before a crash are orphans, which a
//!   later vacuum deletes once they are older than the grace period. The plan
//!   is computed on the snapshot the commit applies to, under the project's
//!   write lock, and the rewrite checks its row counts against it: the
//!   figures of a run are those of its plan.
//! - Deleted rows disappear from reads at once; their bytes stay in storage
//!   (older table versions still reference them) until a vacuum whose grace
//!   period has passed since the delete.
//! - A snapshot pinned by a running export (its run's `cursor_to`, held with
//!   its lease, see [`StateDb::pinned_versions`]) keeps every file it
//!   references. A query cursor pins nothing: it reads its snapshot for as
//!   long as the files of that snapshot are kept, i.e. up to the grace period
//!   after a retention run; once a vacuum may have deleted some of them,
//!   opening that snapshot fails with a clear error ([`check_snapshot_kept`])
//!   instead of returning partial rows.
//!
//! Delta file statistics truncate timestamps to milliseconds, so a file whose
//! statistics put the cutoff inside its `[min, max + 1ms)` range is scanned
//! rather than classified from statistics alone: classification is exact.
//!
//! [`StateDb::pinned_versions`]: crate::automation::state::StateDb::pinned_versions

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, TimeDelta, Utc};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
    col, lit, not,
};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::projects::Project;
use crate::store::schema::{OP, SEQ, VersionOp, XACT_ID};
use crate::store::{ProjectLogs, STATE_DB, Store, commit_durably, durable, schema};

/// Name of the column holding each row's data file in the planning scans.
const FILE_COLUMN: &str = "__spanlake_file";

/// Name of the record of purged snapshots, in the project's directory.
const VACUUM_RECORD: &str = "vacuum.json";

/// One data file of the table, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the table root.
    pub path: String,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Rows of the file that the run deletes (all of them for a dropped file).
    pub expired_rows: u64,
}

/// What a retention run with a given cutoff deletes, computed without
/// changing anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionPlan {
    /// Rows with `created` strictly before this instant are deleted.
    pub cutoff: DateTime<Utc>,
    /// Table version the plan was computed on (`None`: no table).
    pub version: Option<i64>,
    /// Row versions deleted.
    pub rows: u64,
    /// Distinct `root_span_id` among those rows; counted for a preview only
    /// (`None` for a run: counting would read the dropped files).
    pub traces: Option<u64>,
    /// Files whose rows all go: removed from the table unread.
    pub files_to_drop: Vec<FileInfo>,
    /// Files with rows that go and rows that stay: rewritten without the
    /// former.
    pub files_to_rewrite: Vec<FileInfo>,
    /// Bytes that a vacuum after the run frees: the dropped files, plus the
    /// expired share (by rows) of the rewritten files. An estimate for the
    /// rewritten part, since the surviving rows are written to new files.
    pub bytes_to_reclaim: u64,
    /// Files whose `id` (and version columns) were read to find the versions
    /// of multi-version ids (0 when every id has a single version, e.g. after
    /// compaction).
    pub files_read_for_versions: u64,
}

impl RetentionPlan {
    fn empty(cutoff: DateTime<Utc>, version: Option<i64>) -> Self {
        Self {
            cutoff,
            version,
            rows: 0,
            traces: Some(0),
            files_to_drop: Vec::new(),
            files_to_rewrite: Vec::new(),
            bytes_to_reclaim: 0,
            files_read_for_versions: 0,
        }
    }

    /// Whether the run would change nothing.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The figures a preview and its run must agree on (everything but the
    /// trace count, which only a preview computes).
    pub fn figures(&self) -> (u64, usize, usize, u64) {
        (
            self.rows,
            self.files_to_drop.len(),
            self.files_to_rewrite.len(),
            self.bytes_to_reclaim,
        )
    }
}

/// What a retention run did. All zero for a dry run or an empty plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionMetrics {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Table version of the delete commit (`None`: no commit was made).
    pub version: Option<i64>,
    /// Row versions deleted.
    pub rows_deleted: u64,
    /// Data files removed from the table (dropped plus rewritten).
    pub files_removed: u64,
    /// Data files written with the surviving rows of the rewritten files.
    pub files_added: u64,
    /// Files dropped whole, unread.
    pub files_dropped: u64,
    /// Files rewritten.
    pub files_rewritten: u64,
    /// Rows copied into the new files.
    pub rows_copied: u64,
    /// Wall time of the delete, milliseconds.
    pub execution_time_ms: u64,
}

/// What a vacuum deleted (or would delete, for a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumMetrics {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Data files deleted from storage (tombstoned and orphan).
    pub files_deleted: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their paths, relative to the table root, in deletion order.
    pub paths: Vec<String>,
    /// Of those, files that no commit ever referenced (left by a crashed
    /// writer).
    pub orphans: u64,
    /// Table versions pinned by running exports, whose files were kept.
    pub pinned_versions: Vec<i64>,
}

/// The retention cutoff for a run at `now` keeping `days` days: rows with
/// `created` before `now - days` are deleted. `days == 0` (delete every row
/// up to now) is refused unless `force`.
pub fn cutoff_for(now: DateTime<Utc>, days: u32, force: bool) -> Result<DateTime<Utc>> {
    if days == 0 && !force {
        return Err(Error::InvalidArgument(
            "retention_days is 0, which deletes every row created up to now; \
             use at least 1 day, or force it if that is really intended"
                .into(),
        ));
    }
    TimeDelta::try_days(i64::from(days))
        .and_then(|d| now.checked_sub_signed(d))
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "retention_days {days} puts the cutoff before the earliest representable time"
            ))
        })
}

/// Where a file's `created` statistics put it against the cutoff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Every row is older than the cutoff.
    Old,
    /// No row is older than the cutoff (or all are null).
    New,
    /// Unknown from statistics alone.
    Straddle,
}

/// Statistics of one file, from its add action.
struct FileStats {
    info: FileInfo,
    side: Side,
    /// Whether every row has `_op = 0` (first versions only).
    clean: bool,
}

fn parse_stats_timestamp(value: &serde_json::Value) -> Option<i64> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
        .or_else(|| crate::ingest::parse_datetime_micros(text))
}

fn file_stats(view: &deltalake::kernel::LogicalFileView, cut: i64) -> FileStats {
    let stats: Option<serde_json::Value> = view.stats().and_then(|s| serde_json::from_str(&s).ok());
    let get =
        |section: &str, column: &str| stats.as_ref().and_then(|s| s.get(section)?.get(column));
    let rows = view
        .num_records()
        .map(|n| n as u64)
        .or_else(|| stats.as_ref()?.get("numRecords")?.as_u64())
        .unwrap_or(0);
    let min = get("minValues", "created").and_then(parse_stats_timestamp);
    let max = get("maxValues", "created").and_then(parse_stats_timestamp);
    let nulls = get("nullCount", "created").and_then(serde_json::Value::as_u64);
    let side = match (min, max) {
        // True min >= truncated min >= cutoff: nothing expired.
        (Some(min), _) if min >= cut => Side::New,
        // True max < truncated max + 1ms <= cutoff, and no nulls (kept).
        (Some(_), Some(max)) if max + 1000 <= cut && nulls == Some(0) => Side::Old,
        // All null with known counts: nothing expired by its own `created`.
        (None, None) if nulls.is_some_and(|n| n == rows) => Side::New,
        _ => Side::Straddle,
    };
    let clean = get("maxValues", OP).and_then(serde_json::Value::as_i64) == Some(0);
    FileStats {
        info: FileInfo {
            path: view.path().into_owned(),
            bytes: u64::try_from(view.size()).unwrap_or(0),
            rows,
            expired_rows: 0,
        },
        side,
        clean,
    }
}

fn cutoff_literal(cutoff: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(cutoff.timestamp_micros()),
        Some(Arc::from("UTC")),
    ))
}

/// Which rows a run deletes: rows of single-version ids by their `created`,
/// versions of multi-version ids as decided per id (see the module docs).
#[derive(Debug, Clone)]
struct Deletion {
    cutoff: DateTime<Utc>,
    /// Ids with more than one version (some version has `_op != 0`).
    multi: Arc<HashSet<String>>,
    /// `(_xact_id, _seq)` of the versions of `multi` ids that go.
    doomed: Arc<HashSet<(i64, i64)>>,
}

impl Deletion {
    /// A boolean expression, never null: whether a stored row goes.
    fn expired(&self) -> Expr {
        if self.multi.is_empty() {
            return col("created").lt(cutoff_literal(self.cutoff)).is_true();
        }
        ScalarUDF::from(ExpiredUdf {
            deletion: self.clone(),
            signature: Signature::any(4, Volatility::Immutable),
        })
        .call(vec![col("id"), col(XACT_ID), col(SEQ), col("created")])
    }
}

/// `spanlake_retention_expired(id, _xact_id, _seq, created)`: the rows a
/// [`Deletion`] removes, with the sets held in memory.
#[derive(Debug)]
struct ExpiredUdf {
    deletion: Deletion,
    signature: Signature,
}

impl PartialEq for ExpiredUdf {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.deletion.multi, &other.deletion.multi)
            && Arc::ptr_eq(&self.deletion.doomed, &other.deletion.doomed)
            && self.deletion.cutoff == other.deletion.cutoff
    }
}

impl Eq for ExpiredUdf {}

impl std::hash::Hash for ExpiredUdf {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.deletion.multi).hash(state);
        Arc::as_ptr(&self.deletion.doomed).hash(state);
        self.deletion.cutoff.hash(state);
    }
}

impl ScalarUDFImpl for ExpiredUdf {
    fn name(&self) -> &str {
        "spanlake_retention_expired"
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let n = args.number_rows;
        let arrays = args
            .args
            .iter()
            .map(|a| a.to_array(n))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let ids = arrow::compute::cast(&arrays[0], &DataType::Utf8)?;
        let ids = ids.as_string::<i32>();
        let xacts = arrays[1].as_primitive::<Int64Type>();
        let seqs = arrays[2].as_primitive::<Int64Type>();
        let created = arrays[3]
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| DataFusionError::Internal("`created` is not a timestamp".into()))?;
        let cut = self.deletion.cutoff.timestamp_micros();
        let result: BooleanArray = (0..n)
            .map(|i| {
                let multi = ids.is_valid(i) && self.deletion.multi.contains(ids.value(i));
                Some(if multi {
                    self.deletion
                        .doomed
                        .contains(&(xacts.value(i), seqs.value(i)))
                } else {
                    created.is_valid(i) && created.value(i) < cut
                })
            })
            .collect();
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// `id IN <set>`, with the set held in memory (the store's fold filter).
fn id_in(ids: &Arc<HashSet<String>>) -> Expr {
    crate::store::resolve::id_in_set(Arc::clone(ids))
}

/// One stored version of a multi-version id, as the decision needs it.
#[derive(Debug, Clone, Copy)]
struct Version {
    xact: i64,
    seq: i64,
    op: i32,
    created: Option<i64>,
    /// Index of its file in the plan's file list.
    file: usize,
}

/// What the cutoff does to one id's versions.
#[derive(Debug, PartialEq, Eq)]
enum Fate {
    /// Nothing goes.
    Keep,
    /// The first `n` versions go (leading expired incarnations).
    Prefix(usize),
    /// Every version goes.
    All,
    /// Undecided: the id's first version may sit in a file not read yet.
    NeedFirst,
}

/// Decide the fate of one id from its versions in `(_xact_id, _seq)` order.
/// `complete`: every file that could hold a version of it was read.
fn decide(versions: &[Version], cut: i64, complete: bool) -> Fate {
    let Some(first) = versions.first() else {
        return Fate::Keep;
    };
    let op = |v: &Version| VersionOp::from_i32(v.op);
    // Incarnations start at the first version, at each replace, and after
    // each delete.
    let starts: Vec<usize> = (0..versions.len())
        .filter(|&i| {
            i == 0
                || matches!(
                    op(&versions[i]),
                    Some(VersionOp::NewReplace | VersionOp::Replace)
                )
                || op(&versions[i - 1]) == Some(VersionOp::Delete)
        })
        .collect();
    let expired = |start: usize| versions[start].created.is_some_and(|c| c < cut);
    // A clean version is always an id's first; without it, the first may be
    // in an unread file (a clean one whose rows are all at or after the
    // cutoff) or gone.
    let first_known = complete || op(first) == Some(VersionOp::NewReplace);
    let last = *starts.last().expect("at least one incarnation");
    if expired(last) {
        return if first_known {
            Fate::All
        } else {
            Fate::NeedFirst
        };
    }
    let leading = starts.iter().take_while(|&&s| expired(s)).count();
    if leading == 0 {
        return Fate::Keep;
    }
    if !first_known {
        // An unread first version would be an unexpired incarnation ahead of
        // these: then nothing goes.
        return Fate::NeedFirst;
    }
    Fate::Prefix(starts[leading])
}

/// Plan a retention run on the snapshot of `logs`: which files are dropped or
/// rewritten, and how many rows and traces are deleted. Reads the table's
/// statistics, the narrow version columns where ids have several versions,
/// and the files that straddle the cutoff; changes nothing.
pub async fn plan_retention(logs: &ProjectLogs, cutoff: DateTime<Utc>) -> Result<RetentionPlan> {
    Ok(plan(logs, cutoff, true).await?.0)
}

/// A scan of only the given files of the table, optionally with a file column.
async fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    paths: impl IntoIterator<Item = String>,
    with_file: bool,
) -> Result<datafusion::dataframe::DataFrame> {
    let mut builder = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .with_file_paths(paths);
    if with_file {
        builder = builder.with_file_column(FILE_COLUMN);
    }
    Ok(ctx.read_table(builder.await?)?)
}

/// The index of the file a scan's file column value names.
struct FileIndex {
    by_path: HashMap<String, usize>,
    seen: HashMap<String, usize>,
}

impl FileIndex {
    fn new(files: &[FileStats]) -> Self {
        Self {
            by_path: files
                .iter()
                .enumerate()
                .map(|(i, f)| (f.info.path.clone(), i))
                .collect(),
            seen: HashMap::new(),
        }
    }

    fn get(&mut self, scanned: &str) -> Result<usize> {
        if let Some(&i) = self.seen.get(scanned) {
            return Ok(i);
        }
        let found = self.by_path.get(scanned).copied().or_else(|| {
            self.by_path
                .iter()
                .find(|(path, _)| scanned.ends_with(&format!("/{path}")))
                .map(|(_, &i)| i)
        });
        let i = found.ok_or_else(|| {
            Error::Internal(format!(
                "retention scan returned rows of `{scanned}`, which is not a file of the snapshot"
            ))
        })?;
        self.seen.insert(scanned.to_string(), i);
        Ok(i)
    }
}

/// Read the versions of the ids in `ids` from `paths`.
async fn read_versions(
    ctx: &SessionContext,
    table: &DeltaTable,
    paths: Vec<String>,
    ids: &Arc<HashSet<String>>,
    index: &mut FileIndex,
    into: &mut HashMap<String, Vec<Version>>,
) -> Result<()> {
    if paths.is_empty() || ids.is_empty() {
        return Ok(());
    }
    let mut stream = scan(ctx, table, paths, true)
        .await?
        .filter(id_in(ids))?
        .select(vec![
            cast(col("id"), DataType::Utf8).alias("id"),
            col(XACT_ID),
            col(SEQ),
            col(OP),
            col("created"),
            cast(col(FILE_COLUMN), DataType::Utf8).alias("file"),
        ])?
        .execute_stream()
        .await?;
    while let Some(batch) = stream.try_next().await? {
        let id = batch.column(0).as_string::<i32>();
        let xact = batch.column(1).as_primitive::<Int64Type>();
        let seq = batch.column(2).as_primitive::<Int64Type>();
        let op = batch.column(3).as_primitive::<Int32Type>();
        let created = batch
            .column(4)
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| Error::Internal("stored `created` is not a timestamp".into()))?;
        let file = batch.column(5).as_string::<i32>();
        for i in 0..batch.num_rows() {
            into.entry(id.value(i).to_string())
                .or_default()
                .push(Version {
                    xact: xact.value(i),
                    seq: seq.value(i),
                    op: op.value(i),
                    created: created.is_valid(i).then(|| created.value(i)),
                    file: index.get(file.value(i))?,
                });
        }
    }
    Ok(())
}

/// The plan, and the deletion it applies. `count_traces`: also count the
/// distinct traces among the deleted rows (reads `root_span_id` of every
/// file losing rows, dropped ones included: a preview only).
async fn plan(
    logs: &ProjectLogs,
    cutoff: DateTime<Utc>,
    count_traces: bool,
) -> Result<(RetentionPlan, Deletion)> {
    let mut deletion = Deletion {
        cutoff,
        multi: Arc::default(),
        doomed: Arc::default(),
    };
    let Some(table) = logs.table() else {
        return Ok((RetentionPlan::empty(cutoff, None), deletion));
    };
    let cut = cutoff.timestamp_micros();
    let files: Vec<FileStats> = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|view| file_stats(&view, cut))
        .collect();
    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;
    let paths_where = |keep: &dyn Fn(&FileStats) -> bool| -> Vec<String> {
        files
            .iter()
            .filter(|f| keep(f))
            .map(|f| f.info.path.clone())
            .collect()
    };

    // Ids with several versions: only files holding a version with `_op != 0`.
    let mixed = paths_where(&|f| !f.clean);
    let mut multi = HashSet::new();
    if !mixed.is_empty() {
        let batches = scan(&ctx, table, mixed, false)
            .await?
            .filter(col(OP).not_eq(lit(VersionOp::NewReplace as i32)))?
            .select(vec![cast(col("id"), DataType::Utf8).alias("id")])?
            .distinct()?
            .collect()
            .await?;
        for batch in &batches {
            multi.extend(
                batch
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .flatten()
                    .map(str::to_string),
            );
        }
    }
    let multi = Arc::new(multi);

    // Their versions, and which go. Clean new files are read only for ids
    // whose first version may be there.
    let mut index = FileIndex::new(&files);
    let mut versions: HashMap<String, Vec<Version>> = HashMap::new();
    let mut files_read_for_versions = 0u64;
    let mut doomed = HashSet::new();
    // Per file: versions of multi-version ids that stay, and that go.
    let mut multi_kept = vec![0u64; files.len()];
    let mut multi_gone = vec![0u64; files.len()];
    if !multi.is_empty() {
        let first_pass = paths_where(&|f| !(f.clean && f.side == Side::New));
        files_read_for_versions += first_pass.len() as u64;
        read_versions(&ctx, table, first_pass, &multi, &mut index, &mut versions).await?;
        let mut need_first = HashSet::new();
        for (id, list) in &mut versions {
            list.sort_by_key(|v| (v.xact, v.seq));
            if decide(list, cut, false) == Fate::NeedFirst {
                need_first.insert(id.clone());
            }
        }
        if !need_first.is_empty() {
            let need_first = Arc::new(need_first);
            let second_pass = paths_where(&|f| f.clean && f.side == Side::New);
            files_read_for_versions += second_pass.len() as u64;
            let mut found = HashMap::new();
            read_versions(
                &ctx,
                table,
                second_pass,
                &need_first,
                &mut index,
                &mut found,
            )
            .await?;
            for (id, more) in found {
                let list = versions.entry(id).or_default();
                list.extend(more);
                list.sort_by_key(|v| (v.xact, v.seq));
            }
        }
        for list in versions.values() {
            let gone = match decide(list, cut, true) {
                Fate::Keep | Fate::NeedFirst => 0,
                Fate::Prefix(n) => n,
                Fate::All => list.len(),
            };
            for (i, v) in list.iter().enumerate() {
                if i < gone {
                    doomed.insert((v.xact, v.seq));
                    multi_gone[v.file] += 1;
                } else {
                    multi_kept[v.file] += 1;
                }
            }
        }
    }
    deletion.multi = multi;
    deletion.doomed = Arc::new(doomed);

    // Classify: old files without surviving versions drop unread, new files
    // without doomed versions stay unread, the rest are counted.
    let mut drop = Vec::new();
    let mut counted = Vec::new();
    for (i, f) in files.iter().enumerate() {
        match f.side {
            Side::Old if multi_kept[i] == 0 => {
                let mut info = f.info.clone();
                info.expired_rows = info.rows;
                drop.push(info);
            }
            Side::New if multi_gone[i] == 0 => {}
            _ => counted.push(i),
        }
    }
    let mut files_to_rewrite = Vec::new();
    if !counted.is_empty() {
        let scanned = scan(
            &ctx,
            table,
            counted.iter().map(|&i| files[i].info.path.clone()),
            true,
        )
        .await?
        .aggregate(
            vec![cast(col(FILE_COLUMN), DataType::Utf8).alias("file")],
            vec![
                count(lit(1)).alias("total"),
                sum(cast(deletion.expired(), DataType::Int64)).alias("expired"),
            ],
        )?
        .collect()
        .await?;
        let mut counts: HashMap<usize, (u64, u64)> = HashMap::new();
        for batch in &scanned {
            let names = batch.column(0).as_string::<i32>();
            let totals = batch.column(1).as_primitive::<Int64Type>();
            let expired = batch.column(2).as_primitive::<Int64Type>();
            for row in 0..batch.num_rows() {
                let e = if expired.is_null(row) {
                    0
                } else {
                    expired.value(row)
                };
                counts.insert(
                    index.get(names.value(row))?,
                    (totals.value(row) as u64, e as u64),
                );
            }
        }
        for i in counted {
            let (total, expired) = counts.get(&i).copied().unwrap_or((0, 0));
            if expired == 0 {
                continue;
            }
            let mut info = files[i].info.clone();
            info.rows = total;
            info.expired_rows = expired;
            if expired == total {
                drop.push(info);
            } else {
                files_to_rewrite.push(info);
            }
        }
    }
    if drop.is_empty() && files_to_rewrite.is_empty() {
        let mut empty = RetentionPlan::empty(cutoff, logs.version());
        empty.files_read_for_versions = files_read_for_versions;
        return Ok((empty, deletion));
    }

    let traces = if count_traces {
        // Only `root_span_id` and the columns of the predicate are read, and
        // only from the files that lose rows.
        let paths = drop.iter().chain(&files_to_rewrite).map(|f| f.path.clone());
        let batches = scan(&ctx, table, paths, false)
            .await?
            .filter(deletion.expired())?
            .aggregate(
                vec![],
                vec![count_distinct(col("root_span_id")).alias("traces")],
            )?
            .collect()
            .await?;
        Some(batches.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
            b.column(0).as_primitive::<Int64Type>().value(0) as u64
        }))
    } else {
        None
    };

    let rows = drop
        .iter()
        .chain(&files_to_rewrite)
        .map(|f| f.expired_rows)
        .sum();
    let bytes_to_reclaim = drop.iter().map(|f| f.bytes).sum::<u64>()
        + files_to_rewrite
            .iter()
            .map(|f| {
                (u128::from(f.bytes) * u128::from(f.expired_rows) / u128::from(f.rows.max(1)))
                    as u64
            })
            .sum::<u64>();
    drop.sort_by(|a, b| a.path.cmp(&b.path));
    files_to_rewrite.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((
        RetentionPlan {
            cutoff,
            version: logs.version(),
            rows,
            traces,
            files_to_drop: drop,
            files_to_rewrite,
            bytes_to_reclaim,
            files_read_for_versions,
        },
        deletion,
    ))
}

/// `batch` with the columns and types of the stored schema (the scan may hand
/// out string views).
fn to_physical(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = schema::physical_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                Error::Internal(format!("retention rewrite lost column `{}`", field.name()))
            })?;
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                Ok(arrow::compute::cast(column, field.data_type())?)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Delete data files written for a commit that did not happen (best effort:
/// a file left behind is an orphan that vacuum deletes after the grace).
async fn delete_written(table: &DeltaTable, adds: &[Action]) {
    let store = table.object_store();
    for action in adds {
        if let Action::Add(add) = action
            && let Err(e) = store
                .delete(&deltalake::Path::from(add.path.as_str()))
                .await
        {
            tracing::warn!(path = %add.path, error = %e, "could not delete an uncommitted retention file; vacuum will remove it");
        }
    }
}

/// Run retention on `project` with `cutoff`: under the project's write lock,
/// plan, then (unless `dry_run`) rewrite the straddling files and commit, in
/// one Delta commit, the removal of the dropped and rewritten files with the
/// addition of the rewritten ones. Returns the plan and what the run did.
///
/// A preview (`dry_run`) counts traces; a run does not (`traces: None`), so
/// that dropped files stay unread; every other figure is the same.
pub async fn run_retention(
    store: &Store,
    project: &Project,
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<(RetentionPlan, RetentionMetrics)> {
    if dry_run {
        // A preview takes no lock and creates nothing.
        let logs = store.logs(project).await?;
        let plan = plan_retention(&logs, cutoff).await?;
        return Ok((
            plan,
            RetentionMetrics {
                dry_run: true,
                ..RetentionMetrics::default()
            },
        ));
    }
    if store.logs(project).await?.table().is_none() {
        return Ok((
            RetentionPlan::empty(cutoff, None),
            RetentionMetrics::default(),
        ));
    }
    let started = Instant::now();
    let (logs, lock) = store.logs_for_write(project).await?;
    let (plan, deletion) = plan(&logs, cutoff, false).await?;
    let table = logs
        .table()
        .ok_or_else(|| Error::Internal("no table after opening it for write".into()))?;
    if plan.is_empty() {
        drop(lock);
        return Ok((plan, RetentionMetrics::default()));
    }

    // Rewrite the straddling files without their expired rows.
    let mut adds = Vec::new();
    let mut rows_copied = 0u64;
    if !plan.files_to_rewrite.is_empty() {
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state())?;
        let columns: Vec<Expr> = schema::physical_schema()
            .fields()
            .iter()
            .map(|f| col(f.name().as_str()))
            .collect();
        let mut stream = scan(
            &ctx,
            table,
            plan.files_to_rewrite.iter().map(|f| f.path.clone()),
            false,
        )
        .await?
        .filter(not(deletion.expired()))?
        .select(columns)?
        .execute_stream()
        .await?;
        let mut writer = RecordBatchWriter::for_table(table)?
            .with_writer_properties(schema::writer_properties());
        let written = async {
            while let Some(batch) = stream.next().await {
                let batch = to_physical(&batch?)?;
                rows_copied += batch.num_rows() as u64;
                writer.write(batch).await?;
            }
            Ok::<_, Error>(())
        }
        .await;
        let flushed = writer.flush().await;
        adds = flushed?.into_iter().map(Action::Add).collect();
        if let Err(e) = written {
            delete_written(table, &adds).await;
            return Err(e);
        }
        let planned: u64 = plan
            .files_to_rewrite
            .iter()
            .map(|f| f.rows - f.expired_rows)
            .sum();
        if rows_copied != planned {
            delete_written(table, &adds).await;
            return Err(Error::Internal(format!(
                "retention rewrite copied {rows_copied} rows where its plan keeps {planned}; nothing was committed"
            )));
        }
    }
    crate::export::kill_point("retention_after_files");

    // One commit: remove dropped and rewritten files, add the new ones.
    let gone: HashSet<&str> = plan
        .files_to_drop
        .iter()
        .chain(&plan.files_to_rewrite)
        .map(|f| f.path.as_str())
        .collect();
    let mut actions: Vec<Action> = table
        .snapshot()?
        .log_data()
        .iter()
        .filter(|view| gone.contains(view.path().as_ref()))
        .map(|view| Action::Remove(view.remove_action(true)))
        .collect();
    if actions.len() != gone.len() {
        delete_written(table, &adds).await;
        return Err(Error::Internal(format!(
            "retention planned {} files to remove but the snapshot has {} of them",
            gone.len(),
            actions.len()
        )));
    }
    let files_added = adds.len() as u64;
    actions.extend(adds.iter().cloned());
    let operation = DeltaOperation::Delete {
        predicate: Some(format!(
            "created < '{}'",
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        )),
    };
    // Once its log entry exists the commit stands (its after-commit work
    // never fails it): the files it adds are deleted only when nothing was
    // committed, never from under a commit.
    let mut table = table.clone();
    let committed = commit_durably(
        &mut table,
        actions,
        operation,
        HashMap::new(),
        store.fsync(),
    )
    .await;
    let version = match committed {
        Ok(version) => version,
        Err(e) => {
            delete_written(&table, &adds).await;
            return Err(e);
        }
    };
    drop(lock);
    let metrics = RetentionMetrics {
        dry_run: false,
        version: Some(version),
        rows_deleted: plan.rows,
        files_removed: gone.len() as u64,
        files_added,
        files_dropped: plan.files_to_drop.len() as u64,
        files_rewritten: plan.files_to_rewrite.len() as u64,
        rows_copied,
        execution_time_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok((plan, metrics))
}

/// Whether a commit's log entry (JSON lines) removes any of `paths`.
fn removes_any(entry: &[u8], paths: &HashSet<&str>) -> bool {
    entry.split(|&b| b == b'\n').any(|line| {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|action| {
                action
                    .get("remove")
                    .and_then(|r| r.get("path"))
                    .and_then(|p| p.as_str())
                    .map(|p| {
                        let decoded = percent_decode(p);
                        paths.contains(p) || paths.contains(decoded.as_str())
                    })
            })
            .unwrap_or(false)
    })
}

/// `%xx` escapes of a path in the Delta log, decoded.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The record of what vacuums purged, in the project's directory.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct VacuumRecord {
    /// Table versions below this one may have lost data files.
    purged_before_version: i64,
    /// When that vacuum ran (RFC 3339).
    vacuumed_at: String,
}

fn project_dir(store: &Store, project: &Project) -> std::path::PathBuf {
    store.data_dir().join("projects").join(&project.id)
}

fn read_record(dir: &Path) -> Result<Option<VacuumRecord>> {
    let path = dir.join(VACUUM_RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Internal(format!("`{}` is not a vacuum record: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Replace the vacuum record (write a temporary file, rename it). With
/// `fsync`, the record is on disk when this returns: the vacuum deletes files
/// only after it, so a power loss cannot leave purged snapshots unrecorded.
fn write_record(dir: &Path, record: &VacuumRecord, fsync: bool) -> Result<()> {
    let path = dir.join(VACUUM_RECORD);
    let temp = dir.join(format!("{VACUUM_RECORD}.tmp"));
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Internal(format!("vacuum record: {e}")))?;
    std::fs::write(&temp, body).map_err(|e| Error::io(&temp, e))?;
    if fsync {
        durable::sync_path(&temp)?;
    }
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    if fsync {
        durable::sync_path(dir)?;
    }
    Ok(())
}

/// Fail with a clear error when table version `version` of the project in
/// `project_dir` may have lost data files to a vacuum (a query cursor or a
/// pinned read older than the grace period), instead of reading a partial
/// snapshot.
pub fn check_snapshot_kept(project_dir: &Path, project: &Project, version: i64) -> Result<()> {
    match read_record(project_dir)? {
        Some(record) if version < record.purged_before_version => {
            Err(Error::InvalidArgument(format!(
                "snapshot version {version} of project `{}` is no longer readable: a vacuum at {} \
                 purged data files of versions before {} (retention keeps deleted files only for \
                 its grace period); a query cursor lives at most that long: run the query again \
                 without the cursor",
                project.name, record.vacuumed_at, record.purged_before_version
            )))
        }
        _ => Ok(()),
    }
}

/// Delete from storage the data files of `project` that the table stopped
/// referencing more than `grace` ago, and orphan files older than `grace`
/// (now from the system clock). See [`vacuum_at`].
pub async fn vacuum(
    store: &Store,
    project: &Project,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<VacuumMetrics> {
    vacuum_at(store, project, Utc::now(), grace, dry_run).await
}

/// Whether a path relative to the table root is a data file (not the log,
/// not hidden: Delta ignores names starting with `_` or `.`).
fn is_data_path(path: &str) -> bool {
    !path
        .split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

/// Delete from storage the data files of `project` that
/// - were removed from the table (tombstones) before `now - grace`, and
///   before the commit of the oldest table version pinned by a running export
///   (so that every version from that one on stays whole), or
/// - no commit references (orphans of a crashed ingest or rewrite) and were
///   last written before `now - grace`,
///
/// and that no pinned version references. Takes the project's write lock
/// unless `dry_run`, so no writer of this store is between writing its files
/// and committing them; the grace period guards any other. Files go oldest
/// removal first; before deleting any, the versions that may lose files are
/// recorded (see [`check_snapshot_kept`]).
pub async fn vacuum_at(
    store: &Store,
    project: &Project,
    now: DateTime<Utc>,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<VacuumMetrics> {
    let grace = TimeDelta::from_std(grace)
        .map_err(|_| Error::InvalidArgument("vacuum grace period is too long".into()))?;
    if store.logs(project).await?.table().is_none() {
        return Ok(VacuumMetrics {
            dry_run,
            ..VacuumMetrics::default()
        });
    }
    let (logs, lock) = if dry_run {
        (store.logs(project).await?, None)
    } else {
        let (logs, lock) = store.logs_for_write(project).await?;
        (logs, Some(lock))
    };
    let table = logs
        .table()
        .ok_or_else(|| Error::Internal("table vanished while opening it".into()))?;
    let current = logs.version().unwrap_or(0);
    let object_store = table.object_store();
    let horizon = (now - grace).timestamp_millis();

    // Commit times of the versions, from the log's listing.
    let mut commit_millis: HashMap<i64, i64> = HashMap::new();
    let log_dir = deltalake::Path::from("_delta_log");
    let mut listing = object_store.list(Some(&log_dir));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(deltalake::DeltaTableError::from)?;
        if let Some(name) = meta.location.filename()
            && let Some(stem) = name.strip_suffix(".json")
            && stem.len() == 20
            && let Ok(v) = stem.parse::<i64>()
        {
            commit_millis.insert(v, meta.last_modified.timestamp_millis());
        }
    }

    // Pins: their files are kept, and tombstones younger than the oldest
    // pinned commit too (so every version from it on stays whole).
    let state = crate::automation::state::StateDb::open(&store.data_dir().join(STATE_DB))?;
    let pinned: Vec<i64> = state
        .pinned_versions(&project.id)?
        .into_iter()
        .filter(|&v| v < current)
        .collect();
    let mut keep: HashSet<String> = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect();
    let mut tombstone_horizon = horizon;
    for &v in &pinned {
        let mut old = table.clone();
        old.load_version(u64::try_from(v).unwrap_or(0)).await?;
        keep.extend(
            old.snapshot()?
                .log_data()
                .iter()
                .map(|f| f.path().into_owned()),
        );
        if let Some(&millis) = commit_millis.get(&v) {
            tombstone_horizon = tombstone_horizon.min(millis);
        }
    }

    // Tombstones old enough, oldest first.
    let mut tombstones: Vec<(i64, String)> = Vec::new();
    let mut tombstoned: HashSet<String> = HashSet::new();
    let mut stream = table.snapshot()?.all_tombstones(table.log_store().as_ref());
    while let Some(t) = stream.next().await {
        let t = t?;
        let path = t.path().into_owned();
        let removed = t.deletion_timestamp().unwrap_or(0);
        if removed < tombstone_horizon && !keep.contains(&path) {
            tombstones.push((removed, path.clone()));
        }
        tombstoned.insert(path);
    }
    drop(stream);
    tombstones.sort();

    // Every object under the table: sizes, and orphans.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut orphans: Vec<(i64, String)> = Vec::new();
    let mut listing = object_store.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(deltalake::DeltaTableError::from)?;
        let path = meta.location.to_string();
        if !is_data_path(&path) {
            continue;
        }
        sizes.insert(path.clone(), meta.size);
        let written = meta.last_modified.timestamp_millis();
        if !keep.contains(&path) && !tombstoned.contains(&path) && written < horizon {
            orphans.push((written, path));
        }
    }
    orphans.sort();

    // Tombstoned files already gone (an earlier vacuum) are skipped.
    let removed_max = tombstones
        .iter()
        .filter(|(_, p)| sizes.contains_key(p))
        .map(|(t, _)| *t)
        .max();
    let paths: Vec<String> = tombstones
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| sizes.contains_key(p))
        .chain(orphans.iter().map(|(_, p)| p.clone()))
        .collect();
    let bytes = paths.iter().filter_map(|p| sizes.get(p)).sum();
    let metrics = VacuumMetrics {
        dry_run,
        files_deleted: paths.len() as u64,
        bytes,
        orphans: orphans.len() as u64,
        pinned_versions: pinned,
        paths,
    };
    if dry_run || metrics.paths.is_empty() {
        return Ok(metrics);
    }

    // Record the versions that may lose files before losing any: a file
    // removed at version `r` is referenced only by versions before `r`, so
    // the newest version that removed a purged file bounds the versions that
    // lose files. It is found in the log, newest first, starting at the last
    // version logged no later than the newest removal stamp (plus a margin:
    // file times are coarse, and may even precede the stamp they follow).
    if let Some(stamp) = removed_max {
        let purged: HashSet<&str> = metrics.paths.iter().map(String::as_str).collect();
        let mut versions: Vec<i64> = commit_millis
            .iter()
            .filter(|&(_, &millis)| millis <= stamp + 60_000)
            .map(|(&v, _)| v)
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let mut purged_before = 0;
        for version in versions {
            let Some(entry) = table
                .log_store()
                .read_commit_entry(u64::try_from(version).unwrap_or(0))
                .await?
            else {
                continue;
            };
            if removes_any(&entry, &purged) {
                purged_before = version;
                break;
            }
        }
        if purged_before == 0 {
            // Not found (the log was cleaned up): every version up to the
            // current one may have lost files.
            purged_before = current;
        }
        let dir = project_dir(store, project);
        let previous = read_record(&dir)?.map_or(0, |r| r.purged_before_version);
        if purged_before > previous {
            write_record(
                &dir,
                &VacuumRecord {
                    purged_before_version: purged_before,
                    vacuumed_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                },
                store.fsync(),
            )?;
        }
    }
    for (i, path) in metrics.paths.iter().enumerate() {
        match object_store
            .delete(&deltalake::Path::from(path.as_str()))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "vacuum could not delete `{path}` of project `{}` after deleting {i} file(s): {e}; run it again",
                    project.name
                )));
            }
        }
        if i == 0 {
            crate::export::kill_point("vacuum_mid");
        }
    }
    drop(lock);
    Ok(metrics)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{IngestOptions, ingest};

    fn day(d: i64, hour: u32) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + TimeDelta::days(d)
            + TimeDelta::hours(i64::from(hour))
    }

    fn event(id: &str, root: &str, created: DateTime<Utc>) -> String {
        serde_json::json!({
            "id": id,
            "span_id": id,
            "root_span_id": root,
            "created": created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "input": format!("input of {id} {}", "x".repeat(200)),
        })
        .to_string()
    }

    async fn ingest_lines(store: &Store, project: &Project, lines: &[String]) {
        let input = std::io::Cursor::new(lines.join("\n").into_bytes());
        ingest(
            store,
            project,
            Box::new(input),
            "test",
            &IngestOptions::default(),
        )
        .await
        .unwrap();
    }

    /// Ten days, one commit (file) per day, four traces of 5 spans a day;
    /// then one commit spanning days 2..=9 (a file straddling the cutoff).
    /// Returns every `created` ingested.
    async fn fixture(store: &Store, project: &Project) -> Vec<DateTime<Utc>> {
        let mut all = Vec::new();
        for d in 0..10 {
            let mut lines = Vec::new();
            for t in 0..4 {
                for s in 0..5 {
                    let created = day(d, t * 5 + s);
                    lines.push(event(
                        &format!("d{d}t{t}s{s}"),
                        &format!("d{d}t{t}"),
                        created,
                    ));
                    all.push(created);
                }
            }
            ingest_lines(store, project, &lines).await;
        }
        let mut lines = Vec::new();
        for d in 2..10 {
            // One trace per day continues in the late commit.
            let created = day(d, 23);
            lines.push(event(&format!("late{d}"), &format!("d{d}t0"), created));
            all.push(created);
        }
        ingest_lines(store, project, &lines).await;
        all
    }

    async fn resolved_count(store: &Store, project: &Project) -> usize {
        let logs = store.logs(project).await.unwrap();
        let ctx = crate::query::session(&crate::query::QueryOptions::default()).unwrap();
        let batches = logs
            .resolved_view(&ctx)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        batches.iter().map(|b| b.num_rows()).sum()
    }

    fn dir_bytes(path: &std::path::Path) -> u64 {
        let mut total = 0;
        for entry in std::fs::read_dir(path).unwrap() {
            let entry = entry.unwrap();
            let meta = entry.metadata().unwrap();
            total += if meta.is_dir() {
                dir_bytes(&entry.path())
            } else {
                meta.len()
            };
        }
        total
    }

    #[test]
    fn cutoff_refuses_zero_days_unless_forced() {
        let now = day(10, 0);
        let err = cutoff_for(now, 0, false).unwrap_err();
        assert!(err.to_string().contains("retention_days is 0"), "{err}");
        assert_eq!(cutoff_for(now, 0, true).unwrap(), now);
        assert_eq!(cutoff_for(now, 3, false).unwrap(), day(7, 0));
        assert!(cutoff_for(now, u32::MAX, false).is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn plan_run_and_vacuum() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().unwrap().resolve_or_create("p").unwrap();
        let created = fixture(&store, &project).await;
        let cutoff = cutoff_for(day(10, 12), 5, false).unwrap(); // day 5, 12:00
        let expected_rows = created.iter().filter(|c| **c < cutoff).count() as u64;
        assert_eq!(resolved_count(&store, &project).await, created.len());

        // Dry run: the plan, nothing changes.
        let before = store.logs(&project).await.unwrap().version();
        let (preview, metrics) = run_retention(&store, &project, cutoff, true).await.unwrap();
        assert!(metrics.dry_run);
        assert_eq!(metrics.version, None);
        assert_eq!(store.logs(&project).await.unwrap().version(), before);
        assert_eq!(resolved_count(&store, &project).await, created.len());

        assert_eq!(preview.cutoff, cutoff);
        assert_eq!(preview.rows, expected_rows);
        // Days 0..=4 whole (20 traces), day 5 traces 0 and 1 (hours 0..=9 < 12),
        // trace 2 (hours 10..=14) partly; the late rows of days 2..=4 join
        // traces already counted.
        assert_eq!(preview.traces, Some(20 + 3));
        // Days 0..=4 are dropped; day 5 and the late file straddle.
        assert_eq!(preview.files_to_drop.len(), 5);
        assert_eq!(preview.files_to_rewrite.len(), 2);
        assert!(
            preview
                .files_to_drop
                .iter()
                .all(|f| f.rows == 20 && f.expired_rows == 20)
        );
        assert!(preview.bytes_to_reclaim > 0);

        // The run applies exactly the plan, in one commit.
        let (plan, metrics) = run_retention(&store, &project, cutoff, false)
            .await
            .unwrap();
        assert_eq!(plan.figures(), preview.figures());
        assert_eq!(plan.files_to_drop, preview.files_to_drop);
        assert_eq!(plan.files_to_rewrite, preview.files_to_rewrite);
        assert_eq!(
            plan.traces, None,
            "a run does not read dropped files to count traces"
        );
        assert!(!metrics.dry_run);
        assert_eq!(metrics.version, before.map(|v| v + 1));
        assert_eq!(metrics.rows_deleted, plan.rows);
        assert_eq!(
            metrics.files_removed,
            (plan.files_to_drop.len() + plan.files_to_rewrite.len()) as u64
        );
        assert_eq!(metrics.files_dropped, 5);
        assert_eq!(metrics.files_rewritten, 2);
        let live = created.iter().filter(|c| **c >= cutoff).count();
        assert_eq!(resolved_count(&store, &project).await, live);
        assert_eq!(
            metrics.rows_copied,
            plan.files_to_rewrite
                .iter()
                .map(|f| f.rows - f.expired_rows)
                .sum::<u64>()
        );

        // A second run has nothing to do.
        let (again, metrics) = run_retention(&store, &project, cutoff, false)
            .await
            .unwrap();
        assert!(again.is_empty());
        assert_eq!(metrics.version, None);

        // Vacuum: with the default grace nothing is old enough yet.
        let table_dir = dir.path().join("projects").join(&project.id).join("logs");
        let kept = vacuum(
            &store,
            &project,
            std::time::Duration::from_secs(86_400),
            false,
        )
        .await
        .unwrap();
        assert_eq!(kept.files_deleted, 0);
        // With grace 0 (a moment later), the 7 removed files go.
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let preview = vacuum(&store, &project, std::time::Duration::ZERO, true)
            .await
            .unwrap();
        assert_eq!(preview.files_deleted, 7);
        let bytes_before = dir_bytes(&table_dir);
        let done = vacuum(&store, &project, std::time::Duration::ZERO, false)
            .await
            .unwrap();
        assert_eq!(done.files_deleted, 7);
        assert_eq!(done.bytes, preview.bytes);
        assert!(done.bytes > 0);
        let bytes_after = dir_bytes(&table_dir);
        assert!(
            bytes_after < bytes_before,
            "{bytes_after} >= {bytes_before}"
        );
        assert!(bytes_before - bytes_after + 4096 >= done.bytes);
        // Reads are unaffected.
        assert_eq!(resolved_count(&store, &project).await, live);
    }

    /// `(id, created, output)` of every resolved row, by id.
    async fn resolved_rows(
        store: &Store,
        project: &Project,
    ) -> Vec<(String, Option<i64>, Option<String>)> {
        let logs = store.logs(project).await.unwrap();
        let ctx = crate::query::session(&crate::query::QueryOptions::default()).unwrap();
        let batches = logs
            .resolved_view(&ctx)
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut rows = Vec::new();
        for batch in &batches {
            let batch = arrow::compute::cast(
                &arrow::array::StructArray::from(batch.clone()) as &dyn Array,
                &DataType::Struct(
                    batch
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| match f.data_type() {
                            DataType::Utf8View => {
                                Arc::new(f.as_ref().clone().with_data_type(DataType::Utf8))
                            }
                            _ => Arc::clone(f),
                        })
                        .collect(),
                ),
            )
            .unwrap();
            let batch = RecordBatch::from(batch.as_struct());
            let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
            let created = batch
                .column_by_name("created")
                .unwrap()
                .as_primitive::<TimestampMicrosecondType>();
            let output = batch.column_by_name("output").unwrap().as_string::<i32>();
            for i in 0..batch.num_rows() {
                rows.push((
                    ids.value(i).to_string(),
                    created.is_valid(i).then(|| created.value(i)),
                    output.is_valid(i).then(|| output.value(i).to_string()),
                ));
            }
        }
        rows.sort();
        rows
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn versions_of_an_expired_row_go_together() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().unwrap().resolve_or_create("p").unwrap();
        let old = day(0, 0);
        let new = day(9, 0);
        let cutoff = day(5, 0);
        let at = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let line = |v: serde_json::Value| v.to_string();
        // Commit 1 (old and new rows, first versions only).
        ingest_lines(
            &store,
            &project,
            &[
                event("a", "a", old),
                event("b", "b", old),
                event("c", "c", new),
                event("f", "f", old),
            ],
        )
        .await;
        // Commit 2: a clean file of new rows only (never read unless needed).
        ingest_lines(
            &store,
            &project,
            &[event("g", "g", new), event("e", "e", new)],
        )
        .await;
        // Commit 3: later versions.
        ingest_lines(
            &store,
            &project,
            &[
                // Merges keep the row's `created`: null here.
                line(serde_json::json!({"id": "a", "_is_merge": true, "output": "a2"})),
                // A replace starts the row again, with a new `created`.
                line(serde_json::json!({"id": "b", "created": at(new), "output": "b2"})),
                // A merge's own `created` is ignored: c stays, merged.
                line(serde_json::json!({"id": "c", "_is_merge": true, "created": at(old), "output": "c2"})),
                line(serde_json::json!({"id": "g", "_is_merge": true, "created": at(old), "output": "g2"})),
                // A merge onto no row starts it, with its own `created`.
                line(serde_json::json!({"id": "d", "_is_merge": true, "created": at(old), "output": "d1"})),
                line(serde_json::json!({"id": "e", "_object_delete": true})),
                line(serde_json::json!({"id": "f", "_object_delete": true})),
            ],
        )
        .await;
        let before = resolved_rows(&store, &project).await;
        let ids = |rows: &[(String, Option<i64>, Option<String>)]| {
            rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(&before), ["a", "b", "c", "d", "g"]);

        let (preview, _) = run_retention(&store, &project, cutoff, true).await.unwrap();
        // a: 2 versions; b: its old replace; d: 1; f: 2 (old row, then its delete).
        assert_eq!(preview.rows, 2 + 1 + 1 + 2, "{preview:?}");
        assert!(preview.files_read_for_versions > 0);
        let (plan, metrics) = run_retention(&store, &project, cutoff, false)
            .await
            .unwrap();
        assert_eq!(plan.figures(), preview.figures());
        assert_eq!(metrics.rows_deleted, 6);

        let after = resolved_rows(&store, &project).await;
        let new_micros = Some(new.timestamp_micros());
        assert_eq!(
            after,
            vec![
                ("b".to_string(), new_micros, Some("\"b2\"".to_string())),
                ("c".to_string(), new_micros, Some("\"c2\"".to_string())),
                ("g".to_string(), new_micros, Some("\"g2\"".to_string())),
            ],
            "no half rows: `a` and `d` went whole, `c` and `g` kept their merges"
        );
        // Row versions left: b 1, c 2, g 2, e 2 (a new row, then its delete).
        let logs = store.logs(&project).await.unwrap();
        let stored: i64 = logs
            .table()
            .unwrap()
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|f| f.num_records().unwrap() as i64)
            .sum();
        assert_eq!(stored, 7);
        // Nothing left to do.
        let (again, _) = run_retention(&store, &project, cutoff, false)
            .await
            .unwrap();
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn fate_of_an_ids_versions() {
        let cut = 1_000;
        let v = |op: VersionOp, created: Option<i64>| Version {
            xact: 0,
            seq: 0,
            op: op as i32,
            created,
            file: 0,
        };
        use VersionOp::{Delete, Merge, NewReplace, Replace};
        let (old, new) = (Some(10), Some(2_000));
        // An expired row goes with its merges (no half row).
        assert_eq!(
            decide(&[v(NewReplace, old), v(Merge, None)], cut, false),
            Fate::All
        );
        // A merge's own `created` does not expire a live row.
        assert_eq!(
            decide(&[v(NewReplace, new), v(Merge, old)], cut, false),
            Fate::Keep
        );
        // Superseded by a newer replace: the old incarnation goes alone.
        assert_eq!(
            decide(&[v(NewReplace, old), v(Replace, new)], cut, false),
            Fate::Prefix(1)
        );
        // The row queries see expired: everything goes, the newer
        // incarnation before it too (it must not come back).
        assert_eq!(
            decide(&[v(NewReplace, new), v(Replace, old)], cut, false),
            Fate::All
        );
        // Deleted then started again by a merge: the deleted one goes.
        assert_eq!(
            decide(
                &[v(NewReplace, old), v(Delete, None), v(Merge, None)],
                cut,
                false
            ),
            Fate::Prefix(2)
        );
        assert_eq!(
            decide(&[v(NewReplace, old), v(Delete, None)], cut, false),
            Fate::All
        );
        // A null `created` is kept.
        assert_eq!(
            decide(&[v(NewReplace, None), v(Merge, old)], cut, false),
            Fate::Keep
        );
        // Without its first version, the fate waits for a look at the files
        // not read yet.
        assert_eq!(decide(&[v(Merge, old)], cut, false), Fate::NeedFirst);
        assert_eq!(decide(&[v(Merge, old)], cut, true), Fate::All);
        assert_eq!(
            decide(&[v(Merge, None), v(Merge, old)], cut, false),
            Fate::Keep
        );
    }

    #[tokio::test]
    async fn empty_project_plans_nothing_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().unwrap().resolve_or_create("p").unwrap();
        let (plan, metrics) = run_retention(&store, &project, day(0, 0), false)
            .await
            .unwrap();
        assert!(plan.is_empty());
        assert_eq!(metrics, RetentionMetrics::default());
        assert!(store.logs(&project).await.unwrap().table().is_none());
        let v = vacuum(&store, &project, std::time::Duration::ZERO, false)
            .await
            .unwrap();
        assert_eq!(v.files_deleted, 0);
    }
}

/// A retention automation's configuration, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Rows created more than this many days before a run are deleted.
    pub retention_days: u32,
    /// Deleted rows' files are purged after this period (e.g. `24h`).
    pub grace: String,
    /// How often it runs (e.g. `24h`).
    pub interval: String,
    /// Allow `retention_days = 0`.
    #[serde(default)]
    pub force: bool,
}

impl RetentionConfig {
    /// Check every field; returns `(grace, interval)`.
    pub fn validate(&self) -> Result<(std::time::Duration, std::time::Duration)> {
        let mut problems = Vec::new();
        if self.retention_days == 0 && !self.force {
            problems.push(
                "retention_days: 0 deletes every row; use at least 1, or force it".to_string(),
            );
        }
        let grace = crate::automation::config::parse_duration(&self.grace)
            .map_err(|e| problems.push(format!("grace: {e}")))
            .ok();
        let interval = crate::automation::config::parse_duration(&self.interval)
            .map_err(|e| problems.push(format!("interval: {e}")))
            .ok();
        if interval.is_some_and(|i| i < std::time::Duration::from_secs(60)) {
            problems.push("interval: must be at least `1m`".to_string());
        }
        match (grace, interval) {
            (Some(grace), Some(interval)) if problems.is_empty() => Ok((grace, interval)),
            _ => Err(Error::InvalidArgument(format!(
                "invalid retention configuration:\n  {}",
                problems.join("\n  ")
            ))),
        }
    }
}

fn plan_json(plan: &RetentionPlan) -> serde_json::Value {
    serde_json::json!({
        "cutoff": plan.cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "rows": plan.rows,
        "traces": plan.traces,
        "files_to_drop": plan.files_to_drop.len(),
        "files_to_rewrite": plan.files_to_rewrite.len(),
        "bytes_to_reclaim": plan.bytes_to_reclaim,
        "files_read_for_versions": plan.files_read_for_versions,
    })
}

/// Run (or, with `dry_run`, preview) a retention automation: one cutoff,
/// the planned delete in one commit, then a vacuum of files unreferenced for
/// longer than the grace period; recorded in the run history.
pub async fn run_retention_automation(
    store: &Store,
    state: &crate::automation::state::StateDb,
    automation: &crate::automation::state::Automation,
    trigger: crate::automation::state::Trigger,
    dry_run: bool,
) -> Result<serde_json::Value> {
    use crate::automation::state::{RunOutcome, RunStatus};
    let config: RetentionConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored retention config: {e}")))?;
    let (grace, _interval) = config.validate()?;
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    let cutoff = cutoff_for(Utc::now(), config.retention_days, config.force)?;
    if dry_run {
        let (plan, _) = run_retention(store, &project, cutoff, true).await?;
        let purge = vacuum(store, &project, grace, true).await?;
        let mut preview = plan_json(&plan);
        preview["files_purgeable_now"] = purge.files_deleted.into();
        preview["bytes_purgeable_now"] = purge.bytes.into();
        preview["pinned_versions"] = purge.pinned_versions.into();
        return Ok(preview);
    }
    let run_id = uuid::Uuid::now_v7().to_string();
    let holder = crate::automation::state::lease_holder(&run_id);
    if !state.try_lease(
        &automation.id,
        &holder,
        std::time::Duration::from_secs(3600),
    )? {
        return Err(Error::InvalidArgument(format!(
            "automation `{}` is running already (another process holds its lease)",
            automation.name
        )));
    }
    // A run left `running` by a process that died (the lease was free or
    // taken over): its commit, if it made one, stands; this run redoes the
    // rest (orphan files included, once older than the grace).
    for stale in state.runs(&automation.id, 100)? {
        if stale.status == RunStatus::Running {
            state.fail_run(
                &stale.run_id,
                "interrupted (its process died); the next run finished its work",
            )?;
        }
    }
    let cutoff_text = cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    state.start_run(
        &automation.id,
        &run_id,
        trigger,
        None,
        None,
        &serde_json::json!({ "cutoff": cutoff_text }),
    )?;
    let result = async {
        let (plan, metrics) = run_retention(store, &project, cutoff, false).await?;
        let purged = vacuum(store, &project, grace, false).await?;
        Ok::<_, Error>((plan, metrics, purged))
    }
    .await;
    let outcome = match result {
        Ok((plan, metrics, purged)) => {
            let mut details = plan_json(&plan);
            details["rows_deleted"] = metrics.rows_deleted.into();
            details["files_dropped"] = metrics.files_dropped.into();
            details["files_rewritten"] = metrics.files_rewritten.into();
            details["rows_copied"] = metrics.rows_copied.into();
            details["files_added"] = metrics.files_added.into();
            details["version"] = metrics.version.into();
            details["files_purged"] = purged.files_deleted.into();
            details["orphans_purged"] = purged.orphans.into();
            details["bytes_purged"] = purged.bytes.into();
            details["pinned_versions"] = purged.pinned_versions.clone().into();
            let outcome = RunOutcome {
                rows: metrics.rows_deleted,
                bytes: purged.bytes,
                files: metrics.files_dropped + metrics.files_rewritten,
                cursor_to: None,
                details: details.clone(),
            };
            state.finish_run(&run_id, RunStatus::Succeeded, &outcome)?;
            Ok(details)
        }
        Err(e) => {
            state.fail_run(&run_id, &e.to_string())?;
            Err(e)
        }
    };
    state.release_lease(&automation.id, &holder)?;
    outcome
}
