//! Retention automations through the CLI: preview, run, history.

use crate::support::Spanlake;

#[test]
fn retention_previews_then_deletes_rows_older_than_the_cutoff() {
    let spanlake = Spanlake::new();
    let now = chrono::Utc::now();
    let line = |id: &str, days_ago: i64| {
        let created = (now - chrono::Duration::days(days_ago)).to_rfc3339();
        format!(r#"{{"id":"{id}","created":"{created}","input":"x"}}"#)
    };
    for (file, lines) in [
        ("old.jsonl", vec![line("a", 10), line("b", 9)]),
        ("new.jsonl", vec![line("c", 1), line("d", 0)]),
    ] {
        spanlake.ingest("p", &spanlake.write_file(file, &lines.join("\n")));
    }
    spanlake
        .run([
            "automation",
            "create-retention",
            "--project",
            "p",
            "--days",
            "3",
            "--grace",
            "0s",
        ])
        .ok();
    // days 0 is refused unless forced.
    let refused = spanlake.run([
        "automation",
        "create-retention",
        "--project",
        "p",
        "--days",
        "0",
    ]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("retention_days"),
        "{}",
        refused.stderr
    );

    let preview: serde_json::Value = serde_json::from_str(
        &spanlake
            .run(["automation", "test", "retention-3d", "-p", "p"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(preview["rows"], 2);
    assert_eq!(preview["files_to_drop"], 1, "{preview}");
    let count = || {
        spanlake
            .query_jsonl("select: id | from: project_logs('p')")
            .ok()
            .jsonl()
            .len()
    };
    assert_eq!(count(), 4, "a preview changes nothing");

    let report: serde_json::Value = serde_json::from_str(
        &spanlake
            .run(["automation", "run", "retention-3d", "-p", "p"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(report["rows_deleted"], preview["rows"]);
    assert_eq!(report["files_dropped"], preview["files_to_drop"]);
    assert_eq!(count(), 2);
    let history: serde_json::Value = serde_json::from_str(
        &spanlake
            .run(["automation", "history", "retention-3d", "-p", "p", "--json"])
            .ok()
            .stdout,
    )
    .unwrap();
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[0]["rows"], 2);
    assert!(history[0]["details"]["cutoff"].is_string());
}

/// Spans over the 60 days before `now`: `traces` traces of 5 spans, in
/// `created` order, none within minutes of `now - 30 days` (so a preview
/// and its run, seconds apart, have the same cutoff figures). Returns the
/// JSON lines and each span's `created`.
fn sixty_days(
    now: chrono::DateTime<chrono::Utc>,
    traces: usize,
) -> Vec<(String, chrono::DateTime<chrono::Utc>)> {
    let start = now - chrono::Duration::days(60) + chrono::Duration::hours(7);
    let span = chrono::Duration::hours(59 * 24 - 8) / i32::try_from(traces * 5).unwrap();
    let cutoff = now - chrono::Duration::days(30);
    let mut lines = Vec::new();
    for t in 0..traces {
        for s in 0..5 {
            let created = start + span * i32::try_from(t * 5 + s).unwrap();
            if created > cutoff - chrono::Duration::minutes(2)
                && created < cutoff + chrono::Duration::minutes(10)
            {
                continue;
            }
            let id = format!("t{t}s{s}");
            let parents = if s == 0 {
                serde_json::json!([])
            } else {
                serde_json::json!([format!("t{t}s0")])
            };
            let line = serde_json::json!({
                "id": id,
                "span_id": id,
                "root_span_id": format!("t{t}s0"),
                "span_parents": parents,
                "created": created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "input": format!("question {t}.{s} {}", "lorem ipsum ".repeat(20)),
                "output": {"answer": t * 5 + s},
                "metadata": {"model": "m"},
            });
            lines.push((line.to_string(), created));
        }
    }
    lines
}

/// Ingest `lines` in `chunks` commits (so many files), in order.
fn ingest_in_chunks(spanlake: &Spanlake, lines: &[String], chunks: usize, tag: &str) {
    for (i, chunk) in lines.chunks(lines.len().div_ceil(chunks)).enumerate() {
        let file = spanlake.write_file(&format!("{tag}-{i}.jsonl"), &chunk.join("\n"));
        spanlake.ingest("p", &file);
    }
}

pub(crate) fn json_of(run: &crate::support::Run) -> serde_json::Value {
    serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}\n{}", run.stdout, run.stderr))
}

fn create_retention(spanlake: &Spanlake, grace: &str) {
    spanlake
        .run([
            "automation",
            "create-retention",
            "--project",
            "p",
            "--days",
            "30",
            "--grace",
            grace,
        ])
        .ok();
}

fn resolved_count(spanlake: &Spanlake) -> usize {
    spanlake
        .query_jsonl("select: id | from: project_logs('p')")
        .ok()
        .jsonl()
        .len()
}

fn cutoff_of(details: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    details["cutoff"]
        .as_str()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        .unwrap_or_else(|| panic!("no cutoff in {details}"))
        .with_timezone(&chrono::Utc)
}

pub(crate) fn parquet_list(
    table: &std::path::Path,
    files: &std::collections::BTreeSet<String>,
) -> String {
    let quoted: Vec<String> = files
        .iter()
        .map(|f| format!("'{}'", table.join(f).display()))
        .collect();
    format!("read_parquet([{}])", quoted.join(", "))
}

#[test]
fn sixty_days_of_spans_keep_exactly_the_rows_after_the_cutoff() {
    let spanlake = Spanlake::new();
    let now = chrono::Utc::now();
    let spans = sixty_days(now, 600);
    let lines: Vec<String> = spans.iter().map(|(l, _)| l.clone()).collect();
    ingest_in_chunks(&spanlake, &lines, 9, "spans");
    // Later merges of every 7th span (they keep the span's `created`), one
    // commit: these ids have two versions each.
    let merged: Vec<usize> = (0..spans.len()).step_by(7).collect();
    let merges: Vec<String> = merged
        .iter()
        .map(|&i| {
            let id = serde_json::from_str::<serde_json::Value>(&spans[i].0).unwrap()["id"].clone();
            serde_json::json!({"id": id, "_is_merge": true, "scores": {"late": 1}}).to_string()
        })
        .collect();
    spanlake.ingest(
        "p",
        &spanlake.write_file("merges.jsonl", &merges.join("\n")),
    );
    assert_eq!(resolved_count(&spanlake), spans.len());
    create_retention(&spanlake, "0s");

    let preview = json_of(
        &spanlake
            .run(["automation", "test", "retention-30d", "-p", "p"])
            .ok(),
    );
    let table = spanlake.only_table_dir();
    let bytes_before = crate::support::dir_bytes(&table);
    let report = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    let cutoff = cutoff_of(&report);
    let expected = spans.iter().filter(|(_, c)| *c >= cutoff).count();
    let expected_merges = merged.iter().filter(|&&i| spans[i].1 >= cutoff).count();
    let expected_deleted = (spans.len() - expected) + (merged.len() - expected_merges);
    assert!(
        expected > 0 && expected < spans.len(),
        "the cutoff is inside the data"
    );

    // The preview's figures are the run's.
    for key in [
        "rows",
        "files_to_drop",
        "files_to_rewrite",
        "bytes_to_reclaim",
    ] {
        assert_eq!(
            preview[key], report[key],
            "{key}: preview {preview} run {report}"
        );
    }
    assert_eq!(report["rows_deleted"], expected_deleted as u64, "{report}");
    assert!(report["files_to_drop"].as_u64().unwrap() >= 3, "{report}");
    assert!(
        report["files_to_rewrite"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["files_read_for_versions"].as_u64().unwrap() > 0,
        "{report}"
    );
    let history = json_of(
        &spanlake
            .run([
                "automation",
                "history",
                "retention-30d",
                "-p",
                "p",
                "--json",
            ])
            .ok(),
    );
    assert_eq!(history[0]["status"], "succeeded");
    assert_eq!(history[0]["rows"], report["rows_deleted"]);
    assert_eq!(
        history[0]["details"]["bytes_to_reclaim"],
        preview["bytes_to_reclaim"]
    );

    // Through spanlake, and independently through DuckDB over the data files
    // the Delta log now references.
    assert_eq!(resolved_count(&spanlake), expected);
    let live = crate::support::delta_live_files(&table);
    assert_eq!(
        crate::support::delta_disk_files(&table),
        live,
        "vacuum (grace 0s) left exactly the referenced files"
    );
    if let Some(python) = crate::support::service_var("SPANLAKE_DUCKDB_PYTHON") {
        let sql = format!(
            "select count(distinct id), count(*), count(distinct id) filter (where _op = 0), \
             count(*) filter (where created < '{}'::timestamptz and _op = 0) from {}",
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            parquet_list(&table, &live)
        );
        let counts = crate::support::duckdb_rows(&python, &sql);
        assert_eq!(
            counts,
            serde_json::json!([[expected, expected + expected_merges, expected, 0]]),
            "ids left, row versions left, ids with their first version, expired first versions"
        );
    }
    // The bytes are really gone.
    let bytes_after = crate::support::dir_bytes(&table);
    assert!(
        bytes_after < bytes_before,
        "{bytes_after} bytes after vacuum, {bytes_before} before"
    );
    assert!(report["bytes_purged"].as_u64().unwrap() > 0, "{report}");
}

#[test]
fn a_crash_mid_delete_or_mid_vacuum_leaves_a_consistent_table_and_the_next_run_finishes() {
    let spanlake = Spanlake::new();
    let now = chrono::Utc::now();
    let spans = sixty_days(now, 200);
    let lines: Vec<String> = spans.iter().map(|(l, _)| l.clone()).collect();
    ingest_in_chunks(&spanlake, &lines, 6, "spans");
    create_retention(&spanlake, "0s");
    let table = spanlake.only_table_dir();
    let live_before = crate::support::delta_live_files(&table);
    let run_killed_at = |point: &str| {
        let output = spanlake
            .command(["automation", "run", "retention-30d", "-p", "p"])
            .env("SPANLAKE_TEST_KILL_AT", point)
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            None,
            "killed at {point}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };

    // Killed after writing the rewritten files, before the commit: the table
    // is as before; the new files are orphans.
    run_killed_at("retention_after_files");
    assert_eq!(crate::support::delta_live_files(&table), live_before);
    assert_eq!(resolved_count(&spanlake), spans.len());
    let orphans: Vec<String> = crate::support::delta_disk_files(&table)
        .difference(&live_before)
        .cloned()
        .collect();
    assert!(
        !orphans.is_empty(),
        "the rewrite wrote files before the kill"
    );

    // Killed in the vacuum, after its first deletion: the delete is
    // committed, every referenced file is there, reads are whole.
    run_killed_at("vacuum_mid");
    let live = crate::support::delta_live_files(&table);
    assert_ne!(live, live_before, "the delete committed");
    let on_disk = crate::support::delta_disk_files(&table);
    assert!(live.is_subset(&on_disk), "no referenced file was vacuumed");
    assert!(on_disk.len() > live.len(), "the vacuum stopped midway");
    let history = json_of(
        &spanlake
            .run([
                "automation",
                "history",
                "retention-30d",
                "-p",
                "p",
                "--json",
            ])
            .ok(),
    );
    let cutoff = cutoff_of(&history[0]["details"]);
    // The second run's cutoff is a little later than the first's; no span
    // lies between them.
    let expected = spans.iter().filter(|(_, c)| *c >= cutoff).count();
    assert_eq!(resolved_count(&spanlake), expected);

    // The next run finishes the job: nothing left to delete, every
    // unreferenced file (tombstoned or orphan) purged.
    let report = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    assert_eq!(report["rows_deleted"], 0, "{report}");
    assert!(report["files_purged"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(crate::support::delta_disk_files(&table), live);
    assert!(orphans.iter().all(|o| !table.join(o).exists()));
    assert_eq!(resolved_count(&spanlake), expected);
    let history = json_of(
        &spanlake
            .run([
                "automation",
                "history",
                "retention-30d",
                "-p",
                "p",
                "--json",
            ])
            .ok(),
    );
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["succeeded", "failed", "failed"], "{history}");
}

/// Wait until `path` exists (a test hook reached its point), or fail after
/// two minutes.
fn wait_for(path: &std::path::Path) {
    for _ in 0..6000 {
        if path.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("{} never appeared", path.display());
}

#[test]
fn an_export_during_retention_reads_its_pinned_snapshot_whole() {
    let spanlake = Spanlake::new();
    let now = chrono::Utc::now();
    let spans = sixty_days(now, 200);
    let lines: Vec<String> = spans.iter().map(|(l, _)| l.clone()).collect();
    ingest_in_chunks(&spanlake, &lines, 6, "spans");
    create_retention(&spanlake, "0s");
    let out = spanlake.root().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let to = format!("file://{}", out.display());
    spanlake.create_export(
        "all",
        "spans",
        &to,
        &["--format", "jsonl", "--max-rows-per-run", "1000000"],
    );
    let table = spanlake.only_table_dir();

    // A query cursor pins nothing but its snapshot version.
    let first_page = json_of(
        &spanlake
            .run([
                "query",
                "--format",
                "json",
                "--page-size",
                "10",
                "select: id | from: project_logs('p')",
            ])
            .ok(),
    );
    let cursor = first_page["cursor"].as_str().unwrap().to_string();

    // The export opens (and pins) its snapshot, then waits.
    let gate = spanlake.root().join("go");
    let export = spanlake
        .command(["automation", "run", "all", "-p", "p", "--json"])
        .env(
            "SPANLAKE_TEST_PAUSE_AT",
            format!("export_snapshot:{}", gate.display()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&gate.with_extension("reached"));
    let pinned_files = crate::support::delta_live_files(&table);

    // Retention deletes and vacuums (grace 0s) meanwhile: the pinned files stay.
    let report = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    assert!(report["rows_deleted"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["pinned_versions"].as_array().unwrap().len(),
        1,
        "{report}"
    );
    assert_eq!(report["files_purged"], 0, "{report}");
    let on_disk = crate::support::delta_disk_files(&table);
    assert!(
        pinned_files.is_subset(&on_disk),
        "pinned files were vacuumed"
    );
    let cutoff = cutoff_of(&report);
    let expected = spans.iter().filter(|(_, c)| *c >= cutoff).count();
    assert_eq!(
        resolved_count(&spanlake),
        expected,
        "deleted rows are hidden at once"
    );

    // The export goes on and exports every row of its snapshot.
    std::fs::write(&gate, b"").unwrap();
    let done = export.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "export failed: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    let exported: serde_json::Value = serde_json::from_slice(&done.stdout).unwrap();
    assert_eq!(exported["rows"], spans.len() as u64, "{exported}");
    if let Some(python) = crate::support::service_var("SPANLAKE_DUCKDB_PYTHON") {
        let sql = format!(
            "select count(*), count(distinct id) from read_json_auto('{}/**/*.jsonl')",
            out.display()
        );
        assert_eq!(
            crate::support::duckdb_rows(&python, &sql),
            serde_json::json!([[spans.len(), spans.len()]])
        );
    }

    // Pin released: the next vacuum purges those files; the cursor's
    // snapshot is gone, and says so instead of returning partial rows.
    let again = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    assert!(again["files_purged"].as_u64().unwrap() > 0, "{again}");
    assert_eq!(
        crate::support::delta_disk_files(&table),
        crate::support::delta_live_files(&table)
    );
    let stale = spanlake.run([
        "query",
        "--format",
        "json",
        "--page-size",
        "10",
        "--cursor",
        &cursor,
        "select: id | from: project_logs('p')",
    ]);
    assert_ne!(stale.code, 0, "{}", stale.stdout);
    assert!(
        stale.stderr.contains("no longer readable"),
        "{}",
        stale.stderr
    );

    // The retention commit made no row look new: the next export has nothing.
    let next: serde_json::Value = json_of(
        &spanlake
            .run(["automation", "run", "all", "-p", "p", "--json"])
            .ok(),
    );
    assert_eq!(next["rows"], 0, "{next}");
    assert_eq!(resolved_count(&spanlake), expected);
}

#[test]
fn an_export_that_lags_behind_retention_and_compaction_exports_what_is_left() {
    let spanlake = Spanlake::new();
    let now = chrono::Utc::now();
    let spans = sixty_days(now, 200);
    let lines: Vec<String> = spans.iter().map(|(l, _)| l.clone()).collect();
    ingest_in_chunks(&spanlake, &lines, 6, "spans");
    let out = spanlake.root().join("export");
    std::fs::create_dir_all(&out).unwrap();
    spanlake.create_export(
        "late",
        "spans",
        &format!("file://{}", out.display()),
        &["--format", "jsonl"],
    );
    // Before the export's first run: retention deletes and purges (grace
    // 0s), compaction rewrites what is left, and a second retention run
    // purges the files compaction replaced. The table version that
    // committed the export's `cursor_to` can no longer be read.
    create_retention(&spanlake, "0s");
    let report = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    let compacted = json_of(&spanlake.run(["store", "compact", "-p", "p"]).ok());
    let purge = json_of(
        &spanlake
            .run(["automation", "run", "retention-30d", "-p", "p"])
            .ok(),
    );
    assert!(
        purge["files_purged"].as_u64().unwrap() > 0,
        "compaction replaced no file: {compacted}\n{purge}"
    );

    // The export reads past those commits: every row left, no deleted row.
    let run = spanlake.run(["automation", "run", "late", "-p", "p", "--json"]);
    let exported = json_of(&run.ok());
    let cutoff = cutoff_of(&report);
    let expected = spans.iter().filter(|(_, c)| *c >= cutoff).count();
    assert!(expected > 0 && expected < spans.len());
    assert_eq!(exported["rows"], expected as u64, "{exported}");
    if let Some(python) = crate::support::service_var("SPANLAKE_DUCKDB_PYTHON") {
        let sql = format!(
            "select count(*), count(distinct id), min(created) >= '{}' from read_json_auto('{}/**/*.jsonl')",
            cutoff.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            out.display()
        );
        assert_eq!(
            crate::support::duckdb_rows(&python, &sql),
            serde_json::json!([[expected, expected, true]])
        );
    }
    // Nothing new since: the next run exports nothing.
    let again = json_of(
        &spanlake
            .run(["automation", "run", "late", "-p", "p", "--json"])
            .ok(),
    );
    assert_eq!(again["rows"], 0, "{again}");
}

#[test]
fn an_export_stopped_mid_way_by_its_row_cap_resumes_after_compaction_and_vacuum() {
    let spanlake = Spanlake::new();
    let spans = sixty_days(chrono::Utc::now(), 120);
    let lines: Vec<String> = spans.iter().map(|(l, _)| l.clone()).collect();
    ingest_in_chunks(&spanlake, &lines, 6, "spans");
    let out = spanlake.root().join("export");
    std::fs::create_dir_all(&out).unwrap();
    let cap = lines.len().div_ceil(6).to_string();
    spanlake.create_export(
        "capped",
        "spans",
        &format!("file://{}", out.display()),
        &["--format", "jsonl", "--max-rows-per-run", &cap],
    );
    let first = json_of(
        &spanlake
            .run(["automation", "run", "capped", "-p", "p", "--json"])
            .ok(),
    );
    assert_eq!(first["status"], "behind", "{first}");
    // Compaction rewrites every file; a retention that deletes nothing
    // purges the replaced ones at once (grace 0s): the versions the export's
    // cursor stands at are no longer readable.
    spanlake.run(["store", "compact", "-p", "p"]).ok();
    spanlake
        .run([
            "automation",
            "create-retention",
            "-p",
            "p",
            "--days",
            "3650",
            "--grace",
            "0s",
        ])
        .ok();
    let purge = json_of(
        &spanlake
            .run(["automation", "run", "retention-3650d", "-p", "p"])
            .ok(),
    );
    assert!(purge["files_purged"].as_u64().unwrap() > 0, "{purge}");
    let mut total = first["rows"].as_u64().unwrap();
    for _ in 0..10 {
        let run = json_of(
            &spanlake
                .run(["automation", "run", "capped", "-p", "p", "--json"])
                .ok(),
        );
        total += run["rows"].as_u64().unwrap();
        if run["rows"] == 0 {
            break;
        }
    }
    assert_eq!(total, lines.len() as u64);
    if let Some(python) = crate::support::service_var("SPANLAKE_DUCKDB_PYTHON") {
        let sql = format!(
            "select count(*), count(distinct id) from read_json_auto('{}/**/*.jsonl')",
            out.display()
        );
        assert_eq!(
            crate::support::duckdb_rows(&python, &sql),
            serde_json::json!([[lines.len(), lines.len()]])
        );
    }
}
