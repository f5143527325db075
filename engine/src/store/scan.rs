//! The row versions of a snapshot, read as plain Parquet: a DataFusion
//! `DataSourceExec` over exactly the data files the snapshot lists (never a
//! listing of the folder, which also holds files of uncommitted or vacuumed
//! writes), with the real store URL.
//!
//! ```text
//!  snapshot's add actions ──► PartitionedFile (path, size, Delta stats of _xact_id, _op, created)
//!                              │ files pruned on those stats (no footer read),
//!                              │ row groups on the Parquet statistics,
//!                              ▼ files split by byte range into target_partitions groups
//!                           DataSourceExec(ParquetSource)   one partition per group, every core
//! ```
//!
//! One file of 300k versions is five row groups: the split reads them on
//! every core, where delta-rs's own provider read them in one partition. The
//! plan is DataFusion's own Parquet scan, so a distributed engine can ship it
//! with the stock codec (delta-rs has none for its scan).

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::{ColumnStatistics, DFSchema, ScalarValue, Statistics};
use datafusion::config::TableParquetOptions;
use datafusion::dataframe::DataFrame;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::physical_plan::{
    FileGroup, FileGroupPartitioner, FileScanConfigBuilder, ParquetSource,
};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::table_schema::TableSchema;
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown, TableType};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use deltalake::DeltaTable;
use object_store::path::Path;
use serde_json::Value;

use super::schema::{OP, XACT_ID};
use crate::error::{Error, Result};

/// A scan of a table's row versions at its loaded snapshot: all of its data
/// files, or only some of them, with or without a column naming each row's
/// file.
pub(crate) struct VersionScan<'a> {
    table: &'a DeltaTable,
    only: Option<HashSet<String>>,
    file_column: Option<&'static str>,
}

impl<'a> VersionScan<'a> {
    pub(crate) fn of(table: &'a DeltaTable) -> Self {
        Self {
            table,
            only: None,
            file_column: None,
        }
    }

    /// Only these files (paths as the snapshot names them).
    pub(crate) fn only(mut self, paths: impl IntoIterator<Item = String>) -> Self {
        self.only = Some(paths.into_iter().collect());
        self
    }

    /// With a `Utf8` column `name` holding each row's file path, as the
    /// snapshot names it.
    pub(crate) fn with_file_column(mut self, name: &'static str) -> Self {
        self.file_column = Some(name);
        self
    }

    /// The versions as a lazy DataFrame in `ctx`.
    pub(crate) fn read(self, ctx: &SessionContext) -> Result<DataFrame> {
        Ok(ctx.read_table(Arc::new(self.provider()?))?)
    }

    fn provider(self) -> Result<SnapshotTable> {
        let snapshot = self.table.snapshot()?;
        let file_schema = snapshot.snapshot().arrow_schema();
        let root = self.table.table_url();
        let url = ObjectStoreUrl::parse(format!("{}://{}", root.scheme(), root.authority()))?;
        let root_path = Path::from_url_path(root.path()).map_err(|e| {
            Error::Internal(format!("table location `{root}` is not a store path: {e}"))
        })?;
        let mut files = Vec::new();
        for view in snapshot.log_data().iter() {
            let path = view.path().into_owned();
            if self.only.as_ref().is_some_and(|only| !only.contains(&path)) {
                continue;
            }
            let location = root_path
                .parts()
                .chain(view.object_store_path().parts())
                .collect::<Path>();
            let size = u64::try_from(view.size()).unwrap_or(0);
            let mut file = PartitionedFile::new(location.to_string(), size);
            if self.file_column.is_some() {
                file = file.with_partition_values(vec![ScalarValue::Utf8(Some(path))]);
            }
            let stats = view.stats().and_then(|s| serde_json::from_str::<Value>(&s).ok());
            file.statistics = Some(Arc::new(file_statistics(
                &file_schema,
                stats.as_ref(),
                view.num_records(),
                self.file_column.is_some(),
            )));
            files.push(file);
        }
        let partition_columns: Vec<FieldRef> = self
            .file_column
            .map(|name| Arc::new(Field::new(name, DataType::Utf8, false)))
            .into_iter()
            .collect();
        let mut fields: Vec<FieldRef> = file_schema.fields().iter().cloned().collect();
        fields.extend(partition_columns.iter().cloned());
        Ok(SnapshotTable {
            schema: Arc::new(Schema::new(fields)),
            file_schema,
            partition_columns,
            url,
            files,
        })
    }
}

