//! Retention of a project's log table: delete the row versions whose
//! `created` is older than a cutoff, then, after a grace period, purge the
//! data files that no version of the table references any more (vacuum).
//!
//! ```text
//!  now, retention_days ──cutoff_for──► cutoff (one absolute instant per run)
//!
//!  plan_retention (reads only):
//!    add actions ──stats of `created` (min, max, nullCount)──► classify
//!      max < cutoff, no nulls ............ drop      (rows from numRecords)
//!      min >= cutoff ..................... untouched (never read)
//!      otherwise ......................... candidate (scanned: per file count
//!                                          of rows with created < cutoff;
//!                                          all expired → drop, some → rewrite,
//!                                          none → untouched)
//!    drop ∪ candidate files, `created < cutoff` ──► count(distinct root_span_id)
//!
//!  run_retention:  write lock ─► plan on snapshot V ─► DeleteBuilder
//!                  (`created < cutoff`, on snapshot V) ─► one commit V+1
//!
//!  vacuum: files removed from the table more than `grace` ago ─► deleted
//!          from storage (delta-rs VacuumBuilder, lite mode: tombstones only)
//! ```
//!
//! Guarantees:
//! - The plan changes nothing; a dry run is the plan.
//! - A run is one Delta commit (`DELETE` operation): a crash leaves the table
//!   as before or as after. The plan is computed on the snapshot the delete
//!   commits against, under the project's write lock, so its figures are the
//!   ones the delete applies.
//! - Rows are deleted by their own `created` (row versions), not by trace: a
//!   trace may straddle the cutoff. Rows whose `created` is null are kept.
//! - Deleted rows disappear from reads at once; their bytes stay in storage
//!   (older table versions still reference them) until a vacuum whose grace
//!   period has passed since the delete.
//!
//! Delta file statistics truncate timestamps to milliseconds, so a file whose
//! statistics put the cutoff inside its `[min, max + 1ms)` range is scanned
//! rather than classified from statistics alone: classification is exact.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Int64Type};
use chrono::{DateTime, TimeDelta, Utc};
use datafusion::common::ScalarValue;
use datafusion::functions_aggregate::expr_fn::{count, count_distinct, sum};
use datafusion::logical_expr::{Expr, cast, col, lit};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::projects::Project;
use crate::store::{ProjectLogs, Store, schema};

/// Name of the column holding each row's data file in the planning scan.
const FILE_COLUMN: &str = "__spanlake_file";

/// One data file of the table, as the plan sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileInfo {
    /// Path relative to the table root.
    pub path: String,
    /// Size of the file in bytes.
    pub bytes: u64,
    /// Rows in the file.
    pub rows: u64,
    /// Rows of the file with `created < cutoff` (all of them for a dropped file).
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
    /// Row versions with `created < cutoff`.
    pub rows: u64,
    /// Distinct `root_span_id` among those rows.
    pub traces: u64,
    /// Files whose rows are all expired: removed from the table unchanged.
    pub files_to_drop: Vec<FileInfo>,
    /// Files with expired and live rows: rewritten without the expired ones.
    pub files_to_rewrite: Vec<FileInfo>,
    /// Bytes that a vacuum after the run frees: the dropped files, plus the
    /// expired share (by rows) of the rewritten files. An estimate for the
    /// rewritten part, since the surviving rows are written to new files.
    pub bytes_to_reclaim: u64,
}

impl RetentionPlan {
    fn empty(cutoff: DateTime<Utc>, version: Option<i64>) -> Self {
        Self {
            cutoff,
            version,
            rows: 0,
            traces: 0,
            files_to_drop: Vec::new(),
            files_to_rewrite: Vec::new(),
            bytes_to_reclaim: 0,
        }
    }

    /// Whether the run would change nothing.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }
}

