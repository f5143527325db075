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
//!
//! Compaction (`super::compact`) writes each folded id back as one version
//! that keeps the `_xact_id` of the id's latest version: a clean row, or a
//! *compacted tombstone* (`_op = 3`) for a deleted id, so that ingest still
//! knows the id. On such rows (`_op != 2`, where `_merge` is otherwise
//! null), `_merge` holds the `_pagination_key` of the id's first version
//! when it differs from the one computed from `(_xact_id, _seq)`. A lone
//! compacted tombstone resolves to nothing, so it is not folded.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBuilder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::compute::SortOptions;
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef, TimestampMicrosecondType};
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::metadata::FieldMetadata;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::TableType;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility, cast,
    col, lit, not,
};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexRequirement, OrderingRequirements, PhysicalExpr,
    PhysicalSortRequirement,
};
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, ReplaceChildrenOptions,
};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde_json::{Map, Value};
use spanlake_dsl::schema::{JSON_COLUMNS, JSON_METADATA_KEY, spans_schema};

use super::ProjectLogs;
use super::scan::VersionScan;
use super::schema::{MERGE, OP, SEQ, STRING_COLUMNS, VersionOp, XACT_ID};
use crate::error::{Error, Result};
use crate::store::merge::{self, EventOp};

/// The `log_id` of project logs.
pub const PROJECT_LOGS_LOG_ID: &str = "g";

/// `_pagination_key`: the 19 digits of the first version's `_xact_id` then its
/// `_seq` zero-padded to 10 digits, so that string order is (xact, seq) order.
pub const PAGINATION_KEY: &str = "_pagination_key";

fn pagination_key(xact: Expr, seq: Expr) -> Expr {
    datafusion::functions::string::expr_fn::concat(vec![
        cast(xact, DataType::Utf8),
        datafusion::functions::unicode::expr_fn::lpad(vec![
            cast(seq, DataType::Utf8),
            lit(10i64),
            lit("0"),
        ]),
    ])
}

/// `_pagination_key` of a stored version: the key that compaction kept in
/// `_merge` (non-merge rows only), else the one of its `(_xact_id, _seq)`.
pub(super) fn stored_pagination_key() -> Expr {
    datafusion::logical_expr::when(
        col(OP)
            .not_eq(lit(VersionOp::Merge as i32))
            .and(col(MERGE).is_not_null()),
        cast(col(MERGE), DataType::Utf8),
    )
    .otherwise(pagination_key(col(XACT_ID), col(SEQ)))
    .expect("a CASE with one branch and an ELSE is valid")
}

/// Whether a stored version is a compacted tombstone (see the module docs).
pub(super) fn is_compacted_tombstone() -> Expr {
    col(OP)
        .eq(lit(VersionOp::Delete as i32))
        .and(col(MERGE).is_not_null())
}

/// Whether a stored version makes its id need a fold: not clean, and not a
/// compacted tombstone.
pub(super) fn needs_fold() -> Expr {
    col(OP)
        .not_eq(lit(VersionOp::NewReplace as i32))
        .and(not(is_compacted_tombstone()))
}

pub(super) fn pagination_key_text(xact: i64, seq: i64) -> String {
    format!("{xact:019}{seq:010}")
}

