//! Tests of the sink: local folders and `memory://` stores, a failing store,
//! and (when `SPANLAKE_S3_ENDPOINT` is set) a real S3-compatible server.
//!
//! S3 tests: start moto with `eval "$(tools/s3-server start
//! 9100)"` and run with `SPANLAKE_S3_ENDPOINT=http://127.0.0.1:9100`. The
//! tests use the static keys `testing`/`testing` and region `us-east-1`
//! (override with `SPANLAKE_S3_ACCESS_KEY_ID`, `SPANLAKE_S3_SECRET_ACCESS_KEY`,
//! `SPANLAKE_S3_REGION`), create their own buckets, and skip with a notice
//! when the endpoint is unset.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use ::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use ::parquet::basic::{LogicalType, TimeUnit as ParquetTimeUnit, TimestampType};
use arrow::array::{
    Array, AsArray, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{
    DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use bytes::Bytes;
use datafusion::error::DataFusionError;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::stream::{BoxStream, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};
use sha2::{Digest, Sha256};

use super::*;

const DAY: i64 = 86_400_000_000;
const HOUR: i64 = 3_600_000_000;
/// 2026-11-24T00:00:00Z in microseconds.
const NOV_24: i64 = 1_795_478_400_000_000;

fn json_columns() -> Vec<String> {
    vec!["input".to_owned(), "metadata".to_owned()]
}

fn span_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "created",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("input", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("score", DataType::Float64, true),
    ]))
}

/// Rows `ids` with `created` given per id; `input` is a JSON object of
/// `pad` extra letters, `metadata` an object (pretty-printed over lines),
/// null or an array.
fn spans(
    ids: std::ops::Range<i64>,
    created: impl Fn(i64) -> Option<i64>,
    pad: usize,
) -> RecordBatch {
    let id: Int64Array = ids.clone().collect();
    let created: TimestampMicrosecondArray = ids.clone().map(&created).collect();
    let input: StringArray = ids
        .clone()
        .map(|i| {
            let filler = filler(i, pad);
            Some(format!(
                r#"{{"q":"question {i}","n":{i},"pad":"{filler}"}}"#
            ))
        })
        .collect();
    let metadata: StringArray = ids
        .clone()
        .map(|i| match i % 3 {
            0 => Some(format!("{{\n  \"k\": {i}\n}}")),
            1 => None,
            _ => Some(format!(r#"[{i}, "two"]"#)),
        })
        .collect();
    let name: StringArray = ids.clone().map(|i| Some(format!("span {i}"))).collect();
    let score: Float64Array = ids.map(|i| Some(i as f64 / 2.0)).collect();
    RecordBatch::try_new(
        span_schema(),
        vec![
            Arc::new(id),
            Arc::new(created.with_timezone("UTC")),
            Arc::new(input),
            Arc::new(metadata),
            Arc::new(name),
            Arc::new(score),
        ],
    )
    .unwrap()
}

fn stream_of(batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
    let items = batches.into_iter().map(Ok::<_, DataFusionError>);
    Box::pin(RecordBatchStreamAdapter::new(
        span_schema(),
        futures::stream::iter(items),
    ))
}

/// Batches whose `created` cycles over four days (and a null every 7th row).
fn four_days(rows: i64, batch: i64, pad: usize) -> Vec<RecordBatch> {
    (0..rows)
        .step_by(batch as usize)
        .map(|start| {
            spans(
                start..(start + batch).min(rows),
                |i| (i % 7 != 6).then(|| NOV_24 + (i % 4) * DAY + (i % 24) * HOUR + i),
                pad,
            )
        })
        .collect()
}

fn config(raw: RawSinkConfig) -> SinkConfig {
    raw.validate().unwrap()
}

/// One row as read back: id, created in µs, input and metadata as JSON.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    created: Option<i64>,
    input: serde_json::Value,
    metadata: serde_json::Value,
}

/// `pad` letters that differ from row to row, so compression cannot
/// collapse them.
fn filler(i: i64, pad: usize) -> String {
    let mut state = (i as u64)
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1);
    (0..pad)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            char::from(b'a' + ((state >> 33) % 26) as u8)
        })
        .collect()
}

fn expected_row(i: i64, created: Option<i64>, pad: usize) -> Row {
    let filler = filler(i, pad);
    Row {
        id: i,
        created,
        input: serde_json::json!({"q": format!("question {i}"), "n": i, "pad": filler}),
        metadata: match i % 3 {
            0 => serde_json::json!({"k": i}),
            1 => serde_json::Value::Null,
            _ => serde_json::json!([i, "two"]),
        },
    }
}

