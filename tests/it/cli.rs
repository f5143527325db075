//! The `spanlake` command line: exit codes (0 ok, 1 query/data, 2
//! usage/config/IO), ingest atomicity and rejects, commits and `_xact_id`
//! order, projects, output formats and where the data directory comes from.

use serde_json::{Value, json};

use crate::support::{Spanlake, run_command_with_stdin};

const ALL_IDS: &str = "select: id | from: project_logs('p') | sort: id";

fn ids(spanlake: &Spanlake, query: &str) -> Vec<String> {
    spanlake
        .query_jsonl(query)
        .ok()
        .jsonl()
        .iter()
        .map(|row| row["id"].as_str().expect("id is a string").to_owned())
        .collect()
}

fn event(id: &str, second: u32) -> String {
    format!(r#"{{"id":"{id}","created":"2024-01-01T00:00:{second:02}Z","input":"{id}"}}"#)
}

fn lines(events: &[String]) -> String {
    let mut text = events.join("\n");
    text.push('\n');
    text
}

/// `_xact_id` of each row of `select: id, _xact_id`, as numbers.
fn xact_ids(spanlake: &Spanlake) -> Vec<(String, u64)> {
    spanlake
        .query_jsonl("select: id, _xact_id | from: project_logs('p') | sort: id")
        .ok()
        .jsonl()
        .iter()
        .map(|row| {
            let xact = row["_xact_id"]
                .as_str()
                .expect("_xact_id is a string")
                .parse::<u64>()
                .expect("_xact_id is a decimal u64");
            (row["id"].as_str().expect("id").to_owned(), xact)
        })
        .collect()
}

#[test]
fn exit_codes() {
    let spanlake = Spanlake::new();
    let file = spanlake.write_file("a.jsonl", &lines(&[event("a", 0)]));
    spanlake.ingest("p", &file);
    spanlake.query_jsonl(ALL_IDS).expect_code(0);
    // A BTQL error and an unknown project are query errors.
    let bad = spanlake.query_jsonl("select: id | from: project_logs('p') | filter: (");
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.starts_with("error[BTQL"), "{}", bad.stderr);
    assert!(bad.stdout.is_empty(), "{}", bad.stdout);
    let unknown = spanlake.query_jsonl("select: id | from: project_logs('nope')");
    assert_eq!(unknown.code, 1, "{}", unknown.stderr);
    // Usage errors.
    spanlake
        .run(["query", "--no-such-flag", ALL_IDS])
        .expect_code(2);
    spanlake
        .run(["query", "--format", "xml", ALL_IDS])
        .expect_code(2);
    spanlake.run(["frobnicate"]).expect_code(2);
    // I/O: a missing input file.
    let missing = spanlake.run(["ingest", "--project", "p", "does-not-exist.jsonl"]);
    assert_eq!(missing.code, 2, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("does-not-exist.jsonl"),
        "{}",
        missing.stderr
    );
}

