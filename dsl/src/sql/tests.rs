use super::*;
use crate::ast::{BinaryOp, SampleMethod};
use crate::{QueryForm, detect_form, parse_any};

/// Zeroes every span, so ASTs from different texts compare.
pub(crate) fn without_spans(mut q: Query) -> Query {
    map_query_spans(&mut q, &|_| Span::default());
    q
}

fn parsed(text: &str) -> Query {
    parse_any(text).unwrap_or_else(|e| panic!("{text}\n{e}"))
}

#[track_caller]
fn assert_same(sql_text: &str, btql: &str) {
    assert_eq!(detect_form(sql_text), QueryForm::Sql, "{sql_text}");
    assert_eq!(detect_form(btql), QueryForm::Clauses, "{btql}");
    assert_eq!(
        without_spans(parsed(sql_text)),
        without_spans(parsed(btql)),
        "\nSQL:  {sql_text}\nBTQL: {btql}"
    );
}

fn error(text: &str) -> Diagnostic {
    match parse_any(text) {
        Ok(q) => panic!("{text}: expected an error, got {q:?}"),
        Err(Diagnostics(mut ds)) => ds.remove(0),
    }
}

fn at<'t>(text: &'t str, d: &Diagnostic) -> &'t str {
    &text[d.span.start..d.span.end]
}

