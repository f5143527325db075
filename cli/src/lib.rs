//! The `spanlake` command line: argument parsing, rendering of results and
//! errors. No business logic lives here; it calls `spanlake-engine`.
//!
//! Exit codes (stable):
//! - `0`: success;
//! - `1`: the query or the data was rejected (a BTQL error, invalid input
//!   lines, an unknown project) or the query failed while running;
//! - `2`: usage, configuration or I/O error (bad flags, unreadable file,
//!   locked store).

pub mod automation;
pub mod cluster;
pub mod http;
pub mod objects;
pub use spanlake_dsl::diagnostics;
pub mod render;
pub mod store;

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use spanlake_engine::Error as EngineError;
use spanlake_engine::ingest::{IngestOptions, IngestReport, ingest};
use spanlake_engine::query::QueryOptions;
use spanlake_engine::registry::objects::ObjectType::{Dataset, Experiment};
use spanlake_engine::store::{Store, StoreOptions};

/// spanlake: a store and query engine for LLM trace logs (Braintrust-style spans).
#[derive(Debug, Parser)]
#[command(name = "spanlake", version, about, max_term_width = 100)]
pub struct Cli {
    /// Data directory: the log store and the state database.
    #[arg(
        long,
        global = true,
        env = "SPANLAKE_DATA_DIR",
        default_value = "./spanlake-data",
        value_name = "DIR"
    )]
    pub data_dir: PathBuf,

    /// Do not fsync: faster writes for throwaway stores. By default every
    /// writer (`ingest`, `serve`'s HTTP ingest, retention, compaction,
    /// exports to a local folder) fsyncs its data files, its commit or
    /// manifest and their folders before it reports success, so that what
    /// was acknowledged survives a power loss. Without fsync a killed
    /// process still loses nothing, but a power loss may lose the last
    /// seconds of acknowledged writes.
    #[arg(long, global = true, env = "SPANLAKE_NO_FSYNC")]
    pub no_fsync: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create and list projects.
    #[command(subcommand)]
    Project(ProjectCommand),
    /// Ingest insert events from a JSON Lines file (`-` for stdin).
    Ingest(IngestArgs),
    /// Run a BTQL query and print the rows.
    Query(QueryArgs),
    /// Export automations: create, run, test, inspect.
    #[command(subcommand)]
    Automation(automation::AutomationCommand),
    /// Export the rows of a BTQL query once, as partitioned Parquet or JSON Lines.
    Export(automation::ExportArgs),
    /// Run every active automation at its interval until SIGINT or SIGTERM
    /// (the current run finishes first; a second signal exits at once).
    Serve {
        /// One pass over the due automations, then exit (for cron and tests).
        #[arg(long)]
        once: bool,
        /// The first wait after a run that failed in a way a retry may cure
        /// (a 5xx, 429, timeout or lost connection of the destination); it
        /// doubles with each such failure in a row, at most 64 times and at
        /// most the automation's interval. Any other failure waits a whole
        /// interval, or until the configuration changes.
        #[arg(long, default_value = "60s", value_name = "DURATION")]
        retry_delay: String,
        /// Automatic compaction.
        #[command(flatten)]
        compaction: store::ServeCompactionArgs,
        /// The HTTP API (not with `--once`).
        #[command(flatten)]
        http: http::ServeHttpArgs,
    },
    /// API keys of the HTTP API.
    #[command(subcommand)]
    Apikey(http::ApikeyCommand),
    /// Maintenance of a project's log table (compaction).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// The experiments of a project (`Eval` runs): list, show.
    #[command(subcommand)]
    Experiment(objects::ObjectCommand),
    /// The datasets of a project: list, show.
    #[command(subcommand)]
    Dataset(objects::ObjectCommand),
    /// Roles of a Ballista cluster that runs exports and queries
    /// (`--engine ballista://HOST:PORT`); every role is this binary.
    #[command(subcommand)]
    Ballista(cluster::BallistaCommand),
}

/// `spanlake project ...`
#[derive(Debug, Subcommand)]
pub enum ProjectCommand {
    /// Create a project; prints its id.
    Create {
        /// Unique project name.
        name: String,
    },
    /// List the projects.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// Formats of listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
}

