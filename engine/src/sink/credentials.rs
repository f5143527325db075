//! Credentials of exports: IAM role assumption with an external id.
//!
//! ```text
//!  base credentials (object_store's chain: AWS_* environment / static keys,
//!  web identity, ECS, instance metadata)
//!     ─► STS AssumeRole (RoleArn, RoleSessionName, ExternalId, DurationSeconds),
//!        a form POST signed with SigV4 by object_store's AwsAuthorizer
//!     ─► temporary credentials, cached; refreshed 5 minutes before they expire
//! ```
//!
//! The external id of an automation is `spanlake:<org_id>:<project_id>:<automation_id>`
//! ([`external_id`]); a role's trust policy names it in an `sts:ExternalId`
//! condition (or `spanlake:<org_id>:*` with `StringLike`). The external id is
//! not a secret and is shown to users; keys and session tokens never appear in
//! errors or `Debug` output.
//!
//! The STS endpoint is `AWS_ENDPOINT_URL_STS` when set, else the export's
//! endpoint (an S3-compatible server such as moto serves STS on the same
//! port), else `AWS_ENDPOINT_URL`, else `https://sts.<region>.amazonaws.com`.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use object_store::aws::{AmazonS3Builder, AwsAuthorizer, AwsCredential, AwsCredentialProvider};
use object_store::client::{
    HttpClient, HttpConnector, HttpRequest, HttpRequestBody, ReqwestConnector,
};
use object_store::{ClientOptions, CredentialProvider, HeaderValue};

/// Credentials are renewed this long before they expire.
pub const REFRESH_BEFORE_EXPIRY: Duration = Duration::from_secs(5 * 60);

/// Lifetime asked of STS (one hour, the default maximum of a role session).
pub const DEFAULT_SESSION_DURATION: Duration = Duration::from_secs(3600);

/// The external id of an automation: `spanlake:<org_id>:<project_id>:<automation_id>`.
pub fn external_id(org_id: &str, project_id: &str, automation_id: &str) -> String {
    format!("spanlake:{org_id}:{project_id}:{automation_id}")
}

/// The role session name of an external id: `spanlake-<automation id>` (the
/// last segment of the external id, restricted to what STS accepts), or
/// `spanlake-export` without one.
pub fn session_name(external_id: Option<&str>) -> String {
    let tail: String = external_id
        .and_then(|id| id.rsplit(':').next())
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "+=,.@-_".contains(*c))
        .collect();
    if tail.is_empty() {
        "spanlake-export".to_string()
    } else {
        // RoleSessionName is at most 64 characters.
        format!("spanlake-{tail}").chars().take(64).collect()
    }
}

/// What to assume, and where.
#[derive(Debug, Clone, Default)]
pub struct AssumeRoleOptions {
    /// The role, e.g. `arn:aws:iam::123456789012:role/spanlake-export`.
    pub role_arn: String,
    /// The external id (see [`external_id`]); none omits it.
    pub external_id: Option<String>,
    /// Session name; default [`session_name`] of the external id.
    pub session_name: Option<String>,
    /// Session lifetime; default [`DEFAULT_SESSION_DURATION`].
    pub duration: Option<Duration>,
    /// Region of the STS endpoint and its signature; default `AWS_REGION`,
    /// `AWS_DEFAULT_REGION`, then `us-east-1`.
    pub region: Option<String>,
    /// The export's S3-compatible endpoint, used for STS too unless
    /// `AWS_ENDPOINT_URL_STS` is set.
    pub endpoint: Option<String>,
    /// Base credentials; default object_store's chain from the environment.
    pub base: Option<AwsCredentialProvider>,
    /// Do not read the process environment (tests).
    pub ignore_env: bool,
}

/// Why a role could not be assumed. Its text names the role, the external
/// id and the likely fix, never a key or token.
#[derive(Debug)]
pub struct AssumeRoleError {
    role_arn: String,
    external_id: Option<String>,
    kind: AssumeRoleErrorKind,
}