#[test]
fn doc_examples_match_the_clause_syntax() {
    // §1.10 example 1.
    assert_same(
        "SELECT * FROM project_logs('P', shape => 'spans') WHERE scores.Factuality > 0.8 ORDER BY created DESC LIMIT 100",
        "select: * | from: project_logs('P') spans | filter: scores.Factuality > 0.8 | sort: created desc | limit: 100",
    );
    // 2.
    assert_same(
        "SELECT metadata.model AS model, scores.Factuality AS score, created AS timestamp FROM project_logs('P')",
        "select: metadata.model as model, scores.Factuality as score, created as timestamp | from: project_logs('P')",
    );
    // 3: CASE is a ternary, a double-quoted non-field a string.
    assert_same(
        "SELECT metadata.model, metrics.tokens > 1000 AS is_long_response, \
         CASE WHEN scores.Factuality > 0.8 THEN \"high\" ELSE 'low' END AS quality FROM project_logs('P')",
        "select: metadata.model, metrics.tokens > 1000 as is_long_response, \
         (scores.Factuality > 0.8 ? \"high\" : \"low\") as quality | from: project_logs('P')",
    );
    // 4.
    assert_same(
        "select day(created) as date, hour(created) as hour, round(scores.Factuality, 2) as rounded_score from project_logs('P')",
        "select: day(created) as date, hour(created) as hour, round(scores.Factuality, 2) as rounded_score | from: project_logs('P')",
    );
    // 5 as SQL: positional GROUP BY.
    assert_same(
        "SELECT metadata.model AS model, day(created) AS date, count(1) AS total_calls, \
         avg(scores.Factuality) AS avg_score, percentile(latency, 0.95) AS p95_latency \
         FROM project_logs('P') GROUP BY 1, 2",
        "dimensions: metadata.model as model, day(created) as date | measures: count(1) as total_calls, \
         avg(scores.Factuality) as avg_score, percentile(latency, 0.95) as p95_latency | from: project_logs('P')",
    );
    // 7.
    assert_same(
        "SELECT * FROM project_logs('P', shape => 'traces') WHERE root_span_id = 'trace-id' AND error IS NOT NULL",
        "select: * | from: project_logs('P') traces | filter: root_span_id = 'trace-id' and error IS NOT NULL",
    );
    // 9: GROUP BY expressions take the select item's alias.
    assert_same(
        "SELECT metadata.model AS model, day(created) AS date, count(1) AS trace_count, \
         avg(scores.Factuality) AS avg_score FROM project_logs('P', shape => 'summary') \
         GROUP BY metadata.model, day(created) ORDER BY date DESC",
        "from: project_logs('P') summary | dimensions: metadata.model as model, day(created) as date \
         | measures: count(1) as trace_count, avg(scores.Factuality) as avg_score | sort: date desc",
    );
    // 11 without INCLUDES.
    assert_same(
        "SELECT * FROM project_logs('P') WHERE scores.Factuality > 0.8 AND metadata.model = \"gpt-4\" \
         AND input ILIKE '%question%' AND created > '2024-01-01' \
         AND (metrics.tokens > 1000 OR metadata.is_production = true)",
        "select: * | from: project_logs('P') | filter: scores.Factuality > 0.8 and metadata.model = \"gpt-4\" \
         and input ILIKE '%question%' and created > '2024-01-01' \
         and (metrics.tokens > 1000 or metadata.is_production = true)",
    );
    // 12, 13.
    assert_same(
        "SELECT * FROM project_logs('P', shape => 'traces') WHERE any_span(tags IN ('production')) AND any_span(error IS NOT NULL)",
        "select: * | from: project_logs('P') traces | filter: any_span(tags in ['production']) and any_span(error is not null)",
    );
    assert_same(
        "SELECT * FROM project_logs('P', shape => 'traces') WHERE FILTER_SPANS(span_attributes.type = 'score') AND metrics.duration > 1",
        "select: * | from: project_logs('P') traces | filter: FILTER_SPANS(span_attributes.type = 'score') and metrics.duration > 1",
    );
    // 14, 15.
    assert_same(
        "SELECT id FROM project_logs('P') WHERE metadata.description LIKE '%50\\% off%' AND created > now() - interval 1 hour AND created < now()",
        "select: id | from: project_logs('P') | filter: metadata.description LIKE '%50\\% off%' and created > now() - interval 1 hour and created < now()",
    );
    // 16.
    assert_same(
        "SELECT id FROM project_logs('P') ORDER BY scores.Factuality DESC, created ASC, len(tags) DESC",
        "select: id | from: project_logs('P') | sort: scores.Factuality desc, created asc, len(tags) desc",
    );
    // 17.
    assert_same(
        "SELECT score, AVG(value) AS avg_value, COUNT(1) AS count FROM project_logs('P') \
         UNPIVOT (value FOR score IN (scores)) GROUP BY score ORDER BY avg_value DESC",
        "dimensions: score | measures: AVG(value) as avg_value, COUNT(1) as count \
         | from: project_logs('P') | unpivot: scores as (score, value) | sort: avg_value desc",
    );
    // 18.
    assert_same(
        "SELECT id, tag FROM project_logs('P') UNPIVOT (tag FOR _ IN (tags))",
        "select: id, tag | from: project_logs('P') | unpivot: tags as (tag)",
    );
    // 19: PIVOT aggregates become measures, the pivot column `pivot:`.
    assert_same(
        "SELECT score, total FROM project_logs('P') UNPIVOT (value FOR score IN (scores)) \
         PIVOT(SUM(value) AS total FOR score IN (ANY))",
        "from: project_logs('P') | unpivot: scores as (score, value) | measures: SUM(value) as total | pivot: score",
    );
    // 20 with PIVOT where sqlparser takes it (right after the source).
    assert_same(
        "SELECT day(created) AS date, metadata.model, AVG(scores.Factuality) FROM project_logs('P') \
         PIVOT(AVG(scores.Factuality) FOR metadata.model IN (ANY)) GROUP BY day(created), metadata.model",
        "from: project_logs('P') | dimensions: day(created) as date | measures: AVG(scores.Factuality) \
         | pivot: metadata.model",
    );
    // 20 verbatim: PIVOT after GROUP BY.
    assert_same(
        "SELECT day(created) AS date, metadata.model, AVG(scores.Factuality) FROM project_logs('P') \
         GROUP BY day(created), metadata.model PIVOT(AVG(scores.Factuality) FOR metadata.model IN (ANY))",
        "from: project_logs('P') | dimensions: day(created) as date | measures: AVG(scores.Factuality) \
         | pivot: metadata.model",
    );
    // 21.
    assert_same(
        "SELECT metadata.model AS model, hour(created) AS hour, count(1) AS total, count(error) AS errors, \
         count(error) / count(1) AS error_rate FROM project_logs('P') WHERE created > now() - interval 1 day \
         GROUP BY metadata.model, hour(created) ORDER BY error_rate DESC",
        "dimensions: metadata.model as model, hour(created) as hour | measures: count(1) as total, \
         count(error) as errors, count(error) / count(1) as error_rate | from: project_logs('P') \
         | filter: created > now() - interval 1 day | sort: error_rate desc",
    );
    // 23: HAVING.
    assert_same(
        "SELECT metadata.model AS model, avg(scores.Factuality) AS avg_score, count(1) AS total_calls \
         FROM project_logs('P') WHERE created > now() - interval 7 day GROUP BY metadata.model \
         HAVING avg(scores.Factuality) > 0.8 AND count(1) > 100 ORDER BY avg_score DESC",
        "dimensions: metadata.model as model | measures: avg(scores.Factuality) as avg_score, count(1) as total_calls \
         | from: project_logs('P') | filter: created > now() - interval 7 day \
         | final_filter: avg(scores.Factuality) > 0.8 and count(1) > 100 | sort: avg_score desc",
    );
    // 24.
    assert_same(
        "SELECT classification.id, COUNT(1) AS count FROM project_logs('P') \
         UNPIVOT (classification FOR _ IN (classifications.Issues)) \
         WHERE created >= NOW() - INTERVAL 3 DAY GROUP BY classification.id",
        "dimensions: classification.id | measures: COUNT(1) as count | from: project_logs('P') \
         | unpivot: classifications.Issues as (classification) | filter: created >= NOW() - INTERVAL 3 DAY",
    );
    // 25: OFFSET '<cursor>'.
    assert_same(
        "SELECT * FROM project_logs('P') WHERE created > now() - interval 7 day ORDER BY _pagination_key DESC LIMIT 100 OFFSET 'abc=='",
        "select: * | from: project_logs('P') | filter: created > now() - interval 7 day | sort: _pagination_key desc | limit: 100 | cursor: 'abc=='",
    );
    // 26, 27.
    assert_same(
        "SELECT * FROM project_logs('P') WHERE search('timeout') AND metadata.environment = 'production'",
        "select: * | from: project_logs('P') | filter: search('timeout') and metadata.environment = 'production'",
    );
    assert_same(
        "SELECT id, facets.task, classifications.Task[0].label AS topic FROM project_logs('P') \
         WHERE classifications.Task[0].metadata.distance < 0.5 ORDER BY classifications.Task[0].metadata.distance ASC LIMIT 50",
        "select: id, facets.task, classifications.Task[0].label as topic | from: project_logs('P') \
         | filter: classifications.Task[0].metadata.distance < 0.5 | sort: classifications.Task[0].metadata.distance asc | limit: 50",
    );
}

