//! API keys: `Authorization: Bearer <key>` on every route but `/health`
//! (and the overflow upload, which carries its own signed token).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use spanlake_engine::registry::apikeys::Org;

use sha2::Digest;

use crate::AppState;
use crate::error::ApiError;

/// The org of the request's API key.
#[derive(Debug, Clone)]
pub(crate) struct Auth(pub(crate) Org);

/// How long an answer of the key registry is trusted: a key revoked with
/// `spanlake apikey revoke` (another process) stops working within this.
pub(crate) const KEY_CACHE_TTL: Duration = Duration::from_secs(10);
/// Keys remembered at most (the cache starts over when full).
const KEY_CACHE_ENTRIES: usize = 10_000;

/// API key digest → org (or `None`: not a valid key), for
/// [`KEY_CACHE_TTL`]: an authenticated request neither reads the state
/// database nor queues behind another request's registry lock.
/// A key's org (`None`: not a valid key) and when the registry said so.
type CachedKey = (Option<Org>, Instant);

#[derive(Debug, Default)]
pub(crate) struct KeyCache {
    entries: Mutex<HashMap<[u8; 32], CachedKey>>,
}

/// The key of an `Authorization: Bearer <key>` header value.
pub(crate) fn bearer(header: &str) -> Option<&str> {
    header
        .strip_prefix("Bearer ")
        .or_else(|| header.strip_prefix("bearer "))
}

fn key_digest(key: &str) -> [u8; 32] {
    sha2::Sha256::digest(key.trim().as_bytes()).into()
}

impl KeyCache {
    /// The org of `key` if the cache knows it as valid (no database read).
    pub(crate) fn org_of(&self, key: &str) -> Option<Org> {
        self.get(&key_digest(key)).flatten()
    }

    fn get(&self, digest: &[u8; 32]) -> Option<Option<Org>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        entries
            .get(digest)
            .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
            .map(|(org, _)| org.clone())
    }

    fn put(&self, digest: [u8; 32], org: Option<Org>) {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if entries.len() >= KEY_CACHE_ENTRIES {
            entries.clear();
        }
        entries.insert(digest, (org, Instant::now()));
    }
}

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
        let key = bearer(header)
            .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <key>`"))?;
        let digest = key_digest(key);
        let org = match state.keys.get(&digest) {
            Some(org) => org,
            None => {
                let key = key.to_string();
                let org = state.registry(move |r| r.authenticate(&key)).await?;
                state.keys.put(digest, org.clone());
                org
            }
        };
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