/// The kinds of [`AssumeRoleError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssumeRoleErrorKind {
    /// No base credentials to sign the request with.
    BaseCredentials(String),
    /// The request did not get an answer.
    Transport {
        /// STS endpoint.
        endpoint: String,
        /// What failed.
        message: String,
    },
    /// STS answered with an error.
    Rejected {
        /// HTTP status.
        status: u16,
        /// STS error code, e.g. `AccessDenied` (`HTTP <status>` when the
        /// reply has none that looks like an AWS code).
        code: String,
        /// STS error message, for programs; never shown in the error's
        /// text, which users of a shared server see.
        message: String,
    },
    /// STS answered something that is not an AssumeRole reply (what is
    /// missing, never the reply's text).
    BadReply(String),
}

impl AssumeRoleError {
    /// What went wrong.
    pub fn kind(&self) -> &AssumeRoleErrorKind {
        &self.kind
    }

    /// Whether asking again unchanged may succeed: STS was not reached, or
    /// answered 5xx or 429. A refusal (wrong trust policy, external id,
    /// permissions) or missing base credentials will not change by itself.
    pub fn is_transient(&self) -> bool {
        match &self.kind {
            AssumeRoleErrorKind::Transport { .. } => true,
            AssumeRoleErrorKind::Rejected { status, .. } => *status >= 500 || *status == 429,
            AssumeRoleErrorKind::BaseCredentials(_) | AssumeRoleErrorKind::BadReply(_) => false,
        }
    }

    /// The HTTP status of an STS rejection.
    pub fn status(&self) -> Option<u16> {
        match &self.kind {
            AssumeRoleErrorKind::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The most likely fix.
    pub fn likely_fix(&self) -> String {
        let trust = || {
            match &self.external_id {
            Some(id) => format!(
                "the role's trust policy must allow this account/user with sts:ExternalId = `{id}`, and the user needs sts:AssumeRole on the role"
            ),
            None => "the role's trust policy must allow this account/user, and the user needs sts:AssumeRole on the role".to_string(),
        }
        };
        match &self.kind {
            AssumeRoleErrorKind::BaseCredentials(_) => {
                "provide base credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a web identity, or an instance role".to_string()
            }
            AssumeRoleErrorKind::Transport { .. } => {
                "check the network and the STS endpoint (AWS_ENDPOINT_URL_STS, the export's endpoint, or AWS_REGION)".to_string()
            }
            AssumeRoleErrorKind::Rejected { code, .. }
                if matches!(
                    code.as_str(),
                    "InvalidClientTokenId" | "SignatureDoesNotMatch" | "ExpiredToken" | "IncompleteSignature"
                ) =>
            {
                "the base access key is unknown, its secret is wrong, or its session token expired".to_string()
            }
            AssumeRoleErrorKind::Rejected { code, .. } if code == "ValidationError" => {
                "check the role ARN (arn:aws:iam::<account>:role/<name>)".to_string()
            }
            AssumeRoleErrorKind::Rejected { code, .. } if code == "RegionDisabledException" => {
                "activate STS in this region or set AWS_REGION to an active one".to_string()
            }
            AssumeRoleErrorKind::Rejected { status, code, .. }
                if *status == 403 || code == "AccessDenied" =>
            {
                trust()
            }
            AssumeRoleErrorKind::Rejected { .. } | AssumeRoleErrorKind::BadReply(_) => {
                format!("check the STS endpoint and the role; {}", trust())
            }
        }
    }
}

impl std::fmt::Display for AssumeRoleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "assume role `{}`", self.role_arn)?;
        if let Some(id) = &self.external_id {
            write!(f, " with external id `{id}`")?;
        }
        write!(f, " failed: ")?;
        match &self.kind {
            AssumeRoleErrorKind::BaseCredentials(message) => {
                write!(f, "no base credentials: {message}")?;
            }
            AssumeRoleErrorKind::Transport { endpoint, message } => {
                write!(f, "STS at {endpoint} did not answer: {message}")?;
            }
            // The reply's message is not shown: it is the STS server's
            // text (status and code say what happened).
            AssumeRoleErrorKind::Rejected { status, code, .. } => {
                write!(f, "STS answered {status} {code}")?;
            }
            AssumeRoleErrorKind::BadReply(message) => {
                write!(f, "unexpected STS reply: {message}")?;
            }
        }
        write!(f, "; {}", self.likely_fix())
    }
}