#[test]
fn ingest_is_all_or_nothing() {
    let spanlake = Spanlake::new();
    let first = spanlake.write_file("first.jsonl", &lines(&[event("a", 0)]));
    spanlake.ingest("p", &first);
    let text = [
        event("b", 1),
        "{not json".to_owned(),
        event("c", 2),
        r#"{"created":"2024-01-01T00:00:03Z","input":"no id"}"#.to_owned(),
        event("d", 4),
    ]
    .join("\n");
    let bad = spanlake.write_file("bad.jsonl", &text);
    let run = spanlake.run([
        "ingest".as_ref(),
        "--project".as_ref(),
        "p".as_ref(),
        bad.as_os_str(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("line 2: "), "{}", run.stderr);
    assert!(run.stderr.contains("line 4: "), "{}", run.stderr);
    for good_line in ["line 1:", "line 3:", "line 5:"] {
        assert!(!run.stderr.contains(good_line), "{}", run.stderr);
    }
    // Nothing of the bad file was committed.
    assert_eq!(ids(&spanlake, ALL_IDS), ["a"]);
}

#[test]
fn wrong_types_of_known_fields_are_rejected() {
    let spanlake = Spanlake::new();
    let text = [
        r#"{"id":"ok","created":"2024-01-01T00:00:00Z"}"#,
        r#"{"id":"","created":"2024-01-01T00:00:00Z"}"#,
        r#"{"id":7}"#,
        r#"{"id":"t","tags":"prod"}"#,
        r#"{"id":"s","scores":{"f":"high"}}"#,
        r#"{"id":"c","created":"yesterday"}"#,
        r#"{"id":"m","metadata":[1]}"#,
        "[1, 2]",
    ]
    .join("\n");
    let file = spanlake.write_file("types.jsonl", &text);
    let run = spanlake.run([
        "ingest".as_ref(),
        "--project".as_ref(),
        "p".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    for line in 2..=8 {
        assert!(
            run.stderr.contains(&format!("line {line}: ")),
            "line {line} not reported:\n{}",
            run.stderr
        );
    }
    assert!(!run.stderr.contains("line 1: "), "{}", run.stderr);
}

#[test]
fn skip_invalid_commits_the_good_lines_and_writes_the_rejects() {
    let spanlake = Spanlake::new();
    let bad_json = "{not json";
    let no_id = r#"{"created":"2024-01-01T00:00:03Z","input":"no id"}"#;
    let text = lines(&[
        event("b", 1),
        bad_json.to_owned(),
        event("c", 2),
        no_id.to_owned(),
        event("d", 4),
    ]);
    let file = spanlake.write_file("mixed.jsonl", &text);
    let rejects = spanlake.root().join("rejects.jsonl");
    let run = spanlake.run([
        "ingest".as_ref(),
        "--project".as_ref(),
        "p".as_ref(),
        "--skip-invalid".as_ref(),
        "--rejects".as_ref(),
        rejects.as_os_str(),
        file.as_os_str(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ids(&spanlake, ALL_IDS), ["b", "c", "d"]);
    let rejected: Vec<Value> = std::fs::read_to_string(&rejects)
        .expect("the rejects file exists")
        .lines()
        .map(|line| serde_json::from_str(line).expect("a reject is a JSON line"))
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(rejected[0]["line"], json!(2));
    assert_eq!(rejected[0]["text"], json!(bad_json));
    assert_eq!(rejected[1]["line"], json!(4));
    assert_eq!(rejected[1]["text"], json!(no_id));
    for reject in &rejected {
        let reason = reject["error"].as_str().expect("the reason is a string");
        assert!(!reason.is_empty(), "{reject}");
    }
    assert!(
        rejected[1]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("id"),
        "{rejected:?}"
    );
}

#[test]
fn skip_invalid_writes_next_to_the_input_by_default() {
    let spanlake = Spanlake::new();
    let file = spanlake.write_file("in.jsonl", &lines(&[event("a", 0), "nope".to_owned()]));
    let run = spanlake.run([
        "ingest".as_ref(),
        "--project".as_ref(),
        "p".as_ref(),
        "--skip-invalid".as_ref(),
        file.as_os_str(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let rejects = spanlake.root().join("in.jsonl.rejected.jsonl");
    let text = std::fs::read_to_string(&rejects).expect("default rejects file");
    let rejected: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("JSON line"))
        .collect();
    assert_eq!(rejected.len(), 1, "{text}");
    assert_eq!(rejected[0]["line"], json!(2));
    assert_eq!(rejected[0]["text"], json!("nope"));
    assert_eq!(ids(&spanlake, ALL_IDS), ["a"]);
}

#[test]
fn ingest_from_stdin() {
    let spanlake = Spanlake::new();
    let run = spanlake.run_with_stdin(
        ["ingest", "--project", "p", "-"],
        &lines(&[event("a", 0), event("b", 1)]),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(ids(&spanlake, ALL_IDS), ["a", "b"]);
}

#[test]
fn query_from_stdin() {
    let spanlake = Spanlake::new();
    spanlake.ingest(
        "p",
        &spanlake.write_file("a.jsonl", &lines(&[event("a", 0)])),
    );
    let run = spanlake.run_with_stdin(
        ["query", "--format", "jsonl", "-"],
        "-- from stdin\nselect: id\nfrom: project_logs('p')\n",
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "{\"id\":\"a\"}\n");
}

#[test]
fn each_ingest_gets_a_larger_xact_id() {
    let spanlake = Spanlake::new();
    spanlake.ingest(
        "p",
        &spanlake.write_file("1.jsonl", &lines(&[event("a", 0), event("b", 1)])),
    );
    spanlake.ingest(
        "p",
        &spanlake.write_file("2.jsonl", &lines(&[event("c", 2)])),
    );
    // A replace of `a` in a third commit moves `a` past everything else.
    // Regression: the old version of `a` once stayed visible next to the new
    // one (ids came out as ["a", "a", "b", "c"]); see tests/btql/replace.test.
    spanlake.ingest(
        "p",
        &spanlake.write_file("3.jsonl", &lines(&[event("a", 5)])),
    );
    let xacts = xact_ids(&spanlake);
    let ids: Vec<&str> = xacts.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "c"]);
    let (a, b, c) = (xacts[0].1, xacts[1].1, xacts[2].1);
    assert!(
        b < c,
        "second ingest must have a larger _xact_id: {xacts:?}"
    );
    assert!(c < a, "third ingest must have a larger _xact_id: {xacts:?}");
    // And the merged row shows the new version.
    let rows = spanlake
        .query_jsonl("select: id, created | from: project_logs('p') | filter: id = 'a'")
        .ok()
        .jsonl();
    assert_eq!(
        rows,
        [json!({"id": "a", "created": "2024-01-01T00:00:05Z"})]
    );
}

#[test]
fn commit_rows_makes_several_commits() {
    let spanlake = Spanlake::new();
    let events: Vec<String> = (0..5).map(|i| event(&format!("r{i}"), i)).collect();
    let file = spanlake.write_file("five.jsonl", &lines(&events));
    let run = spanlake
        .run([
            "ingest".as_ref(),
            "--project".as_ref(),
            "p".as_ref(),
            "--commit-rows".as_ref(),
            "2".as_ref(),
            "--json".as_ref(),
            file.as_os_str(),
        ])
        .ok();
    let report: Value = serde_json::from_str(run.stdout.trim()).expect("--json prints a report");
    assert_eq!(report["rows"], json!(5), "{report}");
    let commits = report["commits"].as_array().expect("commits");
    let sizes: Vec<&Value> = commits.iter().map(|c| &c["rows"]).collect();
    assert_eq!(sizes, [&json!(2), &json!(2), &json!(1)], "{report}");
    let xacts = xact_ids(&spanlake);
    let by_row: Vec<u64> = xacts.iter().map(|(_, x)| *x).collect();
    assert!(
        by_row[0] == by_row[1]
            && by_row[1] < by_row[2]
            && by_row[2] == by_row[3]
            && by_row[3] < by_row[4],
        "rows r0 r1 | r2 r3 | r4 in three increasing commits: {xacts:?}"
    );
    let reported: Vec<u64> = commits
        .iter()
        .map(|c| {
            c["xact_id"]
                .as_str()
                .expect("xact_id")
                .parse()
                .expect("u64")
        })
        .collect();
    assert_eq!(reported, [by_row[0], by_row[2], by_row[4]]);
}

#[test]
fn projects_create_and_list() {
    let spanlake = Spanlake::new();
    let created = spanlake.run(["project", "create", "alpha"]).ok();
    let id = created.stdout.trim().to_owned();
    assert!(!id.is_empty(), "create prints the id");
    spanlake.run(["project", "create", "beta"]).ok();
    let duplicate = spanlake.run(["project", "create", "alpha"]);
    assert_ne!(duplicate.code, 0, "a duplicate name must fail");
    assert!(
        duplicate.stderr.contains("alpha") && duplicate.stderr.contains("already exists"),
        "{}",
        duplicate.stderr
    );
    let list = spanlake.run(["project", "list", "--format", "json"]).ok();
    let projects: Value = serde_json::from_str(&list.stdout).expect("a JSON array");
    let projects = projects.as_array().expect("array");
    let mut names: Vec<&str> = projects
        .iter()
        .map(|p| p["name"].as_str().expect("name"))
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alpha", "beta"]);
    let alpha = projects
        .iter()
        .find(|p| p["name"] == json!("alpha"))
        .expect("alpha listed");
    assert_eq!(alpha["id"], json!(id));
    let table = spanlake.run(["project", "list"]).ok();
    assert!(
        table.stdout.contains("alpha") && table.stdout.contains(&id),
        "{}",
        table.stdout
    );
    // A project can be queried by id as well as by name.
    spanlake.ingest(
        "alpha",
        &spanlake.write_file("a.jsonl", &lines(&[event("a", 0)])),
    );
    let by_id = format!("select: id | from: project_logs('{id}')");
    assert_eq!(ids(&spanlake, &by_id), ["a"]);
}

fn formats_fixture() -> Spanlake {
    let spanlake = Spanlake::new();
    let text = [
        r#"{"id":"a","created":"2024-01-01T00:00:00Z","input":"Sunny, \"20°C\"","metadata":{"model":"gpt-4","n":[1,2]},"scores":{"f":0.5}}"#,
        r#"{"id":"b","created":"2024-01-01T00:00:01Z","input":{"q":1}}"#,
    ]
    .join("\n");
    spanlake.ingest("p", &spanlake.write_file("f.jsonl", &text));
    spanlake
}

const FORMATS_QUERY: &str =
    "select: id, input, metadata, scores.f as f, created | from: project_logs('p') | sort: id";

#[test]
fn json_format_is_an_array_of_objects_with_json_values() {
    let spanlake = formats_fixture();
    let run = spanlake
        .run(["query", "--format", "json", FORMATS_QUERY])
        .ok();
    let value: Value = serde_json::from_str(&run.stdout).expect("one JSON document");
    assert_eq!(
        value,
        json!([
            {"id": "a", "input": "Sunny, \"20°C\"", "metadata": {"model": "gpt-4", "n": [1, 2]}, "f": 0.5, "created": "2024-01-01T00:00:00Z"},
            {"id": "b", "input": {"q": 1}, "metadata": null, "f": null, "created": "2024-01-01T00:00:01Z"},
        ])
    );
    let empty = spanlake
        .run([
            "query",
            "--format",
            "json",
            "select: id | from: project_logs('p') | filter: id = 'x'",
        ])
        .ok();
    assert_eq!(
        serde_json::from_str::<Value>(&empty.stdout).expect("JSON"),
        json!([])
    );
}

#[test]
fn csv_format_has_a_header_and_quotes() {
    let spanlake = formats_fixture();
    let run = spanlake
        .run(["query", "--format", "csv", FORMATS_QUERY])
        .ok();
    // JSON columns are written as JSON text; a field with a comma or a quote
    // is quoted with doubled quotes; null is an empty field.
    assert_eq!(
        run.stdout,
        concat!(
            "id,input,metadata,f,created\n",
            "a,\"\"\"Sunny, \\\"\"20°C\\\"\"\"\"\",\"{\"\"model\"\":\"\"gpt-4\"\",\"\"n\"\":[1,2]}\",0.5,2024-01-01T00:00:00Z\n",
            "b,\"{\"\"q\"\":1}\",,,2024-01-01T00:00:01Z\n",
        )
    );
}

#[test]
fn parquet_format_writes_a_parquet_file() {
    let spanlake = formats_fixture();
    let out = spanlake.root().join("out.parquet");
    let run = spanlake.run([
        "query".as_ref(),
        "--format".as_ref(),
        "parquet".as_ref(),
        "--output".as_ref(),
        out.as_os_str(),
        FORMATS_QUERY.as_ref(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.is_empty(),
        "the rows go to the file: {}",
        run.stdout
    );
    let bytes = std::fs::read(&out).expect("the parquet file exists");
    assert!(bytes.len() > 200, "only {} bytes", bytes.len());
    assert_eq!(&bytes[..4], b"PAR1");
    assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
}

#[test]
fn table_format_shows_the_columns_and_rows() {
    let spanlake = formats_fixture();
    let run = spanlake
        .run([
            "query",
            "select: id, metadata.model | from: project_logs('p') | sort: id",
        ])
        .ok();
    let header = run.stdout.lines().next().expect("a header line");
    assert!(
        header.contains("id") && header.contains("model"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("gpt-4"), "{}", run.stdout);
    assert!(
        run.stdout
            .lines()
            .any(|line| line.trim_start().starts_with('b')),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("2 rows"), "{}", run.stdout);
}

#[test]
fn output_flag_writes_jsonl_to_a_file() {
    let spanlake = formats_fixture();
    let out = spanlake.root().join("out.jsonl");
    let run = spanlake.run([
        "query".as_ref(),
        "-f".as_ref(),
        "jsonl".as_ref(),
        "-o".as_ref(),
        out.as_os_str(),
        "select: id | from: project_logs('p') | sort: id".as_ref(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        std::fs::read_to_string(&out).expect("output file"),
        "{\"id\":\"a\"}\n{\"id\":\"b\"}\n"
    );
}

#[test]
fn data_dir_flag_position_and_environment() {
    let spanlake = Spanlake::new();
    let file = spanlake.write_file("a.jsonl", &lines(&[event("a", 0)]));
    let data_dir = spanlake.data_dir();
    // `--data-dir` before the subcommand.
    let mut before = spanlake.bare_command();
    before
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["ingest", "--project", "p"])
        .arg(&file);
    assert_eq!(before.status().expect("run").code(), Some(0));
    // `--data-dir` after the subcommand (a global flag).
    let after = spanlake
        .bare_command()
        .args(["query", "--format", "jsonl", ALL_IDS, "--data-dir"])
        .arg(&data_dir)
        .output()
        .expect("run");
    assert_eq!(String::from_utf8_lossy(&after.stdout), "{\"id\":\"a\"}\n");
    // SPANLAKE_DATA_DIR.
    let from_env = spanlake
        .bare_command()
        .env("SPANLAKE_DATA_DIR", &data_dir)
        .args(["query", "--format", "jsonl", ALL_IDS])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&from_env.stdout),
        "{\"id\":\"a\"}\n"
    );
    // The flag wins over the environment.
    let other = spanlake.root().join("other");
    let flag_wins = spanlake
        .bare_command()
        .env("SPANLAKE_DATA_DIR", &other)
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["query", "--format", "jsonl", ALL_IDS])
        .output()
        .expect("run");
    assert_eq!(
        String::from_utf8_lossy(&flag_wins.stdout),
        "{\"id\":\"a\"}\n"
    );
    // Without either, `./spanlake-data` of the working directory.
    let mut default = spanlake.bare_command();
    default.args(["ingest", "--project", "q", "-"]);
    let run = run_command_with_stdin(default, &lines(&[event("z", 0)]));
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(spanlake.root().join("spanlake-data").is_dir());
}

#[test]
fn unclosed_parenthesis_is_reported_as_such() {
    // Regression: for `filter: (id = 'x'` followed by another clause the
    // parser once listed `.field`, `[index]`, `and`, ... but never the
    // missing `)`.
    let spanlake = formats_fixture();
    let run = spanlake.query_jsonl("select: id\nfilter: (id = 'x'\nfrom: project_logs('p')");
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error[BTQL"), "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .next()
            .unwrap_or_default()
            .contains("`)`"),
        "the message should say that `)` is expected:\n{}",
        run.stderr
    );
}
