//! Golden tests of BTQL: every `tests/btql/*.test` file is a list of queries
//! over fixture data with their expected output.
//!
//! # File format
//!
//! ```text
//! # A comment (only outside cases: before the first header or after `====`).
//! fixture: basic.jsonl updates.jsonl
//! tz_offset: 480
//!
//! query: short description
//! select: id, metadata.model
//! | from: project_logs('fixture')
//! | sort: id
//! ----
//! {"id":"a","model":"gpt-4"}
//! ====
//!
//! query rowsort: output lines are sorted before comparing
//! select: id | from: project_logs('fixture')
//! ----
//! ====
//!
//! error: an expected failure; the block is the exact stderr
//! select: id | from: project_logs('nope')
//! ----
//! error: ...
//! ====
//! ```
//!
//! - File header lines (before the first case):
//!   - `fixture: F1 F2 ...` (required): files of `tests/fixtures/`, ingested
//!     in this order into the project `fixture` of a fresh data directory, one
//!     `spanlake ingest` (= one commit) per file, once per `.test` file.
//!   - `tz_offset: N` (optional): the default `--tz-offset` of every case.
//! - A case starts with a header `KIND[ OPTION...]: description`, where KIND
//!   is `query` (must exit 0; the block is stdout of `--format jsonl`) or
//!   `error` (must exit 1, or the code of `exit=N`; the block is stderr,
//!   exactly). Options: `rowsort` (sort the output lines, of both sides,
//!   before comparing), `tz_offset=N` (this case's `--tz-offset`), `exit=N`.
//! - The query is every line up to a line `----`, taken literally (BTQL
//!   comments are `--`, so `#` lines inside a query are part of it), joined
//!   with `\n`. Line and column numbers in expected diagnostics count from
//!   its first line.
//! - The expected block is every line up to a line `====`. An empty block
//!   means no output (no rows).
//! - Top-level `"_xact_id"`, `"_pagination_key"`, `"org_id"` and `"project_id"` string values are
//!   replaced by `"<redacted>"` in query output, as they differ per run.
//!
//! `SPANLAKE_BLESS=1` rewrites the expected blocks from the actual output.
//! It is for maintenance only: every expected block of this suite was
//! computed by hand from the fixture and the spec (`btql.md`,
//! `data-model.md`); check a blessed diff the same way before keeping it.
//! A case that fails shows a bug: fix the engine, never bless it away.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::support::{Spanlake, fixtures_dir, tests_dir};

/// The project every fixture is ingested into.
const PROJECT: &str = "fixture";
const REDACTED_KEYS: [&str; 4] = ["_xact_id", "_pagination_key", "org_id", "project_id"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Query,
    Error,
}

#[derive(Debug)]
struct Case {
    kind: Kind,
    description: String,
    /// 1-based line of the header.
    header_line: usize,
    rowsort: bool,
    tz_offset: Option<i32>,
    exit_code: Option<i32>,
    query: String,
    expected: Vec<String>,
    /// 0-based line range of the expected block in the file (for blessing).
    expected_lines: std::ops::Range<usize>,
}

#[derive(Debug)]
struct TestFile {
    path: PathBuf,
    lines: Vec<String>,
    fixtures: Vec<String>,
    tz_offset: i32,
    cases: Vec<Case>,
}

fn parse_header(line: &str) -> Option<(Kind, Vec<&str>, &str)> {
    let (head, description) = line.split_once(':')?;
    let mut words = head.split_whitespace();
    let kind = match words.next()? {
        "query" => Kind::Query,
        "error" => Kind::Error,
        _ => return None,
    };
    Some((kind, words.collect(), description.trim()))
}

