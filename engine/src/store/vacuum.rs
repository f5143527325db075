//! Vacuum: deleting from storage the data files the table no longer
//! references, after a grace period, keeping every file of a table version
//! a running export has pinned, and recording which versions may have lost
//! files so that a read of one fails clearly instead of reading a partial
//! snapshot ([`check_snapshot_kept`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;

use chrono::{DateTime, TimeDelta, Utc};
use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::metrics::{OpMetrics, Operation};
use crate::registry::Project;
use crate::store::{Store, durable};

/// Which table versions running readers pin (the automation state
/// database's running exports, [`crate::state::StateDb`]): asked once the
/// vacuum holds the write lock, so a reader that pins later can only pin
/// the current version, whose files stay.
pub trait PinnedVersions {
    /// The table versions of `project_id` pinned now.
    fn pinned_versions(&self, project_id: &str) -> Result<Vec<i64>>;
}

/// Name of the record of purged snapshots, in the project's directory.
const VACUUM_RECORD: &str = "vacuum.json";

/// What a vacuum deleted (or would delete, for a dry run).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VacuumMetrics {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Data files deleted from storage (tombstoned and orphan).
    pub files_deleted: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Their paths, relative to the table root, in deletion order.
    pub paths: Vec<String>,
    /// Of those, files that no commit ever referenced (left by a crashed
    /// writer).
    pub orphans: u64,
    /// Table versions pinned by running exports, whose files were kept.
    pub pinned_versions: Vec<i64>,
}

/// Whether a commit's log entry (JSON lines) removes any of `paths`.
fn removes_any(entry: &[u8], paths: &HashSet<&str>) -> bool {
    entry.split(|&b| b == b'\n').any(|line| {
        serde_json::from_slice::<serde_json::Value>(line)
            .ok()
            .and_then(|action| {
                action
                    .get("remove")
                    .and_then(|r| r.get("path"))
                    .and_then(|p| p.as_str())
                    .map(|p| {
                        let decoded = percent_decode(p);
                        paths.contains(p) || paths.contains(decoded.as_str())
                    })
            })
            .unwrap_or(false)
    })
}

/// `%xx` escapes of a path in the Delta log, decoded.
fn percent_decode(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(hex) = std::str::from_utf8(&bytes[i + 1..i + 3])
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The record of what vacuums purged, in the project's directory.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct VacuumRecord {
    /// Table versions below this one may have lost data files.
    purged_before_version: i64,
    /// When that vacuum ran (RFC 3339).
    vacuumed_at: String,
}

fn project_dir(store: &Store, project: &Project) -> std::path::PathBuf {
    super::table_dir(store.data_dir(), project)
}

fn read_record(dir: &Path) -> Result<Option<VacuumRecord>> {
    let path = dir.join(VACUUM_RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Internal(format!("`{}` is not a vacuum record: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(&path, e)),
    }
}

/// Replace the vacuum record (write a temporary file, rename it). With
/// `fsync`, the record is on disk when this returns: the vacuum deletes files
/// only after it, so a power loss cannot leave purged snapshots unrecorded.
fn write_record(dir: &Path, record: &VacuumRecord, fsync: bool) -> Result<()> {
    let path = dir.join(VACUUM_RECORD);
    let temp = dir.join(format!("{VACUUM_RECORD}.tmp"));
    let body = serde_json::to_vec_pretty(record)
        .map_err(|e| Error::Internal(format!("vacuum record: {e}")))?;
    std::fs::write(&temp, body).map_err(|e| Error::io(&temp, e))?;
    if fsync {
        durable::sync_path(&temp)?;
    }
    std::fs::rename(&temp, &path).map_err(|e| Error::io(&path, e))?;
    if fsync {
        durable::sync_path(dir)?;
    }
    Ok(())
}

/// Fail with a clear error when table version `version` of the project in
/// `project_dir` may have lost data files to a vacuum (a query cursor or a
/// pinned read older than the grace period), instead of reading a partial
/// snapshot.
pub fn check_snapshot_kept(project_dir: &Path, project: &Project, version: i64) -> Result<()> {
    match read_record(project_dir)? {
        Some(record) if version < record.purged_before_version => {
            Err(Error::InvalidArgument(format!(
                "snapshot version {version} of project `{}` is no longer readable: a vacuum at {} \
                 purged data files of versions before {} (retention keeps deleted files only for \
                 its grace period); a query cursor lives at most that long: run the query again \
                 without the cursor",
                project.name, record.vacuumed_at, record.purged_before_version
            )))
        }
        _ => Ok(()),
    }
}

/// A vacuum of one project: deletes from storage the data files the table
/// stopped referencing more than `grace` ago, and orphan files older than
/// `grace`, by the store's clock (see [`vacuum_at`] for the rules).
#[derive(Clone, Copy)]
pub struct Vacuum<'a> {
    store: &'a Store,
    project: &'a Project,
    grace: std::time::Duration,
    pins: &'a dyn PinnedVersions,
    dry_run: bool,
}

impl std::fmt::Debug for Vacuum<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vacuum")
            .field("project", &self.project.id)
            .field("grace", &self.grace)
            .field("dry_run", &self.dry_run)
            .finish_non_exhaustive()
    }
}

