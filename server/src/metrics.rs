//! `GET /metrics`: Prometheus text format, of the scraping key's org only.
//! Counters of this process (rows ingested, commits and their latency,
//! queries and their latency, requests and errors by route and status) and,
//! read from the state database at scrape time, the export runs, rows and
//! bytes of the org's automations' run history (all processes sharing the
//! data directory).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use spanlake_engine::state::{Kind, StateDb};

use crate::AppState;
use crate::error::ApiError;

type Labels = Vec<(String, String)>;

/// The server's metrics: one set per org. A scrape shows the scraping key's
/// org only; no org sees another's requests, ingest or exports (the
/// process-wide sums are for the operator's own monitoring of the host).
#[derive(Debug, Default)]
pub struct Metrics {
    orgs: std::sync::Mutex<std::collections::HashMap<String, Arc<OrgMetrics>>>,
    scrape: std::sync::Mutex<()>,
}

/// The figures of one org.
#[derive(Debug)]
pub struct OrgMetrics {
    registry: Registry,
    /// Rows committed by ingest requests.
    pub rows_ingested: Counter,
    /// Delta commits made by the group committers.
    pub commits: Counter,
    /// Requests answered from an earlier commit (replays).
    pub replays: Counter,
    /// Seconds from a group's start to its commit.
    pub commit_seconds: Histogram,
    /// Seconds to answer a query (`/btql`, fetch).
    pub query_seconds: Histogram,
    /// Requests by route and status.
    pub requests: Family<Labels, Counter>,
    /// Error answers (4xx and 5xx) by route and status.
    pub errors: Family<Labels, Counter>,
    export_runs: Family<Labels, Gauge>,
    export_rows: Gauge,
    export_bytes: Gauge,
}

impl spanlake_engine::ingest::group::CommitObserver for OrgMetrics {
    fn replayed(&self) {
        self.replays.inc();
    }

    fn committed(&self, rows: u64, took: std::time::Duration) {
        self.commit_seconds.observe(took.as_secs_f64());
        self.rows_ingested.inc_by(rows);
        self.commits.inc();
    }
}

impl Default for OrgMetrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("spanlake");
        let metrics = Self {
            rows_ingested: Counter::default(),
            commits: Counter::default(),
            replays: Counter::default(),
            commit_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            query_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 16)),
            requests: Family::default(),
            errors: Family::default(),
            export_runs: Family::default(),
            export_rows: Gauge::default(),
            export_bytes: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "rows_ingested",
            "Rows committed by ingest requests",
            metrics.rows_ingested.clone(),
        );
        registry.register(
            "commits",
            "Delta commits made by ingest group commits",
            metrics.commits.clone(),
        );
        registry.register(
            "ingest_replays",
            "Ingest requests answered from an earlier commit (retries)",
            metrics.replays.clone(),
        );
        registry.register(
            "commit_latency_seconds",
            "Seconds from a group commit's start to its commit",
            metrics.commit_seconds.clone(),
        );
        registry.register(
            "query_latency_seconds",
            "Seconds to answer a query",
            metrics.query_seconds.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            metrics.requests.clone(),
        );
        registry.register(
            "http_errors",
            "HTTP error answers by route and status",
            metrics.errors.clone(),
        );
        registry.register(
            "export_runs_recorded",
            "Export runs in the run history, by status",
            metrics.export_runs.clone(),
        );
        registry.register(
            "export_rows_recorded",
            "Rows exported, per the run history",
            metrics.export_rows.clone(),
        );
        registry.register(
            "export_bytes_recorded",
            "Bytes exported, per the run history",
            metrics.export_bytes.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }
}

impl Metrics {
    /// The figures of `org_id` (created on first use).
    pub fn org(&self, org_id: &str) -> Arc<OrgMetrics> {
        let mut orgs = self
            .orgs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(orgs.entry(org_id.to_string()).or_default())
    }
}

impl OrgMetrics {
    /// The export gauges for the automations of `projects` (the org's).
    fn refresh_exports(&self, state: &StateDb, projects: &[String]) -> spanlake_engine::Result<()> {
        let mut rows = 0u64;
        let mut bytes = 0u64;
        let mut by_status: std::collections::BTreeMap<String, i64> = Default::default();
        let mut automations = Vec::new();
        for project in projects {
            automations.extend(state.list(Some(project))?);
        }
        for automation in automations {
            if automation.kind != Kind::Export {
                continue;
            }
            for run in state.runs(&automation.id, 1_000_000)? {
                rows += run.rows;
                bytes += run.bytes;
                let status = serde_json::to_value(run.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default();
                *by_status.entry(status).or_default() += 1;
            }
        }
        self.export_runs.clear();
        for (status, count) in by_status {
            self.export_runs
                .get_or_create(&vec![("status".to_string(), status)])
                .set(count);
        }
        self.export_rows
            .set(i64::try_from(rows).unwrap_or(i64::MAX));
        self.export_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        Ok(())
    }
}

/// `GET /metrics`: the scraping key's org's figures.
pub(crate) async fn handler(
    crate::auth::Auth(org): crate::auth::Auth,
    State(state): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    let text = state
        .blocking(move |state| {
            let projects: Vec<String> = state
                .store
                .registry()?
                .list_in_org(&org.id)?
                .into_iter()
                .map(|p| p.id)
                .collect();
            let db =
                StateDb::of_with_busy_timeout(&state.store, crate::blocking::STATE_BUSY_TIMEOUT)?;
            let figures = state.metrics.org(&org.id);
            // One scrape at a time: the export gauges are set at scrape time.
            let _scrape = state
                .metrics
                .scrape
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            figures.refresh_exports(&db, &projects)?;
            let mut text = String::new();
            encode(&mut text, &figures.registry).map_err(|e| {
                ApiError::from(spanlake_engine::Error::Internal(format!(
                    "metrics encoding: {e}"
                )))
            })?;
            Ok(text)
        })
        .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Count every request by route pattern and status.
pub(crate) async fn track(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let key = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(crate::auth::bearer)
        .map(str::to_string);
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status();
    // Counted for the key's org (known once the handler authenticated it);
    // requests without a valid key belong to no org and are only logged.
    if let Some(org) = key.and_then(|key| state.keys.org_of(&key)) {
        let figures = state.metrics.org(&org.id);
        let labels = vec![
            ("route".to_string(), route.clone()),
            ("status".to_string(), status.as_u16().to_string()),
        ];
        figures.requests.get_or_create(&labels).inc();
        if status.is_client_error() || status.is_server_error() {
            figures.errors.get_or_create(&labels).inc();
        }
    }
    tracing::debug!(%route, status = status.as_u16(), elapsed_ms = started.elapsed().as_millis() as u64, "request");
    response
}