async fn object_bytes(store: &dyn ObjectStore, key: &str) -> Bytes {
    store
        .get(&Path::from(key))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

async fn keys_under(store: &dyn ObjectStore, prefix: &Path) -> BTreeSet<String> {
    store
        .list(Some(prefix))
        .map_ok(|meta| meta.location.to_string())
        .try_collect()
        .await
        .unwrap()
}

/// Read every written file back with an independent reader, check its size,
/// checksum and row count, and return the rows per file.
async fn read_back(target: &ExportTarget, files: &[WrittenFile], format: Format) -> Vec<Vec<Row>> {
    let mut out = Vec::new();
    for file in files {
        let bytes = object_bytes(target.store.as_ref(), &file.key).await;
        assert_eq!(bytes.len() as u64, file.bytes, "{}", file.key);
        let digest = Sha256::digest(&bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(file.checksum, format!("sha256:{hex}"));
        let rows = match format {
            Format::Parquet { .. } => parquet_rows(bytes),
            Format::Jsonl { gzip } => {
                let text = if gzip {
                    let mut text = String::new();
                    flate2::read::GzDecoder::new(&bytes[..])
                        .read_to_string(&mut text)
                        .unwrap();
                    text
                } else {
                    String::from_utf8(bytes.to_vec()).unwrap()
                };
                jsonl_rows(&text)
            }
        };
        assert_eq!(rows.len() as u64, file.rows, "{}", file.key);
        out.push(rows);
    }
    out
}

fn parquet_rows(bytes: Bytes) -> Vec<Row> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(bytes).unwrap();
    let schema = builder.metadata().file_metadata().schema_descr_ptr();
    let logical = |name: &str| {
        schema
            .columns()
            .iter()
            .find(|c| c.name() == name)
            .unwrap()
            .logical_type_ref()
            .cloned()
    };
    assert_eq!(logical("input"), Some(LogicalType::Json));
    assert_eq!(logical("metadata"), Some(LogicalType::Json));
    assert_eq!(logical("name"), Some(LogicalType::String));
    assert_eq!(
        logical("created"),
        Some(LogicalType::Timestamp(TimestampType {
            is_adjusted_to_u_t_c: true,
            unit: ParquetTimeUnit::MICROS,
        }))
    );
    let mut rows = Vec::new();
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        let id = batch
            .column_by_name("id")
            .unwrap()
            .as_primitive::<Int64Type>();
        let created = batch
            .column_by_name("created")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let input = batch.column_by_name("input").unwrap().as_string::<i32>();
        let metadata = batch.column_by_name("metadata").unwrap().as_string::<i32>();
        let json = |column: &StringArray, row: usize| {
            if column.is_null(row) {
                serde_json::Value::Null
            } else {
                serde_json::from_str(column.value(row)).unwrap()
            }
        };
        for row in 0..batch.num_rows() {
            rows.push(Row {
                id: id.value(row),
                created: created.is_valid(row).then(|| created.value(row)),
                input: json(input, row),
                metadata: json(metadata, row),
            });
        }
    }
    rows
}

fn jsonl_rows(text: &str) -> Vec<Row> {
    assert!(text.is_empty() || text.ends_with('\n'));
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let object = value.as_object().unwrap();
            assert_eq!(
                object.keys().collect::<Vec<_>>(),
                ["id", "created", "input", "metadata", "name", "score"],
                "every key on every line, in schema order"
            );
            let created = match &value["created"] {
                serde_json::Value::Null => None,
                serde_json::Value::String(text) => {
                    assert!(text.ends_with('Z') && text.len() == 27, "{text}");
                    let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
                    Some(parsed.timestamp_micros())
                }
                other => panic!("created is {other}"),
            };
            Row {
                id: value["id"].as_i64().unwrap(),
                created,
                input: value["input"].clone(),
                metadata: value["metadata"].clone(),
            }
        })
        .collect()
}

/// Check that `files` hold exactly the rows of `ids` (each once), each in
/// the partition of its `created`.
fn check_rows(
    files: &[WrittenFile],
    rows: &[Vec<Row>],
    ids: std::ops::Range<i64>,
    created_of: impl Fn(i64) -> Option<i64>,
    partitioning: Partitioning,
    pad: usize,
) {
    let mut seen = BTreeMap::new();
    for (file, rows) in files.iter().zip(rows) {
        for row in rows {
            let expected = expected_row(row.id, created_of(row.id), pad);
            assert_eq!(row, &expected);
            let key = row.created.map(|c| match partitioning {
                Partitioning::Day => c.div_euclid(DAY),
                Partitioning::Hour => c.div_euclid(HOUR),
                Partitioning::None => 0,
            });
            let key = if partitioning == Partitioning::None {
                None
            } else {
                key
            };
            assert_eq!(file.partition, partition_path(partitioning, key));
            assert!(seen.insert(row.id, ()).is_none(), "row {} twice", row.id);
        }
    }
    assert_eq!(seen.len() as i64, ids.end - ids.start);
    assert_eq!(
        seen.keys().copied().collect::<Vec<_>>(),
        ids.collect::<Vec<_>>()
    );
}

fn four_days_created(i: i64) -> Option<i64> {
    (i % 7 != 6).then(|| NOV_24 + (i % 4) * DAY + (i % 24) * HOUR + i)
}

