//! The export sink: a stream of record batches written as hive-partitioned
//! Parquet or JSON Lines files on an object store.
//!
//! ```text
//!  SendableRecordBatchStream (never collected)
//!        │ batch
//!        ▼
//!  prepare: timestamps → µs UTC, JSON columns tagged        (partition.rs)
//!        │ slices of ≤ batch_rows
//!        ▼
//!  split by UTC `created`: day / hour / none, null → __HIVE_DEFAULT_PARTITION__
//!        │ (partition, rows)
//!        ▼
//!  file pool: one open file per partition, ≤ max_open_files
//!        │    (least recently used file closed first); a file
//!        │    past max_file_bytes is closed and the next rows
//!        │    of its partition start a new part
//!        ▼
//!  encode: Parquet (parquet.rs) or JSON Lines [+ gzip] (jsonl.rs)
//!        │ bytes
//!        ▼
//!  upload: buffer → multipart parts, SHA-256 on the way  (upload.rs)
//!        │ complete ──► WrittenFile { key, partition, rows, bytes, checksum }
//!        ▼
//!  <prefix>/<partition>/part-<NNNNN>-<run_id>.<parquet|jsonl|jsonl.gz>
//! ```
//!
//! [`write_streams`] runs this for each partition of a result in a task of
//! its own (`part-<partition>-<NNNNN>-<run_id>`), so encoding and uploads
//! use every core.
//!
//! Guarantees:
//! - Every input row is written exactly once; rows with a null `created`
//!   go to `date=__HIVE_DEFAULT_PARTITION__` (and `hour=` likewise).
//! - Names are unique per run (`NNNNN` counts every file of the call) and
//!   never reused; a small file is put create-only. The caller must give
//!   each call a fresh `run_id`.
//! - A file becomes visible only when complete. On any failure every open
//!   upload is aborted, and the error lists the files completed before it
//!   ([`WriteStreamError::completed`]): they belong to no committed export.
//! - Memory is bounded by the open files, not the data: each holds at most
//!   one Parquet row group (`row_group_bytes`) plus three upload parts
//!   (`upload_part_bytes`), and one slice of `batch_rows` rows is encoded
//!   at a time.
//! - Zero input rows write zero files.
//!
//! The manifest that commits a run is the caller's: this module returns the
//! [`WrittenFile`]s it needs.

mod config;
pub mod credentials;
mod error;
mod exec;
mod jsonl;
mod objstore;
mod parquet;
mod partition;
pub mod summary;
mod upload;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use object_store::path::{Path, PathPart};
use serde::{Deserialize, Serialize};

pub use config::{Format, ParquetCompression, Partitioning, RawSinkConfig, SinkConfig};
pub use error::{SinkError, WriteStreamError};
pub use exec::{
    JobGuard, SinkExec, SinkTarget, set_job_guard, set_node_name, written_files, written_schema,
};
pub use objstore::{
    AZURE_CONNECTION_STRING_VARIABLE, AzureConnectionString, CompletionGuard, CompletionHook,
    ExportTarget, TargetOptions, target_from_url,
};
pub use partition::NULL_PARTITION;

use self::jsonl::JsonlFile;
use self::parquet::{ParquetFile, ParquetLayout};
use self::partition::{
    PartitionKey, PreparedSchema, partition_path, prepare_schema, split_by_partition,
};
use self::upload::{Upload, UploadedObject};

/// One complete file written by [`write_stream`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenFile {
    /// Full object key in the store, e.g.
    /// `exports/date=2026-11-24/part-00000-<run_id>.parquet`.
    pub key: String,
    /// Hive partition folder, e.g. `date=2026-11-24`; empty without
    /// partitioning.
    pub partition: String,
    /// Exact number of rows in the file.
    pub rows: u64,
    /// Size of the object in bytes.
    pub bytes: u64,
    /// `sha256:` and the lowercase hex SHA-256 of the object's bytes.
    pub checksum: String,
}

/// Counts of one partition in [`SinkMetrics`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionMetrics {
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// Files written.
    pub files: u64,
}

