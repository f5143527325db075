//! Compaction of a project's log table: each id's row versions folded into
//! one clean version, and small files merged into larger ones, so that a read
//! after heavy merging costs about a scan of resolved rows.
//!
//! ```text
//!  snapshot V (no lock):
//!    files whose `_op` max (file stats) is not 0 ──scan `_op,_merge,id`──►
//!      F = ids with a version that needs a fold (not clean, not a compacted
//!          tombstone), D = the ids of F with a delete
//!    every file ──scan `id` for ids in F──► R = files holding a version of F
//!    R ∪= small files (when at least two files would be rewritten, one of
//!          them not written by a compaction)
//!    rewrite R:  rows of ids not in F ....... copied as they are
//!                ids in F ................... the existing fold (sorted with
//!                                             spilling), one clean row per id
//!                both sorted by (_xact_id, _seq), spilling, so that files keep
//!                narrow `_xact_id` ranges for incremental reads
//!                deleted ids of F ........... one compacted tombstone each, in
//!                                             files of their own
//!    ──► new Parquet files (rows out checked against the plan)
//!  write lock ─► the files of R still in the table? ─► one commit:
//!    remove R + add the new files, `dataChange = false`, operation OPTIMIZE
//! ```
//!
//! Invisible to readers and to the export cursor: a folded row keeps the
//! `_xact_id` of its id's latest version and the `_pagination_key` of its
//! first (kept in `_merge` when `(_xact_id, _seq)` does not give it back; see
//! `resolve`), so the resolved view, and `resolved_view_after(x)` for every
//! `x`, are the same before and after, byte for byte.
//!
//! Deletes: a deleted id is stored as its versions ending in a delete, and
//! resolves to nothing. Readers and exports never see it, but ingest needs to
//! know the id (a later replace of it is not a new id, and its row keeps the
//! id's first `_pagination_key`), so a deleted id is kept as one *compacted
//! tombstone* (`_op = 3`, `_merge` = its key), which reads skip without
//! folding.
//!
//! Safety:
//! - The heavy work reads snapshot V without the write lock, so ingest goes
//!   on meanwhile. The commit is made under the lock, on the latest version:
//!   commits since V can only have appended versions (their `_xact_id` is
//!   above every folded one, so they still apply after the compacted row)
//!   unless they removed a file of R (retention, another compaction): then
//!   nothing is committed and the error says to run again.
//! - One Delta commit: a crash before it leaves the table as it was, and the
//!   written files unreferenced (orphans, for a vacuum that lists files).
//! - Memory: the id sets F and D (as a read of the table holds them), the
//!   sort of the versions of F (spilling past the memory limit), and the
//!   writer's row group.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Int32Array, Int64Array, RecordBatch, StringArray,
};
use arrow::datatypes::DataType;
use arrow::datatypes::SchemaRef;
use arrow::datatypes::{Int32Type, Int64Type};
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::ScalarValue;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, ScalarUDF, cast, col, lit, not, when};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::{Action, Add};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use serde::Serialize;

use super::commit_durably;
use super::resolve::{IdInSet, PAGINATION_KEY, needs_fold, stored_pagination_key, utf8};
use super::scan::VersionScan;
use super::schema::{self, MERGE, OP, SEQ, VersionOp, XACT_ID, physical_schema};
use super::{ProjectLogs, Store};
use crate::error::{Error, Result};
use crate::metrics::{OpMetrics, Operation};
use crate::registry::Project;
use crate::session::SessionOptions;

/// Files are closed past this size (as ingest's).
pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 * 1024 * 1024;
/// Files under this size are merged with others.
pub const DEFAULT_SMALL_FILE_BYTES: u64 = 32 * 1024 * 1024;
/// Tag of the files that compaction wrote (Delta `add.tags`): their
/// non-clean rows are compacted tombstones, which need no compaction.
pub const COMPACTED_TAG: &str = "spanlake.compacted";

const FILE_COLUMN: &str = "__spanlake_file";

/// Options of a compaction.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// A new file is closed past this size.
    pub target_file_bytes: u64,
    /// Files under this size are rewritten together.
    pub small_file_bytes: u64,
    /// Memory of the sort of the versions to fold before it spills.
    pub memory_limit_bytes: usize,
    /// Plan only: report what would be rewritten, change nothing.
    pub dry_run: bool,
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_file_bytes: DEFAULT_TARGET_FILE_BYTES,
            small_file_bytes: DEFAULT_SMALL_FILE_BYTES,
            memory_limit_bytes: SessionOptions::default().memory_limit_bytes,
            dry_run: false,
        }
    }
}

