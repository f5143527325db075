//! Running BTQL queries over the log store.
//!
//! ```text
//!  text ─► dsl::parse_query ─► sources (project ids or names) ─► snapshot + resolved view per project
//!       ─► dsl::plan_query (against those views) ─► DataFusion ─► SendableRecordBatchStream
//! ```
//!
//! Results are streamed: nothing here collects a result. Memory for sorts and
//! other blocking operators is bounded by [`QueryOptions::memory_limit_bytes`]
//! (they spill to disk beyond it).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::datasource::{ViewTable, provider_as_source};
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::TableSource;
use datafusion::physical_plan::SendableRecordBatchStream;
use datafusion::prelude::{SessionConfig, SessionContext};
use spanlake_dsl::{Catalog, OutputColumn, PlanOptions};

use crate::error::{Error, Result};
use crate::store::Store;

/// Options of a query run.
#[derive(Debug, Clone)]
pub struct QueryOptions {
    /// Time zone offset for time bucketing, in minutes (JavaScript sign: 480 = UTC−8).
    pub tz_offset_minutes: i32,
    /// Memory for sorts, aggregations and joins before they spill to disk.
    pub memory_limit_bytes: usize,
    /// Rows per record batch.
    pub batch_rows: usize,
    /// The time `now()` means (taken once per query).
    pub now: chrono::DateTime<chrono::Utc>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        Self {
            tz_offset_minutes: 0,
            memory_limit_bytes: 512 * 1024 * 1024,
            batch_rows: 8192,
            now: chrono::Utc::now(),
        }
    }
}

/// A running query: its output columns and the stream of its rows.
pub struct QueryStream {
    /// Output columns in order, with whether each holds JSON text.
    pub columns: Vec<OutputColumn>,
    /// The rows, streamed.
    pub stream: SendableRecordBatchStream,
}

impl std::fmt::Debug for QueryStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryStream")
            .field("columns", &self.columns)
            .finish_non_exhaustive()
    }
}

/// A session configured for spanlake queries.
pub fn session(options: &QueryOptions) -> Result<SessionContext> {
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit_bytes)))
        .build_arc()?;
    let mut config = SessionConfig::new()
        .with_batch_size(options.batch_rows)
        .with_information_schema(false);
    // Read strings as `Utf8`, not views: the JSON functions of BTQL take
    // `Utf8` and would otherwise copy every JSON column they touch.
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    Ok(SessionContext::new_with_config_rt(config, runtime))
}

/// The sources a query may read, prepared before planning (planning is
/// synchronous; opening tables and resolving views is not).
#[derive(Default)]
struct PreparedCatalog {
    views: HashMap<Vec<String>, std::result::Result<Arc<dyn TableSource>, String>>,
    /// The source of every `project_logs(...)`, whatever its arguments.
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
    fn project_logs(&self, args: &[String]) -> std::result::Result<Arc<dyn TableSource>, String> {
        if let Some(every) = &self.every {
            return Ok(Arc::clone(every));
        }
        self.views.get(args).cloned().unwrap_or_else(|| {
            Err(format!(
                "source `project_logs` with arguments {args:?} was not prepared"
            ))
        })
    }
}

/// Parse, plan and start `text` against `store`.
pub async fn run_query(store: &Store, text: &str, options: &QueryOptions) -> Result<QueryStream> {
    let query = spanlake_dsl::parse_query(text)?;
    let ctx = session(options)?;
    let mut catalog = PreparedCatalog::default();
    if let Some(source) = query.source() {
        if source.function.eq_ignore_ascii_case("project_logs") && !source.args.is_empty() {
            let view = prepare_view(store, &ctx, &source.args).await?;
            catalog.views.insert(source.args.clone(), view);
        }
    }
    let plan_options = PlanOptions {
        tz_offset_minutes: options.tz_offset_minutes,
        now: options.now,
    };
    let compiled = spanlake_dsl::plan_query(&query, &catalog, &plan_options)?;
    let stream = ctx
        .execute_logical_plan(compiled.plan)
        .await?
        .execute_stream()
        .await?;
    Ok(QueryStream {
        columns: compiled.columns,
        stream,
    })
}

/// Plan and start `text` in `ctx` with every `project_logs(...)` source
/// reading `view` (for example the rows an export run covers).
pub async fn run_query_over_view(
    ctx: &SessionContext,
    text: &str,
    view: datafusion::dataframe::DataFrame,
    options: &QueryOptions,
) -> Result<QueryStream> {
    let query = spanlake_dsl::parse_query(text)?;
    let catalog = PreparedCatalog {
        every: Some(view_source(view)),
        ..PreparedCatalog::default()
    };
    let plan_options = PlanOptions {
        tz_offset_minutes: options.tz_offset_minutes,
        now: options.now,
    };
    let compiled = spanlake_dsl::plan_query(&query, &catalog, &plan_options)?;
    let stream = ctx
        .execute_logical_plan(compiled.plan)
        .await?
        .execute_stream()
        .await?;
    Ok(QueryStream {
        columns: compiled.columns,
        stream,
    })
}

fn view_source(view: datafusion::dataframe::DataFrame) -> Arc<dyn TableSource> {
    let table = ViewTable::new(view.into_unoptimized_plan(), None);
    provider_as_source(Arc::new(table))
}

/// The resolved view over the projects named by `args` (ids or names); an
/// unknown project is reported as a planning error at the source.
async fn prepare_view(
    store: &Store,
    ctx: &SessionContext,
    args: &[String],
) -> Result<std::result::Result<Arc<dyn TableSource>, String>> {
    let mut projects = Vec::with_capacity(args.len());
    for arg in args {
        let resolved = store.registry().resolve(arg);
        match resolved {
            Ok(project) => projects.push(project),
            Err(Error::UnknownProject(name)) => {
                let known: Vec<String> = store
                    .registry()
                    .list()?
                    .into_iter()
                    .map(|p| format!("`{}`", p.name))
                    .collect();
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
        let logs = store.logs(project).await?;
        let frame = logs.resolved_view(ctx).await?;
        view = Some(match view {
            None => frame,
            Some(previous) => previous.union(frame)?,
        });
    }
    let view = view.ok_or_else(|| Error::Internal("no project in source".into()))?;
    Ok(Ok(view_source(view)))
}
