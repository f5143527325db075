//! `spanlake automation ...` and `spanlake export ...`: argument parsing and
//! printing around `spanlake_engine::export` and the automation state.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};
use clap::Subcommand;
use spanlake_engine::automation::runner::{
    AutomationConfig, RunError, RunReport, Runner, TestReport,
};
use spanlake_engine::export::{ExportProgress, RawExportConfig, export_query};
use spanlake_engine::query::QueryOptions;
use spanlake_engine::state::{Automation, Kind, Origin, StateDb, Trigger};
use spanlake_engine::store::Store;

/// `spanlake automation ...`
#[derive(Debug, Subcommand)]
pub enum AutomationCommand {
    /// Create an export automation (validated now, not at 3 a.m.).
    CreateExport(Box<CreateExportArgs>),
    /// Create a retention automation: delete logs older than N days.
    CreateRetention(CreateRetentionArgs),
    /// List automations.
    List {
        /// Only this project's (id or name).
        #[arg(long, short)]
        project: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one automation's configuration.
    Show(Selector),
    /// The last run, totals, and whether it keeps up.
    Status(Selector),
    /// Every run, newest first.
    History {
        /// Which automation.
        #[command(flatten)]
        selector: Selector,
        /// How many runs.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Run now, whatever the schedule.
    Run(Selector),
    /// Write, read back and delete a probe file at the destination.
    Test(Selector),
    /// Clear the cursor and the history: the next run starts from the beginning.
    Reset(Selector),
    /// Stop scheduled runs.
    Pause(Selector),
    /// Resume scheduled runs.
    Resume(Selector),
    /// Delete the automation, its cursor and its history (not exported files).
    Delete(Selector),
    /// The external id and the IAM trust and permissions policies of the
    /// role an S3 export assumes (bucket and prefix filled in).
    RolePolicy {
        /// Which export.
        #[command(flatten)]
        selector: Selector,
        /// ARN of the identity that assumes the role (the user or role
        /// spanlake runs as); a placeholder to replace without it.
        #[arg(long)]
        principal: Option<String>,
    },
}

/// Names an automation: its id, or its name with `--project`.
#[derive(Debug, clap::Args)]
pub struct Selector {
    /// Automation id, or name (with `--project`).
    pub automation: String,
    /// Project id or name, to find the automation by name.
    #[arg(long, short)]
    pub project: Option<String>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `create-export` (see `automations.md` for each field).
#[derive(Debug, clap::Args)]
pub struct CreateExportArgs {
    /// Project id or name.
    #[arg(long, short)]
    pub project: String,
    /// Unique name within the project.
    #[arg(long)]
    pub name: String,
    /// Free text.
    #[arg(long, default_value = "")]
    pub description: String,
    /// `traces`, `spans` or `query`.
    #[arg(long)]
    pub data: String,
    /// What is exported: `project_logs` (default), `experiment` or
    /// `dataset` (the one `--object-id` names).
    #[arg(long, value_name = "TYPE")]
    pub object_type: Option<String>,
    /// The id of the experiment or dataset to export (`spanlake experiment
    /// list -p PROJECT`).
    #[arg(long, value_name = "ID")]
    pub object_id: Option<String>,
    /// The BTQL of a `query` export.
    #[arg(long)]
    pub btql: Option<String>,
    /// Destination: `s3://bucket/prefix`, `file:///abs/path` or a local folder.
    #[arg(long = "to", value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub sink: SinkArgs,
    /// How often it runs (e.g. `5m`, `1h`, `24h`).
    #[arg(long)]
    pub interval: Option<String>,
    /// Rows after which a run stops (at a commit boundary) and reports `behind`.
    #[arg(long)]
    pub max_rows_per_run: Option<u64>,
    /// For `traces`: export a trace only after it has been idle this long.
    #[arg(long)]
    pub trace_idle: Option<String>,
    /// IAM role to assume (external id `spanlake:<org>:<project>:<automation>`).
    #[arg(long)]
    pub role_arn: Option<String>,
    /// Endpoint of an S3-compatible server.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Where its runs execute: `local` (default) or `ballista://HOST:PORT`,
    /// the scheduler of a cluster (`spanlake ballista scheduler`).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
}

/// Flags of `create-retention`.
#[derive(Debug, clap::Args)]
pub struct CreateRetentionArgs {
    /// Project id or name.
    #[arg(long, short)]
    pub project: String,
    /// Rows created more than this many days before a run are deleted.
    #[arg(long)]
    pub days: u32,
    /// Whose rows go: `project_logs` (default), `experiment` or `dataset`
    /// (the rows of every experiment or dataset of the project).
    #[arg(long, value_name = "TYPE")]
    pub object_type: Option<String>,
    /// Unique name within the project (default `retention-<days>d`).
    #[arg(long)]
    pub name: Option<String>,
    /// Deleted rows' files are purged after this period.
    #[arg(long, default_value = "24h")]
    pub grace: String,
    /// How often it runs.
    #[arg(long, default_value = "24h")]
    pub interval: String,
    /// Allow `--days 0` (deletes everything up to now).
    #[arg(long)]
    pub force: bool,
}

/// How files are written.
#[derive(Debug, clap::Args)]
pub struct SinkArgs {
    /// `parquet` (default) or `jsonl`.
    #[arg(long)]
    pub format: Option<String>,
    /// Parquet: `zstd` (default), `snappy`, `none`; JSON Lines: `none`, `gzip`.
    #[arg(long)]
    pub compression: Option<String>,
    /// Rows read, encoded and flushed together (bounds memory).
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// `day` (default), `hour` or `none`.
    #[arg(long)]
    pub partitioning: Option<String>,
    /// A file is closed past this size, e.g. `256MiB`.
    #[arg(long)]
    pub max_file_bytes: Option<String>,
}

/// `spanlake export QUERY --to URL`
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// The BTQL query whose rows to export.
    pub query: String,
    /// Destination: `s3://bucket/prefix`, `file:///abs/path` or a local folder.
    #[arg(long = "to", value_name = "URL")]
    pub to: String,
    #[command(flatten)]
    pub sink: SinkArgs,
    /// Endpoint of an S3-compatible server.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Where it runs: `local` (default) or `ballista://HOST:PORT`, the
    /// scheduler of a cluster (`spanlake ballista scheduler`).
    #[arg(long, value_name = "ENGINE")]
    pub engine: Option<String>,
}

/// A progress bar on stderr, fed from `progress` until the task is aborted.
fn show_progress(
    progress: std::sync::Arc<ExportProgress>,
) -> (indicatif::ProgressBar, tokio::task::JoinHandle<()>) {
    use std::sync::atomic::Ordering::Relaxed;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} exporting {human_pos}/{human_len} rows [{bar:30}] {elapsed}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let shown = bar.clone();
    let task = tokio::spawn(async move {
        loop {
            shown.set_length(progress.total.load(Relaxed));
            shown.set_position(progress.rows.load(Relaxed));
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    });
    (bar, task)
}

fn state_db(store: &Store) -> anyhow::Result<StateDb> {
    Ok(StateDb::of(store)?)
}

/// A local folder becomes a `file://` URL (created if missing); URLs pass.
fn destination_url(to: &str) -> anyhow::Result<String> {
    if to.contains("://") {
        return Ok(to.to_string());
    }
    let path = Path::new(to);
    std::fs::create_dir_all(path).with_context(|| format!("cannot create `{to}`"))?;
    let absolute = path
        .canonicalize()
        .with_context(|| format!("cannot resolve `{to}`"))?;
    Ok(format!("file://{}", absolute.display()))
}

fn find(store: &Store, state: &StateDb, selector: &Selector) -> anyhow::Result<Automation> {
    if let Some(found) = state.get(&selector.automation)? {
        return Ok(found);
    }
    let Some(project) = &selector.project else {
        bail!(
            "no automation with id `{}`; to find one by name, add --project",
            selector.automation
        );
    };
    let project = store.registry()?.resolve(project)?;
    state
        .find_by_name(&project.id, &selector.automation)?
        .with_context(|| {
            format!(
                "no automation named `{}` in project `{}`; see `spanlake automation list`",
                selector.automation, project.name
            )
        })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Run an automation subcommand.
pub async fn automation_command(store: &Store, command: AutomationCommand) -> anyhow::Result<()> {
    let state = state_db(store)?;
    match command {
        AutomationCommand::CreateExport(args) => {
            let project = store.registry()?.resolve(&args.project)?;
            let raw = RawExportConfig {
                object_type: args.object_type,
                object_id: args.object_id,
                data: args.data,
                btql: args.btql,
                export_path: destination_url(&args.to)?,
                format: args.sink.format,
                compression: args.sink.compression,
                interval: args.interval,
                batch_size: args.sink.batch_size,
                partitioning: args.sink.partitioning,
                max_file_bytes: args.sink.max_file_bytes,
                max_rows_per_run: args.max_rows_per_run,
                trace_idle: args.trace_idle,
                role_arn: args.role_arn,
                endpoint: args.endpoint,
                engine: args.engine,
            };
            let (validated, stored) =
                AutomationConfig::validate(Kind::Export, serde_json::to_value(&raw)?)?;
            validated.check_object(store, &project)?;
            let automation = state.create(
                &project.id,
                &args.name,
                &args.description,
                Kind::Export,
                &stored,
                Origin::Cli,
            )?;
            println!("{}", automation.id);
            eprintln!(
                "created export `{}` of project `{}` to {}",
                automation.name, project.name, raw.export_path
            );
            if raw.role_arn.is_some() {
                eprintln!(
                    "the role's trust policy must require sts:ExternalId = {}",
                    spanlake_engine::sink::credentials::external_id(
                        &project.org_id,
                        &project.id,
                        &automation.id
                    )
                );
            }
        }
        AutomationCommand::CreateRetention(args) => {
            let project = store.registry()?.resolve(&args.project)?;
            let whose = match &args.object_type {
                Some(t) if t != "project_logs" => format!("{t}-"),
                _ => String::new(),
            };
            let config = spanlake_engine::retention::RetentionConfig {
                object_type: args.object_type,
                retention_days: args.days,
                grace: args.grace,
                interval: args.interval,
                force: args.force,
            };
            let (_, stored) =
                AutomationConfig::validate(Kind::Retention, serde_json::to_value(&config)?)?;
            let name = args
                .name
                .unwrap_or_else(|| format!("retention-{whose}{}d", args.days));
            let automation = state.create(
                &project.id,
                &name,
                "",
                Kind::Retention,
                &stored,
                Origin::Cli,
            )?;
            println!("{}", automation.id);
            eprintln!(
                "created retention `{name}` of project `{}`: rows older than {} day(s) go; preview with `spanlake automation test {name} -p {}`",
                project.name, args.days, project.name
            );
        }
        AutomationCommand::List { project, json } => {
            let project_id = match project {
                Some(p) => Some(store.registry()?.resolve(&p)?.id),
                None => None,
            };
            let automations = state.list(project_id.as_deref())?;
            if json {
                return print_json(&automations);
            }
            println!("{:<36}  {:<9}  {:<7}  name", "id", "kind", "status");
            for a in &automations {
                let kind = serde_json::to_value(a.kind)?;
                println!(
                    "{:<36}  {:<9}  {:<7}  {}",
                    a.id,
                    kind.as_str().unwrap_or_default(),
                    a.status,
                    a.name
                );
            }
        }
        AutomationCommand::Show(selector) => {
            let automation = find(store, &state, &selector)?;
            print_json(&automation)?;
        }
        AutomationCommand::Status(selector) => {
            let automation = find(store, &state, &selector)?;
            print_json(&state.status_json(&automation)?)?;
        }
        AutomationCommand::History { selector, limit } => {
            let automation = find(store, &state, &selector)?;
            let runs = state.runs(&automation.id, limit)?;
            if selector.json {
                return print_json(&runs);
            }
            println!(
                "{:<36}  {:<8}  {:<9}  {:>9}  {:>11}  {:>5}  started",
                "run", "trigger", "status", "rows", "bytes", "files"
            );
            for r in &runs {
                let status = serde_json::to_value(r.status)?;
                println!(
                    "{:<36}  {:<8}  {:<9}  {:>9}  {:>11}  {:>5}  {}{}",
                    r.run_id,
                    r.trigger,
                    status.as_str().unwrap_or_default(),
                    r.rows,
                    r.bytes,
                    r.files,
                    r.started,
                    r.error
                        .as_deref()
                        .map_or_else(String::new, |e| format!("  error: {e}"))
                );
            }
        }
        AutomationCommand::Run(selector) => {
            let automation = find(store, &state, &selector)?;
            let progress = (automation.kind == Kind::Export)
                .then(|| std::sync::Arc::new(ExportProgress::default()));
            let bar = progress
                .as_ref()
                .filter(|_| std::io::stderr().is_terminal())
                .map(|progress| show_progress(std::sync::Arc::clone(progress)));
            let result = Runner::new(store, &state)
                .run(&automation, Trigger::Manual, progress)
                .await;
            if let Some((bar, task)) = bar {
                task.abort();
                bar.finish_and_clear();
            }
            let report = match result.map_err(run_error)? {
                RunReport::Retention(report) => return print_json(&report),
                RunReport::Export(report) => report,
            };
            for note in &report.recovered {
                eprintln!("recovered: {note}");
            }
            if selector.json {
                return print_json(&report);
            }
            match &report.manifest {
                Some(manifest) => eprintln!(
                    "exported {} row(s) in {} file(s), {} bytes; manifest `{manifest}`{}",
                    report.rows,
                    report.files,
                    report.bytes,
                    if report.status == spanlake_engine::state::RunStatus::Behind {
                        "; behind: more data waits, run again"
                    } else {
                        ""
                    }
                ),
                None => eprintln!("nothing new to export"),
            }
        }
        AutomationCommand::Test(selector) => {
            let automation = find(store, &state, &selector)?;
            let report = Runner::new(store, &state)
                .test(&automation)
                .await
                .map_err(run_error)?;
            let steps = match &report {
                // The preview: the same plan as a dry run; nothing changes.
                TestReport::Retention(preview) => return print_json(preview),
                TestReport::Export { steps, .. } => steps,
            };
            if selector.json {
                print_json(steps)?;
            } else {
                for step in steps {
                    println!(
                        "{} {:<7} {}",
                        if step.ok { "ok  " } else { "FAIL" },
                        step.step,
                        step.message
                    );
                }
            }
            if let Some(failed) = report.failed_step() {
                bail!("test failed at step `{}`", failed.step);
            }
        }
        AutomationCommand::Reset(selector) => {
            let automation = find(store, &state, &selector)?;
            state.reset(&automation.id)?;
            eprintln!(
                "reset `{}`: the next run exports from the beginning",
                automation.name
            );
        }
        AutomationCommand::Pause(selector) => {
            let automation = find(store, &state, &selector)?;
            state.set_status(&automation.id, "paused")?;
            eprintln!("paused `{}`", automation.name);
        }
        AutomationCommand::Resume(selector) => {
            let automation = find(store, &state, &selector)?;
            state.set_status(&automation.id, "active")?;
            eprintln!("resumed `{}`", automation.name);
        }
        AutomationCommand::RolePolicy {
            selector,
            principal,
        } => {
            let automation = find(store, &state, &selector)?;
            let AutomationConfig::Export(config) = AutomationConfig::of(&automation)? else {
                bail!(
                    "`{}` is a retention automation; only exports assume a role",
                    automation.name
                );
            };
            let project = store.with_registry(|r| r.get(&automation.project_id))?;
            let policy = spanlake_engine::export::role::role_policy(
                &project.org_id,
                &project.id,
                Some(&automation.id),
                &config.export_path,
                principal.as_deref(),
            )?;
            if selector.json {
                return print_json(&policy);
            }
            println!("external id: {}", policy.external_id);
            println!("\ntrust policy:");
            println!("{}", serde_json::to_string_pretty(&policy.trust_policy)?);
            println!("\npermissions policy:");
            println!(
                "{}",
                serde_json::to_string_pretty(&policy.permissions_policy)?
            );
            for note in &policy.notes {
                eprintln!("note: {note}");
            }
        }
        AutomationCommand::Delete(selector) => {
            let automation = find(store, &state, &selector)?;
            state.delete(&automation.id)?;
            eprintln!(
                "deleted `{}` (exported files stay where they are)",
                automation.name
            );
        }
    }
    Ok(())
}

/// `spanlake export QUERY --to URL`: one-shot, through the same sink.
pub async fn export_command(store: &Store, args: ExportArgs) -> anyhow::Result<()> {
    let raw = RawExportConfig {
        data: "query".to_string(),
        btql: Some(args.query.clone()),
        export_path: destination_url(&args.to)?,
        format: args.sink.format,
        compression: args.sink.compression,
        batch_size: args.sink.batch_size,
        partitioning: args.sink.partitioning,
        max_file_bytes: args.sink.max_file_bytes,
        endpoint: args.endpoint,
        engine: args.engine,
        ..RawExportConfig::default()
    };
    let config = raw.validate()?;
    let manifest = export_query(store, &args.query, &config, &QueryOptions::default()).await?;
    eprintln!(
        "exported {} row(s) in {} file(s) to {}; manifest `_manifests/{}.json`",
        manifest.rows,
        manifest.files.len(),
        raw.export_path,
        manifest.run_id
    );
    Ok(())
}

/// A runner's failure, with the engine's error itself when it is one (the
/// exit code depends on it).
fn run_error(error: RunError) -> anyhow::Error {
    match error {
        RunError::Failed(error) => anyhow::Error::new(error),
        refused => anyhow::Error::new(refused),
    }
}