/// What a compaction did (or, for a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CompactionReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Table version the plan was made on (`None`: no table).
    pub planned_version: Option<i64>,
    /// Table version of the compaction commit (`None`: no commit).
    pub version: Option<i64>,
    /// Ids whose versions were folded into one.
    pub ids_folded: u64,
    /// Of those, the deleted ids kept as a compacted tombstone (`None` for
    /// a dry run).
    pub tombstones: Option<u64>,
    /// Row versions in the files rewritten.
    pub rows_in: u64,
    /// Row versions written in their place.
    pub rows_out: u64,
    /// Files rewritten (removed from the table).
    pub files_in: u64,
    /// Files written (`None` for a dry run).
    pub files_out: Option<u64>,
    /// Bytes of the files rewritten.
    pub bytes_in: u64,
    /// Bytes of the files written (`None` for a dry run).
    pub bytes_out: Option<u64>,
    /// Files of the table left as they are.
    pub files_untouched: u64,
    /// Wall time, milliseconds.
    pub elapsed_ms: u64,
}

impl CompactionReport {
    /// Whether there was nothing to compact.
    pub fn is_noop(&self) -> bool {
        self.files_in == 0
    }
}

/// One data file, from the table's log.
#[derive(Debug, Clone)]
struct FileInfo {
    path: String,
    bytes: u64,
    rows: u64,
    /// Max of `_op` from the file statistics (`None`: unknown).
    op_max: Option<i64>,
    /// Written by a compaction.
    compacted: bool,
}

fn file_infos(table: &DeltaTable) -> Result<Vec<FileInfo>> {
    let mut files = Vec::new();
    for view in table.snapshot()?.log_data().iter() {
        let stats: Option<serde_json::Value> =
            view.stats().and_then(|s| serde_json::from_str(&s).ok());
        let op_max = stats
            .as_ref()
            .and_then(|s| s.get("maxValues")?.get(OP)?.as_i64());
        let rows = view
            .num_records()
            .map(|n| n as u64)
            .or_else(|| stats.as_ref()?.get("numRecords")?.as_u64())
            .unwrap_or(0);
        #[allow(deprecated)] // the only public way to the file's tags
        let compacted = view
            .add_action()
            .tags
            .is_some_and(|tags| tags.contains_key(COMPACTED_TAG));
        files.push(FileInfo {
            path: view.path().into_owned(),
            bytes: u64::try_from(view.size()).unwrap_or(0),
            rows,
            op_max,
            compacted,
        });
    }
    Ok(files)
}

/// Maps the file column of a scan (an absolute URL or a table path) to the
/// table-relative path of the log.
#[derive(Debug, Default)]
struct FileNames {
    known: HashMap<String, Option<String>>,
}

impl FileNames {
    fn resolve<'a>(
        &mut self,
        scanned: &str,
        paths: impl Iterator<Item = &'a String>,
    ) -> Option<String> {
        if let Some(found) = self.known.get(scanned) {
            return found.clone();
        }
        let mut found = None;
        for path in paths {
            if scanned == path || scanned.ends_with(&format!("/{path}")) {
                found = Some(path.clone());
                break;
            }
        }
        self.known.insert(scanned.to_string(), found.clone());
        found
    }
}

/// What to rewrite, computed on one snapshot.
#[derive(Debug)]
struct Plan {
    version: i64,
    files: Vec<FileInfo>,
    rewrite: BTreeSet<String>,
    fold_ids: Arc<HashSet<String>>,
    deleted_ids: Arc<HashSet<String>>,
    /// Row versions (in `rewrite`) of the ids in `fold_ids`.
    versions_folded: u64,
}

impl Plan {
    fn rows_in(&self) -> u64 {
        self.rewritten().map(|f| f.rows).sum()
    }

    fn rows_out(&self) -> u64 {
        self.rows_in() - self.versions_folded + self.fold_ids.len() as u64
    }

    fn rewritten(&self) -> impl Iterator<Item = &FileInfo> {
        self.files.iter().filter(|f| self.rewrite.contains(&f.path))
    }
}

fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    paths: Option<Vec<String>>,
    file_column: bool,
) -> Result<DataFrame> {
    let mut scan = VersionScan::of(table);
    if file_column {
        scan = scan.with_file_column(FILE_COLUMN);
    }
    if let Some(paths) = paths {
        scan = scan.only(paths);
    }
    scan.read(ctx)
}

fn in_set(ids: &Arc<HashSet<String>>) -> ScalarUDF {
    ScalarUDF::from(IdInSet::new(Arc::clone(ids)))
}