#[test]
fn expressions_match_the_clause_syntax() {
    let pairs = [
        ("tags[0] = tags[-1]", "tags[0] = tags[-1]"),
        ("metadata.\"a b\".c = 1", "metadata.\"a b\".c = 1"),
        ("metadata['k'] = 1", "metadata['k'] = 1"),
        (
            "a <=> b AND c IS NOT DISTINCT FROM d",
            "a <=> b and c <=> d",
        ),
        ("a IS DISTINCT FROM 'x'", "a <!=> 'x'"),
        ("a <!=> 'x'", "a <!=> 'x'"),
        ("a <!=> b + 1 AND c", "(a <!=> (b + 1)) and c"),
        ("a < b OR c <> d", "a < b or c != d"),
        (
            "a NOT LIKE 'x%' AND b ILIKE 'y'",
            "not (a like 'x%') and b ilike 'y'",
        ),
        ("a LIKE '50!% off' ESCAPE '!'", "a like '50\\% off'"),
        (
            "input MATCH 'apple' AND NOT (output MATCH 'pear')",
            "input match 'apple' and not (output match 'pear')",
        ),
        ("input NOT MATCH 'apple'", "input not match 'apple'"),
        ("MATCH (input) AGAINST ('apple')", "input match 'apple'"),
        (
            "a NOT IN (1, 2) OR b IN ('x')",
            "not (a in [1, 2]) or b in ['x']",
        ),
        ("x BETWEEN 1 AND 2", "x >= 1 and x <= 2"),
        ("NOT x BETWEEN 1 AND 2", "not (x >= 1 and x <= 2)"),
        (
            "CASE x WHEN 1 THEN 'a' WHEN 2 THEN 'b' END = 'a'",
            "(x = 1 ? 'a' : (x = 2 ? 'b' : null)) = 'a'",
        ),
        (
            "CAST(x AS VARCHAR) = '1' AND CAST(y AS INT) = 1 AND CAST(z AS DOUBLE) > 0",
            "to_string(x) = '1' and to_integer(y) = 1 and to_number(z) > 0",
        ),
        (
            "created > now() - INTERVAL 1 DAY AND created > now() - interval '7 days'",
            "created > now() - interval 1 day and created > now() - interval 7 day",
        ),
        ("-a + 1 * 2 % 3 - 4 / 5 > 0", "-a + 1 * 2 % 3 - 4 / 5 > 0"),
        ("a IS NULL AND b IS TRUE", "a is null and b <=> true"),
        ("(a OR b) AND NOT c", "(a or b) and not c"),
        ("[1, 2] = x", "[1, 2] = x"),
        ("'it''s' = x", "'it''s' = x"),
        (
            "1.5e3 = x AND true AND null IS NULL",
            "1.5e3 = x and true and null is null",
        ),
    ];
    for (sql_expr, btql) in pairs {
        assert_same(
            &format!("SELECT id FROM project_logs('P') WHERE {sql_expr}"),
            &format!("select: id | from: project_logs('P') | filter: {btql}"),
        );
    }
    assert_same(
        "SELECT count(*) AS n, count(DISTINCT metadata.model) AS models FROM project_logs('P')",
        "measures: count(*) as n, count_distinct(metadata.model) as models | from: project_logs('P')",
    );
    assert_same(
        "SELECT DISTINCT metadata.model FROM project_logs('P')",
        "dimensions: metadata.model | from: project_logs('P')",
    );
    assert_same(
        "SELECT a || b AS ab FROM project_logs('P')",
        "select: concat(a, b) as ab | from: project_logs('P')",
    );
}

