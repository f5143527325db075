//! Durable, idempotent ingest over HTTP: `POST /logs3` (the SDK's batches,
//! inline or through the overflow upload, of project logs, experiments and
//! datasets: each row names its object by `project_id`, `experiment_id` or
//! `dataset_id`, and goes to that object's table) and
//! `POST /v1/project_logs/{id}/insert`.
//!
//! ```text
//!  request ─► reserve its bytes of the ingest budget ─► parse rows, check each row's project is the key's org's
//!          ─► per project: the engine's group committer (spanlake_engine::ingest::group:
//!             one Delta commit for many requests, replays answered without committing)
//!          ─► answer {"ids", "xact_id"}
//! ```
//!
//! - A 2xx means the rows are committed. A request whose rows are invalid
//!   gets a 400 listing each bad row and commits nothing; the other requests
//!   of its group are committed without it.
//! - The SDK resends identical bodies on retry: a replay is answered with
//!   the first answer and commits nothing (see the engine's group module).
//!   Rows without an id get one derived from the body's digest, so a
//!   retried request has the same rows.
//! - Memory: every ingest request reserves its body's bytes (its
//!   `Content-Length`, and the size of an overflow upload it references) in
//!   one budget of `ingest_queue_bytes` over every project before its body
//!   is read, and holds them until it is answered and its rows are out of
//!   the queue. A request that does not fit is answered 503 with
//!   `Retry-After` at once, before its body is read; nothing of it is
//!   committed (the SDK retries).
//! - Overflow uploads check their token before reading the body, then
//!   stream it to its file, stopping at `max_body_bytes`; they are kept for
//!   the replay window.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use spanlake_engine::ingest::group::{
    CommitObserver, GroupCommitter, GroupOptions, ObserverOf, REPLAY_WINDOW, Rejected,
    forget_old_digests,
};
use spanlake_engine::registry::Project;
use spanlake_engine::registry::objects::ObjectType;
use spanlake_engine::store::Store;
use tokio::io::AsyncWriteExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::{AppState, Metrics, ServerConfig};

/// How long a client refused for a full ingest queue is told to wait.
const QUEUE_RETRY_AFTER: Duration = Duration::from_secs(1);
/// The ingest budget counts in units of this many bytes (a semaphore's
/// permits are `u32`).
const BUDGET_UNIT: usize = 1024;

/// The engine's group committers behind the ingest budget.
#[derive(Debug)]
pub(crate) struct Ingestor {
    commits: GroupCommitter,
    overflow_dir: PathBuf,
    /// The ingest budget, in [`BUDGET_UNIT`]s.
    budget: Arc<Semaphore>,
    budget_units: u32,
    budget_bytes: usize,
    max_body_bytes: usize,
}

impl Ingestor {
    pub(crate) fn new(store: Arc<Store>, config: &ServerConfig, metrics: Arc<Metrics>) -> Self {
        let overflow_dir = store.data_dir().join("overflow");
        forget_old(&store, &overflow_dir);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            // Again every few minutes, for as long as the server runs.
            let store = Arc::downgrade(&store);
            let dir = overflow_dir.clone();
            runtime.spawn(async move {
                let mut tick = tokio::time::interval(REPLAY_WINDOW / 12);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let Some(store) = store.upgrade() else { break };
                    forget_old(&store, &dir);
                }
            });
        }
        let observer: Arc<ObserverOf> = Arc::new(move |project: &Project| {
            metrics.org(&project.org_id) as Arc<dyn CommitObserver>
        });
        let options = GroupOptions {
            linger: config.group_commit_linger,
            max_rows: config.group_commit_rows,
        };
        Self {
            commits: GroupCommitter::new(store, options, observer),
            overflow_dir,
            budget: Arc::new(Semaphore::new(units(config.ingest_queue_bytes) as usize)),
            budget_units: units(config.ingest_queue_bytes),
            budget_bytes: config.ingest_queue_bytes,
            max_body_bytes: config.max_body_bytes,
        }
    }

    /// `bytes` of the ingest budget (all of it, for a request larger than
    /// the whole budget: it then waits for an empty queue), or a 503 to
    /// retry later when they are not free now.
    fn reserve(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let wanted = units(bytes).clamp(1, self.budget_units);
        Arc::clone(&self.budget)
            .try_acquire_many_owned(wanted)
            .map_err(|_| {
                let queued = (self.budget_units as usize)
                    .saturating_sub(self.budget.available_permits())
                    * BUDGET_UNIT;
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ingest_queue_full",
                    format!(
                        "the ingest queue is full: {queued} bytes of requests are being committed, and this request of {bytes} bytes does not fit in the limit of {} bytes (`--ingest-queue-bytes`); nothing of it was committed, retry shortly",
                        self.budget_bytes
                    ),
                )
                .retry_after(QUEUE_RETRY_AFTER)
            })
    }

    /// Commit `lines` (rows `rows` of a request) to `project`; the
    /// transaction id they were committed in (or were, for a replay).
    async fn submit(
        &self,
        project: &Project,
        lines: Vec<u8>,
        rows: Vec<usize>,
        budget: Arc<OwnedSemaphorePermit>,
    ) -> Result<i64, ApiError> {
        self.commits
            .submit(project, lines, rows, budget)
            .await
            .map_err(|rejected| match rejected {
                Rejected::Rows(ref errors) => {
                    let details = errors
                        .iter()
                        .map(|e| serde_json::json!({"row": e.row, "message": e.message}))
                        .collect();
                    ApiError::bad_request(rejected.to_string())
                        .with_details(serde_json::Value::Array(details))
                }
                Rejected::Failed(error) => ApiError::from(&*error),
            })
    }
}

