//! The HTTP API (`spanlake serve`): the unmodified Braintrust SDK end to
//! end, API keys and orgs, bad input, replays and group commit.

use crate::http::{Server, api_key, create_project, logs3_body, sdk_end_to_end};
use crate::support::Spanlake;

/// `id`s and `_xact_id`s of the project, through the CLI (not the server).
fn stored(spanlake: &Spanlake, project: &str) -> Vec<serde_json::Value> {
    spanlake
        .query_jsonl(&format!(
            "select: id, _xact_id, scores, tags | from: project_logs('{project}') | sort: id"
        ))
        .ok()
        .jsonl()
}

#[test]
fn the_braintrust_sdk_logs_traces_that_btql_returns_merged_and_an_export_writes() {
    let Some((spanlake, summary)) = sdk_end_to_end(
        "sdk-org",
        "sdk-e2e",
        "sdk_e2e.py",
        // Smaller than the 40 kB span the script logs: that batch takes the
        // overflow upload path.
        &[("BRAINTRUST_MAX_REQUEST_SIZE", "20000")],
    ) else {
        return;
    };

    // Merged rows over /btql.
    let rows = summary["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4, "{rows:#?}");
    let root = &summary["by_name"]["root_task"];
    assert_eq!(root["is_root"], true);
    assert_eq!(
        root["scores"],
        serde_json::json!({"overall": 0.75, "human": 1.0})
    );
    let tags: Vec<&str> = root["tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(
        tags.contains(&"root-tag") && tags.contains(&"late-tag"),
        "{tags:?}"
    );
    assert_eq!(root["metadata"]["nested"]["a"], 1);
    let llm = &summary["by_name"]["llm_call"];
    assert_eq!(llm["is_root"], false);
    assert_eq!(llm["span_parents"], serde_json::json!([root["span_id"]]));
    assert_eq!(llm["root_span_id"], root["root_span_id"]);
    assert_eq!(llm["metrics"]["tokens"], 17);
    assert!(llm["_xact_id"].as_str().unwrap().parse::<u64>().is_ok());
    assert_eq!(
        summary["by_name"]["calculator"]["span_attributes"]["type"],
        "tool"
    );
    // The AST form, two rows a page, the cursor echoed in `x-bt-cursor`.
    assert_eq!(summary["ast_pages"], serde_json::json!([2, 1]));
    let mut ids: Vec<&str> = summary["ast_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 3);
    // The big span went through the overflow upload.
    let uploads = std::fs::read_dir(spanlake.data_dir().join("overflow"))
        .expect("overflow uploads")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "body"))
        })
        .count();
    assert!(uploads >= 1, "no overflow upload was made");
    assert_eq!(
        summary["by_name"]["big_input"]["is_root"], true,
        "{summary:#}"
    );

    // The export automation created over REST wrote every row once.
    assert_eq!(summary["run"]["rows"], 4, "{:#}", summary["run"]);
    assert_eq!(summary["exported_rows"], 4);
    assert_eq!(summary["exported_distinct_ids"], 4);
    assert_eq!(summary["exported_root_scores"]["human"], 1.0);
    assert_eq!(summary["history"]["objects"][0]["status"], "succeeded");

    // The store itself (read by the CLI, not the server) has the same rows.
    let project = summary["project_id"].as_str().unwrap();
    assert_eq!(stored(&spanlake, project).len(), 4);
}

