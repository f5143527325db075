//! The logical schema of the `project_logs` source as BTQL sees it: one row per
//! resolved span (after replace, merge and delete events are folded).
//!
//! Scalar columns have their own Arrow type. Semi-structured columns hold JSON
//! text (`Utf8`, one JSON value per row; SQL `NULL` when the field is absent or
//! JSON `null`) and carry the field metadata [`JSON_METADATA_KEY`] = `"true"`, so the
//! planner and the renderers know to treat them as JSON rather than as strings.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Field metadata key that marks a `Utf8` column as JSON text.
pub const JSON_METADATA_KEY: &str = "spanlake.json";

/// Scalar (typed) columns of the spans view, in order.
pub const SCALAR_COLUMNS: &[&str] = &[
    "id",
    "_xact_id",
    "_pagination_key",
    "created",
    "org_id",
    "project_id",
    "log_id",
    "span_id",
    "root_span_id",
    "is_root",
];

/// Semi-structured columns of the spans view, each JSON text.
pub const JSON_COLUMNS: &[&str] = &[
    "span_parents",
    "span_attributes",
    "input",
    "output",
    "expected",
    "error",
    "scores",
    "metadata",
    "metrics",
    "context",
    "tags",
    "origin",
    "comments",
    "facets",
    "classifications",
];

/// Timestamp type of `created`: microseconds, UTC.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some(Arc::from("UTC")))
}

/// A `Utf8` field marked as JSON text.
pub fn json_field(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true).with_metadata(HashMap::from([(
        JSON_METADATA_KEY.to_string(),
        "true".to_string(),
    )]))
}

/// Whether a field is marked as JSON text.
pub fn is_json_field(field: &Field) -> bool {
    field
        .metadata()
        .get(JSON_METADATA_KEY)
        .is_some_and(|v| v == "true")
}

static SPANS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields = vec![
        Field::new("id", DataType::Utf8, false),
        // Decimal string of the u64 transaction id (as Braintrust returns it); all
        // ids have the same number of digits, so string order is numeric order.
        Field::new("_xact_id", DataType::Utf8, false),
        // Stable and sortable: the `_xact_id` and position of the row's first
        // version, so it never changes when the row is updated.
        Field::new("_pagination_key", DataType::Utf8, false),
        Field::new("created", timestamp_type(), true),
        Field::new("org_id", DataType::Utf8, true),
        Field::new("project_id", DataType::Utf8, false),
        Field::new("log_id", DataType::Utf8, false),
        Field::new("span_id", DataType::Utf8, true),
        Field::new("root_span_id", DataType::Utf8, true),
        Field::new("is_root", DataType::Boolean, true),
    ];
    fields.extend(JSON_COLUMNS.iter().map(|name| json_field(name)));
    Arc::new(Schema::new(fields))
});

/// The schema of the resolved spans view (`project_logs(...) spans`).
pub fn spans_schema() -> SchemaRef {
    Arc::clone(&SPANS_SCHEMA)
}