impl std::error::Error for AssumeRoleError {}

struct Cached {
    credential: Arc<AwsCredential>,
    expires: DateTime<Utc>,
}

/// An object_store [`CredentialProvider`] that assumes an IAM role through
/// STS with an external id, caches the temporary credentials and renews them
/// [`REFRESH_BEFORE_EXPIRY`] before they expire. Cheap to share (`Arc`);
/// concurrent callers wait for one renewal.
pub struct AssumeRoleProvider {
    role_arn: String,
    external_id: Option<String>,
    session_name: String,
    duration: Duration,
    region: String,
    endpoint: String,
    base: AwsCredentialProvider,
    client: HttpClient,
    cache: tokio::sync::Mutex<Option<Cached>>,
}

impl std::fmt::Debug for AssumeRoleProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssumeRoleProvider")
            .field("role_arn", &self.role_arn)
            .field("external_id", &self.external_id)
            .field("session_name", &self.session_name)
            .field("duration", &self.duration)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

fn env(name: &str, ignore_env: bool) -> Option<String> {
    if ignore_env {
        return None;
    }
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn resolve_region(region: Option<&str>, ignore_env: bool) -> String {
    region
        .map(str::to_string)
        .or_else(|| env("AWS_REGION", ignore_env))
        .or_else(|| env("AWS_DEFAULT_REGION", ignore_env))
        .unwrap_or_else(|| "us-east-1".to_string())
}

/// The STS endpoint a provider with this `region` and export `endpoint`
/// calls (see the module docs), without a trailing `/`.
pub fn sts_endpoint(region_name: Option<&str>, endpoint: Option<&str>, ignore_env: bool) -> String {
    env("AWS_ENDPOINT_URL_STS", ignore_env)
        .or_else(|| endpoint.map(str::to_string))
        .or_else(|| env("AWS_ENDPOINT_URL", ignore_env))
        .unwrap_or_else(|| {
            format!(
                "https://sts.{}.amazonaws.com",
                resolve_region(region_name, ignore_env)
            )
        })
        .trim_end_matches('/')
        .to_string()
}

impl AssumeRoleProvider {
    /// Build the provider; nothing is requested until the first credential.
    pub fn new(options: AssumeRoleOptions) -> Result<Self, AssumeRoleError> {
        let error = |kind| AssumeRoleError {
            role_arn: options.role_arn.clone(),
            external_id: options.external_id.clone(),
            kind,
        };
        let region = resolve_region(options.region.as_deref(), options.ignore_env);
        let endpoint = sts_endpoint(
            options.region.as_deref(),
            options.endpoint.as_deref(),
            options.ignore_env,
        );
        let base = match options.base.clone() {
            Some(base) => base,
            None => {
                // object_store's own chain; the bucket is a placeholder, no
                // request is made while building.
                let builder = if options.ignore_env {
                    AmazonS3Builder::new()
                } else {
                    AmazonS3Builder::from_env()
                };
                let store = builder
                    .with_bucket_name("spanlake-sts-base")
                    .with_region(&region)
                    .build()
                    .map_err(|e| error(AssumeRoleErrorKind::BaseCredentials(e.to_string())))?;
                Arc::clone(store.credentials())
            }
        };
        let client = ReqwestConnector::default()
            .connect(
                &ClientOptions::new()
                    .with_allow_http(endpoint.starts_with("http://"))
                    .with_timeout(Duration::from_secs(30)),
            )
            .map_err(|e| {
                error(AssumeRoleErrorKind::Transport {
                    endpoint: endpoint.clone(),
                    message: e.to_string(),
                })
            })?;
        Ok(Self {
            session_name: options
                .session_name
                .clone()
                .unwrap_or_else(|| session_name(options.external_id.as_deref())),
            duration: options.duration.unwrap_or(DEFAULT_SESSION_DURATION),
            role_arn: options.role_arn,
            external_id: options.external_id,
            region,
            endpoint,
            base,
            client,
            cache: tokio::sync::Mutex::new(None),
        })
    }

    /// The role.
    pub fn role_arn(&self) -> &str {
        &self.role_arn
    }

    /// The external id sent.
    pub fn external_id(&self) -> Option<&str> {
        self.external_id.as_deref()
    }

    /// The STS endpoint.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn error(&self, kind: AssumeRoleErrorKind) -> AssumeRoleError {
        AssumeRoleError {
            role_arn: self.role_arn.clone(),
            external_id: self.external_id.clone(),
            kind,
        }
    }

    /// The current temporary credentials: cached ones while they are valid
    /// for more than [`REFRESH_BEFORE_EXPIRY`], else new ones from STS. When
    /// a renewal fails but the cached ones have not expired yet, those are
    /// returned.
    pub async fn credential(&self) -> Result<Arc<AwsCredential>, AssumeRoleError> {
        let mut cache = self.cache.lock().await;
        // The system's clock, not the store's (crate::clock): STS states the
        // expiry in the world's time.
        let now = Utc::now();
        if let Some(cached) = cache.as_ref() {
            let margin = chrono::Duration::from_std(REFRESH_BEFORE_EXPIRY).unwrap_or_default();
            if cached.expires - margin > now {
                return Ok(Arc::clone(&cached.credential));
            }
        }
        match self.assume().await {
            Ok(fresh) => {
                let credential = Arc::clone(&fresh.credential);
                *cache = Some(fresh);
                Ok(credential)
            }
            Err(e) => match cache.as_ref() {
                Some(cached) if cached.expires > now + chrono::Duration::seconds(30) => {
                    tracing::warn!(role_arn = %self.role_arn, error = %e, "renewing assumed-role credentials failed; using the cached ones until they expire");
                    Ok(Arc::clone(&cached.credential))
                }
                _ => Err(e),
            },
        }
    }

    /// Call STS, with up to two retries on transport errors, throttling and
    /// server errors.
    async fn assume(&self) -> Result<Cached, AssumeRoleError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.assume_once().await {
                Err(e) if attempt < 3 && retryable(&e.kind) => {
                    tracing::debug!(role_arn = %self.role_arn, attempt, error = %e, "retrying AssumeRole");
                    tokio::time::sleep(Duration::from_millis(200 * (1 << attempt))).await;
                }
                other => return other,
            }
        }
    }

    async fn assume_once(&self) -> Result<Cached, AssumeRoleError> {
        let base = self
            .base
            .get_credential()
            .await
            .map_err(|e| self.error(AssumeRoleErrorKind::BaseCredentials(e.to_string())))?;
        let body = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("Action", "AssumeRole")
                .append_pair("Version", "2011-06-15")
                .append_pair("RoleArn", &self.role_arn)
                .append_pair("RoleSessionName", &self.session_name)
                .append_pair("DurationSeconds", &self.duration.as_secs().to_string());
            if let Some(id) = &self.external_id {
                form.append_pair("ExternalId", id);
            }
            form.finish()
        };
        let transport = |message: String| {
            self.error(AssumeRoleErrorKind::Transport {
                endpoint: self.endpoint.clone(),
                message,
            })
        };
        let mut request = HttpRequest::new(HttpRequestBody::from(body));
        *request.method_mut() = "POST".parse().map_err(|_| transport("bad method".into()))?;
        *request.uri_mut() = format!("{}/", self.endpoint)
            .parse()
            .map_err(|e| transport(format!("bad endpoint URL: {e}")))?;
        request.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("application/x-www-form-urlencoded; charset=utf-8"),
        );
        request
            .headers_mut()
            .insert("accept", HeaderValue::from_static("application/xml"));
        AwsAuthorizer::new(&base, "sts", &self.region).authorize(&mut request, None);
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|e| transport(e.to_string()))?;
        let status = response.status().as_u16();
        let bytes = response
            .into_body()
            .bytes()
            .await
            .map_err(|e| transport(e.to_string()))?;
        let text = String::from_utf8_lossy(&bytes);
        if !(200..300).contains(&status) {
            let code = crate::sink::summary::aws_error_code(&text)
                .unwrap_or_else(|| format!("HTTP {status}"));
            let message = xml_text(&text, "Message").unwrap_or_default();
            return Err(self.error(AssumeRoleErrorKind::Rejected {
                status,
                code,
                message,
            }));
        }
        parse_credentials(&text).map_err(|m| self.error(AssumeRoleErrorKind::BadReply(m)))
    }
}

