//! One export run (an automation's, leased) and one-shot query exports.

use std::sync::Arc;

use datafusion::logical_expr::col;
use futures::StreamExt;
use spanlake_dsl::schema::JSON_COLUMNS;

use super::cursor::{choose_cursor_to, snapshot_for};
use super::local::LocalFolder;
use super::manifest::{ManifestError, write_manifest};
use super::recover::{cleanup_failed_run, delete_run_files, recover};
use super::target::{ExportSinkTarget, automation_external_id, export_target_assumed};
use super::{
    ExportConfig, ExportData, ExportProgress, ExportReport, Manifest, RawExportConfig,
    SCHEMA_VERSION, SNAPSHOT_VERSION,
};
use crate::cluster::Engine;
use crate::error::{Error, Result};
use crate::metrics::{OpMetrics, Operation};
use crate::query::{PlannedQuery, QueryOptions, plan_query_over_view, session};
use crate::registry::objects::ObjectType;
use crate::sink::{ExportTarget, WrittenFile};
use crate::state::{Automation, RunLease, RunOutcome, RunStatus, StateDb, Trigger};
use crate::store::Store;

/// One run of an export automation (see the module docs of `export`).
#[derive(Debug)]
pub struct ExportRun<'a> {
    store: &'a Store,
    state: &'a StateDb,
    automation: &'a Automation,
    trigger: Trigger,
    progress: Option<Arc<ExportProgress>>,
}

impl<'a> ExportRun<'a> {
    /// A manual run of `automation`.
    pub fn new(store: &'a Store, state: &'a StateDb, automation: &'a Automation) -> Self {
        Self {
            store,
            state,
            automation,
            trigger: Trigger::Manual,
            progress: None,
        }
    }

    /// What started the run (recorded in its history).
    pub fn trigger(self, trigger: Trigger) -> Self {
        Self { trigger, ..self }
    }

    /// Count the rows written into `progress` as they go.
    pub fn progress(self, progress: Option<Arc<ExportProgress>>) -> Self {
        Self { progress, ..self }
    }

    /// Run it; fails at once when another run of the automation holds the
    /// lease.
    pub async fn run(self) -> Result<(ExportReport, OpMetrics)> {
        let started = std::time::Instant::now();
        let report = run_export(
            self.store,
            self.state,
            self.automation,
            self.trigger,
            self.progress,
        )
        .await?;
        let mut metrics = OpMetrics::since(Operation::Export, false, started);
        metrics.rows_written = report.rows;
        metrics.files_written = report.files;
        metrics.bytes_written = report.bytes;
        Ok((report, metrics))
    }
}

/// Run an export automation once. Fails at once when another run of it holds
/// the lease.
async fn run_export(
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
    let local = LocalFolder::of(&config.export_path, store.fsync());
    let target = flushed_early(
        export_target_assumed(&config, Some(&external_id)).await?,
        local.as_ref(),
    );
    let run_id = uuid::Uuid::now_v7().to_string();
    let lease = RunLease::take(store, state, automation, &run_id)?;
    let run = RunContext {
        automation,
        state: Some(state),
        config: &config,
        target: &target,
        external_id: Some(&external_id),
        local: local.as_ref(),
        run_id: &run_id,
        progress: progress.as_ref(),
    };
    let result = run_export_leased(store, state, &run, trigger).await;
    lease.release(state)?;
    result
}

/// `target`, starting the fsync of each data file of a local folder as the
/// file completes.
fn flushed_early(target: ExportTarget, local: Option<&LocalFolder>) -> ExportTarget {
    match local.and_then(LocalFolder::flush_early) {
        Some(hook) => target.on_complete(hook),
        None => target,
    }
}

/// What one run works on.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunContext<'a> {
    automation: &'a Automation,
    /// Where the run is recorded (its cluster job's id, too).
    state: Option<&'a StateDb>,
    config: &'a ExportConfig,
    target: &'a ExportTarget,
    /// The external id its role is assumed with.
    external_id: Option<&'a str>,
    /// The destination's folder, when it is local.
    local: Option<&'a LocalFolder>,
    run_id: &'a str,
    progress: Option<&'a Arc<ExportProgress>>,
}