/// What a [`write_stream`] call wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SinkMetrics {
    /// Rows written.
    pub rows: u64,
    /// Bytes written (sum of the file sizes).
    pub bytes: u64,
    /// Files written.
    pub files: u64,
    /// Input batches read.
    pub input_batches: u64,
    /// Files closed early to stay under `max_open_files`.
    pub evicted_files: u64,
    /// Counts per partition folder (the empty string without partitioning).
    pub partitions: BTreeMap<String, PartitionMetrics>,
}

/// Write `stream` under `target` as configured: hive-partitioned by the UTC
/// `created` column, files rolled at `max_file_bytes`, the string columns
/// named in `json_columns` stored as JSON (names absent from the schema are
/// ignored). `run_id` (letters, digits, `-`, `_`) names the files and must
/// be new for every call.
///
/// Returns the completed files in completion order, and metrics. On error,
/// open uploads are aborted and [`WriteStreamError::completed`] lists the
/// files already completed.
pub async fn write_stream(
    target: &ExportTarget,
    config: &SinkConfig,
    run_id: &str,
    stream: SendableRecordBatchStream,
    json_columns: &[String],
) -> Result<(Vec<WrittenFile>, SinkMetrics), WriteStreamError> {
    write_partition(target, config, run_id, "part-", stream, json_columns, None).await
}

/// [`write_stream`] for the partitions of one result, each written by a
/// task of its own (its encoding, compression, checksums and uploads on
/// its own core): files are named `part-<partition>-<NNNNN>-<run_id>`, and
/// each partition may keep `max_open_files / partitions` files open (at
/// least one), so memory stays as configured. When one partition fails,
/// the others stop at their next batch and abort their open uploads; the
/// error is the first partition's own, and
/// [`WriteStreamError::completed`] lists the completed files of all of
/// them. One stream is written exactly as by [`write_stream`].
pub async fn write_streams(
    target: &ExportTarget,
    config: &SinkConfig,
    run_id: &str,
    mut streams: Vec<SendableRecordBatchStream>,
    json_columns: &[String],
) -> Result<(Vec<WrittenFile>, SinkMetrics), WriteStreamError> {
    if streams.len() <= 1 {
        let Some(stream) = streams.pop() else {
            return Ok((Vec::new(), SinkMetrics::default()));
        };
        return write_stream(target, config, run_id, stream, json_columns).await;
    }
    let count = streams.len();
    let mut each = config.clone();
    each.max_open_files = (config.max_open_files / count).max(1);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(partition, stream)| {
            let (target, config, run_id) = (target.clone(), each.clone(), run_id.to_string());
            let json_columns = json_columns.to_vec();
            let stop = std::sync::Arc::clone(&stop);
            tokio::spawn(async move {
                let prefix = format!("part-{partition:02}-");
                let result = write_partition(
                    &target,
                    &config,
                    &run_id,
                    &prefix,
                    stream,
                    &json_columns,
                    Some(&stop),
                )
                .await;
                if result.is_err() {
                    stop.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                result
            })
        })
        .collect();
    let mut files = Vec::new();
    let mut metrics = SinkMetrics::default();
    let mut failure: Option<SinkError> = None;
    for task in tasks {
        let result = match task.await {
            Ok(result) => result,
            Err(e) => {
                failure = Some(SinkError::Internal(format!("a sink task failed: {e}")));
                continue;
            }
        };
        match result {
            Ok((written, partition)) => {
                files.extend(written);
                metrics.absorb(partition);
            }
            Err(e) => {
                files.extend(e.completed);
                // The failure that stopped the others, not their stopping.
                if failure.as_ref().is_none_or(SinkError::is_stopped) {
                    failure = Some(e.error);
                }
            }
        }
    }
    match failure {
        None => Ok((files, metrics)),
        Some(error) => Err(WriteStreamError {
            error,
            completed: files,
        }),
    }
}

