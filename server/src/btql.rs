//! `POST /btql` and `GET|POST /v1/{project_logs,experiment,dataset}/{id}/fetch`.
//!
//! The query is text (pipe BTQL or SQL, detected) or the JSON AST the SDK
//! sends. `limit` is the page size (default `default_page_rows`, at most
//! `max_page_rows`; on `traces` it counts traces, as in the CLI); when more
//! rows follow, the answer carries a `cursor` (also in the `x-bt-cursor`
//! header) that reads the next page of the same snapshot: post the same
//! query with it (in the text, `cursor: '<tok>'` or SQL `OFFSET '<tok>'`,
//! as `query.cursor` in the AST form, or a top-level `cursor`). Paging is
//! the engine's ([`Paging`]), the same as the CLI's. Memory is bounded by
//! the page, not the result.
//!
//! Bounds per query: its memory (the engine's sorts and aggregations, a
//! pivot's, and the page being encoded) is accounted in one memory pool of
//! `query_memory_bytes` (413 `query_memory_limit` beyond it); it runs at
//! most `query_timeout` (then it is cancelled: 504 `query_timeout`); and an
//! API key runs at most `max_queries_per_key` queries at once (429 with
//! `Retry-After` beyond it, see [`QuerySlot`]). The summaries of
//! `/v1/{experiment,dataset}/{id}/summarize` run under the same bounds
//! ([`bounded_query`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Schema};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use datafusion::execution::memory_pool::{
    FairSpillPool, MemoryConsumer, MemoryPool, MemoryReservation,
};
use futures::StreamExt;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use spanlake_engine::Error;
use spanlake_engine::query::rows::write_row_object;
use spanlake_engine::query::{Paging, QueryOptions, QueryStream, run_parsed_query};
use spanlake_engine::registry::objects::ObjectType;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// How long a client refused for too many queries at once is told to wait.
const QUERY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Queries running, per API key (by the SHA-256 of the key).
#[derive(Debug)]
pub(crate) struct QueryGate {
    max_per_key: usize,
    running: Mutex<HashMap<[u8; 32], usize>>,
}

impl QueryGate {
    pub(crate) fn new(max_per_key: usize) -> Self {
        Self {
            max_per_key: max_per_key.max(1),
            running: Mutex::new(HashMap::new()),
        }
    }

    fn enter(self: &Arc<Self>, key: [u8; 32]) -> Result<QuerySlot, ApiError> {
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = running.entry(key).or_insert(0);
        if *count >= self.max_per_key {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_queries",
                format!(
                    "this API key already runs {count} queries, the most it may run at once (`--max-queries-per-key {}`); retry when one has answered",
                    self.max_per_key
                ),
            )
            .retry_after(QUERY_RETRY_AFTER));
        }
        *count += 1;
        Ok(QuerySlot {
            gate: Arc::clone(self),
            key,
        })
    }
}

/// One of the queries an API key may run at once, held from the request's
/// head to its answer (taken before the body is read). The handler's
/// `Auth` comes first, so the key is valid.
#[derive(Debug)]
pub(crate) struct QuerySlot {
    gate: Arc<QueryGate>,
    key: [u8; 32],
}

impl Drop for QuerySlot {
    fn drop(&mut self) {
        let mut running = self
            .gate
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.key);
            }
        }
    }
}

impl FromRequestParts<Arc<AppState>> for QuerySlot {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let key = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        let key = key
            .strip_prefix(b"Bearer ")
            .or_else(|| key.strip_prefix(b"bearer "))
            .unwrap_or(key);
        state.queries.enter(Sha256::digest(key).into())
    }
}

/// The answer to a query that failed: running out of its memory pool is
/// the request's doing (413), anything else maps as usual.
fn query_failure(state: &AppState, error: Error) -> ApiError {
    let exhausted = match &error {
        Error::DataFusion(e) => matches!(
            e.find_root(),
            datafusion::error::DataFusionError::ResourcesExhausted(_)
        ),
        _ => false,
    };
    if exhausted {
        return memory_limit(state);
    }
    error.into()
}

fn memory_limit(state: &AppState) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "query_memory_limit",
        format!(
            "the query needs more memory than its limit of {} MiB (`--query-memory`); filter the rows, read fewer columns, add a smaller `limit`, or pivot on fewer keys",
            state.config.query_memory_bytes / (1024 * 1024)
        ),
    )
}

