//! Export URL to an object store and a key prefix.
//!
//! | URL | store |
//! |---|---|
//! | `s3://bucket/prefix` | S3 or an S3-compatible server: `AWS_*` environment, then [`TargetOptions`] |
//! | `gs://…`, `az://…`, `abfss://…`, `https://…` | object_store's `parse_url_opts`, with the environment as options |
//! | `file:///abs/path`, `/abs/path`, `rel/path` | the local file system (relative to the working directory) |
//! | `memory://prefix` | a new in-memory store, for tests |
//!
//! Credentials never appear in errors: URLs are shown without user info.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AwsCredentialProvider};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path;
use url::Url;

use super::error::SinkError;

/// Where an export writes: a store and the key prefix of every file.
#[derive(Debug, Clone)]
pub struct ExportTarget {
    /// The object store.
    pub store: Arc<dyn ObjectStore>,
    /// Key prefix, without leading or trailing `/`; may be empty.
    pub prefix: Path,
}

impl ExportTarget {
    /// A target over any store (for example a shared in-memory store).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self { store, prefix }
    }
}

/// Connection options for S3 and S3-compatible servers; each set field
/// overrides the `AWS_*` environment (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, …) that is read first unless `ignore_env` is set.
#[derive(Clone, Default)]
pub struct TargetOptions {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9100`.
    /// Requests then use path-style URLs.
    pub endpoint: Option<String>,
    /// Allow plain `http://` endpoints.
    pub allow_http: Option<bool>,
    /// AWS region, e.g. `us-east-1`.
    pub region: Option<String>,
    /// Static access key id.
    pub access_key_id: Option<String>,
    /// Static secret access key; never printed.
    pub secret_access_key: Option<String>,
    /// Session token of temporary credentials; never printed.
    pub session_token: Option<String>,
    /// A credential provider (for example STS role assumption with an
    /// external id); takes precedence over static keys.
    pub credentials: Option<AwsCredentialProvider>,
    /// Do not read the process environment.
    pub ignore_env: bool,
}

impl std::fmt::Debug for TargetOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |value: &Option<String>| value.as_ref().map(|_| "<redacted>");
        f.debug_struct("TargetOptions")
            .field("endpoint", &self.endpoint)
            .field("allow_http", &self.allow_http)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("session_token", &redacted(&self.session_token))
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<provider>"),
            )
            .field("ignore_env", &self.ignore_env)
            .finish()
    }
}

/// Build the store and prefix of an export URL (see the module docs for the
/// schemes). Nothing is requested from the store.
pub fn target_from_url(url: &str, options: &TargetOptions) -> Result<ExportTarget, SinkError> {
    if !url.contains("://") {
        return local_target(url, url);
    }
    let parsed = Url::parse(url).map_err(|e| SinkError::InvalidUrl {
        url: redact_url_text(url),
        reason: e.to_string(),
    })?;
    let shown = redact_url(&parsed);
    let invalid = |reason: String| SinkError::InvalidUrl {
        url: shown.clone(),
        reason,
    };
    match parsed.scheme() {
        "file" => {
            let path = parsed
                .to_file_path()
                .map_err(|()| invalid("not a local absolute path".to_owned()))?;
            local_target(&path.to_string_lossy(), &shown)
        }
        "memory" => {
            let rest = &url["memory://".len()..];
            let prefix = Path::parse(rest).map_err(|e| invalid(e.to_string()))?;
            Ok(ExportTarget::new(Arc::new(InMemory::new()), prefix))
        }
        "s3" | "s3a" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no bucket".to_owned()));
            }
            let mut builder = if options.ignore_env {
                AmazonS3Builder::new()
            } else {
                AmazonS3Builder::from_env()
            };
            builder = builder
                .with_url(parsed.as_str())
                .with_retry(object_store::RetryConfig {
                    // Bounded: a server that stays down fails the run within
                    // about two minutes rather than hanging it.
                    max_retries: crate::faults::store_retries(10),
                    retry_timeout: std::time::Duration::from_secs(120),
                    ..object_store::RetryConfig::default()
                });
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            if let Some(allow_http) = options.allow_http {
                builder = builder.with_allow_http(allow_http);
            }
            if let Some(region) = &options.region {
                builder = builder.with_region(region);
            }
            if let Some(key) = &options.access_key_id {
                builder = builder.with_access_key_id(key);
            }
            if let Some(secret) = &options.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            if let Some(token) = &options.session_token {
                builder = builder.with_token(token);
            }
            if let Some(credentials) = &options.credentials {
                builder = builder.with_credentials(Arc::clone(credentials));
            }
            let store = builder.build().map_err(|source| SinkError::OpenStore {
                url: shown.clone(),
                source,
            })?;
            let prefix = Path::from_url_path(parsed.path()).map_err(|e| invalid(e.to_string()))?;
            Ok(ExportTarget::new(Arc::new(store), prefix))
        }
        _ => {
            let env: Vec<(String, String)> = if options.ignore_env {
                Vec::new()
            } else {
                std::env::vars().collect()
            };
            let (store, prefix) = object_store::parse_url_opts(&parsed, env).map_err(|source| {
                SinkError::OpenStore {
                    url: shown.clone(),
                    source,
                }
            })?;
            Ok(ExportTarget::new(Arc::from(store), prefix))
        }
    }
}

