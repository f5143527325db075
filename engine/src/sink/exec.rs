//! The sink as a plan node: [`SinkExec`] writes each partition of its input
//! as files ([`super::write_stream`]'s pipeline, in the task that runs the
//! partition) and outputs what it wrote, one row per file and one row that
//! says the partition is done. The plan can then run anywhere its nodes can
//! be sent: on a cluster, each executor writes the partitions of its tasks,
//! and the coordinator reads the written files from the plan's output.
//!
//! A task may run more than once (a retry, a stage run again after a lost
//! executor): each execution names its files with the process that ran it
//! ([`set_node_name`]) and an attempt token of its own,
//! `part-<partition>-<node>-<attempt>-<NNNNN>-<run_id>`, and its done row
//! carries the token, so the coordinator ([`written_files`]) keeps exactly
//! the files of the executions whose outputs it read, and rejects an output
//! where more or fewer executions reported than the plan has partitions, or
//! a file belongs to none of them. The files of other executions are the
//! coordinator's to delete (they carry the run id).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, RecordBatch, StringArray, StringBuilder, UInt32Array, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt32Type, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};
use futures::future::BoxFuture;

use super::{ExportTarget, SinkConfig, WrittenFile, write_partition};

/// Where a [`SinkExec`] writes, opened in the task that writes: a value that
/// a plan codec can turn into bytes and back, so that a remote executor
/// opens the same target (assuming the same role) with its own credentials.
/// It must hold no secret.
pub trait SinkTarget: std::fmt::Debug + Send + Sync {
    /// The target and its sink settings.
    fn open(&self) -> BoxFuture<'static, Result<(ExportTarget, SinkConfig)>>;
    /// Bytes a codec gives back to its own decoder of this target.
    fn to_bytes(&self) -> Vec<u8>;
}

/// Column names of a [`SinkExec`]'s output.
const PARTITION: &str = "partition";
const ATTEMPT: &str = "attempt";
const KEY: &str = "key";
const FOLDER: &str = "folder";
const ROWS: &str = "rows";
const BYTES: &str = "bytes";
const CHECKSUM: &str = "checksum";

/// The output schema of a [`SinkExec`]: a row per written file, and per
/// partition a done row whose `key` is null.
pub fn written_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(PARTITION, DataType::UInt32, false),
        Field::new(ATTEMPT, DataType::Utf8, false),
        Field::new(KEY, DataType::Utf8, true),
        Field::new(FOLDER, DataType::Utf8, true),
        Field::new(ROWS, DataType::UInt64, true),
        Field::new(BYTES, DataType::UInt64, true),
        Field::new(CHECKSUM, DataType::Utf8, true),
    ]))
}

/// Writes its input's partitions as files; see the module docs.
#[derive(Debug)]
pub struct SinkExec {
    input: Arc<dyn ExecutionPlan>,
    target: Arc<dyn SinkTarget>,
    run_id: String,
    json_columns: Vec<String>,
    properties: Arc<PlanProperties>,
}

impl SinkExec {
    /// Writing `input` to `target` for run `run_id`, the string columns
    /// named in `json_columns` stored as JSON.
    pub fn new(
        input: Arc<dyn ExecutionPlan>,
        target: Arc<dyn SinkTarget>,
        run_id: String,
        json_columns: Vec<String>,
    ) -> Self {
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(written_schema()),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(partitions),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            input,
            target,
            run_id,
            json_columns,
            properties: Arc::new(properties),
        }
    }

    /// The target it writes to.
    pub fn target(&self) -> &Arc<dyn SinkTarget> {
        &self.target
    }

    /// The run whose files it writes.
    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The columns it stores as JSON.
    pub fn json_columns(&self) -> &[String] {
        &self.json_columns
    }

    /// Its input.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }
}

impl DisplayAs for SinkExec {
    fn fmt_as(
        &self,
        _format: DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "SinkExec: run={}", self.run_id)
    }
}

impl ExecutionPlan for SinkExec {
    fn name(&self) -> &'static str {
        "SinkExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "SinkExec takes one input".to_string(),
            ));
        }
        Ok(Arc::new(Self::new(
            children.swap_remove(0),
            Arc::clone(&self.target),
            self.run_id.clone(),
            self.json_columns.clone(),
        )))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let job = context.task_id().as_deref().and_then(job_of_task);
        let input = self.input.execute(partition, context)?;
        let partitions = self.input.output_partitioning().partition_count();
        let open = self.target.open();
        let run_id = self.run_id.clone();
        let json_columns = self.json_columns.clone();
        let written = async move {
            crate::faults::pause_point("sink_partition").await;
            let (mut target, mut config) = open.await?;
            if let (Some(guard), Some(job)) = (JOB_GUARD.get(), job) {
                let guard = Arc::clone(guard);
                target =
                    target.guarded(super::CompletionGuard(Arc::new(move || guard(job.clone()))));
            }
            config.max_open_files = (config.max_open_files / partitions.max(1)).max(1);
            let attempt = attempt_token();
            let prefix = format!("part-{partition:02}-{}-{attempt}-", node_name());
            let (files, _metrics) = write_partition(
                &target,
                &config,
                &run_id,
                &prefix,
                input,
                &json_columns,
                None,
            )
            .await
            .map_err(|e| {
                DataFusionError::External(Box::new(std::io::Error::other(format!(
                    "partition {partition}: {}",
                    super::summary::error_chain_summary(&e)
                ))))
            })?;
            written_batch(partition, &attempt, &files)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            written_schema(),
            futures::stream::once(written),
        )))
    }
}