/// What the Delta log says of a file, for pruning it without reading it:
/// its row count and the bounds of `_xact_id`, `_op` and `created` (the
/// columns the store writes statistics of). Delta truncates timestamp
/// bounds to milliseconds, so the upper bound of `created` is widened by one.
fn file_statistics(
    schema: &Schema,
    stats: Option<&Value>,
    rows: Option<usize>,
    file_column: bool,
) -> Statistics {
    let bound = |side: &str, name: &str| stats?.get(side)?.get(name).cloned();
    let mut columns: Vec<ColumnStatistics> = schema
        .fields()
        .iter()
        .map(|field| {
            let name = field.name().as_str();
            let (min, max) = match (name, field.data_type()) {
                (XACT_ID | OP, data_type) => {
                    let int = |v: Option<Value>| {
                        let v = v?.as_i64()?;
                        match data_type {
                            DataType::Int64 => Some(ScalarValue::Int64(Some(v))),
                            DataType::Int32 => {
                                Some(ScalarValue::Int32(Some(i32::try_from(v).ok()?)))
                            }
                            _ => None,
                        }
                    };
                    (int(bound("minValues", name)), int(bound("maxValues", name)))
                }
                ("created", DataType::Timestamp(TimeUnit::Microsecond, tz)) => {
                    let micros = |v: Option<Value>, widen: i64| {
                        let text = v?;
                        let at = chrono::DateTime::parse_from_rfc3339(text.as_str()?).ok()?;
                        Some(ScalarValue::TimestampMicrosecond(
                            Some(at.timestamp_micros() + widen),
                            tz.clone(),
                        ))
                    };
                    (
                        micros(bound("minValues", name), 0),
                        micros(bound("maxValues", name), 999),
                    )
                }
                _ => (None, None),
            };
            let mut column = ColumnStatistics::new_unknown();
            if let (Some(min), Some(max)) = (min, max) {
                column = column
                    .with_min_value(Precision::Inexact(min))
                    .with_max_value(Precision::Inexact(max));
            }
            column
        })
        .collect();
    if file_column {
        columns.push(ColumnStatistics::new_unknown());
    }
    Statistics {
        num_rows: rows.map_or(Precision::Absent, Precision::Exact),
        total_byte_size: Precision::Absent,
        column_statistics: columns,
    }
}

/// The snapshot's files as a table: see the module documentation.
#[derive(Debug)]
struct SnapshotTable {
    /// The file columns and the file column, if any.
    schema: SchemaRef,
    file_schema: SchemaRef,
    partition_columns: Vec<FieldRef>,
    url: ObjectStoreUrl,
    files: Vec<PartitionedFile>,
}

#[async_trait::async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Used for pruning only: the filter still runs above the scan.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let options = state.config_options();
        let table_schema = TableSchema::builder(Arc::clone(&self.file_schema))
            .with_table_partition_cols(self.partition_columns.clone())
            .build();
        let mut source = ParquetSource::new(table_schema).with_table_parquet_options(
            TableParquetOptions {
                global: options.execution.parquet.clone(),
                ..TableParquetOptions::default()
            },
        );
        if let Some(filter) = conjunction(filters.to_vec()) {
            let schema = DFSchema::try_from(self.schema.as_ref().clone())?;
            source = source.with_predicate(state.create_physical_expr(filter, &schema)?);
        }
        let all = FileGroup::new(self.files.clone());
        let groups = FileGroupPartitioner::new()
            .with_target_partitions(options.execution.target_partitions)
            .with_repartition_file_min_size(options.optimizer.repartition_file_min_size)
            .repartition_file_groups(std::slice::from_ref(&all))
            .unwrap_or_else(|| vec![all]);
        let config = FileScanConfigBuilder::new(self.url.clone(), Arc::new(source))
            .with_file_groups(groups)
            .with_projection_indices(projection.cloned())?
            .with_limit(limit)
            .build();
        Ok(DataSourceExec::from_data_source(config))
    }
}
