//! Export URL to an object store and a key prefix.
//!
//! | URL | store |
//! |---|---|
//! | `s3://bucket/prefix` | S3 or an S3-compatible server: `AWS_*` environment, then [`TargetOptions`] |
//! | `gs://bucket/prefix` | Google Cloud Storage: `GOOGLE_*` environment (a service-account key file or key, or application default credentials), [`TargetOptions::endpoint`] as the base URL |
//! | `az://container/prefix`, `abfs[s]://…`, `azure://…`, `adl://…` | Azure Blob Storage: `AZURE_STORAGE_CONNECTION_STRING`, then the other `AZURE_*` variables (account and key, SAS token, …), [`TargetOptions::endpoint`] as the account URL |
//! | `https://…` | object_store's `parse_url_opts`, with the environment as options |
//! | `file:///abs/path`, `/abs/path`, `rel/path` | the local file system (relative to the working directory) |
//! | `memory://prefix` | a new in-memory store, for tests |
//!
//! Credentials never appear in errors: URLs are shown without user info.

use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AwsCredentialProvider};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::GoogleCloudStorageBuilder;
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
    /// Told the key of every data file as soon as it is complete.
    on_complete: Option<CompletionHook>,
    /// Asked before each data file is made visible.
    guard: Option<CompletionGuard>,
}

/// What an [`ExportTarget`] asks before it makes a data file visible: an
/// error aborts the file's upload and fails the write (a cluster task
/// whose job was cancelled stops before it completes another file).
#[derive(Clone)]
pub struct CompletionGuard(
    pub Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), String>> + Send + Sync>,
);

impl std::fmt::Debug for CompletionGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompletionGuard")
    }
}

/// What an [`ExportTarget`] calls with the key of each completed data file
/// (for example, to start flushing a local file to disk while the next
/// ones are written). It runs on the writer's task: it must not block.
#[derive(Clone)]
pub struct CompletionHook(pub Arc<dyn Fn(&str) + Send + Sync>);

impl std::fmt::Debug for CompletionHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CompletionHook")
    }
}

impl ExportTarget {
    /// A target over any store (for example a shared in-memory store).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: Path) -> Self {
        Self {
            store,
            prefix,
            on_complete: None,
            guard: None,
        }
    }

    /// This target, asking `guard` before it completes each file.
    #[must_use]
    pub fn guarded(mut self, guard: CompletionGuard) -> Self {
        self.guard = Some(guard);
        self
    }

    /// Whether the next file may be completed (see [`CompletionGuard`]).
    pub(crate) async fn may_complete(&self) -> Result<(), SinkError> {
        match &self.guard {
            Some(guard) => (guard.0)().await.map_err(SinkError::Internal),
            None => Ok(()),
        }
    }

    /// This target, calling `hook` with the key of every completed file.
    #[must_use]
    pub fn on_complete(mut self, hook: CompletionHook) -> Self {
        self.on_complete = Some(hook);
        self
    }

    pub(crate) fn completed(&self, key: &str) {
        if let Some(hook) = &self.on_complete {
            (hook.0)(key);
        }
    }
}

