//! Resolution of row versions into the spans view that queries read.
//!
//! ```text
//!  versions at snapshot V
//!    ├─ ids to fold  = DISTINCT id WHERE _op != 0     (files whose `_op` stats are all 0 are skipped)
//!    ├─ clean rows   = WHERE _op = 0 AND id NOT IN (ids to fold)   ── streamed, never collected
//!    └─ folded rows  = fold(versions of ids to fold, in (_xact_id, _seq) order)
//!  spans view        = clean rows  UNION ALL  folded rows
//! ```
//!
//! A clean row (`_op = 0`) is the first version of its id and a replace, so
//! when no other version of the id exists it is already resolved. Every later
//! version of an id is stored with `_op != 0`, which puts the id in the fold
//! set. The fold applies `merge::apply_event` per id. Its memory is
//! proportional to the versions of ids that have more than one version;
//! compaction (folding versions into clean rows) keeps that small.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, AsArray, BooleanBuilder, RecordBatch, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Int32Type, Int64Type, TimestampMicrosecondType};
use datafusion::common::metadata::FieldMetadata;
use datafusion::dataframe::DataFrame;
use datafusion::logical_expr::{Expr, cast, col, lit};
use datafusion::prelude::SessionContext;
use serde_json::{Map, Value};
use spanlake_dsl::schema::{JSON_COLUMNS, JSON_METADATA_KEY, spans_schema};

use super::ProjectLogs;
use super::schema::{MERGE, OP, SEQ, STRING_COLUMNS, VersionOp, XACT_ID};
use crate::error::{Error, Result};
use crate::merge::{self, EventOp};

/// The `log_id` of project logs.
pub const PROJECT_LOGS_LOG_ID: &str = "g";

/// Expressions that turn physical row versions into rows of the spans view.
fn logical_projection() -> Vec<Expr> {
    let json = FieldMetadata::from(BTreeMap::from([(
        JSON_METADATA_KEY.to_string(),
        "true".to_string(),
    )]));
    let mut exprs = vec![
        col("id"),
        cast(col(XACT_ID), DataType::Utf8).alias(XACT_ID),
        col("created"),
        col("org_id"),
        col("project_id"),
        lit(PROJECT_LOGS_LOG_ID).alias("log_id"),
        col("span_id"),
        col("root_span_id"),
        col("is_root"),
    ];
    exprs.extend(
        JSON_COLUMNS
            .iter()
            .map(|name| col(*name).alias_with_metadata(*name, Some(json.clone()))),
    );
    exprs
}

impl ProjectLogs {
    /// The spans view of this snapshot as a DataFrame (a lazy plan: clean rows
    /// stream from the table; only the ids with several versions are folded
    /// here, eagerly).
    pub async fn resolved_view(&self, ctx: &SessionContext) -> Result<DataFrame> {
        let Some(table) = self.table() else {
            return Ok(ctx.read_batch(RecordBatch::new_empty(spans_schema()))?);
        };
        table.update_datafusion_session(&ctx.state())?;
        let provider = table.table_provider().await?;
        let versions = ctx.read_table(provider)?;

        let fold_ids = ids_to_fold(versions.clone()).await?;
        if fold_ids.is_empty() {
            return Ok(versions.select(logical_projection())?);
        }
        let fold_list: Vec<Expr> = fold_ids.iter().map(|id| lit(id.as_str())).collect();
        let to_fold = versions
            .clone()
            .filter(col("id").in_list(fold_list.clone(), false))?
            .collect()
            .await?;
        let folded = fold_versions(&to_fold, &self.project().id)?;
        let clean = versions
            .filter(col(OP).eq(lit(VersionOp::NewReplace as i32)))?
            .filter(col("id").in_list(fold_list, true))?
            .select(logical_projection())?;
        Ok(clean.union(ctx.read_batch(folded)?)?)
    }
}