fn check_names(files: &[WrittenFile], target: &ExportTarget, run_id: &str, extension: &str) {
    let mut names = BTreeSet::new();
    for file in files {
        let expected_folder = if file.partition.is_empty() {
            target.prefix.to_string()
        } else {
            format!("{}/{}", target.prefix, file.partition)
        };
        let (folder, name) = file.key.rsplit_once('/').unwrap();
        assert_eq!(folder, expected_folder);
        let number = name
            .strip_prefix("part-")
            .and_then(|rest| rest.strip_suffix(&format!("-{run_id}.{extension}")))
            .unwrap_or_else(|| panic!("bad name {name}"));
        assert_eq!(number.len(), 5, "{name}");
        assert!(
            names.insert(number.to_owned()),
            "part number reused: {name}"
        );
    }
}

fn check_metrics(files: &[WrittenFile], metrics: &SinkMetrics) {
    assert_eq!(metrics.files, files.len() as u64);
    assert_eq!(metrics.rows, files.iter().map(|f| f.rows).sum::<u64>());
    assert_eq!(metrics.bytes, files.iter().map(|f| f.bytes).sum::<u64>());
    let mut partitions: BTreeMap<String, PartitionMetrics> = BTreeMap::new();
    for file in files {
        let entry = partitions.entry(file.partition.clone()).or_default();
        entry.rows += file.rows;
        entry.bytes += file.bytes;
        entry.files += 1;
    }
    assert_eq!(metrics.partitions, partitions);
}

#[tokio::test]
async fn parquet_day_partitions_in_a_local_folder() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("file://{}/exports/", dir.path().display());
    let target = target_from_url(&url, &TargetOptions::default()).unwrap();
    let config = SinkConfig::default();
    let run_id = "0196f1e2-run-a";
    let (files, metrics) = write_stream(
        &target,
        &config,
        run_id,
        stream_of(four_days(1000, 128, 10)),
        &json_columns(),
    )
    .await
    .unwrap();
    assert_eq!(metrics.rows, 1000);
    assert_eq!(metrics.input_batches, 8);
    let partitions: Vec<&str> = metrics.partitions.keys().map(String::as_str).collect();
    assert_eq!(
        partitions,
        [
            "date=2026-11-24",
            "date=2026-11-25",
            "date=2026-11-26",
            "date=2026-11-27",
            "date=__HIVE_DEFAULT_PARTITION__"
        ]
    );
    assert_eq!(files.len(), 5, "one file per partition");
    check_names(&files, &target, run_id, "parquet");
    check_metrics(&files, &metrics);
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..1000,
        four_days_created,
        Partitioning::Day,
        10,
    );
    // The files are on disk where the URL says.
    let on_disk = dir
        .path()
        .join("exports/date=2026-11-24")
        .join(format!("part-00000-{run_id}.parquet"));
    assert!(on_disk.exists(), "{}", on_disk.display());
}

#[tokio::test]
async fn jsonl_hour_partitions_in_memory() {
    let target = target_from_url("memory://exports/hourly", &TargetOptions::default()).unwrap();
    let config = config(RawSinkConfig {
        format: Some("jsonl".into()),
        partitioning: Some("hour".into()),
        ..RawSinkConfig::default()
    });
    let (files, metrics) = write_stream(
        &target,
        &config,
        "run-h",
        stream_of(four_days(500, 100, 0)),
        &json_columns(),
    )
    .await
    .unwrap();
    assert_eq!(metrics.rows, 500);
    assert!(files.iter().all(|f| f.key.ends_with("-run-h.jsonl")));
    assert!(
        files
            .iter()
            .any(|f| f.partition == "date=2026-11-25/hour=05")
    );
    assert!(files.iter().any(|f| {
        f.partition == "date=__HIVE_DEFAULT_PARTITION__/hour=__HIVE_DEFAULT_PARTITION__"
    }));
    check_names(&files, &target, "run-h", "jsonl");
    check_metrics(&files, &metrics);
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..500,
        four_days_created,
        Partitioning::Hour,
        0,
    );
    // JSON columns are values, not strings; a pretty-printed value stays on
    // one line.
    let first = object_bytes(target.store.as_ref(), &files[0].key).await;
    let line = std::str::from_utf8(&first).unwrap().lines().next().unwrap();
    assert!(line.contains(r#""input":{"q":"#), "{line}");
}

#[tokio::test]
async fn no_partitioning_and_gzip() {
    let target = target_from_url("memory://flat", &TargetOptions::default()).unwrap();
    let config = config(RawSinkConfig {
        format: Some("jsonl".into()),
        compression: Some("gzip".into()),
        partitioning: Some("none".into()),
        ..RawSinkConfig::default()
    });
    let (files, metrics) = write_stream(
        &target,
        &config,
        "run-flat",
        stream_of(four_days(300, 64, 20)),
        &json_columns(),
    )
    .await
    .unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].key, "flat/part-00000-run-flat.jsonl.gz");
    assert_eq!(files[0].partition, "");
    assert_eq!(metrics.partitions.keys().collect::<Vec<_>>(), [""]);
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..300,
        four_days_created,
        Partitioning::None,
        20,
    );
    // Compressed: far smaller than the text.
    assert!(files[0].bytes < 300 * 60, "{}", files[0].bytes);
}