#[derive(Debug, Deserialize)]
pub(crate) struct BtqlBody {
    query: Option<serde_json::Value>,
    #[serde(default)]
    fmt: Option<String>,
    #[serde(default)]
    tz_offset: Option<i32>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fmt {
    Json,
    Jsonl,
    Parquet,
}

/// A page of rows, encoded.
struct Page {
    body: Vec<u8>,
    cursor: Option<String>,
}

/// `POST /btql`.
pub(crate) async fn btql(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    _slot: QuerySlot,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let body: BtqlBody = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "expected {{\"query\": ..., \"fmt\": \"json\"}} (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })?;
    let fmt = match body.fmt.as_deref() {
        None | Some("json") => Fmt::Json,
        Some("jsonl") => Fmt::Jsonl,
        Some("parquet") => Fmt::Parquet,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unknown `fmt` `{other}`; use json, jsonl or parquet"
            )));
        }
    };
    let (text, mut cursor) = match body.query {
        Some(serde_json::Value::String(text)) => (text, None),
        Some(serde_json::Value::Object(mut ast)) => {
            let cursor = match ast.remove("cursor") {
                Some(serde_json::Value::String(c)) => Some(c),
                _ => None,
            };
            (serde_json::Value::Object(ast).to_string(), cursor)
        }
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`query` must be a string (BTQL or SQL) or a JSON AST object, not {other}"
            )));
        }
        None => return Err(ApiError::bad_request("missing `query`")),
    };
    if cursor.is_none() {
        cursor = body.cursor;
    }
    let started = Instant::now();
    let page = run_page(
        &state,
        &org.id,
        &text,
        cursor,
        body.tz_offset.unwrap_or(0),
        fmt,
    )
    .await;
    state
        .metrics
        .org(&org.id)
        .query_seconds
        .observe(started.elapsed().as_secs_f64());
    let (page, schema) = page?;
    let mut headers = HeaderMap::new();
    if let Some(cursor) = &page.cursor
        && let Ok(value) = HeaderValue::from_str(cursor)
    {
        headers.insert("x-bt-cursor", value);
    }
    let content_type = match fmt {
        Fmt::Json => "application/json",
        Fmt::Jsonl => "application/x-ndjson",
        Fmt::Parquet => "application/vnd.apache.parquet",
    };
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let body = match fmt {
        Fmt::Json => {
            let mut out = Vec::with_capacity(page.body.len() + 256);
            out.extend_from_slice(b"{\"data\":[");
            out.extend_from_slice(&page.body);
            out.extend_from_slice(b"],\"schema\":");
            out.extend_from_slice(schema.to_string().as_bytes());
            out.extend_from_slice(b",\"cursor\":");
            out.extend_from_slice(
                serde_json::to_string(&page.cursor)
                    .unwrap_or_else(|_| "null".into())
                    .as_bytes(),
            );
            out.push(b'}');
            out
        }
        _ => page.body,
    };
    Ok((headers, body).into_response())
}

/// Run one page of `text` for `org_id` within the query time limit; the
/// page and the JSON schema of its columns. Past the limit the query's
/// future, and with it every stream and task of its plan, is dropped.
async fn run_page(
    state: &AppState,
    org_id: &str,
    text: &str,
    cursor: Option<String>,
    tz_offset_minutes: i32,
    fmt: Fmt,
) -> Result<(Page, serde_json::Value), ApiError> {
    let limit = state.config.query_timeout;
    let page = run_page_untimed(state, org_id, text, cursor, tz_offset_minutes, fmt);
    match tokio::time::timeout(limit, page).await {
        Ok(result) => result,
        Err(_) => Err(query_timeout(limit)),
    }
}

fn query_timeout(limit: Duration) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "query_timeout",
        format!(
            "the query ran longer than the limit of {} and was cancelled (`--query-timeout`); filter the rows (a narrower time range), add a smaller `limit`, or pivot on fewer keys",
            humantime_duration(limit)
        ),
    )
}

/// Run `work`, queries of the engine that are not a page of `/btql` (e.g.
/// a summary's), under `/btql`'s bounds (its caller holds a [`QuerySlot`]):
/// the options it gets account its memory in one pool of
/// `query_memory_bytes` (413 beyond) and limit it to `org_id`; past
/// `query_timeout` it is dropped (504).
pub(crate) async fn bounded_query<T, F, Fut>(
    state: &AppState,
    org_id: &str,
    work: F,
) -> Result<T, ApiError>
where
    F: FnOnce(QueryOptions) -> Fut,
    Fut: std::future::Future<Output = spanlake_engine::Result<T>>,
{
    let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(state.config.query_memory_bytes));
    let options = QueryOptions {
        memory_limit_bytes: state.config.query_memory_bytes,
        memory_pool: Some(pool),
        org_id: Some(org_id.to_string()),
        ..QueryOptions::default()
    };
    let limit = state.config.query_timeout;
    match tokio::time::timeout(limit, work(options)).await {
        Ok(result) => result.map_err(|e| query_failure(state, e)),
        Err(_) => Err(query_timeout(limit)),
    }
}

