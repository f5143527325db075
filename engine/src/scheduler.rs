//! The scheduler of `spanlake serve`: runs every active automation (export
//! or retention) at its interval, exports back to back while one is behind.
//!
//! ```text
//!  loop every `tick`:
//!    for each active export automation (oldest first):
//!      due = never ran | last run behind | last run left `running` (crash)
//!            | last start + interval <= now | last failure + retry delay <= now
//!      due ──► run_export (lease: a CLI `run` of the same automation waits its turn)
//!    stop requested? finish the current run, then return
//! ```
//!
//! A run is never interrupted by a shutdown request: the current one
//! finishes (a second signal in the CLI exits at once, which is safe too: the
//! next run recovers).

use std::time::Duration;

use tokio::sync::watch;

use crate::automation::state::{Kind, RunStatus, StateDb, Trigger};
use crate::error::Result;
use crate::export::{RawExportConfig, run_export};
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
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            retry_delay: Duration::from_secs(60),
            once: false,
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
        let interval = match automation.kind {
            Kind::Export => serde_json::from_value::<RawExportConfig>(automation.config.clone())
                .ok()
                .and_then(|raw| raw.validate().ok())
                .map(|config| config.interval),
            Kind::Retention => serde_json::from_value::<crate::retention::RetentionConfig>(
                automation.config.clone(),
            )
            .ok()
            .and_then(|config| config.validate().ok())
            .map(|(_, interval)| interval),
        };
        let interval = match interval {
            Some(interval) => interval,
            None => {
                tracing::warn!(automation = %automation.name, "invalid stored configuration; skipped");
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
            if automation.kind == Kind::Retention {
                let result = crate::retention::run_retention_automation(
                    store,
                    &state,
                    &automation,
                    Trigger::Schedule,
                    false,
                )
                .await;
                if let Err(e) = result {
                    summary.failures += 1;
                    tracing::warn!(automation = %automation.name, error = %e, "retention run failed");
                }
                break;
            }
            match run_export(store, &state, &automation, Trigger::Schedule, None).await {
                Ok(report) => {
                    tracing::info!(
                        automation = %automation.name,
                        rows = report.rows,
                        files = report.files,
                        status = ?report.status,
                        "export run finished"
                    );
                    if report.status != RunStatus::Behind {
                        break;
                    }
                }
                Err(e) => {
                    summary.failures += 1;
                    tracing::warn!(automation = %automation.name, error = %e, "export run failed");
                    break;
                }
            }
        }
    }
    Ok(summary)
}

/// Run the scheduler until `stop` turns true (or after one pass with `once`).
pub async fn serve(
    store: &Store,
    options: &SchedulerOptions,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    loop {
        run_due(store, options, &stop).await?;
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
