//! Export runs: the rows that changed since the cursor, written to object
//! storage, committed by a manifest, and only then the cursor moves.
//!
//! ```text
//!  lease ─► recover a crashed run (manifest there? commit its cursor : delete its files)
//!        ─► cursor_from = state cursor; cursor_to = last whole commit within max_rows_per_run
//!        ─► start_run (state DB)
//!        ─► snapshot at cursor_to ─► rows with latest _xact_id in (cursor_from, cursor_to]
//!             spans: the spans view │ traces: summary rows of the traces that changed
//!             query: the BTQL query over those spans
//!        ─► sink: data files, new names  (failure: delete them, fail the run, cursor stays)
//!        ─► manifest _manifests/<run_id>.json, create-only: THE COMMIT
//!        ─► finish_run + cursor = cursor_to (one SQLite transaction) ─► release lease
//! ```
//!
//! Exactly once: data files are only ever referenced by a manifest written
//! after all of them completed; a run that dies before its manifest leaves
//! files that the next run deletes (their names carry the run id); a run
//! that dies after its manifest but before the cursor moved is finished by
//! the next run from the manifest, without writing again.
//!
//! On a local folder (a path or `file://`), with the store's fsync on (the
//! default): the data files and their folders are fsynced before the
//! manifest is written, and the manifest before the cursor moves, so a
//! committed run survives a power loss. object_store's local store writes
//! each file as a staging file `<name>#<n>` first, which its listings hide;
//! the cleanup of a failed or killed run walks the folder itself and deletes
//! the run's staging files too, so that once the next run has recovered,
//! every file of the folder is a manifest or a file a manifest lists.

use std::sync::Arc;
use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::logical_expr::{col, lit};
use futures::StreamExt;
use object_store::aws::AwsCredentialProvider;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use spanlake_dsl::schema::JSON_COLUMNS;

use crate::error::{Error, Result};
use crate::query::{QueryOptions, run_query_over_view, session};
use crate::sink::credentials::{AssumeRoleOptions, AssumeRoleProvider};
use crate::sink::{ExportTarget, TargetOptions, WrittenFile};
use crate::state::{Automation, RunLease, RunOutcome, RunStatus, StateDb, Trigger};
use crate::store::Store;
use crate::store::schema::XACT_ID;

mod config;
mod probe;
pub mod role;

pub use config::{ExportConfig, ExportData, RawExportConfig};
pub use probe::{TestStep, test_export_automation, test_export_target};

/// Version of the exported schema, recorded in every manifest. Additive
/// changes keep it; breaking ones bump it.
pub const SCHEMA_VERSION: u32 = 1;

/// Folder of the manifests under the export prefix.
pub const MANIFESTS_DIR: &str = "_manifests";

/// The commit record of a run, written last as `_manifests/<run_id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The run.
    pub run_id: String,
    /// The automation.
    pub automation_id: String,
    /// The project.
    pub project_id: String,
    /// `traces`, `spans` or `query`.
    pub data: ExportData,
    /// `parquet` or `jsonl`.
    pub format: String,
    /// See [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Exclusive lower bound of `_xact_id` (none: from the beginning).
    pub cursor_from: Option<String>,
    /// Inclusive upper bound of `_xact_id`.
    pub cursor_to: String,
    /// RFC 3339.
    pub started: String,
    /// RFC 3339.
    pub finished: String,
    /// Total rows, exact.
    pub rows: u64,
    /// The data files.
    pub files: Vec<WrittenFile>,
}

/// Progress of a running export, for a progress bar: `rows` written so far
/// out of about `total` (the row versions in the run's range; a row updated
/// twice in the range counts twice, a `traces` export writes fewer rows).
#[derive(Debug, Default)]
pub struct ExportProgress {
    /// Expected rows, set when the run has chosen its range.
    pub total: std::sync::atomic::AtomicU64,
    /// Rows handed to the sink so far.
    pub rows: std::sync::atomic::AtomicU64,
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    /// The run.
    pub run_id: String,
    /// `succeeded` or `behind` (or `recovered` runs first).
    pub status: RunStatus,
    /// Rows exported.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files written.
    pub files: u64,
    /// Range covered.
    pub cursor_from: Option<i64>,
    /// Range covered.
    pub cursor_to: Option<i64>,
    /// Key of the manifest (none when there was nothing to export).
    pub manifest: Option<String>,
    /// Notes on recovery of an earlier crashed run.
    pub recovered: Vec<String>,
}