impl<'a> Vacuum<'a> {
    /// A vacuum of `project` keeping `grace` and every version in `pins`.
    pub fn new(
        store: &'a Store,
        project: &'a Project,
        grace: std::time::Duration,
        pins: &'a dyn PinnedVersions,
    ) -> Self {
        Self {
            store,
            project,
            grace,
            pins,
            dry_run: false,
        }
    }

    /// Only count what would be deleted (no lock, nothing deleted).
    pub fn dry_run(self, dry_run: bool) -> Self {
        Self { dry_run, ..self }
    }

    pub async fn run(self) -> Result<(VacuumMetrics, OpMetrics)> {
        let started = std::time::Instant::now();
        let report = vacuum_at(
            self.store,
            self.project,
            self.store.clock().now(),
            self.grace,
            self.dry_run,
            self.pins,
        )
        .await?;
        let mut metrics = OpMetrics::since(Operation::Vacuum, self.dry_run, started);
        metrics.files_removed = report.files_deleted;
        metrics.bytes_removed = report.bytes;
        Ok((report, metrics))
    }
}

/// Whether a path relative to the table root is a data file (not the log,
/// not hidden: Delta ignores names starting with `_` or `.`).
fn is_data_path(path: &str) -> bool {
    !path
        .split('/')
        .any(|part| part.starts_with('_') || part.starts_with('.'))
}