async fn ids_to_fold(versions: DataFrame) -> Result<Vec<String>> {
    let batches = versions
        .filter(col(OP).not_eq(lit(VersionOp::NewReplace as i32)))?
        .select(vec![col("id")])?
        .distinct()?
        .collect()
        .await?;
    let mut ids = Vec::new();
    for batch in &batches {
        let column = batch.column(0);
        let strings = column.as_string_opt::<i32>().ok_or_else(|| {
            Error::Internal(format!("`id` column has type {}", column.data_type()))
        })?;
        ids.extend(strings.iter().flatten().map(str::to_string));
    }
    Ok(ids)
}

/// One stored version, decoded for the fold.
#[derive(Debug)]
struct Version {
    id: String,
    xact: i64,
    seq: i64,
    op: EventOp,
    fields: Map<String, Value>,
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal(format!("stored batch lacks string column `{name}`")))
}

fn decode_versions(batch: &RecordBatch, out: &mut Vec<Version>) -> Result<()> {
    let missing = |name: &str| Error::Internal(format!("stored batch lacks column `{name}`"));
    let xact = batch
        .column_by_name(XACT_ID)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| missing(XACT_ID))?;
    let seq = batch
        .column_by_name(SEQ)
        .and_then(|c| c.as_primitive_opt::<Int64Type>())
        .ok_or_else(|| missing(SEQ))?;
    let op = batch
        .column_by_name(OP)
        .and_then(|c| c.as_primitive_opt::<Int32Type>())
        .ok_or_else(|| missing(OP))?;
    let created = batch
        .column_by_name("created")
        .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        .ok_or_else(|| missing("created"))?;
    let ids = string_column(batch, "id")?;
    let merge_control = string_column(batch, MERGE)?;
    let strings: Vec<(&str, &arrow::array::StringArray)> = STRING_COLUMNS
        .iter()
        .map(|name| Ok((*name, string_column(batch, name)?)))
        .collect::<Result<_>>()?;
    let json: Vec<(&str, &arrow::array::StringArray)> = JSON_COLUMNS
        .iter()
        .map(|name| Ok((*name, string_column(batch, name)?)))
        .collect::<Result<_>>()?;

    for row in 0..batch.num_rows() {
        let id = ids.value(row).to_string();
        let mut fields = Map::new();
        fields.insert("id".to_string(), Value::String(id.clone()));
        if created.is_valid(row) {
            fields.insert("created".to_string(), Value::from(created.value(row)));
        }
        for (name, array) in &strings {
            if array.is_valid(row) {
                fields.insert(
                    (*name).to_string(),
                    Value::String(array.value(row).to_string()),
                );
            }
        }
        for (name, array) in &json {
            if array.is_valid(row) {
                let value: Value = serde_json::from_str(array.value(row)).map_err(|e| {
                    Error::Internal(format!("stored `{name}` of `{id}` is not JSON: {e}"))
                })?;
                fields.insert((*name).to_string(), value);
            }
        }
        let op_code = op.value(row);
        let op = match VersionOp::from_i32(op_code) {
            Some(VersionOp::NewReplace | VersionOp::Replace) => EventOp::Replace,
            Some(VersionOp::Delete) => EventOp::Delete,
            Some(VersionOp::Merge) => {
                let mut control = if merge_control.is_valid(row) {
                    match serde_json::from_str(merge_control.value(row)) {
                        Ok(Value::Object(map)) => map,
                        _ => {
                            return Err(Error::Internal(format!(
                                "stored merge control of `{id}` is not a JSON object"
                            )));
                        }
                    }
                } else {
                    Map::new()
                };
                control.insert("_is_merge".to_string(), Value::Bool(true));
                merge::split_control_fields(&mut control)
                    .map_err(|e| Error::Internal(format!("stored merge control of `{id}`: {e}")))?
            }
            None => return Err(Error::Internal(format!("unknown `_op` {op_code}"))),
        };
        out.push(Version {
            id,
            xact: xact.value(row),
            seq: seq.value(row),
            op,
            fields,
        });
    }
    Ok(())
}

