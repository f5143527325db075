//! Export destinations a shared server may use for its users (DESIGN
//! decision 10: a shared server trusts its operator, not its users).
//!
//! An export created or changed over the HTTP API (`origin = api`), and
//! every run of it, is checked against the operator's [`DestinationPolicy`]
//! (`spanlake serve --allow-export-to PREFIX --allow-endpoint URL`); the
//! CLI, run by the machine's owner, is not.
//!
//! ```text
//!  export config (REST create / PATCH, REST run / test, every scheduled run)
//!    export_path: no `.`/`..` segments
//!    ├─ under an --allow-export-to prefix (path-segment match) ──────────────► ok
//!    ├─ local (file://, bare path) ──────────────────────────────────────────► refused
//!    └─ s3:// with role_arn (STS AssumeRole, external id spanlake:<org>:…) ──► ok
//!       anything else (ambient credentials of the server; gs:// and the
//!       Azure schemes always, having no role to assume) ──────────────────► refused
//!    endpoint (the export's own)     must be an --allow-endpoint (exact scheme, host, port)
//!    S3, GCS and Azure endpoints of the environment and the STS endpoint,
//!    unless allowed: https only; host (and every address it resolves to) public
//! ```
//!
//! A refusal makes no request to the refused host and writes nothing; its
//! text names the rule and the flag that lifts it. The checks run again
//! before each run, so a removed flag or a host that now resolves to a
//! private address stops the next run. A name that does not resolve at
//! check time is not refused here (no connection can be made to it then);
//! a rebinding between the check and the connection is not caught.
//!
//! Replies of destinations are shown only as summaries
//! ([`store_error_summary`](crate::sink::summary::store_error_summary)): the HTTP status, the AWS error code and what
//! to check, never the reply's body.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use url::Url;

use crate::export::ExportConfig;

/// The flag that allows a destination prefix.
pub const ALLOW_EXPORT_TO_FLAG: &str = "--allow-export-to";
/// The flag that allows an endpoint.
pub const ALLOW_ENDPOINT_FLAG: &str = "--allow-endpoint";
/// The flag that allows a cluster engine.
pub const ALLOW_ENGINE_FLAG: &str = "--allow-engine";

/// Environment variables whose S3 endpoint the server's object stores use
/// (object_store's `AmazonS3Builder::from_env`).
const S3_ENDPOINT_VARIABLES: [&str; 3] =
    ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_ENDPOINT"];

/// Environment variables whose GCS base URL the server's `gs://` stores use
/// (object_store's `GoogleCloudStorageBuilder::from_env`).
const GCS_ENDPOINT_VARIABLES: [&str; 1] = ["GOOGLE_BASE_URL"];

/// Environment variables whose Azure account URL the server's Azure stores
/// use (object_store's `MicrosoftAzureBuilder::from_env`).
const AZURE_ENDPOINT_VARIABLES: [&str; 2] = ["AZURE_STORAGE_ENDPOINT", "AZURE_ENDPOINT"];

/// The schemes of Azure Blob Storage destinations.
const AZURE_SCHEMES: [&str; 5] = ["az", "abfs", "abfss", "azure", "adl"];

/// How long a host name may take to resolve during a check.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the operator allows exports created over the API to use: prefixes
/// of destinations (which may then use the server's own credentials, or
/// its disk) and endpoints (contacted even when private or plain http).
/// The default allows no prefix and no endpoint: only `s3://` destinations
/// through a role, at public https endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DestinationPolicy {
    prefixes: Vec<Location>,
    endpoints: Vec<Endpoint>,
    /// Clusters an export may run on (besides the local engine).
    engines: Vec<crate::cluster::Engine>,
}

/// A destination, for matching: scheme, bucket or host, and the decoded
/// path segments (no empty ones).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Location {
    scheme: String,
    authority: String,
    segments: Vec<String>,
}

impl Location {
    fn is_under(&self, prefix: &Location) -> bool {
        self.scheme == prefix.scheme
            && self.authority == prefix.authority
            && self.segments.len() >= prefix.segments.len()
            && self
                .segments
                .iter()
                .zip(&prefix.segments)
                .all(|(a, b)| a == b)
    }

    fn is_local(&self) -> bool {
        self.scheme == "file"
    }
}

/// An endpoint: scheme, host and port (the known default when omitted).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    scheme: String,
    host: String,
    port: u16,
}

/// Which rule refused a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// `file://` or a bare path outside the allowed prefixes.
    LocalDestination,
    /// A destination written with the server's own credentials, outside the
    /// allowed prefixes.
    AmbientCredentials,
    /// An export's own `endpoint` that is not allowed.
    CustomEndpoint,
    /// An endpoint that is, or resolves to, a loopback, link-local, private
    /// or otherwise non-public address.
    NonPublicAddress,
    /// A plain `http://` STS or S3 endpoint that is not allowed.
    PlainHttp,
    /// A cluster engine that is not allowed: the server would send the
    /// export's plan (its store's file paths) to that address and trust
    /// the files it reports.
    Engine,
    /// An export path or endpoint that cannot be checked (`..` segments,
    /// user info, no host).
    Malformed,
}