/// Connection options for S3 and S3-compatible servers; each set field
/// overrides the `AWS_*` environment (`AWS_ENDPOINT`, `AWS_ALLOW_HTTP`,
/// `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
/// `AWS_SESSION_TOKEN`, …) that is read first unless `ignore_env` is set.
#[derive(Clone, Default)]
pub struct TargetOptions {
    /// Endpoint of an S3-compatible server, e.g. `http://127.0.0.1:9100`
    /// (requests then use path-style URLs); for `gs://`, the base URL of the
    /// GCS API (an emulator's, e.g. `http://127.0.0.1:4443`); for Azure, the
    /// account's blob URL (e.g. Azurite's
    /// `http://127.0.0.1:10000/devstoreaccount1`).
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
                .with_retry(bounded_retries());
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
        "gs" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no bucket".to_owned()));
            }
            let mut builder = if options.ignore_env {
                GoogleCloudStorageBuilder::new()
            } else {
                GoogleCloudStorageBuilder::from_env()
            };
            builder = builder
                .with_url(parsed.as_str())
                .with_retry(bounded_retries());
            if let Some(endpoint) = &options.endpoint {
                builder = builder.with_base_url(endpoint.trim_end_matches('/'));
            }
            let store = builder.build().map_err(|source| SinkError::OpenStore {
                url: shown.clone(),
                source,
            })?;
            let prefix = Path::from_url_path(parsed.path()).map_err(|e| invalid(e.to_string()))?;
            Ok(ExportTarget::new(Arc::new(store), prefix))
        }
        "az" | "abfs" | "abfss" | "azure" | "adl" => {
            if parsed.host_str().is_none_or(str::is_empty) {
                return Err(invalid("no container".to_owned()));
            }
            if parsed.password().is_some() {
                return Err(invalid(
                    "a password in the URL is not allowed; give the key in `AZURE_STORAGE_ACCOUNT_KEY`"
                        .to_owned(),
                ));
            }
            let mut builder = if options.ignore_env {
                MicrosoftAzureBuilder::new()
            } else {
                MicrosoftAzureBuilder::from_env()
            };
            if !options.ignore_env
                && let Some(text) = env_text(AZURE_CONNECTION_STRING_VARIABLE)
            {
                builder = with_connection_string(builder, &text).map_err(|reason| {
                    invalid(format!("`{AZURE_CONNECTION_STRING_VARIABLE}`: {reason}"))
                })?;
            }
            builder = builder
                .with_url(parsed.as_str())
                .with_retry(bounded_retries());
            if let Some(endpoint) = &options.endpoint {
                builder = with_azure_endpoint(builder, endpoint);
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

/// Retries of every request to a cloud store: bounded, so that a server
/// that stays down fails the run within about two minutes rather than
/// hanging it.
fn bounded_retries() -> object_store::RetryConfig {
    object_store::RetryConfig {
        max_retries: crate::faults::store_retries(10),
        retry_timeout: std::time::Duration::from_secs(120),
        ..object_store::RetryConfig::default()
    }
}

/// The variable of an Azure Storage connection string.
pub const AZURE_CONNECTION_STRING_VARIABLE: &str = "AZURE_STORAGE_CONNECTION_STRING";

fn env_text(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// An Azure account URL as the endpoint: plain `http://` is allowed when
/// given so (an emulator). Without an account set, it is the URL's first
/// path segment (an emulator's `http://host:port/account`) or its host's
/// first label (`https://account.blob.core.windows.net`).
fn with_azure_endpoint(
    mut builder: MicrosoftAzureBuilder,
    endpoint: &str,
) -> MicrosoftAzureBuilder {
    let endpoint = endpoint.trim_end_matches('/');
    if builder
        .get_config_value(&AzureConfigKey::AccountName)
        .is_none()
        && let Some(account) = account_of_endpoint(endpoint)
    {
        builder = builder.with_account(account);
    }
    let builder = builder.with_endpoint(endpoint.to_owned());
    if endpoint.starts_with("http://") {
        builder.with_allow_http(true)
    } else {
        builder
    }
}

/// The parts of an Azure Storage connection string
/// (`AccountName=…;AccountKey=…;BlobEndpoint=…` or `…;SharedAccessSignature=…`),
/// keys matched without case. Values are secrets and never appear in errors.
#[derive(Default, PartialEq, Eq)]
pub struct AzureConnectionString {
    /// `AccountName`.
    pub account_name: Option<String>,
    /// `AccountKey`; never printed.
    pub account_key: Option<String>,
    /// `SharedAccessSignature`; never printed.
    pub shared_access_signature: Option<String>,
    /// `BlobEndpoint`, or the URL built from `DefaultEndpointsProtocol`,
    /// `AccountName` and `EndpointSuffix`.
    pub blob_endpoint: Option<String>,
    /// `UseDevelopmentStorage=true`: the emulator's account at
    /// `AZURITE_BLOB_STORAGE_URL` (object_store's default
    /// `http://127.0.0.1:10000`).
    pub use_development_storage: bool,
}

impl std::fmt::Debug for AzureConnectionString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureConnectionString")
            .field("account_name", &self.account_name)
            .field(
                "account_key",
                &self.account_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "shared_access_signature",
                &self.shared_access_signature.as_ref().map(|_| "<redacted>"),
            )
            .field("blob_endpoint", &self.blob_endpoint)
            .field("use_development_storage", &self.use_development_storage)
            .finish()
    }
}

impl AzureConnectionString {
    /// Parse `text`; an error names the part, never a value.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parsed = Self::default();
        let mut protocol = None;
        let mut suffix = None;
        for part in text.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((key, value)) = part.split_once('=') else {
                return Err("a part without `=` (expected `Key=value;…`)".to_owned());
            };
            let value = value.trim().to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "accountname" => parsed.account_name = Some(value),
                "accountkey" => parsed.account_key = Some(value),
                "sharedaccesssignature" => parsed.shared_access_signature = Some(value),
                "blobendpoint" => parsed.blob_endpoint = Some(value),
                "defaultendpointsprotocol" => protocol = Some(value),
                "endpointsuffix" => suffix = Some(value),
                "usedevelopmentstorage" => {
                    parsed.use_development_storage = value.eq_ignore_ascii_case("true");
                }
                // Endpoints of the other services (queues, tables, files).
                _ => {}
            }
        }
        if parsed.blob_endpoint.is_none()
            && let (Some(account), Some(suffix)) = (&parsed.account_name, suffix)
        {
            let protocol = protocol.unwrap_or_else(|| "https".to_owned());
            parsed.blob_endpoint = Some(format!("{protocol}://{account}.blob.{suffix}"));
        }
        if !parsed.use_development_storage
            && parsed.account_key.is_none()
            && parsed.shared_access_signature.is_none()
        {
            return Err("neither `AccountKey` nor `SharedAccessSignature` is given".to_owned());
        }
        if !parsed.use_development_storage
            && parsed.account_name.is_none()
            && parsed.blob_endpoint.is_none()
        {
            return Err("neither `AccountName` nor `BlobEndpoint` is given".to_owned());
        }
        Ok(parsed)
    }
}

