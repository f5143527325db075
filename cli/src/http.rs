//! `spanlake apikey ...` and the HTTP options of `spanlake serve`.

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Subcommand;
use spanlake_engine::projects::LOCAL_ORG_NAME;
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
}

impl ServeHttpArgs {
    /// The server configuration, or what is wrong with the flags.
    pub fn config(&self) -> anyhow::Result<spanlake_server::ServerConfig> {
        let mut config = spanlake_server::ServerConfig::new(self.listen);
        config.public_url.clone_from(&self.public_url);
        config.max_body_bytes = usize::try_from(
            spanlake_engine::automation::config::parse_bytes(&self.max_body)
                .map_err(|e| anyhow::anyhow!("--max-body: {e}"))?,
        )?;
        let linger = parse_linger(&self.group_commit_linger)?;
        if linger > std::time::Duration::from_millis(200) {
            anyhow::bail!(
                "--group-commit-linger: at most `200ms` (it adds to every request's latency)"
            );
        }
        config.group_commit_linger = linger;
        Ok(config)
    }
}

fn parse_linger(text: &str) -> anyhow::Result<std::time::Duration> {
    let text = text.trim();
    if let Some(ms) = text.strip_suffix("ms") {
        let ms: u64 = ms.trim().parse().map_err(|_| {
            anyhow::anyhow!("--group-commit-linger: `{text}` is not a duration like `10ms`")
        })?;
        return Ok(std::time::Duration::from_millis(ms));
    }
    spanlake_engine::automation::config::parse_duration(text)
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
    let registry = store.registry();
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
