//! `/v1/project_automation`: export and retention automations over REST,
//! in the shape of `spec/automations.md` (the Automation object: `id`,
//! `project_id`, `name`, `description`, `kind`, `config`, `status`,
//! `created`, `updated`). The same engine calls as `spanlake automation`.
//!
//! - `POST   /v1/project_automation` `{project_id, name, description?, kind, config}`
//! - `GET    /v1/project_automation[?project_id=]` → `{"objects": [...]}`
//! - `GET    /v1/project_automation/{id}`
//! - `PATCH|PUT /v1/project_automation/{id}` `{name?, description?, config?, status?}`
//! - `DELETE /v1/project_automation/{id}` (exported files stay)
//! - `POST   /v1/project_automation/{id}/run` (run now), `/test`, `/reset`
//! - `GET    /v1/project_automation/{id}/status`, `/history?limit=`
//! - `POST   /v1/project_automation/test` `{project_id, name, description?, kind, config}`:
//!   the test of a configuration not saved yet (the create body; nothing is stored)
//! - `GET    /v1/project_automation/{id}/role_policy[?principal=]`, and
//!   `POST /v1/project_automation/role_policy` `{project_id, export_path, principal?}`
//!   before saving: the external id and the IAM policies the export's role needs
//!
//! An export created, or whose configuration is changed, here is marked
//! `origin: api` and its destination is held to the operator's
//! [`DestinationPolicy`](spanlake_engine::automation::policy::DestinationPolicy) (`spanlake
//! serve --allow-export-to`, `--allow-endpoint`) when it is stored, and
//! again at each `run` and `test` (and scheduled run): a refusal is a 403
//! naming the rule and the flag that lifts it, and nothing is written.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use spanlake_engine::automation::policy::DestinationRefused;
use spanlake_engine::automation::runner::{AutomationConfig, RunError, Runner};
use spanlake_engine::export::role::{self as export_role, UNSAVED_AUTOMATION_ID};
use spanlake_engine::registry::Project;
use spanlake_engine::registry::apikeys::Org;
use spanlake_engine::state::{Automation, Kind, Origin, StateDb, Trigger};

use crate::AppState;
use crate::auth::Auth;
use crate::blocking::STATE_BUSY_TIMEOUT;
use crate::error::ApiError;

type Answer = Result<Json<serde_json::Value>, ApiError>;

/// A connection for a request's short reads and writes: it waits at most
/// [`STATE_BUSY_TIMEOUT`] for another process's write lock, then the
/// request answers 503 with `Retry-After`. Call it on the blocking pool
/// ([`AppState::blocking`]).
fn state_db(state: &AppState) -> Result<StateDb, ApiError> {
    Ok(StateDb::of_with_busy_timeout(
        &state.store,
        STATE_BUSY_TIMEOUT,
    )?)
}

/// Run `work` with a state-database connection and the automation `id` of
/// `org_id` (see [`find`]) on the blocking pool.
async fn with_automation<T, F>(
    state: &Arc<AppState>,
    org_id: String,
    id: String,
    work: F,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    F: FnOnce(&StateDb, Automation) -> Result<T, ApiError> + Send + 'static,
{
    state
        .blocking(move |state| {
            let db = state_db(state)?;
            let automation = find(state, &db, &org_id, &id)?;
            work(&db, automation)
        })
        .await
}

fn to_json(value: &impl serde::Serialize) -> Answer {
    serde_json::to_value(value)
        .map(Json)
        .map_err(|e| ApiError::from(spanlake_engine::Error::Internal(e.to_string())))
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "invalid {what} (line {}, column {}): {e}",
            e.line(),
            e.column()
        ))
    })
}

/// The automation `id`, if its project belongs to `org_id` (by the
/// project's id, never its name): another org's automation is 404, exactly
/// like one that does not exist.
fn find(state: &AppState, db: &StateDb, org_id: &str, id: &str) -> Result<Automation, ApiError> {
    let not_found = || ApiError::not_found(format!("no automation with id `{id}`"));
    let automation = db.get(id)?.ok_or_else(not_found)?;
    match state
        .store
        .registry()?
        .get_in_org(org_id, &automation.project_id)?
    {
        Some(_) => Ok(automation),
        None => Err(not_found()),
    }
}

