//! Sink configuration: [`RawSinkConfig`] as written by a user (TOML, JSON),
//! checked by [`RawSinkConfig::validate`] into the stronger [`SinkConfig`].
//! Validation gathers every problem as `key: message` and never silently
//! fixes a value.

use serde::Deserialize;

use super::error::SinkError;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// S3 allows at most this many parts in one multipart upload.
const MAX_UPLOAD_PARTS: u64 = 10_000;
/// S3's smallest part (all but the last) of a multipart upload.
const MIN_UPLOAD_PART_BYTES: u64 = 5 * MIB;
/// S3's largest part of a multipart upload.
const MAX_UPLOAD_PART_BYTES: u64 = 5 * GIB;

/// Default for [`RawSinkConfig::max_file_bytes`]: 256 MiB.
pub(crate) const DEFAULT_MAX_FILE_BYTES: u64 = 256 * MIB;
/// Default for [`RawSinkConfig::row_group_rows`].
pub(crate) const DEFAULT_ROW_GROUP_ROWS: usize = 100_000;
/// Default for [`RawSinkConfig::row_group_bytes`]: 32 MiB.
pub(crate) const DEFAULT_ROW_GROUP_BYTES: u64 = 32 * MIB;
/// Default for [`RawSinkConfig::batch_rows`].
pub(crate) const DEFAULT_BATCH_ROWS: usize = 1000;
/// Default for [`RawSinkConfig::max_open_files`].
pub(crate) const DEFAULT_MAX_OPEN_FILES: usize = 16;
/// Default for [`RawSinkConfig::upload_part_bytes`]: 10 MiB.
pub(crate) const DEFAULT_UPLOAD_PART_BYTES: u64 = 10 * MIB;
/// Default zstd level for Parquet.
pub(crate) const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// Sink options as a user writes them; turn them into a [`SinkConfig`] with
/// [`RawSinkConfig::validate`]. Every field is optional and has a default.
///
/// ```toml
/// format = "parquet"
/// compression = "zstd"
/// zstd_level = 3
/// partitioning = "day"
/// max_file_bytes = 268435456
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSinkConfig {
    /// File format: `parquet` or `jsonl`. Default `parquet`.
    pub format: Option<String>,
    /// Compression. Parquet: `zstd`, `snappy` or `none` (default `zstd`);
    /// JSON Lines: `none` or `gzip` (default `none`).
    pub compression: Option<String>,
    /// zstd level, 1 to 22, only with `compression = "zstd"`. Default 3.
    pub zstd_level: Option<i32>,
    /// Hive-style folders on the UTC `created` of each row: `day`
    /// (`date=YYYY-MM-DD`), `hour` (`date=YYYY-MM-DD/hour=HH`) or `none`.
    /// Default `day`.
    pub partitioning: Option<String>,
    /// A file is closed and a new one started once it reaches this size, so
    /// a file can exceed it by one flush (a row group or a batch). At least
    /// 1 KiB. Default 268435456 (256 MiB).
    pub max_file_bytes: Option<u64>,
    /// Parquet: most rows in one row group. Default 100000.
    pub row_group_rows: Option<usize>,
    /// Parquet: a row group is flushed once its encoded size reaches this,
    /// which bounds the memory of each open file. At least 1 KiB. Default
    /// 33554432 (32 MiB).
    pub row_group_bytes: Option<u64>,
    /// Input batches are sliced to at most this many rows before they are
    /// split by partition and encoded. Default 1000.
    pub batch_rows: Option<usize>,
    /// Most files open at once; past it the least recently used file is
    /// closed, and a later row of its partition starts a new file. 1 to
    /// 1024. Default 16.
    pub max_open_files: Option<usize>,
    /// Size of each part of a multipart upload; a file smaller than this is
    /// uploaded with a single put. 5 MiB to 5 GiB (S3 limits). Default
    /// 10485760 (10 MiB).
    pub upload_part_bytes: Option<u64>,
}

/// File format of an export, with its compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Apache Parquet.
    Parquet {
        /// Compression of every column.
        compression: ParquetCompression,
    },
    /// JSON Lines: one JSON object per line.
    Jsonl {
        /// Whether the whole file is gzip-compressed (`.jsonl.gz`).
        gzip: bool,
    },
}

impl Format {
    /// The name used in configs and manifests: `parquet` or `jsonl`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Parquet { .. } => "parquet",
            Self::Jsonl { .. } => "jsonl",
        }
    }

    /// File name extension, without the leading dot.
    pub fn extension(&self) -> &'static str {
        match self {
            Self::Parquet { .. } => "parquet",
            Self::Jsonl { gzip: false } => "jsonl",
            Self::Jsonl { gzip: true } => "jsonl.gz",
        }
    }

    /// The compression name used in configs and manifests.
    pub fn compression_name(&self) -> &'static str {
        match self {
            Self::Parquet {
                compression: ParquetCompression::Zstd { .. },
            } => "zstd",
            Self::Parquet {
                compression: ParquetCompression::Snappy,
            } => "snappy",
            Self::Jsonl { gzip: true } => "gzip",
            Self::Parquet {
                compression: ParquetCompression::None,
            }
            | Self::Jsonl { gzip: false } => "none",
        }
    }
}

