//! Projects: `POST /v1/project` (get-or-create by name, idempotent),
//! `GET /v1/project[/{id}]`, and the older `/api/project/register` and
//! `GET /api/project?id=` of the TypeScript and older Python SDKs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use spanlake_engine::registry::Project;

use crate::AppState;
use crate::auth::Auth;
use crate::error::ApiError;

/// The public API's Project object.
pub(crate) fn project_json(project: &Project) -> serde_json::Value {
    serde_json::json!({
        "id": project.id,
        "org_id": project.org_id,
        "name": project.name,
        "created": project.created,
        "description": null,
        "deleted_at": null,
        "user_id": null,
        "settings": null,
    })
}

fn name_field<'a>(body: &'a serde_json::Value, field: &str) -> Result<&'a str, ApiError> {
    match body.get(field) {
        Some(serde_json::Value::String(name)) => Ok(name),
        Some(other) => Err(ApiError::bad_request(format!(
            "`{field}` must be a string, got {other}"
        ))),
        None => Err(ApiError::bad_request(format!(
            "missing `{field}`: the project name"
        ))),
    }
}

fn parse_body(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// `POST /v1/project {"name": ...}`.
pub(crate) async fn create(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = parse_body(&body)?;
    let name = name_field(&body, "name")?.to_string();
    let project = state
        .registry(move |r| r.get_or_create_in_org(&org.id, &name))
        .await?;
    Ok(Json(project_json(&project)))
}

/// `GET /v1/project[?project_name=...]`.
pub(crate) async fn list(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let projects = state.registry(move |r| r.list_in_org(&org.id)).await?;
    let objects: Vec<serde_json::Value> = projects
        .iter()
        .filter(|p| query.get("project_name").is_none_or(|name| &p.name == name))
        .map(project_json)
        .collect();
    Ok(Json(serde_json::json!({ "objects": objects })))
}

/// `GET /v1/project/{id}`.
pub(crate) async fn get(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let project = state
        .registry(move |r| r.resolve_in_org(&org.id, &id))
        .await?;
    Ok(Json(project_json(&project)))
}

/// `POST /api/project/register {"project_name": ..., "org_id": ...}`.
pub(crate) async fn register(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let body = parse_body(&body)?;
    let name = name_field(&body, "project_name")?.to_string();
    if let Some(requested) = body.get("org_id").and_then(|v| v.as_str())
        && requested != org.id
    {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this API key belongs to org `{}`, not `{requested}`",
                org.id
            ),
        ));
    }
    let project = state
        .registry(move |r| r.get_or_create_in_org(&org.id, &name))
        .await?;
    Ok(Json(
        serde_json::json!({ "project": project_json(&project) }),
    ))
}

/// `GET /api/project?id=...`.
pub(crate) async fn get_by_query(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = query
        .get("id")
        .ok_or_else(|| ApiError::bad_request("missing query parameter `id`"))?
        .clone();
    let project = state
        .registry(move |r| r.resolve_in_org(&org.id, &id))
        .await?;
    Ok(Json(project_json(&project)))
}
