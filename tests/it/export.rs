//! Export automations end to end through the CLI, with the files read back
//! by an independent reader (DuckDB, `$SPANLAKE_DUCKDB_PYTHON`) and, for S3,
//! a real S3-compatible server (`$SPANLAKE_S3_ENDPOINT`, moto). Both are
//! started by `scripts/test`; without them these tests skip with a notice,
//! unless `SPANLAKE_REQUIRE_SERVICES` is set, when they fail.

use std::path::Path;
use std::process::Command;

use crate::support::{
    Spanlake, create_bucket, duckdb_rows as duckdb, fixtures_dir, service_var as service,
};

/// The manifests under `folder`, in name (run) order.
pub(crate) fn manifests(folder: &Path) -> Vec<serde_json::Value> {
    let dir = folder.join("_manifests");
    let mut found: Vec<_> = std::fs::read_dir(&dir)
        .map(|entries| entries.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.sort();
    found
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn spans_export_is_incremental_and_duckdb_reads_exactly_the_manifest_rows() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("exports");
    spanlake.create_export("spans", "spans", out.to_str().unwrap(), &[]);
    spanlake
        .run(["automation", "run", "spans", "--project", "p"])
        .ok();

    let first = manifests(&out);
    assert_eq!(first.len(), 1, "one committed run");
    assert_eq!(first[0]["rows"], 13, "every span of the fixture");
    assert_eq!(first[0]["schema_version"], 1);
    let file_rows: u64 = first[0]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(file_rows, 13);
    // Day partitions of `created` (UTC): the fixture spans 2024-11-09 and 2024-11-10.
    assert!(
        out.join("date=2024-11-09").is_dir(),
        "{:?}",
        std::fs::read_dir(&out).unwrap().collect::<Vec<_>>()
    );

    // Nothing new: no second manifest.
    spanlake
        .run(["automation", "run", "spans", "--project", "p"])
        .ok();
    assert_eq!(manifests(&out).len(), 1);

    // An update of an exported span is exported again with its new state.
    let update = spanlake.write_file(
        "update.jsonl",
        r#"{"id":"t1","_is_merge":true,"output":"Rainy, 12°C","metadata":{"reviewed":true}}"#,
    );
    spanlake.ingest("p", &update);
    spanlake
        .run(["automation", "run", "spans", "--project", "p"])
        .ok();
    let all = manifests(&out);
    assert_eq!(all.len(), 2);
    let second = all
        .iter()
        .find(|m| m["run_id"] != first[0]["run_id"])
        .unwrap();
    assert_eq!(second["rows"], 1);
    assert_eq!(second["cursor_from"], first[0]["cursor_to"]);

    let history = spanlake
        .run(["automation", "history", "spans", "--project", "p", "--json"])
        .ok();
    let runs: serde_json::Value = serde_json::from_str(&history.stdout).unwrap();
    assert_eq!(runs.as_array().unwrap().len(), 2);

    let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let glob = format!("{}/*/*.parquet", out.display());
    let counts = duckdb(
        &python,
        &format!(
            "select count(*), count(distinct id) from read_parquet('{glob}', hive_partitioning = true)"
        ),
    );
    assert_eq!(counts, serde_json::json!([[14, 13]]), "13 spans, t1 twice");
    // A consumer keeps, per id, the row with the largest _xact_id: t1 has its new output.
    let latest = duckdb(
        &python,
        &format!(
            "select output, json_extract_string(metadata, '$.reviewed') from read_parquet('{glob}') \
             where id = 't1' order by _xact_id desc limit 1"
        ),
    );
    assert_eq!(latest, serde_json::json!([["\"Rainy, 12°C\"", "true"]]));
    let types = duckdb(
        &python,
        &format!(
            "select name, logical_type from parquet_schema('{glob}') where name in ('metadata', 'created') order by name"
        ),
    );
    let text = types.to_string();
    assert!(
        text.contains("JsonType") && text.contains("isAdjustedToUTC=1"),
        "{text}"
    );
}

#[test]
fn one_shot_export_of_a_query_as_jsonl() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("llm");
    spanlake
        .run([
            "export",
            "select: id, metadata.model as model, created | from: project_logs('p') | filter: span_attributes.type = 'llm'",
            "--to",
            out.to_str().unwrap(),
            "--format",
            "jsonl",
            "--partitioning",
            "none",
        ])
        .ok();
    let manifest = &manifests(&out)[0];
    let files = manifest["files"].as_array().unwrap();
    let mut lines = 0;
    for file in files {
        let name = Path::new(file["key"].as_str().unwrap())
            .file_name()
            .unwrap()
            .to_owned();
        let text = std::fs::read_to_string(out.join(name)).unwrap();
        for line in text.lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(row["model"].is_string() || row["model"].is_null(), "{row}");
            lines += 1;
        }
    }
    assert_eq!(manifest["rows"].as_u64().unwrap(), lines);
    if let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") {
        let glob = format!("{}/*.jsonl", out.display());
        let counted = duckdb(
            &python,
            &format!("select count(*) from read_json_auto('{glob}')"),
        );
        assert_eq!(
            counted,
            serde_json::json!([[lines]]),
            "DuckDB reads the query export"
        );
    }
    assert!(lines > 0);

    // A bad query is refused before anything is written, with a caret.
    let bad = spanlake.run([
        "export",
        "select: id | from: project_logs('p') | filter: nme = 1",
        "--to",
        out.to_str().unwrap(),
    ]);
    assert_eq!(bad.code, 1, "{}", bad.stderr);
    assert!(bad.stderr.contains("^^^"), "{}", bad.stderr);
}

