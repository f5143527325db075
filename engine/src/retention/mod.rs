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
//! [`StateDb::pinned_versions`]: crate::state::StateDb::pinned_versions

mod plan;
mod rewrite;
#[cfg(test)]
mod tests;

pub use plan::{FileInfo, RetentionMetrics, RetentionPlan, cutoff_for, plan_retention};
pub use rewrite::Retention;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::vacuum::Vacuum;

/// A retention automation's configuration, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Whose rows it deletes: `project_logs` (default, the project's logs),
    /// `experiment` or `dataset` (the rows of every experiment or dataset
    /// of the project).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
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
        if let Err(problem) =
            crate::registry::objects::config_object_type(self.object_type.as_deref())
        {
            problems.push(problem);
        }
        if self.retention_days == 0 && !self.force {
            problems.push(
                "retention_days: 0 deletes every row; use at least 1, or force it".to_string(),
            );
        }
        let grace = crate::config::parse_duration(&self.grace)
            .map_err(|e| problems.push(format!("grace: {e}")))
            .ok();
        let interval = crate::config::parse_duration(&self.interval)
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

/// A retention plan in a report: what the cutoff deletes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PlanSummary {
    /// Rows created before this are deleted (RFC 3339, µs, UTC).
    pub cutoff: String,
    /// Row versions the cutoff deletes.
    pub rows: u64,
    /// Traces whose every span goes, when known.
    pub traces: Option<u64>,
    /// Data files dropped whole.
    pub files_to_drop: usize,
    /// Data files rewritten with their surviving rows.
    pub files_to_rewrite: usize,
    /// Bytes the delete frees once vacuumed.
    pub bytes_to_reclaim: u64,
    /// Files read to find the row versions.
    pub files_read_for_versions: u64,
}

impl From<&RetentionPlan> for PlanSummary {
    fn from(plan: &RetentionPlan) -> Self {
        Self {
            cutoff: plan
                .cutoff
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            rows: plan.rows,
            traces: plan.traces,
            files_to_drop: plan.files_to_drop.len(),
            files_to_rewrite: plan.files_to_rewrite.len(),
            bytes_to_reclaim: plan.bytes_to_reclaim,
            files_read_for_versions: plan.files_read_for_versions,
        }
    }
}

/// What a retention run did (also the details of its run in the history).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetentionReport {
    /// The plan it carried out.
    #[serde(flatten)]
    pub plan: PlanSummary,
    /// Row versions deleted.
    pub rows_deleted: u64,
    /// Files dropped whole.
    pub files_dropped: u64,
    /// Files rewritten.
    pub files_rewritten: u64,
    /// Rows copied into the rewritten files.
    pub rows_copied: u64,
    /// Files written by the rewrite.
    pub files_added: u64,
    /// Table version of the delete commit (none: nothing to delete).
    pub version: Option<i64>,
    /// Data files purged by the vacuum.
    pub files_purged: u64,
    /// Of those, orphans of crashed writers.
    pub orphans_purged: u64,
    /// Bytes purged.
    pub bytes_purged: u64,
    /// Table versions pinned by running exports, whose files were kept.
    pub pinned_versions: Vec<i64>,
    /// For experiments and datasets: how many tables (one per object) the
    /// run went over; its figures are their sums (`version`: the last
    /// table's commit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<usize>,
}

impl PlanSummary {
    /// The plan of a cutoff over no table.
    fn nothing(cutoff: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            cutoff: cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            rows: 0,
            traces: Some(0),
            files_to_drop: 0,
            files_to_rewrite: 0,
            bytes_to_reclaim: 0,
            files_read_for_versions: 0,
        }
    }

    /// The plans of two tables at the same cutoff, summed.
    fn and(self, other: Self) -> Self {
        Self {
            cutoff: self.cutoff,
            rows: self.rows + other.rows,
            traces: self.traces.zip(other.traces).map(|(a, b)| a + b),
            files_to_drop: self.files_to_drop + other.files_to_drop,
            files_to_rewrite: self.files_to_rewrite + other.files_to_rewrite,
            bytes_to_reclaim: self.bytes_to_reclaim + other.bytes_to_reclaim,
            files_read_for_versions: self.files_read_for_versions + other.files_read_for_versions,
        }
    }
}

impl RetentionReport {
    fn nothing(cutoff: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            plan: PlanSummary::nothing(cutoff),
            rows_deleted: 0,
            files_dropped: 0,
            files_rewritten: 0,
            rows_copied: 0,
            files_added: 0,
            version: None,
            files_purged: 0,
            orphans_purged: 0,
            bytes_purged: 0,
            pinned_versions: Vec::new(),
            tables: None,
        }
    }

    /// The runs over two tables, summed.
    fn and(mut self, other: Self) -> Self {
        self.pinned_versions.extend(other.pinned_versions);
        Self {
            plan: self.plan.and(other.plan),
            rows_deleted: self.rows_deleted + other.rows_deleted,
            files_dropped: self.files_dropped + other.files_dropped,
            files_rewritten: self.files_rewritten + other.files_rewritten,
            rows_copied: self.rows_copied + other.rows_copied,
            files_added: self.files_added + other.files_added,
            version: other.version.or(self.version),
            files_purged: self.files_purged + other.files_purged,
            orphans_purged: self.orphans_purged + other.orphans_purged,
            bytes_purged: self.bytes_purged + other.bytes_purged,
            pinned_versions: self.pinned_versions,
            tables: None,
        }
    }
}

