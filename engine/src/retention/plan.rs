//! The retention plan: which rows a cutoff deletes, and which data files
//! must be rewritten or dropped for it (see the module docs of
//! [`crate::retention`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use chrono::{DateTime, TimeDelta, Utc};
use datafusion::common::ScalarValue;
use datafusion::error::DataFusionError;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
    col, lit,
};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use futures::TryStreamExt;

use crate::error::{Error, Result};
use crate::store::ProjectLogs;
use crate::store::scan::VersionScan;
use crate::store::schema::{OP, SEQ, VersionOp, XACT_ID};

/// Name of the column holding each row's data file in the planning scans.
pub(super) const FILE_COLUMN: &str = "__spanlake_file";

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
    pub(super) fn empty(cutoff: DateTime<Utc>, version: Option<i64>) -> Self {
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
pub(super) enum Side {
    /// Every row is older than the cutoff.
    Old,
    /// No row is older than the cutoff (or all are null).
    New,
    /// Unknown from statistics alone.
    Straddle,
}

/// Statistics of one file, from its add action.
pub(super) struct FileStats {
    pub(super) info: FileInfo,
    pub(super) side: Side,
    /// Whether every row has `_op = 0` (first versions only).
    pub(super) clean: bool,
}

pub(super) fn parse_stats_timestamp(value: &serde_json::Value) -> Option<i64> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
        .or_else(|| crate::ingest::parse_datetime_micros(text))
}

pub(super) fn file_stats(view: &deltalake::kernel::LogicalFileView, cut: i64) -> FileStats {
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

pub(super) fn cutoff_literal(cutoff: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(cutoff.timestamp_micros()),
        Some(Arc::from("UTC")),
    ))
}

/// Which rows a run deletes: rows of single-version ids by their `created`,
/// versions of multi-version ids as decided per id (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct Deletion {
    pub(super) cutoff: DateTime<Utc>,
    /// Ids with more than one version (some version has `_op != 0`).
    pub(super) multi: Arc<HashSet<String>>,
    /// `(_xact_id, _seq)` of the versions of `multi` ids that go.
    pub(super) doomed: Arc<HashSet<(i64, i64)>>,
}

impl Deletion {
    /// A boolean expression, never null: whether a stored row goes.
    pub(super) fn expired(&self) -> Expr {
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
pub(super) struct ExpiredUdf {
    pub(super) deletion: Deletion,
    pub(super) signature: Signature,
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
pub(super) fn id_in(ids: &Arc<HashSet<String>>) -> Expr {
    crate::store::resolve::id_in_set(Arc::clone(ids))
}

/// One stored version of a multi-version id, as the decision needs it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Version {
    pub(super) xact: i64,
    pub(super) seq: i64,
    pub(super) op: i32,
    pub(super) created: Option<i64>,
    /// Index of its file in the plan's file list.
    pub(super) file: usize,
}

/// What the cutoff does to one id's versions.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Fate {
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
pub(super) fn decide(versions: &[Version], cut: i64, complete: bool) -> Fate {
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
pub(super) fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    paths: impl IntoIterator<Item = String>,
    with_file: bool,
) -> Result<datafusion::dataframe::DataFrame> {
    let mut scan = VersionScan::of(table).only(paths);
    if with_file {
        scan = scan.with_file_column(FILE_COLUMN);
    }
    scan.read(ctx)
}

/// The index of the file a scan's file column value names.
pub(super) struct FileIndex {
    pub(super) by_path: HashMap<String, usize>,
    pub(super) seen: HashMap<String, usize>,
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
pub(super) async fn read_versions(
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
    let mut stream = scan(ctx, table, paths, true)?
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
pub(super) async fn plan(
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
        let batches = scan(&ctx, table, mixed, false)?
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
        )?
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
        let batches = scan(&ctx, table, paths, false)?
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
