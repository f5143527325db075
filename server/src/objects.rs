//! Experiments and datasets, the routes the Braintrust SDK calls for them
//! (captured from the unmodified PyPI `braintrust` 0.48.1; see the repo's
//! `docs/sdk-experiments-datasets.md`):
//!
//! ```text
//!  POST /v1/experiment {project_id, name?, ensure_new?, description?, metadata?, ...}  ─► the experiment (an Eval starts here)
//!  GET  /v1/experiment?project_id=&experiment_name=                                     ─► {"objects": [...]}
//!  GET  /v1/experiment/{id}                                                             ─► the experiment
//!  GET  /v1/experiment/{id}/summarize?summarize_scores=                                 ─► scores and metrics (the end of an Eval)
//!  POST /v1/dataset {project_id, name?, description?, metadata?}                         ─► the dataset (get-or-create by name)
//!  GET  /v1/dataset?project_id=&dataset_name=, GET /v1/dataset/{id}                     ─► as for experiments
//!  GET  /v1/dataset/{id}/summarize?summarize_data=                                      ─► {"data_summary": {"total_records"}}
//! ```
//!
//! Their rows arrive through `POST /logs3` (rows with `experiment_id` or
//! `dataset_id`, see [`crate::ingest`]) and are read with
//! `POST /v1/{experiment,dataset}/{id}/fetch` and `/btql`
//! (see [`crate::btql`]).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{MatchedPath, Path, Query, State};
use spanlake_engine::objects::summarize_object;
use spanlake_engine::registry::Project;
use spanlake_engine::registry::objects::{LogObject, NewObject, ObjectType};

use crate::AppState;
use crate::auth::Auth;
use crate::btql::{QuerySlot, bounded_query};
use crate::error::ApiError;

/// The public API's Experiment or Dataset object.
pub(crate) fn object_json(object: &LogObject) -> serde_json::Value {
    let mut json = serde_json::json!({
        "id": object.id,
        "project_id": object.project_id,
        "name": object.name,
        "description": object.description,
        "created": object.created,
        "metadata": object.metadata,
        "deleted_at": null,
        "user_id": null,
    });
    if object.object_type == ObjectType::Experiment {
        json["public"] = serde_json::Value::Bool(false);
    }
    json
}

/// The object type a route is for: the segment after `/v1/` of its
/// pattern (`/v1/experiment/{id}`, `/v1/dataset/{id}/fetch`, ...).
pub(crate) fn object_type_of(route: &MatchedPath) -> Result<ObjectType, ApiError> {
    route
        .as_str()
        .strip_prefix("/v1/")
        .and_then(|rest| rest.split('/').next())
        .and_then(ObjectType::parse)
        .ok_or_else(|| {
            ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("route `{}` names no object type", route.as_str()),
            )
        })
}

fn optional_string(body: &serde_json::Value, field: &str) -> Result<Option<String>, ApiError> {
    match body.get(field) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(text)) => Ok(Some(text.clone())),
        Some(other) => Err(ApiError::bad_request(format!(
            "`{field}` must be a string, got {other}"
        ))),
    }
}

/// `POST /v1/experiment` and `POST /v1/dataset`: create one in the
/// project `project_id` (of the key's org). An experiment with
/// `ensure_new` (an `Eval` sends `true`) whose name is taken gets a new,
/// suffixed name; otherwise an existing one of that name is returned.
pub(crate) async fn create(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    body: axum::body::Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let object_type = object_type_of(&route)?;
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })?;
    let project_id = optional_string(&body, "project_id")?.ok_or_else(|| {
        ApiError::bad_request(format!(
            "missing `project_id`: the project of the {object_type} (create one with POST /v1/project)"
        ))
    })?;
    let ensure_new = match body.get("ensure_new") {
        None | Some(serde_json::Value::Null) => object_type == ObjectType::Experiment,
        Some(serde_json::Value::Bool(b)) => *b,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`ensure_new` must be a boolean, got {other}"
            )));
        }
    };
    let new = NewObject {
        name: optional_string(&body, "name")?,
        description: optional_string(&body, "description")?,
        metadata: body.get("metadata").filter(|m| !m.is_null()).cloned(),
        ensure_new,
    };
    let object = state
        .registry(move |r| {
            let project = r.resolve_in_org(&org.id, &project_id)?;
            r.create_object(&project, object_type, &new)
        })
        .await?;
    Ok(Json(object_json(&object)))
}

