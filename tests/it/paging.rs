//! Reading results in pages with cursors (`--page-size`, `--cursor`): pages
//! concatenate to the whole result, in order, without overlap, and keep the
//! snapshot of the first page while ingest goes on.

use crate::support::{Spanlake, fixtures_dir};

fn page(
    spanlake: &Spanlake,
    query: &str,
    cursor: Option<&str>,
) -> (Vec<serde_json::Value>, Option<String>) {
    let mut args = vec!["query", "--format", "json", "--page-size", "4"];
    if let Some(cursor) = cursor {
        args.extend(["--cursor", cursor]);
    }
    args.push(query);
    let run = spanlake.run(args).ok();
    let body: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rows = body["data"].as_array().unwrap().clone();
    let next = body.get("cursor").map(|c| c.as_str().unwrap().to_owned());
    (rows, next)
}

fn all_pages(spanlake: &Spanlake, query: &str, between: impl Fn()) -> Vec<Vec<serde_json::Value>> {
    let mut pages = Vec::new();
    let mut cursor = None;
    loop {
        let (rows, next) = page(spanlake, query, cursor.as_deref());
        pages.push(rows);
        between();
        match next {
            Some(next) => cursor = Some(next),
            None => return pages,
        }
    }
}

#[test]
fn pages_concatenate_to_the_whole_result_and_keep_their_snapshot() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    for query in [
        "select: id, created | from: project_logs('p') | sort: created desc",
        "select: id | from: project_logs('p')",
        "select: span_attributes.type as type | from: project_logs('p') | sort: type",
    ] {
        let whole = spanlake.query_jsonl(query).ok().jsonl();
        let late = spanlake.write_file(
            "late.jsonl",
            r#"{"id":"late","created":"2030-01-01T00:00:00Z","span_attributes":{"type":"llm"}}
{"id":"t1","_object_delete":true}"#,
        );
        let pages = all_pages(&spanlake, query, || {});
        assert!(pages.len() > 1, "{query}: several pages");
        assert!(pages[..pages.len() - 1].iter().all(|p| p.len() == 4));
        let joined: Vec<_> = pages.concat();
        if query.contains("sort:") && !query.contains("sort: type") {
            assert_eq!(joined, whole, "{query}");
        } else {
            let mut a: Vec<String> = joined.iter().map(ToString::to_string).collect();
            let mut b: Vec<String> = whole.iter().map(ToString::to_string).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b, "{query}");
        }

        // Ingest between pages: later pages still read the first page's snapshot.
        let ingested = std::cell::Cell::new(false);
        let during = all_pages(&spanlake, query, || {
            if !ingested.replace(true) {
                spanlake.ingest("p", &late);
            }
        });
        assert_eq!(during.concat().len(), whole.len(), "{query}: snapshot kept");
        // Undo for the next query: the late row goes, t1 comes back.
        let undo = spanlake.write_file(
            "undo.jsonl",
            &format!(
                "{}\n{}",
                r#"{"id":"late","_object_delete":true}"#,
                std::fs::read_to_string(fixtures_dir().join("basic.jsonl"))
                    .unwrap()
                    .lines()
                    .next()
                    .unwrap()
            ),
        );
        spanlake.ingest("p", &undo);
    }
}

#[test]
fn a_cursor_only_continues_its_own_query() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let (_, cursor) = page(&spanlake, "select: id | from: project_logs('p')", None);
    let cursor = cursor.unwrap();
    let other = spanlake.run([
        "query",
        "--format",
        "json",
        "--page-size",
        "4",
        "--cursor",
        &cursor,
        "select: id, created | from: project_logs('p')",
    ]);
    assert_ne!(other.code, 0);
    assert!(other.stderr.contains("another query"), "{}", other.stderr);
    let garbage = spanlake.run([
        "query",
        "--page-size",
        "4",
        "--cursor",
        "not-a-cursor",
        "select: id | from: project_logs('p')",
    ]);
    assert!(
        garbage.stderr.contains("cursor is not valid"),
        "{}",
        garbage.stderr
    );
}

/// `POST /btql` `{"query": query, ...extra}`: the status and the answer.
fn btql(
    server: &crate::http::Server,
    key: &str,
    query: serde_json::Value,
    extra: serde_json::Value,
) -> (u16, serde_json::Value) {
    let mut body = serde_json::json!({ "query": query });
    if let serde_json::Value::Object(extra) = extra {
        body.as_object_mut().unwrap().extend(extra);
    }
    server.call("POST", "/btql", Some(key), &body.to_string())
}

