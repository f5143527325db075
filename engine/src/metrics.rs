//! The figures every operation that writes reports the same way: an export
//! run, a retention delete, a vacuum, a compaction. Each operation is a
//! builder (`ExportRun`, `Retention`, `Vacuum`, `Compaction`) whose `run`
//! returns its own report and these [`OpMetrics`], which the scheduler and
//! the CLI log as one line per operation.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Which operation the figures are of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Export,
    Retention,
    Vacuum,
    Compaction,
}

/// What one operation did (or, for a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OpMetrics {
    pub operation: Operation,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Wall time.
    #[serde(serialize_with = "as_millis")]
    pub elapsed: Duration,
    /// Rows written: exported, copied by a rewrite, or compacted.
    pub rows_written: u64,
    /// Row versions deleted (retention) or folded away (compaction).
    pub rows_deleted: u64,
    /// Data files written.
    pub files_written: u64,
    /// Data files removed from the table, or deleted from storage (vacuum).
    pub files_removed: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes removed (the files removed).
    pub bytes_removed: u64,
}

fn as_millis<S: serde::Serializer>(elapsed: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
}

impl OpMetrics {
    /// Zero figures of `operation`, timed from `started`.
    pub(crate) fn since(operation: Operation, dry_run: bool, started: Instant) -> Self {
        Self {
            operation,
            dry_run,
            elapsed: started.elapsed(),
            rows_written: 0,
            rows_deleted: 0,
            files_written: 0,
            files_removed: 0,
            bytes_written: 0,
            bytes_removed: 0,
        }
    }

    /// One log line of the figures.
    pub fn log(&self, subject: &str) {
        tracing::info!(
            operation = ?self.operation,
            subject,
            dry_run = self.dry_run,
            elapsed_ms = u64::try_from(self.elapsed.as_millis()).unwrap_or(u64::MAX),
            rows_written = self.rows_written,
            rows_deleted = self.rows_deleted,
            files_written = self.files_written,
            files_removed = self.files_removed,
            bytes_written = self.bytes_written,
            bytes_removed = self.bytes_removed,
            "operation done"
        );
    }
}