impl Rule {
    /// Its stable name in API answers, e.g. `local_destination`.
    pub fn name(self) -> &'static str {
        match self {
            Self::LocalDestination => "local_destination",
            Self::AmbientCredentials => "ambient_credentials",
            Self::CustomEndpoint => "custom_endpoint",
            Self::NonPublicAddress => "non_public_address",
            Self::PlainHttp => "plain_http",
            Self::Engine => "engine",
            Self::Malformed => "malformed",
        }
    }
}

/// One refused part of an export configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The rule.
    pub rule: Rule,
    /// `config_key `value`: what is refused and why; the flag that lifts it`.
    pub message: String,
}

/// Why an export's destination is refused: every [`Refusal`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("export destination refused: {}", .refusals.iter().map(|r| r.message.as_str()).collect::<Vec<_>>().join("; "))]
pub struct DestinationRefused {
    /// One per refused part, in config order.
    pub refusals: Vec<Refusal>,
}

impl DestinationPolicy {
    /// The policy of `--allow-export-to` `prefixes` and `--allow-endpoint`
    /// `endpoints`; an error names the flag and the value.
    pub fn new(prefixes: &[String], endpoints: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for prefix in prefixes {
            let location = location_of(prefix).map_err(|reason| {
                format!("{ALLOW_EXPORT_TO_FLAG} `{prefix}`: {reason}; give a URL prefix such as `s3://bucket/team-a/` or `file:///srv/exports/`")
            })?;
            if location.scheme == "s3" && location.authority.is_empty() {
                return Err(format!(
                    "{ALLOW_EXPORT_TO_FLAG} `{prefix}`: no bucket; give e.g. `s3://bucket/` or `s3://bucket/team-a/`"
                ));
            }
            policy.prefixes.push(location);
        }
        for endpoint in endpoints {
            let parsed = endpoint_of(endpoint).map_err(|reason| {
                format!("{ALLOW_ENDPOINT_FLAG} `{endpoint}`: {reason}; give a scheme, host and optional port, e.g. `https://minio.internal:9000`")
            })?;
            policy.endpoints.push(parsed);
        }
        Ok(policy)
    }

    /// This policy, also allowing exports to run on the clusters of
    /// `engines` (`ballista://HOST:PORT`, `--allow-engine`).
    pub fn with_engines(mut self, engines: &[String]) -> Result<Self, String> {
        for text in engines {
            let engine = crate::cluster::Engine::parse(text)
                .map_err(|reason| format!("{ALLOW_ENGINE_FLAG} `{text}`: {reason}"))?;
            self.engines.push(engine);
        }
        Ok(self)
    }

    fn allows_endpoint(&self, endpoint: &Endpoint) -> bool {
        self.endpoints.contains(endpoint)
    }