/// What a retention run did. All zero for a dry run or an empty plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionMetrics {
    /// Whether this was a dry run (nothing changed).
    pub dry_run: bool,
    /// Table version of the delete commit (`None`: no commit was made).
    pub version: Option<i64>,
    /// Row versions deleted (from the delete's metrics).
    pub rows_deleted: u64,
    /// Data files removed from the table (dropped plus rewritten).
    pub files_removed: u64,
    /// Data files written with the surviving rows of the rewritten files.
    pub files_added: u64,
    /// Files dropped whole (from the plan the delete ran on).
    pub files_dropped: u64,
    /// Files rewritten (from the plan the delete ran on).
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
    /// Data files deleted from storage.
    pub files_deleted: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their paths, relative to the table root.
    pub paths: Vec<String>,
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

/// Statistics of `created` for one file, from its add action.
struct FileStats {
    info: FileInfo,
    /// Minimum, truncated to milliseconds (µs since the epoch).
    min: Option<i64>,
    /// Maximum, truncated to milliseconds (µs since the epoch).
    max: Option<i64>,
    nulls: Option<u64>,
}

fn parse_stats_timestamp(value: &serde_json::Value) -> Option<i64> {
    let text = value.as_str()?;
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.timestamp_micros())
        .or_else(|| crate::ingest::parse_datetime_micros(text))
}

fn file_stats(view: &deltalake::kernel::LogicalFileView) -> FileStats {
    let stats: Option<serde_json::Value> = view.stats().and_then(|s| serde_json::from_str(&s).ok());
    let get = |section: &str| stats.as_ref().and_then(|s| s.get(section)?.get("created"));
    let rows = view
        .num_records()
        .map(|n| n as u64)
        .or_else(|| stats.as_ref()?.get("numRecords")?.as_u64())
        .unwrap_or(0);
    FileStats {
        info: FileInfo {
            path: view.path().into_owned(),
            bytes: u64::try_from(view.size()).unwrap_or(0),
            rows,
            expired_rows: 0,
        },
        min: get("minValues").and_then(parse_stats_timestamp),
        max: get("maxValues").and_then(parse_stats_timestamp),
        nulls: get("nullCount").and_then(serde_json::Value::as_u64),
    }
}

fn cutoff_literal(cutoff: DateTime<Utc>) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(cutoff.timestamp_micros()),
        Some(Arc::from("UTC")),
    ))
}

fn expired_predicate(cutoff: DateTime<Utc>) -> Expr {
    col("created").lt(cutoff_literal(cutoff))
}

