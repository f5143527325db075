//! Running BTQL queries over the log store.
//!
//! ```text
//!  text ─► dsl::parse_any (BTQL, SQL or JSON AST) ─► sources (project ids or names) ─► snapshot + resolved view per project
//!       ─► dsl::plan_query (against those views) ─► DataFusion ─► SendableRecordBatchStream
//! ```
//!
//! Results are streamed: nothing here collects a result. Memory for sorts and
//! other blocking operators is bounded by [`QueryOptions::memory_limit_bytes`]
//! (they spill to disk beyond it), a pivot's included (see [`crate::query::pivot`]).

mod cursor;
pub mod pivot;
pub mod rows;

pub use cursor::Paging;
use cursor::{CursorState, paging_of, query_fingerprint};

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::execution::memory_pool::MemoryPool;
use datafusion::logical_expr::TableSource;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use spanlake_dsl::{Catalog, ObjectType, OutputColumn, PlanOptions};

use crate::error::{Error, Result};
use crate::session::SessionOptions;
use crate::store::Store;

/// Options of a query run.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Time zone offset for time bucketing, in minutes (JavaScript sign: 480 = UTC−8).
    pub tz_offset_minutes: i32,
    /// Memory for sorts, aggregations and joins before they spill to disk.
    pub memory_limit_bytes: usize,
    /// The pool the query's memory is accounted in, when the caller
    /// accounts more in it (the server, the page it encodes); otherwise a
    /// pool of `memory_limit_bytes` of its own.
    pub memory_pool: Option<Arc<dyn MemoryPool>>,
    /// Rows per record batch.
    pub batch_rows: usize,
    /// The time `now()` means (taken once per query); unset, the store's
    /// clock when the query starts.
    pub now: Option<chrono::DateTime<chrono::Utc>>,
    /// Read one page of the result (see [`Paging`]).
    pub page: Option<Paging>,
    /// Resolve project names and ids only within this org (the org of an
    /// API key); `None` (the CLI) sees every org.
    pub org_id: Option<String>,
    /// Plan for a cluster (see [`crate::session::SessionOptions::distributed`]).
    pub distributed: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        let session = SessionOptions::default();
        Self {
            tz_offset_minutes: 0,
            memory_limit_bytes: session.memory_limit_bytes,
            memory_pool: None,
            batch_rows: session.batch_rows,
            now: None,
            page: None,
            org_id: None,
            distributed: false,
        }
    }
}

/// A running query: its output columns and the stream of its rows.
pub struct QueryStream {
    /// Output columns in order, with whether each holds JSON text.
    pub columns: Vec<OutputColumn>,
    /// The rows, streamed.
    pub stream: SendableRecordBatchStream,
    /// With paging: the page size, and the cursor of the next page. The
    /// stream then yields up to `size + 1` rows: a row past `size` means
    /// there is a next page (show `size` rows and the cursor); otherwise
    /// this is the last page.
    pub page: Option<(u64, String)>,
}

/// A running query whose rows come in several streams, each to be read by
/// a task of its own (an export's sink per partition): rows are split
/// between the streams in no particular order, so only a result without an
/// order (no `sort:`) is split.
pub struct QueryParts {
    /// Output columns in order, with whether each holds JSON text.
    pub columns: Vec<OutputColumn>,
    /// The rows, streamed: at least one stream.
    pub streams: Vec<SendableRecordBatchStream>,
}

/// A planned query whose rows have not started (a pivot's have: it reads
/// its keys first); run it here ([`PlannedQuery::run_here`]) or hand
/// its physical plan to a cluster ([`PlannedQuery::physical_plan`]).
pub struct PlannedQuery {
    /// Output columns in order, with whether each holds JSON text.
    pub columns: Vec<OutputColumn>,
    rows: PlannedRows,
    /// With paging: the page size, and the cursor of the next page (see
    /// [`QueryStream::page`]).
    pub page: Option<(u64, String)>,
}

enum PlannedRows {
    Plan(datafusion::dataframe::DataFrame),
    Started(SendableRecordBatchStream),
}