/// Expressions that turn physical row versions into rows of the spans view.
fn logical_projection() -> Vec<Expr> {
    let json = FieldMetadata::from(BTreeMap::from([(
        JSON_METADATA_KEY.to_string(),
        "true".to_string(),
    )]));
    let mut exprs = vec![
        col("id"),
        cast(col(XACT_ID), DataType::Utf8).alias(XACT_ID),
        stored_pagination_key().alias(PAGINATION_KEY),
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
    /// The spans view of this snapshot as a DataFrame: a lazy plan. Clean rows
    /// stream from the table; the versions of ids to fold are sorted (with
    /// spilling, under the session's memory limit) and folded as a stream.
    pub async fn resolved_view(&self, ctx: &SessionContext) -> Result<DataFrame> {
        self.resolved_view_after(ctx, None).await
    }

    /// The rows of the spans view whose latest version has `_xact_id >
    /// after` (all rows when `None`): what changed since an export cursor.
    ///
    /// An id's clean version (`_op = 0`) is always its first, so an id has a
    /// version after the cursor exactly when its clean row is after it or one
    /// of its other versions is; only the latter ids are folded (with all of
    /// their versions), and clean rows are pruned by the `_xact_id` file
    /// statistics.
    pub async fn resolved_view_after(
        &self,
        ctx: &SessionContext,
        after: Option<i64>,
    ) -> Result<DataFrame> {
        self.resolved_view_between(ctx, after, None).await
    }

    /// [`ProjectLogs::resolved_view_after`] over the row versions with
    /// `_xact_id <= upto` only: the rows as of transaction `upto`, read from
    /// this (later) snapshot. Rows deleted since (retention) are gone, and a
    /// row whose versions compaction folded into one after `upto` is left for
    /// a read whose range covers its latest `_xact_id`.
    pub async fn resolved_view_between(
        &self,
        ctx: &SessionContext,
        after: Option<i64>,
        upto: Option<i64>,
    ) -> Result<DataFrame> {
        let Some(table) = self.table() else {
            return Ok(ctx.read_batch(RecordBatch::new_empty(spans_schema()))?);
        };
        // The scan takes its settings (string views or not) from the session.
        let mut versions = VersionScan::of(table).read(ctx)?;
        if let Some(upto) = upto {
            versions = versions.filter(col(XACT_ID).lt_eq(lit(upto)))?;
        }
        let changed = match after {
            Some(cursor) => col(XACT_ID).gt(lit(cursor)),
            None => lit(true),
        };

        let fold_ids = ids_to_fold(versions.clone().filter(changed.clone())?).await?;
        if fold_ids.is_empty() {
            // Only clean rows (and lone compacted tombstones) changed.
            return Ok(versions
                .filter(changed)?
                .filter(col(OP).eq(lit(VersionOp::NewReplace as i32)))?
                .select(logical_projection())?);
        }
        let in_fold_set = ScalarUDF::from(IdInSet::new(Arc::new(fold_ids)));
        let folded = self.fold(ctx, versions.clone(), &in_fold_set)?;
        let clean = versions
            .filter(changed)?
            .filter(col(OP).eq(lit(VersionOp::NewReplace as i32)))?
            .filter(not(in_fold_set.call(vec![col("id")])))?
            .select(logical_projection())?;
        Ok(clean.union(folded)?)
    }

    /// The resolved rows (spans view) of the ids that `in_fold_set` accepts:
    /// their `versions` sorted (spilling) and folded as a stream.
    pub(super) fn fold(
        &self,
        ctx: &SessionContext,
        versions: DataFrame,
        in_fold_set: &ScalarUDF,
    ) -> Result<DataFrame> {
        let to_fold = versions.filter(in_fold_set.call(vec![col("id")]))?;
        Ok(ctx.read_table(Arc::new(FoldTable {
            input: to_fold,
            project_id: self.project().id.clone(),
        }))?)
    }
}

async fn ids_to_fold(versions: DataFrame) -> Result<HashSet<String>> {
    let batches = versions
        .filter(needs_fold())?
        .select(vec![col("id")])?
        .distinct()?
        .collect()
        .await?;
    let mut ids = HashSet::new();
    for batch in &batches {
        let column = utf8(batch.column(0))?;
        ids.extend(
            column
                .as_string::<i32>()
                .iter()
                .flatten()
                .map(str::to_string),
        );
    }
    Ok(ids)
}

/// The column as `Utf8` (the Parquet reader may hand out string views).
pub(super) fn utf8(array: &ArrayRef) -> Result<ArrayRef> {
    if array.data_type() == &DataType::Utf8 {
        Ok(Arc::clone(array))
    } else {
        Ok(arrow::compute::cast(array, &DataType::Utf8)?)
    }
}

/// `id IN <ids>`, with the set held in memory (a literal `IN` list of every
/// id would cost a plan node per id).
pub(crate) fn id_in_set(ids: Arc<HashSet<String>>) -> Expr {
    ScalarUDF::from(IdInSet::new(ids)).call(vec![col("id")])
}

/// `id IN <set of ids to fold>`, with the set held in memory (a literal
/// `IN` list of every id would cost a plan node per id).
#[derive(Debug)]
pub(super) struct IdInSet {
    ids: Arc<HashSet<String>>,
    signature: Signature,
}

impl IdInSet {
    pub(super) fn new(ids: Arc<HashSet<String>>) -> Self {
        Self {
            ids,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl PartialEq for IdInSet {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.ids, &other.ids)
    }
}

impl Eq for IdInSet {}

impl std::hash::Hash for IdInSet {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        Arc::as_ptr(&self.ids).hash(state);
    }
}

impl ScalarUDFImpl for IdInSet {
    fn name(&self) -> &str {
        codec::ID_SET_FUNCTION
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, _args: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(
        &self,
        args: ScalarFunctionArgs,
    ) -> datafusion::error::Result<ColumnarValue> {
        let ids = args.args[0].to_array(args.number_rows)?;
        let ids = utf8(&ids).map_err(|e| DataFusionError::External(Box::new(e)))?;
        let result: BooleanArray = ids
            .as_string::<i32>()
            .iter()
            .map(|id| Some(id.is_some_and(|id| self.ids.contains(id))))
            .collect();
        Ok(ColumnarValue::Array(Arc::new(result)))
    }
}

/// The fold as a table: each scan plans its input afresh (a query may read
/// the view more than once: the summary shape joins spans with their
/// roots) under a [`FoldExec`].
#[derive(Debug)]
struct FoldTable {
    /// The versions of the ids to fold (unsorted: [`FoldExec`] asks for its
    /// order).
    input: DataFrame,
    project_id: String,
}

#[async_trait::async_trait]
impl TableProvider for FoldTable {
    fn schema(&self) -> SchemaRef {
        spans_schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let input = state
            .create_physical_plan(self.input.logical_plan())
            .await?;
        Ok(Arc::new(FoldExec::try_new(
            input,
            self.project_id.clone(),
            projection.cloned(),
        )?))
    }
}

/// Folds versions into resolved rows, partition by partition: it requires
/// its input hash-partitioned by `id` and sorted by `(id, _xact_id, _seq)`
/// within each partition, so the planner puts a repartition and a
/// (spilling) sort under it and every core folds its share of the ids, and
/// a distributed engine can shuffle by `id`. One batch out per batch in; a
/// run of one id may span batches, never partitions.
#[derive(Debug)]
struct FoldExec {
    input: Arc<dyn ExecutionPlan>,
    project_id: String,
    /// Output columns (indices into the spans schema); all when `None`.
    projection: Option<Vec<usize>>,
    properties: Arc<PlanProperties>,
}

impl FoldExec {
    fn try_new(
        input: Arc<dyn ExecutionPlan>,
        project_id: String,
        projection: Option<Vec<usize>>,
    ) -> datafusion::error::Result<Self> {
        let schema = datafusion::common::project_schema(&spans_schema(), projection.as_ref())?;
        let partitions = input.output_partitioning().partition_count();
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            datafusion::physical_plan::Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            input,
            project_id,
            projection,
            properties: Arc::new(properties),
        })
    }

    fn input_column(&self, name: &str) -> datafusion::error::Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(Column::new_with_schema(
            name,
            &self.input.schema(),
        )?))
    }
}