/// `spanlake ingest ...`
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Project id or name (an unknown id or name creates the project).
    #[arg(long, short)]
    pub project: String,
    /// JSON Lines file of insert events, `-` for stdin.
    pub file: PathBuf,
    /// Commit the valid lines and write the invalid ones, with reasons, to
    /// `--rejects` (default `<FILE>.rejected.jsonl`, or `rejected.jsonl` for stdin).
    #[arg(long)]
    pub skip_invalid: bool,
    /// Where `--skip-invalid` writes rejected lines.
    #[arg(long, requires = "skip_invalid", value_name = "FILE")]
    pub rejects: Option<PathBuf>,
    /// Rows decoded and handed to the writer together (bounds memory).
    #[arg(long, default_value_t = 16 * 1024, value_name = "N")]
    pub chunk_rows: usize,
    /// Commit every N rows instead of once for the whole input.
    #[arg(long, value_name = "N")]
    pub commit_rows: Option<u64>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `spanlake query ...`
#[derive(Debug, clap::Args)]
pub struct QueryArgs {
    /// The query (BTQL clause syntax), or `-` to read it from stdin.
    pub query: String,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = render::Format::Table)]
    pub format: render::Format,
    /// Write to this file instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Time zone offset for time bucketing, in minutes (480 = UTC−8, as JavaScript's getTimezoneOffset).
    #[arg(
        long,
        default_value_t = 0,
        allow_negative_numbers = true,
        value_name = "MINUTES"
    )]
    pub tz_offset: i32,
    /// Memory for sorts and other blocking operators before they spill to disk, in MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub memory_limit_mib: usize,
    /// Read the result in pages of N rows: with `--format json` the output is
    /// `{"data": [...], "cursor": "..."}` (no `cursor` on the last page);
    /// other formats print the next cursor on stderr.
    #[arg(long, value_name = "N")]
    pub page_size: Option<u64>,
    /// Where it runs: `local` (default) or `ballista://HOST:PORT`, the
    /// scheduler of a cluster (`spanlake ballista scheduler`).
    #[arg(long, value_name = "ENGINE", default_value = "local")]
    pub engine: String,
    /// Continue after the page that returned this cursor. Pages read the
    /// snapshot of the first page, so they stay consistent while ingest goes on.
    /// A cursor in the query text (`cursor: '<token>'`, SQL `OFFSET
    /// '<token>'`) pages as over HTTP: by its `limit:` (on `traces`, which
    /// counts traces, by 1000 rows), without `--page-size`.
    #[arg(long, value_name = "TOKEN", requires = "page_size")]
    pub cursor: Option<String>,
}

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a rejected query or data.
pub const EXIT_DATA: u8 = 1;
/// Exit code for usage, configuration and I/O errors.
pub const EXIT_USAGE: u8 = 2;

/// Run the CLI with the process arguments.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SPANLAKE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

/// Run a parsed command line; returns the exit code. Errors are printed here, once.
pub async fn run(cli: Cli) -> u8 {
    // The roles of a cluster use no store of their own.
    if let Command::Ballista(command) = cli.command {
        return match cluster::ballista_command(command).await {
            Ok(()) => EXIT_OK,
            Err(e) => report_error(&e),
        };
    }
    let options = StoreOptions {
        fsync: !cli.no_fsync,
    };
    let store = match Store::open_with(&cli.data_dir, options) {
        Ok(store) => store,
        Err(e) => {
            return report_error(&anyhow::Error::new(e).context(format!(
                "cannot open the data directory `{}`",
                cli.data_dir.display()
            )));
        }
    };
    let result = match cli.command {
        Command::Project(command) => project(&store, command),
        Command::Ingest(args) => ingest_command(&store, args).await,
        Command::Query(args) => return query_command(&store, args).await,
        Command::Automation(command) => automation::automation_command(&store, command).await,
        Command::Serve {
            once,
            retry_delay,
            compaction,
            http,
        } => serve_command(&store, once, &retry_delay, &compaction, &http).await,
        Command::Apikey(command) => http::apikey_command(&store, command),
        Command::Store(command) => store::store_command(&store, command).await,
        Command::Experiment(command) => objects::object_command(&store, Experiment, command).await,
        Command::Dataset(command) => objects::object_command(&store, Dataset, command).await,
        Command::Ballista(_) => unreachable!("run before the store opens"),
        Command::Export(args) => {
            let text = args.query.clone();
            let result = automation::export_command(&store, args).await;
            if let Err(error) = &result
                && let Some(EngineError::Query(diagnostics)) = error.downcast_ref::<EngineError>()
            {
                return render_diagnostics(diagnostics, &text);
            }
            result
        }
    };
    match result {
        Ok(()) => EXIT_OK,
        Err(e) => report_error(&e),
    }
}