/// `bytes` in [`BUDGET_UNIT`]s, rounded up.
fn units(bytes: usize) -> u32 {
    u32::try_from(bytes.div_ceil(BUDGET_UNIT)).unwrap_or(u32::MAX)
}

/// A request's share of the ingest budget, taken from its `Content-Length`
/// before its body is read (a body without one takes `max_body_bytes`).
/// Handlers take it after `Auth`, so an unauthenticated request takes none.
#[derive(Debug)]
pub(crate) struct IngestPermit(OwnedSemaphorePermit);

impl FromRequestParts<Arc<AppState>> for IngestPermit {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let ingestor = &state.ingestor;
        let declared = parts
            .headers
            .get(axum::http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        // A larger body is refused with 413 as it is read.
        let bytes = declared
            .unwrap_or(ingestor.max_body_bytes)
            .min(ingestor.max_body_bytes);
        ingestor.reserve(bytes).map(Self)
    }
}

fn internal(message: &str) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// Fields of a row the server looks at before the engine validates it.
#[derive(Deserialize)]
struct RowHead<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    project_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    experiment_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dataset_id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt_session_id: Option<&'a RawValue>,
}

/// One row, ready for the engine: its line and id.
struct Row {
    line: String,
    id: String,
}

/// The object a row names: `project_id` (the project's logs),
/// `experiment_id` or `dataset_id`, with the id given.
type RowObject = (ObjectType, String);

/// The object an SDK row (of `/logs3`) names, checked: one of
/// `project_id`, `experiment_id`, `dataset_id`, a string; a playground's
/// row (`prompt_session_id`) is refused.
fn sdk_object(head: &RowHead<'_>, index: usize) -> Result<Option<RowObject>, ApiError> {
    if head.prompt_session_id.is_some() {
        return Err(ApiError::bad_request(format!(
            "rows[{index}] is for a playground (`prompt_session_id`); spanlake stores project logs (`project_id`), experiments (`experiment_id`) and datasets (`dataset_id`)"
        )));
    }
    let mut named = Vec::new();
    for (object_type, field) in [
        (ObjectType::ProjectLogs, head.project_id),
        (ObjectType::Experiment, head.experiment_id),
        (ObjectType::Dataset, head.dataset_id),
    ] {
        let Some(raw) = field else { continue };
        let id = serde_json::from_str::<String>(raw.get()).map_err(|_| {
            ApiError::bad_request(format!(
                "rows[{index}]: `{}` must be a string",
                object_type.id_field()
            ))
        })?;
        named.push((object_type, id));
    }
    if named.len() > 1 {
        let fields: Vec<String> = named
            .iter()
            .map(|(t, _)| format!("`{}`", t.id_field()))
            .collect();
        return Err(ApiError::bad_request(format!(
            "rows[{index}] names {}: a row belongs to one object; send one of them",
            fields.join(" and ")
        )));
    }
    Ok(named.pop())
}

