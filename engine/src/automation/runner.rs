//! The one automation runner: what the CLI (`spanlake automation`), the
//! server (`/v1/project_automation`) and the scheduler call to validate,
//! test and run an automation of either kind; none of them dispatches on
//! the kind itself.
//!
//! ```text
//!  AutomationConfig::validate(kind, json)  ─► the stored (normalized) config, errors naming each key
//!  Runner::check(automation)               ─► the destinations policy, for exports chosen over the API
//!  Runner::test(automation)                ─► TestReport   export: probe steps │ retention: preview
//!  Runner::run(automation, trigger)        ─► RunReport    export: ExportReport │ retention: RetentionReport
//! ```
//!
//! Both kinds run under a [`RunLease`](crate::state::RunLease) (taken,
//! renewed and released the same way), and record their run in the state
//! database's history.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::policy::{DestinationPolicy, DestinationRefused};
use crate::error::{Error, Result};
use crate::export::{
    ExportConfig, ExportProgress, ExportReport, ExportRun, RawExportConfig, TestStep,
    test_export_automation,
};
use crate::retention::{
    RetentionConfig, RetentionPreview, RetentionReport, preview_retention_automation,
    run_retention_automation,
};
use crate::state::{Automation, Kind, Origin, StateDb, Trigger};
use crate::store::Store;

/// A validated automation configuration.
#[derive(Debug, Clone)]
pub enum AutomationConfig {
    /// An export's.
    Export(ExportConfig),
    /// A retention's, with its grace period and interval.
    Retention {
        /// As stored.
        config: RetentionConfig,
        /// Deleted rows' files are purged after this.
        grace: Duration,
        /// How often it runs.
        interval: Duration,
    },
}

/// The JSON to store for a configuration.
fn normalized(value: &impl Serialize) -> Result<serde_json::Value> {
    serde_json::to_value(value).map_err(|e| Error::Internal(format!("automation config: {e}")))
}

impl AutomationConfig {
    /// Parse and validate `config` for `kind`: the configuration and the
    /// JSON to store (normalized). Unknown keys and bad values are
    /// [`Error::InvalidArgument`]s naming the key.
    pub fn validate(kind: Kind, config: serde_json::Value) -> Result<(Self, serde_json::Value)> {
        match kind {
            Kind::Export => {
                let mut raw: RawExportConfig = serde_json::from_value(config)
                    .map_err(|e| Error::InvalidArgument(format!("invalid export config: {e}")))?;
                let validated = raw.validate()?;
                // Stored as the run reads it: the object type as named
                // canonically, the object's id as its table is keyed.
                if raw.object_type.is_some() {
                    raw.object_type = Some(validated.object_type.as_str().to_string());
                }
                raw.object_id.clone_from(&validated.object_id);
                Ok((Self::Export(validated), normalized(&raw)?))
            }
            Kind::Retention => {
                let mut raw: RetentionConfig = serde_json::from_value(config).map_err(|e| {
                    Error::InvalidArgument(format!("invalid retention config: {e}"))
                })?;
                let (grace, interval) = raw.validate()?;
                // Stored as named canonically (`Experiment` → `experiment`).
                raw.object_type = raw
                    .object_type
                    .as_deref()
                    .and_then(crate::registry::objects::ObjectType::parse)
                    .map(|t| t.as_str().to_string());
                let stored = normalized(&raw)?;
                Ok((
                    Self::Retention {
                        config: raw,
                        grace,
                        interval,
                    },
                    stored,
                ))
            }
        }
    }

    /// The configuration of a stored automation (it was validated when
    /// stored; a store of an older version may hold one that no longer is).
    pub fn of(automation: &Automation) -> Result<Self> {
        Self::validate(automation.kind, automation.config.clone())
            .map(|(config, _)| config)
            .map_err(|e| {
                Error::InvalidArgument(format!(
                    "the stored configuration of automation `{}` is not valid: {e}; change it with `spanlake automation` or PATCH",
                    automation.name
                ))
            })
    }

    /// Check that the experiment or dataset an export names (its
    /// `object_type` and `object_id`) is one of `project`'s: an unknown one
    /// is [`Error::UnknownObject`]. A retention of experiments or datasets
    /// goes over all of the project's, so names none.
    pub fn check_object(&self, store: &Store, project: &crate::registry::Project) -> Result<()> {
        if let Self::Export(config) = self {
            store.with_registry(|r| {
                r.automation_table(project, config.object_type, config.object_id.as_deref())
            })?;
        }
        Ok(())
    }