/// 403 with every refusal of the destination policy.
fn refused(refused: &DestinationRefused) -> ApiError {
    let details: Vec<serde_json::Value> = refused
        .refusals
        .iter()
        .map(|r| serde_json::json!({"rule": r.rule.name(), "message": r.message}))
        .collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "destination_refused",
        format!("{refused}; nothing was written"),
    )
    .with_details(serde_json::Value::Array(details))
}

/// A runner's failure: a refused destination is a 403, anything else maps
/// as usual.
fn run_error(error: RunError) -> ApiError {
    match error {
        RunError::Refused(refusal) => refused(&refusal),
        RunError::Failed(error) => error.into(),
    }
}

/// Validate `config` for `kind`, an export's destination against the
/// server's policy too; the stored (normalized) configuration.
async fn validated_config(
    state: &AppState,
    project: &Project,
    kind: Kind,
    config: serde_json::Value,
) -> Result<serde_json::Value, ApiError> {
    let (validated, stored) = AutomationConfig::validate(kind, config)?;
    validated.check_object(&state.store, project)?;
    if let AutomationConfig::Export(config) = &validated {
        state
            .config
            .destinations
            .check_export(config)
            .await
            .map_err(|e| refused(&e))?;
    }
    Ok(stored)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    project_id: String,
    name: String,
    #[serde(default)]
    description: String,
    kind: String,
    config: serde_json::Value,
    /// `active` (the default) or `paused`.
    #[serde(default)]
    status: Option<String>,
}

fn parse_kind(kind: &str) -> Result<Kind, ApiError> {
    match kind {
        "export" => Ok(Kind::Export),
        "retention" => Ok(Kind::Retention),
        other => Err(ApiError::bad_request(format!(
            "`kind` must be `export` or `retention`, not `{other}`"
        ))),
    }
}

/// A create body read and checked: its kind, its project (in `org`), and
/// its configuration validated (and held to the destinations policy).
async fn draft(
    state: &Arc<AppState>,
    org: &Org,
    body: &[u8],
) -> Result<(CreateBody, Kind, Project, serde_json::Value), ApiError> {
    let mut body: CreateBody = parse(body, "automation")?;
    let kind = parse_kind(&body.kind)?;
    let (org_id, project_arg) = (org.id.clone(), body.project_id.clone());
    let project = state
        .registry(move |r| r.resolve_in_org(&org_id, &project_arg))
        .await?;
    let config = validated_config(state, &project, kind, std::mem::take(&mut body.config)).await?;
    Ok((body, kind, project, config))
}