#[test]
fn sample_and_comments() {
    let q =
        parsed("-- note\nSELECT id FROM project_logs('P') TABLESAMPLE (25 PERCENT) REPEATABLE (7)");
    let sample = q.sample.unwrap().value;
    assert_eq!(sample.method, SampleMethod::Rate(0.25));
    assert_eq!(sample.seed, Some(7));
    let q = parsed("SELECT id FROM project_logs('P') TABLESAMPLE (10 ROWS)");
    assert_eq!(q.sample.unwrap().value.method, SampleMethod::Count(10));
    assert_eq!(detect_form("/* c */ select\n*"), QueryForm::Sql);
    assert_eq!(detect_form("select : *"), QueryForm::Clauses);
    assert_eq!(detect_form("selected: 1"), QueryForm::Clauses);
    assert_eq!(detect_form("  {\"select\": []}"), QueryForm::JsonAst);
    assert_eq!(
        detect_form("WITH x AS (SELECT 1) SELECT * FROM x"),
        QueryForm::Sql
    );
}

#[test]
fn spans_are_byte_offsets() {
    let text = "SELECT id,\n  metadata.\"é x\" AS m\nFROM project_logs('P')\nWHERE scores.Factuality > 0.8";
    let q = parsed(text);
    let Some(Clause {
        value: SelectList::Items(items),
        ..
    }) = &q.select
    else {
        panic!()
    };
    assert_eq!(
        &text[items[1].expr.span.start..items[1].expr.span.end],
        "metadata.\"é x\""
    );
    assert_eq!(
        &text[items[1].span.start..items[1].span.end],
        "metadata.\"é x\" AS m"
    );
    let filter = q.filter.unwrap();
    assert_eq!(
        &text[filter.value.span.start..filter.value.span.end],
        "scores.Factuality > 0.8"
    );
    assert_eq!(
        &text[filter.span.start..filter.span.end],
        "WHERE scores.Factuality > 0.8"
    );
    let source = q.from.unwrap();
    assert_eq!(
        &text[source.value.span.start..source.value.span.end],
        "project_logs('P')"
    );
    let text = "SELECT count(x) AS n FROM project_logs('P')";
    let measures = parsed(text).measures.unwrap().value;
    assert_eq!(
        &text[measures[0].expr.span.start..measures[0].expr.span.end],
        "count(x)"
    );
    let text = "SELECT lower( name ), NOT (a), -b FROM project_logs('P')";
    let Some(Clause {
        value: SelectList::Items(items),
        ..
    }) = parsed(text).select
    else {
        panic!()
    };
    let shown: Vec<&str> = items
        .iter()
        .map(|i| &text[i.expr.span.start..i.expr.span.end])
        .collect();
    assert_eq!(shown, ["lower( name )", "NOT (a)", "-b"]);
}