    /// How often it runs.
    pub fn interval(&self) -> Duration {
        match self {
            Self::Export(config) => config.interval,
            Self::Retention { interval, .. } => *interval,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum RunReport {
    /// An export run's report.
    Export(ExportReport),
    /// A retention run's report.
    Retention(RetentionReport),
}

/// What a test found; nothing is changed, and an export's probe file is
/// deleted again.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TestReport {
    /// An export's: write, read back and delete a probe file through the
    /// configured credentials, step by step.
    Export {
        /// Whether every step worked.
        ok: bool,
        /// Each step, in order.
        steps: Vec<TestStep>,
    },
    /// A retention's preview.
    Retention(RetentionPreview),
}

impl TestReport {
    /// The first failed step of an export test.
    pub fn failed_step(&self) -> Option<&TestStep> {
        match self {
            Self::Export { steps, .. } => steps.iter().find(|s| !s.ok),
            Self::Retention(_) => None,
        }
    }
}

/// Why a run or test did not happen or failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The destinations policy refuses the export's destination; nothing
    /// was written.
    #[error("{0}; nothing was written")]
    Refused(DestinationRefused),
    /// The run failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

/// Runs automations of one store.
#[derive(Debug, Clone, Copy)]
pub struct Runner<'a> {
    store: &'a Store,
    state: &'a StateDb,
    policy: Option<&'a DestinationPolicy>,
}

impl<'a> Runner<'a> {
    /// A runner over `store` and its state database, for the machine's
    /// owner (the CLI): no destinations policy.
    pub fn new(store: &'a Store, state: &'a StateDb) -> Self {
        Self {
            store,
            state,
            policy: None,
        }
    }

    /// The same runner, holding exports whose configuration was chosen
    /// over the API to `policy` (the server and its scheduler).
    pub fn with_policy(self, policy: &'a DestinationPolicy) -> Self {
        Self {
            policy: Some(policy),
            ..self
        }
    }

    /// Check an export's destination against the policy (it may have
    /// changed since the export was stored). The CLI's automations, and
    /// retention, are not held to it.
    pub async fn check(&self, automation: &Automation) -> Result<(), RunError> {
        let Some(policy) = self.policy else {
            return Ok(());
        };
        if automation.kind != Kind::Export || automation.origin != Origin::Api {
            return Ok(());
        }
        let AutomationConfig::Export(config) = AutomationConfig::of(automation)? else {
            return Err(Error::Internal("an export without an export config".into()).into());
        };
        policy
            .check_export(&config)
            .await
            .map_err(RunError::Refused)
    }

    /// Run `automation` once now. A scheduled run that fails before it is
    /// recorded (the policy refuses it, its role cannot be assumed, its
    /// configuration no longer validates) is recorded as failed all the
    /// same, so that the history shows it and the scheduler waits before
    /// trying again instead of trying at every tick.
    pub async fn run(
        &self,
        automation: &Automation,
        trigger: Trigger,
        progress: Option<Arc<ExportProgress>>,
    ) -> Result<RunReport, RunError> {
        let last_run = |state: &StateDb| -> Result<Option<String>> {
            Ok(state.runs(&automation.id, 1)?.pop().map(|run| run.run_id))
        };
        let before = last_run(self.state)?;
        let result = self.run_checked(automation, trigger, progress).await;
        if let Err(error) = &result
            && trigger == Trigger::Schedule
            && !matches!(error, RunError::Failed(Error::LeaseHeld { .. }))
            && last_run(self.state)? == before
        {
            let retryable = match error {
                RunError::Refused(_) => false,
                RunError::Failed(e) => e.is_retryable(),
            };
            self.record_failure(automation, error, retryable)?;
        }
        result
    }

    async fn run_checked(
        &self,
        automation: &Automation,
        trigger: Trigger,
        progress: Option<Arc<ExportProgress>>,
    ) -> Result<RunReport, RunError> {
        self.check(automation).await?;
        Ok(match automation.kind {
            Kind::Export => {
                let (report, figures) = ExportRun::new(self.store, self.state, automation)
                    .trigger(trigger)
                    .progress(progress)
                    .run()
                    .await?;
                figures.log(&automation.id);
                RunReport::Export(report)
            }
            Kind::Retention => RunReport::Retention(
                run_retention_automation(self.store, self.state, automation, trigger).await?,
            ),
        })
    }

    /// Test `automation`: an export's probe through its credentials, a
    /// retention's preview.
    pub async fn test(&self, automation: &Automation) -> Result<TestReport, RunError> {
        self.check(automation).await?;
        Ok(match automation.kind {
            Kind::Export => {
                let steps = test_export_automation(self.store, automation).await?;
                TestReport::Export {
                    ok: steps.iter().all(|s| s.ok),
                    steps,
                }
            }
            Kind::Retention => TestReport::Retention(
                preview_retention_automation(self.store, self.state, automation).await?,
            ),
        })
    }

    fn record_failure(
        &self,
        automation: &Automation,
        error: &RunError,
        retryable: bool,
    ) -> Result<()> {
        let run_id = uuid::Uuid::now_v7().to_string();
        let cursor = self.state.cursor(&automation.id)?;
        let details = match error {
            RunError::Refused(_) => serde_json::json!({ "refused": true }),
            RunError::Failed(_) => serde_json::json!({ "not_started": true }),
        };
        self.state.start_run(
            &automation.id,
            &run_id,
            Trigger::Schedule,
            cursor,
            None,
            &details,
        )?;
        self.state
            .fail_run_with(&run_id, &error.to_string(), retryable)
    }
}
