//! The spanlake HTTP API, compatible with Braintrust clients: the unmodified
//! Braintrust SDK logs into it (`BRAINTRUST_APP_URL` / `BRAINTRUST_API_URL`
//! pointing here), and pipelines query and manage automations over REST.
//!
//! ```text
//!  SDK / REST ─► axum router ─► auth (API key → org) ─► handler
//!    /logs3, /v1/project_logs/{id}/insert ─► ingest::Ingestor: one group
//!        committer per table (a project's logs, an experiment, a dataset;
//!        requests queued while a commit runs go into the next one; replays
//!        answered from their digests)
//!    /btql, /v1/{project_logs,experiment,dataset}/{id}/fetch ─► engine query (paged, pinned)
//!    /v1/experiment, /v1/dataset[/{id}[/summarize]] ─► objects: experiments and datasets
//!    /v1/project_automation/...          ─► engine export / retention
//!    /metrics                            ─► Prometheus text
//!    /, /console/*                       ─► the web console (embedded files, see `console`)
//! ```
//!
//! Routes and shapes follow `spec/sdk-protocol.md` and `spec/data-model.md`
//! §4. Every route but `/health` and the console's files needs `Authorization: Bearer <API key>`
//! (keys come from `spanlake apikey create`); a key sees only its org's
//! projects.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use spanlake_engine::store::Store;
use tokio::sync::watch;

mod auth;
mod automations;
mod blocking;
mod btql;
mod console;
pub mod error;
mod ingest;
mod metrics;
mod objects;
mod projects;

pub use error::ApiError;
pub use metrics::Metrics;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Base URL clients reach this server at (the `api_url` of the login
    /// answer); default `http://<listen>`.
    pub public_url: Option<String>,
    /// Largest request body accepted (413 above it), uploads included.
    pub max_body_bytes: usize,
    /// Largest `/logs3` body the SDK sends inline; larger batches go through
    /// the overflow upload.
    pub inline_payload_bytes: usize,
    /// How long a group commit waits for more requests after the first one
    /// (bounded latency; requests arriving while a commit runs join the next
    /// one anyway).
    pub group_commit_linger: Duration,
    /// Rows after which a group commit stops gathering requests.
    pub group_commit_rows: usize,
    /// Rows per page of `/btql` when the query has no `limit`.
    pub default_page_rows: u64,
    /// Largest page of `/btql` (a larger `limit` is paged with a cursor).
    pub max_page_rows: u64,
    /// Memory for one query's sorts and aggregations before they spill.
    pub query_memory_bytes: usize,
    /// Export destinations and endpoints allowed to automations created or
    /// changed over the API (`--allow-export-to`, `--allow-endpoint`).
    pub destinations: spanlake_engine::automation::policy::DestinationPolicy,
    /// Longest a query (`/btql`, `/v1/project_logs/{id}/fetch`) may run, from
    /// parsing to the last row of its page; it is then cancelled and answered
    /// 504 `query_timeout`.
    pub query_timeout: Duration,
    /// Queries one API key may run at once (from their headers to their
    /// answer); more are answered 429 with `Retry-After`.
    pub max_queries_per_key: usize,
    /// How long a connection has to send a complete request head, from when
    /// it opens or its previous answer ends: a slow or silent client is
    /// disconnected, and so is a keep-alive connection idle that long.
    pub header_timeout: Duration,
    /// How long a request has to send its whole body once its head arrived
    /// (408 and the connection closed after).
    pub body_timeout: Duration,
    /// Bytes of ingest request bodies (`/logs3`, `insert`, overflow uploads
    /// referenced) being read, queued or committed at once, over every
    /// project; a request that does not fit is answered 503 with
    /// `Retry-After` and nothing of it is committed.
    pub ingest_queue_bytes: usize,
}

impl ServerConfig {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            public_url: None,
            max_body_bytes: 64 * 1024 * 1024,
            inline_payload_bytes: 6 * 1024 * 1024,
            group_commit_linger: Duration::from_millis(10),
            group_commit_rows: 50_000,
            default_page_rows: 1000,
            max_page_rows: 100_000,
            query_memory_bytes: 256 * 1024 * 1024,
            destinations: spanlake_engine::automation::policy::DestinationPolicy::default(),
            query_timeout: Duration::from_secs(30),
            max_queries_per_key: 4,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(120),
            ingest_queue_bytes: 256 * 1024 * 1024,
        }
    }

    fn base_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}

/// What every handler shares.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) store: Arc<Store>,
    pub(crate) config: ServerConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) ingestor: ingest::Ingestor,
    pub(crate) keys: auth::KeyCache,
    /// Queries running, per API key.
    pub(crate) queries: Arc<btql::QueryGate>,
}