/// `POST /v1/project_automation`.
pub(crate) async fn create(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Answer {
    let (body, kind, project, config) = draft(&state, &org, &body).await?;
    let automation = state
        .blocking(move |state| {
            Ok(state_db(state)?.create_with_status(
                &project.id,
                &body.name,
                &body.description,
                kind,
                &config,
                Origin::Api,
                body.status.as_deref().unwrap_or("active"),
            )?)
        })
        .await?;
    to_json(&automation)
}

/// `GET /v1/project_automation[?project_id=]`.
pub(crate) async fn list(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let objects = state
        .blocking(move |state| {
            let projects: Vec<String> = match query.get("project_id") {
                Some(project) => vec![state.store.registry()?.resolve_in_org(&org.id, project)?.id],
                None => state
                    .store
                    .registry()?
                    .list_in_org(&org.id)?
                    .into_iter()
                    .map(|p| p.id)
                    .collect(),
            };
            let db = state_db(state)?;
            let mut objects = Vec::new();
            for project in &projects {
                objects.extend(db.list(Some(project))?);
            }
            Ok(objects)
        })
        .await?;
    Ok(Json(serde_json::json!({ "objects": objects })))
}

/// `GET /v1/project_automation/{id}`.
pub(crate) async fn get(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    to_json(&with_automation(&state, org.id, id, |_, automation| Ok(automation)).await?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    name: Option<String>,
    description: Option<String>,
    config: Option<serde_json::Value>,
    status: Option<String>,
}

/// `PATCH|PUT /v1/project_automation/{id}`: change what is given.
pub(crate) async fn update(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Answer {
    let body: UpdateBody = parse(&body, "automation update")?;
    // Checked before anything changes.
    if let Some(status) = &body.status {
        spanlake_engine::state::check_status(status)?;
    }
    let current = with_automation(&state, org.id.clone(), id.clone(), |_, automation| {
        Ok(automation)
    })
    .await?;
    // A configuration given here is the API's choice from now on.
    let (config, origin) = match body.config {
        Some(config) => (
            validated_config(
                &state,
                &state
                    .registry({
                        let project_id = current.project_id.clone();
                        move |r| r.get(&project_id)
                    })
                    .await?,
                current.kind,
                config,
            )
            .await?,
            Some(Origin::Api),
        ),
        None => (current.config.clone(), None),
    };
    // An export's destination is fixed once created: its cursor says what
    // went *there*; another destination is another export.
    if current.kind == Kind::Export && config["export_path"] != current.config["export_path"] {
        return Err(ApiError::bad_request(format!(
            "`config.export_path` is fixed after creation (it is {}); create another export for another destination",
            current.config["export_path"]
        )));
    }
    // Looked up again: it may have been deleted meanwhile.
    let updated = with_automation(&state, org.id, id, move |db, current| {
        let mut updated = db.update(
            &current.id,
            body.name.as_deref().unwrap_or(&current.name),
            body.description.as_deref().unwrap_or(&current.description),
            &config,
            origin,
        )?;
        if let Some(status) = body.status {
            db.set_status(&current.id, &status)?;
            updated.status = status;
        }
        Ok(updated)
    })
    .await?;
    to_json(&updated)
}

/// `DELETE /v1/project_automation/{id}`.
pub(crate) async fn delete(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    let id = with_automation(&state, org.id, id, |db, automation| {
        db.delete(&automation.id)?;
        Ok(automation.id)
    })
    .await?;
    Ok(Json(serde_json::json!({"id": id, "deleted": true})))
}

/// Run `work` (which holds the state database, a connection that cannot be
/// shared between threads) on a blocking thread of its own.
async fn on_own_thread<F, Fut>(state: &Arc<AppState>, work: F) -> Answer
where
    F: FnOnce(Arc<AppState>, StateDb) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Answer>,
{
    let state = Arc::clone(state);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        // A run's connection waits as long as the CLI's: after its commit
        // it must record the run, not give up on a short busy spell.
        let db = StateDb::of(&state.store)?;
        handle.block_on(work(state, db))
    })
    .await
    .map_err(|e| ApiError::from(spanlake_engine::Error::Internal(format!("run failed: {e}"))))?
}

/// `POST /v1/project_automation/{id}/run`: run now; answers when it ends.
pub(crate) async fn run(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    on_own_thread(&state, move |state, db| async move {
        let automation = find(&state, &db, &org.id, &id)?;
        let runner = Runner::new(&state.store, &db).with_policy(&state.config.destinations);
        let report = runner
            .run(&automation, Trigger::Manual, None)
            .await
            .map_err(run_error)?;
        to_json(&report)
    })
    .await
}

/// `POST /v1/project_automation/{id}/test`: for an export, write, read back
/// and delete a probe file through the configured credentials; for a
/// retention, the preview (nothing changes).
pub(crate) async fn test(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    on_own_thread(&state, move |state, db| async move {
        let automation = find(&state, &db, &org.id, &id)?;
        let runner = Runner::new(&state.store, &db).with_policy(&state.config.destinations);
        to_json(&runner.test(&automation).await.map_err(run_error)?)
    })
    .await
}

/// `POST /v1/project_automation/test`: test a configuration before it is
/// saved (the console's "Test automation" in the create dialog). The body
/// is the create body; it is validated, and held to the destinations
/// policy, exactly as `create` would, then tested as a saved automation
/// would be, and nothing is stored. An export presents the external id
/// `spanlake:<org_id>:<project_id>:unsaved` (it has no id yet), which the
/// project-wide trust policy of `role_policy` matches; the answer names it.
pub(crate) async fn test_unsaved(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Answer {
    let (body, kind, project, config) = draft(&state, &org, &body).await?;
    let now = state.store.clock().now_rfc3339();
    let draft = Automation {
        id: UNSAVED_AUTOMATION_ID.to_string(),
        project_id: project.id.clone(),
        name: body.name,
        description: body.description,
        kind,
        config,
        status: "active".to_string(),
        created: now.clone(),
        updated: now,
        // Held to the destinations policy like an API-made export.
        origin: Origin::Api,
    };
    let external_id = (kind == Kind::Export).then(|| {
        spanlake_engine::sink::credentials::external_id(
            &project.org_id,
            &project.id,
            UNSAVED_AUTOMATION_ID,
        )
    });
    let mut answer = on_own_thread(&state, move |state, db| async move {
        let runner = Runner::new(&state.store, &db).with_policy(&state.config.destinations);
        to_json(&runner.test(&draft).await.map_err(run_error)?)
    })
    .await?;
    if let Some(external_id) = external_id {
        answer.0["external_id"] = external_id.into();
    }
    Ok(answer)
}

/// `GET /v1/project_automation/{id}/role_policy[?principal=ARN]`: the
/// external id of a saved export and the trust and permissions policies
/// of the role it assumes, its bucket and prefix filled in.
pub(crate) async fn role_policy(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let org_id = org.id.clone();
    let automation = with_automation(&state, org.id, id, |_, automation| Ok(automation)).await?;
    let AutomationConfig::Export(config) = AutomationConfig::of(&automation)? else {
        return Err(ApiError::bad_request(format!(
            "`{}` is a retention automation; only exports assume a role",
            automation.name
        )));
    };
    to_json(&export_role::role_policy(
        &org_id,
        &automation.project_id,
        Some(&automation.id),
        &config.export_path,
        query.get("principal").map(String::as_str),
    )?)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RolePolicyBody {
    project_id: String,
    export_path: String,
    #[serde(default)]
    principal: Option<String>,
}

/// `POST /v1/project_automation/role_policy` `{project_id, export_path,
/// principal?}`: the same for an export not saved yet; its trust policy
/// matches every export of the project (there is no id to pin yet).
pub(crate) async fn role_policy_unsaved(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    body: axum::body::Bytes,
) -> Answer {
    let body: RolePolicyBody = parse(&body, "role policy request")?;
    let project_arg = body.project_id.clone();
    let project = state
        .registry(move |r| r.resolve_in_org(&org.id, &project_arg))
        .await?;
    to_json(&export_role::role_policy(
        &project.org_id,
        &project.id,
        None,
        &body.export_path,
        body.principal.as_deref(),
    )?)
}

/// `POST /v1/project_automation/{id}/reset`: the next run starts over.
pub(crate) async fn reset(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    let id = with_automation(&state, org.id, id, |db, automation| {
        db.reset(&automation.id)?;
        Ok(automation.id)
    })
    .await?;
    Ok(Json(serde_json::json!({"id": id, "reset": true})))
}

/// `GET /v1/project_automation/{id}/status`.
pub(crate) async fn status(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Answer {
    Ok(Json(
        with_automation(&state, org.id, id, |db, automation| {
            Ok(db.status_json(&automation)?)
        })
        .await?,
    ))
}

/// `GET /v1/project_automation/{id}/history?limit=` (newest first).
pub(crate) async fn history(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Answer {
    let limit = match query.get("limit") {
        Some(text) => text.parse::<usize>().map_err(|_| {
            ApiError::bad_request(format!("`limit` must be a positive integer, not `{text}`"))
        })?,
        None => 20,
    };
    let runs = with_automation(&state, org.id, id, move |db, automation| {
        Ok(db.runs(&automation.id, limit)?)
    })
    .await?;
    Ok(Json(serde_json::json!({ "objects": runs })))
}