#[test]
fn api_keys_scope_requests_to_their_org_and_bad_input_commits_nothing() {
    let spanlake = Spanlake::new();
    let alice = api_key(&spanlake, "alice");
    let bob = api_key(&spanlake, "bob");
    let server = Server::start(&spanlake, &["--max-body", "64KiB"]);

    // Health needs no key; everything else does.
    assert_eq!(server.call("GET", "/health", None, "").0, 200);
    let (status, body) = server.call("POST", "/api/apikey/login", None, "");
    assert_eq!(status, 401);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Authorization: Bearer"),
        "{body}"
    );
    let (status, _) = server.call("GET", "/metrics", Some("sl-not-a-key"), "");
    assert_eq!(status, 401);
    let (status, login) = server.call("POST", "/api/apikey/login", Some(&alice), "");
    assert_eq!(status, 200);
    assert_eq!(login["org_info"][0]["name"], "alice");
    assert_eq!(login["org_info"][0]["api_url"], server.url());

    // Each org has its own projects, even of the same name.
    let project = create_project(&server, &alice, "shared-name");
    assert_eq!(create_project(&server, &alice, "shared-name"), project);
    let bobs = create_project(&server, &bob, "shared-name");
    assert_ne!(bobs, project);
    assert_eq!(
        server
            .call("GET", &format!("/v1/project/{project}"), Some(&bob), "")
            .0,
        404
    );
    let row = serde_json::json!({"id": "a1", "created": "2026-11-01T00:00:00Z", "input": "hi"});
    let (status, body) = server.call(
        "POST",
        "/logs3",
        Some(&bob),
        &logs3_body(&project, std::slice::from_ref(&row)),
    );
    assert_eq!(status, 404, "{body}");
    let query =
        serde_json::json!({"query": format!("select: id | from: project_logs('{project}')")});
    let (status, body) = server.call("POST", "/btql", Some(&bob), &query.to_string());
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown project"),
        "{body}"
    );

    // Alice's valid row goes in.
    let (status, body) = server.call(
        "POST",
        "/logs3",
        Some(&alice),
        &logs3_body(&project, &[row]),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ids"], serde_json::json!(["a1"]));

    // Malformed JSON: where it breaks.
    let (status, body) = server.call("POST", "/logs3", Some(&alice), "{\"rows\": [\n{\"id\": }]}");
    assert_eq!(status, 400);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("line 2"),
        "{body}"
    );
    // A wrong type in the second row: the whole request is refused, row named.
    let good = serde_json::json!({"id": "a2", "input": "ok"});
    let bad = serde_json::json!({"id": "a3", "scores": {"accuracy": "high"}});
    let (status, body) = server.call(
        "POST",
        "/logs3",
        Some(&alice),
        &logs3_body(&project, &[good, bad]),
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["row"], 1, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scores"),
        "{body}"
    );
    // Too large for --max-body.
    let huge = serde_json::json!({"id": "a4", "input": "x".repeat(100_000)});
    let (status, _, _) = server.raw(
        "POST",
        "/logs3",
        Some(&alice),
        logs3_body(&project, &[huge]).as_bytes(),
    );
    assert_eq!(status, 413);
    // A row of an experiment that does not exist, and an unknown project id.
    let (status, body) = server.call(
        "POST",
        "/logs3",
        Some(&alice),
        r#"{"rows": [{"id": "e1", "experiment_id": "x"}]}"#,
    );
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("unknown experiment `x`"),
        "{body}"
    );
    let (status, _) = server.call(
        "POST",
        "/v1/project_logs/00000000-0000-4000-8000-000000000000/insert",
        Some(&alice),
        r#"{"events": [{"id": "z"}]}"#,
    );
    assert_eq!(status, 404);
    // A bad query: line and column, and a caret.
    let query = serde_json::json!({"query": format!("select: id,\n  scroes | from: project_logs('{project}')")});
    let (status, body) = server.call("POST", "/btql", Some(&alice), &query.to_string());
    assert_eq!(status, 400);
    let detail = &body["error"]["details"][0];
    assert_eq!(
        (detail["line"].as_u64(), detail["column"].as_u64()),
        (Some(2), Some(3)),
        "{body}"
    );
    assert!(
        detail["rendered"].as_str().unwrap().contains("^^^^^^"),
        "{body}"
    );
    assert!(
        detail["help"].as_str().unwrap().contains("scores"),
        "{body}"
    );

    // Only the one valid row was committed.
    let rows = stored(&spanlake, &project);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["id"], "a1");
    // The REST insert of the public API, with an id assigned when missing.
    let (status, body) = server.call(
        "POST",
        &format!("/v1/project_logs/{project}/insert"),
        Some(&alice),
        r#"{"events": [{"id": "b1", "input": 1}, {"input": 2}]}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row_ids"][0], "b1");
    assert_eq!(body["row_ids"].as_array().unwrap().len(), 2);
    // Retried, the row without an id gets the same id: nothing doubles.
    let (status, again) = server.call(
        "POST",
        &format!("/v1/project_logs/{project}/insert"),
        Some(&alice),
        r#"{"events": [{"id": "b1", "input": 1}, {"input": 2}]}"#,
    );
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["row_ids"], body["row_ids"]);
    let (status, body) = server.call(
        "GET",
        &format!("/v1/project_logs/{project}/fetch?limit=10"),
        Some(&alice),
        "",
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 3);
    // Only the rows up to a transaction (compared as numbers).
    let first_xact = stored(&spanlake, &project)
        .iter()
        .map(|r| r["_xact_id"].as_str().unwrap().parse::<u64>().unwrap())
        .min()
        .unwrap()
        .to_string();
    let (status, body) = server.call(
        "POST",
        &format!("/v1/project_logs/{project}/fetch"),
        Some(&alice),
        &serde_json::json!({"max_xact_id": first_xact}).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["events"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["events"][0]["id"], "a1");
}