async fn plan(
    ctx: &SessionContext,
    logs: &ProjectLogs,
    options: &CompactOptions,
) -> Result<Option<Plan>> {
    let (Some(table), Some(version)) = (logs.table(), logs.version()) else {
        return Ok(None);
    };
    let files = file_infos(table)?;
    let all_paths: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
    // Files that may hold versions needing a fold: `_op` not all 0, and not
    // written by a compaction (whose only non-clean rows are tombstones).
    let candidates: Vec<String> = files
        .iter()
        .filter(|f| f.op_max != Some(0) && !f.compacted)
        .map(|f| f.path.clone())
        .collect();

    let mut rewrite = BTreeSet::new();
    let mut fold_ids = HashSet::new();
    let mut deleted_ids = HashSet::new();
    let mut names = FileNames::default();
    if !candidates.is_empty() {
        let mut stream = scan(ctx, table, Some(candidates.clone()), true)?
            .filter(needs_fold())?
            .select(vec![col(FILE_COLUMN), col("id"), col(OP)])?
            .execute_stream()
            .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let file = utf8(batch.column(0))?;
            let id = utf8(batch.column(1))?;
            let op = batch.column(2).as_primitive::<Int32Type>();
            let (file, id) = (file.as_string::<i32>(), id.as_string::<i32>());
            for row in 0..batch.num_rows() {
                if let Some(path) = names.resolve(file.value(row), candidates.iter()) {
                    rewrite.insert(path);
                }
                if !fold_ids.contains(id.value(row)) {
                    fold_ids.insert(id.value(row).to_string());
                }
                if op.value(row) == VersionOp::Delete as i32 && !deleted_ids.contains(id.value(row))
                {
                    deleted_ids.insert(id.value(row).to_string());
                }
            }
        }
    }
    let fold_ids = Arc::new(fold_ids);

    // Every version of the ids to fold, wherever it is (an id's clean first
    // version is usually in an older, clean file): its file is rewritten.
    let mut versions_folded = 0u64;
    if !fold_ids.is_empty() {
        let mut stream = scan(ctx, table, None, true)?
            .filter(in_set(&fold_ids).call(vec![col("id")]))?
            .select(vec![col(FILE_COLUMN)])?
            .execute_stream()
            .await?;
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            versions_folded += batch.num_rows() as u64;
            let file = utf8(batch.column(0))?;
            let file = file.as_string::<i32>();
            for row in 0..batch.num_rows() {
                match names.resolve(file.value(row), all_paths.iter()) {
                    Some(path) => {
                        rewrite.insert(path);
                    }
                    None => {
                        return Err(Error::Internal(format!(
                            "compaction: the scan read `{}`, which is not a file of the table",
                            file.value(row)
                        )));
                    }
                }
            }
        }
    }

    // Small files are merged when at least two files get rewritten and one
    // of them is not a compaction's output: the small files of a compaction
    // alone (its rows and its tombstones) are left as they are.
    let small: Vec<&FileInfo> = files
        .iter()
        .filter(|f| f.bytes < options.small_file_bytes && !rewrite.contains(&f.path))
        .collect();
    let fresh = small.iter().filter(|f| !f.compacted).count();
    if (!rewrite.is_empty() || fresh > 0) && rewrite.len() + small.len() >= 2 {
        rewrite.extend(small.into_iter().map(|f| f.path.clone()));
    }
    Ok(Some(Plan {
        version,
        files,
        rewrite,
        fold_ids,
        deleted_ids: Arc::new(deleted_ids),
        versions_folded,
    }))
}

/// A compaction of one project's log table (see the module docs).
#[derive(Debug, Clone)]
pub struct Compaction<'a> {
    store: &'a Store,
    project: &'a Project,
    options: CompactOptions,
}

impl<'a> Compaction<'a> {
    /// With the default options.
    pub fn new(store: &'a Store, project: &'a Project) -> Self {
        Self {
            store,
            project,
            options: CompactOptions::default(),
        }
    }

    pub fn options(self, options: CompactOptions) -> Self {
        Self { options, ..self }
    }

    /// Plan only: report what would be rewritten, change nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.options.dry_run = dry_run;
        self
    }

    pub async fn run(self) -> Result<(CompactionReport, OpMetrics)> {
        let started = Instant::now();
        let report = compact(self.store, self.project, &self.options).await?;
        let mut metrics = OpMetrics::since(Operation::Compaction, self.options.dry_run, started);
        metrics.rows_written = report.rows_out;
        metrics.rows_deleted = report.rows_in.saturating_sub(report.rows_out);
        metrics.files_written = report.files_out.unwrap_or(0);
        metrics.files_removed = report.files_in;
        metrics.bytes_written = report.bytes_out.unwrap_or(0);
        metrics.bytes_removed = report.bytes_in;
        Ok((report, metrics))
    }
}

