//! The web console: a page and its script and styles, embedded in the
//! binary and served at `/` on the API's port. It is a client of the same
//! REST routes as everyone else (sign-in is `/api/apikey/login`, queries
//! `/btql`, automations `/v1/project_automation`); there is no second
//! backend and no build step (plain JavaScript, no Node, nothing from a CDN).
//!
//! ```text
//!  GET /                      ─► index.html  ┐
//!  GET /console/app.js        ─► the script  ├─ with CONTENT_SECURITY_POLICY,
//!  GET /console/style.css     ─► the styles  │  nosniff, no referrer, no-store
//!  GET /console/icon.svg      ─► the icon    ┘
//! ```
//!
//! Span data is untrusted: the script renders every value with
//! `textContent` and DOM calls, never `innerHTML`, and the policy below lets
//! the page run only these embedded files (no inline script, no `eval`, no
//! other origin), so even a rendering mistake could not run a span's
//! `<script>`. The API key lives in the tab's `sessionStorage` and goes out
//! only in the `Authorization` header; the page never puts it in a URL.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// What the console's pages may load: only its own files; scripts from
/// files only (no inline script or `eval`), requests only to this server,
/// no frames, no forms submitted anywhere, no `<base>` rewriting.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'none'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX_HTML: &str = include_str!("../console/index.html");
const APP_JS: &str = include_str!("../console/app.js");
const STYLE_CSS: &str = include_str!("../console/style.css");
const ICON_SVG: &str = include_str!("../console/icon.svg");

/// One embedded file with the console's headers.
fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // The files change with the binary; a stale script after an upgrade
    // would talk to routes that changed.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `GET /`: the console's page.
pub(crate) async fn index() -> Response {
    asset(INDEX_HTML, "text/html; charset=utf-8")
}

/// `GET /console/{file}`: the page's script, styles and icon.
pub(crate) async fn file(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        "icon.svg" => asset(ICON_SVG, "image/svg+xml"),
        _ => ApiError::not_found(format!("the console has no file `{name}`")).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_embedded_files_and_no_inline_script() {
        // Every script and stylesheet the page names is one this module
        // serves, and the page has no inline script or style to be refused.
        for name in ["app.js", "style.css", "icon.svg"] {
            assert!(
                INDEX_HTML.contains(&format!("/console/{name}")),
                "index.html does not load /console/{name}"
            );
        }
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert!(INDEX_HTML.contains(r#"<script src="/console/app.js""#));
        assert!(!INDEX_HTML.contains("style="));
        assert!(!INDEX_HTML.contains("<style"));
        // No inline event handler (` onclick=`, ` onload=`, ...).
        let handler = INDEX_HTML.match_indices(" on").any(|(at, _)| {
            let rest = &INDEX_HTML[at + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].starts_with('=')
        });
        assert!(!handler, "index.html has an inline event handler");
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }

    #[test]
    fn the_script_never_parses_markup_from_strings() {
        for forbidden in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            "localStorage",
        ] {
            assert!(
                !APP_JS.contains(forbidden),
                "app.js uses `{forbidden}`: render data with textContent and DOM calls"
            );
        }
    }
}
