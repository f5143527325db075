//! Experiments and datasets: an `Eval` of the unmodified Braintrust SDK
//! over a dataset it inserted, updated and read back, its results over
//! `/btql` and exported to S3 (read by DuckDB); retention by days of
//! experiments and datasets; bad input naming what is wrong.

use crate::http::{Server, api_key, create_object, create_project, sdk_end_to_end};
use crate::retention::{json_of, parquet_list};
use crate::support::{Spanlake, delta_disk_files, delta_live_files, service_var};

fn strings(value: &serde_json::Value) -> Vec<&str> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn the_braintrust_sdk_runs_an_eval_over_its_dataset_that_btql_and_an_s3_export_return() {
    let Some((spanlake, out)) = sdk_end_to_end("eval-org", "eval-e2e", "eval_e2e.py", &[]) else {
        return;
    };

    // The dataset, read back by a fresh SDK handle: the first record as
    // inserted, the second updated (merged metadata), the third deleted.
    let inserted = strings(&out["inserted_ids"]);
    let records = out["records"].as_array().unwrap();
    assert_eq!(records.len(), 2, "{records:#?}");
    assert_eq!(records[0]["id"], inserted[0]);
    assert_eq!(records[0]["input"], serde_json::json!({"a": 2, "b": 3}));
    assert_eq!(records[0]["expected"], 5);
    assert_eq!(records[0]["tags"], serde_json::json!(["easy"]));
    assert_eq!(records[1]["id"], inserted[1]);
    assert_eq!(records[1]["expected"], 14);
    assert_eq!(
        records[1]["metadata"],
        serde_json::json!({"kind": "add", "reviewed": true})
    );
    assert!(records.iter().all(|r| r["id"] != inserted[2]));
    assert!(records[1]["_xact_id"].as_str().unwrap() > records[0]["_xact_id"].as_str().unwrap());
    assert_eq!(out["dataset_total_records"], 2);
    let listed: Vec<(&str, &serde_json::Value)> = out["btql_records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), &r["expected"]))
        .collect();
    assert_eq!(
        listed,
        [
            (inserted[0], &serde_json::json!(5)),
            (inserted[1], &serde_json::json!(14))
        ]
    );

    // The Eval: the scores the SDK computed for each case itself, averaged
    // here, are what GET /v1/experiment/{id}/summarize answered it.
    let sdk_cases = out["sdk_cases"].as_array().unwrap();
    assert_eq!(sdk_cases.len(), 2);
    for scorer in ["exact", "close"] {
        let mean = sdk_cases
            .iter()
            .map(|c| c["scores"][scorer].as_f64().unwrap())
            .sum::<f64>()
            / 2.0;
        let summarized = out["sdk_scores"][scorer].as_f64().unwrap();
        assert!(
            (mean - summarized).abs() < 1e-9,
            "{scorer}: {mean} vs {summarized}"
        );
    }
    assert_eq!(out["sdk_scores"]["exact"], 0.5);
    assert_eq!(strings(&out["sdk_metrics"]), ["duration"]);
    let experiment_id = out["experiment_id"].as_str().unwrap();
    assert_eq!(out["experiments"][0]["id"], experiment_id);
    assert_eq!(out["experiments"][0]["name"], "adder");

    // /btql, summary shape: one row per case, with the case's scores and
    // the dataset record it came from.
    let cases = out["btql_cases"].as_array().unwrap();
    assert_eq!(cases.len(), 2, "{cases:#?}");
    for (case, sdk) in cases.iter().zip(sdk_cases) {
        assert_eq!(case["input"], sdk["input"]);
        assert_eq!(case["output"], sdk["output"]);
        assert_eq!(case["expected"], sdk["expected"]);
        for scorer in ["exact", "close"] {
            assert_eq!(
                case["scores"][scorer].as_f64(),
                sdk["scores"][scorer].as_f64(),
                "{case}"
            );
        }
        assert_eq!(case["origin"]["object_type"], "dataset");
        assert_eq!(case["origin"]["object_id"], out["dataset_id"]);
    }
    // SQL, spans shape: per case an eval span, a task span and one span
    // per scorer.
    let mut types: Vec<&str> = out["btql_spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["type"].as_str().unwrap())
        .collect();
    types.sort_unstable();
    assert_eq!(
        types,
        [
            "eval", "eval", "score", "score", "score", "score", "task", "task"
        ]
    );
    // The JSON AST, traces shape: every span of the one case `exact`
    // missed.
    let missed = out["btql_missed"].as_array().unwrap();
    assert_eq!(missed.len(), 4, "{missed:#?}");
    assert!(
        missed
            .iter()
            .all(|s| s["root_span_id"] == missed[0]["root_span_id"])
    );
    assert!(
        missed
            .iter()
            .any(|s| s["span_attributes"]["type"] == "eval" && s["expected"] == 14)
    );

    // The export of the experiment: every span once, read back by DuckDB,
    // the scorers' averages those of the SDK.
    assert_eq!(out["run"]["status"], "succeeded", "{}", out["run"]);
    assert_eq!(out["run"]["rows"], 8);
    assert_eq!(out["manifest_rows"], 8);
    assert_eq!(out["exported_rows"], 8);
    assert_eq!(out["exported_distinct_ids"], 8);
    assert_eq!(out["exported_scorer_averages"], out["sdk_scores"]);

    // The CLI, over the store itself.
    let listed = json_of(
        &spanlake
            .run(["experiment", "list", "-p", "eval-e2e", "--format", "json"])
            .ok(),
    );
    assert_eq!(listed[0]["id"], experiment_id);
    assert_eq!(listed[0]["rows"], 8);
    assert_eq!(listed[0]["cases"], 2);
    assert_eq!(listed[0]["scores"]["exact"]["score"], 0.5);
    let shown = json_of(
        &spanlake
            .run([
                "dataset",
                "show",
                "arithmetic",
                "-p",
                "eval-e2e",
                "--format",
                "json",
            ])
            .ok(),
    );
    assert_eq!(shown["id"], out["dataset_id"]);
    assert_eq!(shown["rows"], 2);
    let text = spanlake
        .run(["experiment", "show", experiment_id])
        .ok()
        .stdout;
    assert!(text.contains("score    exact"), "{text}");
}

/// `/logs3` rows of `object` (`experiment_id` or `dataset_id`), each
/// `(id, days ago)`.
fn rows_of(
    field: &str,
    object: &str,
    rows: &[(&str, i64)],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|(id, days)| {
            let created = now - chrono::Duration::days(*days);
            serde_json::json!({
                "id": id,
                field: object,
                "created": created.to_rfc3339(),
                "input": {"n": id},
                "scores": {"s": 0.5},
            })
        })
        .collect()
}

/// Create a retention of rows over 30 days old of every `object_type` of
/// project `keep-new` (grace 0s), preview it, run it: the preview and the
/// report.
fn retention_30_days(
    spanlake: &Spanlake,
    object_type: &str,
) -> (serde_json::Value, serde_json::Value) {
    let args = [
        "-p",
        "keep-new",
        "--days",
        "30",
        "--object-type",
        object_type,
        "--grace",
        "0s",
    ];
    spanlake
        .run(["automation", "create-retention"].iter().chain(&args))
        .ok();
    let name = format!("retention-{object_type}-30d");
    let preview = json_of(
        &spanlake
            .run(["automation", "test", &name, "-p", "keep-new"])
            .ok(),
    );
    let report = json_of(
        &spanlake
            .run(["automation", "run", &name, "-p", "keep-new"])
            .ok(),
    );
    (preview, report)
}

#[test]
fn retention_of_experiments_and_datasets_older_than_n_days_leaves_exactly_the_newer_rows() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "keep");
    let now = chrono::Utc::now();
    let (experiments, dataset) = {
        let server = Server::start(&spanlake, &[]);
        let project = create_project(&server, &key, "keep-new");
        let create = |kind: &str, name: &str| create_object(&server, &key, kind, &project, name);
        let experiments = [
            create("experiment", "old"),
            create("experiment", "mixed"),
            create("experiment", "new"),
        ];
        let dataset = create("dataset", "records");
        let mut rows = Vec::new();
        rows.extend(rows_of(
            "experiment_id",
            &experiments[0],
            &[("o1", 60), ("o2", 59), ("o3", 45), ("o4", 31)],
            now,
        ));
        rows.extend(rows_of(
            "experiment_id",
            &experiments[1],
            &[("m1", 50), ("m2", 40), ("m3", 35), ("m4", 3), ("m5", 1)],
            now,
        ));
        rows.extend(rows_of(
            "experiment_id",
            &experiments[2],
            &[("n1", 2), ("n2", 1), ("n3", 0)],
            now,
        ));
        rows.extend(rows_of(
            "dataset_id",
            &dataset,
            &[("d1", 40), ("d2", 33), ("d3", 2), ("d4", 1), ("d5", 0)],
            now,
        ));
        // Project logs, old too: an experiment's retention leaves them.
        rows.extend(rows_of(
            "project_id",
            &project,
            &[("l1", 90), ("l2", 80)],
            now,
        ));
        let body = serde_json::json!({"rows": rows, "api_version": 2}).to_string();
        let (status, answer) = server.call("POST", "/logs3", Some(&key), &body);
        assert_eq!(status, 200, "{answer}");
        // A later merge onto an old row: it keeps the row's `created`, so
        // both versions go.
        let merge = serde_json::json!({"rows": [{"id": "m1", "experiment_id": experiments[1], "_is_merge": true, "scores": {"late": 1}}]});
        let (status, answer) = server.call("POST", "/logs3", Some(&key), &merge.to_string());
        assert_eq!(status, 200, "{answer}");
        (experiments, dataset)
    };
    let count = |source: &str| {
        spanlake
            .query_jsonl(&format!("select: id | from: {source}"))
            .ok()
            .jsonl()
            .len()
    };
    assert_eq!(count(&format!("experiment('{}')", experiments[1])), 5);

    let (preview, report) = retention_30_days(&spanlake, "experiment");
    // 4 old rows, 3 old rows of `mixed` and the merge's second version.
    assert_eq!(preview["rows"], 8, "{preview}");
    assert_eq!(report["rows"], 8, "{report}");
    assert_eq!(report["rows_deleted"], 8, "{report}");
    assert_eq!(report["tables"], 3, "{report}");
    assert!(report["files_purged"].as_u64().unwrap() > 0, "{report}");

    // Through spanlake: each experiment keeps exactly its newer rows; the
    // dataset and the project's logs are untouched.
    let left: Vec<usize> = experiments
        .iter()
        .map(|e| count(&format!("experiment('{e}')")))
        .collect();
    assert_eq!(left, [0, 2, 3]);
    assert_eq!(count(&format!("dataset('{dataset}')")), 5);
    assert_eq!(count("project_logs('keep-new')"), 2);
    let listed = json_of(
        &spanlake
            .run(["experiment", "list", "-p", "keep-new", "--format", "json"])
            .ok(),
    );
    let rows: Vec<u64> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["rows"].as_u64().unwrap())
        .collect();
    assert_eq!(rows, [0, 2, 3]);

    // Independently: DuckDB over the data files each table's Delta log
    // references, which are exactly the files on disk (grace 0s: purged).
    let cutoff = chrono::DateTime::parse_from_rfc3339(report["cutoff"].as_str().unwrap()).unwrap();
    let mut files_left = 0;
    for (experiment, ids) in
        experiments
            .iter()
            .zip([vec![], vec!["m4", "m5"], vec!["n1", "n2", "n3"]])
    {
        let table = spanlake
            .data_dir()
            .join("experiments")
            .join(experiment)
            .join("logs");
        let live = delta_live_files(&table);
        assert_eq!(
            delta_disk_files(&table),
            live,
            "{experiment}: vacuum left only live files"
        );
        files_left += live.len();
        if live.is_empty() {
            assert!(ids.is_empty());
            continue;
        }
        if let Some(python) = service_var("SPANLAKE_DUCKDB_PYTHON") {
            let sql = format!(
                "select list(id order by id), count(*) filter (where created < '{}'::timestamptz) from {}",
                cutoff.to_rfc3339(),
                parquet_list(&table, &live)
            );
            assert_eq!(
                crate::support::duckdb_rows(&python, &sql),
                serde_json::json!([[ids, 0]]),
                "{experiment}"
            );
        }
    }
    assert!(files_left > 0);

    // The datasets' retention, the same way.
    let (_, report) = retention_30_days(&spanlake, "dataset");
    assert_eq!(report["rows_deleted"], 2, "{report}");
    assert_eq!(count(&format!("dataset('{dataset}')")), 3);
    assert_eq!(count("project_logs('keep-new')"), 2);
}