impl RetentionPreview {
    /// The previews of two tables, summed.
    fn and(mut self, other: Self) -> Self {
        self.pinned_versions.extend(other.pinned_versions);
        Self {
            plan: self.plan.and(other.plan),
            files_purgeable_now: self.files_purgeable_now + other.files_purgeable_now,
            bytes_purgeable_now: self.bytes_purgeable_now + other.bytes_purgeable_now,
            pinned_versions: self.pinned_versions,
        }
    }
}

/// A retention preview (a test or dry run): nothing changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RetentionPreview {
    /// What a run now would delete.
    #[serde(flatten)]
    pub plan: PlanSummary,
    /// Files a vacuum now would purge (older than the grace period).
    pub files_purgeable_now: u64,
    /// Their bytes.
    pub bytes_purgeable_now: u64,
    /// Table versions pinned by running exports.
    pub pinned_versions: Vec<i64>,
}

/// Preview a retention automation: the plan and what a vacuum would purge
/// now; nothing changes.
pub async fn preview_retention_automation(
    store: &Store,
    state: &crate::state::StateDb,
    automation: &crate::state::Automation,
) -> Result<RetentionPreview> {
    let config: RetentionConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored retention config: {e}")))?;
    let (grace, _interval) = config.validate()?;
    let cutoff = cutoff_for(store.clock().now(), config.retention_days, config.force)?;
    let mut preview: Option<RetentionPreview> = None;
    for table in automation.tables(store)? {
        let ((plan, _), _) = Retention::new(store, &table, cutoff)
            .dry_run(true)
            .run()
            .await?;
        let (purge, _) = Vacuum::new(store, &table, grace, state)
            .dry_run(true)
            .run()
            .await?;
        let this = RetentionPreview {
            plan: PlanSummary::from(&plan),
            files_purgeable_now: purge.files_deleted,
            bytes_purgeable_now: purge.bytes,
            pinned_versions: purge.pinned_versions,
        };
        preview = Some(match preview {
            None => this,
            Some(previous) => previous.and(this),
        });
    }
    // No experiment (or dataset) yet: nothing to delete.
    Ok(preview.unwrap_or_else(|| RetentionPreview {
        plan: PlanSummary::nothing(cutoff),
        files_purgeable_now: 0,
        bytes_purgeable_now: 0,
        pinned_versions: Vec::new(),
    }))
}

/// Run a retention automation: one cutoff, the planned delete in one
/// commit, then a vacuum of files unreferenced for longer than the grace
/// period; recorded in the run history, under the automation's lease.
pub async fn run_retention_automation(
    store: &Store,
    state: &crate::state::StateDb,
    automation: &crate::state::Automation,
    trigger: crate::state::Trigger,
) -> Result<RetentionReport> {
    use crate::state::{RunLease, RunOutcome, RunStatus};
    let config: RetentionConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored retention config: {e}")))?;
    let (grace, _interval) = config.validate()?;
    let tables = automation.tables(store)?;
    let cutoff = cutoff_for(store.clock().now(), config.retention_days, config.force)?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let lease = RunLease::take(store, state, automation, &run_id)?;
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
        let mut done: Option<RetentionReport> = None;
        for table in &tables {
            let ((plan, metrics), figures) = Retention::new(store, table, cutoff).run().await?;
            figures.log(table.table_id());
            let (purged, figures) = Vacuum::new(store, table, grace, state).run().await?;
            figures.log(table.table_id());
            let this = RetentionReport {
                plan: PlanSummary::from(&plan),
                rows_deleted: metrics.rows_deleted,
                files_dropped: metrics.files_dropped,
                files_rewritten: metrics.files_rewritten,
                rows_copied: metrics.rows_copied,
                files_added: metrics.files_added,
                version: metrics.version,
                files_purged: purged.files_deleted,
                orphans_purged: purged.orphans,
                bytes_purged: purged.bytes,
                pinned_versions: purged.pinned_versions,
                tables: None,
            };
            done = Some(match done {
                None => this,
                Some(previous) => previous.and(this),
            });
        }
        Ok::<_, Error>(done.unwrap_or_else(|| RetentionReport::nothing(cutoff)))
    }
    .await;
    let outcome = match result {
        Ok(mut report) => {
            if automation.object_type()? != crate::registry::objects::ObjectType::ProjectLogs {
                report.tables = Some(tables.len());
            }
            let outcome = RunOutcome {
                rows: report.rows_deleted,
                bytes: report.bytes_purged,
                files: report.files_dropped + report.files_rewritten,
                cursor_to: None,
                details: serde_json::to_value(&report)
                    .map_err(|e| Error::Internal(format!("retention report: {e}")))?,
            };
            state.finish_run(&run_id, RunStatus::Succeeded, &outcome)?;
            Ok(report)
        }
        Err(e) => {
            state.fail_run_with(&run_id, &e.to_string(), e.is_retryable())?;
            Err(e)
        }
    };
    lease.release(state)?;
    outcome
}