/// Check `raw` (row `index` of the request) and make it one line, giving it
/// an id when it has none (as the REST API does). The id given is derived
/// from the request body's digest and the row's index, so that a retried
/// request gets the same ids, and so the same digest: it commits once.
/// With `sdk_objects` (`/logs3`), also the object the row names, checked
/// (see [`sdk_object`]).
fn prepare_row(
    raw: &RawValue,
    index: usize,
    body_digest: &[u8],
    sdk_objects: bool,
) -> Result<(Row, Option<RowObject>), ApiError> {
    let text = raw.get();
    if !text.trim_start().starts_with('{') {
        return Err(ApiError::bad_request(format!(
            "rows[{index}] is not a JSON object"
        )));
    }
    let head: RowHead<'_> = serde_json::from_str(text)
        .map_err(|e| ApiError::bad_request(format!("rows[{index}]: {e}")))?;
    let object = if sdk_objects {
        sdk_object(&head, index)?
    } else {
        // The REST insert of a project's logs (its route names the
        // project): as always, the row's own `project_id` only has to be
        // a string; `experiment_id`, `dataset_id` and the rest are fields.
        if let Some(raw) = head.project_id
            && serde_json::from_str::<String>(raw.get()).is_err()
        {
            return Err(ApiError::bad_request(format!(
                "rows[{index}]: `project_id` must be a string"
            )));
        }
        None
    };
    let id = match head.id.map(|raw| serde_json::from_str::<String>(raw.get())) {
        Some(Ok(id)) if !id.is_empty() => Some(id),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "rows[{index}]: `id` must be a non-empty string"
            )));
        }
        None => None,
    };
    // Lines of JSON Lines: a raw newline can only be whitespace in JSON.
    let one_line = |text: &str| text.replace(['\n', '\r'], " ");
    let row = match id {
        Some(id) => Row {
            line: one_line(text),
            id,
        },
        None => {
            let mut object: serde_json::Map<String, serde_json::Value> = serde_json::from_str(text)
                .map_err(|e| ApiError::bad_request(format!("rows[{index}]: {e}")))?;
            let mut hasher = Sha256::new();
            hasher.update(body_digest);
            hasher.update(index.to_le_bytes());
            let hash = hasher.finalize();
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&hash[..16]);
            let id = uuid::Builder::from_random_bytes(bytes)
                .into_uuid()
                .to_string();
            object.insert("id".into(), serde_json::Value::String(id.clone()));
            Row {
                line: serde_json::to_string(&object).map_err(|e| internal(&e.to_string()))?,
                id,
            }
        }
    };
    Ok((row, object))
}

/// Commit `rows` (grouped by the table of their object: a project's logs,
/// an experiment, a dataset) and answer `{"ids", "xact_id"}`.
async fn commit_rows(
    state: &AppState,
    org_id: &str,
    rows: Vec<(Row, RowObject)>,
    budget: IngestPermit,
) -> Result<(Vec<String>, i64), ApiError> {
    let budget = Arc::new(budget.0);
    let mut ids = Vec::with_capacity(rows.len());
    // Each name given (a project may be named by id or by name) and the
    // slot of its table.
    let mut named: Vec<(RowObject, usize)> = Vec::new();
    let mut by_project: Vec<(Project, Vec<u8>, Vec<usize>)> = Vec::new();
    for (index, (row, object)) in rows.into_iter().enumerate() {
        ids.push(row.id);
        let slot = match named.iter().find(|(n, _)| *n == object) {
            Some(&(_, slot)) => slot,
            None => {
                let (object_type, id) = &object;
                let table = state
                    .store
                    .with_registry(|r| r.source_table(*object_type, id, Some(org_id)))?;
                let slot = match by_project
                    .iter()
                    .position(|(p, _, _)| p.table_id() == table.table_id())
                {
                    Some(slot) => slot,
                    None => {
                        by_project.push((table, Vec::new(), Vec::new()));
                        by_project.len() - 1
                    }
                };
                named.push((object, slot));
                slot
            }
        };
        let (_, lines, indexes) = &mut by_project[slot];
        lines.extend_from_slice(row.line.as_bytes());
        lines.push(b'\n');
        indexes.push(index);
    }
    if by_project.len() > 1 {
        // Each project's rows are one commit of their own: check every row
        // first, so that a bad row leaves no project's rows committed.
        validate_all(&by_project)?;
    }
    let commits = by_project.into_iter().map(|(project, lines, indexes)| {
        let budget = Arc::clone(&budget);
        async move {
            state
                .ingestor
                .submit(&project, lines, indexes, budget)
                .await
        }
    });
    let mut xact = 0;
    for result in futures::future::join_all(commits).await {
        xact = xact.max(result?);
    }
    Ok((ids, xact))
}