#[test]
fn spans_export_to_s3_and_its_test() {
    let Some(endpoint) = service("SPANLAKE_S3_ENDPOINT") else {
        return;
    };
    let bucket = format!("it-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let url = format!("s3://{bucket}/logs/spans");
    spanlake.create_export(
        "s3",
        "spans",
        &url,
        &[
            "--format",
            "jsonl",
            "--compression",
            "gzip",
            "--endpoint",
            &endpoint,
        ],
    );
    let test = spanlake
        .run(["automation", "test", "s3", "--project", "p"])
        .ok();
    assert_eq!(test.stdout.matches("ok ").count(), 4, "{}", test.stdout);
    let run = spanlake
        .run(["automation", "run", "s3", "--project", "p", "--json"])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["rows"], 13);
    // Day partitions of the UTC `created`, gzip JSON Lines.
    let manifest_key = report["manifest"].as_str().unwrap();
    assert!(
        manifest_key.starts_with("logs/spans/_manifests/"),
        "{manifest_key}"
    );
    let listing = spanlake.run(["automation", "show", "s3", "-p", "p"]).ok();
    assert!(listing.stdout.contains("gzip"), "{}", listing.stdout);
    assert!(
        report["manifest"]
            .as_str()
            .unwrap()
            .contains("logs/spans/_manifests/")
    );

    // A missing bucket: `test` names the failing step and the fix.
    spanlake.create_export(
        "nobucket",
        "spans",
        "s3://no-such-bucket-spanlake/x",
        &["--endpoint", &endpoint],
    );
    let failed = spanlake.run(["automation", "test", "nobucket", "--project", "p"]);
    assert_eq!(failed.code, 2, "{}{}", failed.stdout, failed.stderr);
    assert!(failed.stdout.contains("FAIL write"), "{}", failed.stdout);
    assert!(failed.stdout.contains("bucket"), "{}", failed.stdout);
}