fn parse_file(path: &Path) -> Result<TestFile, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let mut file = TestFile {
        path: path.to_owned(),
        lines: lines.clone(),
        fixtures: Vec::new(),
        tz_offset: 0,
        cases: Vec::new(),
    };
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index].as_str();
        let trimmed = line.trim();
        let at = index + 1;
        index += 1;
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("fixture:") {
            if !file.cases.is_empty() {
                return Err(format!("line {at}: `fixture:` after the first case"));
            }
            file.fixtures
                .extend(rest.split_whitespace().map(str::to_owned));
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix("tz_offset:") {
            if !file.cases.is_empty() {
                return Err(format!("line {at}: `tz_offset:` after the first case"));
            }
            file.tz_offset = rest
                .trim()
                .parse()
                .map_err(|e| format!("line {at}: bad tz_offset: {e}"))?;
            continue;
        }
        let Some((kind, options, description)) = parse_header(trimmed) else {
            return Err(format!(
                "line {at}: expected a case header (`query: ...` or `error: ...`), a comment or a blank line, found `{line}`"
            ));
        };
        let mut case = Case {
            kind,
            description: description.to_owned(),
            header_line: at,
            rowsort: false,
            tz_offset: None,
            exit_code: None,
            query: String::new(),
            expected: Vec::new(),
            expected_lines: 0..0,
        };
        for option in options {
            match option.split_once('=') {
                None if option == "rowsort" => case.rowsort = true,
                Some(("tz_offset", value)) => {
                    case.tz_offset = Some(
                        value
                            .parse()
                            .map_err(|e| format!("line {at}: bad tz_offset: {e}"))?,
                    );
                }
                Some(("exit", value)) => {
                    case.exit_code = Some(
                        value
                            .parse()
                            .map_err(|e| format!("line {at}: bad exit code: {e}"))?,
                    );
                }
                _ => return Err(format!("line {at}: unknown option `{option}`")),
            }
        }
        let mut query_lines = Vec::new();
        loop {
            let Some(line) = lines.get(index) else {
                return Err(format!("case at line {at}: no `----` after the query"));
            };
            index += 1;
            if line == "----" {
                break;
            }
            query_lines.push(line.as_str());
        }
        case.query = query_lines.join("\n");
        if case.query.trim().is_empty() {
            return Err(format!("case at line {at}: empty query"));
        }
        let start = index;
        loop {
            let Some(line) = lines.get(index) else {
                return Err(format!(
                    "case at line {at}: no `====` after the expected block"
                ));
            };
            if line == "====" {
                break;
            }
            case.expected.push(line.clone());
            index += 1;
        }
        case.expected_lines = start..index;
        index += 1;
        file.cases.push(case);
    }
    if file.fixtures.is_empty() {
        return Err("no `fixture:` line".into());
    }
    if file.cases.is_empty() {
        return Err("no cases".into());
    }
    Ok(file)
}

/// Replace the string value of the top-level keys that differ per run.
fn redact(line: &str) -> String {
    let mut out = line.to_owned();
    for key in REDACTED_KEYS {
        let needle = format!("\"{key}\":\"");
        let mut from = 0;
        while let Some(found) = out[from..].find(&needle) {
            let value_start = from + found + needle.len();
            let Some(value_len) = out[value_start..].find('"') else {
                break;
            };
            out.replace_range(value_start..value_start + value_len, "<redacted>");
            from = value_start + "<redacted>".len() + 1;
        }
    }
    out
}