fn exit_code_of(error: &anyhow::Error) -> u8 {
    for cause in error.chain() {
        if let Some(engine) = cause.downcast_ref::<EngineError>() {
            if engine.is_user_data_error() {
                return EXIT_DATA;
            }
            if matches!(engine, EngineError::DataFusion(_) | EngineError::Arrow(_)) {
                return EXIT_DATA;
            }
        }
    }
    EXIT_USAGE
}

/// Print `error` and its causes once, with any line errors, and return its exit code.
fn report_error(error: &anyhow::Error) -> u8 {
    let mut text = format!("error: {error}");
    for cause in error.chain().skip(1) {
        text.push_str(&format!("\n  caused by: {cause}"));
    }
    for cause in error.chain() {
        if let Some(EngineError::InvalidInput { errors, .. }) = cause.downcast_ref::<EngineError>()
        {
            for line_error in errors {
                if line_error.line == 0 {
                    text.push_str(&format!("\n  {}", line_error.message));
                } else {
                    text.push_str(&format!("\n  {line_error}"));
                }
            }
            text.push_str(
                "\n  help: fix these lines, or pass --skip-invalid to commit the valid ones and write the rejected ones to a file",
            );
        }
        if let Some(EngineError::Locked { .. }) = cause.downcast_ref::<EngineError>() {
            text.push_str("\n  help: wait for the other ingest to finish, then retry");
        }
    }
    eprintln!("{text}");
    exit_code_of(error)
}

async fn serve_command(
    store: &Store,
    once: bool,
    retry_delay: &str,
    compaction: &store::ServeCompactionArgs,
    http: &http::ServeHttpArgs,
) -> anyhow::Result<()> {
    let retry_delay = spanlake_engine::config::parse_duration(retry_delay)
        .map_err(|e| anyhow::anyhow!("--retry-delay: {e}"))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let next_signal = async {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async {
                    match terminate.as_mut() {
                        Some(signal) => { signal.recv().await; }
                        None => std::future::pending::<()>().await,
                    }
                } => {}
            }
        };
        next_signal.await;
        eprintln!("stopping: the current run finishes first (signal again to exit now)");
        let _ = stop_tx.send(true);
        let _ = tokio::signal::ctrl_c().await;
        std::process::exit(130);
    });
    let options = spanlake_engine::automation::scheduler::SchedulerOptions {
        once,
        retry_delay,
        compaction: compaction.policy(),
        destinations: http.destinations()?,
        ..Default::default()
    };
    if !once {
        eprintln!(
            "serving automations of `{}`; Ctrl-C to stop",
            store.data_dir().display()
        );
    }
    let server = if once || http.no_http {
        None
    } else {
        Some(http::start(store, http, stop_rx.clone()).await?)
    };
    spanlake_engine::automation::scheduler::serve(store, &options, stop_rx).await?;
    if let Some(server) = server {
        server.await.context("the HTTP server task failed")??;
    }
    Ok(())
}

/// Print query diagnostics with carets; returns the exit code of a rejected query.
fn render_diagnostics(diagnostics: &spanlake_dsl::Diagnostics, text: &str) -> u8 {
    let mut rendered = String::new();
    for diagnostic in &diagnostics.0 {
        rendered.push_str(&diagnostics::render(diagnostic, text, "query"));
    }
    eprint!("{rendered}");
    EXIT_DATA
}

fn project(store: &Store, command: ProjectCommand) -> anyhow::Result<()> {
    let registry = store.registry()?;
    match command {
        ProjectCommand::Create { name } => {
            let project = registry.create(&name)?;
            println!("{}", project.id);
            eprintln!("created project `{}` ({})", project.name, project.id);
        }
        ProjectCommand::List { format } => {
            let projects = registry.list()?;
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&projects)?),
                ListFormat::Table => {
                    let width = projects
                        .iter()
                        .map(|p| p.name.len())
                        .max()
                        .unwrap_or(4)
                        .max(4);
                    println!("{:<36}  {:<width$}  created", "id", "name");
                    for p in &projects {
                        println!("{:<36}  {:<width$}  {}", p.id, p.name, p.created);
                    }
                }
            }
        }
    }
    Ok(())
}

