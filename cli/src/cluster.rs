//! `spanlake ballista ...`: the roles of a cluster, hosted in this binary
//! with the engine's plan codec.

use std::sync::Arc;

use clap::Subcommand;
use spanlake_engine::cluster::{self, ExecutorOptions};

/// `spanlake ballista ...`
#[derive(Debug, Subcommand)]
pub enum BallistaCommand {
    /// Run a scheduler: executors connect to it, `--engine ballista://HOST:PORT`
    /// submits plans to it. Runs until stopped.
    Scheduler {
        /// Address of its gRPC service.
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
        bind: String,
        /// An executor without a heartbeat for this many seconds is lost:
        /// its tasks run again on the others.
        #[arg(long, default_value_t = 180, value_name = "SECONDS")]
        executor_timeout: u64,
    },
    /// Run an executor of the scheduler's cluster: it runs tasks (scans,
    /// folds, export writers) and serves their outputs. Runs until stopped.
    Executor {
        /// The scheduler's address.
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "HOST:PORT")]
        scheduler: String,
        /// Address of its Arrow Flight service (task outputs are read from
        /// it); the address other machines reach it at.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "HOST:PORT")]
        bind: String,
        /// Port of its gRPC service (default: the Flight port + 1).
        #[arg(long, value_name = "PORT")]
        grpc_port: Option<u16>,
        /// Folder of its shuffle files and spills (one per executor).
        #[arg(long, value_name = "DIR")]
        work_dir: String,
        /// Tasks at once (default: one per core).
        #[arg(long, value_name = "N")]
        tasks: Option<usize>,
        /// Memory of its tasks before they spill to disk, in MiB.
        #[arg(long, default_value_t = 2048, value_name = "MIB")]
        memory_limit_mib: u64,
        /// Seconds between its heartbeats (keep it well under the
        /// scheduler's `--executor-timeout`).
        #[arg(long, default_value_t = 60, value_name = "SECONDS")]
        heartbeat: u64,
    },
}

/// Run a `ballista` subcommand (until the process is stopped).
pub async fn ballista_command(command: BallistaCommand) -> anyhow::Result<()> {
    let codec = Arc::new(spanlake_engine::export::cluster_codec());
    match command {
        BallistaCommand::Scheduler {
            bind,
            executor_timeout,
        } => {
            let bind = cluster::socket_address("--bind", &bind)?;
            eprintln!("ballista scheduler on {bind}: submit with --engine ballista://{bind}");
            cluster::run_scheduler(bind, executor_timeout, codec).await?;
        }
        BallistaCommand::Executor {
            scheduler,
            bind,
            grpc_port,
            work_dir,
            tasks,
            memory_limit_mib,
            heartbeat,
        } => {
            let options = ExecutorOptions {
                scheduler: cluster::socket_address("--scheduler", &scheduler)?,
                bind: cluster::socket_address("--bind", &bind)?,
                grpc_port,
                work_dir,
                tasks,
                memory_limit_bytes: memory_limit_mib.saturating_mul(1024 * 1024),
                heartbeat_seconds: heartbeat,
            };
            eprintln!(
                "ballista executor on {} (scheduler {})",
                options.bind, options.scheduler
            );
            cluster::run_executor(options, codec).await?;
        }
    }
    Ok(())
}
