//! Physical schema of a project's log table: one row per insert event (a row
//! version), with the bookkeeping columns that the read-time fold needs.
//!
//! ```text
//! _xact_id  i64   transaction id of the commit (0x0DE1 << 48 | Delta version)
//! _seq      i64   position of the event inside its commit (file order)
//! _op       i32   0 replace of a new id | 1 replace of a known id | 2 merge | 3 delete
//! created   timestamp(us, UTC)
//! id, _merge (merge control JSON), org_id, project_id, span_id, root_span_id, is_root
//! <JSON text columns of the spans view>
//! ```
//!
//! A row with `_op = 0` is *clean*: the first version of its id and a replace,
//! so it is its own resolved state unless a later version of the same id
//! exists, which then has `_op != 0`. Reads use this to fold only the ids that
//! need it (see `resolve`).

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use spanlake_dsl::schema::{JSON_COLUMNS, timestamp_type};

/// `_xact_id`: transaction id, shared by every event of one commit.
pub const XACT_ID: &str = "_xact_id";
/// `_seq`: order of the event inside its commit.
pub const SEQ: &str = "_seq";
/// `_op`: how the event applies (see [`VersionOp`]).
pub const OP: &str = "_op";
/// `_merge`: JSON of `{"merge_paths": [...], "array_delete": [...]}` for
/// merges; on a row version written by compaction, which is never a merge,
/// it may instead keep the row's first pagination key, or mark a compacted
/// tombstone (see `store::compact`).
pub const MERGE: &str = "_merge";

/// Top 16 bits of every transaction id (Braintrust's `TOP_BITS`).
pub const XACT_TOP_BITS: i64 = 0x0DE1 << 48;

/// The transaction id of Delta table version `version`.
pub fn xact_id_for_version(version: i64) -> i64 {
    XACT_TOP_BITS | version
}

/// How a stored event applies to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum VersionOp {
    /// A replace of an id never seen before in this project: a clean row.
    NewReplace = 0,
    /// A replace of an id that has earlier versions.
    Replace = 1,
    /// A deep merge (`_is_merge: true`).
    Merge = 2,
    /// `_object_delete: true`.
    Delete = 3,
}

impl VersionOp {
    /// Decode the stored `_op` value.
    pub fn from_i32(v: i32) -> Option<Self> {
        Some(match v {
            0 => Self::NewReplace,
            1 => Self::Replace,
            2 => Self::Merge,
            3 => Self::Delete,
            _ => return None,
        })
    }
}

/// Scalar string columns stored as they are, after `id`.
pub const STRING_COLUMNS: &[&str] = &["org_id", "project_id", "span_id", "root_span_id"];

static PHYSICAL: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new(XACT_ID, DataType::Int64, false),
        Field::new(SEQ, DataType::Int64, false),
        Field::new(OP, DataType::Int32, false),
        Field::new("created", timestamp_type(), true),
        Field::new("id", DataType::Utf8, false),
        Field::new(MERGE, DataType::Utf8, true),
        Field::new("org_id", DataType::Utf8, true),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, true),
        Field::new("root_span_id", DataType::Utf8, true),
        Field::new("is_root", DataType::Boolean, true),
    ];
    fields.extend(
        JSON_COLUMNS
            .iter()
            .map(|name| Field::new(*name, DataType::Utf8, true)),
    );
    Arc::new(Schema::new(fields))
});

/// The Arrow schema of the stored row versions.
pub fn physical_schema() -> SchemaRef {
    Arc::clone(&PHYSICAL)
}

/// Columns whose min/max statistics Delta keeps per file: the ones that prune
/// (`_op` skips clean files when looking for ids to fold; `created` and
/// `_xact_id` serve time filters, retention and incremental exports).
pub const STATS_COLUMNS: &str = "_xact_id,_op,created";

/// Rows per Parquet row group: bounds the writer's memory.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// Parquet settings for the log table: zstd(3); dictionaries and statistics
/// only where they pay (small, repetitive or pruning columns), not on the
/// large JSON text bodies, where they cost time and never prune.
pub fn writer_properties() -> WriterProperties {
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_dictionary_enabled(false)
        .set_statistics_enabled(EnabledStatistics::None);
    for name in [XACT_ID, SEQ, OP, "created"] {
        builder =
            builder.set_column_statistics_enabled(ColumnPath::from(name), EnabledStatistics::Chunk);
    }
    for name in [
        XACT_ID,
        OP,
        "org_id",
        "project_id",
        "span_attributes",
        "tags",
        MERGE,
    ] {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(name), true);
    }
    builder.build()
}
