//! Adversarial queries in every form: each answers (an error or a query)
//! within a second, on the test thread's small stack, and a too-deep one
//! is `BTQL0004` at the bracket or operator that goes too deep.

use std::time::{Duration, Instant};

use super::{MAX_EXPRESSION_DEPTH, MAX_JSON_DEPTH};
use crate::error::{Diagnostic, Diagnostics, codes};
use crate::{parse_any, parse_json_ast, parse_query, parse_sql};

/// The one timed bound of these tests (issue 14: "answers within a
/// second"); the inputs are far from it when parsing is linear.
const LIMIT: Duration = Duration::from_secs(1);

/// Runs `parse` on `text`, asserting it answers within [`LIMIT`].
fn timed<T>(what: &str, text: &str, parse: impl Fn(&str) -> T) -> T {
    let started = Instant::now();
    let result = parse(text);
    let took = started.elapsed();
    assert!(took < LIMIT, "{what} ({} bytes) took {took:?}", text.len());
    result
}

fn error(what: &str, text: &str) -> Diagnostic {
    match timed(what, text, parse_any) {
        Ok(_) => panic!("{what}: parsed"),
        Err(Diagnostics(mut ds)) => ds.remove(0),
    }
}

fn too_deep(what: &str, text: &str) -> Diagnostic {
    let d = error(what, text);
    assert_eq!(d.code, codes::TOO_DEEP, "{what}: {d}");
    assert!(
        d.help.as_deref().is_some_and(|h| h.contains("at most")),
        "{what}: {d:?}"
    );
    d
}

/// Byte offset of the `n`th (0-based) occurrence of `needle` in `text`.
fn nth(text: &str, needle: char, n: usize) -> usize {
    text.match_indices(needle).nth(n).map(|(i, _)| i).unwrap()
}

const BTQL: &str = "select: id | from: project_logs('p') | filter: ";
const SQL: &str = "SELECT id FROM project_logs('p') WHERE ";

#[test]
fn five_thousand_brackets_in_clause_syntax() {
    for open in ['(', '['] {
        let text = format!("{BTQL}{}1", open.to_string().repeat(5000));
        let d = too_deep(&format!("btql {open}"), &text);
        // At the first bracket past the limit.
        let at = BTQL.len() + MAX_EXPRESSION_DEPTH;
        assert_eq!((d.span.start, d.span.end), (at, at + 1), "{d}");
        let rendered = crate::diagnostics::render(&d, &text, "query");
        assert!(rendered.contains("error[BTQL0004]"), "{rendered}");
        assert!(
            rendered.contains(&format!("--> query:1:{}", at + 1)),
            "{rendered}"
        );
    }
    // Function calls, `in (...)` and `? :` nest too.
    for (what, piece) in [("call", "f("), ("in", "a in ("), ("ternary", "a ? ")] {
        let text = format!("{BTQL}{}1", piece.repeat(5000));
        too_deep(what, &text);
    }
    // Brackets in strings and comments do not count.
    let text = format!(
        "{BTQL}'{}' = \"{}\" -- {}\n or x = 1",
        "(".repeat(5000),
        "[".repeat(5000),
        "(".repeat(5000)
    );
    timed("quoted brackets", &text, parse_query).unwrap();
}

#[test]
fn five_thousand_brackets_in_sql() {
    for open in ['(', '['] {
        let text = format!("{SQL}{}1", open.to_string().repeat(5000));
        let d = too_deep(&format!("sql {open}"), &text);
        let at = SQL.len() + MAX_EXPRESSION_DEPTH;
        assert_eq!((d.span.start, d.span.end), (at, at + 1), "{d}");
    }
    let text = format!("SELECT id FROM {}project_logs('p')", "(".repeat(5000));
    too_deep("sql from", &text);
    let text = format!("{SQL}{}1", "f(".repeat(5000));
    too_deep("sql call", &text);
}

#[test]
fn five_thousand_brackets_in_json() {
    for (what, open, piece) in [
        ("json [", '[', "["),
        ("json {", '{', "{\"a\":"),
        ("json not", '{', "{\"op\":\"not\",\"expr\":"),
    ] {
        let text = format!("{{\"filter\":{}1", piece.repeat(5000));
        let d = too_deep(what, &text);
        let at = nth(&text, open, MAX_JSON_DEPTH - usize::from(open == '['));
        assert_eq!((d.span.start, d.span.end), (at, at + 1), "{what}: {d}");
    }
    // Within the JSON limit, deeper than the expression limit: the
    // converter refuses it by path before recursing.
    let text = format!(
        "{{\"from\":{{\"op\":\"function\",\"name\":{{\"op\":\"ident\",\"name\":[\"project_logs\"]}},\"args\":[{{\"op\":\"literal\",\"value\":\"p\"}}]}},\"filter\":{}{{\"op\":\"literal\",\"value\":true}}{}}}",
        "{\"op\":\"not\",\"expr\":".repeat(100),
        "}".repeat(100)
    );
    let d = too_deep("json nots", &text);
    assert!(d.message.contains("filter.expr.expr"), "{d}");
}