#[test]
fn serve_runs_due_exports_and_stops_cleanly_on_sigterm() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("served");
    spanlake.create_export(
        "hourly",
        "spans",
        out.to_str().unwrap(),
        &["--interval", "1h"],
    );
    // One pass: the never-run export is due.
    spanlake.run(["serve", "--once"]).ok();
    assert_eq!(manifests(&out).len(), 1);
    // Not due again within its interval.
    spanlake.run(["serve", "--once"]).ok();
    assert_eq!(manifests(&out).len(), 1);

    // A paused export is not run; a resumed one is (after a reset it is due again).
    spanlake
        .run(["automation", "pause", "hourly", "-p", "p"])
        .ok();
    spanlake
        .run(["automation", "reset", "hourly", "-p", "p"])
        .ok();
    spanlake.run(["serve", "--once"]).ok();
    assert_eq!(manifests(&out).len(), 1);
    spanlake
        .run(["automation", "resume", "hourly", "-p", "p"])
        .ok();

    // The long-running form exports, then exits 0 on SIGTERM.
    let mut child = spanlake
        .command(["serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while manifests(&out).len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not export in time"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "serve did not stop on SIGTERM"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // Both manifests together hold every span exactly twice (a reset exports again).
    let rows: u64 = manifests(&out)
        .iter()
        .map(|m| m["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 26);
}

/// Every data file under `folder` (recursively), as paths relative to it.
fn data_files(folder: &Path) -> std::collections::BTreeSet<String> {
    let mut found = std::collections::BTreeSet::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if !path.ends_with("_manifests") {
                    stack.push(path);
                }
            } else {
                found.insert(path.strip_prefix(folder).unwrap().display().to_string());
            }
        }
    }
    found
}

/// The data files the committed manifests name, relative to `folder`.
fn committed_files(folder: &Path) -> std::collections::BTreeSet<String> {
    manifests(folder)
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap().clone())
        .map(|f| {
            let key = f["key"].as_str().unwrap().to_owned();
            let marker = format!("{}/", folder.file_name().unwrap().to_str().unwrap());
            key.split_once(&marker).unwrap().1.to_owned()
        })
        .collect()
}

#[test]
fn a_run_killed_before_or_after_its_manifest_is_recovered_exactly_once() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("crash");
    spanlake.create_export("c", "spans", out.to_str().unwrap(), &["--format", "jsonl"]);
    let run_killed_at = |point: &str| {
        let status = spanlake
            .command(["automation", "run", "c", "-p", "p"])
            .env("SPANLAKE_TEST_KILL_AT", point)
            .status()
            .unwrap();
        assert!(!status.success(), "the run was killed at {point}");
    };

    // Killed mid-upload (one data file complete, the others not yet), then
    // after all its data files but before the manifest: orphans, no commit.
    run_killed_at("mid_upload");
    assert!(manifests(&out).is_empty());
    assert_eq!(
        data_files(&out).len(),
        1,
        "one file was complete when it died"
    );
    run_killed_at("after_files");
    assert!(manifests(&out).is_empty());
    assert!(!data_files(&out).is_empty(), "the killed run left files");
    // The next run deletes them and exports everything under new names.
    spanlake.run(["automation", "run", "c", "-p", "p"]).ok();
    assert_eq!(manifests(&out).len(), 1);
    assert_eq!(manifests(&out)[0]["rows"], 13);
    assert_eq!(
        data_files(&out),
        committed_files(&out),
        "no orphan file remains"
    );

    // Killed after the manifest, before the cursor moved.
    let update = spanlake.write_file("u.jsonl", r#"{"id":"t2","_is_merge":true,"output":"late"}"#);
    spanlake.ingest("p", &update);
    run_killed_at("after_manifest");
    assert_eq!(manifests(&out).len(), 2);
    // The next run commits that manifest's cursor instead of exporting again.
    let run = spanlake.run(["automation", "run", "c", "-p", "p"]).ok();
    assert!(
        run.stderr.contains("its cursor is now committed"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("nothing new to export"),
        "{}",
        run.stderr
    );
    assert_eq!(manifests(&out).len(), 2);
    assert_eq!(data_files(&out), committed_files(&out));

    // Across committed manifests every row appears once per change: 13 + 1.
    let mut ids = Vec::new();
    for file in committed_files(&out) {
        for line in std::fs::read_to_string(out.join(&file)).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            ids.push(row["id"].as_str().unwrap().to_owned());
        }
    }
    ids.sort();
    assert_eq!(ids.len(), 14);
    assert_eq!(ids.iter().filter(|id| *id == "t2").count(), 2);
    ids.dedup();
    assert_eq!(ids.len(), 13);
}

