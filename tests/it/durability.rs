//! Durability (issue 15): no error after a commit, acknowledged rows
//! survive a kill -9 of the server, and no staging file of a killed export
//! run outlives the next run.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::http::{Server, api_key, create_project, logs3_body};
use crate::support::Spanlake;

fn table_dir(spanlake: &Spanlake, project: &str) -> PathBuf {
    spanlake
        .data_dir()
        .join("projects")
        .join(project)
        .join("logs")
}

/// Versions of the table's log entries (`_delta_log/<version>.json`).
fn log_versions(table: &Path) -> BTreeSet<u64> {
    std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .filter_map(|entry| {
            let name = entry.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".json")?.parse().ok()
        })
        .collect()
}

/// Every row version of the project, as (id, `_xact_id`), read by the CLI.
fn row_versions(spanlake: &Spanlake, project: &str) -> Vec<(String, String)> {
    spanlake
        .query_jsonl(&format!(
            "select: id, _xact_id | from: project_logs('{project}') | sort: id"
        ))
        .ok()
        .jsonl()
        .iter()
        .map(|row| {
            (
                row["id"].as_str().unwrap().to_string(),
                row["_xact_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The number of rows the table's active files hold (every row version, not
/// the resolved rows), from the `numRecords` statistics of the log.
fn stored_row_versions(table: &Path) -> u64 {
    let mut live: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    for version in log_versions(table) {
        let entry =
            std::fs::read_to_string(table.join(format!("_delta_log/{version:020}.json"))).unwrap();
        for line in entry.lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(add) = action.get("add") {
                let stats: serde_json::Value =
                    serde_json::from_str(add["stats"].as_str().unwrap()).unwrap();
                live.insert(
                    add["path"].as_str().unwrap().to_string(),
                    stats["numRecords"].as_u64().unwrap(),
                );
            }
            if let Some(remove) = action.get("remove") {
                live.remove(remove["path"].as_str().unwrap());
            }
        }
    }
    live.values().sum()
}

#[test]
fn durability_a_checkpoint_that_fails_after_the_commit_answers_2xx_and_its_retry_commits_nothing() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &["--group-commit-linger", "0ms"]);
    let project = create_project(&server, &key, "checkpoint");
    let body = |i: usize| {
        logs3_body(
            &project,
            &[serde_json::json!({"id": format!("r{i:03}"), "input": i})],
        )
    };
    // One request, one commit: request i lands at table version i (version
    // 0 creates the table). The checkpoint is due after version 99.
    for i in 1..=98 {
        let (status, answer) = server.call("POST", "/logs3", Some(&key), &body(i));
        assert_eq!(status, 200, "request {i}: {answer}");
    }
    let table = table_dir(&spanlake, &project);
    assert_eq!(log_versions(&table).last(), Some(&98));
    // A folder where the checkpoint file must go: its write fails (as on a
    // full disk or an unwritable `_delta_log`) after commit 99 is written.
    let checkpoint = table.join("_delta_log/00000000000000000099.checkpoint.parquet");
    std::fs::create_dir(&checkpoint).unwrap();

    let (status, first) = server.call("POST", "/logs3", Some(&key), &body(99));
    assert_eq!(
        status,
        200,
        "a committed request is a success: {first}\n{}",
        server.log()
    );
    assert_eq!(log_versions(&table).last(), Some(&99));
    assert!(checkpoint.is_dir(), "the checkpoint could not be written");
    // The log line may reach the pipe just after the answer.
    let logged = |server: &Server| server.log().contains("checkpoint could not be written");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !logged(&server) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        logged(&server),
        "the failed checkpoint is logged:\n{}",
        server.log()
    );

    // The SDK's retry of the identical body: the first answer, no commit.
    let (status, retry) = server.call("POST", "/logs3", Some(&key), &body(99));
    assert_eq!(status, 200, "{retry}");
    assert_eq!(retry["xact_id"], first["xact_id"]);
    assert_eq!(log_versions(&table).last(), Some(&99), "no new commit");
    assert_eq!(stored_row_versions(&table), 99, "one row version each");
    let rows = row_versions(&spanlake, &project);
    assert_eq!(rows.len(), 99);
    assert_eq!(
        rows.last().unwrap(),
        &(
            "r099".to_string(),
            first["xact_id"].as_str().unwrap().to_string()
        )
    );

    // The table goes on: the next request commits version 100.
    let (status, next) = server.call("POST", "/logs3", Some(&key), &body(100));
    assert_eq!(status, 200, "{next}");
    assert_eq!(log_versions(&table).last(), Some(&100));
}

/// One `POST /logs3`, `None` when the server did not answer (it was killed).
fn try_post(address: &str, key: &str, body: &str) -> Option<(u16, serde_json::Value)> {
    let mut stream = TcpStream::connect(address).ok()?;
    write!(
        stream,
        "POST /logs3 HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let json = serde_json::from_slice(&reply[split + 4..]).ok()?;
    Some((status, json))
}

#[test]
fn durability_rows_acknowledged_before_a_kill_9_of_serve_are_all_there_after_a_restart() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let mut server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "crash");

    // Four clients post 10-row bodies without pause; right after the 40th
    // acknowledgement the server is killed with SIGKILL, requests in flight.
    let acknowledged: Mutex<Vec<(String, serde_json::Value)>> = Mutex::new(Vec::new());
    let acks = AtomicUsize::new(0);
    let killed = AtomicBool::new(false);
    let address = server.address.clone();
    std::thread::scope(|scope| {
        for client in 0..4 {
            let (acknowledged, acks, killed) = (&acknowledged, &acks, &killed);
            let (address, key, project) = (&address, &key, &project);
            scope.spawn(move || {
                for batch in 0.. {
                    if killed.load(Ordering::SeqCst) {
                        return;
                    }
                    let rows: Vec<serde_json::Value> = (0..10)
                        .map(|i| serde_json::json!({"id": format!("c{client}-b{batch}-{i}"), "input": i}))
                        .collect();
                    let body = logs3_body(project, &rows);
                    match try_post(address, key, &body) {
                        Some((200, answer)) => {
                            acknowledged.lock().unwrap().push((body, answer));
                            acks.fetch_add(1, Ordering::SeqCst);
                        }
                        Some((status, answer)) => panic!("{status}: {answer}"),
                        None => return,
                    }
                }
            });
        }
        while acks.load(Ordering::SeqCst) < 40 {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        server.child.kill().unwrap();
        killed.store(true, Ordering::SeqCst);
        server.child.wait().unwrap();
    });
    let acknowledged = acknowledged.into_inner().unwrap();
    assert!(acknowledged.len() >= 40);
    drop(server);

    // Restarted on the same data directory: every acknowledged row is
    // there, and a replay of an acknowledged body (as the SDK's retry of a
    // request whose answer it missed) gets its first answer.
    let server = Server::start(&spanlake, &[]);
    let stored: BTreeSet<String> = row_versions(&spanlake, &project)
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    for (_, answer) in &acknowledged {
        for id in answer["ids"].as_array().unwrap() {
            assert!(
                stored.contains(id.as_str().unwrap()),
                "acknowledged row {id} is missing after the restart ({} stored)",
                stored.len()
            );
        }
    }
    let (body, answer) = &acknowledged[acknowledged.len() / 2];
    let (status, replay) = server.call("POST", "/logs3", Some(&key), body);
    assert_eq!(status, 200, "{replay}");
    assert_eq!(replay["xact_id"], answer["xact_id"]);
    assert_eq!(
        stored_row_versions(&table_dir(&spanlake, &project)),
        stored.len() as u64,
        "no row version twice"
    );
}

/// Every file under `folder`, relative to it, walked with `std::fs` (which,
/// unlike object_store's listing, shows staging files `<name>#<n>`).
fn files_on_disk(folder: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![folder.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                found.insert(path.strip_prefix(folder).unwrap().display().to_string());
            }
        }
    }
    found
}