async fn ingest_command(store: &Store, args: IngestArgs) -> anyhow::Result<()> {
    let project = store.registry()?.resolve_or_create(&args.project)?;
    let stdin = args.file.as_os_str() == "-";
    let (input, source_name): (Box<dyn BufRead + Send>, String) = if stdin {
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, std::io::stdin())),
            "<stdin>".into(),
        )
    } else {
        let file = std::fs::File::open(&args.file)
            .with_context(|| format!("cannot open `{}`", args.file.display()))?;
        (
            Box::new(std::io::BufReader::with_capacity(1 << 20, file)),
            args.file.display().to_string(),
        )
    };
    let rejects = args.skip_invalid.then(|| {
        args.rejects.clone().unwrap_or_else(|| {
            if stdin {
                PathBuf::from("rejected.jsonl")
            } else {
                let mut name = args.file.clone().into_os_string();
                name.push(".rejected.jsonl");
                PathBuf::from(name)
            }
        })
    });
    let options = IngestOptions {
        chunk_rows: args.chunk_rows,
        commit_rows: args.commit_rows,
        rejects: rejects.clone(),
        ..IngestOptions::default()
    };
    let started = std::time::Instant::now();
    let report = ingest(store, &project, input, &source_name, &options)
        .await
        .with_context(|| {
            format!(
                "ingest of `{source_name}` into project `{}` failed",
                project.name
            )
        })?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    print_ingest_report(
        &report,
        &project.name,
        started.elapsed(),
        rejects.as_deref(),
    );
    Ok(())
}

fn print_ingest_report(
    report: &IngestReport,
    project: &str,
    elapsed: std::time::Duration,
    rejects: Option<&std::path::Path>,
) {
    let seconds = elapsed.as_secs_f64();
    let xacts: Vec<&str> = report.commits.iter().map(|c| c.xact_id.as_str()).collect();
    eprintln!(
        "ingested {} row(s) into `{project}` in {:.2}s ({:.0} rows/s), {} commit(s){}",
        report.rows,
        seconds,
        report.rows as f64 / seconds.max(1e-9),
        report.commits.len(),
        if xacts.is_empty() {
            String::new()
        } else {
            format!(", _xact_id {}", xacts.join(", "))
        }
    );
    if report.rejected > 0 {
        eprintln!(
            "rejected {} line(s); see `{}`",
            report.rejected,
            rejects.map_or_else(String::new, |p| p.display().to_string())
        );
    }
    if !report.ignored_fields.is_empty() {
        let fields: Vec<String> = report
            .ignored_fields
            .iter()
            .map(|(name, count)| format!("`{name}` ({count})"))
            .collect();
        eprintln!(
            "ignored fields that the server assigns or does not know: {}",
            fields.join(", ")
        );
    }
}

async fn query_command(store: &Store, args: QueryArgs) -> u8 {
    let text = if args.query == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            return report_error(
                &anyhow::Error::new(e).context("cannot read the query from stdin"),
            );
        }
        text
    } else {
        args.query.clone()
    };
    let options = QueryOptions {
        tz_offset_minutes: args.tz_offset,
        memory_limit_bytes: args.memory_limit_mib.saturating_mul(1024 * 1024),
        page: args
            .page_size
            .map(|size| spanlake_engine::query::Paging::of(size, args.cursor.clone())),
        ..QueryOptions::default()
    };
    let engine = match spanlake_engine::cluster::Engine::parse(&args.engine) {
        Ok(engine) => engine,
        Err(e) => return report_error(&anyhow::anyhow!("--engine: {e}")),
    };
    let codec = spanlake_engine::export::cluster_codec();
    let stream =
        match spanlake_engine::cluster::run_query(store, &text, &options, &engine, &codec).await {
            Ok(stream) => stream,
            Err(EngineError::Query(diagnostics)) => return render_diagnostics(&diagnostics, &text),
            Err(e) => return report_error(&anyhow::Error::new(e).context("query failed")),
        };
    let result = async {
        let mut out: Box<dyn Write + Send> = match &args.output {
            Some(path) => Box::new(std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create `{}`", path.display()))?,
            )),
            None => {
                if args.format == render::Format::Parquet && std::io::stdout().is_terminal() {
                    anyhow::bail!(
                        "refusing to write Parquet to a terminal; pass --output FILE or redirect stdout"
                    );
                }
                Box::new(std::io::BufWriter::with_capacity(1 << 16, std::io::stdout()))
            }
        };
        render::write_rows(stream, args.format, &mut out).await
    }
    .await;
    match result {
        Ok(written) => {
            if args.format != render::Format::Json
                && let Some(cursor) = &written.next_cursor
            {
                if args.page_size.is_some() {
                    eprintln!("next page: --cursor {cursor}");
                } else {
                    eprintln!("next page: the same query with `cursor: '{cursor}'`");
                }
            }
            EXIT_OK
        }
        Err(e) => {
            // A closed pipe (`| head`) is not an error.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return EXIT_OK;
            }
            report_error(&e)
        }
    }
}