#[test]
fn replayed_requests_commit_once_and_concurrent_requests_share_commits() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &["--group-commit-linger", "200ms"]);
    let project = create_project(&server, &key, "replays");

    // A replace, then a merge on the same id, then the replace replayed (as
    // the SDK retries): the replay answers the first transaction and does not
    // undo the merge.
    let first = logs3_body(
        &project,
        &[serde_json::json!({"id": "r1", "scores": {"a": 0.5}, "tags": ["one"]})],
    );
    let merge = logs3_body(
        &project,
        &[
            serde_json::json!({"id": "r1", "_is_merge": true, "scores": {"b": 1.0}, "tags": ["two"]}),
        ],
    );
    let (status, one) = server.call("POST", "/logs3", Some(&key), &first);
    assert_eq!(status, 200, "{one}");
    let (status, two) = server.call("POST", "/logs3", Some(&key), &merge);
    assert_eq!(status, 200, "{two}");
    let (status, replay) = server.call("POST", "/logs3", Some(&key), &first);
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["xact_id"], one["xact_id"]);
    let (_, replay_merge) = server.call("POST", "/logs3", Some(&key), &merge);
    assert_eq!(replay_merge["xact_id"], two["xact_id"]);
    let rows = stored(&spanlake, &project);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["scores"], serde_json::json!({"a": 0.5, "b": 1.0}));
    assert_eq!(rows[0]["_xact_id"], two["xact_id"]);
    let commits_before = delta_commits(&spanlake, &project);

    // 16 clients at once, 50 rows each, some sending their body twice.
    let clients = 16;
    let per_client = 50;
    std::thread::scope(|scope| {
        for client in 0..clients {
            let server = &server;
            let key = &key;
            let project = &project;
            scope.spawn(move || {
                let rows: Vec<serde_json::Value> = (0..per_client)
                    .map(|i| serde_json::json!({"id": format!("c{client}-{i}"), "input": i}))
                    .collect();
                let body = logs3_body(project, &rows);
                let sends = if client % 4 == 0 { 2 } else { 1 };
                for _ in 0..sends {
                    let (status, answer) = server.call("POST", "/logs3", Some(key), &body);
                    assert_eq!(status, 200, "{answer}");
                    assert_eq!(answer["ids"].as_array().unwrap().len(), per_client);
                }
            });
        }
    });
    let rows = stored(&spanlake, &project);
    let mut ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 1 + clients * per_client);
    ids.dedup();
    assert_eq!(ids.len(), 1 + clients * per_client, "duplicated ids");
    let commits = delta_commits(&spanlake, &project) - commits_before;
    // 20 requests (16 distinct) within one 200 ms linger: far fewer commits.
    assert!(
        (1..clients).contains(&commits),
        "{commits} commits for {clients} concurrent requests"
    );
    // Another writer (the CLI) commits between two of the server's commits:
    // the server's kept-open table catches up before writing.
    let file = spanlake.write_file("cli.jsonl", r#"{"id": "cli1", "scores": {"a": 0.25}}"#);
    spanlake.ingest(&project, &file);
    let merge = logs3_body(
        &project,
        &[serde_json::json!({"id": "cli1", "_is_merge": true, "scores": {"b": 0.75}})],
    );
    let (status, body) = server.call("POST", "/logs3", Some(&key), &merge);
    assert_eq!(status, 200, "{body}");
    let rows = stored(&spanlake, &project);
    let cli1 = rows.iter().find(|r| r["id"] == "cli1").expect("cli1");
    assert_eq!(cli1["scores"], serde_json::json!({"a": 0.25, "b": 0.75}));
    assert_eq!(rows.len(), 2 + clients * per_client);

    let (status, _, metrics) = server.raw("GET", "/metrics", Some(&key), b"");
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("spanlake_ingest_replays_total 6"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "spanlake_rows_ingested_total {}",
            3 + clients * per_client
        )),
        "{metrics}"
    );
}

/// Delta commits of a project's table.
fn delta_commits(spanlake: &Spanlake, project: &str) -> usize {
    std::fs::read_dir(
        spanlake
            .data_dir()
            .join("projects")
            .join(project)
            .join("logs/_delta_log"),
    )
    .expect("the delta log")
    .filter(|e| {
        e.as_ref().is_ok_and(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.ends_with(".json") && !n.starts_with('_'))
        })
    })
    .count()
}