#[test]
fn bad_experiment_and_dataset_input_says_what_where_and_what_to_do() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "bad");
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "bad-input");
    let experiment = create_object(&server, &key, "experiment", &project, "e");

    let error_of = |method: &str, path: &str, body: serde_json::Value| {
        let (status, answer) = server.call(method, path, Some(&key), &body.to_string());
        (
            status,
            answer["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let (status, message) = error_of("POST", "/v1/experiment", serde_json::json!({"name": "x"}));
    assert_eq!(status, 400);
    assert!(message.contains("missing `project_id`"), "{message}");
    let (status, message) = error_of(
        "POST",
        "/v1/dataset",
        serde_json::json!({"project_id": project, "name": " "}),
    );
    assert_eq!(status, 400);
    assert!(message.contains("name: cannot be empty"), "{message}");
    let row = |fields: serde_json::Value| serde_json::json!({"rows": [fields]});
    let (status, message) = error_of(
        "POST",
        "/logs3",
        row(serde_json::json!({"id": "a", "project_id": project, "experiment_id": experiment})),
    );
    assert_eq!(status, 400);
    assert!(
        message.contains("rows[0] names `project_id` and `experiment_id`"),
        "{message}"
    );
    let unknown = "00000000-0000-4000-8000-000000000001";
    let (status, message) = error_of(
        "POST",
        "/logs3",
        row(serde_json::json!({"id": "a", "dataset_id": unknown})),
    );
    assert_eq!(status, 404);
    assert!(
        message.contains(&format!("unknown dataset `{unknown}`"))
            && message.contains("POST /v1/dataset"),
        "{message}"
    );
    let (status, message) = error_of("POST", "/logs3", row(serde_json::json!({"id": "a"})));
    assert_eq!(status, 400);
    assert!(message.contains("rows[0] names no object"), "{message}");
    // An experiment's id is not a dataset's, in a query either.
    let (status, message) = error_of(
        "POST",
        "/btql",
        serde_json::json!({"query": format!("select: id | from: dataset('{experiment}')")}),
    );
    assert_eq!(status, 400);
    assert!(
        message.contains(&format!("unknown dataset `{experiment}`")),
        "{message}"
    );
    let (status, message) = error_of(
        "POST",
        &format!("/v1/dataset/{experiment}/fetch"),
        serde_json::json!({"limit": 10}),
    );
    assert_eq!(status, 404, "{message}");
    // An export of an experiment needs its id, and an existing one.
    let export = |config: serde_json::Value| {
        error_of(
            "POST",
            "/v1/project_automation",
            serde_json::json!({"project_id": project, "name": "x", "kind": "export", "config": config}),
        )
    };
    let (status, message) = export(
        serde_json::json!({"object_type": "experiment", "data": "spans", "export_path": "s3://b/p"}),
    );
    assert_eq!(status, 400);
    assert!(
        message.contains("object_id: an export of `experiment` needs the id"),
        "{message}"
    );
    let (status, message) = export(
        serde_json::json!({"object_type": "experiments", "data": "spans", "export_path": "s3://b/p"}),
    );
    assert_eq!(status, 400);
    assert!(
        message.contains(
            "object_type: `experiments` is not one of `project_logs`, `experiment`, `dataset`"
        ),
        "{message}"
    );
    let (status, message) = export(
        serde_json::json!({"object_type": "experiment", "object_id": unknown, "data": "spans", "export_path": "s3://b/p"}),
    );
    assert_eq!(status, 404);
    assert!(
        message.contains(&format!("unknown experiment `{unknown}`")),
        "{message}"
    );
    drop(server);

    // The CLI: a retention of an unknown object type, exit 2 with the key.
    let run = spanlake
        .run([
            "automation",
            "create-retention",
            "-p",
            "bad-input",
            "--days",
            "3",
            "--object-type",
            "prompt",
        ])
        .expect_code(2);
    assert!(
        run.stderr.contains("object_type: `prompt` is not one of"),
        "{}",
        run.stderr
    );
    let run = spanlake.run(["experiment", "show", "nope"]).expect_code(2);
    assert!(
        run.stderr.contains("no experiment has the id `nope`"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_experiments_row_versions_compact_into_one_each_and_read_the_same() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "fold");
    let now = chrono::Utc::now();
    let experiment = {
        let server = Server::start(&spanlake, &[]);
        let project = create_project(&server, &key, "fold");
        let experiment = create_object(&server, &key, "experiment", &project, "e");
        let cases = [("c1", 0), ("c2", 0), ("c3", 0), ("c4", 0), ("c5", 0)];
        let body = serde_json::json!({"rows": rows_of("experiment_id", &experiment, &cases, now)});
        assert_eq!(
            server
                .call("POST", "/logs3", Some(&key), &body.to_string())
                .0,
            200
        );
        // Later scores of three cases, in a request of their own: merges.
        let merges: Vec<serde_json::Value> = ["c1", "c3", "c5"]
            .iter()
            .map(|id| serde_json::json!({"id": id, "experiment_id": experiment, "_is_merge": true, "scores": {"late": 1}}))
            .collect();
        let body = serde_json::json!({ "rows": merges });
        assert_eq!(
            server
                .call("POST", "/logs3", Some(&key), &body.to_string())
                .0,
            200
        );
        experiment
    };
    let read = || {
        spanlake
            .query_jsonl(&format!(
                "select: * | from: experiment('{experiment}') | sort: id"
            ))
            .ok()
            .stdout
    };
    let before = read();
    assert_eq!(before.lines().count(), 5);
    assert_eq!(
        before.matches("\"late\":1").count() + before.matches("\"late\": 1").count(),
        3,
        "{before}"
    );
    let report = json_of(
        &spanlake
            .run([
                "store",
                "compact",
                "-p",
                "fold",
                "--experiment",
                &experiment,
            ])
            .ok(),
    );
    assert_eq!(report["ids_folded"], 3, "{report}");
    assert_eq!(report["rows_in"], 8, "{report}");
    assert_eq!(report["rows_out"], 5, "{report}");
    // Byte for byte the same rows, `_xact_id` and `_pagination_key` included.
    assert_eq!(read(), before);
    // The project's logs are another table: nothing to compact there.
    let logs = json_of(&spanlake.run(["store", "compact", "-p", "fold"]).ok());
    assert_eq!(logs["ids_folded"], 0, "{logs}");
}

#[test]
fn another_orgs_experiments_and_datasets_are_unknown_on_every_route() {
    let spanlake = Spanlake::new();
    let alice = api_key(&spanlake, "alice");
    let bob = api_key(&spanlake, "bob");
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &alice, "alice-evals");
    let experiment = create_object(&server, &alice, "experiment", &project, "e");
    let dataset = create_object(&server, &alice, "dataset", &project, "d");
    let rows = serde_json::json!({"rows": [
        {"id": "r1", "experiment_id": experiment, "input": 1},
        {"id": "r2", "dataset_id": dataset, "input": 2},
    ]});
    assert_eq!(
        server
            .call("POST", "/logs3", Some(&alice), &rows.to_string())
            .0,
        200
    );
    let unknown = "00000000-0000-4000-8000-00000000abcd";
    for (kind, id) in [("experiment", &experiment), ("dataset", &dataset)] {
        // Alice sees it; Bob gets what an id nobody has gets.
        for path in [
            format!("/v1/{kind}/{id}"),
            format!("/v1/{kind}/{id}/summarize"),
            format!("/v1/{kind}/{id}/fetch"),
        ] {
            assert_eq!(server.call("GET", &path, Some(&alice), "").0, 200, "{path}");
            let (status, foreign) = server.call("GET", &path, Some(&bob), "");
            let (_, nobody) =
                server.call("GET", &path.replace(id.as_str(), unknown), Some(&bob), "");
            assert_eq!(status, 404, "{path}: {foreign}");
            assert_eq!(
                foreign["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(id.as_str(), unknown),
                nobody["error"]["message"].as_str().unwrap(),
                "{path}"
            );
        }
        let row = serde_json::json!({"rows": [{"id": "x", format!("{kind}_id"): id}]});
        assert_eq!(
            server
                .call("POST", "/logs3", Some(&bob), &row.to_string())
                .0,
            404
        );
        let query = serde_json::json!({"query": format!("select: id | from: {kind}('{id}')")});
        let (status, answer) = server.call("POST", "/btql", Some(&bob), &query.to_string());
        assert_eq!(status, 400);
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("unknown {kind}")),
            "{answer}"
        );
        let (status, listed) = server.call(
            "GET",
            &format!("/v1/{kind}?project_id={project}"),
            Some(&bob),
            "",
        );
        assert_eq!(status, 404, "{listed}");
        let create = serde_json::json!({"project_id": project, "name": "mine"});
        assert_eq!(
            server
                .call(
                    "POST",
                    &format!("/v1/{kind}"),
                    Some(&bob),
                    &create.to_string()
                )
                .0,
            404
        );
    }
    // Nothing of Bob's got in: Alice's objects hold their one row each.
    let (_, fetched) = server.call(
        "POST",
        &format!("/v1/experiment/{experiment}/fetch"),
        Some(&alice),
        "{}",
    );
    assert_eq!(fetched["events"].as_array().unwrap().len(), 1, "{fetched}");
    let (_, listed) = server.call(
        "GET",
        &format!("/v1/experiment?project_id={project}"),
        Some(&alice),
        "",
    );
    assert_eq!(listed["objects"].as_array().unwrap().len(), 1, "{listed}");
}

/// An export's cursor is an `_xact_id` of the table it reads: an update
/// cannot move it to another experiment, nor (leaving `object_type` and
/// `object_id` out, as a form rebuilding its config would) to the
/// project's logs; it commits nothing then. An edit that keeps the object
/// (in any UUID spelling) keeps it an experiment export.
#[test]
fn an_exports_experiment_is_fixed_after_creation() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "fixed");
    let allow = format!("file://{}/", spanlake.root().join("out").display());
    let server = Server::start(&spanlake, &["--allow-export-to", &allow]);
    let project = create_project(&server, &key, "fixed");
    let first = create_object(&server, &key, "experiment", &project, "e1");
    let second = create_object(&server, &key, "experiment", &project, "e2");
    let config = |object: Option<&str>, interval: &str| {
        let mut config = serde_json::json!({
            "data": "spans",
            "export_path": format!("{allow}e"),
            "interval": interval,
        });
        if let Some(object) = object {
            config["object_type"] = "experiment".into();
            config["object_id"] = object.into();
        }
        config
    };
    let (status, automation) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &serde_json::json!({"project_id": project, "name": "e", "kind": "export", "config": config(Some(&first), "1h")})
            .to_string(),
    );
    assert_eq!(status, 200, "{automation}");
    let path = format!(
        "/v1/project_automation/{}",
        automation["id"].as_str().unwrap()
    );
    let patch = |config: serde_json::Value| {
        server.call(
            "PATCH",
            &path,
            Some(&key),
            &serde_json::json!({"config": config, "status": "paused", "description": "changed"})
                .to_string(),
        )
    };
    let (status, body) = patch(config(Some(&second), "1h"));
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "`config.object_id` is fixed after creation (it is `{first}`)"
        )) && message.contains("create another export"),
        "{message}"
    );
    let (status, body) = patch(config(None, "2h"));
    assert_eq!(status, 400, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`config.object_type` is fixed after creation (it is `experiment`)"),
        "{message}"
    );
    // Nothing of either changed.
    let (_, stored) = server.call("GET", &path, Some(&key), "");
    assert_eq!(
        (
            stored["config"]["object_id"].as_str(),
            stored["config"]["interval"].as_str(),
            stored["status"].as_str(),
            stored["description"].as_str()
        ),
        (Some(first.as_str()), Some("1h"), Some("active"), Some("")),
        "{stored}"
    );
    // An edit of its interval, the id in capitals: still this experiment's export.
    let (status, body) = patch(config(Some(&first.to_uppercase()), "2h"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (
            body["config"]["object_type"].as_str(),
            body["config"]["object_id"].as_str(),
            body["config"]["interval"].as_str()
        ),
        (Some("experiment"), Some(first.as_str()), Some("2h")),
        "{body}"
    );
}