/// Compact the log table of `project` (see the module docs).
async fn compact(
    store: &Store,
    project: &Project,
    options: &CompactOptions,
) -> Result<CompactionReport> {
    let started = Instant::now();
    // Half of the memory for the scans and the fold's sort, half for the
    // sort by `_xact_id` that consumes the fold (see `write_files`).
    let ctx = compaction_session(options.memory_limit_bytes / 2)?;
    let logs = store.logs(project).await?;
    let Some(table) = logs.table() else {
        return Ok(CompactionReport {
            dry_run: options.dry_run,
            ..CompactionReport::default()
        });
    };
    let Some(plan) = plan(&ctx, &logs, options).await? else {
        return Ok(CompactionReport::default());
    };
    let mut report = CompactionReport {
        dry_run: options.dry_run,
        planned_version: Some(plan.version),
        version: None,
        ids_folded: plan.fold_ids.len() as u64,
        tombstones: None,
        rows_in: plan.rows_in(),
        rows_out: plan.rows_out(),
        files_in: plan.rewrite.len() as u64,
        files_out: None,
        bytes_in: plan.rewritten().map(|f| f.bytes).sum(),
        bytes_out: None,
        files_untouched: (plan.files.len() - plan.rewrite.len()) as u64,
        elapsed_ms: 0,
    };
    if options.dry_run || plan.rewrite.is_empty() {
        if !options.dry_run {
            report.tombstones = Some(0);
            report.files_out = Some(0);
            report.bytes_out = Some(0);
        }
        report.elapsed_ms = elapsed_ms(started);
        return Ok(report);
    }

    let (adds, written) = write_files(&ctx, &logs, &plan, options).await?;
    crate::faults::kill_point("compact_after_files");
    report.tombstones = Some(written.tombstones);
    if written.rows != report.rows_out {
        delete_files(table, &adds).await;
        return Err(Error::Internal(format!(
            "compaction of project `{}` wrote {} row(s) where its plan expects {}; nothing was committed",
            project.name, written.rows, report.rows_out
        )));
    }
    let result = commit(store, project, &plan, &adds, options).await;
    let version = match result {
        Ok(version) => version,
        Err(e) => {
            delete_files(table, &adds).await;
            return Err(e);
        }
    };
    report.version = Some(version);
    report.files_out = Some(adds.len() as u64);
    report.bytes_out = Some(
        adds.iter()
            .map(|a| u64::try_from(a.size).unwrap_or(0))
            .sum(),
    );
    report.elapsed_ms = elapsed_ms(started);
    Ok(report)
}

/// A session for compaction: as a query's, but one partition (one sorter
/// has the whole memory pool) and batches of 2048 rows (rows of spans are a
/// few KiB: a sorter must be able to hold a batch to start spilling).
fn compaction_session(memory_limit_bytes: usize) -> Result<SessionContext> {
    crate::session::session(&SessionOptions {
        memory_limit_bytes,
        memory_pool: None,
        batch_rows: 2048,
        target_partitions: Some(1),
        distributed: false,
    })
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[derive(Debug, Default)]
struct Written {
    rows: u64,
    tombstones: u64,
}

async fn write_files(
    ctx: &SessionContext,
    logs: &ProjectLogs,
    plan: &Plan,
    options: &CompactOptions,
) -> Result<(Vec<Add>, Written)> {
    let table = logs
        .table()
        .ok_or_else(|| Error::Internal("compaction without a table".into()))?;
    let paths: Vec<String> = plan.rewrite.iter().cloned().collect();
    let versions = scan(ctx, table, Some(paths), false)?;
    let in_fold_set = in_set(&plan.fold_ids);
    let physical: Vec<Expr> = physical_schema()
        .fields()
        .iter()
        .map(|f| col(f.name().as_str()))
        .collect();

    let mut writer = RecordBatchWriter::for_table(table)?
        .with_writer_properties(schema::writer_properties())
        .with_target_file_size(options.target_file_bytes);
    let mut written = Written::default();
    let mut adds = Vec::new();
    let result = async {
        // Rows of ids that need no fold, as they are, and the resolved rows
        // of the ids to fold as clean versions; in `(_xact_id, _seq)` order
        // (a spilling sort), so that each new file covers a narrow range of
        // `_xact_id` and incremental reads keep skipping files by it.
        let mut rows = versions
            .clone()
            .filter(not(in_fold_set.call(vec![col("id")])))?
            .select(physical.clone())?;
        if !plan.fold_ids.is_empty() {
            let folded = logs.fold(ctx, versions.clone(), &in_fold_set)?;
            rows = rows.union(folded.select(resolved_as_physical())?)?;
        }
        // The sort runs in a session of its own, with its own half of the
        // memory: sharing one pool with the fold's sort (which feeds it), it
        // could be left without memory to start spilling.
        let sort_ctx = compaction_session(options.memory_limit_bytes / 2)?;
        let source = StreamingTable::try_new(
            physical_schema(),
            vec![Arc::new(FrameStream { input: rows })],
        )?;
        let sorted = sort_ctx
            .read_table(Arc::new(source))?
            .sort(vec![
                col(XACT_ID).sort(true, false),
                col(SEQ).sort(true, false),
            ])?
            .execute_stream()
            .await?;
        written.rows += write_stream(&mut writer, sorted, &mut |b| to_physical(&b)).await?;
        adds.extend(writer.flush().await?);
        // The deleted ids, as compacted tombstones, in files of their own.
        if !plan.deleted_ids.is_empty() {
            let mut versions = versions
                .filter(in_set(&plan.deleted_ids).call(vec![col("id")]))?
                .select(vec![
                    col("id"),
                    col(XACT_ID),
                    col(SEQ),
                    col(OP),
                    stored_pagination_key().alias(PAGINATION_KEY),
                ])?
                .sort(vec![
                    col("id").sort(true, false),
                    col(XACT_ID).sort(true, false),
                    col(SEQ).sort(true, false),
                ])?
                .execute_stream()
                .await?;
            let mut tombstones = Tombstones {
                project_id: logs.project().id.clone(),
                pending: None,
            };
            while let Some(batch) = versions.next().await {
                let out = tombstones.push(&batch?)?;
                written.tombstones += out.num_rows() as u64;
                writer.write(out).await?;
            }
            let out = tombstones.finish()?;
            written.tombstones += out.num_rows() as u64;
            writer.write(out).await?;
            written.rows += written.tombstones;
            adds.extend(writer.flush().await?);
        }
        Ok::<_, Error>(())
    }
    .await;
    if let Err(e) = result {
        writer.reset();
        delete_files(table, &adds).await;
        return Err(e);
    }
    for add in &mut adds {
        add.data_change = false;
        add.tags
            .get_or_insert_with(HashMap::new)
            .insert(COMPACTED_TAG.to_string(), Some("true".to_string()));
    }
    Ok((adds, written))
}

/// The rows of a plan of another session, as a stream in the physical schema.
struct FrameStream {
    input: DataFrame,
}

impl std::fmt::Debug for FrameStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameStream").finish_non_exhaustive()
    }
}

