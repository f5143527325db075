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
