//! An export's configuration: what it writes, where, in which format and
//! how often; validated with every problem named by its key.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{parse_bytes, parse_duration};
use crate::error::{Error, Result};
use crate::registry::objects::ObjectType;
use crate::sink::{RawSinkConfig, SinkConfig};

/// What an export writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportData {
    /// One row per trace: the BTQL `summary` shape.
    Traces,
    /// One row per span.
    Spans,
    /// The rows of a BTQL query over the spans that changed.
    Query,
}

/// Export configuration as a user gives it (CLI flags or JSON).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExportConfig {
    /// What is exported: `project_logs` (default, the project's logs),
    /// `experiment` or `dataset` (the one named by `object_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_type: Option<String>,
    /// The id of the experiment or dataset exported, e.g. from `spanlake
    /// experiment list`; none for `project_logs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_id: Option<String>,
    /// `traces`, `spans` or `query`.
    pub data: String,
    /// The BTQL of a `query` export.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btql: Option<String>,
    /// Destination URL: `s3://bucket/prefix`, `gs://bucket/prefix`,
    /// `az://container/prefix` (or `abfss://container@account…/prefix`),
    /// `file:///abs/path`.
    pub export_path: String,
    /// `parquet` (default) or `jsonl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Parquet: `zstd` (default), `snappy`, `none`; JSON Lines: `none`, `gzip`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// How often it runs, e.g. `1h` (default), at least `1m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Rows read, encoded and flushed together (default 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_size: Option<usize>,
    /// `day` (default), `hour` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitioning: Option<String>,
    /// A file is closed past this size, e.g. `256MiB` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<String>,
    /// A run stops after the commit that reaches this many rows (default
    /// 100000) and reports `behind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rows_per_run: Option<u64>,
    /// `traces`: export a trace only when none of its spans changed for this
    /// long (default `0`: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_idle: Option<String>,
    /// IAM role to assume with the external id of the automation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// Endpoint of an S3-compatible server; for `gs://`, the GCS API's base
    /// URL; for Azure, the account URL (an emulator's, e.g.
    /// `http://127.0.0.1:10000/devstoreaccount1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Where its runs execute: `local` (the default) or
    /// `ballista://HOST:PORT`, the scheduler of a cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<String>,
}

/// A validated export configuration.
#[derive(Debug, Clone)]
pub struct ExportConfig {
    /// Which table it reads: the project's logs, an experiment or a dataset.
    pub object_type: ObjectType,
    /// The experiment or dataset, for those object types.
    pub object_id: Option<String>,
    /// What to write.
    pub data: ExportData,
    /// The BTQL of a `query` export.
    pub btql: Option<String>,
    /// Destination URL.
    pub export_path: String,
    /// How files are written.
    pub sink: SinkConfig,
    /// How often it runs.
    pub interval: Duration,
    /// Soft row cap of a run (whole commits).
    pub max_rows_per_run: u64,
    /// Idle time before a trace is exported.
    pub trace_idle: Duration,
    /// Role to assume.
    pub role_arn: Option<String>,
    /// The endpoint override (S3, GCS base URL or Azure account URL).
    pub endpoint: Option<String>,
    /// Where its runs execute.
    pub engine: crate::cluster::Engine,
    /// The configuration as given (what a cluster's executors validate
    /// again to open the target).
    pub raw: Box<RawExportConfig>,
}