#[tokio::test]
async fn files_roll_past_max_file_bytes() {
    for format in ["parquet", "jsonl"] {
        let target = target_from_url("memory://roll", &TargetOptions::default()).unwrap();
        let mut config = config(RawSinkConfig {
            format: Some(format.into()),
            compression: Some("none".into()),
            max_file_bytes: Some(16 * 1024),
            row_group_rows: Some(50),
            batch_rows: Some(50),
            ..RawSinkConfig::default()
        });
        config.row_group_bytes = 8 * 1024;
        let (files, metrics) = write_stream(
            &target,
            &config,
            "run-roll",
            stream_of(four_days(2000, 500, 200)),
            &json_columns(),
        )
        .await
        .unwrap();
        assert_eq!(metrics.rows, 2000, "{format}");
        let per_partition = metrics.partitions["date=2026-11-24"].files;
        assert!(per_partition >= 3, "{format}: {per_partition} files");
        assert_eq!(metrics.evicted_files, 0);
        for file in &files {
            // A file overshoots by at most one flush (a batch or row group).
            assert!(file.bytes < 16 * 1024 + 24 * 1024, "{format}: {file:?}");
        }
        check_names(&files, &target, "run-roll", config.format().extension());
        check_metrics(&files, &metrics);
        let listed = keys_under(target.store.as_ref(), &target.prefix).await;
        assert_eq!(listed, files.iter().map(|f| f.key.clone()).collect());
        let rows = read_back(&target, &files, config.format()).await;
        check_rows(
            &files,
            &rows,
            0..2000,
            four_days_created,
            Partitioning::Day,
            200,
        );
    }
}

#[tokio::test]
async fn least_recently_used_file_is_closed_at_the_cap() {
    let target = target_from_url("memory://lru", &TargetOptions::default()).unwrap();
    let config = config(RawSinkConfig {
        max_open_files: Some(2),
        batch_rows: Some(10),
        ..RawSinkConfig::default()
    });
    // Days cycle every row, so with two open files most slices evict one.
    let (files, metrics) = write_stream(
        &target,
        &config,
        "run-lru",
        stream_of(four_days(400, 100, 0)),
        &json_columns(),
    )
    .await
    .unwrap();
    assert_eq!(metrics.rows, 400);
    assert!(metrics.evicted_files > 10, "{metrics:?}");
    assert!(metrics.partitions["date=2026-11-26"].files > 1);
    check_names(&files, &target, "run-lru", "parquet");
    check_metrics(&files, &metrics);
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..400,
        four_days_created,
        Partitioning::Day,
        0,
    );
}

#[tokio::test]
async fn multipart_uploads_and_snappy() {
    let target = target_from_url("memory://big", &TargetOptions::default()).unwrap();
    let mut config = config(RawSinkConfig {
        compression: Some("snappy".into()),
        partitioning: Some("none".into()),
        ..RawSinkConfig::default()
    });
    config.upload_part_bytes = 64 * 1024;
    config.row_group_bytes = 32 * 1024;
    let (files, metrics) = write_stream(
        &target,
        &config,
        "run-big",
        stream_of(four_days(3000, 1000, 300)),
        &json_columns(),
    )
    .await
    .unwrap();
    assert_eq!(files.len(), 1);
    assert!(files[0].bytes > 2 * 64 * 1024, "{:?}", files[0]);
    assert_eq!(metrics.rows, 3000);
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..3000,
        four_days_created,
        Partitioning::None,
        300,
    );
}

#[tokio::test]
async fn empty_input_writes_nothing_and_bad_inputs_are_refused() {
    let target = target_from_url("memory://empty", &TargetOptions::default()).unwrap();
    let (files, metrics) = write_stream(
        &target,
        &SinkConfig::default(),
        "run-empty",
        stream_of(vec![spans(0..0, |_| None, 0)]),
        &json_columns(),
    )
    .await
    .unwrap();
    assert!(files.is_empty());
    assert_eq!(metrics.files, 0);

    let err = write_stream(
        &target,
        &SinkConfig::default(),
        "../escape",
        stream_of(vec![]),
        &json_columns(),
    )
    .await
    .unwrap_err();
    assert!(err.error.to_string().contains("run_id"), "{}", err.error);
    assert!(!err.is_retryable());

    let err = write_stream(
        &target,
        &SinkConfig::default(),
        "run-x",
        stream_of(vec![]),
        &["score".to_owned()],
    )
    .await
    .unwrap_err();
    assert!(err.error.to_string().contains("JSON column `score`"));
}

/// An in-memory store whose uploads fail: a single `put` of a key containing
/// `fail_put`, or any multipart part after `parts_before_failure` parts.
#[derive(Debug)]
struct FailingStore {
    inner: InMemory,
    fail_put: &'static str,
    parts_before_failure: usize,
    parts: Arc<AtomicUsize>,
    aborts: Arc<AtomicUsize>,
}