impl PartitionStream for FrameStream {
    fn schema(&self) -> &SchemaRef {
        static SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(physical_schema);
        &SCHEMA
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let input = self.input.clone();
        let rows = futures::stream::once(async move {
            let stream = input.execute_stream().await?;
            Ok::<_, DataFusionError>(stream.map(|batch| {
                to_physical(&batch?).map_err(|e| DataFusionError::External(Box::new(e)))
            }))
        })
        .try_flatten();
        Box::pin(RecordBatchStreamAdapter::new(physical_schema(), rows))
    }
}

async fn write_stream(
    writer: &mut RecordBatchWriter,
    mut stream: SendableRecordBatchStream,
    convert: &mut dyn FnMut(RecordBatch) -> Result<RecordBatch>,
) -> Result<u64> {
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = convert(batch?)?;
        if batch.num_rows() == 0 {
            continue;
        }
        rows += batch.num_rows() as u64;
        writer.write(batch).await?;
    }
    Ok(rows)
}

/// A scanned batch of stored versions in the physical schema (`Utf8`, not views).
fn to_physical(batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = physical_schema();
    let columns = schema
        .fields()
        .iter()
        .map(|field| {
            let column = batch.column_by_name(field.name()).ok_or_else(|| {
                Error::Internal(format!(
                    "compaction: scanned batch lacks `{}`",
                    field.name()
                ))
            })?;
            if column.data_type() == field.data_type() {
                Ok(Arc::clone(column))
            } else {
                Ok(arrow::compute::cast(column, field.data_type())?)
            }
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    Ok(RecordBatch::try_new(schema, columns)?)
}

/// Resolved rows (spans view) as clean stored versions: `_op = 0`,
/// `_xact_id` of the id's latest version, and its `_pagination_key` given
/// back by `(_xact_id, _seq)` (the key's two parts) when its first part is
/// that `_xact_id`, else kept in `_merge` (`_seq` then orders nothing: no
/// other version of the id has this `_xact_id`).
fn resolved_as_physical() -> Vec<Expr> {
    use datafusion::functions::unicode::expr_fn::{substr, substring};
    let key = || col(PAGINATION_KEY);
    let key_xact = || substring(key(), lit(1i64), lit(19i64));
    physical_schema()
        .fields()
        .iter()
        .map(|field| {
            let name = field.name().as_str();
            let expr = match name {
                XACT_ID => cast(col(XACT_ID), DataType::Int64),
                SEQ => cast(substr(key(), lit(20i64)), DataType::Int64),
                OP => lit(VersionOp::NewReplace as i32),
                MERGE => when(key_xact().eq(col(XACT_ID)), lit(ScalarValue::Utf8(None)))
                    .otherwise(key())
                    .expect("a CASE with one branch and an ELSE is valid"),
                _ => cast(col(name), field.data_type().clone()),
            };
            expr.alias(name)
        })
        .collect()
}

/// Per id (versions sorted by id, `_xact_id`, `_seq`): a compacted tombstone
/// when its latest version is a delete.
#[derive(Debug)]
struct Tombstones {
    project_id: String,
    pending: Option<TombstonePending>,
}

#[derive(Debug)]
struct TombstonePending {
    id: String,
    first_key: String,
    xact: i64,
    seq: i64,
    op: i32,
}

impl Tombstones {
    fn push(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let ids = utf8(batch.column(0))?;
        let ids = ids.as_string::<i32>();
        let xacts = batch.column(1).as_primitive::<Int64Type>();
        let seqs = batch.column(2).as_primitive::<Int64Type>();
        let ops = batch.column(3).as_primitive::<Int32Type>();
        let keys = utf8(batch.column(4))?;
        let keys = keys.as_string::<i32>();
        let mut out = Vec::new();
        for row in 0..batch.num_rows() {
            match &mut self.pending {
                Some(p) if p.id == ids.value(row) => {
                    p.xact = xacts.value(row);
                    p.seq = seqs.value(row);
                    p.op = ops.value(row);
                }
                _ => {
                    out.extend(self.pending.take());
                    self.pending = Some(TombstonePending {
                        id: ids.value(row).to_string(),
                        first_key: keys.value(row).to_string(),
                        xact: xacts.value(row),
                        seq: seqs.value(row),
                        op: ops.value(row),
                    });
                }
            }
        }
        self.build(out)
    }

    fn finish(&mut self) -> Result<RecordBatch> {
        let last: Vec<TombstonePending> = self.pending.take().into_iter().collect();
        self.build(last)
    }

    fn build(&self, ended: Vec<TombstonePending>) -> Result<RecordBatch> {
        let deleted: Vec<TombstonePending> = ended
            .into_iter()
            .filter(|p| p.op == VersionOp::Delete as i32)
            .collect();
        let rows = deleted.len();
        let schema = physical_schema();
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let column: ArrayRef = match field.name().as_str() {
                XACT_ID => Arc::new(Int64Array::from_iter_values(deleted.iter().map(|p| p.xact))),
                SEQ => Arc::new(Int64Array::from_iter_values(deleted.iter().map(|p| p.seq))),
                OP => Arc::new(Int32Array::from(vec![VersionOp::Delete as i32; rows])),
                "id" => Arc::new(StringArray::from_iter_values(deleted.iter().map(|p| &p.id))),
                // Always the key, even when `(_xact_id, _seq)` gives it back:
                // a non-null `_merge` is what marks a compacted tombstone.
                MERGE => Arc::new(StringArray::from_iter_values(
                    deleted.iter().map(|p| &p.first_key),
                )),
                "project_id" => Arc::new(StringArray::from_iter_values(
                    deleted.iter().map(|_| &self.project_id),
                )),
                "is_root" => Arc::new(BooleanArray::new_null(rows)),
                _ => arrow::array::new_null_array(field.data_type(), rows),
            };
            columns.push(column);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }
}

/// Commit the rewrite under the project's write lock, on the latest version,
/// unless a commit since the plan removed one of the files it rewrites.
async fn commit(
    store: &Store,
    project: &Project,
    plan: &Plan,
    adds: &[Add],
    options: &CompactOptions,
) -> Result<i64> {
    let (mut logs, lock) = store.logs_for_write(project).await?;
    let table = logs
        .table_mut()
        .ok_or_else(|| Error::Internal("no table after opening it for write".into()))?;
    let snapshot = table.snapshot()?;
    let mut removes = Vec::with_capacity(plan.rewrite.len());
    for view in snapshot.log_data().iter() {
        if plan.rewrite.contains(view.path().as_ref()) {
            removes.push(Action::Remove(view.remove_action(false)));
        }
    }
    if removes.len() != plan.rewrite.len() {
        drop(lock);
        return Err(Error::InvalidArgument(format!(
            "the log table of project `{}` changed during compaction (planned on version {}, \
             now {}): another writer removed files that it rewrote; nothing was committed, run it again",
            project.name,
            plan.version,
            logs.version().unwrap_or_default()
        )));
    }
    let mut actions = removes;
    actions.extend(adds.iter().cloned().map(Action::Add));
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: i64::try_from(options.target_file_bytes).unwrap_or(i64::MAX),
    };
    // As ingest: durable, a checkpoint every 100 commits, old log entries
    // kept (so pinned snapshots stay readable), no retry (the lock is held),
    // and a success once the log entry exists (an error here makes the
    // caller delete the files it wrote, so it must mean "not committed").
    let metadata = HashMap::from([(
        "spanlake.compaction".to_string(),
        serde_json::json!({
            "planned_version": plan.version,
            "ids_folded": plan.fold_ids.len(),
            "rows_in": plan.rows_in(),
            "rows_out": plan.rows_out(),
        }),
    )]);
    let version = commit_durably(table, actions, operation, metadata, store.fsync()).await;
    drop(lock);
    version
}

async fn delete_files(table: &DeltaTable, adds: &[Add]) {
    let store = table.object_store();
    for add in adds {
        let path = deltalake::Path::from(add.path.as_str());
        if let Err(e) = store.delete(&path).await {
            tracing::warn!(path = %add.path, error = %e, "could not delete an uncommitted compaction file; a vacuum of unreferenced files will");
        }
    }
}

/// When `serve` compacts a project: checked on the table's statistics only.
#[derive(Debug, Clone)]
pub struct CompactionPolicy {
    /// At least this many row versions in files that hold versions to fold
    /// (merges, replaces of known ids, deletes)...
    pub min_dirty_rows: u64,
    /// ...and at least this fraction of all row versions;
    pub min_dirty_fraction: f64,
    /// or at least this many small files.
    pub min_small_files: usize,
    /// How each compaction is made.
    pub options: CompactOptions,
}

impl Default for CompactionPolicy {
    fn default() -> Self {
        Self {
            min_dirty_rows: 10_000,
            min_dirty_fraction: 0.1,
            min_small_files: 32,
            options: CompactOptions::default(),
        }
    }
}

impl CompactionPolicy {
    /// Why `logs` should be compacted now, or `None`.
    pub fn due(&self, logs: &ProjectLogs) -> Result<Option<String>> {
        let Some(table) = logs.table() else {
            return Ok(None);
        };
        let files = file_infos(table)?;
        let total: u64 = files.iter().map(|f| f.rows).sum();
        let dirty: u64 = files
            .iter()
            .filter(|f| f.op_max != Some(0) && !f.compacted)
            .map(|f| f.rows)
            .sum();
        if dirty > 0
            && dirty >= self.min_dirty_rows
            && dirty as f64 >= self.min_dirty_fraction * total as f64
        {
            return Ok(Some(format!(
                "{dirty} of {total} row versions are in files with versions to fold"
            )));
        }
        let small = files
            .iter()
            .filter(|f| f.bytes < self.options.small_file_bytes)
            .count();
        if small >= self.min_small_files.max(2) {
            return Ok(Some(format!("{small} small files")));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::store::ingest_test_lines;
    use crate::store::schema::xact_id_for_version;

    /// Every column of the spans view after `after`, sorted by id, as text.
    async fn view(store: &Store, after: Option<i64>) -> String {
        let project = store.registry().unwrap().resolve("p").unwrap();
        let ctx = crate::session::session(&crate::session::SessionOptions::default()).unwrap();
        let logs = store.logs(&project).await.unwrap();
        let batches: Vec<RecordBatch> = logs
            .resolved_view_after(&ctx, after)
            .await
            .unwrap()
            .sort(vec![col("id").sort(true, false)])
            .unwrap()
            .execute_stream()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    }

    async fn views(store: &Store, last_version: i64) -> Vec<String> {
        let mut out = vec![view(store, None).await];
        for v in 0..=last_version {
            out.push(view(store, Some(xact_id_for_version(v))).await);
        }
        out
    }

    async fn compact_p(store: &Store, dry_run: bool) -> CompactionReport {
        let project = store.registry().unwrap().resolve("p").unwrap();
        compact(
            store,
            &project,
            &CompactOptions {
                dry_run,
                ..CompactOptions::default()
            },
        )
        .await
        .unwrap()
    }

    #[tokio::test]
    async fn compacted_files_are_sorted_by_xact_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let span =
            |i: u32| format!(r#"{{"id":"s{i:05}","created":"2026-01-01T00:00:00Z","input":{i}}}"#);
        let merge = |i: u32| format!(r#"{{"id":"s{i:05}","_is_merge":true,"output":{i}}}"#);
        // Merged ids alternate between two commits (2 and 4), so that in id
        // order (the fold's) their `_xact_id`s interleave.
        let commits: [Vec<String>; 4] = [
            (0..3000).map(span).collect(),
            (0..3000).step_by(2).map(merge).collect(),
            (3000..6000).map(span).collect(),
            (1..3000).step_by(2).map(merge).collect(),
        ];
        for text in &commits {
            let refs: Vec<&str> = text.iter().map(String::as_str).collect();
            ingest_test_lines(&store, &refs).await;
        }
        let project = store.registry().unwrap().resolve("p").unwrap();
        let before = view(&store, None).await;
        // Every 2048-row batch closes a file.
        let report = compact(
            &store,
            &project,
            &CompactOptions {
                target_file_bytes: 1,
                ..CompactOptions::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(report.rows_out, 6000, "{report:?}");
        assert!(report.files_out.unwrap() >= 3, "{report:?}");
        assert_eq!(view(&store, None).await, before);
        let logs = store.logs(&project).await.unwrap();
        let mut ranges: Vec<(i64, i64)> = Vec::new();
        for view in logs.table().unwrap().snapshot().unwrap().log_data().iter() {
            let stats: serde_json::Value = serde_json::from_str(&view.stats().unwrap()).unwrap();
            ranges.push((
                stats["minValues"][XACT_ID].as_i64().unwrap(),
                stats["maxValues"][XACT_ID].as_i64().unwrap(),
            ));
        }
        ranges.sort();
        for pair in ranges.windows(2) {
            assert!(
                pair[0].1 <= pair[1].0,
                "overlapping `_xact_id` ranges: {ranges:?}"
            );
        }
    }

    #[tokio::test]
    async fn compaction_changes_no_resolved_row_nor_what_changed_after_any_xact() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","created":"2026-01-01T00:00:00Z","input":{"x":1,"y":2},"tags":["t1"]}"#,
                r#"{"id":"b","created":"2026-01-01T00:00:01Z","input":"hello","span_parents":["a"]}"#,
                r#"{"id":"c","created":"2026-01-01T00:00:02Z","input":"gone"}"#,
                r#"{"id":"e","created":"2026-01-01T00:00:03Z","input":"kept"}"#,
            ],
        )
        .await;
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","_is_merge":true,"input":{"y":3},"tags":["t2","t1"]}"#,
                r#"{"id":"c","_object_delete":true}"#,
                r#"{"id":"d","_is_merge":true,"input":"merged into nothing"}"#,
                r#"{"id":"b","input":"replaced"}"#,
                r#"{"id":"b","_is_merge":true,"input":"then merged","output":null}"#,
                r#"{"id":"g","created":"2026-01-02T00:00:00Z","input":"new in 2"}"#,
            ],
        )
        .await;
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","_is_merge":true,"metadata":{"m":1}}"#,
                r#"{"id":"h","created":"2026-01-03T00:00:00Z","input":"h"}"#,
                r#"{"id":"h","_object_delete":true}"#,
            ],
        )
        .await;
        let project = store.registry().unwrap().resolve("p").unwrap();
        let last = store.logs(&project).await.unwrap().version().unwrap();
        let before = views(&store, last).await;

        let preview = compact_p(&store, true).await;
        assert!(preview.dry_run && preview.version.is_none());
        assert_eq!(store.logs(&project).await.unwrap().version(), Some(last));

        let report = compact_p(&store, false).await;
        // a, b, c, d, h folded (c and h deleted: tombstones); e and g copied.
        assert_eq!(report.ids_folded, 5, "{report:?}");
        assert_eq!(report.tombstones, Some(2), "{report:?}");
        assert_eq!(report.rows_in, 13, "{report:?}");
        assert_eq!(report.rows_out, 7, "{report:?}");
        assert_eq!(
            (preview.rows_in, preview.rows_out, preview.files_in),
            (report.rows_in, report.rows_out, report.files_in)
        );
        assert_eq!(report.files_out, Some(2), "rows, and tombstones apart");
        assert_eq!(report.version, Some(last + 1));
        assert_eq!(views(&store, last).await, before);

        // Nothing left to do: a second compaction commits nothing.
        let again = compact_p(&store, false).await;
        assert!(again.is_noop(), "{again:?}");
        assert_eq!(
            store.logs(&project).await.unwrap().version(),
            Some(last + 1)
        );

        // Later writes apply on top of the compacted rows as they would on
        // the versions: a merge keeps a's first `_pagination_key`, a
        // re-created c keeps c's.
        let key = |text: &str, id: &str| -> String {
            text.lines()
                .find(|l| l.contains(&format!("| {id} ")))
                .unwrap_or_else(|| panic!("no row {id} in\n{text}"))
                .split('|')
                .nth(3)
                .unwrap()
                .trim()
                .to_string()
        };
        let a_key = key(&before[0], "a");
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","_is_merge":true,"input":{"z":4}}"#,
                r#"{"id":"c","input":"back"}"#,
            ],
        )
        .await;
        let after = view(&store, None).await;
        assert_eq!(key(&after, "a"), a_key);
        assert!(after.contains(r#"{"x":1,"y":3,"z":4}"#), "{after}");
        let c_first = super::super::resolve::pagination_key_text(xact_id_for_version(1), 2);
        assert_eq!(key(&after, "c"), c_first, "{after}");
        assert!(!after.contains("| h "), "{after}");
        let before_second = views(&store, last + 2).await;
        let second = compact_p(&store, false).await;
        assert_eq!(second.ids_folded, 2, "{second:?}");
        assert_eq!(views(&store, last + 2).await, before_second);
    }
}
