//! `spanlake experiment list|show` and `spanlake dataset list|show`: the
//! experiments and datasets of a project, with what they hold (rows; for
//! an experiment its cases, scores and metrics), as the engine summarizes
//! them.

use clap::Subcommand;
use spanlake_engine::objects::{ObjectSummary, summarize_object};
use spanlake_engine::query::QueryOptions;
use spanlake_engine::registry::objects::{LogObject, ObjectType};
use spanlake_engine::store::Store;

use crate::ListFormat;

/// `spanlake experiment ...` and `spanlake dataset ...`.
#[derive(Debug, Subcommand)]
pub enum ObjectCommand {
    /// List them, oldest first, with their row counts.
    List {
        /// Project id or name.
        #[arg(long, short)]
        project: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// Show one: its fields and what it holds (an experiment's cases,
    /// scores and metrics).
    Show {
        /// Its id, or its name within `--project`.
        object: String,
        /// Project id or name (needed to find it by name).
        #[arg(long, short)]
        project: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
}

/// One object with its summary, as listed and shown.
#[derive(Debug, serde::Serialize)]
struct Described {
    #[serde(flatten)]
    object: LogObject,
    #[serde(flatten)]
    summary: ObjectSummary,
}

/// Run `spanlake experiment|dataset` (`object_type`) `command`.
pub async fn object_command(
    store: &Store,
    object_type: ObjectType,
    command: ObjectCommand,
) -> anyhow::Result<()> {
    match command {
        ObjectCommand::List { project, format } => {
            let (project, objects) = {
                let registry = store.registry()?;
                let project = registry.resolve(&project)?;
                let objects = registry.list_objects(&project, object_type)?;
                (project, objects)
            };
            let mut described = Vec::with_capacity(objects.len());
            for object in objects {
                let table = project.for_object(&object);
                let summary =
                    summarize_object(store, &object, &table, &QueryOptions::default()).await?;
                described.push(Described { object, summary });
            }
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&described)?),
                ListFormat::Table => print_table(object_type, &described),
            }
        }
        ObjectCommand::Show {
            object,
            project,
            format,
        } => {
            let (object, table) = {
                let registry = store.registry()?;
                match (registry.object_table(object_type, &object, None), &project) {
                    (Ok(found), _) => found,
                    (Err(spanlake_engine::Error::UnknownObject { .. }), Some(project)) => {
                        let project = registry.resolve(project)?;
                        let found = registry
                            .object_by_name(&project, object_type, &object)?
                            .ok_or_else(|| {
                                anyhow::anyhow!(
                                    "project `{}` has no {object_type} with id or name `{object}`; list them with `spanlake {object_type} list -p {}`",
                                    project.name,
                                    project.name
                                )
                            })?;
                        let table = project.for_object(&found);
                        (found, table)
                    }
                    (Err(spanlake_engine::Error::UnknownObject { .. }), None) => anyhow::bail!(
                        "no {object_type} has the id `{object}`; give its id (`spanlake {object_type} list -p PROJECT`), or its name with `--project PROJECT`"
                    ),
                    (Err(e), _) => return Err(e.into()),
                }
            };
            let summary =
                summarize_object(store, &object, &table, &QueryOptions::default()).await?;
            let described = Described { object, summary };
            match format {
                ListFormat::Json => println!("{}", serde_json::to_string_pretty(&described)?),
                ListFormat::Table => print_one(&table.name, &described),
            }
        }
    }
    Ok(())
}

fn print_table(object_type: ObjectType, described: &[Described]) {
    let width = described
        .iter()
        .map(|d| d.object.name.len())
        .max()
        .unwrap_or(4)
        .max(4);
    let experiment = object_type == ObjectType::Experiment;
    if experiment {
        println!(
            "{:<36}  {:<width$}  {:>6}  {:>6}  created  scores",
            "id", "name", "rows", "cases"
        );
    } else {
        println!("{:<36}  {:<width$}  {:>6}  created", "id", "name", "rows");
    }
    for d in described {
        if experiment {
            let scores: Vec<String> = d
                .summary
                .scores
                .values()
                .map(|s| format!("{} {:.2}", s.name, s.score))
                .collect();
            println!(
                "{:<36}  {:<width$}  {:>6}  {:>6}  {}  {}",
                d.object.id,
                d.object.name,
                d.summary.rows,
                d.summary.cases.unwrap_or(0),
                d.object.created,
                scores.join(", ")
            );
        } else {
            println!(
                "{:<36}  {:<width$}  {:>6}  {}",
                d.object.id, d.object.name, d.summary.rows, d.object.created
            );
        }
    }
}

fn print_one(project_name: &str, d: &Described) {
    println!(
        "{} `{}` of project `{project_name}`",
        d.object.object_type, d.object.name
    );
    println!("  id       {}", d.object.id);
    println!("  created  {}", d.object.created);
    if let Some(description) = &d.object.description {
        println!("  about    {description}");
    }
    if let Some(metadata) = &d.object.metadata {
        println!("  metadata {metadata}");
    }
    println!("  rows     {}", d.summary.rows);
    if let Some(cases) = d.summary.cases {
        println!("  cases    {cases}");
    }
    for s in d.summary.scores.values() {
        println!(
            "  score    {:<20} {:>6.2}%  ({} cases)",
            s.name,
            s.score * 100.0,
            s.cases
        );
    }
    for m in d.summary.metrics.values() {
        println!(
            "  metric   {:<20} {:>10.4} {}  ({} cases)",
            m.name, m.metric, m.unit, m.cases
        );
    }
}