pub(super) async fn run_export_leased(
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
        ..
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
    let started = store.clock().now_rfc3339();
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
        object_type: (config.object_type != ObjectType::ProjectLogs)
            .then(|| config.object_type.to_string()),
        object_id: config.object_id.clone(),
        data: config.data.clone(),
        format: config.sink.format().name().to_string(),
        schema_version: SCHEMA_VERSION,
        cursor_from: cursor_from.map(|c| c.to_string()),
        cursor_to: cursor_to.to_string(),
        started,
        finished: store.clock().now_rfc3339(),
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
    if !config.engine.is_local() {
        report
            .recovered
            .extend(remove_unlisted(target, local, run_id, &manifest.files).await);
    }
    report.status = status;
    report.rows = outcome.rows;
    report.bytes = outcome.bytes;
    report.files = outcome.files;
    report.cursor_to = Some(cursor_to);
    report.manifest = Some(path.to_string());
    Ok(report)
}

/// Write the data files of a run; on failure, the error and the files
/// completed before it.
pub(super) async fn write_run(
    store: &Store,
    run: &RunContext<'_>,
    cursor_from: Option<i64>,
    cursor_to: i64,
    snapshot: i64,
) -> std::result::Result<Vec<WrittenFile>, (Error, Vec<WrittenFile>)> {
    let RunContext {
        automation, config, ..
    } = *run;
    let failed = |e: Error| (e, Vec::new());
    let project = automation.export_table(store).map_err(failed)?;
    let logs = store
        .logs_at(&project, Some(snapshot))
        .await
        .map_err(failed)?;
    // The snapshot is open (its files listed) and pinned by this run.
    crate::faults::pause_point("export_snapshot").await;
    let options = QueryOptions {
        distributed: !config.engine.is_local(),
        ..QueryOptions::default()
    };
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
    let planned = plan_query_over_view(&ctx, &query, rows, &options, store.clock())
        .await
        .map_err(failed)?;
    write_planned(planned, &run.sink_job(), |c| JSON_COLUMNS.contains(&c)).await
}

/// What the sink of a run needs.
#[derive(Debug, Clone, Copy)]
struct SinkJob<'a> {
    config: &'a ExportConfig,
    target: &'a ExportTarget,
    /// The external id its role is assumed with.
    external_id: Option<&'a str>,
    run_id: &'a str,
    progress: Option<&'a Arc<ExportProgress>>,
    /// Where the id of the run's cluster job is recorded (for a later
    /// recovery to cancel it).
    state: Option<&'a StateDb>,
}

/// The key of a run's details that holds its cluster job's id.
pub(super) const CLUSTER_JOB: &str = "cluster_job";

impl RunContext<'_> {
    fn sink_job(&self) -> SinkJob<'_> {
        SinkJob {
            state: self.state,
            config: self.config,
            target: self.target,
            external_id: self.external_id,
            run_id: self.run_id,
            progress: self.progress,
        }
    }
}

/// Write the rows of `planned` as the files of `run`, on the run's engine:
/// here, each partition of the result in a task of its own; or on a
/// cluster, each partition in a task of an executor. The string columns
/// the query marks as JSON, and those `also_json` accepts, are stored as
/// JSON. On failure, the error and the files completed before it (none
/// are known from a cluster: the caller deletes the run's files by name).
async fn write_planned(
    planned: PlannedQuery,
    job: &SinkJob<'_>,
    also_json: impl Fn(&str) -> bool,
) -> std::result::Result<Vec<WrittenFile>, (Error, Vec<WrittenFile>)> {
    let SinkJob {
        config,
        target,
        external_id,
        run_id,
        progress,
        state,
    } = *job;
    let failed = |e: Error| (e, Vec::new());
    let json_columns: Vec<String> = planned
        .columns
        .iter()
        .filter(|c| c.json || also_json(&c.name))
        .map(|c| c.name.clone())
        .collect();
    if let Engine::Ballista(scheduler) = &config.engine {
        let (plan, session) = planned.physical_plan().await.map_err(failed)?;
        let sink_target = Arc::new(ExportSinkTarget {
            config: (*config.raw).clone(),
            external_id: external_id.map(str::to_string),
        });
        let files = crate::cluster::write_on_cluster(
            scheduler,
            plan,
            session,
            &super::cluster_codec(),
            sink_target,
            run_id,
            json_columns,
            |job| match state {
                Some(state) => state.update_run_details(
                    run_id,
                    &serde_json::json!({ CLUSTER_JOB: { "scheduler": scheduler, "job_id": job } }),
                ),
                None => Ok(()),
            },
        )
        .await
        .map_err(failed)?;
        if let Some(progress) = progress {
            let rows = files.iter().map(|f| f.rows).sum();
            progress
                .rows
                .fetch_add(rows, std::sync::atomic::Ordering::Relaxed);
        }
        return Ok(files);
    }
    let result = planned.run_here(true).await.map_err(failed)?;
    let streams = match progress {
        None => result.streams,
        Some(progress) => result
            .streams
            .into_iter()
            .map(|stream| counted(stream, Arc::clone(progress)))
            .collect(),
    };
    crate::sink::write_streams(target, &config.sink, run_id, streams, &json_columns)
        .await
        .map(|(files, _metrics)| files)
        .map_err(|e| {
            let completed = e.completed.clone();
            (
                Error::Sink {
                    message: crate::sink::summary::error_chain_summary(&e),
                    retryable: e.is_retryable(),
                },
                completed,
            )
        })
}