/// A line diff (longest common subsequence), `-` expected, `+` actual.
fn diff(expected: &[String], actual: &[String]) -> String {
    let (n, m) = (expected.len(), actual.len());
    let mut lcs = vec![vec![0usize; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if expected[i] == actual[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && expected[i] == actual[j] {
            let _ = writeln!(out, "   {}", expected[i]);
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            let _ = writeln!(out, "  -{}", expected[i]);
            i += 1;
        } else {
            let _ = writeln!(out, "  +{}", actual[j]);
            j += 1;
        }
    }
    out
}

#[derive(Debug)]
struct Outcome {
    /// The lines to compare (and to bless with).
    actual: Vec<String>,
    /// Why the case failed apart from a content mismatch (exit code).
    problem: Option<String>,
}

fn run_case(spanlake: &Spanlake, file: &TestFile, case: &Case) -> Outcome {
    let tz_offset = case.tz_offset.unwrap_or(file.tz_offset).to_string();
    let run = spanlake.run([
        "query",
        "--format",
        "jsonl",
        "--tz-offset",
        tz_offset.as_str(),
        // The query may start with `--` (a BTQL comment) or `-`.
        "--",
        case.query.as_str(),
    ]);
    let (expected_code, text, other) = match case.kind {
        Kind::Query => (0, &run.stdout, &run.stderr),
        Kind::Error => (case.exit_code.unwrap_or(1), &run.stderr, &run.stdout),
    };
    let mut actual: Vec<String> = text.lines().map(redact).collect();
    if case.rowsort {
        actual.sort();
    }
    let problem = (run.code != expected_code).then(|| {
        format!(
            "exit code {} (expected {expected_code}); the other stream:\n{other}",
            run.code
        )
    });
    Outcome { actual, problem }
}

fn bless(file: &TestFile, outcomes: &[Outcome]) {
    let mut lines: Vec<String> = Vec::with_capacity(file.lines.len());
    let mut next = 0;
    for (case, outcome) in file.cases.iter().zip(outcomes) {
        lines.extend_from_slice(&file.lines[next..case.expected_lines.start]);
        lines.extend(outcome.actual.iter().cloned());
        next = case.expected_lines.end;
    }
    lines.extend_from_slice(&file.lines[next..]);
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(&file.path, text).expect("write the blessed file");
}

/// Run every case of `tests/btql/<name>`; panics listing every failing case.
pub(crate) fn run_test_file(name: &str) {
    let path = tests_dir().join("btql").join(name);
    let shown = format!("tests/btql/{name}");
    let file = parse_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let spanlake = Spanlake::new();
    let create = spanlake.run(["project", "create", PROJECT]);
    assert_eq!(create.code, 0, "project create failed: {}", create.stderr);
    for fixture in &file.fixtures {
        spanlake.ingest(PROJECT, &fixtures_dir().join(fixture));
    }

    let outcomes: Vec<Outcome> = file
        .cases
        .iter()
        .map(|case| run_case(&spanlake, &file, case))
        .collect();

    let mut report = String::new();
    let mut failed = 0;
    for (case, outcome) in file.cases.iter().zip(&outcomes) {
        let mut expected = case.expected.clone();
        if case.rowsort {
            expected.sort();
        }
        let mismatch = expected != outcome.actual;
        if !mismatch && outcome.problem.is_none() {
            continue;
        }
        failed += 1;
        let kind = match case.kind {
            Kind::Query => "query",
            Kind::Error => "error",
        };
        let _ = writeln!(
            report,
            "\n=== {shown}:{}: {kind}: {}",
            case.header_line, case.description
        );
        for line in case.query.lines() {
            let _ = writeln!(report, "  | {line}");
        }
        if let Some(problem) = &outcome.problem {
            let _ = writeln!(report, "  {problem}");
        }
        if mismatch {
            let _ = writeln!(report, "  output (-expected +actual):");
            report.push_str(&diff(&expected, &outcome.actual));
        }
    }
    if std::env::var_os("SPANLAKE_BLESS").is_some_and(|v| v == "1") {
        bless(&file, &outcomes);
        return;
    }
    assert!(
        failed == 0,
        "{failed} of {} case(s) failed in {shown}:{report}",
        file.cases.len(),
    );
}

macro_rules! golden_tests {
    ($($test:ident => $file:literal,)*) => {
        $(
            #[test]
            fn $test() {
                run_test_file($file);
            }
        )*

        /// Every `.test` file has a `#[test]` above.
        #[test]
        fn every_test_file_is_listed() {
            let listed = [$($file),*];
            let mut missing = Vec::new();
            for entry in std::fs::read_dir(tests_dir().join("btql")).expect("read tests/btql") {
                let name = entry.expect("dir entry").file_name().to_string_lossy().into_owned();
                if name.ends_with(".test") && !listed.contains(&name.as_str()) {
                    missing.push(name);
                }
            }
            assert!(missing.is_empty(), "add these to golden_tests!: {missing:?}");
        }
    };
}

golden_tests! {
    golden_syntax => "syntax.test",
    golden_select => "select.test",
    golden_filter => "filter.test",
    golden_functions => "functions.test",
    golden_sort => "sort.test",
    golden_errors => "errors.test",
    golden_merge => "merge.test",
    golden_replace => "replace.test",
    golden_shapes => "shapes.test",
    golden_aggregate => "aggregate.test",
    golden_sql => "sql.test",
    golden_json_ast => "json_ast.test",
    golden_pivot => "pivot.test",
}

mod format_tests {
    use super::*;

    #[test]
    fn redact_replaces_only_the_value() {
        assert_eq!(
            redact(r#"{"id":"a","_xact_id":"1000","org_id":"x-y","b":"_xact_id"}"#),
            r#"{"id":"a","_xact_id":"<redacted>","org_id":"<redacted>","b":"_xact_id"}"#
        );
    }

    #[test]
    fn diff_marks_changes() {
        let expected = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let actual = vec!["a".to_owned(), "x".to_owned(), "c".to_owned()];
        assert_eq!(diff(&expected, &actual), "   a\n  -b\n  +x\n   c\n");
    }
}