impl DisplayAs for FoldExec {
    fn fmt_as(
        &self,
        _format: DisplayFormatType,
        f: &mut std::fmt::Formatter<'_>,
    ) -> std::fmt::Result {
        write!(f, "FoldExec: project={}", self.project_id)
    }
}

impl ExecutionPlan for FoldExec {
    fn name(&self) -> &'static str {
        "FoldExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        // A column the input lacks is a bug; no requirement then fails the
        // fold loudly rather than folding an id in two partitions.
        let by_id = self
            .input_column("id")
            .map_or(Distribution::SinglePartition, |id| {
                Distribution::KeyPartitioned(vec![id])
            });
        InputDistributionRequirements::new(vec![by_id])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let ascending = SortOptions {
            descending: false,
            nulls_first: false,
        };
        let keys: datafusion::error::Result<Vec<_>> = ["id", XACT_ID, SEQ]
            .into_iter()
            .map(|name| {
                self.input_column(name)
                    .map(|column| PhysicalSortRequirement::new(column, Some(ascending)))
            })
            .collect();
        vec![
            keys.ok()
                .and_then(LexRequirement::new)
                .map(OrderingRequirements::new),
        ]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![false]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![true]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal(
                "FoldExec takes one input".to_string(),
            ));
        }
        Ok(Arc::new(Self::try_new(
            children.swap_remove(0),
            self.project_id.clone(),
            self.projection.clone(),
        )?))
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let versions = self.input.execute(partition, context)?;
        let state = FoldState {
            versions,
            pending: None,
            project_id: self.project_id.clone(),
            finished: false,
        };
        let projection = self.projection.clone();
        let folded = futures::stream::unfold(state, |mut state| async move {
            if state.finished {
                return None;
            }
            let out = match state.versions.next().await {
                Some(Ok(batch)) => state.fold_batch(&batch),
                Some(Err(e)) => {
                    state.finished = true;
                    Err(e)
                }
                None => {
                    state.finished = true;
                    state.flush()
                }
            };
            Some((out, state))
        })
        .map(move |batch| match &projection {
            Some(columns) => batch.and_then(|b| Ok(b.project(columns)?)),
            None => batch,
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            folded,
        )))
    }
}