/// The REST insert of a project's logs is as before experiments: its route
/// names the table, so the SDK's object checks of `/logs3` do not apply
/// (a row naming `prompt_session_id`, `experiment_id` besides `project_id`,
/// or a non-string `experiment_id` is a log row with those fields); a
/// non-string `project_id` is refused, as it always was.
#[test]
fn the_rest_insert_of_project_logs_keeps_rows_naming_other_objects() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "insert");
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "insert");
    let path = format!("/v1/project_logs/{project}/insert");
    let events = serde_json::json!({"events": [
        {"id": "p1", "prompt_session_id": "s", "input": 1},
        {"id": "p2", "project_id": project, "experiment_id": "00000000-0000-4000-8000-000000000001", "input": 2},
        {"id": "p3", "experiment_id": 7, "dataset_id": "d", "input": 3},
    ]});
    let (status, body) = server.call("POST", &path, Some(&key), &events.to_string());
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["row_ids"], serde_json::json!(["p1", "p2", "p3"]));
    let (status, body) = server.call(
        "GET",
        &format!("/v1/project_logs/{project}/fetch?limit=10"),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{body}");
    let mut ids: Vec<&str> = body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["p1", "p2", "p3"], "{body}");
    let (status, body) = server.call(
        "POST",
        &path,
        Some(&key),
        r#"{"events": [{"id": "q", "project_id": 1}]}"#,
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rows[0]: `project_id` must be a string"),
        "{body}"
    );
}