/// Plan a retention run on the snapshot of `logs`: which files are dropped or
/// rewritten, and how many rows and traces are deleted. Reads the table's
/// statistics and the files that straddle the cutoff; changes nothing.
pub async fn plan_retention(logs: &ProjectLogs, cutoff: DateTime<Utc>) -> Result<RetentionPlan> {
    let Some(table) = logs.table() else {
        return Ok(RetentionPlan::empty(cutoff, None));
    };
    let cut = cutoff.timestamp_micros();
    let mut drop = Vec::new();
    let mut candidates = Vec::new();
    for view in table.snapshot()?.log_data().iter() {
        let stats = file_stats(&view);
        match (stats.min, stats.max) {
            // True min >= truncated min >= cutoff: nothing expired.
            (Some(min), _) if min >= cut => {}
            // True max < truncated max + 1ms <= cutoff, and no nulls (kept).
            (Some(_), Some(max)) if max + 1000 <= cut && stats.nulls == Some(0) => {
                let mut info = stats.info;
                info.expired_rows = info.rows;
                drop.push(info);
            }
            // All null (no min) with known counts: nothing expired.
            (None, None) if stats.nulls.is_some_and(|n| n == stats.info.rows) => {}
            _ => candidates.push(stats.info),
        }
    }
    if drop.is_empty() && candidates.is_empty() {
        return Ok(RetentionPlan::empty(cutoff, logs.version()));
    }

    let ctx = SessionContext::new();
    table.update_datafusion_session(&ctx.state())?;

    // Per candidate file: its rows and its expired rows.
    let mut files_to_rewrite = Vec::new();
    if !candidates.is_empty() {
        let scanned = scan(&ctx, table, candidates.iter().map(|f| f.path.clone()))
            .await?
            .aggregate(
                vec![cast(col(FILE_COLUMN), DataType::Utf8).alias("file")],
                vec![
                    count(lit(1)).alias("total"),
                    sum(cast(expired_predicate(cutoff), DataType::Int64)).alias("expired"),
                ],
            )?
            .collect()
            .await?;
        let mut counts: HashMap<String, (u64, u64)> = HashMap::new();
        for batch in &scanned {
            let files = batch.column(0).as_string::<i32>();
            let totals = batch.column(1).as_primitive::<Int64Type>();
            let expired = batch.column(2).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                let e = if expired.is_null(i) {
                    0
                } else {
                    expired.value(i)
                };
                counts.insert(
                    files.value(i).to_owned(),
                    (totals.value(i) as u64, e as u64),
                );
            }
        }
        for mut info in candidates {
            let (total, expired) = counts
                .iter()
                .find(|(file, _)| same_file(file, &info.path))
                .map(|(_, c)| *c)
                .unwrap_or((0, 0));
            if expired == 0 {
                continue;
            }
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
        return Ok(RetentionPlan::empty(cutoff, logs.version()));
    }

    // Distinct traces among the expired rows (only `root_span_id` and
    // `created` are read, and only from the files that lose rows).
    let paths = drop.iter().chain(&files_to_rewrite).map(|f| f.path.clone());
    let traces = scan(&ctx, table, paths)
        .await?
        .filter(expired_predicate(cutoff))?
        .aggregate(
            vec![],
            vec![count_distinct(col("root_span_id")).alias("traces")],
        )?
        .collect()
        .await?;
    let traces = traces.iter().find(|b| b.num_rows() > 0).map_or(0, |b| {
        b.column(0).as_primitive::<Int64Type>().value(0) as u64
    });

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
    Ok(RetentionPlan {
        cutoff,
        version: logs.version(),
        rows,
        traces,
        files_to_drop: drop,
        files_to_rewrite,
        bytes_to_reclaim,
    })
}

/// Whether a scan's file column value names the table-relative `path`.
fn same_file(scanned: &str, path: &str) -> bool {
    scanned == path || scanned.ends_with(&format!("/{path}"))
}

/// A scan of only the given files of the table, with a file column.
async fn scan(
    ctx: &SessionContext,
    table: &DeltaTable,
    paths: impl IntoIterator<Item = String>,
) -> Result<datafusion::dataframe::DataFrame> {
    let provider = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .with_file_column(FILE_COLUMN)
        .with_file_paths(paths)
        .await?;
    Ok(ctx.read_table(provider)?)
}

/// Run retention on `project` with `cutoff`: under the project's write lock,
/// plan, then (unless `dry_run`) delete the rows with `created < cutoff` in
/// one Delta commit. Returns the plan and what the delete did.
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
    let (logs, lock) = store.logs_for_write(project).await?;
    let plan = plan_retention(&logs, cutoff).await?;
    let table = logs
        .table()
        .ok_or_else(|| Error::Internal("no table after opening it for write".into()))?;
    if plan.is_empty() {
        drop(lock);
        return Ok((plan, RetentionMetrics::default()));
    }
    let started = Instant::now();
    // delta-rs' own session: its planner executes the delete's metric nodes.
    let (after, delete) = table
        .clone()
        .delete()
        .with_predicate(expired_predicate(cutoff))
        .with_writer_properties(schema::writer_properties())
        .await?;
    drop(lock);
    let rows_deleted = delete.num_deleted_rows.map_or(plan.rows, |n| n as u64);
    if rows_deleted != plan.rows
        || delete.num_removed_files != plan.files_to_drop.len() + plan.files_to_rewrite.len()
    {
        tracing::warn!(
            planned_rows = plan.rows,
            rows_deleted,
            planned_files = plan.files_to_drop.len() + plan.files_to_rewrite.len(),
            files_removed = delete.num_removed_files,
            "retention delete differs from its plan"
        );
    }
    let metrics = RetentionMetrics {
        dry_run: false,
        version: after.version().and_then(|v| i64::try_from(v).ok()),
        rows_deleted,
        files_removed: delete.num_removed_files as u64,
        files_added: delete.num_added_files as u64,
        files_dropped: plan.files_to_drop.len() as u64,
        files_rewritten: plan.files_to_rewrite.len() as u64,
        rows_copied: delete.num_copied_rows as u64,
        execution_time_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    Ok((plan, metrics))
}