/// `1.5s`, `30s`, `2m`: a duration as the flags are written.
fn humantime_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(60_000) && millis > 0 {
        format!("{}m", millis / 60_000)
    } else if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else {
        format!("{millis}ms")
    }
}

async fn run_page_untimed(
    state: &AppState,
    org_id: &str,
    text: &str,
    cursor: Option<String>,
    tz_offset_minutes: i32,
    fmt: Fmt,
) -> Result<(Page, serde_json::Value), ApiError> {
    let query_error = |e: spanlake_dsl::Diagnostics| ApiError::query(&e, text);
    let query = spanlake_dsl::parse_any(text).map_err(query_error)?;
    // Pivots are not paged: the query's own limit applies, and a page holds
    // at most `max_page_rows` of them.
    let pivoted = query.pivot.is_some();
    let paging = Paging {
        size: None,
        default_size: state.config.default_page_rows,
        max_size: state.config.max_page_rows,
        cursor,
    };
    let pool: Arc<dyn MemoryPool> = Arc::new(FairSpillPool::new(state.config.query_memory_bytes));
    let options = QueryOptions {
        tz_offset_minutes,
        memory_limit_bytes: state.config.query_memory_bytes,
        memory_pool: Some(Arc::clone(&pool)),
        page: (!pivoted || paging.cursor.is_some()).then_some(paging),
        org_id: Some(org_id.to_string()),
        ..QueryOptions::default()
    };
    let stream = match run_parsed_query(&state.store, query, &options).await {
        Ok(stream) => stream,
        Err(Error::Query(diagnostics)) => return Err(query_error(diagnostics)),
        Err(e) => return Err(query_failure(state, e)),
    };
    let size = stream
        .page
        .as_ref()
        .map_or(state.config.max_page_rows, |(size, _)| *size);
    let page = MemoryConsumer::new("btql page").register(&pool);
    collect_page(state, stream, page, size, fmt, pivoted).await
}

/// The first `size` rows of `query`, encoded; the page's bytes are held
/// in `reservation` (of the query's pool) as they grow.
async fn collect_page(
    state: &AppState,
    query: QueryStream,
    reservation: MemoryReservation,
    size: u64,
    fmt: Fmt,
    pivoted: bool,
) -> Result<(Page, serde_json::Value), ApiError> {
    let QueryStream {
        columns,
        mut stream,
        page,
    } = query;
    let schema = json_schema(&stream.schema(), &columns);
    let mut body = Vec::new();
    let mut batches = Vec::new();
    let mut rows = 0u64;
    let mut more = false;
    let mut held_batches = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(|e| query_failure(state, Error::DataFusion(e)))?;
        let room = usize::try_from(size - rows).unwrap_or(usize::MAX);
        if batch.num_rows() > room {
            more = true;
        }
        let batch = batch.slice(0, batch.num_rows().min(room));
        match fmt {
            Fmt::Json | Fmt::Jsonl => {
                for row in 0..batch.num_rows() {
                    if fmt == Fmt::Json && (rows > 0 || row > 0) {
                        body.push(b',');
                    }
                    write_row_object(&mut body, &batch, &columns, row)
                        .map_err(|e| ApiError::from(Error::Internal(e.to_string())))?;
                    if fmt == Fmt::Jsonl {
                        body.push(b'\n');
                    }
                }
            }
            Fmt::Parquet => {
                held_batches += batch.get_array_memory_size();
                batches.push(batch.clone());
            }
        }
        reservation
            .try_resize(body.capacity() + held_batches)
            .map_err(|_| memory_limit(state))?;
        rows += batch.num_rows() as u64;
        if more {
            break;
        }
    }
    if pivoted && more {
        return Err(ApiError::bad_request(format!(
            "the pivoted result has more than {size} rows; add a `limit`"
        )));
    }
    if fmt == Fmt::Parquet {
        body = parquet_bytes(&stream.schema(), &batches)?;
    }
    let cursor = page.filter(|_| more).map(|(_, cursor)| cursor);
    Ok((Page { body, cursor }, schema))
}

fn parquet_bytes(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[arrow::array::RecordBatch],
) -> Result<Vec<u8>, ApiError> {
    let fail = |e: parquet::errors::ParquetError| ApiError::from(Error::Internal(e.to_string()));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(
            parquet::basic::ZstdLevel::try_new(3).map_err(fail)?,
        ))
        .build();
    let mut out = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut out, std::sync::Arc::clone(schema), Some(props))
            .map_err(fail)?;
    for batch in batches {
        writer.write(batch).map_err(fail)?;
    }
    writer.close().map_err(fail)?;
    Ok(out)
}