use crate::registry::now_rfc3339;

/// The object store and prefix of an export. With a `role_arn` (and an S3
/// path), its credentials come from STS AssumeRole with `external_id` (see
/// [`crate::sink::credentials::external_id`]; none for one-shot exports), renewed
/// before they expire.
pub fn export_target(config: &ExportConfig, external_id: Option<&str>) -> Result<ExportTarget> {
    let credentials = match role_provider(config, external_id) {
        Some(provider) => Some(provider.map_err(|e| Error::InvalidArgument(e.to_string()))?),
        None => None,
    };
    target_with_credentials(config, credentials.map(|p| p as AwsCredentialProvider))
}

/// [`export_target`], with the role (if any) assumed at once: a refused role
/// fails here, with its likely fix, rather than as a failed write.
async fn export_target_assumed(
    config: &ExportConfig,
    external_id: Option<&str>,
) -> Result<ExportTarget> {
    let credentials = match role_provider(config, external_id) {
        Some(provider) => {
            let provider = provider.map_err(|e| Error::InvalidArgument(e.to_string()))?;
            provider
                .credential()
                .await
                .map_err(|e| Error::InvalidArgument(e.to_string()))?;
            Some(provider as AwsCredentialProvider)
        }
        None => None,
    };
    target_with_credentials(config, credentials)
}

/// The role provider of an export with a `role_arn` and an S3 path.
fn role_provider(
    config: &ExportConfig,
    external_id: Option<&str>,
) -> Option<std::result::Result<Arc<AssumeRoleProvider>, crate::sink::credentials::AssumeRoleError>>
{
    let role_arn = config.role_arn.as_deref()?;
    let scheme = config.export_path.split_once("://").map(|(s, _)| s);
    if !matches!(scheme, Some("s3" | "s3a")) {
        return None;
    }
    Some(
        AssumeRoleProvider::new(AssumeRoleOptions {
            role_arn: role_arn.to_string(),
            external_id: external_id.map(str::to_string),
            endpoint: config.endpoint.clone(),
            ..AssumeRoleOptions::default()
        })
        .map(Arc::new),
    )
}

fn target_with_credentials(
    config: &ExportConfig,
    credentials: Option<AwsCredentialProvider>,
) -> Result<ExportTarget> {
    let options = TargetOptions {
        endpoint: config.endpoint.clone(),
        credentials,
        ..TargetOptions::default()
    };
    crate::sink::target_from_url(&config.export_path, &options)
        .map_err(|e| Error::InvalidArgument(format!("export_path: {e}")))
}

fn manifest_path(target: &ExportTarget, run_id: &str) -> Path {
    let key = format!("{MANIFESTS_DIR}/{run_id}.json");
    if target.prefix.as_ref().is_empty() {
        Path::from(key)
    } else {
        Path::from(format!("{}/{key}", target.prefix))
    }
}

/// A failed object store request, as runs and their history show it: the
/// destination's reply summarised, never its body.
fn object_error(operation: &str, key: &Path, error: object_store::Error) -> Error {
    Error::Destination {
        operation: operation.to_string(),
        key: key.to_string(),
        summary: crate::sink::summary::store_error_summary(&error),
        retryable: crate::sink::summary::is_transient(&error),
    }
}