impl FailingStore {
    fn new(fail_put: &'static str, parts_before_failure: usize) -> Self {
        Self {
            inner: InMemory::new(),
            fail_put,
            parts_before_failure,
            parts: Arc::new(AtomicUsize::new(0)),
            aborts: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl std::fmt::Display for FailingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FailingStore")
    }
}

fn injected() -> object_store::Error {
    object_store::Error::Generic {
        store: "FailingStore",
        source: "injected failure".into(),
    }
}

#[derive(Debug)]
struct FailingUpload {
    inner: Box<dyn MultipartUpload>,
    parts_before_failure: usize,
    parts: Arc<AtomicUsize>,
    aborts: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl MultipartUpload for FailingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        if self.parts.fetch_add(1, Ordering::SeqCst) >= self.parts_before_failure {
            return Box::pin(async { Err(injected()) });
        }
        self.inner.put_part(data)
    }
    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.inner.complete().await
    }
    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if !self.fail_put.is_empty() && location.as_ref().contains(self.fail_put) {
            return Err(injected());
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FailingUpload {
            inner,
            parts_before_failure: self.parts_before_failure,
            parts: Arc::clone(&self.parts),
            aborts: Arc::clone(&self.aborts),
        }))
    }
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[tokio::test]
async fn failed_part_aborts_and_reports_completed_files() {
    let store = Arc::new(FailingStore::new("", 3));
    let aborts = Arc::clone(&store.aborts);
    let target = ExportTarget::new(
        Arc::clone(&store) as Arc<dyn ObjectStore>,
        Path::from("out"),
    );
    let mut config = config(RawSinkConfig {
        compression: Some("none".into()),
        ..RawSinkConfig::default()
    });
    config.upload_part_bytes = 32 * 1024;
    config.row_group_bytes = 16 * 1024;
    // Day 1 is small and finishes (evicted) with a single put; then a large
    // day needs many parts and fails at the fourth.
    let mut batches = vec![spans(0..20, |i| Some(NOV_24 + i), 10)];
    batches.extend((0..10).map(|b| {
        spans(
            100 + b * 100..200 + b * 100,
            |i| Some(NOV_24 + DAY + i),
            500,
        )
    }));
    config.max_open_files = 1;
    let err = write_stream(
        &target,
        &config,
        "run-fail",
        stream_of(batches),
        &json_columns(),
    )
    .await
    .unwrap_err();
    let SinkError::ObjectStore { operation, key, .. } = &err.error else {
        panic!("unexpected error {err:?}");
    };
    assert_eq!(*operation, "upload_part");
    assert_eq!(key, "out/date=2026-11-25/part-00001-run-fail.parquet");
    assert!(err.is_retryable());
    assert_eq!(err.completed.len(), 1);
    assert_eq!(
        err.completed[0].key,
        "out/date=2026-11-24/part-00000-run-fail.parquet"
    );
    assert_eq!(err.completed[0].rows, 20);
    assert_eq!(aborts.load(Ordering::SeqCst), 1);
    // Only the completed file exists: nothing partial is visible.
    let listed = keys_under(store.as_ref(), &Path::from("out")).await;
    assert_eq!(listed, BTreeSet::from([err.completed[0].key.clone()]));
    let message = err.error.to_string();
    assert_eq!(
        message,
        "object store `upload_part` failed on `out/date=2026-11-25/part-00001-run-fail.parquet`"
    );
}