#[test]
fn quoted_path_with_unbalanced_parentheses() {
    let path = ".\"a b\"".repeat(26);
    for (what, text) in [
        ("sql", format!("{SQL}err{path}.))")),
        ("sql call root", format!("{SQL}f(x){path}.))")),
        ("sql index root", format!("{SQL}a[1]{path}.))")),
        ("sql in call", format!("{SQL}f(err{path}.))")),
        ("btql", format!("{BTQL}err{path}.))")),
        (
            "json snippet",
            format!(
                "{{\"filter\":{{\"op\":\"btql\",\"btql\":{}}}}}",
                serde_json::Value::String(format!("err{path}.))"))
            ),
        ),
    ] {
        let d = error(what, &text);
        assert_eq!(d.code, codes::SYNTAX, "{what}: {d}");
    }
    // Still a syntax error at the dangling dot's `)`, as sqlparser words it.
    let text = format!("{SQL}err{path}.))");
    let d = error("sql", &text);
    assert_eq!(d.span.start, text.len() - 2, "{d}");
    // Long and valid paths parse, in linear time.
    let long = ".\"a b\".c".repeat(500);
    let parsed = timed("long path", &format!("{SQL}metadata{long} = 1"), parse_sql);
    assert!(parsed.is_err_and(|e| e.0[0].code == codes::TOO_DEEP));
    let query = timed("path", &format!("{SQL}metadata.\"a b\".c.d = 1"), parse_sql).unwrap();
    assert_eq!(
        query.filter.unwrap().value.to_string(),
        "metadata.\"a b\".c.d = 1"
    );
}

#[test]
fn deep_prefix_operators() {
    for (what, text) in [
        ("btql not", format!("{BTQL}{}x", "not ".repeat(5000))),
        ("btql neg", format!("{BTQL}{}x", "- ".repeat(5000))),
        ("btql neg word", format!("{BTQL}{}x", "neg ".repeat(5000))),
        ("sql not", format!("{SQL}{}x", "NOT ".repeat(400))),
        ("sql neg", format!("{SQL}{}x", "- ".repeat(400))),
    ] {
        too_deep(what, &text);
    }
    // At the first `NOT` past the limit, before counting operators.
    let text = format!("{SQL}{}x", "NOT ".repeat(5000));
    let d = too_deep("sql many nots", &text);
    assert_eq!(d.span.start, SQL.len() + 4 * MAX_EXPRESSION_DEPTH, "{d}");
    // Within the limit, a chain of `not` still parses.
    let text = format!("{BTQL}{}x", "not ".repeat(MAX_EXPRESSION_DEPTH - 1));
    timed("btql nots", &text, parse_query).unwrap();
}

#[test]
fn long_chains_of_binary_operators() {
    for (what, text) in [
        ("btql +", format!("{BTQL}{}a", "a + ".repeat(5000))),
        (
            "btql or",
            format!("{BTQL}{}a = 1", "a = 1 or ".repeat(2000)),
        ),
        (
            "btql ternary",
            format!("{BTQL}{}c", "a ? b : ".repeat(2000)),
        ),
        ("btql mixed", format!("{BTQL}{}a", "a * a + ".repeat(2000))),
        ("sql +", format!("{SQL}{}a = 1", "a + ".repeat(400))),
    ] {
        let d = too_deep(what, &text);
        assert!(d.span.end > d.span.start, "{what}: {d}");
    }
    let d = error("sql many +", &format!("{SQL}{}a = 1", "a + ".repeat(5000)));
    assert!(d.message.contains("too many operators"), "{d}");
    // The error points at the operator that makes the tree too deep.
    let text = format!("{BTQL}{}a", "a + ".repeat(5000));
    let d = too_deep("btql +", &text);
    assert_eq!(&text[d.span.start..d.span.end], "+");
    // A flat list is no deeper than its items.
    let text = format!("{BTQL}x in [{}1]", "1, ".repeat(5000));
    timed("long list", &text, parse_query).unwrap();
    // Just within the limit parses.
    let text = format!("{BTQL}{}a", "a + ".repeat(MAX_EXPRESSION_DEPTH - 1));
    timed("btql + at the limit", &text, parse_query).unwrap();
    let text = format!("{BTQL}{}a", "a + ".repeat(MAX_EXPRESSION_DEPTH));
    too_deep("btql + over the limit", &text);
}

