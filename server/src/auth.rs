//! API keys: `Authorization: Bearer <key>` on every route but `/health`
//! (and the overflow upload, which carries its own signed token).

use std::sync::Arc;

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use spanlake_engine::apikeys::Org;

use crate::AppState;
use crate::error::ApiError;

/// The org of the request's API key.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub(crate) Org);

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

impl FromRequestParts<Arc<AppState>> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let Some(header) = parts.headers.get(axum::http::header::AUTHORIZATION) else {
            return Err(unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with `spanlake apikey create`)",
            ));
        };
        let header = header
            .to_str()
            .map_err(|_| unauthorized("the Authorization header is not ASCII"))?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
        let org = state.store.registry().authenticate(key)?;
        match org {
            Some(org) => Ok(Self(org)),
            None => Err(unauthorized(
                "invalid or revoked API key; create one with `spanlake apikey create`",
            )),
        }
    }
}

/// `POST /api/apikey/login`: the key's org, with this server as its API URL
/// (`--public-url`, else the address the client reached: its `Host`).
pub(crate) async fn login(
    Auth(org): Auth,
    State(state): State<Arc<AppState>>,
    headers: axum::http::HeaderMap,
) -> axum::Json<serde_json::Value> {
    let host = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && !h.contains(['/', ' ', '@']));
    let base = match (&state.config.public_url, host) {
        (None, Some(host)) => format!("http://{host}"),
        _ => state.config.base_url(),
    };
    axum::Json(serde_json::json!({
        "org_info": [{
            "id": org.id,
            "name": org.name,
            "api_url": base,
            "proxy_url": base,
            "git_metadata": null,
            "is_universal_api": null,
        }]
    }))
}