async fn write_partition(
    target: &ExportTarget,
    config: &SinkConfig,
    run_id: &str,
    name_prefix: &str,
    mut stream: SendableRecordBatchStream,
    json_columns: &[String],
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(Vec<WrittenFile>, SinkMetrics), WriteStreamError> {
    let input_schema = stream.schema();
    let setup = || -> Result<(PreparedSchema, Option<ParquetLayout>), SinkError> {
        check_run_id(run_id)?;
        let prepared = prepare_schema(&input_schema, config.partitioning, json_columns)?;
        let layout = match config.format {
            Format::Parquet { compression } => {
                Some(ParquetLayout::new(&prepared.schema, config, compression)?)
            }
            Format::Jsonl { .. } => None,
        };
        Ok((prepared, layout))
    };
    let (prepared, layout) = setup().map_err(|error| WriteStreamError {
        error,
        completed: Vec::new(),
    })?;
    let mut pool = FilePool {
        target,
        config,
        run_id,
        name_prefix,
        schema: std::sync::Arc::clone(&prepared.schema),
        layout,
        open: HashMap::new(),
        clock: 0,
        next_part: 0,
        completed: Vec::new(),
        metrics: SinkMetrics::default(),
    };
    match drive(&mut pool, &prepared, &mut stream, stop).await {
        Ok(()) => Ok((pool.completed, pool.metrics)),
        Err(error) => {
            pool.abort_all().await;
            Err(WriteStreamError {
                error,
                completed: pool.completed,
            })
        }
    }
}

async fn drive(
    pool: &mut FilePool<'_>,
    prepared: &PreparedSchema,
    stream: &mut SendableRecordBatchStream,
    stop: Option<&std::sync::atomic::AtomicBool>,
) -> Result<(), SinkError> {
    let batch_rows = pool.config.batch_rows;
    while let Some(batch) = stream.next().await {
        if stop.is_some_and(|stop| stop.load(std::sync::atomic::Ordering::SeqCst)) {
            return Err(SinkError::Stopped);
        }
        let batch = batch.map_err(SinkError::Input)?;
        pool.metrics.input_batches += 1;
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = prepared.convert(&batch)?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            let length = batch_rows.min(batch.num_rows() - offset);
            let slice = batch.slice(offset, length);
            offset += length;
            for (key, part) in
                split_by_partition(&slice, prepared.created, pool.config.partitioning)?
            {
                pool.write(key, &part).await?;
            }
        }
    }
    pool.close_all().await
}

fn check_run_id(run_id: &str) -> Result<(), SinkError> {
    let valid = !run_id.is_empty()
        && run_id.len() <= 128
        && run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(SinkError::InvalidConfig {
            problems: vec![format!(
                "run_id: `{run_id}` must be 1 to 128 letters, digits, `-` or `_`"
            )],
        })
    }
}

#[derive(Debug)]
enum FileEncoder {
    Parquet(ParquetFile),
    Jsonl(JsonlFile),
}

#[derive(Debug)]
struct OpenFile {
    key: String,
    partition: String,
    rows: u64,
    last_used: u64,
    encoder: FileEncoder,
}

impl OpenFile {
    async fn write(&mut self, batch: &RecordBatch) -> Result<(), SinkError> {
        match &mut self.encoder {
            FileEncoder::Parquet(file) => file.write(batch).await?,
            FileEncoder::Jsonl(file) => file.write(batch).await?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    fn size(&self) -> u64 {
        match &self.encoder {
            FileEncoder::Parquet(file) => file.size(),
            FileEncoder::Jsonl(file) => file.size(),
        }
    }

    async fn finish(self) -> Result<WrittenFile, SinkError> {
        let UploadedObject { bytes, checksum } = match self.encoder {
            FileEncoder::Parquet(file) => file.finish().await?,
            FileEncoder::Jsonl(file) => file.finish().await?,
        };
        Ok(WrittenFile {
            key: self.key,
            partition: self.partition,
            rows: self.rows,
            bytes,
            checksum,
        })
    }

    async fn abort(self) {
        match self.encoder {
            FileEncoder::Parquet(file) => file.abort().await,
            FileEncoder::Jsonl(file) => file.abort().await,
        }
    }
}

impl SinkMetrics {
    /// Add the figures of another partition of the same call.
    fn absorb(&mut self, other: Self) {
        self.rows += other.rows;
        self.bytes += other.bytes;
        self.files += other.files;
        self.input_batches += other.input_batches;
        self.evicted_files += other.evicted_files;
        for (name, partition) in other.partitions {
            let mine = self.partitions.entry(name).or_default();
            mine.rows += partition.rows;
            mine.bytes += partition.bytes;
            mine.files += partition.files;
        }
    }
}

/// The open files of one call, at most one per partition.
#[derive(Debug)]
struct FilePool<'a> {
    target: &'a ExportTarget,
    config: &'a SinkConfig,
    run_id: &'a str,
    /// `part-`, or `part-<partition>-` for one of several partitions.
    name_prefix: &'a str,
    schema: SchemaRef,
    layout: Option<ParquetLayout>,
    open: HashMap<PartitionKey, OpenFile>,
    /// Counts writes, to find the least recently used file.
    clock: u64,
    next_part: u64,
    completed: Vec<WrittenFile>,
    metrics: SinkMetrics,
}

impl FilePool<'_> {
    async fn write(&mut self, key: PartitionKey, batch: &RecordBatch) -> Result<(), SinkError> {
        if !self.open.contains_key(&key) {
            if self.open.len() >= self.config.max_open_files {
                self.evict_least_recently_used().await?;
            }
            let file = self.open_file(key)?;
            self.open.insert(key, file);
        }
        self.clock += 1;
        let Some(file) = self.open.get_mut(&key) else {
            return Err(SinkError::Internal("an open file vanished".to_owned()));
        };
        file.last_used = self.clock;
        file.write(batch).await?;
        if file.size() >= self.config.max_file_bytes {
            self.close(key).await?;
        }
        Ok(())
    }