#[test]
fn unsupported_constructs_are_named_with_a_span() {
    let cases = [
        (
            "SELECT * FROM project_logs('P') JOIN project_logs('Q') ON true",
            "`JOIN` is not supported in SQL queries",
            "project_logs('Q')",
        ),
        (
            "SELECT id FROM project_logs('P') UNION SELECT id FROM project_logs('Q')",
            "`UNION` is not supported in SQL queries",
            "",
        ),
        (
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "`WITH` (common table expressions) is not supported in SQL queries",
            "",
        ),
        (
            "SELECT id, row_number() OVER (ORDER BY id) FROM project_logs('P')",
            "window functions (`OVER`) is not supported in SQL queries",
            "",
        ),
        (
            "SELECT * FROM (SELECT * FROM project_logs('P'))",
            "a subquery in `FROM` is not supported in SQL queries",
            "",
        ),
        (
            "SELECT * FROM project_logs('P') WHERE id IN (SELECT id FROM project_logs('P'))",
            "a subquery is not supported in SQL queries",
            "",
        ),
        (
            "SELECT * FROM project_logs('P') LIMIT 10 OFFSET 20",
            "a numeric `OFFSET` is not supported in SQL queries",
            "OFFSET 20",
        ),
        (
            "SELECT * FROM project_logs('P') WHERE tags INCLUDES 'x'",
            "`INCLUDES` is not supported in SQL queries",
            "tags INCLUDES 'x'",
        ),
        (
            "SELECT * FROM project_logs('P') t",
            "a table alias is not supported in SQL queries",
            "",
        ),
    ];
    for (text, message, span_text) in cases {
        let d = error(text);
        assert_eq!(d.message, message, "{text}");
        assert_eq!(d.code, codes::NOT_SUPPORTED, "{text}");
        assert!(d.help.is_some(), "{text}");
        if !span_text.is_empty() {
            assert_eq!(at(text, &d), span_text, "{text}");
        }
    }
    let d = error("SELECT id, count(1) FROM project_logs('P')");
    assert_eq!(d.message, "`id` is neither grouped nor aggregated");
    let d = error("SELECT count(1) FROM project_logs('P') GROUP BY 3");
    assert_eq!(
        d.message,
        "`GROUP BY 3` is not the position of a select item"
    );
}