#[tokio::test]
async fn failed_put_and_failed_input_leave_nothing_behind() {
    // A single put fails at the end.
    let store = Arc::new(FailingStore::new("part-00000", usize::MAX));
    let target = ExportTarget::new(Arc::clone(&store) as Arc<dyn ObjectStore>, Path::from("p"));
    let err = write_stream(
        &target,
        &config(RawSinkConfig {
            format: Some("jsonl".into()),
            ..RawSinkConfig::default()
        }),
        "run-put",
        stream_of(four_days(50, 50, 0)),
        &json_columns(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err.error, SinkError::ObjectStore { operation: "put", key, .. } if key.contains("part-00000")),
        "{err:?}"
    );
    // The other partitions were closed before or were aborted; whatever was
    // completed is listed, and nothing else exists.
    let listed = keys_under(store.as_ref(), &Path::from("p")).await;
    let completed: BTreeSet<String> = err.completed.iter().map(|f| f.key.clone()).collect();
    assert_eq!(listed, completed);

    // The input fails after a multipart upload has started.
    let store = Arc::new(FailingStore::new("", usize::MAX));
    let aborts = Arc::clone(&store.aborts);
    let target = ExportTarget::new(Arc::clone(&store) as Arc<dyn ObjectStore>, Path::from("q"));
    let mut config = config(RawSinkConfig {
        format: Some("jsonl".into()),
        partitioning: Some("none".into()),
        ..RawSinkConfig::default()
    });
    config.upload_part_bytes = 16 * 1024;
    let good = four_days(200, 100, 200).into_iter().map(Ok);
    let bad = std::iter::once(Err(DataFusionError::IoError(std::io::Error::other(
        "disk gone",
    ))));
    let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        span_schema(),
        futures::stream::iter(good.chain(bad)),
    ));
    let err = write_stream(&target, &config, "run-input", stream, &json_columns())
        .await
        .unwrap_err();
    assert!(matches!(err.error, SinkError::Input(_)), "{err:?}");
    assert!(err.is_retryable());
    assert!(err.completed.is_empty());
    assert_eq!(
        aborts.load(Ordering::SeqCst),
        1,
        "the open multipart upload was aborted"
    );
    assert!(
        keys_under(store.as_ref(), &Path::from("q"))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn timestamps_of_any_unit_become_utc_micros() {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new(
            "created",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        ),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 2])),
            Arc::new(arrow::array::TimestampNanosecondArray::from(vec![
                Some(NOV_24 * 1000 + 1_500),
                None,
            ])),
        ],
    )
    .unwrap();
    let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        schema,
        futures::stream::iter(vec![Ok(batch)]),
    ));
    let target = target_from_url("memory://ts", &TargetOptions::default()).unwrap();
    let config = config(RawSinkConfig {
        format: Some("jsonl".into()),
        ..RawSinkConfig::default()
    });
    let (files, _) = write_stream(&target, &config, "run-ts", stream, &[])
        .await
        .unwrap();
    let texts: Vec<String> = futures::future::join_all(files.iter().map(|f| {
        let store = Arc::clone(&target.store);
        async move {
            let bytes = object_bytes(store.as_ref(), &f.key).await;
            String::from_utf8(bytes.to_vec()).unwrap()
        }
    }))
    .await;
    assert_eq!(
        texts,
        [
            "{\"id\":2,\"created\":null}\n",
            "{\"id\":1,\"created\":\"2026-11-24T00:00:00.000001Z\"}\n"
        ]
    );
}

mod s3 {
    //! Against a real S3-compatible server; see the parent module docs.

    use std::io::{Read, Write};
    use std::net::TcpStream;

    use super::*;

    struct S3Env {
        endpoint: String,
        options: TargetOptions,
    }

    fn s3_env() -> Option<S3Env> {
        let Ok(endpoint) = std::env::var("SPANLAKE_S3_ENDPOINT") else {
            assert!(
                std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
                "SPANLAKE_REQUIRE_SERVICES is set but SPANLAKE_S3_ENDPOINT is not: run the tests with scripts/test"
            );
            eprintln!(
                "skipped: SPANLAKE_S3_ENDPOINT is unset (start a server with \
                 `tools/s3-server start 9100` and set it to http://127.0.0.1:9100)"
            );
            return None;
        };
        let var =
            |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
        let options = TargetOptions {
            endpoint: Some(endpoint.clone()),
            allow_http: Some(true),
            region: Some(var("SPANLAKE_S3_REGION", "us-east-1")),
            access_key_id: Some(var("SPANLAKE_S3_ACCESS_KEY_ID", "testing")),
            secret_access_key: Some(var("SPANLAKE_S3_SECRET_ACCESS_KEY", "testing")),
            ignore_env: true,
            ..TargetOptions::default()
        };
        Some(S3Env { endpoint, options })
    }

    /// A plain HTTP/1.1 request to the server (moto accepts unsigned
    /// requests unless IAM enforcement is on); returns status and body.
    fn raw_request(endpoint: &str, method: &str, path: &str) -> (u16, String) {
        let authority = endpoint
            .strip_prefix("http://")
            .expect("a plain http endpoint")
            .trim_end_matches('/');
        let mut socket = TcpStream::connect(authority).unwrap();
        write!(
            socket,
            "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        socket.read_to_string(&mut response).unwrap();
        let status = response
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_owned())
            .unwrap_or_default();
        (status, body)
    }

    fn create_bucket(endpoint: &str) -> String {
        let bucket = format!("spanlake-sink-{}", uuid::Uuid::new_v4().simple());
        let (status, body) = raw_request(endpoint, "PUT", &format!("/{bucket}"));
        assert_eq!(status, 200, "create bucket: {body}");
        bucket
    }

    fn pending_uploads(endpoint: &str, bucket: &str) -> usize {
        let (status, body) = raw_request(endpoint, "GET", &format!("/{bucket}?uploads"));
        assert_eq!(status, 200, "list multipart uploads: {body}");
        body.matches("<Upload>").count()
    }