fn with_connection_string(
    mut builder: MicrosoftAzureBuilder,
    text: &str,
) -> Result<MicrosoftAzureBuilder, String> {
    let parsed = AzureConnectionString::parse(text)?;
    if parsed.use_development_storage {
        builder = builder.with_use_emulator(true);
    }
    if let Some(account) = &parsed.account_name {
        builder = builder.with_account(account);
    }
    if let Some(key) = &parsed.account_key {
        builder = builder.with_access_key(key);
    }
    if let Some(sas) = &parsed.shared_access_signature {
        builder = builder.with_config(AzureConfigKey::SasKey, sas);
    }
    if let Some(endpoint) = &parsed.blob_endpoint {
        if parsed.account_name.is_none() && account_of_endpoint(endpoint).is_none() {
            return Err("`BlobEndpoint` names no account".to_owned());
        }
        builder = with_azure_endpoint(builder, endpoint);
    }
    Ok(builder)
}

fn account_of_endpoint(endpoint: &str) -> Option<String> {
    let url = Url::parse(endpoint).ok()?;
    url.path_segments()
        .and_then(|mut s| s.next().filter(|s| !s.is_empty()).map(str::to_owned))
        .or_else(|| {
            url.host_str()
                .filter(|h| h.contains(".blob.") || h.contains(".dfs."))
                .and_then(|h| h.split('.').next())
                .map(str::to_owned)
        })
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

    #[test]
    fn cloud_schemes() {
        let target = target_from_url(
            "gs://bucket/some/prefix",
            &TargetOptions {
                endpoint: Some("http://127.0.0.1:4443".into()),
                ..no_env()
            },
        )
        .unwrap();
        assert_eq!(target.prefix.as_ref(), "some/prefix");
        let err = target_from_url("gs:///x", &no_env()).unwrap_err();
        assert!(err.to_string().contains("no bucket"), "{err}");
        let options = TargetOptions {
            endpoint: Some("http://127.0.0.1:10000/devstoreaccount1".into()),
            ..no_env()
        };
        for url in [
            "az://container/a/b",
            "abfss://container@account.dfs.core.windows.net/a/b",
        ] {
            let target = target_from_url(url, &options).unwrap();
            assert_eq!(target.prefix.as_ref(), "a/b", "{url}");
        }
        let err = target_from_url("abfss://c:SECRET@account.dfs.core.windows.net/x", &options)
            .unwrap_err();
        assert!(!err.to_string().contains("SECRET"), "{err}");
    }

    #[test]
    fn connection_strings() {
        let parsed = AzureConnectionString::parse(
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=S3CRET==;EndpointSuffix=core.windows.net",
        )
        .unwrap();
        assert_eq!(parsed.account_name.as_deref(), Some("acct"));
        assert_eq!(parsed.account_key.as_deref(), Some("S3CRET=="));
        assert_eq!(
            parsed.blob_endpoint.as_deref(),
            Some("https://acct.blob.core.windows.net")
        );
        assert!(!format!("{parsed:?}").contains("S3CRET"));
        let parsed = AzureConnectionString::parse(
            "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=2025&sig=SIG",
        )
        .unwrap();
        assert_eq!(
            parsed.shared_access_signature.as_deref(),
            Some("sv=2025&sig=SIG")
        );
        assert!(
            AzureConnectionString::parse("UseDevelopmentStorage=true")
                .unwrap()
                .use_development_storage
        );
        for bad in ["AccountName=acct", "AccountKey=K3Y", "garbage"] {
            let err = AzureConnectionString::parse(bad).unwrap_err();
            assert!(!err.contains("K3Y") && !err.contains("acct"), "{err}");
        }
    }
}