fn retryable(kind: &AssumeRoleErrorKind) -> bool {
    match kind {
        AssumeRoleErrorKind::Transport { .. } => true,
        AssumeRoleErrorKind::Rejected { status, code, .. } => {
            *status >= 500 || *status == 429 || code == "Throttling"
        }
        _ => false,
    }
}

impl CredentialProvider for AssumeRoleProvider {
    type Credential = AwsCredential;

    // The trait is `#[async_trait]`: this is its expanded signature.
    fn get_credential<'life0, 'async_trait>(
        &'life0 self,
    ) -> Pin<Box<dyn Future<Output = object_store::Result<Arc<AwsCredential>>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        Box::pin(async move {
            self.credential()
                .await
                .map_err(|e| object_store::Error::Generic {
                    store: "S3",
                    source: Box::new(e),
                })
        })
    }
}

/// The text of the first `<tag>…</tag>` of `xml`, entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = start + xml[start..].find(&close)?;
    Some(unescape(xml[start..end].trim()))
}

fn unescape(text: &str) -> String {
    if !text.contains('&') {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('&') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        let Some(semi) = rest.find(';') else { break };
        let entity = &rest[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &rest[semi + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The credentials of an `AssumeRoleResponse`.
fn parse_credentials(xml: &str) -> Result<Cached, String> {
    let start = xml
        .find("<Credentials>")
        .ok_or_else(|| "no <Credentials> element".to_string())?;
    let section = &xml[start..];
    let field = |tag: &str| {
        xml_text(section, tag)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| format!("no <{tag}> in <Credentials>"))
    };
    let expiration = field("Expiration")?;
    let expires = DateTime::parse_from_rfc3339(&expiration)
        .map_err(|e| format!("<Expiration> is not an RFC 3339 time ({e})"))?
        .with_timezone(&Utc);
    Ok(Cached {
        credential: Arc::new(AwsCredential {
            key_id: field("AccessKeyId")?,
            secret_key: field("SecretAccessKey")?,
            token: Some(field("SessionToken")?),
        }),
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_id_and_session_name() {
        let id = external_id("org", "proj", "0199-abc");
        assert_eq!(id, "spanlake:org:proj:0199-abc");
        assert_eq!(session_name(Some(&id)), "spanlake-0199-abc");
        assert_eq!(session_name(None), "spanlake-export");
        let long = external_id("o", "p", &"x".repeat(100));
        assert_eq!(session_name(Some(&long)).len(), 64);
    }

    #[test]
    fn parses_replies() {
        let reply = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser><AssumedRoleId>AROA:s</AssumedRoleId><Arn>arn:aws:sts::1:assumed-role/r/s</Arn></AssumedRoleUser>
    <Credentials>
      <AccessKeyId>ASIAKEY</AccessKeyId>
      <SecretAccessKey>se&amp;cret</SecretAccessKey>
      <SessionToken>TOKEN&#x2F;x</SessionToken>
      <Expiration>2030-01-02T03:04:05.123Z</Expiration>
    </Credentials>
  </AssumeRoleResult>
</AssumeRoleResponse>"#;
        let cached = parse_credentials(reply).unwrap();
        assert_eq!(cached.credential.key_id, "ASIAKEY");
        assert_eq!(cached.credential.secret_key, "se&cret");
        assert_eq!(cached.credential.token.as_deref(), Some("TOKEN/x"));
        assert_eq!(cached.expires.to_rfc3339(), "2030-01-02T03:04:05.123+00:00");
        assert!(parse_credentials("<x/>").is_err());
        let error = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>User: a is not authorized &lt;x&gt;</Message></Error></ErrorResponse>"#;
        assert_eq!(xml_text(error, "Code").as_deref(), Some("AccessDenied"));
        assert_eq!(
            xml_text(error, "Message").as_deref(),
            Some("User: a is not authorized <x>")
        );
    }

    #[test]
    fn errors_name_the_fix_and_no_secret() {
        let provider = AssumeRoleProvider::new(AssumeRoleOptions {
            role_arn: "arn:aws:iam::1:role/r".into(),
            external_id: Some(external_id("o", "p", "a")),
            endpoint: Some("http://127.0.0.1:9".into()),
            base: Some(Arc::new(object_store::StaticCredentialProvider::new(
                AwsCredential {
                    key_id: "AKIDEXAMPLE".into(),
                    secret_key: "SECRETSECRET".into(),
                    token: Some("TOKENTOKEN".into()),
                },
            ))),
            ignore_env: true,
            ..AssumeRoleOptions::default()
        })
        .unwrap();
        let shown = format!("{provider:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("TOKEN"),
            "{shown}"
        );
        assert_eq!(provider.endpoint(), "http://127.0.0.1:9");
        let denied = provider.error(AssumeRoleErrorKind::Rejected {
            status: 403,
            code: "AccessDenied".into(),
            message: "not authorized".into(),
        });
        let text = denied.to_string();
        assert!(
            text.contains("sts:ExternalId = `spanlake:o:p:a`")
                && text.contains("STS answered 403 AccessDenied")
                && !text.contains("not authorized"),
            "{text}"
        );
    }

    /// A provider with static base keys whose STS endpoint answers nothing.
    fn unreachable_sts() -> AssumeRoleProvider {
        AssumeRoleProvider::new(AssumeRoleOptions {
            role_arn: "arn:aws:iam::1:role/r".into(),
            endpoint: Some("http://127.0.0.1:1".into()),
            base: Some(Arc::new(object_store::StaticCredentialProvider::new(
                AwsCredential {
                    key_id: "AKID".into(),
                    secret_key: "SECRETSECRET".into(),
                    token: None,
                },
            ))),
            ignore_env: true,
            ..AssumeRoleOptions::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn unreachable_sts_is_a_transport_error() {
        let provider = unreachable_sts();
        let error = provider.credential().await.unwrap_err();
        assert!(
            matches!(error.kind(), AssumeRoleErrorKind::Transport { .. }),
            "{error}"
        );
        assert!(!error.to_string().contains("SECRET"));
    }

    #[tokio::test]
    async fn only_an_unreachable_or_failing_sts_is_worth_retrying() {
        let provider = unreachable_sts();
        let unreachable = provider.credential().await.unwrap_err();
        assert!(unreachable.is_transient(), "{unreachable}");
        let rejected = |status: u16, code: &str| {
            provider.error(AssumeRoleErrorKind::Rejected {
                status,
                code: code.into(),
                message: String::new(),
            })
        };
        assert!(!rejected(403, "AccessDenied").is_transient());
        assert!(!rejected(400, "ValidationError").is_transient());
        assert!(rejected(503, "ServiceUnavailable").is_transient());
        assert!(rejected(429, "Throttling").is_transient());
        assert!(
            !provider
                .error(AssumeRoleErrorKind::BaseCredentials("none".into()))
                .is_transient()
        );
    }

    /// A fake STS: answers every request with credentials that expire after
    /// `lifetimes[n]` seconds (the last one repeats); counts the requests.
    async fn fake_sts(lifetimes: Vec<i64>) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = Arc::clone(&count);
        tokio::spawn(async move {
            loop {
                let Ok((mut socket, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let lifetime = lifetimes[n.min(lifetimes.len() - 1)];
                tokio::spawn(async move {
                    let mut request = Vec::new();
                    let mut buf = [0u8; 4096];
                    // Headers, then the body of Content-Length bytes.
                    loop {
                        let read = socket.read(&mut buf).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        request.extend_from_slice(&buf[..read]);
                        let text = String::from_utf8_lossy(&request).to_string();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length: usize = text
                                .lines()
                                .find_map(|l| {
                                    l.to_ascii_lowercase()
                                        .strip_prefix("content-length:")
                                        .map(|v| v.trim().parse().unwrap())
                                })
                                .unwrap_or(0);
                            if request.len() >= end + 4 + length {
                                assert!(text.contains("ExternalId=spanlake%3Ao%3Ap%3Aa"), "{text}");
                                assert!(
                                    text.contains("authorization: AWS4-HMAC-SHA256")
                                        || text.contains("Authorization: AWS4-HMAC-SHA256"),
                                    "{text}"
                                );
                                break;
                            }
                        }
                    }
                    let expires = (Utc::now() + chrono::Duration::seconds(lifetime))
                        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
                    let body = format!(
                        "<AssumeRoleResponse><AssumeRoleResult><Credentials><AccessKeyId>ASIA{n}</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>{expires}</Expiration></Credentials></AssumeRoleResult></AssumeRoleResponse>"
                    );
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        (endpoint, count)
    }

    fn provider_at(endpoint: String) -> AssumeRoleProvider {
        AssumeRoleProvider::new(AssumeRoleOptions {
            role_arn: "arn:aws:iam::1:role/r".into(),
            external_id: Some(external_id("o", "p", "a")),
            endpoint: Some(endpoint),
            base: Some(Arc::new(object_store::StaticCredentialProvider::new(
                AwsCredential {
                    key_id: "AKID".into(),
                    secret_key: "SECRET".into(),
                    token: None,
                },
            ))),
            ignore_env: true,
            ..AssumeRoleOptions::default()
        })
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn caches_and_refreshes_before_expiry() {
        // 4 minutes: within the refresh margin, so the next call renews.
        let (endpoint, count) = fake_sts(vec![240, 3600]).await;
        let provider = Arc::new(provider_at(endpoint));
        let first = provider.credential().await.unwrap();
        assert_eq!(first.key_id, "ASIA0");
        let second = provider.credential().await.unwrap();
        assert_eq!(second.key_id, "ASIA1");
        // Valid for an hour: concurrent callers share the cached one.
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let provider = Arc::clone(&provider);
                tokio::spawn(async move { provider.get_credential().await.unwrap() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().key_id, "ASIA1");
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_calls_make_one_request() {
        let (endpoint, count) = fake_sts(vec![3600]).await;
        let provider = Arc::new(provider_at(endpoint));
        let calls: Vec<_> = (0..8)
            .map(|_| {
                let provider = Arc::clone(&provider);
                tokio::spawn(async move { provider.credential().await.unwrap() })
            })
            .collect();
        for call in calls {
            assert_eq!(call.await.unwrap().key_id, "ASIA0");
        }
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
