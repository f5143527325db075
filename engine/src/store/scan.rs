//! The row versions of a snapshot, read as plain Parquet: a DataFusion
//! `DataSourceExec` over exactly the data files the snapshot lists (never a
//! listing of the folder, which also holds files of uncommitted or vacuumed
//! writes), with the real store URL.
//!
//! ```text
//!  snapshot's add actions ──► PartitionedFile (path, size, Delta stats of _xact_id and _op)
//!                              │ files pruned on the exact bounds of _xact_id and _op (no footer read),
//!                              │ row groups on the Parquet statistics (created too),
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

use arrow::datatypes::{DataType, Field, FieldRef, Schema, SchemaRef};
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
            let stats = view
                .stats()
                .and_then(|s| serde_json::from_str::<Value>(&s).ok());
            files.push(file.with_statistics(Arc::new(file_statistics(
                &file_schema,
                stats.as_ref(),
                view.num_records(),
            ))));
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
/// its row count and the exact bounds and null counts of `_xact_id` and
/// `_op` (DataFusion prunes whole files on exact bounds only). The store
/// also keeps statistics of `created`, but Delta truncates timestamp bounds
/// to milliseconds, so they are not exact: `created` prunes row groups, on
/// the Parquet footers' own statistics.
fn file_statistics(schema: &Schema, stats: Option<&Value>, rows: Option<usize>) -> Statistics {
    let bound = |side: &str, name: &str| stats?.get(side)?.get(name)?.as_i64();
    let columns: Vec<ColumnStatistics> = schema
        .fields()
        .iter()
        .map(|field| {
            let name = field.name().as_str();
            let scalar = |v: Option<i64>| match field.data_type() {
                DataType::Int64 => Some(ScalarValue::Int64(Some(v?))),
                DataType::Int32 => Some(ScalarValue::Int32(Some(i32::try_from(v?).ok()?))),
                _ => None,
            };
            let column = ColumnStatistics::new_unknown();
            if name != XACT_ID && name != OP {
                return column;
            }
            let (Some(min), Some(max), Some(nulls)) = (
                scalar(bound("minValues", name)),
                scalar(bound("maxValues", name)),
                bound("nullCount", name).and_then(|n| usize::try_from(n).ok()),
            ) else {
                return column;
            };
            // Without a null count, a bound decides nothing (pruning asks
            // whether any value is not null).
            column
                .with_min_value(Precision::Exact(min))
                .with_max_value(Precision::Exact(max))
                .with_null_count(Precision::Exact(nulls))
        })
        .collect();
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
        let mut source =
            ParquetSource::new(table_schema).with_table_parquet_options(TableParquetOptions {
                global: options.execution.parquet.clone(),
                ..TableParquetOptions::default()
            });
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{AsArray, RecordBatch};
    use arrow::datatypes::Int64Type;
    use datafusion::physical_plan::{ExecutionPlanProperties, collect, displayable};
    use datafusion::prelude::{col, lit};

    use super::VersionScan;
    use crate::session::{SessionOptions, session};
    use crate::store::Store;
    use crate::store::schema::XACT_ID;

    async fn commit(store: &Store, from: usize) {
        let lines: Vec<String> = (from..from + 50)
            .map(|i| {
                format!(r#"{{"id":"s{i:03}","created":"2026-01-01T00:00:00Z","input":"v{i}"}}"#)
            })
            .collect();
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        crate::store::ingest_test_lines(store, &lines).await;
    }

    /// Three commits, three files: read on three partitions (files are
    /// split by byte range, so row groups of one file are too), and a filter
    /// on `_xact_id` reads none of the first file's rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_snapshot_files_are_read_on_every_partition_and_pruned_on_their_stats() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for from in [0, 50, 100] {
            commit(&store, from).await;
        }
        let project = store.registry().unwrap().resolve("p").unwrap();
        let logs = store.logs(&project).await.unwrap();
        let table = logs.table().unwrap();
        let ctx = session(&SessionOptions {
            target_partitions: Some(3),
            ..SessionOptions::default()
        })
        .unwrap();
        ctx.state_ref()
            .write()
            .config_mut()
            .options_mut()
            .optimizer
            .repartition_file_min_size = 0;

        let all = VersionScan::of(table).read(&ctx).unwrap();
        let plan = all.create_physical_plan().await.unwrap();
        assert_eq!(
            plan.output_partitioning().partition_count(),
            3,
            "{}",
            displayable(plan.as_ref()).indent(false)
        );
        let batches: Vec<RecordBatch> = collect(plan, ctx.task_ctx()).await.unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            150
        );

        let first_xact = VersionScan::of(table)
            .read(&ctx)
            .unwrap()
            .aggregate(
                vec![],
                vec![datafusion::functions_aggregate::expr_fn::min(col(XACT_ID))],
            )
            .unwrap()
            .collect()
            .await
            .unwrap()[0]
            .column(0)
            .as_primitive::<Int64Type>()
            .value(0);
        let later = VersionScan::of(table)
            .read(&ctx)
            .unwrap()
            .filter(col(XACT_ID).gt(lit(first_xact)))
            .unwrap();
        let plan = later.create_physical_plan().await.unwrap();
        let batches = collect(Arc::clone(&plan), ctx.task_ctx()).await.unwrap();
        assert_eq!(
            batches.iter().map(RecordBatch::num_rows).sum::<usize>(),
            100
        );
        let shown = datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(
            plan.as_ref(),
        )
        .indent(false)
        .to_string();
        // Each file here holds one `_xact_id`, so DataFusion folds the
        // column into a literal when it opens the file and the file's only
        // row group is skipped on it (a file of several commits is skipped
        // whole on its Delta statistics); either way none of its data is read.
        assert!(
            shown.contains("row_groups_pruned_statistics=3 total → 2 matched"),
            "the first file's rows were read:\n{shown}"
        );
    }

    /// A file column names each row's file as the snapshot does, and `only`
    /// reads just the files asked for.
    #[tokio::test]
    async fn only_the_files_asked_for_with_their_names() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        commit(&store, 0).await;
        commit(&store, 50).await;
        let project = store.registry().unwrap().resolve("p").unwrap();
        let logs = store.logs(&project).await.unwrap();
        let table = logs.table().unwrap();
        let paths: Vec<String> = table
            .snapshot()
            .unwrap()
            .log_data()
            .iter()
            .map(|view| view.path().into_owned())
            .collect();
        assert_eq!(paths.len(), 2);
        let ctx = session(&SessionOptions::default()).unwrap();
        let batches = VersionScan::of(table)
            .only([paths[1].clone()])
            .with_file_column("file")
            .read(&ctx)
            .unwrap()
            .select(vec![col("file")])
            .unwrap()
            .collect()
            .await
            .unwrap();
        let mut names = Vec::new();
        for batch in &batches {
            names.extend(
                batch
                    .column(0)
                    .as_string::<i32>()
                    .iter()
                    .map(|n| n.unwrap().to_owned()),
            );
        }
        assert_eq!(names.len(), 50);
        assert!(names.iter().all(|n| n == &paths[1]), "{names:?}");
    }
}
