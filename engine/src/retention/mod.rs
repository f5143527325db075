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
pub use rewrite::run_retention;

use chrono::Utc;

use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::vacuum::vacuum;

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
    state: &crate::state::StateDb,
    automation: &crate::state::Automation,
    trigger: crate::state::Trigger,
    dry_run: bool,
) -> Result<serde_json::Value> {
    use crate::state::{RunOutcome, RunStatus};
    let config: RetentionConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored retention config: {e}")))?;
    let (grace, _interval) = config.validate()?;
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    let cutoff = cutoff_for(Utc::now(), config.retention_days, config.force)?;
    if dry_run {
        let (plan, _) = run_retention(store, &project, cutoff, true).await?;
        let purge = vacuum(store, &project, grace, true, state).await?;
        let mut preview = plan_json(&plan);
        preview["files_purgeable_now"] = purge.files_deleted.into();
        preview["bytes_purgeable_now"] = purge.bytes.into();
        preview["pinned_versions"] = purge.pinned_versions.into();
        return Ok(preview);
    }
    let run_id = uuid::Uuid::now_v7().to_string();
    let holder = crate::state::lease_holder(&run_id);
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
        let purged = vacuum(store, &project, grace, false, state).await?;
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