/// Three traces of three spans each (a root and two children), `m` set on
/// the roots of the first two only.
fn three_traces() -> Vec<serde_json::Value> {
    let mut rows = Vec::new();
    for t in 0..3 {
        for s in 0..3 {
            let mut row = serde_json::json!({
                "id": format!("t{t}-s{s}"),
                "root_span_id": format!("t{t}"),
                "span_id": if s == 0 { format!("t{t}") } else { format!("t{t}-s{s}") },
                "created": format!("2026-11-01T00:0{t}:0{s}Z"),
            });
            if s > 0 {
                row["span_parents"] = serde_json::json!([format!("t{t}")]);
            }
            if s == 0 && t < 2 {
                row["metadata"] = serde_json::json!({"m": format!("v{t}")});
            }
            rows.push(row);
        }
    }
    rows
}

/// A store with [`three_traces`] logged over HTTP into project `name` of
/// `org`: the store, its server, the org's key and the project id.
fn serving_three_traces(org: &str, name: &str) -> (Spanlake, crate::http::Server, String, String) {
    use crate::http::{Server, api_key, create_project, logs3_body};
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, org);
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, name);
    let (status, body) = server.call(
        "POST",
        "/logs3",
        Some(&key),
        &logs3_body(&project, &three_traces()),
    );
    assert_eq!(status, 200, "{body}");
    (spanlake, server, key, project)
}

/// The pages of `first` (a query text), the next ones asked for by
/// `next(cursor)`: (the row ids of each page, whether each had a cursor).
fn http_pages(
    server: &crate::http::Server,
    key: &str,
    first: &str,
    next: impl Fn(&str) -> (serde_json::Value, serde_json::Value),
) -> Vec<(Vec<String>, bool)> {
    let mut pages = Vec::new();
    let (mut query, mut extra) = (serde_json::json!(first), serde_json::json!({}));
    loop {
        let (status, answer) = btql(server, key, query.clone(), extra.clone());
        assert_eq!(status, 200, "{query} {extra}: {answer}");
        let ids: Vec<String> = answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        let cursor = answer
            .get("cursor")
            .and_then(|c| c.as_str())
            .map(str::to_string);
        pages.push((ids, cursor.is_some()));
        match cursor {
            Some(cursor) => (query, extra) = next(&cursor),
            None => return pages,
        }
        assert!(pages.len() < 10, "{pages:?}");
    }
}

#[test]
fn http_in_text_cursors_page_to_the_last_page_in_both_forms_and_as_the_request_field() {
    let (spanlake, server, key, project) = serving_three_traces("pages-org", "pages");
    let clause = format!("select: id | from: project_logs('{project}') | sort: id | limit: 4");
    let sql = format!("SELECT id FROM project_logs('{project}') ORDER BY id LIMIT 4");
    let all: Vec<String> = three_traces()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    let runs = [
        // `cursor:` in the clause text.
        http_pages(&server, &key, &clause, |c| {
            (
                format!("{clause} | cursor: '{c}'").into(),
                serde_json::json!({}),
            )
        }),
        // The cursor clause anywhere, the query spaced differently.
        http_pages(&server, &key, &clause, |c| {
            (
                format!("select: id  |  cursor: '{c}' | from: project_logs('{project}')\n| sort: id | limit: 4").into(),
                serde_json::json!({}),
            )
        }),
        // SQL `OFFSET '<cursor>'`.
        http_pages(&server, &key, &sql, |c| {
            (format!("{sql} OFFSET '{c}'").into(), serde_json::json!({}))
        }),
        // The request field, and the same token in the text as well.
        http_pages(&server, &key, &sql, |c| {
            (sql.clone().into(), serde_json::json!({ "cursor": c }))
        }),
        http_pages(&server, &key, &clause, |c| {
            (
                format!("{clause} | cursor: '{c}'").into(),
                serde_json::json!({ "cursor": c }),
            )
        }),
    ];
    for pages in &runs {
        let sizes: Vec<usize> = pages.iter().map(|(ids, _)| ids.len()).collect();
        assert_eq!(sizes, vec![4, 4, 1], "{pages:?}");
        let cursors: Vec<bool> = pages.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            cursors,
            vec![true, true, false],
            "no cursor on the last page: {pages:?}"
        );
        let ids: Vec<String> = pages.iter().flat_map(|(ids, _)| ids.clone()).collect();
        assert_eq!(ids, all, "every row once, in order");
    }
    // A cursor of the clause query continues the same query in SQL: the
    // cursor belongs to the query, not to its spelling.
    let (_, first) = btql(&server, &key, clause.clone().into(), serde_json::json!({}));
    let token = first["cursor"].as_str().unwrap().to_string();
    let (status, second) = btql(
        &server,
        &key,
        format!("{sql} OFFSET '{token}'").into(),
        serde_json::json!({}),
    );
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["data"][0]["id"], "t1-s1", "{second}");
    // The CLI takes the same in-text cursor (and pages by the query's
    // `limit:` then, as over HTTP).
    let run = spanlake
        .run([
            "query",
            "--format",
            "json",
            &format!("{clause} | cursor: '{token}'"),
        ])
        .ok();
    let cli: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let cli_ids: Vec<&str> = cli["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        cli_ids,
        all[4..8].iter().map(String::as_str).collect::<Vec<_>>(),
        "{}",
        run.stdout
    );
    assert!(cli["cursor"].is_string(), "{}", run.stdout);
    // The same token under the other meaning of `limit:` (a limit inside
    // `--page-size` pages, not the page size) is refused, not read wrong.
    let run = spanlake
        .run([
            "query",
            "--format",
            "json",
            "--page-size",
            "4",
            "--cursor",
            &token,
            &clause,
        ])
        .expect_code(2);
    assert!(run.stderr.contains("another query"), "{}", run.stderr);
    // Two different cursors, or a cursor of another query, are refused.
    let (status, answer) = btql(
        &server,
        &key,
        format!("{clause} | cursor: '{token}'").into(),
        serde_json::json!({ "cursor": "another" }),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cursor once"),
        "{answer}"
    );
    let (status, answer) = btql(
        &server,
        &key,
        format!("select: id | from: project_logs('{project}') | sort: id desc | limit: 4 | cursor: '{token}'").into(),
        serde_json::json!({}),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("another query"),
        "{answer}"
    );
}