    /// Check an export configuration of the API against the policy (see
    /// the module docs). Resolves the host names of the endpoints it would
    /// contact (unless allowed); makes no other request.
    pub async fn check_export(&self, config: &ExportConfig) -> Result<(), DestinationRefused> {
        let mut refusals = Vec::new();
        let path = config.export_path.as_str();
        let location = match location_of(path) {
            Ok(location) => Some(location),
            Err(reason) => {
                refusals.push(Refusal {
                    rule: Rule::Malformed,
                    message: format!("export_path `{path}`: {reason}"),
                });
                None
            }
        };
        let allowed = location
            .as_ref()
            .is_some_and(|l| self.prefixes.iter().any(|p| l.is_under(p)));
        let with_role =
            config.role_arn.is_some() && location.as_ref().is_some_and(|l| l.scheme == "s3");
        if let Some(location) = &location
            && !allowed
        {
            let suggestion = suggested_prefix(path);
            if location.is_local() {
                refusals.push(Refusal {
                    rule: Rule::LocalDestination,
                    message: format!(
                        "export_path `{path}`: local destinations are refused for exports created over the API; the operator can allow a prefix with `spanlake serve {ALLOW_EXPORT_TO_FLAG} {suggestion}`"
                    ),
                });
            } else if location.scheme == "gs" || AZURE_SCHEMES.contains(&location.scheme.as_str()) {
                refusals.push(Refusal {
                    rule: Rule::AmbientCredentials,
                    message: format!(
                        "export_path `{path}`: Google Cloud Storage and Azure exports write with the server's own credentials (there is no role to assume), which only destinations under a prefix the operator allows may use; the operator can allow the prefix with `spanlake serve {ALLOW_EXPORT_TO_FLAG} {suggestion}`"
                    ),
                });
            } else if !with_role {
                let how = if location.scheme == "s3" {
                    "set `role_arn` to a role whose trust policy requires the external id `spanlake:<org_id>:*` of your org"
                } else {
                    "use an `s3://` destination with a `role_arn`"
                };
                refusals.push(Refusal {
                    rule: Rule::AmbientCredentials,
                    message: format!(
                        "export_path `{path}`: without a role the export would write with the server's own credentials, which only destinations under a prefix the operator allows may use; {how}, or the operator can allow the prefix with `spanlake serve {ALLOW_EXPORT_TO_FLAG} {suggestion}`"
                    ),
                });
            }
        }
        let remote = location.as_ref().is_some_and(|l| !l.is_local());
        if let Some(endpoint) = &config.endpoint {
            match endpoint_of(endpoint) {
                Err(reason) => refusals.push(Refusal {
                    rule: Rule::Malformed,
                    message: format!("endpoint `{endpoint}`: {reason}"),
                }),
                Ok(parsed) if self.allows_endpoint(&parsed) => {}
                Ok(parsed) => {
                    let (rule, why) = match literal_class(&parsed.host) {
                        Some(class) => (
                            Rule::NonPublicAddress,
                            format!(
                                "{class} address, which exports created over the API may not contact"
                            ),
                        ),
                        None => (
                            Rule::CustomEndpoint,
                            "custom endpoints are refused for exports created over the API"
                                .to_string(),
                        ),
                    };
                    refusals.push(Refusal {
                        rule,
                        message: format!(
                            "endpoint `{endpoint}`: {why}; the operator can allow it with `spanlake serve {ALLOW_ENDPOINT_FLAG} {}`",
                            shown_endpoint(&parsed)
                        ),
                    });
                }
            }
        }
        // Endpoints the export would reach that the user did not choose:
        // the environment's S3 endpoint and the STS endpoint.
        let mut implied: Vec<(String, &'static str)> = Vec::new();
        let scheme = location.as_ref().map_or("", |l| l.scheme.as_str());
        if remote && config.endpoint.is_none() {
            if scheme == "s3" {
                for variable in S3_ENDPOINT_VARIABLES {
                    if let Some(value) = env_value(variable) {
                        implied.push((value, variable));
                    }
                }
            } else if scheme == "gs" {
                for variable in GCS_ENDPOINT_VARIABLES {
                    if let Some(value) = env_value(variable) {
                        implied.push((value, variable));
                    }
                }
            } else if AZURE_SCHEMES.contains(&scheme) {
                implied.extend(azure_implied_endpoints());
            }
        }
        if with_role {
            let sts =
                crate::sink::credentials::sts_endpoint(None, config.endpoint.as_deref(), false);
            if config.endpoint.as_deref().map(|e| e.trim_end_matches('/')) != Some(sts.as_str()) {
                implied.push((sts, "the STS endpoint"));
            }
        }
        for (endpoint, source) in implied {
            if let Some(refusal) = self.check_implied_endpoint(&endpoint, source).await {
                refusals.push(refusal);
            }
        }
        if !config.engine.is_local() && !self.engines.contains(&config.engine) {
            refusals.push(Refusal {
                rule: Rule::Engine,
                message: format!(
                    "engine `{}`: this server runs exports on clusters its operator allows only; the operator can allow it with `spanlake serve {ALLOW_ENGINE_FLAG} {}`",
                    config.engine, config.engine
                ),
            });
        }
        if refusals.is_empty() {
            Ok(())
        } else {
            Err(DestinationRefused { refusals })
        }
    }

    /// An endpoint the server would contact for the export (not one the
    /// user gave): allowed, or https at a public address.
    async fn check_implied_endpoint(&self, endpoint: &str, source: &str) -> Option<Refusal> {
        let parsed = match endpoint_of(endpoint) {
            Ok(parsed) => parsed,
            Err(reason) => {
                return Some(Refusal {
                    rule: Rule::Malformed,
                    message: format!("{source} `{endpoint}`: {reason}"),
                });
            }
        };
        if self.allows_endpoint(&parsed) {
            return None;
        }
        let lift = format!(
            "the operator can allow it with `spanlake serve {ALLOW_ENDPOINT_FLAG} {}`",
            shown_endpoint(&parsed)
        );
        if parsed.scheme != "https" {
            return Some(Refusal {
                rule: Rule::PlainHttp,
                message: format!(
                    "{source} `{endpoint}`: plain http is refused for exports created over the API (credentials would cross the network unencrypted); {lift}"
                ),
            });
        }
        let class = match literal_class(&parsed.host) {
            Some(class) => Some(class.to_string()),
            None => resolved_class(&parsed.host, parsed.port).await,
        };
        class.map(|class| Refusal {
            rule: Rule::NonPublicAddress,
            message: format!(
                "{source} `{endpoint}`: {class} address, which exports created over the API may not contact; {lift}"
            ),
        })
    }
}

/// The Azure endpoints the server's stores would contact by the
/// environment: the emulator's (`AZURE_STORAGE_USE_EMULATOR`, or
/// `UseDevelopmentStorage` in the connection string), the account URL
/// variables, and a connection string's `BlobEndpoint`.
fn azure_implied_endpoints() -> Vec<(String, &'static str)> {
    const AZURITE_URL: &str = "AZURITE_BLOB_STORAGE_URL";
    let azurite = || {
        (
            env_value(AZURITE_URL).unwrap_or_else(|| "http://127.0.0.1:10000".to_string()),
            AZURITE_URL,
        )
    };
    let mut implied = Vec::new();
    let emulator = ["AZURE_STORAGE_USE_EMULATOR", "AZURE_USE_EMULATOR"]
        .iter()
        .filter_map(|v| env_value(v))
        .any(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "true" | "1" | "yes" | "on"
            )
        });
    if emulator {
        implied.push(azurite());
    }
    for variable in AZURE_ENDPOINT_VARIABLES {
        if let Some(value) = env_value(variable) {
            implied.push((value, variable));
        }
    }
    let variable = crate::sink::AZURE_CONNECTION_STRING_VARIABLE;
    if let Some(text) = env_value(variable)
        && let Ok(parsed) = crate::sink::AzureConnectionString::parse(&text)
    {
        if parsed.use_development_storage {
            implied.push(azurite());
        }
        if let Some(endpoint) = parsed.blob_endpoint {
            // An account URL has a path (the emulator's account): the
            // endpoint is its scheme, host and port.
            let origin = Url::parse(&endpoint)
                .map(|u| u.origin().ascii_serialization())
                .unwrap_or(endpoint);
            implied.push((origin, "the connection string's `BlobEndpoint`"));
        }
    }
    implied
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `endpoint` as the flag that allows it: `scheme://host[:port]`, the port
/// omitted when it is the scheme's default.
fn shown_endpoint(endpoint: &Endpoint) -> String {
    let default = if endpoint.scheme == "https" { 443 } else { 80 };
    let host = if endpoint.host.contains(':') {
        format!("[{}]", endpoint.host)
    } else {
        endpoint.host.clone()
    };
    if endpoint.port == default {
        format!("{}://{host}", endpoint.scheme)
    } else {
        format!("{}://{host}:{}", endpoint.scheme, endpoint.port)
    }
}

