//! Exports and queries on a Ballista cluster of this binary: a scheduler
//! and two executors on loopback, each a process of its own with its own
//! work dir. The cluster's answers must be the local engine's: the same
//! rows in the files its manifests list (read back by DuckDB), the same
//! query results; and a run that loses an executor mid-export still ends
//! with every row exactly once and no file outside a manifest.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::export::manifests;
use crate::support::{BIN, Spanlake, service_var as service};

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One process of the cluster; killed when dropped.
struct Role {
    child: Child,
    log: PathBuf,
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Cluster {
    scheduler: Role,
    address: String,
    executors: Vec<(Role, u16)>,
}

impl Cluster {
    /// A scheduler and `envs.len()` executors of `tasks` tasks at a time
    /// (one: tasks spread over both), each executor with the extra
    /// environment of its entry.
    fn start(root: &Path, tasks: usize, envs: &[Vec<(&str, String)>]) -> Self {
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let log = root.join("scheduler.log");
        let child = Command::new(BIN)
            .args([
                "ballista",
                "scheduler",
                "--bind",
                &address,
                "--executor-timeout",
                "4",
            ])
            .env("SPANLAKE_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the scheduler");
        let scheduler = Role { child, log };
        wait_for_line(&scheduler.log, "ballista scheduler listening", 1);
        let mut executors = Vec::new();
        for (n, env) in envs.iter().enumerate() {
            let (flight, grpc) = (free_port(), free_port());
            let log = root.join(format!("executor-{n}.log"));
            let work = root.join(format!("work-{n}"));
            let mut command = Command::new(BIN);
            command
                .args(["ballista", "executor", "--scheduler", &address])
                .args(["--bind", &format!("127.0.0.1:{flight}")])
                .args(["--grpc-port", &grpc.to_string()])
                .args(["--work-dir", work.to_str().unwrap()])
                .args(["--tasks", &tasks.to_string()])
                .args(["--memory-limit-mib", "256", "--heartbeat", "1"])
                .env("SPANLAKE_LOG", "info")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).unwrap());
            for (key, value) in env {
                command.env(key, value);
            }
            let child = command.spawn().expect("start an executor");
            executors.push((Role { child, log }, flight));
        }
        let cluster = Self {
            scheduler,
            address,
            executors,
        };
        cluster.wait_for_executors(envs.len());
        cluster
    }

    fn engine(&self) -> String {
        format!("ballista://{}", self.address)
    }

    fn wait_for_executors(&self, count: usize) {
        wait_for_line(
            &self.scheduler.log,
            "Received register executor request",
            count,
        );
    }

    fn logs(&self) -> String {
        let mut text = format!(
            "--- scheduler\n{}",
            std::fs::read_to_string(&self.scheduler.log).unwrap_or_default()
        );
        for (n, (role, _)) in self.executors.iter().enumerate() {
            let log = std::fs::read_to_string(&role.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            text.push_str(&format!("--- executor {n} (last lines)\n"));
            for line in tail.into_iter().rev() {
                text.push_str(line);
                text.push('\n');
            }
        }
        text
    }
}