/// The router of every route, over `store`.
pub fn router(store: Arc<Store>, config: ServerConfig, metrics: Arc<Metrics>) -> Router {
    let max_body = config.max_body_bytes;
    store.set_registry_busy_timeout(blocking::STATE_BUSY_TIMEOUT);
    let body_timeout = config.body_timeout;
    let state = Arc::new(AppState {
        keys: auth::KeyCache::default(),
        ingestor: ingest::Ingestor::new(Arc::clone(&store), &config, Arc::clone(&metrics)),
        queries: Arc::new(btql::QueryGate::new(config.max_queries_per_key)),
        store,
        config,
        metrics,
    });
    Router::new()
        .route("/", get(console::index))
        .route("/console/{file}", get(console::file))
        .route("/health", get(health))
        .route("/metrics", get(metrics::handler))
        .route("/version", get(version))
        .route("/api/apikey/login", post(auth::login))
        .route("/v1/project", post(projects::create).get(projects::list))
        .route("/v1/project/{id}", get(projects::get))
        .route("/api/project/register", post(projects::register))
        .route("/api/project", get(projects::get_by_query))
        .route("/logs3", post(ingest::logs3))
        .route("/logs3/overflow", post(ingest::overflow_start))
        .route(
            "/logs3/overflow/upload/{key}",
            axum::routing::put(ingest::overflow_upload),
        )
        .route("/v1/project_logs/{id}/insert", post(ingest::insert))
        .route(
            "/v1/project_logs/{id}/fetch",
            get(btql::fetch_get).post(btql::fetch_post),
        )
        .route(
            "/v1/experiment/{id}/fetch",
            get(btql::fetch_get).post(btql::fetch_post),
        )
        .route(
            "/v1/dataset/{id}/fetch",
            get(btql::fetch_get).post(btql::fetch_post),
        )
        .route("/v1/experiment", post(objects::create).get(objects::list))
        .route("/v1/dataset", post(objects::create).get(objects::list))
        .route("/v1/experiment/{id}", get(objects::get))
        .route("/v1/dataset/{id}", get(objects::get))
        .route("/v1/experiment/{id}/summarize", get(objects::summarize))
        .route("/v1/dataset/{id}/summarize", get(objects::summarize))
        .route("/btql", post(btql::btql))
        .route(
            "/v1/project_automation",
            post(automations::create).get(automations::list),
        )
        .route(
            "/v1/project_automation/{id}",
            get(automations::get)
                .patch(automations::update)
                .put(automations::update)
                .delete(automations::delete),
        )
        .route(
            "/v1/project_automation/test",
            post(automations::test_unsaved),
        )
        .route(
            "/v1/project_automation/role_policy",
            post(automations::role_policy_unsaved),
        )
        .route(
            "/v1/project_automation/{id}/role_policy",
            get(automations::role_policy),
        )
        .route("/v1/project_automation/{id}/run", post(automations::run))
        .route("/v1/project_automation/{id}/test", post(automations::test))
        .route(
            "/v1/project_automation/{id}/reset",
            post(automations::reset),
        )
        .route(
            "/v1/project_automation/{id}/status",
            get(automations::status),
        )
        .route(
            "/v1/project_automation/{id}/history",
            get(automations::history),
        )
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            metrics::track,
        ))
        .layer(DefaultBodyLimit::max(max_body))
        .layer(axum::middleware::from_fn_with_state(
            body_timeout,
            ingest::body_deadline,
        ))
        .layer(axum::middleware::from_fn(error::json_errors))
        .with_state(state)
}

/// Bind `config.listen` (so that a taken port is reported at start).
pub async fn bind(config: &ServerConfig) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; is another server running there? choose another address with --listen",
            config.listen
        )
    })
}

/// Serve the API on `listener` until `stop` turns true; requests in flight
/// are finished first (their commits included).
///
/// Connections are served by hyper's HTTP/1 connection builder rather than
/// `axum::serve`, which sets no timer and so has no header read timeout: a
/// client sending a partial request head (slowloris) or nothing at all on a
/// keep-alive connection would hold its connection forever. hyper starts
/// its header timer whenever a connection waits for a request head, so
/// `header_timeout` bounds both. Body reads are bounded by
/// `ingest::body_deadline` (a layer, not tower-http's timeout, whose feature
/// would rebuild the HTTP client crates under object_store and DataFusion).
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: Arc<Store>,
    mut config: ServerConfig,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let local = listener.local_addr()?;
    // With port 0 the system chose one: clients are told the real address.
    config.listen = local;
    tracing::info!(address = %local, "HTTP API listening");
    eprintln!("HTTP API listening on http://{local}");
    let header_timeout = config.header_timeout;
    let app = router(store, config, metrics);
    let (closing, closing_seen) = watch::channel(false);
    let mut connections = tokio::task::JoinSet::new();
    while !*stop.borrow() {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, or a connection reset
                        // before it was accepted: keep serving the others.
                        tracing::warn!(error = %e, "could not accept a connection");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                let mut closing = closing_seen.clone();
                connections.spawn(async move {
                    let mut builder = hyper::server::conn::http1::Builder::new();
                    builder
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout);
                    let connection =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::pin!(connection);
                    tokio::select! {
                        result = connection.as_mut() => {
                            if let Err(e) = result {
                                tracing::debug!(error = %e, "connection ended");
                            }
                        }
                        () = async { let _ = closing.wait_for(|closing| *closing).await; } => {
                            connection.as_mut().graceful_shutdown();
                            let _ = connection.await;
                        }
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    break;
                }
            }
        }
    }
    drop(listener);
    let _ = closing.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn health() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

/// `GET /version`: `logs3_payload_max_bytes` turns on the SDK's overflow
/// path for larger batches (`POST /logs3/overflow`, then an upload here).
async fn version(
    _auth: auth::Auth,
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "server": "spanlake",
        "logs3_payload_max_bytes": state.config.inline_payload_bytes,
    }))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no route `{}`; see the README's HTTP API section for the routes spanlake serves",
        uri.path()
    ))
}