/// The prefix to suggest for `path`: itself as a folder (`file:///x/` for
/// `file:///x`, `file:///abs/rel/` for a bare `rel`).
fn suggested_prefix(path: &str) -> String {
    let url = if path.contains("://") {
        path.to_string()
    } else {
        let absolute =
            std::path::absolute(path).map_or_else(|_| path.into(), |p| p.display().to_string());
        format!("file://{absolute}")
    };
    if url.ends_with('/') {
        url
    } else {
        format!("{url}/")
    }
}

/// Decode `%XX` escapes (invalid ones stay as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(value) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decoded path segments of `path`, empty ones dropped; an error for a `.`
/// or `..` segment, before or after decoding.
fn segments_of(path: &str) -> Result<Vec<String>, String> {
    let mut segments = Vec::new();
    for raw in path.split(['/', '\\']) {
        for segment in percent_decode(raw).split(['/', '\\']) {
            if segment == "." || segment == ".." {
                return Err(format!(
                    "`{segment}` segments are not allowed; give the path without them"
                ));
            }
            if !segment.is_empty() {
                segments.push(segment.to_string());
            }
        }
    }
    Ok(segments)
}

/// The [`Location`] of an export path or an allowed prefix: a URL, or a
/// bare local path (absolute against the working directory, as the export
/// resolves it).
fn location_of(text: &str) -> Result<Location, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty".to_string());
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        // Checked before `absolute`, which keeps `..` as it is.
        segments_of(text)?;
        let absolute = std::path::absolute(text).map_err(|e| e.to_string())?;
        return Ok(Location {
            scheme: "file".to_string(),
            authority: String::new(),
            segments: segments_of(&absolute.to_string_lossy())?,
        });
    };
    // The raw text: URL parsing would resolve `..` before we saw it.
    let scheme = scheme.to_ascii_lowercase();
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, ""),
    };
    // `abfs[s]://container@account.dfs.core.windows.net/…` names its
    // container before the `@`; no other user info is allowed.
    let container_at = matches!(scheme.as_str(), "abfs" | "abfss")
        && authority.split_once('@').is_some_and(|(container, host)| {
            !container.is_empty() && !container.contains(':') && !host.contains('@')
        });
    if authority.contains('@') && !container_at {
        return Err("user info (`user@` or keys) is not allowed in the URL".to_string());
    }
    if path.contains(['?', '#']) {
        return Err("a query (`?`) or fragment (`#`) is not allowed".to_string());
    }
    let segments = segments_of(path)?;
    let parsed = Url::parse(text).map_err(|e| format!("not a URL: {e}"))?;
    let authority = match scheme.as_str() {
        "file" => match parsed.host_str() {
            None | Some("" | "localhost") => String::new(),
            Some(host) => {
                return Err(format!(
                    "a file URL on another host (`{host}`) cannot be written"
                ));
            }
        },
        _ => percent_decode(authority),
    };
    let scheme = if scheme == "s3a" {
        "s3".to_string()
    } else {
        scheme
    };
    Ok(Location {
        scheme,
        authority,
        segments,
    })
}