/// The fold of one id in progress.
#[derive(Debug)]
struct Pending {
    id: String,
    /// `_pagination_key` of its first version.
    pagination_key: String,
    /// `_xact_id` of its latest version so far.
    xact: i64,
    state: Option<Map<String, Value>>,
}

/// The fold in progress over a sorted stream of versions.
struct FoldState {
    versions: SendableRecordBatchStream,
    pending: Option<Pending>,
    project_id: String,
    finished: bool,
}

impl FoldState {
    fn emit(&mut self, rows: &mut SpansBatchBuilder) -> datafusion::error::Result<()> {
        if let Some(Pending {
            pagination_key,
            xact,
            state: Some(row),
            ..
        }) = self.pending.take()
        {
            rows.push(&row, xact, &pagination_key, &self.project_id)
                .map_err(to_df)?;
        }
        Ok(())
    }

    fn fold_batch(&mut self, batch: &RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let mut decoded = Vec::with_capacity(batch.num_rows());
        decode_versions(batch, &mut decoded).map_err(to_df)?;
        let mut rows = SpansBatchBuilder::new(decoded.len());
        for version in decoded {
            match &mut self.pending {
                Some(pending) if pending.id == version.id => {
                    pending.xact = version.xact;
                    pending.state =
                        merge::apply_event(pending.state.take(), &version.op, version.fields);
                }
                _ => {
                    self.emit(&mut rows)?;
                    self.pending = Some(Pending {
                        pagination_key: version
                            .stored_key
                            .unwrap_or_else(|| pagination_key_text(version.xact, version.seq)),
                        xact: version.xact,
                        state: merge::apply_event(None, &version.op, version.fields),
                        id: version.id,
                    });
                }
            }
        }
        rows.finish().map_err(to_df)
    }

    fn flush(&mut self) -> datafusion::error::Result<RecordBatch> {
        let mut rows = SpansBatchBuilder::new(1);
        self.emit(&mut rows)?;
        rows.finish().map_err(to_df)
    }
}

fn to_df(error: Error) -> DataFusionError {
    DataFusionError::External(Box::new(error))
}