#[test]
fn a_request_for_two_projects_is_all_or_nothing_and_btql_speaks_jsonl_and_parquet() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &[]);
    let a = create_project(&server, &key, "a");
    let b = create_project(&server, &key, "b");
    let row = |project: &str, id: &str, score: serde_json::Value| serde_json::json!({"id": id, "project_id": project, "log_id": "g", "scores": {"s": score}});
    let mixed =
        serde_json::json!({"rows": [row(&a, "a1", 0.5.into()), row(&b, "b1", "bad".into())]});
    let (status, body) = server.call("POST", "/logs3", Some(&key), &mixed.to_string());
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["row"], 1, "{body}");
    assert!(
        stored(&spanlake, &a).is_empty(),
        "project a got a partial commit"
    );
    let good = serde_json::json!({"rows": [row(&a, "a1", 0.5.into()), row(&b, "b1", 1.into())]});
    let (status, body) = server.call("POST", "/logs3", Some(&key), &good.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (stored(&spanlake, &a).len(), stored(&spanlake, &b).len()),
        (1, 1)
    );

    let query = |fmt: &str| {
        serde_json::json!({"query": format!("select: id, scores | from: project_logs('{a}')"), "fmt": fmt})
            .to_string()
    };
    let (status, headers, body) =
        server.raw("POST", "/btql", Some(&key), query("jsonl").as_bytes());
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v == "application/x-ndjson")
    );
    let line: serde_json::Value = serde_json::from_slice(body.trim_ascii_end()).unwrap();
    assert_eq!(line, serde_json::json!({"id": "a1", "scores": {"s": 0.5}}));
    let (status, _, body) = server.raw("POST", "/btql", Some(&key), query("parquet").as_bytes());
    assert_eq!(status, 200);
    assert!(body.starts_with(b"PAR1") && body.ends_with(b"PAR1"));
    let (status, body) = server.call("POST", "/btql", Some(&key), &query("csv"));
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_replay_after_a_crash_between_commit_and_digest_record_commits_nothing() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let body;
    let first;
    let project;
    {
        let server = Server::start(&spanlake, &[]);
        project = create_project(&server, &key, "crash");
        body = logs3_body(&project, &[serde_json::json!({"id": "x1", "input": 1})]);
        let (status, answer) = server.call("POST", "/logs3", Some(&key), &body);
        assert_eq!(status, 200, "{answer}");
        first = answer["xact_id"].clone();
    }
    // As if the process had died after the Delta commit, before recording
    // the request's digest in the state database.
    let state_db = spanlake.data_dir().join("state.db");
    let forgot = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); n = c.execute('delete from ingest_requests').rowcount; c.commit(); print(n)",
        ])
        .arg(&state_db)
        .output()
        .expect("python3 with sqlite3");
    assert_eq!(
        String::from_utf8_lossy(&forgot.stdout).trim(),
        "1",
        "{forgot:?}"
    );
    let commits = delta_commits(&spanlake, &project);
    let server = Server::start(&spanlake, &[]);
    let (status, answer) = server.call("POST", "/logs3", Some(&key), &body);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["xact_id"], first, "the replay was committed again");
    assert_eq!(delta_commits(&spanlake, &project), commits);
    assert_eq!(stored(&spanlake, &project).len(), 1);
}