/// An endpoint URL: `http` or `https`, a host, an optional port, no path.
fn endpoint_of(text: &str) -> Result<Endpoint, String> {
    let parsed = Url::parse(text.trim()).map_err(|e| format!("not a URL: {e}"))?;
    let scheme = parsed.scheme().to_string();
    if scheme != "http" && scheme != "https" {
        return Err(format!("`{scheme}` is not `http` or `https`"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("user info is not allowed in an endpoint".to_string());
    }
    if !matches!(parsed.path(), "" | "/") || parsed.query().is_some() || parsed.fragment().is_some()
    {
        return Err("an endpoint has no path, query or fragment".to_string());
    }
    let host = match parsed.host() {
        Some(url::Host::Domain(domain)) => domain.trim_end_matches('.').to_ascii_lowercase(),
        Some(url::Host::Ipv4(ip)) => ip.to_string(),
        Some(url::Host::Ipv6(ip)) => ip.to_string(),
        None => return Err("no host".to_string()),
    };
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| "no port".to_string())?;
    Ok(Endpoint { scheme, host, port })
}

/// The class of a host given literally: an IP address that is not public,
/// or `localhost`; `None` for other names (see [`resolved_class`]).
fn literal_class(host: &str) -> Option<&'static str> {
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("a loopback");
    }
    host.trim_matches(['[', ']'])
        .parse::<IpAddr>()
        .ok()
        .and_then(non_public_class)
}

/// The class of the first non-public address `host` resolves to; `None`
/// when every address is public or the name does not resolve now.
async fn resolved_class(host: &str, port: u16) -> Option<String> {
    let lookup = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    let Ok(Ok(addresses)) = lookup else {
        return None;
    };
    for address in addresses {
        if let Some(class) = non_public_class(address.ip()) {
            return Some(format!("`{host}` resolves to {}, {class}", address.ip()));
        }
    }
    None
}