/// `GET /v1/experiment?project_id=&experiment_name=` (and datasets with
/// `dataset_name`): `{"objects": [...]}`, oldest first.
pub(crate) async fn list(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let object_type = object_type_of(&route)?;
    let project = query
        .get("project_id")
        .or_else(|| query.get("project_name"))
        .cloned()
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "missing query parameter `project_id`: list the {object_type}s of one project"
            ))
        })?;
    let name = query.get(&format!("{object_type}_name")).cloned();
    let objects = state
        .registry(move |r| {
            let project = r.resolve_in_org(&org.id, &project)?;
            r.list_objects(&project, object_type)
        })
        .await?;
    let objects: Vec<serde_json::Value> = objects
        .iter()
        .filter(|o| name.as_ref().is_none_or(|n| &o.name == n))
        .map(object_json)
        .collect();
    Ok(Json(serde_json::json!({ "objects": objects })))
}

async fn object_of(
    state: &Arc<AppState>,
    org_id: String,
    object_type: ObjectType,
    id: String,
) -> Result<(LogObject, Project), ApiError> {
    state
        .registry(move |r| r.object_table(object_type, &id, Some(&org_id)))
        .await
}

/// `GET /v1/experiment/{id}`, `GET /v1/dataset/{id}`.
pub(crate) async fn get(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    route: MatchedPath,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let object_type = object_type_of(&route)?;
    let (object, _) = object_of(&state, org.id, object_type, id).await?;
    Ok(Json(object_json(&object)))
}

/// `GET /v1/experiment/{id}/summarize`: the experiment's scores and
/// metrics, averaged over its cases, as the SDK prints them at the end of
/// an `Eval` (no comparison with another experiment: `diff`,
/// `improvements` and `regressions` are null). `GET
/// /v1/dataset/{id}/summarize`: its record count.
pub(crate) async fn summarize(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    _slot: QuerySlot,
    route: MatchedPath,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let object_type = object_type_of(&route)?;
    let (object, table) = object_of(&state, org.id.clone(), object_type, id).await?;
    let summarize_data = query
        .get(if object_type == ObjectType::Experiment {
            "summarize_scores"
        } else {
            "summarize_data"
        })
        .is_none_or(|v| v != "false");
    let mut json = serde_json::json!({
        "project_name": table.name,
        format!("{object_type}_name"): object.name,
    });
    if !summarize_data {
        return Ok(Json(json));
    }
    // Full-table queries: under the bounds of `/btql`.
    let store = &state.store;
    let summary = bounded_query(&state, &org.id, |options| async move {
        summarize_object(store, &object, &table, &options).await
    })
    .await?;
    if object_type == ObjectType::Dataset {
        json["data_summary"] = serde_json::json!({ "total_records": summary.rows });
        return Ok(Json(json));
    }
    // Exactly the fields of the SDK's ScoreSummary and MetricSummary (it
    // builds them from these objects' keys).
    let scores: serde_json::Map<String, serde_json::Value> = summary
        .scores
        .values()
        .map(|s| {
            (
                s.name.clone(),
                serde_json::json!({"name": s.name, "score": s.score, "diff": null, "improvements": null, "regressions": null}),
            )
        })
        .collect();
    let metrics: serde_json::Map<String, serde_json::Value> = summary
        .metrics
        .values()
        .map(|m| {
            (
                m.name.clone(),
                serde_json::json!({"name": m.name, "metric": m.metric, "unit": m.unit, "diff": null, "improvements": null, "regressions": null}),
            )
        })
        .collect();
    json["comparison_experiment_name"] = serde_json::Value::Null;
    json["scores"] = serde_json::Value::Object(scores);
    json["metrics"] = serde_json::Value::Object(metrics);
    Ok(Json(json))
}
