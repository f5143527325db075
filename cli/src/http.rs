//! `spanlake apikey ...` and the HTTP options of `spanlake serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Subcommand;
use spanlake_engine::registry::LOCAL_ORG_NAME;
use spanlake_engine::store::Store;

/// `spanlake apikey ...`
#[derive(Debug, Subcommand)]
pub enum ApikeyCommand {
    /// Create an API key for an org (created if missing); the key is printed
    /// once, alone on the last line, and only its hash is stored.
    Create {
        /// The org the key acts for (its projects are all it sees).
        #[arg(long, default_value = LOCAL_ORG_NAME)]
        org: String,
    },
    /// List keys (their first characters, org, creation, revocation).
    List,
    /// Revoke a key by its id (or its first characters).
    Revoke {
        /// Key id or prefix from `spanlake apikey list`.
        id: String,
    },
}

/// HTTP options of `spanlake serve`.
#[derive(Debug, clap::Args)]
pub struct ServeHttpArgs {
    /// Address of the HTTP API (Braintrust-compatible; see the README).
    #[arg(long, default_value = "127.0.0.1:8000", value_name = "HOST:PORT")]
    pub listen: SocketAddr,
    /// URL clients reach the server at, if not `http://<listen>` (behind a proxy).
    #[arg(long, value_name = "URL")]
    pub public_url: Option<String>,
    /// Run the schedules only, without the HTTP API.
    #[arg(long)]
    pub no_http: bool,
    /// Largest request body, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_name = "SIZE")]
    pub max_body: String,
    /// How long a group commit waits for more requests, e.g. `10ms` (at most `200ms`).
    #[arg(long, default_value = "10ms", value_name = "DURATION")]
    pub group_commit_linger: String,
    /// Let exports created over the API write under this URL prefix (e.g.
    /// `s3://bucket/team-a/` or `file:///srv/exports/`), with the server's
    /// own credentials or on its disk; repeatable. Matched on whole path
    /// segments. Without it, API exports go to `s3://` through a `role_arn`
    /// only. The CLI's exports are not limited.
    #[arg(long, value_name = "PREFIX")]
    pub allow_export_to: Vec<String>,
    /// Let exports created over the API use this endpoint (exact scheme,
    /// host and port, e.g. `http://127.0.0.1:9000`), even when it is plain
    /// http or a private, loopback or link-local address; also for STS;
    /// repeatable.
    #[arg(long, value_name = "URL")]
    pub allow_endpoint: Vec<String>,
    /// Let exports created over the API run on this Ballista cluster
    /// (`ballista://HOST:PORT`, its scheduler); repeatable. Without it they
    /// run here only.
    #[arg(long, value_name = "ENGINE")]
    pub allow_engine: Vec<String>,
    /// Longest a query (`/btql`, `/v1/project_logs/{id}/fetch`) may run
    /// before it is cancelled and answered 504, e.g. `30s`.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub query_timeout: String,
    /// Queries one API key may run at once; more are answered 429 with
    /// `Retry-After`.
    #[arg(long, default_value_t = 4, value_name = "N")]
    pub max_queries_per_key: usize,
    /// Memory of one query (its sorts, aggregations, pivot and page); a
    /// query needing more is answered 413, e.g. `256MiB`.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub query_memory: String,
    /// How long a connection has to send a request's headers, from when it
    /// opens or its previous answer ends (so also how long an idle
    /// keep-alive connection stays open), e.g. `30s`.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub header_timeout: String,
    /// How long a request has to send its whole body once its headers
    /// arrived (408 after), e.g. `2m`.
    #[arg(long, default_value = "2m", value_name = "DURATION")]
    pub body_timeout: String,
    /// Bytes of ingest request bodies read, queued or being committed at
    /// once, over every project; a request that does not fit is answered
    /// 503 with `Retry-After`, e.g. `256MiB`.
    #[arg(long, default_value = "256MiB", value_name = "SIZE")]
    pub ingest_queue_bytes: String,
}