/// The manifests under `folder` and the files they list, relative to it.
fn manifest_files(folder: &Path) -> (BTreeSet<String>, u64) {
    let mut files = BTreeSet::new();
    let mut rows = 0;
    let marker = format!("{}/", folder.file_name().unwrap().to_str().unwrap());
    for entry in std::fs::read_dir(folder.join("_manifests")).unwrap() {
        let path = entry.unwrap().path();
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        files.insert(format!(
            "_manifests/{}",
            path.file_name().unwrap().to_str().unwrap()
        ));
        rows += manifest["rows"].as_u64().unwrap();
        for file in manifest["files"].as_array().unwrap() {
            let key = file["key"].as_str().unwrap();
            files.insert(key.split_once(&marker).unwrap().1.to_string());
        }
    }
    (files, rows)
}

#[test]
fn durability_an_export_killed_at_any_point_leaves_only_manifested_files_after_the_next_run() {
    let spanlake = Spanlake::new();
    // About 13 MB of spans in one partition: a first file of 11 MiB goes up
    // as a multipart upload (10 MiB parts; on a local folder, into a staging
    // file `<name>#<n>`), then a small one.
    let padding = "x".repeat(100_000);
    let lines: Vec<String> = (0..130)
        .map(|i| {
            serde_json::json!({"id": format!("s{i:03}"), "created": "2026-11-01T00:00:00Z", "input": padding})
                .to_string()
        })
        .collect();
    let input = spanlake.write_file("big.jsonl", &lines.join("\n"));
    spanlake.ingest("p", &input);
    let out = spanlake.root().join("local-export");
    spanlake.create_export(
        "e",
        "spans",
        out.to_str().unwrap(),
        &[
            "--format",
            "jsonl",
            "--partitioning",
            "none",
            "--max-file-bytes",
            "11MiB",
        ],
    );
    let run_killed_at = |point: &str| {
        let status = spanlake
            .command(["automation", "run", "e", "-p", "p"])
            .env("SPANLAKE_TEST_KILL_AT", point)
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "the run was killed at {point}");
    };

    // Killed with every part of the multipart upload written, before it
    // completes: its staging file is on disk, hidden from object_store.
    run_killed_at("before_complete");
    let staging: Vec<String> = files_on_disk(&out)
        .into_iter()
        .filter(|f| f.contains('#'))
        .collect();
    assert_eq!(staging.len(), 1, "{:?}", files_on_disk(&out));
    // Then killed again at each later point; each run recovers the one
    // before it.
    for point in ["mid_upload", "after_files", "after_manifest"] {
        run_killed_at(point);
    }
    let run = spanlake.run(["automation", "run", "e", "-p", "p"]).ok();
    assert!(
        run.stderr.contains("its cursor is now committed"),
        "{}",
        run.stderr
    );

    let (listed, rows) = manifest_files(&out);
    assert_eq!(rows, 130, "every row once");
    assert_eq!(
        files_on_disk(&out),
        listed,
        "no file other than the manifests and the files they list"
    );
}