impl std::fmt::Debug for PlannedQuery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlannedQuery")
            .field("columns", &self.columns)
            .field("started", &matches!(self.rows, PlannedRows::Started(_)))
            .finish_non_exhaustive()
    }
}

impl PlannedQuery {
    /// Start it here, its rows in as many streams as its session has
    /// target partitions when `split` and it has no order and no page (see
    /// [`QueryParts`]), else in one.
    pub async fn run_here(self, split: bool) -> Result<QueryParts> {
        let streams = match self.rows {
            PlannedRows::Started(stream) => vec![stream],
            PlannedRows::Plan(frame) => {
                let partitions = if self.page.is_some() || !split {
                    1
                } else {
                    frame.task_ctx().session_config().target_partitions()
                };
                execute_in(frame, partitions).await.map_err(refused_plan)?
            }
        };
        Ok(QueryParts {
            columns: self.columns,
            streams,
        })
    }

    /// Its physical plan and the settings of the session that built it,
    /// for a cluster; a pivot is refused (it reads its keys before its
    /// rows, here).
    pub async fn physical_plan(
        self,
    ) -> Result<(
        std::sync::Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        datafusion::prelude::SessionConfig,
    )> {
        match self.rows {
            PlannedRows::Plan(frame) => {
                let config = frame.task_ctx().session_config().clone();
                let plan = frame
                    .create_physical_plan()
                    .await
                    .map_err(|e| refused_plan(e.into()))?;
                Ok((plan, config))
            }
            PlannedRows::Started(_) => Err(Error::InvalidArgument(
                "a pivoted query runs on the local engine only; run it without `--engine`, or export its rows unpivoted".to_string(),
            )),
        }
    }
}

impl std::fmt::Debug for QueryParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryParts")
            .field("columns", &self.columns)
            .field("streams", &self.streams.len())
            .finish()
    }
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// The DataFusion session of a query under `options` (see
/// [`crate::session::session`]).
pub fn session(options: &QueryOptions) -> Result<SessionContext> {
    crate::session::session(&SessionOptions {
        memory_limit_bytes: options.memory_limit_bytes,
        memory_pool: options.memory_pool.clone(),
        batch_rows: options.batch_rows,
        target_partitions: None,
        distributed: options.distributed,
    })
}

/// A source of a query: its object type and arguments.
type SourceKey = (ObjectType, Vec<String>);

/// The sources a query may read, prepared before planning (planning is
/// synchronous; opening tables and resolving views is not).
#[derive(Default)]
struct PreparedCatalog {
    views: HashMap<SourceKey, std::result::Result<Arc<dyn TableSource>, String>>,
    /// The source of every `project_logs(...)`, `experiment(...)` or
    /// `dataset(...)`, whatever its arguments.
    every: Option<Arc<dyn TableSource>>,
}