#[test]
fn automations_over_rest_create_update_run_reset_and_delete() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let other = api_key(&spanlake, "other");
    let allow = format!("file://{}/", spanlake.root().join("out").display());
    let server = Server::start(&spanlake, &["--allow-export-to", &allow]);
    let project = create_project(&server, &key, "auto");
    let rows: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"id": format!("r{i}"), "created": "2026-11-01T00:00:00Z", "input": i}))
        .collect();
    let (status, body) = server.call("POST", "/logs3", Some(&key), &logs3_body(&project, &rows));
    assert_eq!(status, 200, "{body}");
    let folder = spanlake.root().join("out");
    let create = |name: &str, kind: &str, config: serde_json::Value| {
        serde_json::json!({"project_id": project, "name": name, "kind": kind, "config": config})
            .to_string()
    };
    // A bad config names the field.
    let (status, body) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &create(
            "bad",
            "export",
            serde_json::json!({"data": "spans", "export_path": "s3://b/p", "format": "xml"}),
        ),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("format"),
        "{body}"
    );
    let export = serde_json::json!({
        "data": "spans",
        "export_path": format!("file://{}", folder.display()),
        "format": "jsonl",
        "interval": "1h",
    });
    let (status, automation) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &create("e", "export", export.clone()),
    );
    assert_eq!(status, 200, "{automation}");
    let id = automation["id"].as_str().unwrap().to_string();
    // Another org does not see it.
    let (status, _) = server.call(
        "GET",
        &format!("/v1/project_automation/{id}"),
        Some(&other),
        "",
    );
    assert_eq!(status, 404);
    let (status, list) = server.call("GET", "/v1/project_automation", Some(&other), "");
    assert_eq!(
        (status, list["objects"].as_array().unwrap().len()),
        (200, 0)
    );

    let path = |tail: &str| format!("/v1/project_automation/{id}{tail}");
    let (status, paused) = server.call(
        "PATCH",
        &path(""),
        Some(&key),
        r#"{"status": "paused", "description": "nightly"}"#,
    );
    assert_eq!(status, 200, "{paused}");
    assert_eq!(
        (paused["status"].as_str(), paused["description"].as_str()),
        (Some("paused"), Some("nightly"))
    );
    // The destination is fixed once created; the rest of the config is not.
    let mut moved = export.clone();
    moved["export_path"] = serde_json::json!(format!("file://{}/elsewhere", folder.display()));
    let (status, body) = server.call(
        "PATCH",
        &path(""),
        Some(&key),
        &serde_json::json!({ "config": moved }).to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fixed after creation"),
        "{body}"
    );
    let mut hourly = export.clone();
    hourly["interval"] = serde_json::json!("2h");
    let (status, body) = server.call(
        "PATCH",
        &path(""),
        Some(&key),
        &serde_json::json!({ "config": hourly }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["config"]["export_path"], export["export_path"],
        "{body}"
    );
    let (status, run) = server.call("POST", &path("/run"), Some(&key), "");
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["rows"], 5);
    let (_, status_doc) = server.call("GET", &path("/status"), Some(&key), "");
    assert_eq!(status_doc["totals"]["rows"], 5, "{status_doc}");
    let (_, again) = server.call("POST", &path("/run"), Some(&key), "");
    assert_eq!(again["rows"], 0, "{again}");
    let (status, _) = server.call("POST", &path("/reset"), Some(&key), "");
    assert_eq!(status, 200);
    let (_, after_reset) = server.call("POST", &path("/run"), Some(&key), "");
    assert_eq!(after_reset["rows"], 5, "{after_reset}");
    let (_, history) = server.call("GET", &path("/history?limit=10"), Some(&key), "");
    assert_eq!(history["objects"].as_array().unwrap().len(), 1, "{history}");

    // Export figures in /metrics are the scraping key's org's only.
    let metrics = |key: &str| {
        let (status, _, body) = server.raw("GET", "/metrics", Some(key), b"");
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    assert!(
        metrics(&key).contains("spanlake_export_rows_recorded 5"),
        "{}",
        metrics(&key)
    );
    assert!(
        metrics(&other).contains("spanlake_export_rows_recorded 0"),
        "{}",
        metrics(&other)
    );
    // `limit` is a page size, bounded.
    let (status, body) = server.call(
        "POST",
        "/btql",
        Some(&key),
        &serde_json::json!({"query": format!("select: id | from: project_logs('{project}') | limit: 1000000")})
            .to_string(),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cursor"),
        "{body}"
    );

    // A retention automation: its test is the preview.
    let (status, retention) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &create(
            "old",
            "retention",
            serde_json::json!({"retention_days": 7, "grace": "0s", "interval": "24h"}),
        ),
    );
    assert_eq!(status, 200, "{retention}");
    let rid = retention["id"].as_str().unwrap();
    let (status, preview) = server.call(
        "POST",
        &format!("/v1/project_automation/{rid}/test"),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{preview}");
    assert_eq!(preview["rows"], 5, "{preview}");
    assert_eq!(
        stored(&spanlake, &project).len(),
        5,
        "the preview changed nothing"
    );

    let (status, _) = server.call("DELETE", &path(""), Some(&key), "");
    assert_eq!(status, 200);
    assert_eq!(server.call("GET", &path(""), Some(&key), "").0, 404);
    let (_, list) = server.call(
        "GET",
        &format!("/v1/project_automation?project_id={project}"),
        Some(&key),
        "",
    );
    assert_eq!(list["objects"].as_array().unwrap().len(), 1);
}