#[test]
fn parse_errors_point_at_the_token() {
    let text = "SELECT id\nFROM project_logs('P')\nWHERE x = = 1";
    let d = error(text);
    assert_eq!(d.code, codes::SYNTAX);
    assert!(
        d.message.starts_with("syntax error: expected"),
        "{}",
        d.message
    );
    assert_eq!(at(text, &d), "=");
    assert_eq!(d.span.start, text.rfind("= 1").unwrap());
    let text = "SELECT 'é' FROM project_logs('P') WHERE 'unterminated";
    let d = error(text);
    assert_eq!(d.code, codes::SYNTAX);
    assert!(d.span.end <= text.len());
    let d = error("SELECT");
    assert_eq!(d.code, codes::SYNTAX);
}

#[test]
fn a_quoted_name_is_a_field_alias_or_string() {
    let q = parsed(
        "SELECT \"id\", 'x' AS \"my x\" FROM project_logs('P') WHERE \"input\" = \"hi\" ORDER BY \"my x\"",
    );
    let filter = q.filter.unwrap().value;
    let ExprKind::Binary {
        op: BinaryOp::Eq,
        left,
        right,
    } = filter.kind
    else {
        panic!()
    };
    assert_eq!(left.kind, ExprKind::Ident("input".into()));
    assert_eq!(right.kind, ExprKind::Literal(Literal::String("hi".into())));
    assert_eq!(
        q.sort.unwrap().value[0].expr.kind,
        ExprKind::Ident("my x".into())
    );
}

#[test]
fn a_pivot_after_group_by_keeps_its_spans() {
    let text = "SELECT metadata.model, count(1) AS n FROM project_logs('P') WHERE x = 1 GROUP BY metadata.model \
                PIVOT(count(1) AS n FOR metadata.model IN (ANY)) ORDER BY 1";
    let q = parsed(text);
    let filter = q.filter.unwrap();
    assert_eq!(
        &text[filter.value.span.start..filter.value.span.end],
        "x = 1"
    );
    let pivot = &q.pivot.unwrap().value[0];
    assert_eq!(
        &text[pivot.expr.span.start..pivot.expr.span.end],
        "metadata.model"
    );
    assert!(pivot.expr.span.start > text.find("PIVOT").unwrap());
    let measures = q.measures.unwrap().value;
    assert_eq!(measures.len(), 1);
    assert_eq!(
        &text[measures[0].expr.span.start..measures[0].expr.span.end],
        "count(1)"
    );
    // A real error in such a query still points at the original text.
    let text =
        "SELECT a FROM project_logs('P') GROUP BY a PIVOT(count(1) FOR a IN (ANY)) WHERE = 1";
    let d = error(text);
    assert_eq!(d.code, codes::SYNTAX);
    assert!(d.span.end <= text.len());
}

#[test]
fn fuzz_regressions() {
    // Inputs the fuzzer found; each must return (Ok or Err), never panic.
    for text in [
        "SELECT",
        "SELECT 1 FROM",
        "WITH",
        "select -",
        "{",
        "{\"filter\":{\"op\":\"btql\",\"btql\":\"\"}}",
    ] {
        let _ = parse_any(text);
    }
}