/// One stored version, decoded for the fold.
#[derive(Debug)]
struct Version {
    id: String,
    xact: i64,
    seq: i64,
    /// `_pagination_key` kept by compaction (see the module docs).
    stored_key: Option<String>,
    op: EventOp,
    fields: Map<String, Value>,
}

fn string_column<'a>(batch: &'a RecordBatch, name: &str) -> Result<&'a arrow::array::StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| Error::Internal(format!("stored batch lacks string column `{name}`")))
}

/// `batch` with string views and large strings cast to `Utf8`.
fn strings_as_utf8(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if matches!(field.data_type(), DataType::Utf8View | DataType::LargeUtf8) {
            fields.push(field.as_ref().clone().with_data_type(DataType::Utf8));
            columns.push(utf8(column)?);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    Ok(RecordBatch::try_new(
        Arc::new(arrow::datatypes::Schema::new(fields)),
        columns,
    )?)
}

fn decode_versions(batch: &RecordBatch, out: &mut Vec<Version>) -> Result<()> {
    let batch = &strings_as_utf8(batch)?;
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
        let stored_key = (op_code != VersionOp::Merge as i32 && merge_control.is_valid(row))
            .then(|| merge_control.value(row).to_string());
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
            stored_key,
            op,
            fields,
        });
    }
    Ok(())
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
    pagination_key: StringBuilder,
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
            pagination_key: StringBuilder::with_capacity(capacity, capacity * 29),
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

    fn push(
        &mut self,
        row: &Map<String, Value>,
        xact: i64,
        pagination_key: &str,
        project_id: &str,
    ) -> Result<()> {
        let text = |name: &str| row.get(name).and_then(Value::as_str);
        let id = text("id").ok_or_else(|| Error::Internal("resolved row without `id`".into()))?;
        self.id.append_value(id);
        self.xact.append_value(xact.to_string());
        self.pagination_key.append_value(pagination_key);
        self.created
            .append_option(row.get("created").and_then(Value::as_i64));
        self.org_id.append_option(text("org_id"));
        self.project_id
            .append_value(text("project_id").unwrap_or(project_id));
        self.log_id.append_value(PROJECT_LOGS_LOG_ID);
        // A row born from a merge for an unknown id has no span ids: it is a
        // span of its own, as ingest makes a replace without them.
        let span_id = text("span_id").unwrap_or(id);
        self.span_id.append_value(span_id);
        self.root_span_id
            .append_value(text("root_span_id").unwrap_or(span_id));
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
            Arc::new(self.pagination_key.finish()),
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

#[cfg(test)]
mod tests {
    use futures::TryStreamExt;

    use super::*;
    use crate::store::Store;
    use crate::store::ingest_test_lines;

    async fn rows(store: &Store) -> Vec<Value> {
        rows_after(store, None).await
    }

    async fn rows_after(store: &Store, after: Option<i64>) -> Vec<Value> {
        let project = store.registry().unwrap().resolve("p").unwrap();
        let ctx = crate::session::session(&crate::session::SessionOptions::default()).unwrap();
        let logs = store.logs(&project).await.unwrap();
        let view = logs.resolved_view_after(&ctx, after).await.unwrap();
        let batches: Vec<RecordBatch> = view
            .sort(vec![col("id").sort(true, false)])
            .unwrap()
            .execute_stream()
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        let mut out = Vec::new();
        for batch in &batches {
            let batch = strings_as_utf8(batch).unwrap();
            let ids = string_column(&batch, "id").unwrap();
            let input = string_column(&batch, "input").unwrap();
            let tags = string_column(&batch, "tags").unwrap();
            let is_root = batch.column_by_name("is_root").unwrap().as_boolean();
            for row in 0..batch.num_rows() {
                let json = |a: &arrow::array::StringArray| {
                    if a.is_valid(row) {
                        serde_json::from_str(a.value(row)).unwrap()
                    } else {
                        Value::Null
                    }
                };
                out.push(serde_json::json!({
                    "id": ids.value(row),
                    "input": json(input),
                    "tags": json(tags),
                    "is_root": is_root.value(row),
                }));
            }
        }
        out
    }

    /// `id` and `input` of every resolved row, sorted by id, with the fold's
    /// plan, in a session of `partitions` target partitions.
    async fn folded_in(store: &Store, partitions: usize) -> (Vec<(String, String)>, String) {
        let project = store.registry().unwrap().resolve("p").unwrap();
        let ctx = crate::session::session(&crate::session::SessionOptions {
            target_partitions: Some(partitions),
            ..crate::session::SessionOptions::default()
        })
        .unwrap();
        let view = store
            .logs(&project)
            .await
            .unwrap()
            .resolved_view(&ctx)
            .await
            .unwrap()
            .select(vec![col("id"), col("input")])
            .unwrap();
        let plan = view.clone().create_physical_plan().await.unwrap();
        let shown = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let batches: Vec<RecordBatch> = view.collect().await.unwrap();
        let mut rows = Vec::new();
        for batch in &batches {
            let batch = strings_as_utf8(batch).unwrap();
            let ids = string_column(&batch, "id").unwrap();
            let input = string_column(&batch, "input").unwrap();
            for row in 0..batch.num_rows() {
                rows.push((ids.value(row).to_string(), input.value(row).to_string()));
            }
        }
        rows.sort();
        (rows, shown)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_fold_runs_on_every_partition_by_id_with_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"id":"s{i:03}","created":"2026-01-01T00:00:00Z","input":"v0"}}"#))
            .collect();
        let second: Vec<String> = (0..500)
            .step_by(3)
            .map(|i| format!(r#"{{"id":"s{i:03}","_is_merge":true,"input":"v1-{i}"}}"#))
            .collect();
        let third: Vec<String> = (0..500)
            .step_by(7)
            .map(|i| format!(r#"{{"id":"s{i:03}","_is_merge":true,"input":"v2-{i}"}}"#))
            .collect();
        for commit in [&first, &second, &third] {
            let lines: Vec<&str> = commit.iter().map(String::as_str).collect();
            ingest_test_lines(&store, &lines).await;
        }
        let (one, _) = folded_in(&store, 1).await;
        let (four, plan) = folded_in(&store, 4).await;
        assert!(
            plan.contains("FoldExec") && plan.contains("RepartitionExec: partitioning=Hash([id@"),
            "the fold is not partitioned by id:\n{plan}"
        );
        assert!(plan.contains("SortExec"), "{plan}");
        assert_eq!(one.len(), 500);
        assert_eq!(one, four, "the partitioned fold gives other rows");
        let expected = |i: usize| {
            if i.is_multiple_of(7) {
                format!("\"v2-{i}\"")
            } else if i.is_multiple_of(3) {
                format!("\"v1-{i}\"")
            } else {
                "\"v0\"".to_string()
            }
        };
        for (i, (id, input)) in four.iter().enumerate() {
            assert_eq!(id, &format!("s{i:03}"));
            assert_eq!(input, &expected(i), "{id}");
        }
    }

    #[tokio::test]
    async fn clean_rows_need_no_fold_and_versions_fold_across_commits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","created":"2026-01-01T00:00:00Z","input":{"x":1,"y":2},"tags":["t1"]}"#,
                r#"{"id":"b","created":"2026-01-01T00:00:00Z","input":"hello","span_parents":["a"]}"#,
                r#"{"id":"c","created":"2026-01-01T00:00:00Z","input":"gone"}"#,
            ],
        )
        .await;
        assert_eq!(rows(&store).await.len(), 3);
        // The JSON functions of BTQL take `Utf8`: the view must not hand out string views.
        let project = store.registry().unwrap().resolve("p").unwrap();
        let ctx = crate::session::session(&crate::session::SessionOptions::default()).unwrap();
        let view = store
            .logs(&project)
            .await
            .unwrap()
            .resolved_view(&ctx)
            .await
            .unwrap();
        let input = view.schema().field_with_unqualified_name("input").unwrap();
        assert_eq!(input.data_type(), &DataType::Utf8);
        ingest_test_lines(
            &store,
            &[
                r#"{"id":"a","_is_merge":true,"input":{"y":3},"tags":["t2","t1"]}"#,
                r#"{"id":"c","_object_delete":true}"#,
                r#"{"id":"d","_is_merge":true,"input":"merged into nothing"}"#,
                r#"{"id":"b","input":"replaced"}"#,
                r#"{"id":"b","_is_merge":true,"input":"then merged"}"#,
            ],
        )
        .await;
        assert_eq!(
            rows(&store).await,
            vec![
                serde_json::json!({"id":"a","input":{"x":1,"y":3},"tags":["t1","t2"],"is_root":true}),
                serde_json::json!({"id":"b","input":"then merged","tags":null,"is_root":true}),
                serde_json::json!({"id":"d","input":"merged into nothing","tags":null,"is_root":true}),
            ]
        );
        // Since the first commit: the rows whose latest version is in the
        // second (`c` was deleted there, so it is gone, not "changed").
        let first = crate::store::schema::xact_id_for_version(1);
        let ids: Vec<Value> = rows_after(&store, Some(first))
            .await
            .into_iter()
            .map(|row| row["id"].clone())
            .collect();
        assert_eq!(ids, vec!["a", "b", "d"]);
        let second = crate::store::schema::xact_id_for_version(2);
        assert!(rows_after(&store, Some(second)).await.is_empty());
    }
}

