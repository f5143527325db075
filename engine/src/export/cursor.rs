//! The range of a run: where it ends, and the table version it reads.

use std::time::Duration;

use arrow::array::AsArray;
use arrow::datatypes::Int64Type;
use datafusion::logical_expr::{col, lit};

use crate::error::{Error, Result};
use crate::query::{QueryOptions, session};
use crate::state::Automation;
use crate::store::Store;
use crate::store::scan::VersionScan;
use crate::store::schema::XACT_ID;

/// Choose the end of this run: the last whole commit after `cursor_from`
/// such that the rows of the commits up to it stay within `max_rows` (at
/// least one commit). Returns `(cursor_to, behind, row versions in range)`,
/// or `None` when nothing changed.
pub(super) async fn choose_cursor_to(
    store: &Store,
    automation: &Automation,
    cursor_from: Option<i64>,
    max_rows: u64,
    trace_idle: Duration,
) -> Result<Option<(i64, bool, u64)>> {
    let project = automation.export_table(store)?;
    // With `trace_idle`, the run stops before the first commit that landed
    // within the idle period: traces touched since are not idle yet.
    let not_before = if trace_idle.is_zero() {
        None
    } else {
        let cutoff = store.clock().now_micros()
            - i64::try_from(trace_idle.as_micros()).unwrap_or(i64::MAX / 2);
        store.with_registry(|r| r.first_commit_after(project.table_id(), cutoff))?
    };
    let logs = store.logs(&project).await?;
    let Some(table) = logs.table() else {
        return Ok(None);
    };
    let ctx = session(&QueryOptions::default())?;
    let mut counts = VersionScan::of(table).read(&ctx)?;
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

/// The table version a run reads: the latest when it starts. The run reads
/// the row versions up to its `cursor_to` from it
/// ([`ProjectLogs::resolved_view_between`](crate::store::ProjectLogs::resolved_view_between)),
/// so rows that retention deleted since are not exported, and a run that
/// lags behind compactions and vacuums reads current files, never ones that
/// may have been purged.
pub(super) async fn snapshot_for(store: &Store, automation: &Automation) -> Result<i64> {
    let project = automation.export_table(store)?;
    let logs = store.logs(&project).await?;
    logs.version()
        .ok_or_else(|| Error::Internal("an export run found no table to read".into()))
}