/// A fixed instant for delta-rs operations: the injected clock.
#[derive(Debug)]
struct FixedClock(i64);

impl deltalake::operations::vacuum::Clock for FixedClock {
    fn current_timestamp_millis(&self) -> i64 {
        self.0
    }
}

/// Delete from storage the data files of `project` that the table stopped
/// referencing more than `grace` ago (now from the system clock). See
/// [`vacuum_at`].
pub async fn vacuum(
    store: &Store,
    project: &Project,
    grace: std::time::Duration,
    dry_run: bool,
) -> Result<VacuumMetrics> {
    vacuum_at(store, project, Utc::now(), grace, dry_run).await
}

/// Delete from storage the data files of `project` that were removed from the
/// table before `now - grace` (delta-rs vacuum, lite mode: only files the log
/// records as removed; delta-rs' own 7-day minimum is not applied, `grace` is
/// the policy). Takes the write lock unless `dry_run` (vacuum commits its
/// start and end to the log). Sizes come from the object store just before
/// deletion.
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
    let clock: Arc<dyn deltalake::operations::vacuum::Clock> =
        Arc::new(FixedClock(now.timestamp_millis()));
    let builder = |dry: bool| {
        table
            .clone()
            .vacuum()
            .with_retention_period(grace)
            .with_enforce_retention_duration(false)
            .with_dry_run(dry)
            .with_clock(Arc::clone(&clock))
    };
    let (_, planned) = builder(true).await?;
    let object_store = table.object_store();
    let mut sizes = HashMap::new();
    for path in &planned.files_deleted {
        let size = match object_store
            .head(&deltalake::Path::from(path.as_str()))
            .await
        {
            Ok(meta) => meta.size,
            Err(object_store::Error::NotFound { .. }) => 0,
            Err(e) => return Err(deltalake::DeltaTableError::from(e).into()),
        };
        sizes.insert(path.clone(), size);
    }
    let paths = if dry_run {
        planned.files_deleted
    } else {
        let (_, done) = builder(false).await?;
        done.files_deleted
    };
    drop(lock);
    Ok(VacuumMetrics {
        dry_run,
        files_deleted: paths.len() as u64,
        bytes: paths.iter().filter_map(|p| sizes.get(p)).sum(),
        paths,
    })
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
        let project = store.registry().resolve_or_create("p").unwrap();
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
        assert_eq!(preview.traces, 20 + 3);
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
        assert_eq!(plan, preview);
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

    #[tokio::test]
    async fn empty_project_plans_nothing_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().resolve_or_create("p").unwrap();
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
    let project = store.registry().resolve(&automation.project_id)?;
    let cutoff = cutoff_for(Utc::now(), config.retention_days, config.force)?;
    if dry_run {
        let (plan, _) = run_retention(store, &project, cutoff, true).await?;
        let purge = vacuum(store, &project, grace, true).await?;
        let mut preview = plan_json(&plan);
        preview["files_purgeable_now"] = purge.files_deleted.into();
        preview["bytes_purgeable_now"] = purge.bytes.into();
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
            details["files_purged"] = purged.files_deleted.into();
            details["bytes_purged"] = purged.bytes.into();
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