/// Why `ip` is not a public unicast address, or `None` when it is.
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback")
    } else if ip.is_link_local() {
        Some("a link-local (169.254.0.0/16)")
    } else if ip.is_private() {
        Some("a private")
    } else if a == 0 {
        Some("an unspecified (0.0.0.0/8)")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a shared (carrier-grade NAT, 100.64.0.0/10)")
    } else if ip.is_broadcast() || ip.is_multicast() || a >= 240 {
        Some("a broadcast, multicast or reserved")
    } else if ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19))
        || (a == 192 && b == 0 && c == 0)
    {
        Some("a reserved (documentation, benchmarking or protocol)")
    } else {
        None
    }
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    if ip.is_loopback() {
        Some("a loopback")
    } else if ip.is_unspecified() {
        Some("an unspecified")
    } else if segments[0] & 0xffc0 == 0xfe80 {
        Some("a link-local (fe80::/10)")
    } else if segments[0] & 0xfe00 == 0xfc00 {
        Some("a private (unique local, fc00::/7)")
    } else if segments[0] & 0xffc0 == 0xfec0 {
        Some("a site-local (fec0::/10)")
    } else if ip.is_multicast() {
        Some("a multicast")
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        Some("a documentation (2001:db8::/32)")
    } else if segments[0] == 0x0064 && segments[1] == 0xff9b {
        // NAT64: the IPv4 address it stands for decides.
        let v4 = Ipv4Addr::new(
            (segments[6] >> 8) as u8,
            segments[6] as u8,
            (segments[7] >> 8) as u8,
            segments[7] as u8,
        );
        v4_class(v4)
    } else if segments[0] == 0x2002 {
        // 6to4 embeds an IPv4 address.
        let v4 = Ipv4Addr::new(
            (segments[1] >> 8) as u8,
            segments[1] as u8,
            (segments[2] >> 8) as u8,
            segments[2] as u8,
        );
        v4_class(v4)
    } else if segments[0] == 0x2001 && segments[1] == 0 {
        Some("a Teredo tunnel (2001::/32)")
    } else if segments[..6].iter().all(|s| *s == 0) {
        // IPv4-compatible (deprecated) `::a.b.c.d`.
        Some("an IPv4-compatible")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::summary::store_error_summary;

    fn policy(prefixes: &[&str], endpoints: &[&str]) -> DestinationPolicy {
        let owned = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        DestinationPolicy::new(&owned(prefixes), &owned(endpoints)).unwrap()
    }

    fn config(path: &str, role: Option<&str>, endpoint: Option<&str>) -> ExportConfig {
        crate::export::RawExportConfig {
            data: "spans".into(),
            export_path: path.into(),
            role_arn: role.map(str::to_string),
            endpoint: endpoint.map(str::to_string),
            ..Default::default()
        }
        .validate()
        .unwrap()
    }

    async fn rules(policy: &DestinationPolicy, config: &ExportConfig) -> Vec<Rule> {
        match policy.check_export(config).await {
            Ok(()) => Vec::new(),
            Err(e) => e.refusals.iter().map(|r| r.rule).collect(),
        }
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let prefix = location_of("s3://bucket/team-a/").unwrap();
        for inside in [
            "s3://bucket/team-a",
            "s3://bucket/team-a/x/y",
            "s3a://bucket/team-a//x",
            "s3://bucket/team-a%2Fx",
        ] {
            assert!(location_of(inside).unwrap().is_under(&prefix), "{inside}");
        }
        for outside in [
            "s3://bucket/team-ab",
            "s3://bucket/team",
            "s3://other/team-a/x",
            "s3://bucket/",
            "file:///bucket/team-a",
        ] {
            assert!(
                !location_of(outside).unwrap().is_under(&prefix),
                "{outside}"
            );
        }
        let whole = location_of("s3://bucket").unwrap();
        assert!(
            location_of("s3://bucket/any/thing")
                .unwrap()
                .is_under(&whole)
        );
        let local = location_of("file:///srv/exports/").unwrap();
        assert!(location_of("/srv/exports/a").unwrap().is_under(&local));
        assert!(
            location_of("file://localhost/srv/exports/a")
                .unwrap()
                .is_under(&local)
        );
        assert!(
            !location_of("file:///srv/exports-b")
                .unwrap()
                .is_under(&local)
        );
    }

    #[test]
    fn dot_segments_and_user_info_are_refused() {
        for bad in [
            "file:///srv/exports/../etc",
            "file:///srv/exports/%2e%2e/etc",
            "s3://bucket/team-a/../team-b",
            "s3://bucket/team-a/%2E%2E/team-b",
            "s3://bucket/team-a%2F..%2Fteam-b",
            "/srv/exports/./x",
            "srv/../x",
            "s3://AKIA:SECRET@bucket/x",
            "s3://bucket/x?y",
            "file://other-host/x",
        ] {
            assert!(location_of(bad).is_err(), "{bad}");
        }
        assert!(DestinationPolicy::new(&["file:///srv/../etc".into()], &[]).is_err());
        assert!(DestinationPolicy::new(&["s3://".into()], &[]).is_err());
        let error = DestinationPolicy::new(&[], &["ftp://x".into()]).unwrap_err();
        assert!(error.starts_with("--allow-endpoint `ftp://x`"), "{error}");
        assert!(DestinationPolicy::new(&[], &["http://x/path".into()]).is_err());
    }

    #[test]
    fn endpoints_match_exactly() {
        let allowed = endpoint_of("http://127.0.0.1:9000").unwrap();
        assert_eq!(endpoint_of("http://127.0.0.1:9000/").unwrap(), allowed);
        assert_ne!(endpoint_of("http://127.0.0.1:9001").unwrap(), allowed);
        assert_ne!(endpoint_of("https://127.0.0.1:9000").unwrap(), allowed);
        assert_ne!(endpoint_of("http://localhost:9000").unwrap(), allowed);
        // Default ports are filled in; hosts are case-insensitive.
        assert_eq!(
            endpoint_of("https://S3.example.com").unwrap(),
            endpoint_of("https://s3.example.com:443").unwrap()
        );
        // Other spellings of an IPv4 address are the same address.
        assert_eq!(endpoint_of("http://2130706433:9000").unwrap(), allowed);
    }

    #[test]
    fn address_classes() {
        for (ip, class) in [
            ("127.0.0.1", "loopback"),
            ("169.254.169.254", "link-local"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("0.0.0.0", "unspecified"),
            ("100.64.0.1", "shared"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fd00::1", "private"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("::127.0.0.1", "IPv4-compatible"),
        ] {
            let found = non_public_class(ip.parse().unwrap());
            assert!(found.is_some_and(|f| f.contains(class)), "{ip}: {found:?}");
        }
        for ip in [
            "8.8.8.8",
            "172.32.0.1",
            "52.216.0.1",
            "2600:1f18::1",
            "2a05:d018::1",
        ] {
            assert_eq!(non_public_class(ip.parse().unwrap()), None, "{ip}");
        }
        assert_eq!(literal_class("localhost"), Some("a loopback"));
        assert_eq!(literal_class("[::1]"), Some("a loopback"));
        assert_eq!(literal_class("s3.amazonaws.com"), None);
    }

    #[tokio::test]
    async fn cloud_destinations_need_an_allowed_prefix() {
        let none = DestinationPolicy::default();
        for path in [
            "gs://bucket/team-a",
            "az://container/team-a",
            "abfss://container@acct.dfs.core.windows.net/team-a",
        ] {
            let refused = none
                .check_export(&config(path, None, None))
                .await
                .unwrap_err();
            assert_eq!(refused.refusals.len(), 1, "{refused}");
            assert_eq!(refused.refusals[0].rule, Rule::AmbientCredentials);
            assert!(
                refused.to_string().contains("there is no role to assume")
                    && refused
                        .to_string()
                        .contains(&format!("--allow-export-to {path}/")),
                "{refused}"
            );
        }
        let allowing = policy(
            &[
                "gs://bucket/team-a/",
                "az://container/team-a/",
                "abfss://container@acct.dfs.core.windows.net/team-a/",
            ],
            &[],
        );
        for path in [
            "gs://bucket/team-a/spans",
            "az://container/team-a/spans",
            "abfss://container@acct.dfs.core.windows.net/team-a/spans",
        ] {
            assert_eq!(
                rules(&allowing, &config(path, None, None)).await,
                [],
                "{path}"
            );
        }
        for path in [
            "gs://bucket/team-ab",
            "gs://other/team-a",
            "az://container2/team-a",
            "abfss://other@acct.dfs.core.windows.net/team-a",
        ] {
            assert_eq!(
                rules(&allowing, &config(path, None, None)).await,
                [Rule::AmbientCredentials],
                "{path}"
            );
        }
        // A key in the user info is refused, whatever the scheme.
        assert_eq!(
            rules(
                &allowing,
                &config(
                    "abfss://container:KEY@acct.dfs.core.windows.net/team-a",
                    None,
                    None
                )
            )
            .await,
            [Rule::Malformed]
        );
        // The export's own endpoint is checked as for S3.
        assert_eq!(
            rules(
                &allowing,
                &config("gs://bucket/team-a/x", None, Some("http://127.0.0.1:4443"))
            )
            .await,
            [Rule::NonPublicAddress]
        );
        let with_endpoint = policy(&["gs://bucket/team-a/"], &["http://127.0.0.1:4443"]);
        assert_eq!(
            rules(
                &with_endpoint,
                &config("gs://bucket/team-a/x", None, Some("http://127.0.0.1:4443"))
            )
            .await,
            []
        );
    }

    #[tokio::test]
    async fn the_default_policy_allows_roles_only() {
        let none = DestinationPolicy::default();
        let refused = none
            .check_export(&config("file:///x", None, None))
            .await
            .unwrap_err();
        assert_eq!(refused.refusals[0].rule, Rule::LocalDestination);
        assert!(
            refused.to_string().contains(
                "export_path `file:///x`: local destinations are refused for exports created over the API; the operator can allow a prefix with `spanlake serve --allow-export-to file:///x/`"
            ),
            "{refused}"
        );
        assert_eq!(
            rules(&none, &config("relative/dir", None, None)).await,
            [Rule::LocalDestination]
        );
        // A role does not open the disk.
        assert_eq!(
            rules(
                &none,
                &config("file:///x", Some("arn:aws:iam::1:role/r"), None)
            )
            .await,
            [Rule::LocalDestination]
        );
        assert_eq!(
            rules(
                &none,
                &config("gs://b/p", Some("arn:aws:iam::1:role/r"), None)
            )
            .await,
            [Rule::AmbientCredentials]
        );
        let endpoints = [
            ("http://169.254.169.254", Rule::NonPublicAddress),
            ("http://127.0.0.1:9000", Rule::NonPublicAddress),
            ("http://[::1]:9000", Rule::NonPublicAddress),
            ("https://s3.example.com", Rule::CustomEndpoint),
        ];
        for (endpoint, rule) in endpoints {
            let found = rules(
                &none,
                &config("s3://b/p", Some("arn:aws:iam::1:role/r"), Some(endpoint)),
            )
            .await;
            assert_eq!(found, [rule], "{endpoint}");
        }
        let refused = none
            .check_export(&config("s3://b/p", None, Some("http://169.254.169.254")))
            .await
            .unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains("server's own credentials")
                && text.contains("--allow-export-to s3://b/p/"),
            "{text}"
        );
        assert!(
            text.contains("link-local (169.254.0.0/16) address")
                && text.contains("--allow-endpoint http://169.254.169.254`"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn allowed_prefixes_and_endpoints() {
        let allow = policy(
            &["file:///srv/exports/", "s3://shared/team-a/"],
            &["http://127.0.0.1:9000"],
        );
        assert_eq!(
            rules(&allow, &config("file:///srv/exports/a", None, None)).await,
            []
        );
        assert_eq!(
            rules(&allow, &config("file:///srv/exports-b", None, None)).await,
            [Rule::LocalDestination]
        );
        assert_eq!(
            rules(&allow, &config("file:///srv/exports/../x", None, None)).await,
            [Rule::Malformed]
        );
        assert_eq!(
            rules(
                &allow,
                &config("s3://shared/team-a/x", None, Some("http://127.0.0.1:9000"))
            )
            .await,
            []
        );
        assert_eq!(
            rules(
                &allow,
                &config("s3://shared/team-b/x", None, Some("http://127.0.0.1:9000"))
            )
            .await,
            [Rule::AmbientCredentials]
        );
        // An allowed prefix does not allow another endpoint.
        assert_eq!(
            rules(
                &allow,
                &config("s3://shared/team-a/x", None, Some("http://127.0.0.1:9001"))
            )
            .await,
            [Rule::NonPublicAddress]
        );
    }

    #[tokio::test]
    async fn an_export_runs_on_a_cluster_only_when_the_operator_allows_it() {
        let on = |engine: &str| {
            crate::export::RawExportConfig {
                data: "spans".into(),
                export_path: "file:///srv/exports/a".into(),
                engine: Some(engine.into()),
                ..Default::default()
            }
            .validate()
            .unwrap()
        };
        let allow = policy(&["file:///srv/exports/"], &[]);
        assert_eq!(rules(&allow, &on("local")).await, []);
        assert_eq!(
            rules(&allow, &on("ballista://10.0.0.1:50050")).await,
            [Rule::Engine]
        );
        let allow = allow
            .with_engines(&["ballista://10.0.0.1:50050".into()])
            .unwrap();
        assert_eq!(rules(&allow, &on("ballista://10.0.0.1:50050")).await, []);
        assert_eq!(
            rules(&allow, &on("ballista://10.0.0.2:50050")).await,
            [Rule::Engine]
        );
        assert!(
            policy(&[], &[])
                .with_engines(&["spark://x".into()])
                .is_err()
        );
    }

    #[tokio::test]
    async fn implied_endpoints_are_https_and_public_unless_allowed() {
        // A name is checked by what it resolves to (here through /etc/hosts).
        let class = resolved_class("localhost", 443).await.unwrap();
        assert!(
            class.starts_with("`localhost` resolves to ") && class.ends_with("a loopback"),
            "{class}"
        );
        let none = DestinationPolicy::default();
        let plain = none
            .check_implied_endpoint("http://sts.example.com", "the STS endpoint")
            .await
            .unwrap();
        assert_eq!(plain.rule, Rule::PlainHttp);
        assert!(
            plain
                .message
                .contains("--allow-endpoint http://sts.example.com`"),
            "{}",
            plain.message
        );
        let private = none
            .check_implied_endpoint("https://10.1.2.3:8443", "AWS_ENDPOINT")
            .await
            .unwrap();
        assert_eq!(private.rule, Rule::NonPublicAddress);
        assert!(
            private
                .message
                .starts_with("AWS_ENDPOINT `https://10.1.2.3:8443`: a private address"),
            "{}",
            private.message
        );
        let allowed = policy(&[], &["http://10.1.2.3:9000"]);
        assert_eq!(
            allowed
                .check_implied_endpoint("http://10.1.2.3:9000/", "AWS_ENDPOINT")
                .await,
            None
        );
    }

    #[test]
    fn summaries_keep_status_and_code_only() {
        let body = "<?xml version=\"1.0\"?><Error><Code>AccessDenied</Code><Message>token ASIA-SECRET echoed</Message></Error>";
        let error = object_store::Error::PermissionDenied {
            path: "k".into(),
            source: format!("Error performing PUT http://h/b/k in 2ms - Server returned non-2xx status code: 403 Forbidden: {body}").into(),
        };
        let summary = store_error_summary(&error);
        assert_eq!(
            summary,
            "the destination answered: permission denied, HTTP 403, AccessDenied"
        );
        let hostile = object_store::Error::Generic {
            store: "S3",
            source: "Server returned error response: <Code>not a code, SECRET</Code>".into(),
        };
        assert_eq!(
            store_error_summary(&hostile),
            "the destination answered: failed"
        );
        let local = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: "Unable to open file /x: Permission denied (os error 13)".into(),
        };
        assert!(store_error_summary(&local).contains("os error 13"));
    }
}