/// Wait until `log` holds `line` `count` times (60 s at most).
fn wait_for_line(log: &Path, line: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(line).count() >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "`{line}` not {count} times in {} after 60 s\n{text}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// 1200 spans in 60 traces over three days, ingested in three commits;
/// then every 7th span merged, every 40th deleted, compacted, and merged
/// again: clean rows, compacted rows, tombstones and rows still to fold.
fn ingest_fixture(spanlake: &Spanlake) {
    let span = |i: usize| {
        let trace = i / 20;
        let root = format!("trace-{trace:03}");
        let id = if i.is_multiple_of(20) {
            root.clone()
        } else {
            format!("span-{i:04}")
        };
        let parents = if i.is_multiple_of(20) {
            serde_json::json!([])
        } else {
            serde_json::json!([root])
        };
        let kind = ["task", "llm", "tool", "score"][i % 4];
        let model = ["gpt-4", "claude"][i % 2];
        serde_json::json!({
            "id": id, "span_id": id, "root_span_id": root, "span_parents": parents,
            "created": format!("2024-11-{:02}T{:02}:{:02}:00Z", 9 + i % 3, i % 24, i % 60),
            "span_attributes": {"name": format!("step-{}", i % 5), "type": kind},
            "input": format!("question {i}"), "output": {"answer": i, "text": "ok"},
            "scores": {"quality": (i % 10) as f64 / 10.0},
            "metadata": {"model": model, "n": i},
            "metrics": {"tokens": i % 500, "prompt_tokens": i % 300, "start": 1731146400 + i},
        })
    };
    for part in 0..3 {
        let lines: Vec<String> = (part * 400..(part + 1) * 400)
            .map(|i| span(i).to_string())
            .collect();
        let file = spanlake.write_file(&format!("spans-{part}.jsonl"), &(lines.join("\n") + "\n"));
        spanlake.ingest("p", &file);
    }
    let id = |i: usize| span(i)["id"].as_str().unwrap().to_string();
    let mut changes = Vec::new();
    for i in (0..1200).step_by(7) {
        changes.push(
            serde_json::json!({"id": id(i), "_is_merge": true, "metadata": {"reviewed": true}})
                .to_string(),
        );
    }
    for i in (3..1200).step_by(40) {
        changes.push(serde_json::json!({"id": id(i), "_object_delete": true}).to_string());
    }
    let file = spanlake.write_file("changes.jsonl", &(changes.join("\n") + "\n"));
    spanlake.ingest("p", &file);
    spanlake.run(["store", "compact", "--project", "p"]).ok();
    let later: Vec<String> = (0..1200)
        .step_by(11)
        .map(|i| {
            serde_json::json!({"id": id(i), "_is_merge": true, "scores": {"later": 1}}).to_string()
        })
        .collect();
    let file = spanlake.write_file("later.jsonl", &(later.join("\n") + "\n"));
    spanlake.ingest("p", &file);
}

/// The keys of the files the manifests list.
fn listed(out: &Path) -> BTreeSet<String> {
    manifests(out)
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap().clone())
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect()
}

/// Every data file under `out` (outside `_manifests`), as store keys.
fn data_files(out: &Path) -> BTreeSet<String> {
    fn walk(dir: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                if path.file_name().unwrap() != "_manifests" {
                    walk(&path, found);
                }
            } else {
                found.insert(path.to_str().unwrap().trim_start_matches('/').to_string());
            }
        }
    }
    let mut found = BTreeSet::new();
    if out.is_dir() {
        walk(out, &mut found);
    }
    found
}

/// DuckDB's reading of the files the manifests under `out` list: the row
/// count, the distinct ids, and the SHA-256 of the rows as sorted canonical
/// JSON Lines (keys sorted, JSON text parsed, floats to 12 significant
/// digits; the hive `date` folder left out). Floats are rounded because an
/// average over a trace's spans (the summary's scores) adds the same floats
/// in another order when the spans come from other partitions, which moves
/// the last bit (0.4578947368421053 against 0.45789473684210513).
fn read_back(python: &str, out: &Path, format: &str) -> (u64, u64, String) {
    let files: Vec<String> = listed(out).into_iter().map(|k| format!("/{k}")).collect();
    let script = r#"
import hashlib, json, sys, duckdb
files, fmt = json.loads(sys.argv[1]), sys.argv[2]
reader = "read_parquet" if fmt == "parquet" else "read_json_auto"
con = duckdb.connect()
rel = con.sql(f"select * exclude (date) from {reader}({files!r}, hive_partitioning = true)")
cols = rel.columns
def rounded(v):
    if isinstance(v, float):
        return float(f"{v:.12g}")
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    if isinstance(v, list):
        return [rounded(x) for x in v]
    return v
def canon(v):
    if isinstance(v, str):
        try:
            parsed = json.loads(v)
            if isinstance(parsed, (dict, list)):
                return rounded(parsed)
        except ValueError:
            pass
    return rounded(v)
rows = [json.dumps({c: canon(v) for c, v in zip(cols, r)}, sort_keys=True, default=str) for r in rel.fetchall()]
ids = {json.loads(r)["id"] for r in rows}
rows.sort()
open(sys.argv[3], "w").write("\n".join(rows))
print(json.dumps([len(rows), len(ids), hashlib.sha256("\n".join(rows).encode()).hexdigest()]))
"#;
    let output = Command::new(python)
        .args([
            "-c",
            script,
            &serde_json::to_string(&files).unwrap(),
            format,
        ])
        .arg(out.with_extension("rows"))
        .output()
        .expect("run python with duckdb");
    assert!(
        output.status.success(),
        "duckdb failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value: Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        value[0].as_u64().unwrap(),
        value[1].as_u64().unwrap(),
        value[2].as_str().unwrap().to_string(),
    )
}