impl RawExportConfig {
    /// Check every field, gathering all problems as `key: message`.
    pub fn validate(&self) -> Result<ExportConfig> {
        let mut problems = Vec::new();
        let data = match self.data.as_str() {
            "traces" => Some(ExportData::Traces),
            "spans" => Some(ExportData::Spans),
            "query" => Some(ExportData::Query),
            other => {
                problems.push(format!(
                    "data: `{other}` is not one of `traces`, `spans`, `query`"
                ));
                None
            }
        };
        let object_type = crate::registry::objects::config_object_type(self.object_type.as_deref())
            .map_err(|problem| problems.push(problem))
            .ok();
        match (object_type, &self.object_id) {
            (Some(ObjectType::ProjectLogs), Some(_)) => problems.push(
                "object_id: only an export of an `experiment` or `dataset` names one (`project_logs` is the project's logs)".to_string(),
            ),
            (Some(t @ (ObjectType::Experiment | ObjectType::Dataset)), None) => problems.push(
                format!("object_id: an export of `{t}` needs the id of one {t} of the project (see `spanlake {t} list -p PROJECT`)"),
            ),
            _ => {}
        }
        if object_type.is_some_and(|t| !t.has_traces()) && data == Some(ExportData::Traces) {
            problems.push(format!(
                "data: a `{}` has records, not traces; export its `spans` (one row per record) or a `query`",
                ObjectType::Dataset
            ));
        }
        match (&data, &self.btql) {
            (Some(ExportData::Query), None) => {
                problems.push("btql: a `query` export needs its BTQL query".to_string());
            }
            (Some(ExportData::Query), Some(text)) => {
                if let Err(diagnostics) = spanlake_dsl::parse_any(text) {
                    let first = diagnostics.0.first().map_or_else(String::new, |d| {
                        format!("{} at byte {}", d.message, d.span.start)
                    });
                    problems.push(format!("btql: the query does not parse: {first}"));
                }
            }
            (Some(_), Some(_)) => {
                problems.push("btql: only a `query` export takes a query".to_string());
            }
            _ => {}
        }
        if self.export_path.trim().is_empty() {
            problems.push("export_path: required, e.g. `s3://bucket/prefix`".to_string());
        }
        let interval = parse_duration(self.interval.as_deref().unwrap_or("1h"))
            .map_err(|e| problems.push(format!("interval: {e}")))
            .ok();
        if interval.is_some_and(|d| d < Duration::from_secs(60)) {
            problems.push("interval: must be at least `1m`".to_string());
        }
        let trace_idle = parse_duration(self.trace_idle.as_deref().unwrap_or("0s"))
            .map_err(|e| problems.push(format!("trace_idle: {e}")))
            .ok();
        let max_file_bytes = self
            .max_file_bytes
            .as_deref()
            .map(parse_bytes)
            .transpose()
            .map_err(|e| problems.push(format!("max_file_bytes: {e}")))
            .ok()
            .flatten();
        if trace_idle.is_some_and(|idle| !idle.is_zero()) && data != Some(ExportData::Traces) {
            problems.push("trace_idle: only a `traces` export waits for idle traces".to_string());
        }
        let engine = crate::cluster::Engine::parse(self.engine.as_deref().unwrap_or("local"))
            .map_err(|e| problems.push(format!("engine: {e}")))
            .ok();
        let max_rows_per_run = self.max_rows_per_run.unwrap_or(100_000);
        if max_rows_per_run == 0 {
            problems.push("max_rows_per_run: must be at least 1".to_string());
        }
        let sink = RawSinkConfig {
            format: self.format.clone(),
            compression: self.compression.clone(),
            partitioning: self.partitioning.clone(),
            max_file_bytes,
            batch_rows: self.batch_size,
            ..RawSinkConfig::default()
        }
        .validate()
        .map_err(|e| problems.push(e.to_string()))
        .ok();
        match (data, interval, trace_idle, sink, object_type, engine) {
            (
                Some(data),
                Some(interval),
                Some(trace_idle),
                Some(sink),
                Some(object_type),
                Some(engine),
            ) if problems.is_empty() => {
                Ok(ExportConfig {
                    object_type,
                    // Canonical (lowercase, hyphenated): the id of its
                    // table as vacuum's pins and manifests name it.
                    object_id: self
                        .object_id
                        .as_deref()
                        .map(crate::registry::objects::canonical_object_id),
                    data,
                    btql: self.btql.clone(),
                    export_path: self.export_path.clone(),
                    sink,
                    interval,
                    max_rows_per_run,
                    trace_idle,
                    role_arn: self.role_arn.clone(),
                    endpoint: self.endpoint.clone(),
                    engine,
                    raw: Box::new(self.clone()),
                })
            }
            _ => Err(Error::InvalidArgument(format!(
                "invalid export configuration:\n  {}",
                problems.join("\n  ")
            ))),
        }
    }
}
