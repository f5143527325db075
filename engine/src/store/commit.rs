//! One Delta commit of a writer of this crate (ingest, retention,
//! compaction): durable before it is reported, and never reported as failed
//! once its log entry exists.
//!
//! ```text
//!  data files of the commit ──fsync (files, then their folders)──►
//!  log entry N, create-only, no retry ──► exists: the commit is a SUCCESS
//!     │  from here on, every step is logged when it fails, never returned:
//!     ├─ fsync N.json and `_delta_log`
//!     ├─ the table's snapshot moves to N (reloaded from the log if that fails)
//!     └─ every `delta.checkpointInterval` commits (100): a checkpoint,
//!        fsynced; a failed one is logged, and the next one covers it
//! ```
//!
//! delta-rs runs the checkpoint in its post-commit hook and returns its
//! error as the commit's, although the log entry is already written: a
//! caller told "failed" retries, and commits the same rows a second time.
//! Here the hook does nothing but move the snapshot, and the checkpoint is
//! written afterwards with deltalake's checkpoint API.

use std::collections::HashMap;
use std::path::PathBuf;

use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::protocol::DeltaOperation;
use deltalake::table::config::TablePropertiesExt as _;
use serde_json::Value;

use super::durable;
use crate::error::{Error, Result};

/// Commit `actions` to `table` as `operation`, with `app_metadata` in its
/// `commitInfo`; on success the table's snapshot is at the new version,
/// which is returned. With `fsync`, the added data files are synced before
/// the commit and the log entry after it. An error means that nothing was
/// committed (the caller may delete the files it wrote).
pub(crate) async fn commit_durably(
    table: &mut DeltaTable,
    actions: Vec<Action>,
    operation: DeltaOperation,
    app_metadata: HashMap<String, Value>,
    fsync: bool,
) -> Result<i64> {
    let root = table.log_store().root_url().to_file_path().ok();
    if fsync && let Some(root) = &root {
        let files: Vec<PathBuf> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Add(add) => Some(data_file_path(table, root, &add.path)),
                _ => None,
            })
            .collect::<Result<_>>()?;
        if !files.is_empty() {
            durable::sync_files_blocking(files).await?;
        }
    }
    // No retries: the callers hold the project's write lock, and ingest's
    // rows carry the `_xact_id` of the version they were written for, so a
    // commit that would land elsewhere must fail instead. Old log entries are
    // kept, so pinned snapshots stay readable.
    let properties = CommitProperties::default()
        .with_create_checkpoint(false)
        .with_cleanup_expired_logs(Some(false))
        .with_max_retries(0);
    let post_commit = CommitBuilder::from(properties)
        .with_actions(actions)
        .with_app_metadata(app_metadata)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .into_prepared_commit_future()
        .await?
        .await?;
    // The log entry exists: whatever happens now, this is a success.
    let version = post_commit.version;
    let version_i64 = i64::try_from(version)
        .map_err(|_| Error::Internal(format!("version {version} out of range")))?;
    let table_name = root.as_ref().map_or_else(
        || table.log_store().root_url().to_string(),
        |r| r.display().to_string(),
    );
    if fsync && let Some(root) = &root {
        let entry = root.join("_delta_log").join(format!("{version:020}.json"));
        if let Err(e) = durable::sync_files_blocking(vec![entry]).await {
            tracing::error!(
                table = %table_name,
                version,
                error = %crate::error::error_chain(&e),
                "commit written but not fsynced: a power loss may lose it (check the disk)"
            );
        }
    }
    match post_commit.await {
        Ok(finalized) => table.state = Some(finalized.snapshot()),
        Err(e) => {
            tracing::warn!(table = %table_name, version, error = %e, "committed, but the snapshot could not move to the commit; reloading the table");
            if let Err(e) = table.update_state().await {
                tracing::warn!(table = %table_name, version, error = %e, "committed, but the table could not be reloaded; the next commit of this writer will fail and must reopen it");
            }
        }
    }
    checkpoint_if_due(table, version, &table_name, root.as_ref().filter(|_| fsync)).await;
    Ok(version_i64)
}

/// The local path of data file `path` (relative to the table root, as in an
/// add action: percent-encoded).
fn data_file_path(table: &DeltaTable, root: &std::path::Path, path: &str) -> Result<PathBuf> {
    table
        .log_store()
        .root_url()
        .join(path)
        .ok()
        .and_then(|url| url.to_file_path().ok())
        .ok_or_else(|| {
            Error::Internal(format!(
                "data file `{path}` of the table at `{}` is not a local path",
                root.display()
            ))
        })
}

/// Write the checkpoint of `version` when the table's checkpoint interval
/// says so (every 100 commits by default, as delta-rs would): it keeps
/// opening the table cheap when a server commits many small batches. A
/// failure is logged: the commit stands, reads replay more log entries until
/// the next checkpoint, which covers everything before it. With `synced_root`
/// (the table root when fsync is on) the checkpoint and `_last_checkpoint`
/// are fsynced.
async fn checkpoint_if_due(
    table: &DeltaTable,
    version: u64,
    table_name: &str,
    synced_root: Option<&PathBuf>,
) {
    let interval = match table.snapshot() {
        Ok(snapshot) if snapshot.version() == version => {
            snapshot.table_config().checkpoint_interval().get()
        }
        // The snapshot did not move to the commit (logged above): no
        // checkpoint of a version it does not hold.
        _ => return,
    };
    if !(version + 1).is_multiple_of(interval) {
        return;
    }
    if let Err(e) = deltalake::checkpoints::create_checkpoint(table, None).await {
        tracing::warn!(
            table = %table_name,
            version,
            error = %e,
            "committed, but its checkpoint could not be written (is `_delta_log` writable, the disk full?); reads replay the log until the next checkpoint, {interval} commits later"
        );
        return;
    }
    if let Some(root) = synced_root {
        let log = root.join("_delta_log");
        let files = vec![
            log.join(format!("{version:020}.checkpoint.parquet")),
            log.join("_last_checkpoint"),
        ];
        if let Err(e) = durable::sync_files_blocking(files).await {
            tracing::warn!(table = %table_name, version, error = %crate::error::error_chain(&e), "checkpoint written but not fsynced");
        }
    }
}