/// A query's rows as canonical JSON (keys sorted, floats to 12
/// significant digits: see [`read_back`]), sorted unless `ordered`.
fn answer(spanlake: &Spanlake, query: &str, engine: &str, ordered: bool) -> Vec<String> {
    let run = spanlake.run(["query", "--format", "jsonl", "--engine", engine, query]);
    let run = run.ok();
    let mut rows: Vec<String> = run
        .jsonl()
        .iter()
        .map(|row| serde_json::to_string(&canonical(row)).unwrap())
        .collect();
    if !ordered {
        rows.sort();
    }
    rows
}

fn canonical(value: &Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => {
            let rounded: f64 = format!("{:.11e}", n.as_f64().unwrap()).parse().unwrap();
            serde_json::json!(rounded)
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), canonical(v)))
                .collect::<std::collections::BTreeMap<_, _>>()
                .into_iter()
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// The fixture exported locally, and a cluster export's run started on a
/// cluster whose first executor pauses in its first sink task until `gate`
/// exists (two task slots each: Ballista 55 keeps a slot of a surviving
/// executor taken by a task whose status it ignores after the stage was
/// reset, and with a single slot the rerun tasks never started).
struct Gated {
    cluster: Cluster,
    /// The cluster export's folder.
    out: PathBuf,
    /// The local export's folder (written already).
    local: PathBuf,
    gate: PathBuf,
    /// `automation run cluster`, its output piped.
    run: Child,
}

