//! Errors of the HTTP API: a status and a JSON body
//! `{"error": {"code": "...", "message": "..."}}` that says what is wrong and
//! what to do. Engine errors map to 4xx when the request is at fault.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use spanlake_engine::Error;
use spanlake_engine::error::error_chain;

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// A stable machine-readable code.
    pub code: &'static str,
    /// What is wrong, and what to do.
    pub message: String,
    /// Extra structured detail (line errors of an insert, query diagnostics).
    pub details: Option<Box<serde_json::Value>>,
    /// Seconds for a `Retry-After` header (503 and 429 answers).
    pub retry_after: Option<u32>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            retry_after: None,
        }
    }

    /// 503 `busy` with `Retry-After: seconds`: the request may be sent again.
    pub fn busy(message: impl Into<String>, seconds: u32) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message)
            .retry_after(std::time::Duration::from_secs(seconds.into()))
    }

    /// 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 404 with `message`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// Attach structured detail.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(Box::new(details));
        self
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(details) = &self.details {
            error["details"] = (**details).clone();
        }
        serde_json::json!({ "error": error })
    }
}

impl IntoResponse for ApiError {
    fn into_response(mut self) -> Response {
        if self.status == StatusCode::INTERNAL_SERVER_ERROR {
            // An internal error's chain can hold file paths, plans and
            // other tenants' names: it goes to the log under an id that the
            // answer carries, never into the answer itself.
            let id = uuid::Uuid::now_v7().to_string();
            tracing::error!(error_id = %id, message = %self.message, "request failed");
            self.message = format!(
                "internal error {id}; nothing about it is shown here: the server's log has the details under this id"
            );
            self.details = Some(Box::new(serde_json::json!({ "error_id": id })));
        } else if self.status.is_server_error() {
            tracing::warn!(status = %self.status, message = %self.message, "request failed");
        }
        let retry_after = self.retry_after;
        let mut response = (self.status, axum::Json(self.body())).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(seconds),
            );
        }
        response
    }
}

impl ApiError {
    /// A rejected query: each diagnostic with its line, column and the
    /// rendered query line with a caret under the mistake.
    pub fn query(diagnostics: &spanlake_dsl::Diagnostics, text: &str) -> Self {
        use spanlake_dsl::diagnostics::{locate, render};
        let details: Vec<serde_json::Value> = diagnostics
            .0
            .iter()
            .map(|d| {
                let (line, column, _) = locate(text, d.span.start);
                serde_json::json!({
                    "code": d.code,
                    "message": d.message,
                    "line": line,
                    "column": column,
                    "help": d.help,
                    "rendered": render(d, text, "query"),
                })
            })
            .collect();
        let message = diagnostics
            .0
            .iter()
            .map(|d| render(d, text, "query"))
            .collect::<Vec<_>>()
            .join("\n");
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message)
            .with_details(serde_json::Value::Array(details))
    }
}

impl From<Error> for ApiError {
    fn from(error: Error) -> Self {
        Self::from(&error)
    }
}

impl From<&Error> for ApiError {
    fn from(error: &Error) -> Self {
        match error {
            Error::Query(diagnostics) => Self::query(diagnostics, ""),
            Error::InvalidInput { errors, .. } => {
                let details: Vec<serde_json::Value> = errors
                    .iter()
                    .map(|e| serde_json::json!({"row": e.line, "message": e.message}))
                    .collect();
                Self::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_rows",
                    format!(
                        "{} invalid row(s), nothing was committed; first: {}",
                        errors.len(),
                        errors.first().map(ToString::to_string).unwrap_or_default()
                    ),
                )
                .with_details(serde_json::Value::Array(details))
            }
            Error::UnknownProject(name) => Self::not_found(format!(
                "unknown project `{name}` (or not visible to this API key's org); create it with POST /v1/project"
            )),
            Error::UnknownObject { object_type, id } => Self::not_found(format!(
                "unknown {object_type} `{id}` (or not visible to this API key's org); create it with POST /v1/{object_type}"
            )),
            Error::ProjectExists(_) => {
                Self::new(StatusCode::CONFLICT, "conflict", error.to_string())
            }
            Error::InvalidArgument(message) => Self::bad_request(message.clone()),
            Error::Destination { .. }
            | Error::Sink { .. }
            | Error::Credentials { .. }
            | Error::LeaseHeld { .. } => Self::bad_request(error.to_string()),
            Error::Locked { .. } => Self::busy(format!("{error}; retry shortly"), 1),
            Error::State(_) if error.is_busy() => Self::busy(
                "the state database is busy (another process holds its write lock); retry shortly",
                1,
            ),
            _ => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                error_chain(error),
            ),
        }
    }
}

/// Answers the framework makes itself (413 for a body over the limit, 405,
/// a malformed query string) are plain text; give them the JSON shape of
/// every other error.
pub(crate) async fn json_errors(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let body = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let (code, hint) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too_large",
            "; send smaller batches (the SDK's BRAINTRUST_MAX_REQUEST_SIZE) or raise the server's --max-body",
        ),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", ""),
        _ => ("bad_request", ""),
    };
    let message = if text.is_empty() {
        format!("{}{hint}", status.canonical_reason().unwrap_or("error"))
    } else {
        format!("{text}{hint}")
    };
    ApiError::new(status, code, message).into_response()
}

impl ApiError {
    /// This error, answered with `Retry-After: after` (in whole seconds, at
    /// least 1): a limit that frees up by itself (a full ingest queue, too
    /// many queries at once).
    pub fn retry_after(mut self, after: std::time::Duration) -> Self {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = Some(u32::try_from(seconds.max(1)).unwrap_or(u32::MAX));
        self
    }
}