#[test]
fn traces_export_writes_one_summary_row_per_trace_and_again_when_a_span_changes() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let traces = spanlake
        .query_jsonl("select: root_span_id | from: project_logs('p') summary")
        .ok()
        .jsonl()
        .len();
    assert!(traces > 1);
    let out = spanlake.root().join("traces");
    spanlake.create_export(
        "t",
        "traces",
        out.to_str().unwrap(),
        &["--format", "jsonl", "--partitioning", "none"],
    );
    spanlake.run(["automation", "run", "t", "-p", "p"]).ok();
    assert_eq!(manifests(&out)[0]["rows"].as_u64().unwrap(), traces as u64);

    // A child span of t1 changes: the whole trace t1 is exported again.
    let update = spanlake.write_file(
        "u.jsonl",
        r#"{"id":"t1-llm","_is_merge":true,"metrics":{"prompt_tokens":1}}"#,
    );
    spanlake.ingest("p", &update);
    spanlake.run(["automation", "run", "t", "-p", "p"]).ok();
    let all = manifests(&out);
    assert_eq!(all.len(), 2);
    let second = all.iter().find(|m| m["rows"] == 1).expect("one trace row");
    let key = second["files"][0]["key"].as_str().unwrap();
    let name = Path::new(key).file_name().unwrap();
    let row: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(out.join(name)).unwrap().trim()).unwrap();
    assert_eq!(row["root_span_id"], "t1");
    assert!(row["metrics"]["llm_calls"].as_u64().is_some(), "{row}");
    if let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") {
        let glob = format!("{}/*.jsonl", out.display());
        let counted = duckdb(
            &python,
            &format!("select count(*), count(distinct root_span_id) from read_json_auto('{glob}')"),
        );
        let manifest_rows: u64 = all.iter().map(|m| m["rows"].as_u64().unwrap()).sum();
        assert_eq!(
            counted,
            serde_json::json!([[manifest_rows, traces]]),
            "DuckDB reads every trace row of the manifests"
        );
    }
}

#[test]
fn traces_export_with_trace_idle_waits_until_traces_are_idle() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("idle");
    spanlake.create_export(
        "idle",
        "traces",
        out.to_str().unwrap(),
        &[
            "--format",
            "jsonl",
            "--partitioning",
            "none",
            "--trace-idle",
            "3s",
        ],
    );
    let rows = |out: &Path| -> u64 {
        manifests(out)
            .iter()
            .map(|m| m["rows"].as_u64().unwrap())
            .sum()
    };
    // Just ingested: not idle yet, nothing goes out.
    let run = spanlake.run(["automation", "run", "idle", "-p", "p"]).ok();
    assert!(run.stderr.contains("nothing new"), "{}", run.stderr);
    spanlake.advance_clock(std::time::Duration::from_millis(3200));
    spanlake.run(["automation", "run", "idle", "-p", "p"]).ok();
    let traces = rows(&out);
    assert!(traces > 1);

    // t1 changes, and 3 s later t2 changes: t1 is idle and goes out alone;
    // t2 follows once it is idle too.
    spanlake.ingest(
        "p",
        &spanlake.write_file("a.jsonl", r#"{"id":"t1","_is_merge":true,"output":"a"}"#),
    );
    spanlake.advance_clock(std::time::Duration::from_millis(3200));
    spanlake.ingest(
        "p",
        &spanlake.write_file("b.jsonl", r#"{"id":"t2","_is_merge":true,"output":"b"}"#),
    );
    spanlake.run(["automation", "run", "idle", "-p", "p"]).ok();
    assert_eq!(rows(&out), traces + 1, "only t1, which is idle");
    spanlake.advance_clock(std::time::Duration::from_millis(3200));
    spanlake.run(["automation", "run", "idle", "-p", "p"]).ok();
    assert_eq!(rows(&out), traces + 2, "then t2");
    let mut exported = Vec::new();
    for file in committed_files(&out) {
        for line in std::fs::read_to_string(out.join(&file)).unwrap().lines() {
            let row: serde_json::Value = serde_json::from_str(line).unwrap();
            exported.push(row["root_span_id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(exported.iter().filter(|r| *r == "t1").count(), 2);
    assert_eq!(exported.iter().filter(|r| *r == "t2").count(), 2);
}