impl Gated {
    fn start(spanlake: &Spanlake) -> Self {
        ingest_fixture(spanlake);
        let gate = spanlake.root().join("gate");
        let cluster = Cluster::start(
            spanlake.root(),
            2,
            &[
                vec![(
                    "SPANLAKE_TEST_PAUSE_AT",
                    format!("sink_partition:{}", gate.display()),
                )],
                Vec::new(),
            ],
        );
        let out = spanlake.root().join("out");
        let local = spanlake.root().join("local");
        spanlake.create_export("local", "spans", local.to_str().unwrap(), &[]);
        spanlake
            .run(["automation", "run", "local", "--project", "p"])
            .ok();
        spanlake.create_export(
            "cluster",
            "spans",
            out.to_str().unwrap(),
            &["--engine", &cluster.engine()],
        );
        let run = spanlake
            .command(["automation", "run", "cluster", "--project", "p"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let reached = PathBuf::from(format!("{}.reached", gate.display()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while !reached.exists() {
            assert!(
                Instant::now() < deadline,
                "the first executor's sink was never reached\n{}",
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            cluster,
            out,
            local,
            gate,
            run,
        }
    }
}

#[test]
fn cluster_exports_and_queries_on_two_executors_give_the_local_engines_rows() {
    let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let spanlake = Spanlake::new();
    ingest_fixture(&spanlake);
    let cluster = Cluster::start(spanlake.root(), 1, &[Vec::new(), Vec::new()]);
    let engine = cluster.engine();

    for (data, format) in [("spans", "parquet"), ("traces", "jsonl")] {
        let local = spanlake.root().join(format!("local-{data}"));
        let remote = spanlake.root().join(format!("cluster-{data}"));
        let format_flag = ["--format", format];
        spanlake.create_export(
            &format!("local-{data}"),
            data,
            local.to_str().unwrap(),
            &format_flag,
        );
        let mut flags = format_flag.to_vec();
        flags.extend(["--engine", &engine]);
        spanlake.create_export(
            &format!("cluster-{data}"),
            data,
            remote.to_str().unwrap(),
            &flags,
        );
        for name in [format!("local-{data}"), format!("cluster-{data}")] {
            let run = spanlake.run(["automation", "run", &name, "--project", "p"]);
            assert_eq!(run.code, 0, "{name}: {}\n{}", run.stderr, cluster.logs());
        }
        let (rows, ids, sha) = read_back(&python, &local, format);
        let shape = if data == "spans" { "spans" } else { "summary" };
        let count = spanlake
            .query_jsonl(&format!(
                "select: id | from: project_logs('p') {shape} | limit: 100000"
            ))
            .ok()
            .jsonl()
            .len() as u64;
        assert!(count > 50, "{data}: {count} rows");
        assert_eq!(rows, count, "{data}: every row of the view, once");
        assert_eq!(rows, ids, "{data}: one row per id");
        let cluster_read = read_back(&python, &remote, format);
        if cluster_read != (rows, ids, sha.clone()) {
            let here = std::fs::read_to_string(local.with_extension("rows")).unwrap();
            let there = std::fs::read_to_string(remote.with_extension("rows")).unwrap();
            let first = here
                .lines()
                .zip(there.lines())
                .find(|(a, b)| a != b)
                .unwrap_or_default();
            panic!(
                "{data}: the cluster's files hold other rows than the local export's: {cluster_read:?} vs {:?}\nlocal:   {}\ncluster: {}",
                (rows, ids, sha),
                first.0,
                first.1
            );
        }
        let remote_manifest = &manifests(&remote)[0];
        assert_eq!(remote_manifest["rows"], manifests(&local)[0]["rows"]);
        // Both executors wrote: files are named by the executor's Flight port.
        for (_, port) in &cluster.executors {
            let mark = format!("-e{port}-");
            assert!(
                listed(&remote).iter().any(|key| key.contains(&mark)),
                "{data}: no file of executor {port}: {:?}",
                listed(&remote)
            );
        }
        assert_eq!(
            data_files(&remote),
            listed(&remote),
            "{data}: only listed files"
        );
    }

    // Incremental on the cluster: new rows go out once, in a second manifest.
    let more = spanlake.write_file(
        "more.jsonl",
        r#"{"id":"new-1","created":"2024-11-12T01:00:00Z","input":"one more"}
{"id":"trace-001","_is_merge":true,"metadata":{"again":true}}
"#,
    );
    spanlake.ingest("p", &more);
    spanlake
        .run(["automation", "run", "cluster-spans", "--project", "p"])
        .ok();
    let remote = spanlake.root().join("cluster-spans");
    let all = manifests(&remote);
    assert_eq!(all.len(), 2, "a second run");
    let second = all
        .iter()
        .find(|m| m["cursor_from"] != Value::Null)
        .unwrap();
    assert_eq!(second["rows"], 2, "the new row and the merged one");
    assert_eq!(data_files(&remote), listed(&remote));

    // BTQL: a filter, the summary shape and an aggregation answer the same.
    let local = "local".to_string();
    for (query, ordered) in [
        (
            "select: id, metadata, metrics.tokens as tokens | from: project_logs('p') spans | filter: metrics.tokens > 250 and span_attributes.type = 'llm' | sort: id",
            true,
        ),
        (
            "select: * | from: project_logs('p') summary | sort: id | limit: 25",
            true,
        ),
        (
            "dimensions: span_attributes.type as type, metadata.model as model | measures: count(1) as n, sum(metrics.tokens) as tokens, avg(scores.quality) as quality | from: project_logs('p') spans",
            false,
        ),
    ] {
        let here = answer(&spanlake, query, &local, ordered);
        assert!(!here.is_empty(), "{query}");
        assert_eq!(
            answer(&spanlake, query, &engine, ordered),
            here,
            "{query}\n{}",
            cluster.logs()
        );
    }
}

#[test]
fn cluster_losing_an_executor_mid_export_leaves_every_row_once_and_no_unlisted_file() {
    let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let spanlake = Spanlake::new();
    // The first executor stops in its first sink task until the test kills it.
    let Gated {
        mut cluster,
        out,
        local,
        mut run,
        ..
    } = Gated::start(&spanlake);
    let (mut killed, _) = cluster.executors.remove(0);
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();

    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not end after its executor was killed\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = run.wait_with_output().unwrap();
    eprintln!(
        "the run that lost an executor {}: {}",
        if status.success() {
            "completed"
        } else {
            "failed"
        },
        String::from_utf8_lossy(&output.stderr).trim()
    );
    if !status.success() {
        // It failed cleanly: nothing committed, no file left; a rerun on
        // the remaining executor commits.
        assert!(manifests(&out).is_empty(), "a failed run commits nothing");
        assert!(
            data_files(&out).is_empty(),
            "a failed run leaves no file: {:?}\n{}",
            data_files(&out),
            String::from_utf8_lossy(&output.stderr)
        );
        spanlake
            .run(["automation", "run", "cluster", "--project", "p"])
            .ok();
    }
    assert_eq!(manifests(&out).len(), 1, "one committed run");
    assert_eq!(
        data_files(&out),
        listed(&out),
        "no file outside the manifest (a killed task's files were deleted)"
    );
    let (rows, ids, sha) = read_back(&python, &local, "parquet");
    assert_eq!(
        read_back(&python, &out, "parquet"),
        (rows, ids, sha),
        "every row exactly once"
    );
    // Nothing new: a further run commits nothing more.
    spanlake
        .run(["automation", "run", "cluster", "--project", "p"])
        .ok();
    assert_eq!(manifests(&out).len(), 1);
}

#[test]
fn cluster_a_killed_coordinators_job_is_cancelled_by_the_next_run_and_every_row_goes_once() {
    let Some(python) = service("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let spanlake = Spanlake::new();
    // The first executor holds its sink tasks until the gate opens.
    let Gated {
        cluster,
        out,
        local,
        gate,
        run: mut coordinator,
    } = Gated::start(&spanlake);
    coordinator.kill().unwrap();
    coordinator.wait().unwrap();
    // Its job would go on writing the old run's files once the gate opens.
    std::fs::write(&gate, b"").unwrap();

    let rerun = spanlake.run(["automation", "run", "cluster", "--project", "p"]);
    assert_eq!(rerun.code, 0, "{}\n{}", rerun.stderr, cluster.logs());
    assert!(
        rerun.stdout.contains("cancelled job") || rerun.stderr.contains("cancelled job"),
        "the recovery cancels the dead coordinator's job\n--- stdout\n{}--- stderr\n{}",
        rerun.stdout,
        rerun.stderr
    );
    // Time for anything the old job could still write to land.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(manifests(&out).len(), 1, "one committed run");
    assert_eq!(
        data_files(&out),
        listed(&out),
        "no file outside the manifest: the old job's were stopped and deleted"
    );
    let (rows, ids, sha) = read_back(&python, &local, "parquet");
    assert_eq!(read_back(&python, &out, "parquet"), (rows, ids, sha));
}