fn local_target(path: &str, shown: &str) -> Result<ExportTarget, SinkError> {
    let invalid = |reason: String| SinkError::InvalidUrl {
        url: shown.to_owned(),
        reason,
    };
    if path.is_empty() {
        return Err(invalid("empty path".to_owned()));
    }
    let absolute = std::path::absolute(path).map_err(|e| invalid(e.to_string()))?;
    let prefix = Path::from_absolute_path(&absolute).map_err(|e| invalid(e.to_string()))?;
    Ok(ExportTarget::new(Arc::new(LocalFileSystem::new()), prefix))
}

fn redact_url(url: &Url) -> String {
    let mut shown = url.clone();
    // Both fail only for URLs that cannot have user info at all.
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

/// A URL that does not parse: keep only what precedes any user info.
fn redact_url_text(url: &str) -> String {
    match url.split_once('@') {
        Some((before, after)) => match before.split_once("://") {
            Some((scheme, _)) => format!("{scheme}://…@{after}"),
            None => format!("…@{after}"),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> TargetOptions {
        TargetOptions {
            ignore_env: true,
            ..TargetOptions::default()
        }
    }

    #[test]
    fn schemes() {
        let target = target_from_url("memory://exports/a", &no_env()).unwrap();
        assert_eq!(target.prefix.as_ref(), "exports/a");
        let target = target_from_url("file:///tmp/spanlake-x/out/", &no_env()).unwrap();
        assert_eq!(target.prefix.as_ref(), "tmp/spanlake-x/out");
        let target = target_from_url("relative/dir", &no_env()).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            target.prefix.as_ref().ends_with(&format!(
                "{}/relative/dir",
                cwd.file_name().unwrap().to_string_lossy()
            )),
            "{}",
            target.prefix
        );
        let target = target_from_url(
            "s3://bucket/some/prefix",
            &TargetOptions {
                region: Some("us-east-1".into()),
                ..no_env()
            },
        )
        .unwrap();
        assert_eq!(target.prefix.as_ref(), "some/prefix");
    }

    #[test]
    fn errors_hide_user_info() {
        let err = target_from_url("s3://AKIA:SECRET@/x", &no_env()).unwrap_err();
        let text = err.to_string();
        assert!(!text.contains("SECRET") && !text.contains("AKIA"), "{text}");
        let err = target_from_url("s3://", &no_env()).unwrap_err();
        assert!(matches!(err, SinkError::InvalidUrl { .. }), "{err}");
        let options = TargetOptions {
            secret_access_key: Some("SECRET".into()),
            ..no_env()
        };
        assert!(!format!("{options:?}").contains("SECRET"));
    }
}