/// Every row of every project, by the engine's rules; a 400 naming each bad row.
fn validate_all(by_project: &[(Project, Vec<u8>, Vec<usize>)]) -> Result<(), ApiError> {
    let mut details = Vec::new();
    for (_, lines, indexes) in by_project {
        for (line, &row) in lines.split(|&b| b == b'\n').zip(indexes) {
            let text = std::str::from_utf8(line).unwrap_or_default();
            if let Err(message) = spanlake_engine::ingest::validate_event(text) {
                details.push(serde_json::json!({"row": row, "message": message}));
            }
        }
    }
    if details.is_empty() {
        return Ok(());
    }
    details.sort_by_key(|d| d["row"].as_u64());
    Err(ApiError::bad_request(format!(
        "{} invalid row(s), nothing of this request was committed; rows[{}]: {}",
        details.len(),
        details[0]["row"],
        details[0]["message"].as_str().unwrap_or_default()
    ))
    .with_details(serde_json::Value::Array(details)))
}

#[derive(Deserialize)]
struct Logs3Body<'a> {
    #[serde(borrow)]
    rows: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OverflowRef {
    #[serde(rename = "type")]
    kind: String,
    key: String,
}

fn json_error(e: &serde_json::Error) -> ApiError {
    ApiError::bad_request(format!(
        "the body is not valid JSON (line {}, column {}): {e}",
        e.line(),
        e.column()
    ))
}

/// `POST /logs3 {"rows": [...], "api_version": 2}` (or `rows` an overflow
/// reference): `{"ids": [...], "xact_id": "..."}`.
pub(crate) async fn logs3(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    mut budget: IngestPermit,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let parsed: Logs3Body<'_> = serde_json::from_slice(&body).map_err(|e| json_error(&e))?;
    let rows = parsed.rows.ok_or_else(|| {
        ApiError::bad_request("missing `rows`: expected {\"rows\": [...], \"api_version\": 2}")
    })?;
    let uploaded;
    let rows_text = if rows.get().trim_start().starts_with('{') {
        let reference: OverflowRef =
            serde_json::from_str(rows.get()).map_err(|e| json_error(&e))?;
        if reference.kind != "logs3_overflow" {
            return Err(ApiError::bad_request(format!(
                "`rows` must be an array or a `logs3_overflow` reference, not type `{}`",
                reference.kind
            )));
        }
        let size = upload_size(&state.ingestor.overflow_dir, &reference.key, &org.id)?;
        budget.0.merge(state.ingestor.reserve(size)?);
        uploaded = read_upload(&state.ingestor.overflow_dir, &reference.key, &org.id)?;
        let inner: Logs3Body<'_> = serde_json::from_slice(&uploaded).map_err(|e| json_error(&e))?;
        inner
            .rows
            .ok_or_else(|| ApiError::bad_request("the uploaded body has no `rows`"))?
            .get()
            .to_string()
    } else {
        rows.get().to_string()
    };
    let body_digest = Sha256::digest(rows_text.as_bytes());
    let rows: Vec<&RawValue> = serde_json::from_str(&rows_text)
        .map_err(|_| ApiError::bad_request("`rows` must be an array of row objects"))?;
    let mut prepared = Vec::with_capacity(rows.len());
    for (index, raw) in rows.into_iter().enumerate() {
        let (row, object) = prepare_row(raw, index, &body_digest, true)?;
        let object = object.ok_or_else(|| {
            ApiError::bad_request(format!(
                "rows[{index}] names no object: give it `project_id` (project logs), `experiment_id` or `dataset_id`"
            ))
        })?;
        prepared.push((row, object));
    }
    let (ids, xact) = commit_rows(&state, &org.id, prepared, budget).await?;
    Ok(Json(
        serde_json::json!({"ids": ids, "xact_id": xact.to_string()}),
    ))
}

#[derive(Deserialize)]
struct InsertBody<'a> {
    #[serde(borrow)]
    events: Vec<&'a RawValue>,
}