impl std::fmt::Debug for PreparedCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedCatalog")
            .field("sources", &self.views.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Catalog for PreparedCatalog {
    fn source(
        &self,
        object_type: ObjectType,
        args: &[String],
    ) -> std::result::Result<Arc<dyn TableSource>, String> {
        if let Some(every) = &self.every {
            return Ok(Arc::clone(every));
        }
        self.views
            .get(&(object_type, args.to_vec()))
            .cloned()
            .unwrap_or_else(|| {
                Err(format!(
                    "source `{object_type}` with arguments {args:?} was not prepared"
                ))
            })
    }
}

/// Parse, plan and start `text` against `store`.
pub async fn run_query(store: &Store, text: &str, options: &QueryOptions) -> Result<QueryStream> {
    let query = spanlake_dsl::parse_any(text)?;
    run_parsed_query(store, query, options).await
}

/// Plan and start an already parsed `query` against `store`.
pub async fn run_parsed_query(
    store: &Store,
    query: spanlake_dsl::ast::Query,
    options: &QueryOptions,
) -> Result<QueryStream> {
    let planned = plan_parsed(store, query, options).await?;
    let page = planned.page.clone();
    let mut parts = planned.run_here(false).await?;
    let stream = parts
        .streams
        .pop()
        .ok_or_else(|| Error::Internal("a query without a stream".into()))?;
    Ok(QueryStream {
        columns: parts.columns,
        stream,
        page,
    })
}

/// Plan and start `text` against `store` with its rows in as many streams
/// as its session has target partitions (see [`QueryParts`]; a paged query,
/// a pivot or a sorted result is one stream).
pub async fn run_query_in_parts(
    store: &Store,
    text: &str,
    options: &QueryOptions,
) -> Result<QueryParts> {
    plan_query(store, text, options).await?.run_here(true).await
}

/// Parse and plan `text` against `store`, without starting it.
pub async fn plan_query(store: &Store, text: &str, options: &QueryOptions) -> Result<PlannedQuery> {
    let query = spanlake_dsl::parse_any(text)?;
    plan_parsed(store, query, options).await
}

async fn plan_parsed(
    store: &Store,
    mut query: spanlake_dsl::ast::Query,
    options: &QueryOptions,
) -> Result<PlannedQuery> {
    let ctx = session(options)?;
    let paging = paging_of(&mut query, options.page.as_ref())?;
    let fingerprint = query_fingerprint(
        &query,
        paging.as_ref().map_or(0, |(size, _)| *size),
        options.tz_offset_minutes,
    );
    let resumed = match paging.as_ref().and_then(|(_, cursor)| cursor.as_deref()) {
        Some(token) => {
            let state = CursorState::decode(token)?;
            if state.q != fingerprint {
                return Err(Error::InvalidArgument(
                    "this cursor belongs to another query (or another --tz-offset); run the same query with it".to_string(),
                ));
            }
            Some(state)
        }
        None => None,
    };
    let mut catalog = PreparedCatalog::default();
    let mut snapshot = std::collections::BTreeMap::new();
    if let Some(source) = query.source()
        && let Some(object_type) = ObjectType::parse(&source.function)
        && !source.args.is_empty()
    {
        let pinned = resumed.as_ref().map(|state| &state.s);
        let view = prepare_view(
            store,
            &ctx,
            object_type,
            &source.args,
            options.org_id.as_deref(),
            pinned,
            &mut snapshot,
        )
        .await?;
        catalog
            .views
            .insert((object_type, source.args.clone()), view);
    }
    let plan_options = PlanOptions {
        tz_offset_minutes: options.tz_offset_minutes,
        now: options.now.unwrap_or_else(|| store.clock().now()),
    };
    let compiled = spanlake_dsl::plan_query(&query, &catalog, &plan_options)?;
    if let Some(spec) = &compiled.pivot {
        if paging.is_some() {
            return Err(Error::InvalidArgument(
                "pivoted results are not paged; run the query without a cursor or page size, with a `limit:`".into(),
            ));
        }
        let pivoted =
            crate::query::pivot::pivot_stream(&ctx, compiled.plan, compiled.columns, spec)
                .await
                .map_err(refused_plan)?;
        return Ok(PlannedQuery {
            columns: pivoted.columns,
            rows: PlannedRows::Started(pivoted.stream),
            page: None,
        });
    }
    let mut frame = ctx
        .execute_logical_plan(compiled.plan)
        .await
        .map_err(|e| refused_plan(e.into()))?;
    let mut page = None;
    if let Some((size, _)) = paging {
        let offset = resumed.as_ref().map_or(0, |state| state.o);
        frame = in_total_order(frame)?.limit(
            usize::try_from(offset).unwrap_or(usize::MAX),
            Some(usize::try_from(size + 1).unwrap_or(usize::MAX)),
        )?;
        let next = CursorState {
            v: 1,
            q: fingerprint,
            s: resumed.map_or(snapshot, |state| state.s),
            o: offset + size,
        };
        page = Some((size, next.encode()));
    }
    Ok(PlannedQuery {
        columns: compiled.columns,
        rows: PlannedRows::Plan(frame),
        page,
    })
}

/// `frame`'s rows in `partitions` streams (one, for a result with an order
/// or when asked for one): the plan's batches dealt round-robin, so that the
/// readers of the streams share the work evenly, whatever the partitions of
/// the plan.
async fn execute_in(
    frame: datafusion::dataframe::DataFrame,
    partitions: usize,
) -> Result<Vec<SendableRecordBatchStream>> {
    use datafusion::physical_plan::{ExecutionPlan, ExecutionPlanProperties, Partitioning};
    if partitions <= 1 {
        return Ok(vec![frame.execute_stream().await?]);
    }
    let task = Arc::new(frame.task_ctx());
    let plan = frame.create_physical_plan().await?;
    if plan.output_ordering().is_some() {
        return Ok(vec![datafusion::physical_plan::execute_stream(plan, task)?]);
    }
    // Always dealt round-robin, even when the plan has that many partitions
    // already: those are often uneven (a union of the fold's partitions
    // and the clean rows' scan partitions, some of them empty).
    let plan: Arc<dyn ExecutionPlan> = Arc::new(
        datafusion::physical_plan::repartition::RepartitionExec::try_new(
            plan,
            Partitioning::RoundRobinBatch(partitions),
        )?,
    );
    Ok(datafusion::physical_plan::execute_stream_partitioned(
        plan, task,
    )?)
}

/// A query DataFusion refuses to plan (operand types it cannot coerce that
/// the dsl's own checks let through) is the query's mistake, not the
/// server's: an [`Error::InvalidArgument`] with DataFusion's reason (a 400
/// over HTTP, exit code 2 in the CLI) rather than an internal error.
fn refused_plan(error: Error) -> Error {
    use datafusion::error::DataFusionError;
    let reason = match &error {
        Error::DataFusion(e) => match e.find_root() {
            DataFusionError::Plan(reason) => reason.clone(),
            DataFusionError::SchemaError(reason, _) => reason.to_string(),
            _ => return error,
        },
        _ => return error,
    };
    Error::InvalidArgument(format!(
        "the query cannot be planned: {reason}; check the types of the values it combines, and convert with to_number, to_string or to_datetime"
    ))
}

/// `frame` with a total order, so that pages of one snapshot never overlap
/// or skip: every sort gets the columns of its input as tie-breakers
/// (`_pagination_key` alone where the input has it), and an unsorted result
/// is sorted by `_pagination_key`, or by all its columns.
fn in_total_order(
    frame: datafusion::dataframe::DataFrame,
) -> Result<datafusion::dataframe::DataFrame> {
    use datafusion::common::tree_node::{Transformed, TreeNode};
    use datafusion::logical_expr::{LogicalPlan, SortExpr};

    fn tie_breakers(schema: &datafusion::common::DFSchema) -> Vec<SortExpr> {
        let key = crate::store::resolve::PAGINATION_KEY;
        if let Ok(column) = schema.qualified_field_with_unqualified_name(key) {
            return vec![datafusion::logical_expr::Expr::Column(column.into()).sort(true, false)];
        }
        schema
            .columns()
            .into_iter()
            .map(|c| datafusion::logical_expr::Expr::Column(c).sort(true, false))
            .collect()
    }

    let (state, plan) = frame.into_parts();
    let mut sorted = false;
    let plan = plan
        .transform_down(|node| {
            if let LogicalPlan::Sort(mut sort) = node {
                sorted = true;
                let extra = tie_breakers(sort.input.schema());
                sort.expr.extend(extra);
                return Ok(Transformed::yes(LogicalPlan::Sort(sort)));
            }
            Ok(Transformed::no(node))
        })?
        .data;
    let frame = datafusion::dataframe::DataFrame::new(state, plan);
    if sorted {
        return Ok(frame);
    }
    let order = tie_breakers(frame.schema());
    Ok(frame.sort(order)?)
}

/// Plan `text` in `ctx` with every `project_logs(...)` source reading
/// `view` (for example the rows an export run covers); `now()` is
/// `options.now`, else `clock`'s time.
pub async fn plan_query_over_view(
    ctx: &SessionContext,
    text: &str,
    view: datafusion::dataframe::DataFrame,
    options: &QueryOptions,
    clock: &crate::clock::Clock,
) -> Result<PlannedQuery> {
    let query = spanlake_dsl::parse_any(text)?;
    let catalog = PreparedCatalog {
        every: Some(view_source(view)),
        ..PreparedCatalog::default()
    };
    let plan_options = PlanOptions {
        tz_offset_minutes: options.tz_offset_minutes,
        now: options.now.unwrap_or_else(|| clock.now()),
    };
    let compiled = spanlake_dsl::plan_query(&query, &catalog, &plan_options)?;
    if let Some(spec) = &compiled.pivot {
        let pivoted =
            crate::query::pivot::pivot_stream(ctx, compiled.plan, compiled.columns, spec).await?;
        return Ok(PlannedQuery {
            columns: pivoted.columns,
            rows: PlannedRows::Started(pivoted.stream),
            page: None,
        });
    }
    let frame = ctx.execute_logical_plan(compiled.plan).await?;
    Ok(PlannedQuery {
        columns: compiled.columns,
        rows: PlannedRows::Plan(frame),
        page: None,
    })
}

fn view_source(view: datafusion::dataframe::DataFrame) -> Arc<dyn TableSource> {
    let table = ViewTable::new(view.into_unoptimized_plan(), None);
    provider_as_source(Arc::new(table))
}

/// The resolved view over the tables named by `args`: projects' logs (ids
/// or names), experiments or datasets (ids); an unknown one is reported as
/// a planning error at the source.
async fn prepare_view(
    store: &Store,
    ctx: &SessionContext,
    object_type: ObjectType,
    args: &[String],
    org_id: Option<&str>,
    pinned: Option<&std::collections::BTreeMap<String, Option<i64>>>,
    snapshot: &mut std::collections::BTreeMap<String, Option<i64>>,
) -> Result<std::result::Result<Arc<dyn TableSource>, String>> {
    let mut projects = Vec::with_capacity(args.len());
    for arg in args {
        let resolved = store.with_registry(|r| r.source_table(object_type, arg, org_id));
        match resolved {
            Ok(project) => projects.push(project),
            Err(e @ Error::UnknownObject { .. }) => {
                return Ok(Err(format!(
                    "{e}; list them with `spanlake {object_type} list -p PROJECT` (or GET /v1/{object_type}?project_id=)"
                )));
            }
            Err(Error::UnknownProject(name)) => {
                let known = store.with_registry(|r| match org_id {
                    Some(org) => r.list_in_org(org),
                    None => r.list(),
                })?;
                let known: Vec<String> =
                    known.into_iter().map(|p| format!("`{}`", p.name)).collect();
                let hint = if known.is_empty() {
                    "no project exists yet: create one with `spanlake project create NAME` or ingest into one".to_string()
                } else {
                    format!("known projects: {}", known.join(", "))
                };
                return Ok(Err(format!("unknown project `{name}`; {hint}")));
            }
            Err(e) => return Err(e),
        }
    }
    let mut view: Option<datafusion::dataframe::DataFrame> = None;
    for project in &projects {
        let version = match pinned {
            Some(pinned) => *pinned.get(project.table_id()).ok_or_else(|| {
                Error::InvalidArgument(
                    "this cursor belongs to another query; run the same query with it".to_string(),
                )
            })?,
            None => None,
        };
        let logs = match (pinned, version) {
            // The project had no data when the first page was read.
            (Some(_), None) => crate::store::ProjectLogs::empty(project),
            _ => store.logs_at(project, version).await?,
        };
        snapshot.insert(project.table_id().to_string(), logs.version());
        let frame = logs.resolved_view(ctx).await?;
        view = Some(match view {
            None => frame,
            Some(previous) => previous.union(frame)?,
        });
    }
    let view = view.ok_or_else(|| Error::Internal("no project in source".into()))?;
    Ok(Ok(view_source(view)))
}