/// Write `manifest` create-only (a committed manifest is never rewritten):
/// the commit of its run. Returns its key.
async fn write_manifest(
    target: &ExportTarget,
    manifest: &Manifest,
) -> std::result::Result<Path, ManifestError> {
    let path = manifest_path(target, &manifest.run_id);
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| {
        ManifestError::NotWritten(Error::Internal(format!("manifest encoding: {e}")))
    })?;
    let put = PutOptions {
        mode: PutMode::Create,
        ..PutOptions::default()
    };
    match target
        .store
        .put_opts(&path, PutPayload::from(body), put)
        .await
    {
        Ok(_) => Ok(path),
        Err(error) => {
            // The put may have been applied with its reply lost (a retry then
            // finds the object): read it back before calling it a failure.
            match target.store.get(&path).await {
                Ok(found) => match found.bytes().await {
                    Ok(bytes)
                        if serde_json::from_slice::<Manifest>(&bytes)
                            .is_ok_and(|m| m.run_id == manifest.run_id) =>
                    {
                        Ok(path)
                    }
                    _ => Err(ManifestError::Unknown(object_error(
                        "write manifest",
                        &path,
                        error,
                    ))),
                },
                Err(object_store::Error::NotFound { .. }) => Err(ManifestError::NotWritten(
                    object_error("write manifest", &path, error),
                )),
                Err(_) => Err(ManifestError::Unknown(object_error(
                    "write manifest",
                    &path,
                    error,
                ))),
            }
        }
    }
}

/// Why a manifest write failed.
#[derive(Debug)]
enum ManifestError {
    /// It is certainly not there: the run did not commit.
    NotWritten(Error),
    /// It may be there: only `recover` can tell, by looking again.
    Unknown(Error),
}

impl From<ManifestError> for Error {
    fn from(error: ManifestError) -> Self {
        match error {
            ManifestError::NotWritten(e) | ManifestError::Unknown(e) => e,
        }
    }
}

/// A destination on the local file system: the folder of the export path.
#[derive(Debug, Clone)]
struct LocalFolder {
    /// The folder (absolute).
    root: std::path::PathBuf,
    /// fsync data files and manifests (the store's setting).
    fsync: bool,
}

impl LocalFolder {
    /// The local folder of `export_path`, `None` when it is not local (the
    /// same rule as [`crate::sink::target_from_url`]: a path, or `file://`).
    fn of(export_path: &str, fsync: bool) -> Option<Self> {
        let root = if export_path.contains("://") {
            let url = url::Url::parse(export_path).ok()?;
            if url.scheme() != "file" {
                return None;
            }
            url.to_file_path().ok()?
        } else {
            std::path::absolute(export_path).ok()?
        };
        Some(Self { root, fsync })
    }

    /// The file of object `key` (a full key of the local store, whose root
    /// is `/`).
    fn file_of(key: &str) -> Result<std::path::PathBuf> {
        let path = Path::parse(key)
            .map_err(|e| Error::Internal(format!("exported key `{key}` is not a path: {e}")))?;
        object_store::local::LocalFileSystem::new()
            .path_to_filesystem(&path)
            .map_err(|e| Error::Internal(format!("exported key `{key}` is not a local file: {e}")))
    }

    /// fsync the files of `keys`, their folders, and every folder up to the
    /// export folder's parent (partition folders, `_manifests` and the
    /// export folder itself may be new). Nothing without fsync.
    async fn sync(&self, keys: Vec<String>) -> Result<()> {
        if !self.fsync || keys.is_empty() {
            return Ok(());
        }
        let root = self.root.clone();
        tokio::task::spawn_blocking(move || {
            let files = keys
                .iter()
                .map(|key| Self::file_of(key))
                .collect::<Result<Vec<_>>>()?;
            crate::store::durable::sync_files(&files)?;
            let folders: std::collections::BTreeSet<&std::path::Path> =
                files.iter().filter_map(|f| f.parent()).collect();
            for folder in folders {
                crate::store::durable::sync_dirs_up_to(folder, &root)?;
            }
            root.parent()
                .map_or(Ok(()), crate::store::durable::sync_path)
        })
        .await
        .map_err(|e| Error::Internal(format!("fsync task failed: {e}")))?
    }