/// Parquet compression codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParquetCompression {
    /// zstd at a level from 1 to 22.
    Zstd {
        /// Compression level.
        level: i32,
    },
    /// Snappy.
    Snappy,
    /// No compression.
    None,
}

/// How rows are spread over hive-style folders by their UTC `created`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitioning {
    /// `date=YYYY-MM-DD`.
    Day,
    /// `date=YYYY-MM-DD/hour=HH`.
    Hour,
    /// All files directly under the prefix.
    None,
}

impl Partitioning {
    /// The name used in configs: `day`, `hour` or `none`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Hour => "hour",
            Self::None => "none",
        }
    }
}

/// Validated sink options; build one with [`RawSinkConfig::validate`] (or
/// [`SinkConfig::default`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SinkConfig {
    pub(crate) format: Format,
    pub(crate) partitioning: Partitioning,
    pub(crate) max_file_bytes: u64,
    pub(crate) row_group_rows: usize,
    pub(crate) row_group_bytes: u64,
    pub(crate) batch_rows: usize,
    pub(crate) max_open_files: usize,
    pub(crate) upload_part_bytes: u64,
}

impl Default for SinkConfig {
    fn default() -> Self {
        Self {
            format: Format::Parquet {
                compression: ParquetCompression::Zstd {
                    level: DEFAULT_ZSTD_LEVEL,
                },
            },
            partitioning: Partitioning::Day,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            row_group_rows: DEFAULT_ROW_GROUP_ROWS,
            row_group_bytes: DEFAULT_ROW_GROUP_BYTES,
            batch_rows: DEFAULT_BATCH_ROWS,
            max_open_files: DEFAULT_MAX_OPEN_FILES,
            upload_part_bytes: DEFAULT_UPLOAD_PART_BYTES,
        }
    }
}

impl SinkConfig {
    /// File format and compression.
    pub fn format(&self) -> Format {
        self.format
    }
    /// Partitioning of the files by `created`.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }
    /// Size past which a file is closed.
    pub fn max_file_bytes(&self) -> u64 {
        self.max_file_bytes
    }
    /// Most rows per Parquet row group.
    pub fn row_group_rows(&self) -> usize {
        self.row_group_rows
    }
    /// Encoded size at which a Parquet row group is flushed.
    pub fn row_group_bytes(&self) -> u64 {
        self.row_group_bytes
    }
    /// Most rows encoded at once.
    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }
    /// Most files open at once.
    pub fn max_open_files(&self) -> usize {
        self.max_open_files
    }
    /// Part size of multipart uploads.
    pub fn upload_part_bytes(&self) -> u64 {
        self.upload_part_bytes
    }
}

fn check_range<T>(problems: &mut Vec<String>, key: &str, value: T, min: T, max: T)
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    if value < min || value > max {
        problems.push(format!(
            "{key}: {value} is out of range; use {min} to {max}"
        ));
    }
}