    #[tokio::test]
    async fn partitioned_parquet_export_to_s3() {
        let Some(env) = s3_env() else { return };
        let bucket = create_bucket(&env.endpoint);
        let target =
            target_from_url(&format!("s3://{bucket}/exports/spans"), &env.options).unwrap();
        let config = config(RawSinkConfig {
            partitioning: Some("hour".into()),
            max_open_files: Some(8),
            ..RawSinkConfig::default()
        });
        let (files, metrics) = write_stream(
            &target,
            &config,
            "run-s3",
            stream_of(four_days(2000, 250, 50)),
            &json_columns(),
        )
        .await
        .unwrap();
        assert_eq!(metrics.rows, 2000);
        check_names(&files, &target, "run-s3", "parquet");
        check_metrics(&files, &metrics);
        let listed = keys_under(target.store.as_ref(), &target.prefix).await;
        assert_eq!(listed, files.iter().map(|f| f.key.clone()).collect());
        let rows = read_back(&target, &files, config.format()).await;
        check_rows(
            &files,
            &rows,
            0..2000,
            four_days_created,
            Partitioning::Hour,
            50,
        );
    }

    #[tokio::test]
    async fn multipart_jsonl_to_s3_and_aborted_upload_leaves_nothing() {
        let Some(env) = s3_env() else { return };
        let bucket = create_bucket(&env.endpoint);
        let target = target_from_url(&format!("s3://{bucket}/big"), &env.options).unwrap();
        // Parts are 5 MiB (the S3 minimum); 9000 rows of ~1.2 KB make two.
        let config = config(RawSinkConfig {
            format: Some("jsonl".into()),
            partitioning: Some("none".into()),
            upload_part_bytes: Some(5 * 1024 * 1024),
            batch_rows: Some(500),
            ..RawSinkConfig::default()
        });
        let (files, metrics) = write_stream(
            &target,
            &config,
            "run-multi",
            stream_of(four_days(9000, 1000, 1100)),
            &json_columns(),
        )
        .await
        .unwrap();
        assert_eq!(files.len(), 1);
        assert!(files[0].bytes > 5 * 1024 * 1024 + 1, "{:?}", files[0]);
        assert_eq!(metrics.rows, 9000);
        let rows = read_back(&target, &files, config.format()).await;
        check_rows(
            &files,
            &rows,
            0..9000,
            four_days_created,
            Partitioning::None,
            1100,
        );

        // The input fails once a part is uploaded: the upload is aborted.
        let target = target_from_url(&format!("s3://{bucket}/aborted"), &env.options).unwrap();
        let good = four_days(6000, 1000, 1100).into_iter().map(Ok);
        let bad = std::iter::once(Err(DataFusionError::Execution("boom".into())));
        let stream: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
            span_schema(),
            futures::stream::iter(good.chain(bad)),
        ));
        let err = write_stream(&target, &config, "run-abort", stream, &json_columns())
            .await
            .unwrap_err();
        assert!(matches!(err.error, SinkError::Input(_)), "{err:?}");
        assert!(!err.is_retryable());
        assert!(
            keys_under(target.store.as_ref(), &target.prefix)
                .await
                .is_empty()
        );
        assert_eq!(pending_uploads(&env.endpoint, &bucket), 0);
    }

    #[tokio::test]
    async fn missing_bucket_names_the_operation_and_key() {
        let Some(env) = s3_env() else { return };
        let target = target_from_url("s3://spanlake-no-such-bucket/x", &env.options).unwrap();
        let err = write_stream(
            &target,
            &SinkConfig::default(),
            "run-nobucket",
            stream_of(four_days(10, 10, 0)),
            &json_columns(),
        )
        .await
        .unwrap_err();
        let message = err.error.to_string();
        assert!(
            message.starts_with("object store `put` failed on `x/date="),
            "{message}"
        );
        assert!(!message.contains("testing"), "no secrets: {message}");
        assert!(!err.is_retryable(), "{:?}", err.error);
    }
}