/// The plan nodes and functions of the view, as bytes for a plan codec (a
/// plan that reads the view can then run on another process): the fold
/// and the set of ids it folds.
pub mod codec {
    use std::collections::HashSet;
    use std::sync::Arc;

    use datafusion::error::{DataFusionError, Result};
    use datafusion::logical_expr::ScalarUDF;
    use datafusion::physical_plan::ExecutionPlan;
    use serde::{Deserialize, Serialize};

    use super::{FoldExec, IdInSet};

    #[derive(Serialize, Deserialize)]
    struct Fold {
        project_id: String,
        projection: Option<Vec<usize>>,
    }

    /// The bytes of `plan` when it is the fold.
    pub fn encode_plan(plan: &dyn ExecutionPlan) -> Option<Vec<u8>> {
        let fold = plan.downcast_ref::<FoldExec>()?;
        let fold = Fold {
            project_id: fold.project_id.clone(),
            projection: fold.projection.clone(),
        };
        Some(serde_json::to_vec(&fold).expect("the fold serialises"))
    }

    /// The fold [`encode_plan`] wrote, over `input`.
    pub fn decode_plan(
        bytes: &[u8],
        input: Arc<dyn ExecutionPlan>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let fold: Fold = serde_json::from_slice(bytes)
            .map_err(|e| DataFusionError::Internal(format!("the fold does not decode: {e}")))?;
        Ok(Arc::new(FoldExec::try_new(
            input,
            fold.project_id,
            fold.projection,
        )?))
    }

    /// The bytes of `udf` when it is the set of ids to fold (every id of
    /// the set: it grows with the ids that compaction has not folded yet).
    pub fn encode_udf(udf: &ScalarUDF) -> Option<Vec<u8>> {
        let set = udf.inner().downcast_ref::<IdInSet>()?;
        let mut ids: Vec<&String> = set.ids.iter().collect();
        ids.sort();
        Some(serde_json::to_vec(&ids).expect("ids serialise"))
    }

    /// The set [`encode_udf`] wrote.
    pub fn decode_udf(bytes: &[u8]) -> Result<Arc<ScalarUDF>> {
        let ids: HashSet<String> = serde_json::from_slice(bytes).map_err(|e| {
            DataFusionError::Internal(format!("the ids to fold do not decode: {e}"))
        })?;
        Ok(Arc::new(ScalarUDF::from(IdInSet::new(Arc::new(ids)))))
    }

    /// The name of the set's function.
    pub const ID_SET_FUNCTION: &str = "spanlake_id_in_fold_set";
}