/// The queries of `tests/btql/sql.test` give the AST of the BTQL query
/// whose output the golden file expects.
#[test]
fn golden_queries_match_their_btql() {
    let from = "from: project_logs('fixture')";
    let pairs = [
        (
            "SELECT metadata.model AS model, scores.Factuality AS score, created AS timestamp\nFROM project_logs('fixture')\nWHERE is_root\nORDER BY id".to_string(),
            format!("select: metadata.model as model, scores.Factuality as score, created as timestamp | {from} | filter: is_root | sort: id"),
        ),
        (
            "select id, case when scores.Factuality >= 0.8 then 'high'\n  when scores.Factuality between 0.4 and 0.8 then 'mid' else 'low' end as quality\nfrom project_logs('fixture') where id in ('t1', 't2', 't3', 't4', 't5') order by id".to_string(),
            format!("select: id, (scores.Factuality >= 0.8 ? 'high' : ((scores.Factuality >= 0.4 and scores.Factuality <= 0.8) ? 'mid' : 'low')) as quality | {from} | filter: id in ['t1','t2','t3','t4','t5'] | sort: id"),
        ),
        (
            "SELECT id FROM project_logs('fixture') WHERE metadata.description LIKE '%50!% off%' ESCAPE '!'".to_string(),
            format!("select: id | {from} | filter: metadata.description like '%50\\% off%'"),
        ),
        (
            "SELECT id FROM project_logs('fixture', shape => 'spans') WHERE is_root AND metadata.model IS DISTINCT FROM 'gpt-4' ORDER BY id".to_string(),
            format!("select: id | {from} spans | filter: is_root and metadata.model <!=> 'gpt-4' | sort: id"),
        ),
        (
            "SELECT id, CAST(metrics.tokens AS VARCHAR) AS tokens, CAST(scores.Factuality * 10 AS INT) AS f10\nFROM project_logs('fixture') WHERE is_root ORDER BY id".to_string(),
            format!("select: id, to_string(metrics.tokens) as tokens, to_integer(scores.Factuality * 10) as f10 | {from} | filter: is_root | sort: id"),
        ),
        (
            "SELECT id, scores.\"Response Quality\" AS rq, tags[-1] AS last_tag\nFROM project_logs('fixture') WHERE is_root ORDER BY id LIMIT 3".to_string(),
            format!("select: id, scores.\"Response Quality\" as rq, tags[-1] as last_tag | {from} | filter: is_root | sort: id | limit: 3"),
        ),
        (
            "-- a comment before the query\nSELECT id FROM project_logs('fixture') WHERE input MATCH 'paris' ORDER BY id".to_string(),
            format!("select: id | {from} | filter: input match 'paris' | sort: id"),
        ),
        (
            "SELECT metadata.model AS model, count(1) AS n, avg(metrics.tokens) AS avg_tokens\nFROM project_logs('fixture')\nWHERE metadata.model IS NOT NULL\nGROUP BY metadata.model\nHAVING count(1) > 1\nORDER BY model".to_string(),
            format!("dimensions: metadata.model as model | measures: count(1) as n, avg(metrics.tokens) as avg_tokens | {from} | filter: metadata.model is not null | final_filter: count(1) > 1 | sort: model"),
        ),
        (
            "SELECT score, AVG(value) AS avg_value, COUNT(1) AS count FROM project_logs('fixture')\nUNPIVOT (value FOR score IN (scores)) GROUP BY score ORDER BY avg_value DESC".to_string(),
            format!("dimensions: score | measures: AVG(value) as avg_value, COUNT(1) as count | {from} | unpivot: scores as (score, value) | sort: avg_value desc"),
        ),
        (
            "SELECT count(*) AS n, count(DISTINCT metadata.model) AS models FROM project_logs('fixture')".to_string(),
            format!("measures: count(*) as n, count_distinct(metadata.model) as models | {from}"),
        ),
        (
            "SELECT DISTINCT metadata.model FROM project_logs('fixture') ORDER BY model".to_string(),
            format!("dimensions: metadata.model | {from} | sort: model"),
        ),
    ];
    for (sql_text, btql) in pairs {
        let golden = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/btql/sql.test"
        ))
        .unwrap_or_default();
        assert!(golden.contains(&sql_text), "not in sql.test: {sql_text}");
        assert_same(&sql_text, &btql);
    }
}

