//! Scale-out on Apache DataFusion Ballista: the plans a query or an export
//! builds run on a scheduler and its executors instead of in this process.
//!
//! ```text
//!  coordinator (CLI, serve)                scheduler                executors
//!  plan ─► physical plan ─► [SinkExec] ─► stages at shuffles ─► tasks: scan, fold, encode, upload
//!     ▲                                                            │ written files (one row each)
//!     └── manifest, cursor, cleanup ◄──── final stage's output ◄───┘
//! ```
//!
//! The coordinator builds the physical plan itself (the store's snapshot,
//! the fold, BTQL's functions) and submits it whole; the scheduler only
//! cuts it into stages. A query's output streams back
//! ([`ballista_core::execution_plans::execute_physical_plan`]); an export's
//! job is submitted by `job`, which hands its id to the run before waiting
//! (so that a recovery can cancel it, [`cancel_job`]). Every role runs this binary, with
//! one codec ([`SpanlakeCodec`]). Executors read the store's files by their
//! path, so each must see the data directory at the same path (one machine,
//! or a shared file system), and they open export targets themselves, with
//! their own credentials.

mod codec;
mod job;
mod roles;

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::BallistaConfig;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties};
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::protobuf::PhysicalPlanNode;

pub use codec::{SpanlakeCodec, TargetDecoder};
pub use job::cancel_job;
pub use roles::{ExecutorOptions, run_executor, run_scheduler};

use crate::error::{Error, Result};
use crate::sink::{SinkExec, SinkTarget, WrittenFile};

/// Where plans run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Engine {
    /// In this process, on every core.
    #[default]
    Local,
    /// On the Ballista cluster of the scheduler at this address.
    Ballista(String),
}

impl Engine {
    /// `local`, or `ballista://HOST:PORT` (the scheduler).
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if text.is_empty() || text == "local" {
            return Ok(Self::Local);
        }
        let Some(address) = text.strip_prefix("ballista://") else {
            return Err(format!(
                "`{text}` is not an engine: use `local` or `ballista://HOST:PORT` (the scheduler of a cluster)"
            ));
        };
        let address = address.trim_end_matches('/');
        let valid = address.rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        if !valid {
            return Err(format!(
                "`{text}`: the scheduler's address must be HOST:PORT, e.g. `ballista://127.0.0.1:50050`"
            ));
        }
        Ok(Self::Ballista(address.to_string()))
    }

    /// Whether plans run in this process.
    pub fn is_local(&self) -> bool {
        matches!(self, Self::Local)
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local => f.write_str("local"),
            Self::Ballista(address) => write!(f, "ballista://{address}"),
        }
    }
}

/// Run `plan` on the cluster of the scheduler at `scheduler`; its output,
/// partition after partition. `config` is the session the plan was built
/// in, with [`crate::session::SessionOptions::distributed`] (its settings
/// go to every task).
pub async fn execute(
    scheduler: &str,
    plan: Arc<dyn ExecutionPlan>,
    config: SessionConfig,
    codec: &dyn PhysicalExtensionCodec,
) -> Result<SendableRecordBatchStream> {
    let url = format!("http://{scheduler}");
    let session_id = uuid::Uuid::now_v7().to_string();
    ballista_core::execution_plans::execute_physical_plan::<PhysicalPlanNode>(
        url,
        &BallistaConfig::default(),
        plan,
        codec,
        session_id,
        config,
    )
    .await
    .map_err(|e| job::failed(scheduler, "the plan did not run", e))
}

/// Write `plan`'s rows with a [`SinkExec`] on the cluster: each task writes
/// the files of its partition; returns the files of the executions whose
/// outputs the job kept (see [`crate::sink::written_files`]). Files of other
/// executions (retried tasks) are left for the caller to delete: they carry
/// `run_id`. `submitted` gets the job's id before the job is waited for
/// (a later recovery cancels it with [`cancel_job`]).
#[allow(clippy::too_many_arguments)]
pub async fn write_on_cluster(
    scheduler: &str,
    plan: Arc<dyn ExecutionPlan>,
    config: SessionConfig,
    codec: &dyn PhysicalExtensionCodec,
    target: Arc<dyn SinkTarget>,
    run_id: &str,
    json_columns: Vec<String>,
    submitted: impl FnOnce(&str) -> Result<()>,
) -> Result<Vec<WrittenFile>> {
    let partitions = plan.output_partitioning().partition_count();
    let sink: Arc<dyn ExecutionPlan> = Arc::new(SinkExec::new(
        plan,
        target,
        run_id.to_string(),
        json_columns,
    ));
    let batches = job::run_to_end(scheduler, sink, &config, codec, submitted).await?;
    crate::sink::written_files(&batches, partitions).map_err(|problem| Error::Sink {
        message: format!("the cluster's output of the export is not whole: {problem}"),
        retryable: true,
    })
}

/// Parse `HOST:PORT` of a flag.
pub fn socket_address(flag: &str, text: &str) -> Result<SocketAddr> {
    use std::net::ToSocketAddrs;
    text.to_socket_addrs()
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "{flag} `{text}`: not an address; give HOST:PORT, e.g. 127.0.0.1:50050"
            ))
        })
}

/// Plan and start `text` on `engine`: here ([`crate::query::run_query`]),
/// or its physical plan on the cluster, read back partition after
/// partition (one, for a sorted or paged result). `codec` is the cluster's.
pub async fn run_query(
    store: &crate::store::Store,
    text: &str,
    options: &crate::query::QueryOptions,
    engine: &Engine,
    codec: &dyn PhysicalExtensionCodec,
) -> Result<crate::query::QueryStream> {
    let Engine::Ballista(scheduler) = engine else {
        return crate::query::run_query(store, text, options).await;
    };
    let options = crate::query::QueryOptions {
        distributed: true,
        ..options.clone()
    };
    let planned = crate::query::plan_query(store, text, &options).await?;
    let columns = planned.columns.clone();
    let page = planned.page.clone();
    let (plan, config) = planned.physical_plan().await?;
    let stream = execute(scheduler, plan, config, codec).await?;
    Ok(crate::query::QueryStream {
        columns,
        stream,
        page,
    })
}