static NODE_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Asks whether the job of the given id still runs (`Err` with why not).
pub type JobGuard = Arc<dyn Fn(String) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

static JOB_GUARD: std::sync::OnceLock<JobGuard> = std::sync::OnceLock::new();

/// In an executor: before a sink task completes each file, it asks `guard`
/// whether its job still runs, so that a cancelled job (its coordinator
/// died, and a recovery is deleting the run's files) completes no more.
pub fn set_job_guard(guard: JobGuard) {
    let _ = JOB_GUARD.set(guard);
}

/// The job of a Ballista task id, `TID <job>/<stage>.<attempt>/<task>.<attempt>`.
fn job_of_task(task_id: &str) -> Option<String> {
    let rest = task_id.strip_prefix("TID ")?;
    let job = rest.split('/').next()?;
    (!job.is_empty()).then(|| job.to_string())
}

/// Name this process in the names of the files its sinks write (an
/// executor: `e<port>`); letters, digits and `_` only. Unset, `p<pid>`.
pub fn set_node_name(name: &str) {
    let clean: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let _ = NODE_NAME.set(clean);
}

fn node_name() -> &'static str {
    NODE_NAME.get_or_init(|| format!("p{}", std::process::id()))
}

/// Eight hex digits, new for every execution of a partition.
fn attempt_token() -> String {
    let bytes = uuid::Uuid::new_v4();
    bytes.simple().to_string()[..8].to_string()
}

fn written_batch(partition: usize, attempt: &str, files: &[WrittenFile]) -> Result<RecordBatch> {
    let rows = files.len() + 1;
    let partition = u32::try_from(partition)
        .map_err(|_| DataFusionError::Internal("too many partitions".to_string()))?;
    let mut keys = StringBuilder::new();
    let mut folders = StringBuilder::new();
    let mut checksums = StringBuilder::new();
    for file in files {
        keys.append_value(&file.key);
        folders.append_value(&file.partition);
        checksums.append_value(&file.checksum);
    }
    keys.append_null();
    folders.append_null();
    checksums.append_null();
    let counts = |f: fn(&WrittenFile) -> u64| -> ArrayRef {
        Arc::new(
            files
                .iter()
                .map(|file| Some(f(file)))
                .chain([None])
                .collect::<UInt64Array>(),
        )
    };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt32Array::from(vec![partition; rows])),
        Arc::new(StringArray::from(vec![attempt; rows])),
        Arc::new(keys.finish()),
        Arc::new(folders.finish()),
        counts(|f| f.rows),
        counts(|f| f.bytes),
        Arc::new(checksums.finish()),
    ];
    Ok(RecordBatch::try_new(written_schema(), columns)?)
}

/// The files a [`SinkExec`] of `partitions` partitions wrote, from its
/// output: an error unless exactly `partitions` executions reported done,
/// and every file belongs to one of them. (On a cluster a task runs its
/// share of the partitions renumbered from 0, so executions are told apart
/// by their attempt tokens, not by the partition numbers they saw; an
/// execution's output read twice, as Ballista can deliver it after a lost
/// executor, counts once: its files are the same files.)
pub fn written_files(
    batches: &[RecordBatch],
    partitions: usize,
) -> std::result::Result<Vec<WrittenFile>, String> {
    let mut done: BTreeMap<String, u32> = BTreeMap::new();
    let mut files: BTreeMap<String, (String, WrittenFile)> = BTreeMap::new();
    for batch in batches {
        let column = |name: &str| -> std::result::Result<&ArrayRef, String> {
            batch
                .column_by_name(name)
                .ok_or_else(|| format!("the sink's output has no column `{name}`"))
        };
        let partition = column(PARTITION)?.as_primitive::<UInt32Type>();
        let attempt = column(ATTEMPT)?.as_string::<i32>();
        let key = column(KEY)?.as_string::<i32>();
        let folder = column(FOLDER)?.as_string::<i32>();
        let rows = column(ROWS)?.as_primitive::<UInt64Type>();
        let bytes = column(BYTES)?.as_primitive::<UInt64Type>();
        let checksum = column(CHECKSUM)?.as_string::<i32>();
        for i in 0..batch.num_rows() {
            let a = attempt.value(i).to_string();
            if key.is_null(i) {
                done.insert(a, partition.value(i));
                continue;
            }
            let file = WrittenFile {
                key: key.value(i).to_string(),
                partition: folder.value(i).to_string(),
                rows: rows.value(i),
                bytes: bytes.value(i),
                checksum: checksum.value(i).to_string(),
            };
            match files.get(&file.key) {
                Some((_, seen)) if *seen != file => {
                    return Err(format!(
                        "file `{}` reported twice with different contents",
                        file.key
                    ));
                }
                Some(_) => {}
                None => {
                    files.insert(file.key.clone(), (a, file));
                }
            }
        }
    }
    if done.len() != partitions {
        return Err(format!(
            "{} execution(s) reported done, and the plan has {partitions} partition(s)",
            done.len()
        ));
    }
    files
        .into_values()
        .map(|(a, file)| {
            if done.contains_key(&a) {
                Ok(file)
            } else {
                Err(format!(
                    "file `{}` belongs to the execution {a}, which did not report",
                    file.key
                ))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_of_a_ballista_task_id() {
        assert_eq!(
            job_of_task("TID 038JM9XZBY000/3.0/2.1").as_deref(),
            Some("038JM9XZBY000")
        );
        assert_eq!(job_of_task("local-task"), None);
        assert_eq!(job_of_task("TID /1.0/0.0"), None);
    }
}
