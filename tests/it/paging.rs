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
