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

use serde::{Deserialize, Serialize};

use crate::sink::WrittenFile;
use crate::state::RunStatus;

mod config;
mod cursor;
mod local;
mod manifest;
mod probe;
mod recover;
pub mod role;
mod run;
mod target;

pub use config::{ExportConfig, ExportData, RawExportConfig};
pub use probe::{TestStep, test_export_automation, test_export_target};
pub use run::{ExportRun, export_query};
pub use target::{ExportSinkTarget, automation_external_id, export_target};

/// The plan codec of a cluster, with exports' sink targets: the one every
/// role (scheduler, executors, coordinators) must use.
pub fn cluster_codec() -> crate::cluster::SpanlakeCodec {
    crate::cluster::SpanlakeCodec::new(ExportSinkTarget::decode)
}

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
    /// What was exported when it is not the project's logs: `experiment`
    /// or `dataset` (absent for `project_logs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    /// The experiment or dataset exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
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

pub use crate::state::SNAPSHOT_VERSION;