/// `POST /v1/project_logs/{id}/insert {"events": [...]}`: `{"row_ids": [...]}`.
pub(crate) async fn insert(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(project): Path<String>,
    budget: IngestPermit,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let project = state
        .store
        .with_registry(|r| r.resolve_in_org(&org.id, &project))?;
    let parsed: InsertBody<'_> = serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            ApiError::bad_request(format!("expected {{\"events\": [...]}}: {e}"))
        } else {
            json_error(&e)
        }
    })?;
    let body_digest = Sha256::digest(&body);
    let mut prepared = Vec::with_capacity(parsed.events.len());
    for (index, raw) in parsed.events.into_iter().enumerate() {
        let (row, _) = prepare_row(raw, index, &body_digest, false)?;
        prepared.push((row, (ObjectType::ProjectLogs, project.id.clone())));
    }
    let (ids, _) = commit_rows(&state, &org.id, prepared, budget).await?;
    Ok(Json(serde_json::json!({ "row_ids": ids })))
}

fn upload_key(key: &str) -> Result<String, ApiError> {
    uuid::Uuid::parse_str(key)
        .map(|u| u.hyphenated().to_string())
        .map_err(|_| ApiError::bad_request(format!("`{key}` is not an overflow key")))
}

fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `POST /logs3/overflow`: where to upload a batch too large to send inline.
pub(crate) async fn overflow_start(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let request: serde_json::Value = serde_json::from_slice(&body).map_err(|e| json_error(&e))?;
    if let Some(size) = request
        .get("size_bytes")
        .and_then(serde_json::Value::as_u64)
        && size > state.config.max_body_bytes as u64
    {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "{size} bytes is more than this server accepts ({}); send smaller batches",
                state.config.max_body_bytes
            ),
        ));
    }
    let key = uuid::Uuid::new_v4().to_string();
    let token = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let dir = &state.ingestor.overflow_dir;
    std::fs::create_dir_all(dir).map_err(|e| internal(&format!("{}: {e}", dir.display())))?;
    let meta = serde_json::json!({"org_id": org.id, "token": token_digest(&token)});
    std::fs::write(dir.join(format!("{key}.meta")), meta.to_string())
        .map_err(|e| internal(&e.to_string()))?;
    Ok(Json(serde_json::json!({
        "method": "PUT",
        "signedUrl": format!("{}/logs3/overflow/upload/{key}?token={token}", state.config.base_url()),
        "headers": {"Content-Type": "application/json"},
        "key": key,
    })))
}

fn read_meta(dir: &std::path::Path, key: &str) -> Result<serde_json::Value, ApiError> {
    let text = std::fs::read(dir.join(format!("{key}.meta"))).map_err(|_| {
        ApiError::bad_request(format!(
            "unknown or expired overflow key `{key}`; start again with POST /logs3/overflow"
        ))
    })?;
    serde_json::from_slice(&text).map_err(|e| internal(&e.to_string()))
}

/// `PUT /logs3/overflow/upload/{key}?token=...`: the batch's body (no API
/// key: the token of the signed URL proves the upload was granted). The
/// token is checked before a byte of the body is read; the body is then
/// streamed to its file (bounded memory), and refused with 413 past
/// `max_body_bytes`.
pub(crate) async fn overflow_upload(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    body: axum::body::Body,
) -> Result<Json<serde_json::Value>, ApiError> {
    let key = upload_key(&key)?;
    let dir = &state.ingestor.overflow_dir;
    let meta = read_meta(dir, &key)?;
    let token = query.get("token").map(String::as_str).unwrap_or_default();
    if meta["token"].as_str() != Some(token_digest(token).as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the upload token does not match this overflow key",
        ));
    }
    // A name of its own per upload, so that two uploads of one key never
    // write into one file.
    let temporary = dir.join(format!("{key}.{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = stream_to_file(body, &temporary, state.config.max_body_bytes).await;
    if let Err(error) = written {
        let _ = tokio::fs::remove_file(&temporary).await;
        return Err(error);
    }
    tokio::fs::rename(&temporary, dir.join(format!("{key}.body")))
        .await
        .map_err(|e| internal(&e.to_string()))?;
    Ok(Json(serde_json::json!({})))
}

/// Write `body` to `path` as it arrives; 413 past `max_bytes`.
async fn stream_to_file(
    body: axum::body::Body,
    path: &std::path::Path,
    max_bytes: usize,
) -> Result<(), ApiError> {
    let mut file = tokio::fs::File::create(path)
        .await
        .map_err(|e| internal(&format!("{}: {e}", path.display())))?;
    let mut frames = body.into_data_stream();
    let mut written = 0usize;
    while let Some(frame) = frames.next().await {
        let chunk = frame.map_err(|e| {
            ApiError::bad_request(format!("the upload's body could not be read: {e}"))
        })?;
        written += chunk.len();
        if written > max_bytes {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!(
                    "the upload is larger than this server accepts ({max_bytes} bytes); send smaller batches (the SDK's BRAINTRUST_MAX_REQUEST_SIZE) or raise the server's --max-body"
                ),
            ));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| internal(&format!("{}: {e}", path.display())))?;
    }
    file.flush()
        .await
        .map_err(|e| internal(&format!("{}: {e}", path.display())))?;
    Ok(())
}

