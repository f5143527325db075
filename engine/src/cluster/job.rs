//! A job whose id the coordinator knows: submitted to the scheduler's gRPC
//! service, waited for, its (small) output fetched from the executors; and
//! cancelled by id when a later coordinator recovers the run.
//! ([`ballista_core::execution_plans::execute_physical_plan`] keeps the id
//! to itself, so a run could not name its job to a successor.)

use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use ballista_core::client::BallistaClient;
use ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient;
use ballista_core::serde::protobuf::{
    CancelJobParams, ExecuteQueryParams, GetJobStatusParams, KeyValuePair, SuccessfulJob,
    execute_query_params::Query, execute_query_result, job_status,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionConfig;
use datafusion_proto::physical_plan::{AsExecutionPlan, PhysicalExtensionCodec};
use datafusion_proto::protobuf::PhysicalPlanNode;
use futures::TryStreamExt;

use crate::error::{Error, Result};

/// Largest gRPC and Flight message (Ballista's default).
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// A failure of the cluster at `scheduler`: what failed, and the likely fix.
pub(super) fn failed(scheduler: &str, what: &str, error: impl std::fmt::Display) -> Error {
    Error::Sink {
        message: format!(
            "the cluster at ballista://{scheduler}: {what}: {error}; check that `spanlake ballista scheduler` runs there with executors connected"
        ),
        retryable: true,
    }
}

async fn connect(scheduler: &str) -> Result<SchedulerGrpcClient<tonic::transport::Channel>> {
    let client = SchedulerGrpcClient::connect(format!("http://{scheduler}"))
        .await
        .map_err(|e| failed(scheduler, "cannot connect", e))?;
    Ok(client
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
        .max_decoding_message_size(MAX_MESSAGE_BYTES))
}

/// Submit `plan`, hand its job id to `submitted`, wait for the job, and
/// return its output (read whole: keep it small, as a sink's is).
pub(super) async fn run_to_end(
    scheduler: &str,
    plan: Arc<dyn ExecutionPlan>,
    config: &SessionConfig,
    codec: &dyn PhysicalExtensionCodec,
    submitted: impl FnOnce(&str) -> Result<()>,
) -> Result<Vec<RecordBatch>> {
    let mut bytes = Vec::new();
    PhysicalPlanNode::try_from_physical_plan(Arc::clone(&plan), codec)
        .and_then(|node| node.try_encode(&mut bytes))
        .map_err(|e| Error::Internal(format!("the plan does not encode: {e}")))?;
    let settings = config
        .options()
        .entries()
        .into_iter()
        .map(|entry| KeyValuePair {
            key: entry.key,
            value: entry.value,
        })
        .collect();
    let mut client = connect(scheduler).await?;
    let mut request = tonic::Request::new(ExecuteQueryParams {
        query: Some(Query::PhysicalPlan(bytes)),
        settings,
        session_id: uuid::Uuid::now_v7().to_string(),
        operation_id: uuid::Uuid::now_v7().to_string(),
    });
    ballista_core::version::insert_version_header(request.metadata_mut());
    let answer = client
        .execute_query(request)
        .await
        .map_err(|e| failed(scheduler, "the job was not accepted", e))?
        .into_inner();
    let job_id = match answer.result {
        Some(execute_query_result::Result::Success(success)) => success.job_id,
        Some(execute_query_result::Result::Failure(failure)) => {
            return Err(failed(
                scheduler,
                "the job was refused",
                format!("{failure:?}"),
            ));
        }
        None => return Err(failed(scheduler, "the job was refused", "no answer")),
    };
    if let Err(e) = submitted(&job_id) {
        let _ = cancel_job(scheduler, &job_id).await;
        return Err(e);
    }
    let done = loop {
        let status = client
            .get_job_status(GetJobStatusParams {
                job_id: job_id.clone(),
            })
            .await
            .map_err(|e| failed(scheduler, "lost the job's status", e))?
            .into_inner()
            .status
            .and_then(|s| s.status);
        match status {
            Some(job_status::Status::Successful(done)) => break done,
            Some(job_status::Status::Failed(failure)) => {
                return Err(failed(
                    scheduler,
                    &format!("job {job_id} failed"),
                    failure.error,
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    fetch_output(scheduler, &job_id, done).await
}

/// The final partitions of a finished job, read from the executors that
/// hold them.
async fn fetch_output(
    scheduler: &str,
    job_id: &str,
    done: SuccessfulJob,
) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for location in done.partition_location {
        let layout = location.layout();
        let (Some(executor), Some(partition)) = (location.executor_meta, location.partition_id)
        else {
            return Err(failed(
                scheduler,
                &format!("job {job_id}"),
                "a result without its executor",
            ));
        };
        let mut client = BallistaClient::try_new(
            &executor.host,
            executor.port as u16,
            MAX_MESSAGE_BYTES,
            false,
            None,
            3,
            100,
            0,
            0,
        )
        .await
        .map_err(|e| {
            failed(
                scheduler,
                &format!("cannot reach executor {}", executor.id),
                e,
            )
        })?;
        let partition: ballista_core::serde::scheduler::PartitionId = partition.into();
        let stream = client
            .fetch_partition(&executor.id, &partition, location.file_id, layout, true)
            .await
            .map_err(|e| failed(scheduler, &format!("cannot read job {job_id}'s output"), e))?;
        let part: Vec<RecordBatch> = stream
            .try_collect()
            .await
            .map_err(|e| failed(scheduler, &format!("cannot read job {job_id}'s output"), e))?;
        batches.extend(part);
    }
    Ok(batches)
}

/// Asks the scheduler at one address whether jobs still run, over one
/// connection made at the first question (an executor's sink asks before
/// it completes each file).
#[derive(Clone)]
pub(super) struct JobWatch {
    scheduler: String,
    client: Arc<tokio::sync::OnceCell<SchedulerGrpcClient<tonic::transport::Channel>>>,
}

impl JobWatch {
    pub(super) fn new(scheduler: String) -> Self {
        Self {
            scheduler,
            client: Arc::default(),
        }
    }

    /// `Ok` while job `job_id` is queued or running; otherwise why not.
    pub(super) async fn still_running(self, job_id: String) -> std::result::Result<(), String> {
        let scheduler = &self.scheduler;
        let status = async {
            let client = self
                .client
                .get_or_try_init(|| connect(scheduler))
                .await
                .map_err(|e| e.to_string())?;
            // A tonic client is a handle on the shared channel.
            let mut client = client.clone();
            client
                .get_job_status(GetJobStatusParams {
                    job_id: job_id.clone(),
                })
                .await
                .map(|answer| answer.into_inner().status.and_then(|s| s.status))
                .map_err(|e| e.to_string())
        }
        .await;
        match status {
            Ok(Some(job_status::Status::Running(_) | job_status::Status::Queued(_))) => Ok(()),
            Ok(_) => Err(format!(
                "job {job_id} no longer runs (cancelled or failed): its files are not completed"
            )),
            Err(e) => Err(format!(
                "cannot ask the scheduler at {scheduler} whether job {job_id} still runs ({e}): its files are not completed"
            )),
        }
    }
}

/// Cancel job `job_id` (a run being recovered: its coordinator is gone), and
/// wait until the scheduler no longer runs it (a minute at most). A job the
/// scheduler does not know (finished and forgotten, or a restarted
/// scheduler) is done already.
pub async fn cancel_job(scheduler: &str, job_id: &str) -> Result<()> {
    let mut client = connect(scheduler).await?;
    // A refusal (a job it does not know) is judged by the status below.
    let cancelled = client
        .cancel_job(CancelJobParams {
            job_id: job_id.to_string(),
        })
        .await;
    if let Err(e) = &cancelled {
        tracing::info!(job_id, "cancel refused: {e}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = client
            .get_job_status(GetJobStatusParams {
                job_id: job_id.to_string(),
            })
            .await
            .map(|answer| answer.into_inner().status.and_then(|s| s.status));
        match status {
            Ok(Some(job_status::Status::Running(_) | job_status::Status::Queued(_))) => {}
            _ => return Ok(()),
        }
        if tokio::time::Instant::now() > deadline {
            return Err(failed(
                scheduler,
                &format!("job {job_id}"),
                "still running a minute after it was cancelled",
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