impl ServeHttpArgs {
    /// The server configuration, or what is wrong with the flags.
    pub fn config(&self) -> anyhow::Result<spanlake_server::ServerConfig> {
        let mut config = spanlake_server::ServerConfig::new(self.listen);
        config.public_url.clone_from(&self.public_url);
        config.max_body_bytes = usize::try_from(
            spanlake_engine::config::parse_bytes(&self.max_body)
                .map_err(|e| anyhow::anyhow!("--max-body: {e}"))?,
        )?;
        let linger = parse_linger(&self.group_commit_linger)?;
        if linger > std::time::Duration::from_millis(200) {
            anyhow::bail!(
                "--group-commit-linger: at most `200ms` (it adds to every request's latency)"
            );
        }
        config.group_commit_linger = linger;
        config.destinations = self.destinations()?;
        config.query_timeout = positive_duration("--query-timeout", &self.query_timeout)?;
        if self.max_queries_per_key == 0 {
            anyhow::bail!("--max-queries-per-key: at least 1 (0 would refuse every query)");
        }
        config.max_queries_per_key = self.max_queries_per_key;
        config.query_memory_bytes = size_at_least("--query-memory", &self.query_memory, 1 << 20)?;
        config.header_timeout = positive_duration("--header-timeout", &self.header_timeout)?;
        config.body_timeout = positive_duration("--body-timeout", &self.body_timeout)?;
        config.ingest_queue_bytes =
            size_at_least("--ingest-queue-bytes", &self.ingest_queue_bytes, 1 << 10)?;
        Ok(config)
    }

    /// The destination policy of `--allow-export-to`, `--allow-endpoint` and `--allow-engine`,
    /// for the HTTP API and the scheduler.
    pub fn destinations(
        &self,
    ) -> anyhow::Result<spanlake_engine::automation::policy::DestinationPolicy> {
        spanlake_engine::automation::policy::DestinationPolicy::new(
            &self.allow_export_to,
            &self.allow_endpoint,
        )
        .and_then(|policy| policy.with_engines(&self.allow_engine))
        .map_err(anyhow::Error::msg)
    }
}

/// The duration of `flag`, which must be more than zero.
fn positive_duration(flag: &str, text: &str) -> anyhow::Result<std::time::Duration> {
    let duration = spanlake_engine::config::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))?;
    if duration.is_zero() {
        anyhow::bail!("{flag}: must be more than zero, e.g. `30s`");
    }
    Ok(duration)
}

/// The size of `flag`, at least `min` bytes.
fn size_at_least(flag: &str, text: &str, min: usize) -> anyhow::Result<usize> {
    let bytes = usize::try_from(
        spanlake_engine::config::parse_bytes(text).map_err(|e| anyhow::anyhow!("{flag}: {e}"))?,
    )?;
    if bytes < min {
        anyhow::bail!("{flag}: at least {min} bytes, e.g. `256MiB`");
    }
    Ok(bytes)
}

fn parse_linger(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        let ms: u64 = ms.trim().parse().map_err(|_| {
            anyhow::anyhow!("--group-commit-linger: `{text}` is not a duration like `10ms`")
        })?;
        return Ok(std::time::Duration::from_millis(ms));
    }
    spanlake_engine::config::parse_duration(text)
        .map_err(|e| anyhow::anyhow!("--group-commit-linger: {e}"))
}

/// Start the HTTP API in the background (the address is bound before this
/// returns); it stops when `stop` turns true.
pub async fn start(
    store: &Store,
    args: &ServeHttpArgs,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let config = args.config()?;
    let listener = spanlake_server::bind(&config).await?;
    let store = Arc::new(store.reopen()?);
    let metrics = Arc::new(spanlake_server::Metrics::default());
    Ok(tokio::spawn(spanlake_server::serve(
        listener, store, config, metrics, stop,
    )))
}

/// Run an `apikey` subcommand.
pub fn apikey_command(store: &Store, command: ApikeyCommand) -> anyhow::Result<()> {
    let registry = store.registry()?;
    match command {
        ApikeyCommand::Create { org } => {
            let (key, info) = registry.create_api_key(&org)?;
            eprintln!(
                "created API key {} for org `{}` ({}); it is shown once, store it now:",
                info.id, info.org.name, info.org.id
            );
            println!("{key}");
        }
        ApikeyCommand::List => {
            println!(
                "{:<36}  {:<11}  {:<20}  {:<27}  revoked",
                "id", "prefix", "org", "created"
            );
            for key in registry.list_api_keys()? {
                println!(
                    "{:<36}  {:<11}  {:<20}  {:<27}  {}",
                    key.id,
                    key.prefix,
                    key.org.name,
                    key.created,
                    key.revoked.as_deref().unwrap_or("-")
                );
            }
        }
        ApikeyCommand::Revoke { id } => {
            let key = registry.revoke_api_key(&id)?;
            eprintln!("revoked API key {} ({}…)", key.id, key.prefix);
        }
    }
    Ok(())
}
