//! `spanlake store compact` and automatic compaction in `serve`, through the
//! CLI: compaction changes no resolved row and nothing an export cursor
//! selects, rewrites only what it must, survives a crash and a racing ingest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::{Run, Spanlake};

/// `0x0DE1 << 48`: the top bits of every `_xact_id`.
const XACT_TOP_BITS: i64 = 0x0DE1 << 48;

fn span(id: &str, root: &str, minute: u32) -> String {
    let parents = if id == root {
        "[]".to_string()
    } else {
        format!(r#"["{root}"]"#)
    };
    format!(
        r#"{{"id":"{id}","span_id":"{id}","root_span_id":"{root}","span_parents":{parents},"created":"2026-11-01T10:{minute:02}:00Z","input":{{"q":"{id}","n":{minute}}},"metadata":{{"model":"m1"}},"span_attributes":{{"name":"s","type":"llm"}}}}"#
    )
}

fn merge(id: &str, body: &str) -> String {
    format!(r#"{{"id":"{id}","_is_merge":true,{body}}}"#)
}

fn delete(id: &str) -> String {
    format!(r#"{{"id":"{id}","_object_delete":true}}"#)
}

impl Spanlake {
    fn ingest_lines(&self, name: &str, lines: &[String]) {
        self.ingest("p", &self.write_file(name, &lines.join("\n")));
    }

    fn compact(&self, extra: &[&str]) -> Value {
        let mut args = vec!["store", "compact", "--project", "p"];
        args.extend_from_slice(extra);
        let run = self.run(args).ok();
        serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("{e}: {}", run.stdout))
    }

    /// Every column of every resolved row, sorted by id.
    fn all_rows(&self) -> Vec<Value> {
        let mut rows = self
            .query_jsonl("select: * | from: project_logs('p') | sort: id")
            .ok()
            .jsonl();
        rows.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
        rows
    }

    fn table_dir(&self) -> PathBuf {
        let projects = self.data_dir().join("projects");
        let project = std::fs::read_dir(&projects)
            .unwrap()
            .next()
            .expect("one project")
            .unwrap()
            .path();
        project.join("logs")
    }

    /// The latest Delta version of the table.
    fn version(&self) -> u64 {
        std::fs::read_dir(self.table_dir().join("_delta_log"))
            .unwrap()
            .filter_map(|e| {
                let name = e.unwrap().file_name().into_string().unwrap();
                name.strip_suffix(".json")?.parse::<u64>().ok()
            })
            .max()
            .unwrap()
    }
}

fn run_output(output: std::process::Output) -> Run {
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn run_command(command: &mut std::process::Command) -> Run {
    run_output(command.output().expect("run the spanlake binary"))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn xact(version: u64) -> i64 {
    XACT_TOP_BITS | version as i64
}

/// `row` with every `_xact_id` at or after version `from` moved one version
/// back, in `_xact_id` and in the 19-digit prefix of `_pagination_key`: a
/// table with one extra commit (the compaction) at `from`, seen as one
/// without it.
fn shift_back(mut row: Value, from: u64) -> Value {
    let shift = |x: i64| if x >= xact(from) { x - 1 } else { x };
    if let Some(text) = row["_xact_id"].as_str() {
        row["_xact_id"] = Value::String(shift(text.parse().unwrap()).to_string());
    }
    if let Some(key) = row["_pagination_key"].as_str() {
        let (x, seq) = key.split_at(19);
        row["_pagination_key"] = Value::String(format!("{:019}{seq}", shift(x.parse().unwrap())));
    }
    row
}

/// The rows each export automation wrote in the runs whose manifests are in
/// `folder` and not in `seen`, by automation id.
fn exported(folder: &Path, seen: &mut BTreeSet<PathBuf>) -> BTreeMap<String, Vec<Value>> {
    let mut by_automation: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(folder.join("_manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !seen.contains(p))
        .collect();
    manifests.sort();
    for path in manifests {
        let manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let rows = by_automation
            .entry(manifest["automation_id"].as_str().unwrap().to_string())
            .or_default();
        let mut count = 0;
        for file in manifest["files"].as_array().unwrap() {
            let key = file["key"].as_str().unwrap();
            let name = Path::new(key).file_name().unwrap();
            let text = std::fs::read_to_string(folder.join(name)).unwrap();
            for line in text.lines() {
                rows.push(serde_json::from_str(line).unwrap());
                count += 1;
            }
        }
        assert_eq!(count, manifest["rows"].as_u64().unwrap(), "{manifest}");
        seen.insert(path);
    }
    for rows in by_automation.values_mut() {
        rows.sort_by_key(|a| a.to_string());
    }
    by_automation
}

fn export_all(spanlake: &Spanlake, names: &[&str]) {
    for name in names {
        spanlake
            .run(["automation", "run", name, "--project", "p"])
            .ok();
    }
}

#[test]
fn compaction_changes_no_resolved_row_nor_what_an_export_cursor_selects() {
    let a = Spanlake::new();
    let out = a.root().join("exports");
    let export = |spanlake: &Spanlake, name: &str| {
        spanlake.create_export(
            name,
            "spans",
            out.to_str().unwrap(),
            &[
                "--format",
                "jsonl",
                "--compression",
                "none",
                "--partitioning",
                "none",
            ],
        );
    };
    // 1: 60 spans in 10 traces.
    let first: Vec<String> = (0..60)
        .map(|i| span(&format!("s{i:02}"), &format!("s{:02}", i / 6 * 6), i))
        .collect();
    a.ingest_lines("1.jsonl", &first);
    export(&a, "e1");
    export_all(&a, &["e1"]);
    // 2: 30% of them merged later, two deleted, ten new.
    let mut second: Vec<String> = (0..18)
        .map(|i| {
            merge(
                &format!("s{i:02}"),
                r#""output":{"a":"done"},"scores":{"f":0.5},"metrics":{"end":2.0}"#,
            )
        })
        .collect();
    second.extend([delete("s20"), delete("s21")]);
    second.extend((60..70).map(|i| span(&format!("s{i:02}"), "s60", i - 10)));
    a.ingest_lines("2.jsonl", &second);
    export(&a, "e2");
    export_all(&a, &["e2"]);
    // 3: merges again, a replace, a delete, a re-created id, a merge of an unknown id.
    let mut third: Vec<String> = (0..6)
        .map(|i| {
            merge(
                &format!("s{i:02}"),
                r#""metadata":{"reviewed":true},"tags":["x"]"#,
            )
        })
        .collect();
    third.extend([
        r#"{"id":"s30","input":"replaced","span_parents":["s24"]}"#.to_string(),
        delete("s60"),
        r#"{"id":"s20","input":"back again"}"#.to_string(),
        merge("u1", r#""input":"merged into nothing""#),
    ]);
    a.ingest_lines("3.jsonl", &third);
    export(&a, "e3");
    export_all(&a, &["e3"]);
    export(&a, "e0"); // never run: starts at the beginning

    // B: the same data directory, compacted.
    let b = Spanlake::new();
    copy_dir(&a.data_dir(), &b.data_dir());
    let before = a.all_rows();
    assert_eq!(before.len(), 60 + 10 - 2 + 1, "{before:?}");
    let report = b.compact(&[]);
    assert_eq!(report["dry_run"], false);
    // Folded: s00..s17, s20, s21, s30, s60, u1.
    assert_eq!(report["ids_folded"], 23, "{report}");
    assert_eq!(report["tombstones"], 2, "s21 and s60: {report}");
    assert_eq!(report["files_in"], 3, "{report}");
    assert_eq!(
        report["files_out"], 2,
        "rows, and tombstones apart: {report}"
    );
    assert_eq!(report["rows_in"], 60 + 30 + 10, "{report}");
    assert_eq!(report["rows_out"], 60 + 10 + 1, "{report}");
    let compaction = report["version"].as_u64().unwrap();
    assert_eq!(compaction, 4);
    assert_eq!(b.all_rows(), before, "resolved rows, all columns");

    // Both go on: a merge into a folded id and into a copied one, a new
    // span, a delete. B's commit lands one version later (after the compaction).
    let fourth = vec![
        merge("s01", r#""output":{"b":"again"}"#),
        merge("s40", r#""scores":{"g":1}"#),
        span("s70", "s70", 59),
        delete("s02"),
    ];
    a.ingest_lines("4.jsonl", &fourth);
    b.ingest_lines("4.jsonl", &fourth);
    let shifted: Vec<Value> = b
        .all_rows()
        .into_iter()
        .map(|row| shift_back(row, compaction))
        .collect();
    assert_eq!(shifted, a.all_rows());

    // Every export, from each cursor (after 1, 2, 3, and from the start),
    // exports the same rows from A and from B.
    let mut seen = BTreeSet::new();
    exported(&out, &mut seen);
    let names = ["e0", "e1", "e2", "e3"];
    export_all(&a, &names);
    let from_a = exported(&out, &mut seen);
    export_all(&b, &names);
    let from_b: BTreeMap<String, Vec<Value>> = exported(&out, &mut seen)
        .into_iter()
        .map(|(automation, rows)| {
            let mut rows: Vec<Value> = rows
                .into_iter()
                .map(|row| shift_back(row, compaction))
                .collect();
            rows.sort_by_key(|a| a.to_string());
            (automation, rows)
        })
        .collect();
    assert_eq!(from_a.len(), 4);
    let sizes: Vec<usize> = from_a.values().map(Vec::len).collect();
    assert!(sizes.iter().all(|n| *n > 0), "{sizes:?}");
    assert_eq!(from_b, from_a);
}

#[test]
fn compaction_rewrites_only_files_with_versions_to_fold_and_a_dry_run_changes_nothing() {
    let spanlake = Spanlake::new();
    let batch = |from: u32| -> Vec<String> {
        (from..from + 20)
            .map(|i| span(&format!("s{i:02}"), &format!("s{i:02}"), i))
            .collect()
    };
    spanlake.ingest_lines("1.jsonl", &batch(0));
    spanlake.ingest_lines("2.jsonl", &batch(20));
    spanlake.ingest_lines("3.jsonl", &[merge("s03", r#""output":"o""#)]);
    let rows = spanlake.all_rows();
    // No file is small at 1 KiB: only files that hold versions of s03 change.
    let options = ["--target-file-size", "1KiB"];
    let version = spanlake.version();
    let mut dry = options.to_vec();
    dry.push("--dry-run");
    let preview = spanlake.compact(&dry);
    assert_eq!(preview["dry_run"], true);
    assert_eq!(preview["version"], Value::Null);
    assert_eq!(spanlake.version(), version, "a dry run commits nothing");
    let report = spanlake.compact(&options);
    for field in [
        "ids_folded",
        "rows_in",
        "rows_out",
        "files_in",
        "bytes_in",
        "files_untouched",
    ] {
        assert_eq!(
            preview[field], report[field],
            "{field}: {preview} / {report}"
        );
    }
    assert_eq!(report["ids_folded"], 1);
    assert_eq!(report["files_in"], 2, "{report}");
    assert_eq!(report["files_untouched"], 1, "{report}");
    assert_eq!(report["rows_in"], 21);
    assert_eq!(report["rows_out"], 20);
    assert_eq!(spanlake.version(), version + 1);
    assert_eq!(spanlake.all_rows(), rows);
    // The commit is a rearrangement: OPTIMIZE, nothing marked as changed data.
    let log = std::fs::read_to_string(
        spanlake
            .table_dir()
            .join("_delta_log")
            .join(format!("{:020}.json", version + 1)),
    )
    .unwrap();
    assert!(log.contains(r#""operation":"OPTIMIZE""#), "{log}");
    assert!(!log.contains(r#""dataChange":true"#), "{log}");

    // Nothing left to fold, no small files: nothing to do, no commit.
    let again = spanlake.compact(&options);
    assert_eq!(again["files_in"], 0, "{again}");
    assert_eq!(spanlake.version(), version + 1);
}

#[test]
fn compaction_killed_before_its_commit_leaves_the_table_as_it_was() {
    let spanlake = Spanlake::new();
    spanlake.ingest_lines(
        "1.jsonl",
        &(0..30)
            .map(|i| span(&format!("s{i:02}"), "s00", i))
            .collect::<Vec<_>>(),
    );
    spanlake.ingest_lines(
        "2.jsonl",
        &(0..10)
            .map(|i| merge(&format!("s{i:02}"), r#""output":1"#))
            .collect::<Vec<_>>(),
    );
    let rows = spanlake.all_rows();
    let version = spanlake.version();
    let killed = run_command(
        spanlake
            .command(["store", "compact", "--project", "p"])
            .env("SPANLAKE_TEST_KILL_AT", "compact_after_files"),
    );
    assert_eq!(killed.code, -1, "killed by SIGKILL: {killed:?}");
    assert_eq!(spanlake.version(), version);
    assert_eq!(spanlake.all_rows(), rows);
    let parquet = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "parquet")
            })
            .count()
    };
    assert_eq!(
        parquet(&spanlake.table_dir()),
        3,
        "two files and an orphan left for vacuum"
    );
    let report = spanlake.compact(&[]);
    assert_eq!(report["version"], version + 1);
    assert_eq!(spanlake.all_rows(), rows);
}

#[test]
fn ingest_racing_compaction_loses_nothing() {
    let spanlake = Spanlake::new();
    spanlake.ingest_lines(
        "0.jsonl",
        &(0..40)
            .map(|i| span(&format!("s{i:02}"), "s00", i))
            .collect::<Vec<_>>(),
    );
    let rounds = 6;
    let mut compactions = 0;
    for round in 0..rounds {
        // Each round merges into every span and adds one; its file is
        // ingested again while the store is locked (as a client retries).
        let mut lines: Vec<String> = (0..40)
            .map(|i| {
                merge(
                    &format!("s{i:02}"),
                    &format!(r#""metadata":{{"r{round}":{round}}}"#),
                )
            })
            .collect();
        lines.push(span(&format!("n{round}"), &format!("n{round}"), round));
        let file = spanlake.write_file(&format!("r{round}.jsonl"), &lines.join("\n"));
        let compact = spanlake
            .command(["store", "compact", "--project", "p"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        loop {
            let run = spanlake.run([
                "ingest".as_ref(),
                "--project".as_ref(),
                "p".as_ref(),
                file.as_os_str(),
            ]);
            if run.code == 0 {
                break;
            }
            assert!(
                run.stderr.contains("locked"),
                "only a locked store may refuse: {run:?}"
            );
        }
        let compacted = run_output(compact.wait_with_output().unwrap());
        if compacted.code == 0 {
            compactions += 1;
        } else {
            assert!(compacted.stderr.contains("locked"), "{compacted:?}");
        }
    }
    assert!(
        compactions > 0,
        "no compaction committed in {rounds} rounds"
    );
    let rows = spanlake.all_rows();
    assert_eq!(rows.len(), 40 + rounds as usize);
    for row in rows
        .iter()
        .filter(|r| r["id"].as_str().unwrap().starts_with('s'))
    {
        let metadata = row["metadata"].as_object().unwrap();
        for round in 0..rounds {
            assert_eq!(metadata[&format!("r{round}")], round, "{row}");
        }
        assert_eq!(metadata["model"], "m1", "{row}");
    }
    // And one last compaction folds whatever is left.
    spanlake.compact(&[]);
    assert_eq!(spanlake.all_rows(), rows);
}

#[test]
fn serve_compacts_a_project_over_the_threshold_and_logs_it() {
    let spanlake = Spanlake::new();
    spanlake.ingest_lines(
        "1.jsonl",
        &(0..30)
            .map(|i| span(&format!("s{i:02}"), "s00", i))
            .collect::<Vec<_>>(),
    );
    spanlake.ingest_lines(
        "2.jsonl",
        &(0..10)
            .map(|i| merge(&format!("s{i:02}"), r#""output":1"#))
            .collect::<Vec<_>>(),
    );
    let rows = spanlake.all_rows();
    let version = spanlake.version();
    let serve = |extra: &[&str]| {
        let mut args = vec!["serve", "--once"];
        args.extend_from_slice(extra);
        run_command(spanlake.command(args).env("SPANLAKE_LOG", "info")).ok()
    };
    // Under the threshold (10 versions to fold), or turned off: nothing.
    serve(&["--compact-min-rows", "11"]);
    serve(&["--compact-min-rows", "1", "--no-compact"]);
    assert_eq!(spanlake.version(), version);
    let run = serve(&["--compact-min-rows", "10"]);
    // The log may be styled (ANSI escapes around field names).
    let log: String = {
        let mut plain = String::new();
        let mut chars = run.stderr.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        plain
    };
    assert_eq!(spanlake.version(), version + 1, "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("compaction committed"))
        .unwrap_or_else(|| panic!("no compaction in the log:\n{log}"));
    for field in [
        "project=p",
        "rows_in=40",
        "rows_out=30",
        "files_in=2",
        "files_out=1",
    ] {
        assert!(line.contains(field), "{field} in {line}");
    }
    assert_eq!(spanlake.all_rows(), rows);
    // Compacted: nothing is due any more.
    serve(&["--compact-min-rows", "1"]);
    assert_eq!(spanlake.version(), version + 1);
}
