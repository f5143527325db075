//! A failed run's files deleted, and a crashed run finished: committed if
//! its manifest is there, its files deleted if not.

use futures::StreamExt;
use object_store::ObjectStoreExt;

use super::Manifest;
use super::local::LocalFolder;
use super::manifest::{manifest_path, object_error};
use crate::error::{Error, Result};
use crate::sink::ExportTarget;
use crate::state::{Automation, RunOutcome, RunStatus, StateDb};

/// Delete every object under the export prefix whose name carries `run_id`
/// (the data files of a run that never committed), and on a local folder
/// the run's staging files too. Returns their keys (or paths).
pub(super) async fn delete_run_files(
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
) -> Result<Vec<String>> {
    delete_run_files_except(target, local, run_id, &std::collections::HashSet::new()).await
}

/// [`delete_run_files`], keeping the files whose keys are in `keep`.
pub(super) async fn delete_run_files_except(
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
    keep: &std::collections::HashSet<&str>,
) -> Result<Vec<String>> {
    let marker = format!("-{run_id}.");
    let prefix = (!target.prefix.as_ref().is_empty()).then_some(&target.prefix);
    let mut listing = target.store.list(prefix);
    let mut orphans = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| object_error("list", &target.prefix, e))?;
        if meta.location.as_ref().contains(&marker) && !keep.contains(meta.location.as_ref()) {
            orphans.push(meta.location);
        }
    }
    let mut deleted = Vec::with_capacity(orphans.len());
    for path in orphans {
        target
            .store
            .delete(&path)
            .await
            .map_err(|e| object_error("delete", &path, e))?;
        deleted.push(path.to_string());
    }
    if let Some(local) = local {
        deleted.extend(local.delete_staging(run_id)?);
    }
    Ok(deleted)
}

/// A run failed before its manifest: delete every file carrying its run id
/// (listing, so that a file whose upload reply was lost goes too) and mark
/// it failed. When the store cannot be cleaned now, the run is marked
/// `cleanup_pending`, and the next run's recovery deletes the files.
/// Tasks of a cancelled cluster job can still complete files for a moment
/// (Ballista marks the job failed before its executors have stopped the
/// tasks): delete the run's files as they appear, until none has appeared
/// for [`QUIET`] (a minute at most).
async fn delete_until_quiet(
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
) -> Result<Vec<String>> {
    const QUIET: std::time::Duration = std::time::Duration::from_secs(3);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut quiet_since = tokio::time::Instant::now();
    let mut deleted = Vec::new();
    while quiet_since.elapsed() < QUIET && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let late = delete_run_files(target, local, run_id).await?;
        if !late.is_empty() {
            quiet_since = tokio::time::Instant::now();
            deleted.extend(late);
        }
    }
    Ok(deleted)
}

pub(super) async fn cleanup_failed_run(
    state: &StateDb,
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
    error: &Error,
) -> Result<()> {
    match delete_run_files(target, local, run_id).await {
        Ok(_) => state.fail_run_with(run_id, &error.to_string(), error.is_retryable()),
        Err(cleanup) => {
            state.fail_run_with(
                run_id,
                &format!("{error}; its files could not be deleted yet ({cleanup}): the next run deletes them"),
                error.is_retryable(),
            )?;
            state.update_run_details(run_id, &serde_json::json!({ CLEANUP_PENDING: true }))
        }
    }
}

/// Run detail of a failed run whose files are still to be deleted.
const CLEANUP_PENDING: &str = "cleanup_pending";

/// Finish runs that an earlier process left `running`: commit the cursor of
/// one whose manifest exists, delete the files of one whose manifest does not.
pub(super) async fn recover(
    state: &StateDb,
    automation: &Automation,
    target: &ExportTarget,
    local: Option<&LocalFolder>,
) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for run in state.runs(&automation.id, 1000)? {
        if run.status == RunStatus::Failed && run.details[CLEANUP_PENDING] == true {
            let deleted = delete_run_files(target, local, &run.run_id).await?;
            state
                .update_run_details(&run.run_id, &serde_json::json!({ CLEANUP_PENDING: false }))?;
            notes.push(format!(
                "deleted {} file(s) left by failed run {}",
                deleted.len(),
                run.run_id
            ));
            continue;
        }
        if run.status != RunStatus::Running {
            continue;
        }
        let path = manifest_path(target, &run.run_id);
        match target.store.get(&path).await {
            Ok(found) => {
                let bytes = found
                    .bytes()
                    .await
                    .map_err(|e| object_error("read", &path, e))?;
                let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
                    Error::InvalidArgument(format!("manifest `{path}` is not valid: {e}"))
                })?;
                let cursor_to: i64 = manifest.cursor_to.parse().map_err(|_| {
                    Error::InvalidArgument(format!("manifest `{path}` has a bad `cursor_to`"))
                })?;
                let outcome = RunOutcome {
                    rows: manifest.rows,
                    bytes: manifest.files.iter().map(|f| f.bytes).sum(),
                    files: manifest.files.len() as u64,
                    cursor_to: Some(cursor_to),
                    details: serde_json::json!({"manifest": path.to_string(), "recovered": true}),
                };
                // Killed after its manifest: its data files are complete, but
                // the manifest's own staging file may be left (killed
                // between linking it into place and removing the staging
                // name), and the manifest may not be on disk yet.
                if let Some(local) = local {
                    local.delete_staging(&run.run_id)?;
                    local.sync(vec![path.to_string()]).await?;
                }
                state.finish_run(&run.run_id, RunStatus::Succeeded, &outcome)?;
                notes.push(format!(
                    "run {} had committed its manifest; its cursor is now committed",
                    run.run_id
                ));
            }
            Err(object_store::Error::NotFound { .. }) => {
                // A job on a cluster may still be writing the run's files:
                // it is stopped before they are deleted.
                let job = &run.details[super::run::CLUSTER_JOB];
                if let (Some(scheduler), Some(job_id)) =
                    (job["scheduler"].as_str(), job["job_id"].as_str())
                {
                    crate::cluster::cancel_job(scheduler, job_id).await?;
                    notes.push(format!(
                        "cancelled job {job_id} of run {} on ballista://{scheduler}",
                        run.run_id
                    ));
                }
                let mut deleted = delete_run_files(target, local, &run.run_id).await?;
                if job.is_object() {
                    deleted.extend(delete_until_quiet(target, local, &run.run_id).await?);
                }
                state.fail_run(
                    &run.run_id,
                    &format!(
                        "interrupted before its manifest; {} orphan file(s) deleted by the next run",
                        deleted.len()
                    ),
                )?;
                notes.push(format!(
                    "run {} was interrupted before its manifest; deleted {} orphan file(s)",
                    run.run_id,
                    deleted.len()
                ));
            }
            Err(e) => return Err(object_error("read", &path, e)),
        }
    }
    Ok(notes)
}