/// Delete from storage the data files of `project` that
/// - were removed from the table (tombstones) before `now - grace`, and
///   before the commit of the oldest table version pinned by a running export
///   (so that every version from that one on stays whole), or
/// - no commit references (orphans of a crashed ingest or rewrite) and were
///   last written before `now - grace`,
///
/// and that no pinned version references. Takes the project's write lock
/// unless `dry_run`, so no writer of this store is between writing its files
/// and committing them; the grace period guards any other. Files go oldest
/// removal first; before deleting any, the versions that may lose files are
/// recorded (see [`check_snapshot_kept`]).
async fn vacuum_at(
    store: &Store,
    project: &Project,
    now: DateTime<Utc>,
    grace: std::time::Duration,
    dry_run: bool,
    pins: &dyn PinnedVersions,
) -> Result<VacuumMetrics> {
    let grace = TimeDelta::from_std(grace)
        .map_err(|_| Error::InvalidArgument("vacuum grace period is too long".into()))?;
    if store.logs(project).await?.table().is_none() {
        return Ok(VacuumMetrics {
            dry_run,
            ..VacuumMetrics::default()
        });
    }
    let (logs, lock) = if dry_run {
        (store.logs(project).await?, None)
    } else {
        let (logs, lock) = store.logs_for_write(project).await?;
        (logs, Some(lock))
    };
    let table = logs
        .table()
        .ok_or_else(|| Error::Internal("table vanished while opening it".into()))?;
    let current = logs.version().unwrap_or(0);
    let object_store = table.object_store();
    let horizon = (now - grace).timestamp_millis();

    // Commit times of the versions, from the log's listing.
    let mut commit_millis: HashMap<i64, i64> = HashMap::new();
    let log_dir = deltalake::Path::from("_delta_log");
    let mut listing = object_store.list(Some(&log_dir));
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(deltalake::DeltaTableError::from)?;
        if let Some(name) = meta.location.filename()
            && let Some(stem) = name.strip_suffix(".json")
            && stem.len() == 20
            && let Ok(v) = stem.parse::<i64>()
        {
            commit_millis.insert(v, meta.last_modified.timestamp_millis());
        }
    }

    // Pins: their files are kept, and tombstones younger than the oldest
    // pinned commit too (so every version from it on stays whole).
    let pinned: Vec<i64> = pins
        .pinned_versions(project.table_id())?
        .into_iter()
        .filter(|&v| v < current)
        .collect();
    let mut keep: HashSet<String> = table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| f.path().into_owned())
        .collect();
    let mut tombstone_horizon = horizon;
    for &v in &pinned {
        let mut old = table.clone();
        old.load_version(u64::try_from(v).unwrap_or(0)).await?;
        keep.extend(
            old.snapshot()?
                .log_data()
                .iter()
                .map(|f| f.path().into_owned()),
        );
        if let Some(&millis) = commit_millis.get(&v) {
            tombstone_horizon = tombstone_horizon.min(millis);
        }
    }

    // Tombstones old enough, oldest first.
    let mut tombstones: Vec<(i64, String)> = Vec::new();
    let mut tombstoned: HashSet<String> = HashSet::new();
    let mut stream = table.snapshot()?.all_tombstones(table.log_store().as_ref());
    while let Some(t) = stream.next().await {
        let t = t?;
        let path = t.path().into_owned();
        let removed = t.deletion_timestamp().unwrap_or(0);
        if removed < tombstone_horizon && !keep.contains(&path) {
            tombstones.push((removed, path.clone()));
        }
        tombstoned.insert(path);
    }
    drop(stream);
    tombstones.sort();

    // Every object under the table: sizes, and orphans.
    let mut sizes: HashMap<String, u64> = HashMap::new();
    let mut orphans: Vec<(i64, String)> = Vec::new();
    let mut listing = object_store.list(None);
    while let Some(meta) = listing.next().await {
        let meta = meta.map_err(deltalake::DeltaTableError::from)?;
        let path = meta.location.to_string();
        if !is_data_path(&path) {
            continue;
        }
        sizes.insert(path.clone(), meta.size);
        let written = meta.last_modified.timestamp_millis();
        if !keep.contains(&path) && !tombstoned.contains(&path) && written < horizon {
            orphans.push((written, path));
        }
    }
    orphans.sort();

    // Tombstoned files already gone (an earlier vacuum) are skipped.
    let removed_max = tombstones
        .iter()
        .filter(|(_, p)| sizes.contains_key(p))
        .map(|(t, _)| *t)
        .max();
    let paths: Vec<String> = tombstones
        .into_iter()
        .map(|(_, p)| p)
        .filter(|p| sizes.contains_key(p))
        .chain(orphans.iter().map(|(_, p)| p.clone()))
        .collect();
    let bytes = paths.iter().filter_map(|p| sizes.get(p)).sum();
    let metrics = VacuumMetrics {
        dry_run,
        files_deleted: paths.len() as u64,
        bytes,
        orphans: orphans.len() as u64,
        pinned_versions: pinned,
        paths,
    };
    if dry_run || metrics.paths.is_empty() {
        return Ok(metrics);
    }

    // Record the versions that may lose files before losing any: a file
    // removed at version `r` is referenced only by versions before `r`, so
    // the newest version that removed a purged file bounds the versions that
    // lose files. It is found in the log, newest first, starting at the last
    // version logged no later than the newest removal stamp (plus a margin:
    // file times are coarse, and may even precede the stamp they follow).
    if let Some(stamp) = removed_max {
        let purged: HashSet<&str> = metrics.paths.iter().map(String::as_str).collect();
        let mut versions: Vec<i64> = commit_millis
            .iter()
            .filter(|&(_, &millis)| millis <= stamp + 60_000)
            .map(|(&v, _)| v)
            .collect();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        let mut purged_before = 0;
        for version in versions {
            let Some(entry) = table
                .log_store()
                .read_commit_entry(u64::try_from(version).unwrap_or(0))
                .await?
            else {
                continue;
            };
            if removes_any(&entry, &purged) {
                purged_before = version;
                break;
            }
        }
        if purged_before == 0 {
            // Not found (the log was cleaned up): every version up to the
            // current one may have lost files.
            purged_before = current;
        }
        let dir = project_dir(store, project);
        let previous = read_record(&dir)?.map_or(0, |r| r.purged_before_version);
        if purged_before > previous {
            write_record(
                &dir,
                &VacuumRecord {
                    purged_before_version: purged_before,
                    vacuumed_at: now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                },
                store.fsync(),
            )?;
        }
    }
    for (i, path) in metrics.paths.iter().enumerate() {
        match object_store
            .delete(&deltalake::Path::from(path.as_str()))
            .await
        {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => {
                return Err(Error::InvalidArgument(format!(
                    "vacuum could not delete `{path}` of project `{}` after deleting {i} file(s): {e}; run it again",
                    project.name
                )));
            }
        }
        if i == 0 {
            crate::faults::kill_point("vacuum_mid");
        }
    }
    drop(lock);
    Ok(metrics)
}