#[test]
fn wide_json_asts() {
    let from = "\"from\":{\"op\":\"function\",\"name\":{\"op\":\"ident\",\"name\":[\"project_logs\"]},\"args\":[{\"op\":\"literal\",\"value\":\"p\"}]}";
    let leaf = "{\"op\":\"literal\",\"value\":true}";
    let children = vec![leaf; 5000].join(",");
    let text = format!("{{{from},\"filter\":{{\"op\":\"and\",\"children\":[{children}]}}}}");
    too_deep("json and", &text);
    let names = vec!["\"a\""; 5000].join(",");
    let text = format!("{{{from},\"filter\":{{\"op\":\"ident\",\"name\":[{names}]}}}}");
    let d = too_deep("json path", &text);
    assert!(d.message.contains("filter.name"), "{d}");
    let d = error(
        "json unbalanced",
        &format!("{{\"filter\":{}", "[".repeat(100)),
    );
    assert_eq!(d.code, codes::SYNTAX, "{d}");
    timed(
        "json",
        &format!("{{{from},\"filter\":{leaf}}}"),
        parse_json_ast,
    )
    .unwrap();
}

/// Shapes that make a backtracking parser exponential, nested just within
/// the bracket limit and left unclosed so every alternative is tried.
#[test]
fn no_exponential_backtracking() {
    let depth = MAX_EXPRESSION_DEPTH - 1;
    for (what, piece, end) in [
        ("parens", "(", "x"),
        ("calls", "f(", "x"),
        ("arrays", "[", "x"),
        ("in lists", "a in (", "x"),
        ("ternaries", "a ? ", "x"),
        ("mixed", "f([(a in (", "x"),
        ("index", "x[", "1"),
        ("not in", "a not in (", "x"),
        ("paths", "a.\"b\".c(", "x ."),
    ] {
        for prefix in [BTQL, SQL] {
            let text = format!("{prefix}{}{end}", piece.repeat(depth));
            if timed(what, &text, parse_any).is_ok() {
                panic!("{what}: parsed {text}");
            }
        }
    }
    // Dots and brackets after non-identifiers (sqlparser's other path).
    for piece in [".(b)", ".\"a\"[1]", ".f(x)", ".'s'", ".*"] {
        let text = format!("{SQL}a{}.)", piece.repeat(200));
        let _ = timed(piece, &text, parse_any);
    }
}

#[derive(Debug)]
struct Logs;

impl crate::Catalog for Logs {
    fn source(
        &self,
        _: crate::ObjectType,
        _: &[String],
    ) -> Result<std::sync::Arc<dyn datafusion_expr::TableSource>, String> {
        Ok(std::sync::Arc::new(
            datafusion_expr::logical_plan::builder::LogicalTableSource::new(
                crate::schema::spans_schema(),
            ),
        ))
    }
}

/// Queries just within the limit plan, on the test thread's 2 MiB stack
/// (the size of a tokio worker's), in a debug build.
#[test]
fn queries_at_the_limit_plan_on_a_small_stack() {
    let options = crate::PlanOptions {
        tz_offset_minutes: 0,
        now: chrono::DateTime::from_timestamp(0, 0).unwrap(),
    };
    let n = MAX_EXPRESSION_DEPTH - 3;
    for (what, filter) in [
        (
            "sum",
            format!("{}metrics.tokens > 1", "metrics.tokens + ".repeat(n - 2)),
        ),
        ("or", format!("{}id = 'x'", "id = 'x' or ".repeat(n - 1))),
        ("nots", format!("{}is_root", "not ".repeat(n))),
        (
            "calls",
            format!("{}id{} = 'x'", "lower(".repeat(n - 1), ")".repeat(n - 1)),
        ),
        (
            "parens",
            format!("{}is_root{}", "(".repeat(n), ")".repeat(n)),
        ),
        (
            "ternaries",
            format!("{}'c' = 'x'", "is_root ? 'a' : ".repeat(n - 1)),
        ),
    ] {
        for text in [
            format!("{BTQL}{filter}"),
            format!(
                "{SQL}{}",
                filter.replace(" ? ", " AND ").replace(" : ", " OR ")
            ),
        ] {
            let query =
                timed(what, &text, parse_any).unwrap_or_else(|e| panic!("{what}: {e}\n{text}"));
            let started = Instant::now();
            if let Err(e) = crate::plan_query(&query, &Logs, &options) {
                assert!(!e.is_internal(), "{what}: {e}");
            }
            assert!(
                started.elapsed() < LIMIT,
                "{what}: planning took {:?}",
                started.elapsed()
            );
        }
    }
}