/// Independent read-back with DuckDB, when `SPANLAKE_DUCKDB_PYTHON` names a
/// Python with the `duckdb` module (e.g.
/// `~/.cache/spanlake-tools/bench-venv/bin/python`); skipped otherwise.
/// Writes a day-partitioned Parquet and a gzip JSON Lines export, then
/// checks with DuckDB: row counts per partition (hive partitioning, the
/// null partition read as null), the `JSON` logical type, and UTC
/// timestamps.
#[tokio::test]
async fn duckdb_reads_the_export() {
    let Ok(python) = std::env::var("SPANLAKE_DUCKDB_PYTHON") else {
        assert!(
            std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
            "SPANLAKE_REQUIRE_SERVICES is set but SPANLAKE_DUCKDB_PYTHON is not: run the tests with scripts/test"
        );
        eprintln!("skipped: SPANLAKE_DUCKDB_PYTHON is unset");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    for (folder, raw) in [
        ("parquet", RawSinkConfig::default()),
        (
            "jsonl",
            RawSinkConfig {
                format: Some("jsonl".into()),
                compression: Some("gzip".into()),
                ..RawSinkConfig::default()
            },
        ),
    ] {
        let target =
            target_from_url(&format!("{root}/{folder}"), &TargetOptions::default()).unwrap();
        write_stream(
            &target,
            &config(raw),
            "run-duckdb",
            stream_of(four_days(1000, 128, 10)),
            &json_columns(),
        )
        .await
        .unwrap();
    }
    let script = r#"
import duckdb, sys
root = sys.argv[1]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
counts = con.execute(f"""
    SELECT date, count(*) FROM read_parquet('{root}/parquet/**/*.parquet', hive_partitioning = true)
    GROUP BY ALL ORDER BY ALL""").fetchall()
print("parquet rows per date:", counts)
assert sum(c for _, c in counts) == 1000, counts
assert (None, 142) in counts, counts
types = con.execute(f"""
    SELECT DISTINCT name, logical_type::VARCHAR FROM parquet_schema('{root}/parquet/**/*.parquet')
    WHERE name IN ('input', 'metadata', 'created') ORDER BY name""").fetchall()
print("logical types:", types)
assert all(t == 'JsonType()' for n, t in types if n != 'created'), types
assert 'isAdjustedToUTC=1' in dict(types)['created'] and 'MICROS=MicroSeconds()' in dict(types)['created'], types
typed = con.execute(f"""
    SELECT typeof(input), typeof(created), input->>'$.q', created
    FROM read_parquet('{root}/parquet/date=2026-11-24/*.parquet') ORDER BY id LIMIT 1""").fetchall()
print("parquet first row:", typed)
assert typed[0][0] == 'JSON' and typed[0][1] == 'TIMESTAMP WITH TIME ZONE', typed
jsonl = con.execute(f"""
    SELECT count(*), count(created), count(DISTINCT id)
    FROM read_json('{root}/jsonl/**/*.jsonl.gz', format = 'newline_delimited')""").fetchall()
print("jsonl count, non-null created, distinct ids:", jsonl)
assert jsonl == [(1000, 858, 1000)], jsonl
"#;
    let output = std::process::Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&root)
        .output()
        .unwrap();
    println!("{}", String::from_utf8_lossy(&output.stdout));
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Batches of ids `range`, `per` rows each, on the four days.
fn four_days_of(range: std::ops::Range<i64>, per: i64, pad: usize) -> Vec<RecordBatch> {
    range
        .clone()
        .step_by(per as usize)
        .map(|start| spans(start..(start + per).min(range.end), four_days_created, pad))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_of_a_result_are_written_in_parallel_each_row_once() {
    let target = ExportTarget::new(Arc::new(InMemory::new()), "out".into());
    let config = SinkConfig::default();
    let run_id = "run-parts";
    let streams = vec![
        stream_of(four_days_of(0..600, 64, 10)),
        stream_of(four_days_of(600..1000, 64, 10)),
    ];
    let (files, metrics) = write_streams(&target, &config, run_id, streams, &json_columns())
        .await
        .unwrap();
    assert_eq!(metrics.rows, 1000);
    check_metrics(&files, &metrics);
    // One file per day (and the null day) per partition, named by partition.
    assert_eq!(files.len(), 10, "{files:#?}");
    for file in &files {
        let name = file.key.rsplit('/').next().unwrap();
        assert!(
            (name.starts_with("part-00-") || name.starts_with("part-01-"))
                && name.ends_with(&format!("-{run_id}.parquet")),
            "{name}"
        );
    }
    let keys: BTreeSet<&str> = files.iter().map(|f| f.key.as_str()).collect();
    assert_eq!(keys.len(), files.len(), "a name was used twice");
    let rows = read_back(&target, &files, config.format()).await;
    check_rows(
        &files,
        &rows,
        0..1000,
        four_days_created,
        Partitioning::Day,
        10,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partition_stops_the_others_and_reports_every_completed_file() {
    let store = Arc::new(InMemory::new());
    let target = ExportTarget::new(Arc::clone(&store) as Arc<dyn ObjectStore>, "out".into());
    // Small files: each partition completes some before the failure.
    let config = SinkConfig {
        max_file_bytes: 1,
        ..SinkConfig::default()
    };
    let run_id = "run-fails";
    let good = stream_of(four_days_of(0..2000, 50, 10));
    let mut failing: Vec<Result<RecordBatch, DataFusionError>> = four_days_of(2000..2200, 50, 10)
        .into_iter()
        .map(Ok)
        .collect();
    failing.push(Err(DataFusionError::Execution("the input broke".into())));
    let failing: SendableRecordBatchStream = Box::pin(RecordBatchStreamAdapter::new(
        span_schema(),
        futures::stream::iter(failing),
    ));
    let err = write_streams(
        &target,
        &config,
        run_id,
        vec![failing, good],
        &json_columns(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err.error, SinkError::Input(e) if e.to_string().contains("the input broke")),
        "the first failure is reported, not the others' stopping: {err:?}"
    );
    assert!(!err.completed.is_empty());
    // What is stored is exactly the completed files: nothing half-written.
    let stored: BTreeSet<String> = store
        .list(None)
        .map(|meta| meta.unwrap().location.to_string())
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect();
    let completed: BTreeSet<String> = err.completed.iter().map(|f| f.key.clone()).collect();
    assert_eq!(stored, completed);
    assert!(
        completed.iter().any(|k| k.contains("part-00-")),
        "{completed:?}"
    );
}
