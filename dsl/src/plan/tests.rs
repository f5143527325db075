use std::sync::Arc;

use chrono::TimeZone;
use datafusion_expr::logical_plan::builder::LogicalTableSource;

use super::*;
use crate::parse_query;

#[derive(Debug)]
struct TestCatalog;

impl Catalog for TestCatalog {
    fn source(
        &self,
        object_type: crate::ObjectType,
        args: &[String],
    ) -> Result<Arc<dyn datafusion_expr::TableSource>, String> {
        if args.first().is_some_and(|a| a == "missing") {
            return Err(format!("no {object_type} named `missing`"));
        }
        Ok(Arc::new(LogicalTableSource::new(schema::spans_schema())))
    }
}

fn options() -> PlanOptions {
    PlanOptions {
        tz_offset_minutes: 0,
        now: chrono::Utc.with_ymd_and_hms(2024, 11, 9, 12, 0, 0).unwrap(),
    }
}

fn plan(text: &str) -> CompiledQuery {
    let query = parse_query(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    plan_query(&query, &TestCatalog, &options()).unwrap_or_else(|e| panic!("{text}: {e}"))
}

fn plan_err(text: &str) -> Diagnostics {
    let query = parse_query(text).unwrap_or_else(|e| panic!("{text}: {e}"));
    match plan_query(&query, &TestCatalog, &options()) {
        Ok(q) => panic!("{text}: expected an error, got {}", q.plan.display_indent()),
        Err(e) => e,
    }
}

fn names(q: &CompiledQuery) -> Vec<(String, bool)> {
    let schema_names: Vec<String> = q
        .plan
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let column_names: Vec<String> = q.columns.iter().map(|c| c.name.clone()).collect();
    assert_eq!(schema_names, column_names);
    q.columns.iter().map(|c| (c.name.clone(), c.json)).collect()
}

#[test]
fn select_star_lists_every_column() {
    let q = plan(
        "select: * | from: project_logs('p') spans | filter: scores.Factuality > 0.8 | sort: created desc | limit: 100",
    );
    assert_eq!(q.columns.len(), schema::spans_schema().fields().len());
    assert!(q.columns.iter().any(|c| c.name == "metadata" && c.json));
    assert!(q.columns.iter().any(|c| c.name == "created" && !c.json));
    let text = q.plan.display_indent().to_string();
    assert!(text.contains("json_get_f64[\"Factuality\"]"), "{text}");
    assert!(text.contains("Limit: skip=0, fetch=100"), "{text}");
    assert!(text.contains("DESC NULLS FIRST"), "{text}");
}

#[test]
fn implicit_and_explicit_names() {
    let q = plan(
        "select: metadata.model, metrics.tokens > 1000 as is_long_response, (scores.Factuality > 0.8 ? \"high\" : \"low\") as quality, \
         id, tags[0], created as timestamp, metrics.tokens * 2 | from: project_logs('p')",
    );
    assert_eq!(
        names(&q),
        vec![
            ("model".to_string(), true),
            ("is_long_response".to_string(), false),
            ("quality".to_string(), false),
            ("id".to_string(), false),
            ("tags[0]".to_string(), true),
            ("timestamp".to_string(), false),
            ("metrics.tokens * 2".to_string(), false),
        ]
    );
}

#[test]
fn aliases_in_sort_and_filter() {
    let q = plan(
        "select: metadata.model, scores.Factuality as score | from: project_logs('p') | filter: model = 'gpt-4' | sort: score desc",
    );
    let text = q.plan.display_indent().to_string();
    assert!(text.contains("json_get_str[\"model\"]"), "{text}");
    assert!(text.contains("json_get_f64[\"Factuality\"]"), "{text}");
}

#[test]
fn the_compound_filter_of_the_docs_plans() {
    let q = plan(
        "select: id | from: project_logs('p') | filter: scores.Factuality > 0.8 and metadata.model = \"gpt-4\" and tags includes \"triage\" \
         and input ILIKE '%question%' and created > '2024-01-01' and (metrics.tokens > 1000 or metadata.is_production = true) \
         and created > now() - interval 1 hour and metadata.description LIKE '%50\\% off_%' and not tags includes 'x' \
         and search('timeout') and metadata.kind in ['a', 'b'] and id in ['x', 'y'] and metadata.x <=> null and input match 'hello world' \
         and tags[-1] = 'last' and len(tags) > 1 and day(created) = '2024-01-01' and estimated_cost() / 0 is null",
    );
    let text = q.plan.display_indent().to_string();
    assert!(
        text.contains("50\\\\% off\\\\_%") || text.contains("50\\% off\\_%"),
        "{text}"
    );
    assert!(
        text.contains("TimestampMicrosecond(1704067200000000"),
        "{text}"
    );
}

#[test]
fn functions_plan() {
    let q = plan(
        "select: day(created) as date, hour(created) as hour, round(scores.Factuality, 2) as rounded_score, \
         date_trunc('15 minutes', created) as q, week(created) as w, lower(metadata.model) as l, concat(id, '-', metadata.n) as c, \
         coalesce(metadata.a, metadata.b) as co, greatest(1, 2.5) as g, nullif(id, 'x') as ni, to_string(metadata) as ts, \
         to_number('1.5') as tn, to_integer(metadata.n) as ti, to_boolean(metadata.b) as tb, to_datetime('2024-01-01') as td, \
         to_date(created) as d, json_extract(metadata.config, 'api_key') as api_key, current_date() as cd, now() as n, \
         contains(tags, 'a') as has_a, estimated_cost() as cost, isnull(error) as no_error | from: project_logs('p')",
    );
    let json: Vec<&str> = q
        .columns
        .iter()
        .filter(|c| c.json)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(json, vec!["co", "api_key", "cost"]);
    assert_eq!(q.columns.len(), 22);
}

#[test]
fn unknown_field_suggests() {
    let e = plan_err("select: metdata.model | from: project_logs('p')");
    assert_eq!(e.0[0].code, codes::UNKNOWN_FIELD);
    assert_eq!(e.0[0].span, Span::new(8, 15));
    assert!(
        e.0[0].help.as_deref().unwrap().contains("`metadata`"),
        "{:?}",
        e.0[0].help
    );
}

#[test]
fn errors_are_collected_with_spans() {
    let e = plan_err(
        "select: count(1), foo(id) | from: project_logs('p') | filter: created > 'yesterday'",
    );
    let codes_seen: Vec<&str> = e.0.iter().map(|d| d.code).collect();
    assert!(codes_seen.contains(&codes::AGGREGATE_IN_SELECT), "{e}");
    assert!(codes_seen.contains(&codes::UNKNOWN_FUNCTION), "{e}");
    assert!(codes_seen.contains(&codes::BAD_DATETIME), "{e}");
    let bad = e.0.iter().find(|d| d.code == codes::BAD_DATETIME).unwrap();
    assert_eq!(bad.span, Span::new(62, 83));
}

#[test]
fn experiments_and_datasets_are_sources_and_datasets_have_no_traces() {
    for text in [
        "select: id, scores | from: experiment('e') spans",
        "select: * | from: experiment('e') traces | filter: scores.exact > 0.5",
        "select: * | from: experiment('e') summary",
        "select: id, input, expected | from: dataset('d')",
        "select: id | from: Dataset('d') spans",
    ] {
        plan(text);
    }
    for shape in ["traces", "summary"] {
        let e = plan_err(&format!("select: * | from: dataset('d') {shape}"));
        assert_eq!(e.0[0].code, codes::NOT_SUPPORTED, "{e}");
        assert!(
            e.0[0]
                .message
                .contains(&format!("the `{shape}` shape does not apply to `dataset`")),
            "{e}"
        );
        assert_eq!(
            e.0[0].help.as_deref(),
            Some("write `from: dataset('<id>')` (one row per record)")
        );
    }
    let e = plan_err("from: experiment('missing')");
    assert_eq!(e.0[0].code, codes::SOURCE_ERROR);
    assert_eq!(e.0[0].message, "no experiment named `missing`");
}

#[test]
fn clause_and_source_errors() {
    assert_eq!(plan_err("select: id").0[0].code, codes::MISSING_FROM);
    assert_eq!(
        plan_err("from: prompt('e')").0[0].code,
        codes::UNKNOWN_SOURCE
    );
    assert_eq!(
        plan_err("from: project_logs('missing')").0[0].code,
        codes::SOURCE_ERROR
    );
    assert_eq!(
        plan_err("from: project_logs('p') | cursor: 'x'").0[0].code,
        codes::NOT_SUPPORTED
    );
    assert_eq!(
        plan_err("from: project_logs('p') | measures: metadata.model").0[0].code,
        codes::NOT_AGGREGATE
    );
    assert_eq!(
        plan_err("select: id, metadata.id | from: project_logs('p')").0[0].code,
        codes::DUPLICATE_NAME
    );
    assert_eq!(
        plan_err("select: id.x | from: project_logs('p')").0[0].code,
        codes::TYPE_MISMATCH
    );
    assert_eq!(
        plan_err("from: project_logs('p') | filter: id").0[0].code,
        codes::TYPE_MISMATCH
    );
    assert_eq!(
        plan_err("from: project_logs('p') | filter: id like metadata.x").0[0].code,
        codes::LITERAL_REQUIRED
    );
    assert_eq!(
        plan_err("from: project_logs('p') | limit: -1").0[0].code,
        codes::NUMBER_RANGE
    );
}

#[test]
fn cross_type_comparison_is_null() {
    let q = plan("select: id = 1 as x | from: project_logs('p')");
    assert!(
        q.plan
            .display_indent()
            .to_string()
            .contains("Boolean(NULL) AS x"),
        "{}",
        q.plan.display_indent()
    );
}

#[test]
fn like_patterns() {
    assert_eq!(expr::like_pattern("%50\\% off%"), "%50\\% off%");
    assert_eq!(expr::like_pattern("a_b"), "a\\_b");
    assert_eq!(expr::like_pattern("a\\_b\\\\"), "a\\_b\\\\");
    assert_eq!(expr::like_pattern("x\\"), "x\\\\");
}

#[test]
fn summary_columns_and_json_flags() {
    let q = plan("from: project_logs('p') summary | filter: error is not null");
    let cols = names(&q);
    let json: Vec<&str> = cols
        .iter()
        .filter(|(_, j)| *j)
        .map(|(n, _)| n.as_str())
        .collect();
    assert!(
        json.contains(&"scores") && json.contains(&"metrics") && json.contains(&"span_type_info")
    );
    assert!(cols.iter().any(|(n, j)| n == "id" && !j));
    let text = q.plan.display_indent().to_string();
    assert!(
        text.contains("LeftSemi") && text.contains("scores_avg"),
        "{text}"
    );
}

#[test]
fn traces_use_a_semi_join_and_any_span_flags() {
    let q = plan(
        "select: id | from: project_logs('p') traces | filter: any_span(error is not null) and is_root | limit: 2",
    );
    let text = q.plan.display_indent().to_string();
    assert!(
        text.contains("bool_or") && text.contains("LeftSemi"),
        "{text}"
    );
    assert!(!text.contains("CrossJoin"), "{text}");
}

#[test]
fn grouped_outputs_are_dimensions_then_measures() {
    let q = plan(
        "dimensions: metadata.model as model | measures: count(1) as n, avg(metrics.tokens) as t | from: project_logs('p') | final_filter: n > 1",
    );
    assert_eq!(
        names(&q),
        vec![
            ("model".into(), true),
            ("n".into(), false),
            ("t".into(), false)
        ]
    );
    let e = plan_err(
        "dimensions: metadata.model | measures: count(1) | from: project_logs('p') | sort: id",
    );
    assert_eq!(e.0[0].code, codes::NOT_GROUPED);
    let e = plan_err("select: id | unpivot: id as (x) | from: project_logs('p')");
    assert_eq!(e.0[0].code, codes::UNPIVOT_TYPE);
    // `pivot:` needs measures (see the pivot tests below).
    let e = plan_err("select: id | from: project_logs('p') | pivot: n");
    assert_eq!(e.0[0].code, codes::NOT_AGGREGATE);
}

// ---- pivot ------------------------------------------------------------------

fn pivot_of(q: &CompiledQuery) -> &PivotSpec {
    q.pivot.as_ref().expect("a pivot spec")
}

#[test]
fn pivot_key_form_adds_the_key_as_last_group_key() {
    let q = plan(
        "from: project_logs('p') | dimensions: day(created) as date | measures: avg(scores.Factuality) as f, count(1) as n \
         | pivot: metadata.model | sort: date desc | limit: 5",
    );
    let cols = names(&q);
    assert_eq!(
        cols[..4],
        [
            ("date".to_string(), false),
            ("model".to_string(), true),
            ("f".to_string(), false),
            ("n".to_string(), false)
        ]
    );
    let spec = pivot_of(&q);
    assert_eq!(spec.row_keys, vec!["date"]);
    assert_eq!(spec.key, "model");
    assert_eq!(spec.measures, vec!["f", "n"]);
    assert_eq!(spec.limit, Some(5));
    assert_eq!(spec.sort.len(), 1);
    assert!(spec.sort[0].descending);
    // A JSON key sorts by number then string: two hidden columns.
    assert_eq!(spec.key_sort.len(), 2);
    for c in spec
        .key_sort
        .iter()
        .chain(spec.sort.iter().map(|s| &s.column))
    {
        assert!(cols.iter().any(|(n, j)| n == c && !j), "{c}");
    }
    // Phase 1 neither sorts nor limits.
    let text = q.plan.display_indent().to_string();
    assert!(
        !text.contains("Limit:") && !text.contains("Sort:"),
        "{text}"
    );
}

#[test]
fn pivot_measure_form_takes_the_last_dimension() {
    let q = plan(
        "from: project_logs('p') | dimensions: metadata.model as model, span_attributes.type as type \
         | measures: count(1) as n, count(error) as e | pivot: e, n",
    );
    let spec = pivot_of(&q);
    assert_eq!(spec.row_keys, vec!["model"]);
    assert_eq!(spec.key, "type");
    assert_eq!(spec.measures, vec!["e", "n"]);
    // Not sorted by the user: by every row key, ascending.
    assert_eq!(spec.sort.len(), 2);
    assert!(spec.sort.iter().all(|s| !s.descending));
}

#[test]
fn pivot_key_named_by_dimension_name_or_text() {
    for pivot in ["model", "metadata.model"] {
        let q = plan(&format!(
            "from: project_logs('p') | dimensions: metadata.model as model, day(created) as d \
             | measures: count(1) as n | pivot: {pivot} | sort: 1 desc"
        ));
        let spec = pivot_of(&q);
        assert_eq!(spec.key, "model", "{pivot}");
        assert_eq!(spec.row_keys, vec!["d"], "{pivot}");
        assert_eq!(q.columns.len(), 3 + 2 + 1, "{pivot}: {:?}", names(&q));
    }
}

#[test]
fn pivot_typed_key_and_no_row_keys() {
    let q = plan("from: project_logs('p') | measures: sum(metrics.tokens) as t | pivot: is_root");
    let spec = pivot_of(&q);
    assert!(spec.row_keys.is_empty() && spec.sort.is_empty());
    assert_eq!(spec.key, "is_root");
    assert_eq!(spec.key_sort.len(), 1);
}

#[test]
fn pivot_from_sql_has_the_same_spec() {
    let sql = crate::parse_sql(
        "SELECT day(created) AS date, metadata.model, AVG(scores.Factuality) AS f FROM project_logs('p') \
         GROUP BY day(created), metadata.model PIVOT(AVG(scores.Factuality) AS f FOR metadata.model IN (ANY))",
    )
    .unwrap();
    let q = plan_query(&sql, &TestCatalog, &options()).unwrap();
    let btql = plan(
        "from: project_logs('p') | dimensions: day(created) as date | measures: avg(scores.Factuality) as f | pivot: metadata.model",
    );
    assert_eq!(q.pivot, btql.pivot);
    assert_eq!(names(&q), names(&btql));
}

#[test]
fn pivot_errors() {
    let cases = [
        (
            "from: project_logs('p') | dimensions: metadata.model as m | pivot: m",
            "BTQL0207",
            "needs `measures:`",
        ),
        (
            "from: project_logs('p') | pivot: metadata.model",
            "BTQL0207",
            "needs `measures:`",
        ),
        (
            "from: project_logs('p') | measures: count(1) as n | pivot: n",
            "BTQL0113",
            "no dimension to pivot on",
        ),
        (
            "from: project_logs('p') | dimensions: id | measures: count(1) as n, count(error) as e | pivot: n",
            "BTQL0103",
            "measure `e` is not pivoted",
        ),
        (
            "from: project_logs('p') | measures: count(1) as n | pivot: n, metadata.model",
            "BTQL0103",
            "mixes measure names and pivot keys",
        ),
        (
            "from: project_logs('p') | measures: count(1) as n | pivot: metadata.model, id",
            "BTQL0103",
            "more than one key",
        ),
        (
            "from: project_logs('p') | measures: count(1) as n | pivot: count(1)",
            "BTQL0202",
            "cannot be an aggregate",
        ),
        (
            "select: id | from: project_logs('p') | measures: count(1) as n | pivot: metadata.model",
            "BTQL0103",
            "`select:` together with `pivot:`",
        ),
        (
            "from: project_logs('p') | dimensions: id | measures: count(1) as n | pivot: metadata.model | sort: n",
            "BTQL0113",
            "not a row key",
        ),
        (
            "from: project_logs('p') | dimensions: id | measures: count(1) as n | pivot: metadata.model | sort: 2",
            "BTQL0114",
            "names no row key",
        ),
        (
            "from: project_logs('p') | dimensions: metadata.id as model | measures: count(1) as n | pivot: metadata.model",
            "BTQL0112",
            "like the dimension",
        ),
        (
            "from: project_logs('p') | measures: count(1) as n | pivot: nope",
            "BTQL0110",
            "unknown field",
        ),
    ];
    for (text, code, message) in cases {
        let e = plan_err(text);
        assert!(
            e.0.iter()
                .any(|d| d.code == code && d.message.contains(message)),
            "{text}: {e:?}"
        );
    }
}

#[test]
fn temporal_arithmetic_takes_datetimes_and_intervals_only() {
    for text in [
        "select: id - interval 1 day as x | from: project_logs('p')",
        "select: interval 1 day - created as x | from: project_logs('p')",
        "select: created + created as x | from: project_logs('p')",
        "select: created * interval 1 day as x | from: project_logs('p')",
    ] {
        let e = plan_err(text);
        assert_eq!(e.0[0].code, codes::TYPE_MISMATCH, "{text}: {e}");
        let span = e.0[0].span;
        assert!(
            text[span.start..span.end].contains("interval")
                || text[span.start..span.end].contains("created"),
            "{text}: {span:?}"
        );
    }
    for text in [
        "select: created - interval 1 day as x | from: project_logs('p')",
        "select: interval 1 day + created as x | from: project_logs('p')",
        "select: now() - created as x | from: project_logs('p')",
        "select: interval 1 day - interval 1 hour as x | from: project_logs('p')",
    ] {
        plan(text);
    }
}

#[test]
fn a_query_identity_ignores_positions_but_not_its_literals() {
    let id = |text: &str| parse_query(text).unwrap().identity();
    assert_eq!(
        id("select: id | from: project_logs('p') | filter: input = 'a'"),
        id("select:   id\n|  from: project_logs('p')|filter: input='a'")
    );
    assert_ne!(
        id("select: id | from: project_logs('p') | filter: input = 'Span { start: 1 }'"),
        id("select: id | from: project_logs('p') | filter: input = 'Span { start: 2 }'")
    );
    assert_ne!(
        id("select: id | from: project_logs('p') | filter: input = 'a\\\" Span { start: 1 }'"),
        id("select: id | from: project_logs('p') | filter: input = 'a\\\" Span { start: 2 }'")
    );
}
