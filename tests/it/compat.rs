//! A store written by an earlier spanlake is read, exported, compacted and
//! written to by this one, with the same answers.
//!
//! `tests/fixtures/store-ae4ec13/` holds a data directory written by the
//! release binary of commit ae4ec13 (the last one whose scans went through
//! delta-rs's table provider), and what that binary answered on it:
//!
//! ```text
//! for f in basic merge-1 merge-2 replace-1 replace-2; do spanlake --data-dir data ingest -p p tests/fixtures/$f.jsonl; done
//! spanlake --data-dir data store compact --project p        # 11 ids folded, 2 tombstones; the 5 old files stay on disk
//! for f in merge-3 replace-3 shapes; do spanlake --data-dir data ingest -p p tests/fixtures/$f.jsonl; done
//! spanlake --data-dir data query "select: * | from: project_logs('p') | sort: id" --format jsonl > spans.jsonl
//! spanlake --data-dir data query "select: * | from: project_logs('p') summary | sort: root_span_id" --format jsonl > summary.jsonl
//! tar czf data.tar.gz -C data .
//! ```
//!
//! So it has clean rows, merges, replaces and deletes on top of compacted
//! rows and tombstones, and files that the log removed but a vacuum has not
//! deleted yet (which a scan must not read).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::Spanlake;

const SPANS: &str = "select: * | from: project_logs('p') | sort: id";
const SUMMARY: &str = "select: * | from: project_logs('p') summary | sort: root_span_id";

fn fixture(name: &str) -> PathBuf {
    crate::support::fixtures_dir()
        .join("store-ae4ec13")
        .join(name)
}

fn unpacked() -> Spanlake {
    let spanlake = Spanlake::new();
    std::fs::create_dir_all(spanlake.data_dir()).unwrap();
    let status = Command::new("tar")
        .arg("xzf")
        .arg(fixture("data.tar.gz"))
        .arg("-C")
        .arg(spanlake.data_dir())
        .status()
        .expect("run tar");
    assert!(status.success());
    spanlake
}

fn answer(spanlake: &Spanlake, query: &str) -> String {
    spanlake
        .run(["query", query, "--format", "jsonl"])
        .ok()
        .stdout
}

fn expected(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

#[test]
fn compat_a_store_of_ae4ec13_answers_exports_and_compacts_as_it_did() {
    let spanlake = unpacked();
    assert_eq!(
        answer(&spanlake, SPANS),
        expected("spans.jsonl"),
        "spans view"
    );
    assert_eq!(
        answer(&spanlake, SUMMARY),
        expected("summary.jsonl"),
        "summary shape"
    );

    // An export reads the same rows: every id once.
    let out = spanlake.root().join("out");
    spanlake
        .run([
            "export",
            "select: * | from: project_logs('p') spans",
            "--to",
            out.to_str().unwrap(),
            "--format",
            "jsonl",
            "--partitioning",
            "none",
        ])
        .ok();
    let mut exported = Vec::new();
    for entry in std::fs::read_dir(&out).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "jsonl") {
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                let row: Value = serde_json::from_str(line).unwrap();
                exported.push(row["id"].as_str().unwrap().to_owned());
            }
        }
    }
    let ids: BTreeSet<String> = expected("spans.jsonl")
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(exported.len(), ids.len(), "{exported:?}");
    assert_eq!(exported.into_iter().collect::<BTreeSet<_>>(), ids);

    // Compaction of the old files changes no answer.
    let report = spanlake.run(["store", "compact", "--project", "p"]).ok();
    assert!(
        report.stdout.contains("folded") || report.stderr.contains("folded"),
        "{report:?}"
    );
    assert_eq!(
        answer(&spanlake, SPANS),
        expected("spans.jsonl"),
        "spans view after compaction"
    );
    assert_eq!(
        answer(&spanlake, SUMMARY),
        expected("summary.jsonl"),
        "summary after compaction"
    );

    // And the store takes new rows on top.
    let file = spanlake.write_file(
        "new.jsonl",
        r#"{"id":"zz-new","created":"2026-11-02T00:00:00Z","input":"after the upgrade"}"#,
    );
    spanlake.ingest("p", &file);
    let rows = answer(&spanlake, SPANS);
    assert_eq!(rows.lines().count(), ids.len() + 1);
    assert!(
        rows.lines().last().unwrap().contains("after the upgrade"),
        "{rows}"
    );
}