/// Fold the versions in `batches` (all versions of some ids) into one
/// resolved row per live id, in the spans schema.
fn fold_versions(batches: &[RecordBatch], project_id: &str) -> Result<RecordBatch> {
    let mut versions = Vec::new();
    for batch in batches {
        decode_versions(batch, &mut versions)?;
    }
    versions.sort_by(|a, b| (&a.id, a.xact, a.seq).cmp(&(&b.id, b.xact, b.seq)));

    let mut rows = SpansBatchBuilder::new(versions.len());
    let mut iter = versions.into_iter().peekable();
    while let Some(first) = iter.next() {
        let mut xact = first.xact;
        let mut state = merge::apply_event(None, &first.op, first.fields);
        while let Some(next) = iter.next_if(|v| v.id == first.id) {
            xact = next.xact;
            state = merge::apply_event(state, &next.op, next.fields);
        }
        if let Some(row) = state {
            rows.push(&row, xact, project_id)?;
        }
    }
    rows.finish()
}

/// Whether a span with these parents is a root span: no parents at all.
pub fn is_root_from_parents(span_parents: Option<&Value>) -> bool {
    match span_parents {
        None | Some(Value::Null) => true,
        Some(Value::Array(parents)) => parents.is_empty(),
        Some(_) => false,
    }
}

/// Builds record batches of the spans view from resolved rows.
#[derive(Debug)]
struct SpansBatchBuilder {
    id: StringBuilder,
    xact: StringBuilder,
    created: TimestampMicrosecondBuilder,
    org_id: StringBuilder,
    project_id: StringBuilder,
    log_id: StringBuilder,
    span_id: StringBuilder,
    root_span_id: StringBuilder,
    is_root: BooleanBuilder,
    json: Vec<StringBuilder>,
}

impl SpansBatchBuilder {
    fn new(capacity: usize) -> Self {
        Self {
            id: StringBuilder::with_capacity(capacity, capacity * 36),
            xact: StringBuilder::with_capacity(capacity, capacity * 19),
            created: TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            org_id: StringBuilder::new(),
            project_id: StringBuilder::new(),
            log_id: StringBuilder::new(),
            span_id: StringBuilder::new(),
            root_span_id: StringBuilder::new(),
            is_root: BooleanBuilder::with_capacity(capacity),
            json: JSON_COLUMNS.iter().map(|_| StringBuilder::new()).collect(),
        }
    }

    fn push(&mut self, row: &Map<String, Value>, xact: i64, project_id: &str) -> Result<()> {
        let text = |name: &str| row.get(name).and_then(Value::as_str);
        let id = text("id").ok_or_else(|| Error::Internal("resolved row without `id`".into()))?;
        self.id.append_value(id);
        self.xact.append_value(xact.to_string());
        self.created
            .append_option(row.get("created").and_then(Value::as_i64));
        self.org_id.append_option(text("org_id"));
        self.project_id
            .append_value(text("project_id").unwrap_or(project_id));
        self.log_id.append_value(PROJECT_LOGS_LOG_ID);
        self.span_id.append_option(text("span_id"));
        self.root_span_id.append_option(text("root_span_id"));
        self.is_root
            .append_value(is_root_from_parents(row.get("span_parents")));
        for (builder, name) in self.json.iter_mut().zip(JSON_COLUMNS) {
            match row.get(*name) {
                None | Some(Value::Null) => builder.append_null(),
                Some(value) => builder.append_value(value.to_string()),
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<RecordBatch> {
        let mut columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(self.id.finish()),
            Arc::new(self.xact.finish()),
            Arc::new(self.created.finish()),
            Arc::new(self.org_id.finish()),
            Arc::new(self.project_id.finish()),
            Arc::new(self.log_id.finish()),
            Arc::new(self.span_id.finish()),
            Arc::new(self.root_span_id.finish()),
            Arc::new(self.is_root.finish()),
        ];
        columns.extend(
            self.json
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as Arc<dyn Array>),
        );
        Ok(RecordBatch::try_new(spans_schema(), columns)?)
    }
}
