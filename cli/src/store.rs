//! `spanlake store ...`: maintenance of a project's log table, or of one of
//! its experiments' or datasets' tables.

use clap::Subcommand;
use spanlake_engine::registry::objects::ObjectType;
use spanlake_engine::store::Store;
use spanlake_engine::store::compact::{CompactOptions, Compaction, CompactionReport};

/// `spanlake store ...`
#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Fold each id's row versions into one and merge small files, in one
    /// commit that changes no row (reads and export cursors see the same
    /// data); prints the report as JSON.
    Compact(CompactArgs),
}

/// `spanlake store compact ...`
#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// Project id or name.
    #[arg(long, short)]
    pub project: String,
    /// Compact this experiment's table (its id) instead of the project's logs.
    #[arg(long, value_name = "ID", conflicts_with = "dataset")]
    pub experiment: Option<String>,
    /// Compact this dataset's table (its id) instead of the project's logs.
    #[arg(long, value_name = "ID")]
    pub dataset: Option<String>,
    /// Report what would be rewritten; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Close a new data file past this size, e.g. `128MiB`.
    #[arg(long, default_value = "128MiB", value_name = "SIZE")]
    pub target_file_size: String,
    /// Memory for sorting the versions to fold before it spills to disk, in MiB.
    #[arg(long, default_value_t = 512, value_name = "MIB")]
    pub memory_limit_mib: usize,
}

/// Run a `store` subcommand.
pub async fn store_command(store: &Store, command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Compact(args) => {
            let project = {
                let registry = store.registry()?;
                let project = registry.resolve(&args.project)?;
                match (&args.experiment, &args.dataset) {
                    (Some(id), _) => {
                        registry.automation_table(&project, ObjectType::Experiment, Some(id))?
                    }
                    (None, Some(id)) => {
                        registry.automation_table(&project, ObjectType::Dataset, Some(id))?
                    }
                    (None, None) => project,
                }
            };
            let target_file_bytes = spanlake_engine::config::parse_bytes(&args.target_file_size)
                .map_err(|e| anyhow::anyhow!("--target-file-size: {e}"))?;
            let options = CompactOptions {
                target_file_bytes,
                small_file_bytes: (target_file_bytes / 4).max(1),
                memory_limit_bytes: args.memory_limit_mib.saturating_mul(1024 * 1024),
                dry_run: args.dry_run,
            };
            let (report, _) = Compaction::new(store, &project)
                .options(options)
                .run()
                .await
                .map_err(|e| {
                    anyhow::Error::new(e)
                        .context(format!("compaction of project `{}` failed", project.name))
                })?;
            println!("{}", serde_json::to_string(&report)?);
            let label = project.object.as_ref().map_or_else(
                || project.name.clone(),
                |o| format!("{} {}", o.object_type, o.name),
            );
            eprintln!("{}", summary(&report, &label));
            Ok(())
        }
    }
}

fn summary(report: &CompactionReport, project: &str) -> String {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    if report.is_noop() {
        return format!("`{project}`: nothing to compact");
    }
    let out = match (report.files_out, report.bytes_out) {
        (Some(files), Some(bytes)) => format!("{files} file(s), {:.1} MiB", mib(bytes)),
        _ => "(dry run)".to_string(),
    };
    format!(
        "{}`{project}`: {} id(s) folded{}; rows {} -> {}; \
         files {} ({:.1} MiB) -> {out}; {} file(s) untouched; {:.2}s{}",
        if report.dry_run {
            "would compact "
        } else {
            "compacted "
        },
        report.ids_folded,
        report.tombstones.map_or_else(String::new, |n| format!(
            " ({n} deleted, kept as tombstones)"
        )),
        report.rows_in,
        report.rows_out,
        report.files_in,
        mib(report.bytes_in),
        report.files_untouched,
        report.elapsed_ms as f64 / 1000.0,
        report
            .version
            .map_or_else(String::new, |v| format!("; table version {v}")),
    )
}

/// Automatic compaction options of `spanlake serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeCompactionArgs {
    /// Compact a project once at least N row versions (and 10% of all) are in
    /// files holding versions to fold (merges, deletes, replaces of known
    /// ids), or once it has 32 small files. Checked every minute.
    #[arg(long, default_value_t = 10_000, value_name = "N")]
    pub compact_min_rows: u64,
    /// Never compact automatically.
    #[arg(long)]
    pub no_compact: bool,
}

impl ServeCompactionArgs {
    /// The policy `serve` applies (`None`: no automatic compaction).
    pub fn policy(&self) -> Option<spanlake_engine::store::compact::CompactionPolicy> {
        (!self.no_compact).then(|| spanlake_engine::store::compact::CompactionPolicy {
            min_dirty_rows: self.compact_min_rows,
            ..Default::default()
        })
    }
}