#[test]
fn deep_or_long_expressions_are_diagnostics_not_overflows() {
    // Runs on the test thread's small stack: the parser has its own.
    let max = crate::MAX_EXPRESSION_DEPTH;
    for n in [max - 10, max - 2, max, max + 1, 300, 499] {
        let text = format!(
            "SELECT id FROM project_logs('p') WHERE {}a = 1",
            "a + ".repeat(n)
        );
        match parse_any(&text) {
            Ok(_) => assert!(n < max, "{n}"),
            Err(Diagnostics(ds)) => {
                assert!(n >= max - 1, "{n}: {}", ds[0]);
                assert_eq!(ds[0].code, "BTQL0004", "{}", ds[0]);
                assert_eq!(
                    ds[0].message,
                    format!("expression nested more than {max} levels deep")
                );
            }
        }
    }
    let text = format!(
        "SELECT id FROM project_logs('p') WHERE {}a = 1",
        "a + ".repeat(20_000)
    );
    let d = error(&text);
    assert_eq!(
        d.message,
        "syntax error: the query has too many operators (20001)"
    );
    let text = format!(
        "SELECT {}1{} FROM project_logs('p')",
        "(".repeat(5_000),
        ")".repeat(5_000)
    );
    let d = error(&text);
    assert_eq!(d.code, "BTQL0004");
    // At the first parenthesis past the limit.
    assert_eq!(d.span, Span::new(7 + max, 8 + max));
    let text = format!(
        "SELECT id FROM project_logs('p') WHERE x = CASE {} ELSE 0 END",
        "WHEN a THEN 1 ".repeat(300)
    );
    assert_eq!(error(&text).code, "BTQL0004");
    let text = format!(
        "SELECT id FROM project_logs('p') WHERE x = CASE {} ELSE 0 END",
        "WHEN a THEN 1 ".repeat(max - 10)
    );
    assert!(parse_any(&text).is_ok());
}

/// The planner recurses once per expression level, which overflowed a 2 MiB
/// (test or tokio worker) stack at about 80 levels in a debug build: it now
/// refuses more than `MAX_EXPRESSION_DEPTH` levels with BTQL0004.
#[test]
fn planner_survives_a_deep_expression() {
    use std::sync::Arc;
    #[derive(Debug)]
    struct Logs;
    impl crate::Catalog for Logs {
        fn source(
            &self,
            _: crate::ObjectType,
            _: &[String],
        ) -> Result<Arc<dyn datafusion_expr::TableSource>, String> {
            Ok(Arc::new(
                datafusion_expr::logical_plan::builder::LogicalTableSource::new(
                    crate::schema::spans_schema(),
                ),
            ))
        }
    }
    // Parsed by hand (no front end builds a tree this deep): the planner
    // refuses it before recursing.
    let mut deep = crate::ast::Expr {
        kind: crate::ast::ExprKind::Ident("metrics".into()),
        span: Span::new(0, 0),
    };
    for _ in 0..100 {
        deep = crate::ast::Expr {
            kind: crate::ast::ExprKind::Unary {
                op: crate::ast::UnaryOp::Not,
                expr: Box::new(deep),
            },
            span: Span::new(0, 0),
        };
    }
    let mut query = parse_any("select: id | from: project_logs('p')").unwrap();
    query.filter = Some(crate::ast::Clause {
        value: deep,
        span: Span::new(0, 0),
    });
    let options = crate::PlanOptions {
        tz_offset_minutes: 0,
        now: chrono::DateTime::from_timestamp(0, 0).unwrap(),
    };
    let error = crate::plan_query(&query, &Logs, &options).unwrap_err();
    assert_eq!(error.0[0].code, "BTQL0004");
    // Just under the cap still plans, on a 2 MiB test thread.
    let text = format!(
        "select: id | from: project_logs('p') | filter: {}metrics.tokens = 1",
        "metrics.tokens + ".repeat(crate::MAX_EXPRESSION_DEPTH / 2 - 2)
    );
    let query = parse_any(&text).unwrap();
    crate::plan_query(&query, &Logs, &options).unwrap();
}
