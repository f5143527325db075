//! The scheduler of `spanlake serve`: runs every active automation (export
//! or retention) at its interval, exports back to back while one is behind.
//!
//! ```text
//!  loop every `tick`:
//!    for each active export automation (oldest first):
//!      due = never ran | last run behind | last run left `running` (crash)
//!            | last start + interval <= now | last failure + retry delay <= now
//!      due ──► Runner::run (lease: a CLI `run` of the same automation waits its turn)
//!    stop requested? finish the current run, then return
//! ```
//!
//! An export created or changed over the HTTP API (`origin = api`) is
//! checked against the operator's [`DestinationPolicy`] before each run: a
//! refused destination (a flag removed since, a host that now resolves to a
//! private address) is recorded as a failed run, with the refusal as its
//! error, and nothing is written or requested.
//!
//! A run is never interrupted by a shutdown request: the current one
//! finishes (a second signal in the CLI exits at once, which is safe too: the
//! next run recovers).
//!
//! Compaction: every `compaction_check` (and on the first pass), each
//! project whose table statistics meet the [`CompactionPolicy`] (by default:
//! at least 10 000 row versions, and 10% of all, in files holding versions
//! to fold; or 32 small files) is compacted, one project at a time, and the
//! figures are logged (`SPANLAKE_LOG=info`). A project locked by a writer is
//! tried again at the next check.

use std::time::Duration;

use tokio::sync::watch;

use super::policy::DestinationPolicy;
use super::runner::{AutomationConfig, RunReport, Runner};
use crate::error::Result;
use crate::state::{RunStatus, StateDb, Trigger};
use crate::store::Store;
use crate::store::compact::{Compaction, CompactionPolicy};

/// How long after the newest of `recent` runs (newest first), a failed one, the scheduler tries again: a
/// failure that retrying may cure (`details.retryable`, see
/// [`Error::is_retryable`](crate::Error::is_retryable)) after `base`
/// doubled per failure in a row (at most 64 times `base`, and at most the
/// interval), less up to a quarter of jitter drawn from the run id (so the
/// automations that failed together do not retry together); any other
/// failure after a whole interval (until its configuration changes or a
/// manual run succeeds).
fn retry_wait(base: Duration, interval: Duration, recent: &[crate::state::Run]) -> Duration {
    let Some(last) = recent.first() else {
        return Duration::ZERO;
    };
    let retryable = last
        .details
        .get("retryable")
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(true);
    if !retryable {
        return interval;
    }
    let in_a_row = recent
        .iter()
        .take_while(|run| run.status == RunStatus::Failed)
        .count()
        .max(1);
    let doubled = base.saturating_mul(1 << (in_a_row - 1).min(6));
    let seed = {
        let mut hash = fnv::FnvHasher::default();
        std::hash::Hasher::write(&mut hash, last.run_id.as_bytes());
        std::hash::Hasher::finish(&hash)
    };
    let jitter = doubled.mul_f64((seed % 1000) as f64 / 4000.0);
    doubled.saturating_sub(jitter).min(interval)
}

/// Options of the scheduler.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// How often due automations are looked for.
    pub tick: Duration,
    /// Wait after a failed run before the next attempt (at most the interval).
    pub retry_delay: Duration,
    /// Return after one pass over the automations (for tests and cron).
    pub once: bool,
    /// When projects are compacted (`None`: never).
    pub compaction: Option<CompactionPolicy>,
    /// How often projects are checked against the compaction policy.
    pub compaction_check: Duration,
    /// What exports created over the API may write to (checked before each
    /// of their runs).
    pub destinations: DestinationPolicy,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            retry_delay: Duration::from_secs(60),
            once: false,
            compaction: Some(CompactionPolicy::default()),
            compaction_check: Duration::from_secs(60),
            destinations: DestinationPolicy::default(),
        }
    }
}

/// What a pass did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassSummary {
    /// Runs started.
    pub runs: u64,
    /// Runs that failed.
    pub failures: u64,
}

fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// One pass: run every due automation once (a behind one again and again
/// until it catches up, unless a stop is requested).
pub async fn run_due(
    store: &Store,
    options: &SchedulerOptions,
    stop: &watch::Receiver<bool>,
) -> Result<PassSummary> {
    let state = StateDb::of(store)?;
    let mut summary = PassSummary::default();
    for automation in state.list(None)? {
        if automation.status != "active" {
            continue;
        }
        let interval = match AutomationConfig::of(&automation) {
            Ok(config) => config.interval(),
            Err(e) => {
                tracing::warn!(automation = %automation.name, error = %e, "skipped");
                continue;
            }
        };
        loop {
            if *stop.borrow() {
                return Ok(summary);
            }
            let now = store.clock().now();
            // The newest runs: the last one, and the failures in a row.
            let recent = state.runs(&automation.id, 7)?;
            let due = match recent.first() {
                None => true,
                Some(run) => match run.status {
                    RunStatus::Behind | RunStatus::Running => true,
                    RunStatus::Succeeded => parse_time(&run.started).is_none_or(|started| {
                        started + chrono::Duration::from_std(interval).unwrap_or_default() <= now
                    }),
                    RunStatus::Failed => {
                        let at = parse_time(run.finished.as_deref().unwrap_or(&run.started));
                        // A configuration changed since is tried at once.
                        let changed = parse_time(&automation.updated)
                            .zip(at)
                            .is_some_and(|(updated, at)| updated > at);
                        let wait = retry_wait(options.retry_delay, interval, &recent);
                        changed
                            || at.is_none_or(|at| {
                                at + chrono::Duration::from_std(wait).unwrap_or_default() <= now
                            })
                    }
                },
            };
            if !due {
                break;
            }
            summary.runs += 1;
            let runner = Runner::new(store, &state).with_policy(&options.destinations);
            match runner.run(&automation, Trigger::Schedule, None).await {
                Ok(report) => {
                    let behind = match &report {
                        RunReport::Export(report) => {
                            tracing::info!(
                                automation = %automation.name,
                                rows = report.rows,
                                files = report.files,
                                status = ?report.status,
                                "export run finished"
                            );
                            report.status == RunStatus::Behind
                        }
                        RunReport::Retention(report) => {
                            tracing::info!(
                                automation = %automation.name,
                                rows_deleted = report.rows_deleted,
                                files_purged = report.files_purged,
                                "retention run finished"
                            );
                            false
                        }
                    };
                    if !behind {
                        break;
                    }
                }
                Err(e) => {
                    summary.failures += 1;
                    tracing::warn!(automation = %automation.name, error = %e, "automation run failed");
                    break;
                }
            }
        }
    }
    Ok(summary)
}

/// Compact every table (a project's logs, an experiment, a dataset) that
/// `policy` says is due, one at a time; returns how many were compacted. Failures are logged, not returned: the next
/// check tries again.
pub async fn compact_due(
    store: &Store,
    policy: &CompactionPolicy,
    stop: &watch::Receiver<bool>,
) -> Result<u64> {
    let projects = store.with_registry(|r| r.all_tables())?;
    let mut compacted = 0;
    for project in projects {
        if *stop.borrow() {
            break;
        }
        let reason = match store
            .logs(&project)
            .await
            .and_then(|logs| policy.due(&logs))
        {
            Ok(Some(reason)) => reason,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(project = %project.name, table = %project.table_id(), error = %e, "compaction check failed");
                continue;
            }
        };
        let compaction = Compaction::new(store, &project).options(policy.options.clone());
        match compaction.run().await {
            Ok((report, _)) if report.is_noop() => {
                tracing::info!(project = %project.name, table = %project.table_id(), %reason, "compaction found nothing to rewrite");
            }
            Ok((report, _)) => {
                compacted += 1;
                tracing::info!(
                    project = %project.name,
                    table = %project.table_id(),
                    %reason,
                    version = report.version,
                    ids_folded = report.ids_folded,
                    rows_in = report.rows_in,
                    rows_out = report.rows_out,
                    files_in = report.files_in,
                    files_out = report.files_out,
                    bytes_in = report.bytes_in,
                    bytes_out = report.bytes_out,
                    elapsed_ms = report.elapsed_ms,
                    "compaction committed"
                );
            }
            Err(e) if e.is_retryable() => {
                tracing::info!(project = %project.name, table = %project.table_id(), error = %e, "compaction skipped; tried again at the next check");
            }
            Err(e) => {
                tracing::warn!(project = %project.name, table = %project.table_id(), error = %e, "compaction failed");
            }
        }
    }
    Ok(compacted)
}