/// The size of the uploaded body of overflow `key`, if it belongs to `org_id`.
fn upload_size(dir: &std::path::Path, key: &str, org_id: &str) -> Result<usize, ApiError> {
    let key = upload_key(key)?;
    let meta = read_meta(dir, &key)?;
    if meta["org_id"].as_str() != Some(org_id) {
        return Err(ApiError::bad_request(format!(
            "unknown or expired overflow key `{key}`"
        )));
    }
    let size = std::fs::metadata(dir.join(format!("{key}.body")))
        .map_err(|_| {
            ApiError::bad_request(format!(
                "nothing was uploaded for overflow key `{key}`; PUT the body to its signedUrl first"
            ))
        })?
        .len();
    Ok(usize::try_from(size).unwrap_or(usize::MAX))
}

/// Request bodies must arrive within `limit` of the request's head (a
/// slowly dripping body would hold its connection, and its share of the
/// ingest budget or a query slot). Past it the body read fails, and the
/// answer becomes 408 with the connection closed.
pub(crate) async fn body_deadline(
    State(limit): State<Duration>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let expired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deadline = tokio::time::Instant::now() + limit;
    let (parts, body) = request.into_parts();
    let seen = Arc::clone(&expired);
    let frames = futures::stream::unfold(Some(body.into_data_stream()), move |frames| {
        let seen = Arc::clone(&seen);
        async move {
            let mut frames = frames?;
            match tokio::time::timeout_at(deadline, frames.next()).await {
                Ok(Some(frame)) => Some((frame, Some(frames))),
                Ok(None) => None,
                Err(_) => {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                    Some((
                        Err(axum::Error::new(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the request body did not arrive in time",
                        ))),
                        None,
                    ))
                }
            }
        }
    });
    let request = axum::extract::Request::from_parts(parts, axum::body::Body::from_stream(frames));
    let response = next.run(request).await;
    if !expired.load(std::sync::atomic::Ordering::SeqCst) {
        return response;
    }
    let mut response = ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "body_timeout",
        format!(
            "the request body did not arrive within {} s of its headers (`--body-timeout`); send it faster or in smaller requests",
            limit.as_secs_f64()
        ),
    )
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The uploaded body of overflow `key`, if it belongs to `org_id`. It stays
/// (for replays) until it is older than the replay window.
fn read_upload(dir: &std::path::Path, key: &str, org_id: &str) -> Result<Vec<u8>, ApiError> {
    let key = upload_key(key)?;
    let meta = read_meta(dir, &key)?;
    if meta["org_id"].as_str() != Some(org_id) {
        return Err(ApiError::bad_request(format!(
            "unknown or expired overflow key `{key}`"
        )));
    }
    std::fs::read(dir.join(format!("{key}.body"))).map_err(|_| {
        ApiError::bad_request(format!(
            "nothing was uploaded for overflow key `{key}`; PUT the body to its signedUrl first"
        ))
    })
}

/// Overflow uploads and request digests older than the replay window go.
fn forget_old(store: &Store, overflow_dir: &std::path::Path) {
    if let Err(e) = remove_old_uploads(overflow_dir) {
        tracing::warn!(error = %e, "could not clean old overflow uploads");
    }
    if let Err(e) = forget_old_digests(store) {
        tracing::warn!(error = %e, "could not forget old request digests");
    }
}

fn remove_old_uploads(dir: &std::path::Path) -> std::io::Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let entry = entry?;
        let old = entry
            .metadata()?
            .modified()?
            .elapsed()
            .is_ok_and(|age| age > REPLAY_WINDOW);
        if old {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}