    /// Delete the staging files (`<name>#<n>`) of `run_id`'s data files and
    /// manifest left under the folder by uploads that never finished (a
    /// killed process). Returns their paths.
    fn delete_staging(&self, run_id: &str) -> Result<Vec<String>> {
        let marker = format!("-{run_id}.");
        let manifest = format!("{run_id}.json");
        let owned = |name: &str| name.contains(&marker) || name == manifest;
        let mut deleted = Vec::new();
        for path in crate::store::durable::staging_files(&self.root, &owned)? {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
            deleted.push(path.display().to_string());
        }
        Ok(deleted)
    }
}

/// Delete every object under the export prefix whose name carries `run_id`
/// (the data files of a run that never committed), and on a local folder
/// the run's staging files too. Returns their keys (or paths).
async fn delete_run_files(
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
) -> Result<Vec<String>> {
    let marker = format!("-{run_id}.");
    let prefix = (!target.prefix.as_ref().is_empty()).then_some(&target.prefix);
    let mut listing = target.store.list(prefix);
    let mut orphans = Vec::new();
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(|e| object_error("list", &target.prefix, e))?;
        if meta.location.as_ref().contains(&marker) {
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
async fn cleanup_failed_run(
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
async fn recover(
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
                let deleted = delete_run_files(target, local, &run.run_id).await?;
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

/// Choose the end of this run: the last whole commit after `cursor_from`
/// such that the rows of the commits up to it stay within `max_rows` (at
/// least one commit). Returns `(cursor_to, behind, row versions in range)`,
/// or `None` when nothing changed.
async fn choose_cursor_to(
    store: &Store,
    automation: &Automation,
    cursor_from: Option<i64>,
    max_rows: u64,
    trace_idle: Duration,
) -> Result<Option<(i64, bool, u64)>> {
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    // With `trace_idle`, the run stops before the first commit that landed
    // within the idle period: traces touched since are not idle yet.
    let not_before = if trace_idle.is_zero() {
        None
    } else {
        let cutoff = chrono::Utc::now().timestamp_micros()
            - i64::try_from(trace_idle.as_micros()).unwrap_or(i64::MAX / 2);
        store.with_registry(|r| r.first_commit_after(&project.id, cutoff))?
    };
    let logs = store.logs(&project).await?;
    let Some(table) = logs.table() else {
        return Ok(None);
    };
    let ctx = session(&QueryOptions::default())?;
    table.update_datafusion_session(&ctx.state())?;
    let provider = table
        .table_provider()
        .with_session(Arc::new(ctx.state()))
        .await?;
    let mut counts = ctx.read_table(provider)?;
    if let Some(from) = cursor_from {
        counts = counts.filter(col(XACT_ID).gt(lit(from)))?;
    }
    if let Some(recent) = not_before {
        counts = counts.filter(col(XACT_ID).lt(lit(recent)))?;
    }
    let batches = counts
        .aggregate(
            vec![col(XACT_ID)],
            vec![datafusion::functions_aggregate::count::count(lit(1)).alias("rows")],
        )?
        .sort(vec![col(XACT_ID).sort(true, false)])?
        .collect()
        .await?;
    let mut per_commit = Vec::new();
    for batch in &batches {
        let xacts = batch.column(0).as_primitive::<Int64Type>();
        let rows = batch.column(1).as_primitive::<Int64Type>();
        for i in 0..batch.num_rows() {
            per_commit.push((xacts.value(i), rows.value(i) as u64));
        }
    }
    let Some(&(last, _)) = per_commit.last() else {
        return Ok(None);
    };
    let mut total = 0u64;
    let mut cursor_to = per_commit[0].0;
    for &(xact, rows) in &per_commit {
        if total > 0 && total + rows > max_rows {
            break;
        }
        total += rows;
        cursor_to = xact;
    }
    Ok(Some((cursor_to, cursor_to < last, total)))
}

/// Run an export automation once. Fails at once when another run of it holds
/// the lease.
pub async fn run_export(
    store: &Store,
    state: &StateDb,
    automation: &Automation,
    trigger: Trigger,
    progress: Option<Arc<ExportProgress>>,
) -> Result<ExportReport> {
    let raw: RawExportConfig = serde_json::from_value(automation.config.clone())
        .map_err(|e| Error::Internal(format!("stored export config: {e}")))?;
    let config = raw.validate()?;
    let external_id = automation_external_id(store, automation)?;
    let target = export_target_assumed(&config, Some(&external_id)).await?;
    let run_id = uuid::Uuid::now_v7().to_string();
    let lease = RunLease::take(store, state, automation, &run_id)?;
    let local = LocalFolder::of(&config.export_path, store.fsync());
    let run = RunContext {
        automation,
        config: &config,
        target: &target,
        local: local.as_ref(),
        run_id: &run_id,
        progress: progress.as_ref(),
    };
    let result = run_export_leased(store, state, &run, trigger).await;
    lease.release(state)?;
    result
}

/// What one run works on.
#[derive(Debug, Clone, Copy)]
struct RunContext<'a> {
    automation: &'a Automation,
    config: &'a ExportConfig,
    target: &'a ExportTarget,
    /// The destination's folder, when it is local.
    local: Option<&'a LocalFolder>,
    run_id: &'a str,
    progress: Option<&'a Arc<ExportProgress>>,
}

async fn run_export_leased(
    store: &Store,
    state: &StateDb,
    run: &RunContext<'_>,
    trigger: Trigger,
) -> Result<ExportReport> {
    let RunContext {
        automation,
        config,
        target,
        local,
        run_id,
        progress,
    } = *run;
    let recovered = recover(state, automation, target, local).await?;
    let cursor_from = state.cursor(&automation.id)?;
    let mut report = ExportReport {
        run_id: run_id.to_string(),
        status: RunStatus::Succeeded,
        rows: 0,
        bytes: 0,
        files: 0,
        cursor_from,
        cursor_to: cursor_from,
        manifest: None,
        recovered,
    };
    let Some((cursor_to, behind, versions)) = choose_cursor_to(
        store,
        automation,
        cursor_from,
        config.max_rows_per_run,
        config.trace_idle,
    )
    .await?
    else {
        return Ok(report);
    };
    let started = now_rfc3339();
    let snapshot = snapshot_for(store, automation).await?;
    // The snapshot goes into the run's details first: while the run is
    // `running` and leased, vacuum keeps its files (StateDb::pinned_versions).
    state.start_run(
        &automation.id,
        run_id,
        trigger,
        cursor_from,
        Some(cursor_to),
        &serde_json::json!({ SNAPSHOT_VERSION: snapshot }),
    )?;
    if let Some(progress) = progress {
        progress
            .total
            .store(versions, std::sync::atomic::Ordering::Relaxed);
    }
    let written = match write_run(store, run, cursor_from, cursor_to, snapshot).await {
        Ok(written) => written,
        Err((error, _completed)) => {
            cleanup_failed_run(state, target, local, run_id, &error).await?;
            return Err(error);
        }
    };
    // The manifest must never name a file that a power loss could take.
    if let Some(local) = local
        && let Err(error) = local
            .sync(written.iter().map(|f| f.key.clone()).collect())
            .await
    {
        cleanup_failed_run(state, target, Some(local), run_id, &error).await?;
        return Err(error);
    }
    crate::faults::kill_point("after_files");
    let manifest = Manifest {
        run_id: run_id.to_string(),
        automation_id: automation.id.clone(),
        project_id: automation.project_id.clone(),
        data: config.data.clone(),
        format: config.sink.format().name().to_string(),
        schema_version: SCHEMA_VERSION,
        cursor_from: cursor_from.map(|c| c.to_string()),
        cursor_to: cursor_to.to_string(),
        started,
        finished: now_rfc3339(),
        rows: written.iter().map(|f| f.rows).sum(),
        files: written,
    };
    let path = match write_manifest(target, &manifest).await {
        Ok(path) => path,
        Err(ManifestError::NotWritten(error)) => {
            cleanup_failed_run(state, target, local, run_id, &error).await?;
            return Err(error);
        }
        Err(ManifestError::Unknown(error)) => {
            // Leave the run `running`: the next run's recovery looks for the
            // manifest and either commits it or deletes the files.
            return Err(error);
        }
    };
    // The run is committed; the cursor moves only once its manifest is on
    // disk. A failed fsync leaves the run `running`: the next run's recovery
    // syncs the manifest again and moves the cursor.
    if let Some(local) = local {
        local.sync(vec![path.to_string()]).await?;
    }
    crate::faults::kill_point("after_manifest");
    let status = if behind {
        RunStatus::Behind
    } else {
        RunStatus::Succeeded
    };
    let outcome = RunOutcome {
        rows: manifest.rows,
        bytes: manifest.files.iter().map(|f| f.bytes).sum(),
        files: manifest.files.len() as u64,
        cursor_to: Some(cursor_to),
        details: serde_json::json!({"manifest": path.to_string()}),
    };
    state.finish_run(run_id, status, &outcome)?;
    report.status = status;
    report.rows = outcome.rows;
    report.bytes = outcome.bytes;
    report.files = outcome.files;
    report.cursor_to = Some(cursor_to);
    report.manifest = Some(path.to_string());
    Ok(report)
}

/// The external id an export presents when it assumes its role:
/// `spanlake:<org of its project>:<project>:<automation>`.
pub fn automation_external_id(store: &Store, automation: &Automation) -> Result<String> {
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    Ok(crate::sink::credentials::external_id(
        &project.org_id,
        &project.id,
        &automation.id,
    ))
}

pub use crate::state::SNAPSHOT_VERSION;

/// The table version a run reads: the latest when it starts. The run reads
/// the row versions up to its `cursor_to` from it
/// ([`ProjectLogs::resolved_view_between`](crate::store::ProjectLogs::resolved_view_between)),
/// so rows that retention deleted since are not exported, and a run that
/// lags behind compactions and vacuums reads current files, never ones that
/// may have been purged.
async fn snapshot_for(store: &Store, automation: &Automation) -> Result<i64> {
    let project = store.with_registry(|r| r.get(&automation.project_id))?;
    let logs = store.logs(&project).await?;
    logs.version()
        .ok_or_else(|| Error::Internal("an export run found no table to read".into()))
}

/// Write the data files of a run; on failure, the error and the files
/// completed before it.
async fn write_run(
    store: &Store,
    run: &RunContext<'_>,
    cursor_from: Option<i64>,
    cursor_to: i64,
    snapshot: i64,
) -> std::result::Result<Vec<WrittenFile>, (Error, Vec<WrittenFile>)> {
    let RunContext {
        automation,
        config,
        target,
        local: _,
        run_id,
        progress,
    } = *run;
    let failed = |e: Error| (e, Vec::new());
    let project = store
        .with_registry(|r| r.get(&automation.project_id))
        .map_err(failed)?;
    let logs = store
        .logs_at(&project, Some(snapshot))
        .await
        .map_err(failed)?;
    // The snapshot is open (its files listed) and pinned by this run.
    crate::faults::pause_point("export_snapshot").await;
    let options = QueryOptions::default();
    let ctx = session(&options).map_err(failed)?;
    let changed = logs
        .resolved_view_between(&ctx, cursor_from, Some(cursor_to))
        .await
        .map_err(failed)?;
    let (query, rows) = match config.data {
        ExportData::Spans => (
            "select: * | from: project_logs('export') spans".to_string(),
            changed,
        ),
        ExportData::Query => (config.btql.clone().unwrap_or_default(), changed),
        ExportData::Traces => {
            // A trace is exported again, whole, when any of its spans changed:
            // every span (at the pinned snapshot) of the traces touched.
            let mut touched = changed
                .select(vec![col("root_span_id")])
                .and_then(|f| f.distinct())
                .map_err(|e| failed(e.into()))?;
            if !config.trace_idle.is_zero() {
                // Traces touched after this run's range are still active:
                // they go out in a later run, with their later changes.
                let latest = store.logs(&project).await.map_err(failed)?;
                let active = latest
                    .resolved_view_after(&ctx, Some(cursor_to))
                    .await
                    .map_err(failed)?
                    .select(vec![col("root_span_id")])
                    .map_err(|e| failed(e.into()))?;
                touched = touched
                    .join(
                        active,
                        datafusion::common::JoinType::LeftAnti,
                        &["root_span_id"],
                        &["root_span_id"],
                        None,
                    )
                    .map_err(|e| failed(e.into()))?;
            }
            let all = logs
                .resolved_view_between(&ctx, None, Some(cursor_to))
                .await
                .map_err(failed)?;
            let spans = all
                .join(
                    touched,
                    datafusion::common::JoinType::LeftSemi,
                    &["root_span_id"],
                    &["root_span_id"],
                    None,
                )
                .map_err(|e| failed(e.into()))?;
            // Exports keep whole values: no preview truncation.
            (
                "select: * | from: project_logs('export') summary | preview_length: -1".to_string(),
                spans,
            )
        }
    };
    let result = run_query_over_view(&ctx, &query, rows, &options)
        .await
        .map_err(failed)?;
    let json_columns: Vec<String> = result
        .columns
        .iter()
        .filter(|c| c.json || JSON_COLUMNS.contains(&c.name.as_str()))
        .map(|c| c.name.clone())
        .collect();
    let stream = match progress {
        None => result.stream,
        Some(progress) => {
            let progress = Arc::clone(progress);
            let schema = result.stream.schema();
            let counted = result.stream.inspect(move |batch| {
                if let Ok(batch) = batch {
                    progress.rows.fetch_add(
                        batch.num_rows() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                }
            });
            Box::pin(
                datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, counted),
            )
        }
    };
    crate::sink::write_stream(target, &config.sink, run_id, stream, &json_columns)
        .await
        .map(|(files, _metrics)| files)
        .map_err(|e| {
            let completed = e.completed.clone();
            (
                Error::InvalidArgument(format!(
                    "export failed: {}",
                    crate::sink::summary::error_chain_summary(&e)
                )),
                completed,
            )
        })
}

/// A one-shot export of a BTQL query's rows (no automation, no cursor):
/// data files, then a manifest. Returns the manifest.
pub async fn export_query(
    store: &Store,
    text: &str,
    config: &ExportConfig,
    options: &QueryOptions,
) -> Result<Manifest> {
    let target = export_target_assumed(config, None).await?;
    let local = LocalFolder::of(&config.export_path, store.fsync());
    let run_id = uuid::Uuid::now_v7().to_string();
    let started = now_rfc3339();
    let result = crate::query::run_query(store, text, options).await?;
    let json_columns: Vec<String> = result
        .columns
        .iter()
        .filter(|c| c.json)
        .map(|c| c.name.clone())
        .collect();
    let files = match crate::sink::write_stream(
        &target,
        &config.sink,
        &run_id,
        result.stream,
        &json_columns,
    )
    .await
    {
        Ok((files, _)) => files,
        Err(e) => {
            let _ = delete_run_files(&target, local.as_ref(), &run_id).await;
            return Err(Error::InvalidArgument(format!(
                "export failed: {}",
                crate::sink::summary::error_chain_summary(&e)
            )));
        }
    };
    if let Some(local) = &local
        && let Err(error) = local
            .sync(files.iter().map(|f| f.key.clone()).collect())
            .await
    {
        let _ = delete_run_files(&target, Some(local), &run_id).await;
        return Err(error);
    }
    let manifest = Manifest {
        run_id: run_id.clone(),
        automation_id: String::new(),
        project_id: String::new(),
        data: ExportData::Query,
        format: config.sink.format().name().to_string(),
        schema_version: SCHEMA_VERSION,
        cursor_from: None,
        cursor_to: String::new(),
        started,
        finished: now_rfc3339(),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
    };
    let path = write_manifest(&target, &manifest)
        .await
        .map_err(Error::from)?;
    if let Some(local) = &local {
        local.sync(vec![path.to_string()]).await?;
    }
    Ok(manifest)
}
