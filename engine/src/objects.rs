//! Experiments and datasets beside a project's logs: what the SDK's
//! `summarize()` and `spanlake experiment|dataset list|show` report about
//! one, computed by BTQL over its table (so with the same fold, and from
//! the same rows, as any query of it).
//!
//! ```text
//!  experiment('<id>') summary ─► per trace (one eval case): scores averaged over its spans
//!      ├─ unpivot scores ─► per score name: avg over the cases, cases scored
//!      └─ measures ─────► per metric (duration, tokens, cost): avg over the cases that have it
//!  dataset('<id>') ─► count(1): its records
//! ```

use std::collections::BTreeMap;

use futures::TryStreamExt;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::query::{QueryOptions, run_query};
use crate::registry::Project;
use crate::registry::objects::{LogObject, ObjectType};
use crate::store::Store;

/// One score of an experiment: its average over the experiment's cases.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScoreSummary {
    /// The score's name.
    pub name: String,
    /// Average over the cases (traces) that carry it, each case's value the
    /// average over its spans (the `summary` shape's `scores`).
    pub score: f64,
    /// Cases that carry it.
    pub cases: u64,
}

/// One metric of an experiment: its average over the cases that have it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricSummary {
    /// The metric's name (a key of the `summary` shape's `metrics`).
    pub name: String,
    /// Average over the cases that have it.
    pub metric: f64,
    /// Its unit: `s`, `tok` or `$`.
    pub unit: &'static str,
    /// Cases that have it.
    pub cases: u64,
}

/// What an experiment or dataset holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ObjectSummary {
    /// Rows (spans of an experiment, records of a dataset).
    pub rows: u64,
    /// An experiment's cases: its traces (none for a dataset).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cases: Option<u64>,
    /// An experiment's scores, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, ScoreSummary>,
    /// An experiment's metrics, by name.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, MetricSummary>,
}

/// The metrics of the `summary` shape an experiment summary reports, with
/// their units.
const METRICS: &[(&str, &str)] = &[
    ("duration", "s"),
    ("llm_duration", "s"),
    ("prompt_tokens", "tok"),
    ("completion_tokens", "tok"),
    ("total_tokens", "tok"),
    ("estimated_cost", "$"),
];

/// Summarize `object` (its table `table`, see [`Project::for_object`]);
/// each of its queries runs with `options` (a server's memory pool and
/// org; no `page`).
pub async fn summarize_object(
    store: &Store,
    object: &LogObject,
    table: &Project,
    options: &QueryOptions,
) -> Result<ObjectSummary> {
    if table.table_id() != object.id {
        return Err(Error::Internal(format!(
            "summary of `{}` over the table of `{}`",
            object.id,
            table.table_id()
        )));
    }
    let source = format!("{}('{}')", object.object_type, object.id);
    let count = query_rows(
        store,
        &format!("from: {source} | measures: count(1) as n"),
        options,
    )
    .await?;
    let rows = count.first().and_then(|r| r["n"].as_u64()).unwrap_or(0);
    if object.object_type != ObjectType::Experiment {
        return Ok(ObjectSummary {
            rows,
            cases: None,
            scores: BTreeMap::new(),
            metrics: BTreeMap::new(),
        });
    }
    let mut measures = vec!["count(1) as cases".to_string()];
    for (name, _) in METRICS {
        measures.push(format!("avg(metrics.{name}) as avg_{name}"));
        measures.push(format!("count(metrics.{name}) as n_{name}"));
    }
    let totals = query_rows(
        store,
        &format!("from: {source} summary | measures: {}", measures.join(", ")),
        options,
    )
    .await?;
    let totals = totals.into_iter().next().unwrap_or_default();
    let mut metrics = BTreeMap::new();
    for (name, unit) in METRICS {
        let cases = totals[format!("n_{name}").as_str()].as_u64().unwrap_or(0);
        if let Some(metric) = totals[format!("avg_{name}").as_str()].as_f64()
            && cases > 0
        {
            metrics.insert(
                (*name).to_string(),
                MetricSummary {
                    name: (*name).to_string(),
                    metric,
                    unit,
                    cases,
                },
            );
        }
    }
    let per_score = query_rows(
        store,
        &format!(
            "from: {source} summary | unpivot: scores as (score, value) | dimensions: score \
             | measures: avg(value) as avg, count(value) as n"
        ),
        options,
    )
    .await?;
    let mut scores = BTreeMap::new();
    for row in per_score {
        if let (Some(name), Some(score), Some(cases)) = (
            row["score"].as_str(),
            row["avg"].as_f64(),
            row["n"].as_u64(),
        ) {
            scores.insert(
                name.to_string(),
                ScoreSummary {
                    name: name.to_string(),
                    score,
                    cases,
                },
            );
        }
    }
    Ok(ObjectSummary {
        rows,
        cases: totals["cases"].as_u64(),
        scores,
        metrics,
    })
}

/// The rows of a small query (a summary's few rows) as JSON objects.
async fn query_rows(
    store: &Store,
    text: &str,
    options: &QueryOptions,
) -> Result<Vec<serde_json::Value>> {
    let result = run_query(store, text, options).await?;
    let batches: Vec<_> = result.stream.try_collect().await?;
    let mut rows = Vec::new();
    for batch in &batches {
        for row in 0..batch.num_rows() {
            let mut buf = Vec::new();
            crate::query::rows::write_row_object(&mut buf, batch, &result.columns, row)
                .map_err(|e| Error::Internal(format!("summary row: {e}")))?;
            rows.push(
                serde_json::from_slice(&buf)
                    .map_err(|e| Error::Internal(format!("summary row: {e}")))?,
            );
        }
    }
    Ok(rows)
}