impl RawSinkConfig {
    /// Check every field and build a [`SinkConfig`], or return
    /// [`SinkError::InvalidConfig`] listing every problem as `key: message`.
    pub fn validate(&self) -> Result<SinkConfig, SinkError> {
        let mut problems = Vec::new();
        let defaults = SinkConfig::default();

        let format_name = self.format.as_deref().unwrap_or("parquet");
        let compression = self.compression.as_deref();
        let format = match format_name {
            "parquet" => {
                let compression = match compression.unwrap_or("zstd") {
                    "zstd" => {
                        let level = self.zstd_level.unwrap_or(DEFAULT_ZSTD_LEVEL);
                        check_range(&mut problems, "zstd_level", level, 1, 22);
                        Some(ParquetCompression::Zstd { level })
                    }
                    "snappy" => Some(ParquetCompression::Snappy),
                    "none" => Some(ParquetCompression::None),
                    other => {
                        problems.push(format!(
                            "compression: `{other}` is not available for `parquet`; use `zstd`, `snappy` or `none`"
                        ));
                        None
                    }
                };
                compression.map(|compression| Format::Parquet { compression })
            }
            "jsonl" => match compression.unwrap_or("none") {
                "none" => Some(Format::Jsonl { gzip: false }),
                "gzip" => Some(Format::Jsonl { gzip: true }),
                other => {
                    problems.push(format!(
                        "compression: `{other}` is not available for `jsonl`; use `none` or `gzip`"
                    ));
                    None
                }
            },
            other => {
                problems.push(format!(
                    "format: unknown format `{other}`; use `parquet` or `jsonl`"
                ));
                None
            }
        };
        if self.zstd_level.is_some()
            && !matches!(
                format,
                Some(Format::Parquet {
                    compression: ParquetCompression::Zstd { .. }
                })
            )
        {
            problems.push("zstd_level: only applies to `compression = \"zstd\"`".to_owned());
        }

        let partitioning = match self.partitioning.as_deref().unwrap_or("day") {
            "day" => Partitioning::Day,
            "hour" => Partitioning::Hour,
            "none" => Partitioning::None,
            other => {
                problems.push(format!(
                    "partitioning: unknown partitioning `{other}`; use `day`, `hour` or `none`"
                ));
                Partitioning::Day
            }
        };

        let upload_part_bytes = self.upload_part_bytes.unwrap_or(defaults.upload_part_bytes);
        check_range(
            &mut problems,
            "upload_part_bytes",
            upload_part_bytes,
            MIN_UPLOAD_PART_BYTES,
            MAX_UPLOAD_PART_BYTES,
        );
        let row_group_bytes = self.row_group_bytes.unwrap_or(defaults.row_group_bytes);
        check_range(
            &mut problems,
            "row_group_bytes",
            row_group_bytes,
            KIB,
            4 * GIB,
        );
        let max_file_bytes = self.max_file_bytes.unwrap_or(defaults.max_file_bytes);
        check_range(
            &mut problems,
            "max_file_bytes",
            max_file_bytes,
            KIB,
            5 * 1024 * GIB,
        );
        // A file may overshoot `max_file_bytes` by one row group; keep a
        // margin under the part limit of a multipart upload.
        let largest_upload = upload_part_bytes.saturating_mul(MAX_UPLOAD_PARTS * 9 / 10);
        if max_file_bytes.saturating_add(row_group_bytes) > largest_upload {
            problems.push(format!(
                "max_file_bytes: {max_file_bytes} is too large for `upload_part_bytes = {upload_part_bytes}` (a multipart upload has at most {MAX_UPLOAD_PARTS} parts); raise `upload_part_bytes` or lower `max_file_bytes`"
            ));
        }
        let row_group_rows = self.row_group_rows.unwrap_or(defaults.row_group_rows);
        check_range(&mut problems, "row_group_rows", row_group_rows, 1, 1 << 30);
        let batch_rows = self.batch_rows.unwrap_or(defaults.batch_rows);
        check_range(&mut problems, "batch_rows", batch_rows, 1, 1_000_000);
        let max_open_files = self.max_open_files.unwrap_or(defaults.max_open_files);
        check_range(&mut problems, "max_open_files", max_open_files, 1, 1024);

        match format {
            Some(format) if problems.is_empty() => Ok(SinkConfig {
                format,
                partitioning,
                max_file_bytes,
                row_group_rows,
                row_group_bytes,
                batch_rows,
                max_open_files,
                upload_part_bytes,
            }),
            _ => Err(SinkError::InvalidConfig { problems }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = RawSinkConfig::default().validate().unwrap();
        assert_eq!(config, SinkConfig::default());
        assert_eq!(config.format().extension(), "parquet");
        assert_eq!(config.format().compression_name(), "zstd");
    }

    #[test]
    fn parses_toml_like_json() {
        let raw: RawSinkConfig = serde_json::from_str(
            r#"{"format":"jsonl","compression":"gzip","partitioning":"hour","max_file_bytes":1048576}"#,
        )
        .unwrap();
        let config = raw.validate().unwrap();
        assert_eq!(config.format(), Format::Jsonl { gzip: true });
        assert_eq!(config.format().extension(), "jsonl.gz");
        assert_eq!(config.partitioning(), Partitioning::Hour);
        assert_eq!(config.max_file_bytes(), 1 << 20);
        let unknown = serde_json::from_str::<RawSinkConfig>(r#"{"max_file_size":1}"#);
        assert!(unknown.is_err());
    }

    #[test]
    fn gathers_every_problem() {
        let raw = RawSinkConfig {
            format: Some("parquet".into()),
            compression: Some("gzip".into()),
            zstd_level: Some(30),
            partitioning: Some("week".into()),
            max_file_bytes: Some(10),
            batch_rows: Some(0),
            max_open_files: Some(0),
            upload_part_bytes: Some(1024),
            ..RawSinkConfig::default()
        };
        let SinkError::InvalidConfig { problems } = raw.validate().unwrap_err() else {
            panic!("expected InvalidConfig");
        };
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split(':').next().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "compression",
                "zstd_level",
                "partitioning",
                "upload_part_bytes",
                "max_file_bytes",
                "max_file_bytes",
                "batch_rows",
                "max_open_files"
            ],
            "{problems:#?}"
        );
    }

    #[test]
    fn zstd_level_only_with_zstd() {
        let raw = RawSinkConfig {
            format: Some("jsonl".into()),
            zstd_level: Some(3),
            ..RawSinkConfig::default()
        };
        let err = raw.validate().unwrap_err();
        assert!(
            err.to_string().contains("zstd_level: only applies"),
            "{err}"
        );
    }
}
