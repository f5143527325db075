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
use crate::store::compact::{CompactionPolicy, compact};
use crate::store::{STATE_DB, Store};

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
    let state = StateDb::open(&store.data_dir().join(STATE_DB))?;
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
            let now = chrono::Utc::now();
            let last = state.runs(&automation.id, 1)?.into_iter().next();
            let due = match &last {
                None => true,
                Some(run) => match run.status {
                    RunStatus::Behind | RunStatus::Running => true,
                    RunStatus::Succeeded => parse_time(&run.started).is_none_or(|started| {
                        started + chrono::Duration::from_std(interval).unwrap_or_default() <= now
                    }),
                    RunStatus::Failed => {
                        let wait = options.retry_delay.min(interval);
                        parse_time(run.finished.as_deref().unwrap_or(&run.started)).is_none_or(
                            |at| at + chrono::Duration::from_std(wait).unwrap_or_default() <= now,
                        )
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

/// Compact every project that `policy` says is due, one at a time; returns
/// how many were compacted. Failures are logged, not returned: the next
/// check tries again.
pub async fn compact_due(
    store: &Store,
    policy: &CompactionPolicy,
    stop: &watch::Receiver<bool>,
) -> Result<u64> {
    let projects = store.with_registry(|r| r.list())?;
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
                tracing::warn!(project = %project.name, error = %e, "compaction check failed");
                continue;
            }
        };
        match compact(store, &project, &policy.options).await {
            Ok(report) if report.is_noop() => {
                tracing::info!(project = %project.name, %reason, "compaction found nothing to rewrite");
            }
            Ok(report) => {
                compacted += 1;
                tracing::info!(
                    project = %project.name,
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
                tracing::info!(project = %project.name, error = %e, "compaction skipped; tried again at the next check");
            }
            Err(e) => {
                tracing::warn!(project = %project.name, error = %e, "compaction failed");
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