#[test]
fn traces_limit_counts_traces_over_http_and_in_the_cli_and_sql_has_the_null_safe_operators() {
    let (spanlake, server, key, project) = serving_three_traces("local", "traces");
    let root_of = |answer: &serde_json::Value| -> Vec<String> {
        answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["root_span_id"].as_str().unwrap().to_string())
            .collect()
    };
    for (query, traces) in [
        (
            format!(
                "select: id, root_span_id | from: project_logs('{project}') traces | sort: created desc | limit: 1"
            ),
            1,
        ),
        (
            format!(
                "select: id, root_span_id | from: project_logs('{project}') traces | sort: created desc | limit: 2"
            ),
            2,
        ),
        (
            format!(
                "SELECT id, root_span_id FROM project_logs('{project}', shape => 'traces') ORDER BY created DESC LIMIT 1"
            ),
            1,
        ),
    ] {
        let (status, answer) = btql(&server, &key, query.clone().into(), serde_json::json!({}));
        assert_eq!(status, 200, "{query}: {answer}");
        let roots = root_of(&answer);
        assert_eq!(
            roots.len(),
            3 * traces,
            "every span of {traces} trace(s): {answer}"
        );
        let mut distinct = roots.clone();
        distinct.dedup();
        let expected: Vec<String> = (0..traces).map(|i| format!("t{}", 2 - i)).collect();
        assert_eq!(distinct, expected, "the latest traces: {answer}");
        assert!(answer["cursor"].is_null(), "{answer}");
        // The CLI answers the same rows.
        let run = spanlake.run(["query", "--format", "json", &query]).ok();
        let cli: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        assert_eq!(cli.as_array().unwrap().len(), 3 * traces, "{}", run.stdout);
    }
    // `<!=>` and `IS [NOT] DISTINCT FROM` in SQL: a missing value is
    // distinct from 'v0', and not distinct from NULL.
    let ids = |query: String| -> Vec<String> {
        let (status, answer) = btql(&server, &key, query.clone().into(), serde_json::json!({}));
        assert_eq!(status, 200, "{query}: {answer}");
        answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect()
    };
    let roots = format!("FROM project_logs('{project}') WHERE is_root");
    for op in ["<!=>", "IS DISTINCT FROM"] {
        assert_eq!(
            ids(format!(
                "SELECT id {roots} AND metadata.m {op} 'v0' ORDER BY id"
            )),
            vec!["t1-s0", "t2-s0"],
            "{op}"
        );
    }
    for op in ["<=>", "IS NOT DISTINCT FROM"] {
        assert_eq!(
            ids(format!(
                "SELECT id {roots} AND metadata.m {op} 'v0' ORDER BY id"
            )),
            vec!["t0-s0"],
            "{op}"
        );
        assert_eq!(
            ids(format!(
                "SELECT id {roots} AND metadata.m {op} NULL ORDER BY id"
            )),
            vec!["t2-s0"],
            "{op}"
        );
    }
    assert_eq!(
        ids(format!(
            "SELECT id {roots} AND NOT (metadata.m <!=> NULL) ORDER BY id"
        )),
        vec!["t2-s0"]
    );
}