/// `{"type": "array", "items": {"type": "object", "properties": {...}}}`.
fn json_schema(schema: &Schema, columns: &[spanlake_dsl::OutputColumn]) -> serde_json::Value {
    let mut properties = serde_json::Map::new();
    for (field, column) in schema.fields().iter().zip(columns) {
        let kind = if column.json {
            serde_json::json!({})
        } else {
            match field.data_type() {
                DataType::Boolean => serde_json::json!({"type": "boolean"}),
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => serde_json::json!({"type": "integer"}),
                DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                    serde_json::json!({"type": "number"})
                }
                DataType::Timestamp(..) => {
                    serde_json::json!({"type": "string", "format": "date-time"})
                }
                DataType::Date32 | DataType::Date64 => {
                    serde_json::json!({"type": "string", "format": "date"})
                }
                _ => serde_json::json!({"type": "string"}),
            }
        };
        properties.insert(column.name.clone(), kind);
    }
    serde_json::json!({
        "type": "array",
        "items": {"type": "object", "properties": properties},
    })
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct FetchParams {
    limit: Option<u64>,
    cursor: Option<String>,
    max_xact_id: Option<String>,
    /// A pinned version of an experiment or dataset (the SDK's
    /// `init_dataset(version=...)`): refused, spanlake reads the latest.
    version: Option<serde_json::Value>,
}

/// `GET /v1/{project_logs,experiment,dataset}/{id}/fetch?limit=&cursor=&max_xact_id=`.
pub(crate) async fn fetch_get(
    auth: Auth,
    state: State<Arc<AppState>>,
    _slot: QuerySlot,
    route: axum::extract::MatchedPath,
    Path(project): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = match params.get("limit") {
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("`limit` must be a positive integer, not `{text}`"))
        })?),
        None => None,
    };
    let params = FetchParams {
        limit,
        cursor: params.get("cursor").cloned(),
        max_xact_id: params.get("max_xact_id").cloned(),
        version: params
            .get("version")
            .cloned()
            .map(serde_json::Value::String),
    };
    fetch(auth, state, &route, project, params).await
}

/// `POST /v1/{project_logs,experiment,dataset}/{id}/fetch {"limit", "cursor", "max_xact_id"}`
/// (the SDK's `Dataset.fetch()` posts `{"limit": 1000[, "cursor"]}`).
pub(crate) async fn fetch_post(
    auth: Auth,
    state: State<Arc<AppState>>,
    _slot: QuerySlot,
    route: axum::extract::MatchedPath,
    Path(project): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let params: FetchParams = if body.is_empty() {
        FetchParams::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid fetch body: {e}")))?
    };
    fetch(auth, state, &route, project, params).await
}

/// The resolved rows of a project's logs, an experiment or a dataset
/// (by the `route`), newest transaction first, a page at a time:
/// `{"events": [...], "cursor": "..."}`. `limit` counts rows (the public
/// API counts traces).
async fn fetch(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    route: &axum::extract::MatchedPath,
    id: String,
    params: FetchParams,
) -> Result<Response, ApiError> {
    let object_type = crate::objects::object_type_of(route)?;
    if object_type != ObjectType::ProjectLogs && params.version.is_some() {
        return Err(ApiError::bad_request(format!(
            "`version`: spanlake reads the latest version of a {object_type}, not a pinned one; fetch without `version`"
        )));
    }
    let table = state
        .store
        .with_registry(|r| r.source_table(object_type, &id, Some(&org.id)))?;
    let mut text = format!("select: * | from: {object_type}('{}')", table.table_id());
    if let Some(max) = &params.max_xact_id {
        let max: u64 = max.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "`max_xact_id` must be a transaction id (digits), not `{max}`"
            ))
        })?;
        // `_xact_id` reads as text of 19 digits (`0x0DE1 << 48 | version`):
        // padded alike, text order is number order (a float cast would not
        // tell neighbouring ids apart).
        text.push_str(&format!(" | filter: _xact_id <= '{max:019}'"));
    }
    text.push_str(" | sort: _xact_id desc");
    if let Some(limit) = params.limit {
        text.push_str(&format!(" | limit: {limit}"));
    }
    let started = Instant::now();
    let result = run_page(&state, &org.id, &text, params.cursor, 0, Fmt::Json).await;
    state
        .metrics
        .org(&org.id)
        .query_seconds
        .observe(started.elapsed().as_secs_f64());
    let (page, _) = result?;
    let mut out = b"{\"events\":[".to_vec();
    out.extend_from_slice(&page.body);
    out.extend_from_slice(b"],\"cursor\":");
    out.extend_from_slice(
        serde_json::to_string(&page.cursor)
            .unwrap_or_else(|_| "null".into())
            .as_bytes(),
    );
    out.push(b'}');
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        out,
    )
        .into_response())
}
