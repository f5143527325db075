//! Running a retention plan: rewriting the files that keep some rows,
//! dropping the rest, in one commit (hiding the deleted rows; [vacuum]
//! purges their files later).
//!
//! [vacuum]: crate::store::vacuum

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use chrono::{DateTime, Utc};
use datafusion::logical_expr::{Expr, col, not};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use deltalake::kernel::Action;
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::metrics::{OpMetrics, Operation};
use crate::registry::Project;
use crate::store::{Store, commit_durably, schema};

use super::plan::*;

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

/// Retention of one project at a cutoff: rows with `created` before it are
/// deleted (see [`run_retention`] for how).
#[derive(Debug, Clone, Copy)]
pub struct Retention<'a> {
    store: &'a Store,
    project: &'a Project,
    cutoff: DateTime<Utc>,
    dry_run: bool,
}

impl<'a> Retention<'a> {
    pub fn new(store: &'a Store, project: &'a Project, cutoff: DateTime<Utc>) -> Self {
        Self {
            store,
            project,
            cutoff,
            dry_run: false,
        }
    }

    /// Plan only, and count the traces: a preview.
    pub fn dry_run(self, dry_run: bool) -> Self {
        Self { dry_run, ..self }
    }

    /// The plan, what the run did, and its figures.
    pub async fn run(self) -> Result<((RetentionPlan, RetentionMetrics), OpMetrics)> {
        let started = Instant::now();
        let (plan, done) =
            run_retention(self.store, self.project, self.cutoff, self.dry_run).await?;
        let mut metrics = OpMetrics::since(Operation::Retention, self.dry_run, started);
        metrics.rows_deleted = plan.rows;
        metrics.rows_written = done.rows_copied;
        metrics.files_written = done.files_added;
        metrics.files_removed = (plan.files_to_drop.len() + plan.files_to_rewrite.len()) as u64;
        metrics.bytes_removed = plan.bytes_to_reclaim;
        Ok(((plan, done), metrics))
    }
}

/// Run retention on `project` with `cutoff`: under the project's write lock,
/// plan, then (unless `dry_run`) rewrite the straddling files and commit, in
/// one Delta commit, the removal of the dropped and rewritten files with the
/// addition of the rewritten ones. Returns the plan and what the run did.
///
/// A preview (`dry_run`) counts traces; a run does not (`traces: None`), so
/// that dropped files stay unread; every other figure is the same.
async fn run_retention(
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
        )?
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
    crate::faults::kill_point("retention_after_files");

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
