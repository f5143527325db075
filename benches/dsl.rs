//! Parse and plan cost of typical BTQL queries (criterion).
//!
//! Names give stage and input: `parse_<query>`, `plan_<query>`. Planning runs
//! against a catalog that returns the spans schema as a plain table source,
//! so no storage is touched.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use datafusion_expr::TableSource;
use datafusion_expr::logical_plan::builder::LogicalTableSource;
use spanlake_dsl::{Catalog, PlanOptions, parse_query, plan_query, schema::spans_schema};

#[derive(Debug)]
struct SpansCatalog;

impl Catalog for SpansCatalog {
    fn source(
        &self,
        _object_type: spanlake_dsl::ObjectType,
        _args: &[String],
    ) -> Result<Arc<dyn TableSource>, String> {
        Ok(Arc::new(LogicalTableSource::new(spans_schema())))
    }
}

const QUERIES: &[(&str, &str)] = &[
    (
        "star_limit",
        "select: * | from: project_logs('p') spans | limit: 100",
    ),
    (
        "filter_llm",
        "select: id, span_id, created, metrics.tokens as tokens | from: project_logs('p') spans \
         | filter: span_attributes.type = 'llm' and metrics.tokens > 600",
    ),
    (
        "compound_filter",
        "select: * | from: project_logs('p') | filter: scores.Factuality > 0.8 and metadata.model = \"gpt-4\" \
         and tags includes \"triage\" and input ILIKE '%question%' and created > '2024-01-01' \
         and (metrics.tokens > 1000 or metadata.is_production = true) | sort: created desc | limit: 100",
    ),
    (
        "functions",
        "select: day(created) as date, hour(created) as hour, round(scores.Factuality, 2) as rounded, \
         lower(metadata.model) as model, coalesce(metadata.a, metadata.b) as ab, len(tags) as n \
         | from: project_logs('p') | sort: len(tags) desc, created asc",
    ),
];

fn parse_and_plan(c: &mut Criterion) {
    let options = PlanOptions {
        tz_offset_minutes: 0,
        now: chrono::DateTime::from_timestamp(1_790_000_000, 0).expect("valid time"),
    };
    for (name, text) in QUERIES {
        c.bench_function(&format!("parse_{name}"), |b| {
            b.iter(|| parse_query(std::hint::black_box(text)).expect("parses"))
        });
        let query = parse_query(text).expect("parses");
        c.bench_function(&format!("plan_{name}"), |b| {
            b.iter(|| plan_query(&query, &SpansCatalog, &options).expect("plans"))
        });
    }
}

criterion_group!(benches, parse_and_plan);
criterion_main!(benches);