/// After a run on a cluster commits: delete the files of the run that its
/// manifest does not list (those of task attempts whose outputs the job
/// did not keep); a failure is reported, not fatal (the run is committed,
/// and no reader follows an unlisted file).
async fn remove_unlisted(
    target: &ExportTarget,
    local: Option<&LocalFolder>,
    run_id: &str,
    listed: &[WrittenFile],
) -> Vec<String> {
    let keep: std::collections::HashSet<&str> = listed.iter().map(|f| f.key.as_str()).collect();
    match super::recover::delete_run_files_except(target, local, run_id, &keep).await {
        Ok(deleted) if deleted.is_empty() => Vec::new(),
        Ok(deleted) => vec![format!(
            "deleted {} file(s) of task attempts the cluster did not keep",
            deleted.len()
        )],
        Err(e) => vec![format!(
            "files of task attempts the cluster did not keep could not be deleted ({e}); no manifest lists them"
        )],
    }
}

/// A one-shot export of a BTQL query's rows (no automation, no cursor):
/// data files, then a manifest. Returns the manifest.
pub async fn export_query(
    store: &Store,
    text: &str,
    config: &ExportConfig,
    options: &QueryOptions,
) -> Result<Manifest> {
    let local = LocalFolder::of(&config.export_path, store.fsync());
    let target = flushed_early(export_target_assumed(config, None).await?, local.as_ref());
    let run_id = uuid::Uuid::now_v7().to_string();
    let started = store.clock().now_rfc3339();
    let options = QueryOptions {
        distributed: !config.engine.is_local(),
        ..options.clone()
    };
    let planned = crate::query::plan_query(store, text, &options).await?;
    let job = SinkJob {
        config,
        target: &target,
        external_id: None,
        run_id: &run_id,
        progress: None,
        state: None,
    };
    let files = match write_planned(planned, &job, |_| false).await {
        Ok(files) => files,
        Err((error, _)) => {
            let _ = delete_run_files(&target, local.as_ref(), &run_id).await;
            return Err(error);
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
        object_type: None,
        object_id: None,
        data: ExportData::Query,
        format: config.sink.format().name().to_string(),
        schema_version: SCHEMA_VERSION,
        cursor_from: None,
        cursor_to: String::new(),
        started,
        finished: store.clock().now_rfc3339(),
        rows: files.iter().map(|f| f.rows).sum(),
        files,
    };
    let path = write_manifest(&target, &manifest)
        .await
        .map_err(Error::from)?;
    if let Some(local) = &local {
        local.sync(vec![path.to_string()]).await?;
    }
    if !config.engine.is_local() {
        for note in remove_unlisted(&target, local.as_ref(), &run_id, &manifest.files).await {
            tracing::warn!(run_id, "{note}");
        }
    }
    Ok(manifest)
}

/// `stream`, adding the rows of each batch to `progress` as they go by.
fn counted(
    stream: datafusion::execution::SendableRecordBatchStream,
    progress: Arc<ExportProgress>,
) -> datafusion::execution::SendableRecordBatchStream {
    let schema = stream.schema();
    let counted = stream.inspect(move |batch| {
        if let Ok(batch) = batch {
            progress.rows.fetch_add(
                batch.num_rows() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
    });
    Box::pin(datafusion::physical_plan::stream::RecordBatchStreamAdapter::new(schema, counted))
}