/// Run the scheduler until `stop` turns true (or after one pass with `once`).
pub async fn serve(
    store: &Store,
    options: &SchedulerOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let mut next_compaction = tokio::time::Instant::now();
    loop {
        run_due(store, options, &stop).await?;
        if let Some(policy) = &options.compaction
            && tokio::time::Instant::now() >= next_compaction
        {
            compact_due(store, policy, &stop).await?;
            next_compaction = tokio::time::Instant::now() + options.compaction_check;
        }
        if options.once || *stop.borrow() {
            return Ok(());
        }
        tokio::select! {
            _ = tokio::time::sleep(options.tick) => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::{IngestOptions, ingest};
    use crate::state::{Kind, Origin};

    async fn store_with_a_row() -> (tempfile::TempDir, Store, String) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().unwrap().resolve_or_create("p").unwrap();
        let line = r#"{"id": "a", "created": "2026-11-01T00:00:00Z", "input": "x"}"#;
        let input = std::io::Cursor::new(line.as_bytes().to_vec());
        ingest(
            &store,
            &project,
            Box::new(input),
            "test",
            &IngestOptions::default(),
        )
        .await
        .unwrap();
        (dir, store, project.id)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failure_that_retrying_cannot_cure_is_recorded_once_per_interval() {
        let (_dir, store, project_id) = store_with_a_row().await;
        let state = StateDb::of(&store).unwrap();
        // A destination that cannot exist: `/proc` takes no new folders.
        let automation = state
            .create(
                &project_id,
                "e",
                "",
                Kind::Export,
                &serde_json::json!({"data": "spans", "export_path": "file:///proc/spanlake-nowhere/out", "interval": "1h"}),
                Origin::Cli,
            )
            .unwrap();
        let options = SchedulerOptions {
            retry_delay: Duration::ZERO,
            ..SchedulerOptions::default()
        };
        let (_stop_tx, stop) = watch::channel(false);
        for _ in 0..4 {
            run_due(&store, &options, &stop).await.unwrap();
        }
        let runs = state.runs(&automation.id, 10).unwrap();
        assert_eq!(runs.len(), 1, "{runs:#?}");
        assert_eq!(runs[0].status, RunStatus::Failed);
        assert_eq!(runs[0].details["retryable"], false, "{runs:#?}");
        // A change of its configuration is tried at once.
        std::thread::sleep(Duration::from_millis(5));
        state
            .update(
                &automation.id,
                "e",
                "",
                &serde_json::json!({"data": "spans", "export_path": "file:///proc/spanlake-elsewhere/out", "interval": "1h"}),
                None,
            )
            .unwrap();
        run_due(&store, &options, &stop).await.unwrap();
        assert_eq!(state.runs(&automation.id, 10).unwrap().len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scheduled_run_that_finds_another_run_going_records_nothing() {
        let (_dir, store, project_id) = store_with_a_row().await;
        let state = StateDb::of(&store).unwrap();
        let out = tempfile::tempdir().unwrap();
        let automation = state
            .create(
                &project_id,
                "e",
                "",
                Kind::Export,
                &serde_json::json!({"data": "spans", "export_path": format!("file://{}", out.path().display()), "interval": "1h"}),
                Origin::Cli,
            )
            .unwrap();
        // Another process's run holds the lease.
        assert!(
            state
                .try_lease(&automation.id, "elsewhere", Duration::from_secs(60))
                .unwrap()
        );
        let (_stop_tx, stop) = watch::channel(false);
        run_due(&store, &SchedulerOptions::default(), &stop)
            .await
            .unwrap();
        assert!(state.runs(&automation.id, 10).unwrap().is_empty());
        state.release_lease(&automation.id, "elsewhere").unwrap();
        run_due(&store, &SchedulerOptions::default(), &stop)
            .await
            .unwrap();
        let runs = state.runs(&automation.id, 10).unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RunStatus::Succeeded, "{runs:#?}");
    }

    #[test]
    fn retryable_failures_back_off_doubling_with_jitter_up_to_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let project = store.registry().unwrap().resolve_or_create("p").unwrap();
        let state = StateDb::of(&store).unwrap();
        let automation = state
            .create(
                &project.id,
                "e",
                "",
                Kind::Export,
                &serde_json::json!({}),
                Origin::Cli,
            )
            .unwrap();
        let base = Duration::from_secs(60);
        let interval = Duration::from_secs(3600);
        let mut waits = Vec::new();
        for i in 0..8 {
            let run_id = format!("run-{i}");
            state
                .start_run(
                    &automation.id,
                    &run_id,
                    Trigger::Schedule,
                    None,
                    None,
                    &serde_json::json!({}),
                )
                .unwrap();
            state.fail_run_with(&run_id, "503", true).unwrap();
            let recent = state.runs(&automation.id, 7).unwrap();
            waits.push(retry_wait(base, interval, &recent));
        }
        for (i, wait) in waits.iter().enumerate() {
            let full = base.saturating_mul(1 << i.min(6)).min(interval);
            assert!(
                *wait <= full && *wait >= full.mul_f64(0.75),
                "failure {}: {wait:?} of {full:?}",
                i + 1
            );
        }
        assert!(waits[6] <= interval && waits[7] <= interval, "{waits:?}");
        // One that retrying cannot cure waits a whole interval.
        state
            .start_run(
                &automation.id,
                "run-x",
                Trigger::Schedule,
                None,
                None,
                &serde_json::json!({}),
            )
            .unwrap();
        state.fail_run_with("run-x", "NoSuchBucket", false).unwrap();
        let recent = state.runs(&automation.id, 7).unwrap();
        assert_eq!(retry_wait(base, interval, &recent), interval);
    }
}