    fn open_file(&mut self, key: PartitionKey) -> Result<OpenFile, SinkError> {
        let partition = partition_path(self.config.partitioning, key);
        let name = format!(
            "{}{:05}-{}.{}",
            self.name_prefix,
            self.next_part,
            self.run_id,
            self.config.format.extension()
        );
        self.next_part += 1;
        let path = object_key(&self.target.prefix, &partition, &name);
        let part_bytes = usize::try_from(self.config.upload_part_bytes).unwrap_or(usize::MAX);
        let upload = Upload::new(
            std::sync::Arc::clone(&self.target.store),
            path.clone(),
            part_bytes,
        );
        let encoder = match (&self.config.format, &self.layout) {
            (Format::Parquet { .. }, Some(layout)) => {
                FileEncoder::Parquet(ParquetFile::new(upload, &self.schema, layout)?)
            }
            (Format::Jsonl { gzip }, _) => FileEncoder::Jsonl(JsonlFile::new(upload, *gzip)),
            (Format::Parquet { .. }, None) => {
                return Err(SinkError::Internal("Parquet layout missing".to_owned()));
            }
        };
        Ok(OpenFile {
            key: path.to_string(),
            partition,
            rows: 0,
            last_used: self.clock,
            encoder,
        })
    }

    async fn evict_least_recently_used(&mut self) -> Result<(), SinkError> {
        let oldest = self
            .open
            .iter()
            .min_by_key(|(_, file)| file.last_used)
            .map(|(key, _)| *key);
        if let Some(key) = oldest {
            self.metrics.evicted_files += 1;
            self.close(key).await?;
        }
        Ok(())
    }

    async fn close(&mut self, key: PartitionKey) -> Result<(), SinkError> {
        let Some(file) = self.open.remove(&key) else {
            return Ok(());
        };
        if let Err(refused) = self.target.may_complete().await {
            file.abort().await;
            return Err(refused);
        }
        let written = file.finish().await?;
        self.target.completed(&written.key);
        self.metrics.rows += written.rows;
        self.metrics.bytes += written.bytes;
        self.metrics.files += 1;
        let partition = self
            .metrics
            .partitions
            .entry(written.partition.clone())
            .or_default();
        partition.rows += written.rows;
        partition.bytes += written.bytes;
        partition.files += 1;
        self.completed.push(written);
        if self.completed.len() == 1 {
            crate::faults::kill_point("mid_upload");
        }
        Ok(())
    }

    /// Close every open file, in partition order.
    async fn close_all(&mut self) -> Result<(), SinkError> {
        let mut keys: Vec<PartitionKey> = self.open.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.close(key).await?;
        }
        Ok(())
    }

    async fn abort_all(&mut self) {
        for (_, file) in self.open.drain() {
            file.abort().await;
        }
    }
}

/// `<prefix>/<partition>/<name>`, one path segment per folder.
fn object_key(prefix: &Path, partition: &str, name: &str) -> Path {
    let folders = partition
        .split('/')
        .filter(|segment| !segment.is_empty())
        .map(PathPart::from);
    prefix
        .parts()
        .chain(folders)
        .chain(std::iter::once(PathPart::from(name)))
        .collect()
}
