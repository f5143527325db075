//! The two roles of a cluster, hosted in our binary so that both load our
//! codec: the scheduler (plans stages, hands out tasks) and the executors
//! (run tasks, serve their outputs over Arrow Flight).

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion_proto::physical_plan::PhysicalExtensionCodec;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};

use crate::error::{Error, Result};

fn ballista_error(what: &str, error: impl std::fmt::Display) -> Error {
    Error::Internal(format!("{what}: {error}"))
}

/// Run a scheduler on `bind` until the process ends. Executors connect to
/// this address; clients submit plans to it. An executor silent for
/// `executor_timeout_seconds` is taken as lost: its tasks run again
/// elsewhere.
pub async fn run_scheduler(
    bind: SocketAddr,
    executor_timeout_seconds: u64,
    codec: Arc<dyn PhysicalExtensionCodec>,
) -> Result<()> {
    let host = bind.ip().to_string();
    let config = SchedulerConfig {
        bind_host: host.clone(),
        bind_port: bind.port(),
        external_host: host,
        scheduling_policy: TaskSchedulingPolicy::PushStaged,
        override_physical_codec: Some(codec),
        executor_timeout_seconds,
        expire_dead_executor_interval_seconds: (executor_timeout_seconds / 2).clamp(1, 15),
        ..SchedulerConfig::default()
    };
    let config = Arc::new(config);
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| ballista_error("cannot start the scheduler's state", e))?;
    let scheduler = create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, config)
        .await
        .map_err(|e| ballista_error("cannot start the scheduler", e))?;
    let listener = tokio::net::TcpListener::bind(bind).await.map_err(|e| {
        Error::InvalidArgument(format!(
            "--bind {bind}: cannot listen there ({e}); choose a free port"
        ))
    })?;
    tracing::info!(%bind, "ballista scheduler listening");
    start_grpc_service_with_listener(listener, scheduler)
        .await
        .map_err(|e| ballista_error("the scheduler stopped", e))
}

/// Where an executor listens and what it may use.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler's address.
    pub scheduler: SocketAddr,
    /// The Arrow Flight address (task outputs are fetched from it); the
    /// executor's gRPC port is the next one unless `grpc_port` is given.
    pub bind: SocketAddr,
    /// The executor's gRPC port.
    pub grpc_port: Option<u16>,
    /// Folder of shuffle files and spills.
    pub work_dir: String,
    /// Tasks at once (default: one per core).
    pub tasks: Option<usize>,
    /// Memory of all its tasks before they spill (split between tasks).
    pub memory_limit_bytes: u64,
    /// Seconds between its heartbeats to the scheduler.
    pub heartbeat_seconds: u64,
}

/// Run an executor until the process ends (or SIGINT/SIGTERM).
pub async fn run_executor(
    options: ExecutorOptions,
    codec: Arc<dyn PhysicalExtensionCodec>,
) -> Result<()> {
    std::fs::create_dir_all(&options.work_dir).map_err(|e| {
        Error::InvalidArgument(format!(
            "--work-dir {}: cannot create it ({e})",
            options.work_dir
        ))
    })?;
    let grpc_port = match options.grpc_port {
        Some(port) => port,
        None => options.bind.port().checked_add(1).ok_or_else(|| {
            Error::InvalidArgument(
                "--bind: the port must be below 65535 (the next one is the gRPC port)".into(),
            )
        })?,
    };
    let work_dir = options.work_dir.clone();
    let runtime: ballista_core::RuntimeProducer = Arc::new(move |_config| {
        RuntimeEnvBuilder::new()
            .with_temp_file_path(work_dir.clone())
            .build_arc()
    });
    let host = options.bind.ip().to_string();
    let name = format!("e{}", options.bind.port());
    crate::sink::set_node_name(&name);
    let watch = super::job::JobWatch::new(options.scheduler.to_string());
    crate::sink::set_job_guard(Arc::new(move |job| {
        Box::pin(watch.clone().still_running(job))
    }));
    let config = ExecutorProcessConfig {
        executor_id: format!("{name}-{}", uuid::Uuid::now_v7().simple()),
        bind_host: host.clone(),
        external_host: Some(host),
        port: options.bind.port(),
        grpc_port,
        scheduler_host: options.scheduler.ip().to_string(),
        scheduler_port: options.scheduler.port(),
        // An executor started before its scheduler waits for it.
        scheduler_connect_timeout_seconds: 30,
        vcores: options
            .tasks
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())),
        task_scheduling_policy: TaskSchedulingPolicy::PushStaged,
        work_dir: Some(options.work_dir.clone()),
        memory_pool_size: Some(options.memory_limit_bytes),
        executor_heartbeat_interval_seconds: options.heartbeat_seconds,
        override_physical_codec: Some(codec),
        override_runtime_producer: Some(runtime),
        ..ExecutorProcessConfig::default()
    };
    tracing::info!(bind = %options.bind, grpc_port, scheduler = %options.scheduler, "ballista executor starting");
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| ballista_error("the executor stopped", e))
}
