//! Helpers shared by the integration tests: a fresh data directory and a way
//! to run the `spanlake` binary against it.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The `spanlake` binary built for this test run.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_spanlake");

/// `tests/` of the workspace.
pub(crate) fn tests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests")
}

/// `tests/fixtures/`.
pub(crate) fn fixtures_dir() -> PathBuf {
    tests_dir().join("fixtures")
}

/// What one run of the binary did.
#[derive(Debug)]
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    fn from_output(output: Output) -> Self {
        Self {
            // A signal has no code; -1 never matches an expected code.
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// Panics with the whole run unless the exit code is `code`.
    #[track_caller]
    pub(crate) fn expect_code(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit code {code}, got {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    /// Panics unless the exit code is 0.
    #[track_caller]
    pub(crate) fn ok(self) -> Self {
        self.expect_code(0)
    }

    /// Parse stdout as JSON Lines.
    #[track_caller]
    pub(crate) fn jsonl(&self) -> Vec<serde_json::Value> {
        self.stdout
            .lines()
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", self.stdout))
            })
            .collect()
    }
}

/// A temporary data directory and the commands that use it.
#[derive(Debug)]
pub(crate) struct Spanlake {
    dir: tempfile::TempDir,
}

impl Spanlake {
    pub(crate) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("create a temp dir"),
        }
    }

    /// The temp directory (the data dir is `data/` inside it).
    pub(crate) fn root(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A bare command: no `--data-dir`, no inherited `SPANLAKE_*` variables,
    /// run inside the temp dir (so a default `./spanlake-data` stays there).
    pub(crate) fn bare_command(&self) -> Command {
        let mut command = Command::new(BIN);
        command
            .current_dir(self.dir.path())
            .env_remove("SPANLAKE_DATA_DIR")
            .env_remove("SPANLAKE_LOG")
            .env("SPANLAKE_TEST_CLOCK", self.clock_file())
            .stdin(Stdio::null());
        command
    }

    /// The file of the test clock every command of this data directory
    /// reads (the engine's `clock` module): milliseconds added to the
    /// system's time; none yet, no shift.
    fn clock_file(&self) -> PathBuf {
        self.dir.path().join("test-clock-ms")
    }

    /// Move the time of every command of this data directory forward by
    /// `by`, at once (instead of sleeping).
    pub(crate) fn advance_clock(&self, by: std::time::Duration) {
        let file = self.clock_file();
        let shift: u128 = std::fs::read_to_string(&file)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        std::fs::write(&file, (shift + by.as_millis()).to_string()).expect("write the test clock");
    }

    /// `spanlake --data-dir DIR <args>`.
    pub(crate) fn command<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = self.bare_command();
        command.arg("--data-dir").arg(self.data_dir()).args(args);
        command
    }

    pub(crate) fn run<I, S>(&self, args: I) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let output = self
            .command(args)
            .output()
            .expect("run the spanlake binary");
        Run::from_output(output)
    }

    /// Run with `stdin` piped in.
    pub(crate) fn run_with_stdin<I, S>(&self, args: I, stdin: &str) -> Run
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        run_command_with_stdin(self.command(args), stdin)
    }

    /// Write `text` to a file in the temp dir; returns its path.
    pub(crate) fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write a temp file");
        path
    }

    /// Ingest `file` into `project`, asserting success.
    #[track_caller]
    pub(crate) fn ingest(&self, project: &str, file: &Path) -> Run {
        let run = self.run([
            "ingest".as_ref(),
            "--project".as_ref(),
            project.as_ref(),
            file.as_os_str(),
        ]);
        assert_eq!(
            run.code,
            0,
            "ingest of {} failed\n--- stdout\n{}--- stderr\n{}",
            file.display(),
            run.stdout,
            run.stderr
        );
        run
    }

    /// `automation create-export --project p --name NAME --data DATA --to TO
    /// <extra>`, asserting success.
    #[track_caller]
    pub(crate) fn create_export(&self, name: &str, data: &str, to: &str, extra: &[&str]) -> Run {
        let mut args = vec![
            "automation",
            "create-export",
            "--project",
            "p",
            "--name",
            name,
            "--data",
            data,
            "--to",
            to,
        ];
        args.extend_from_slice(extra);
        self.run(args).ok()
    }

    /// Run a query with `--format jsonl`.
    pub(crate) fn query_jsonl(&self, query: &str) -> Run {
        self.run(["query", "--format", "jsonl", query])
    }
}

/// Run `command` with `stdin` written to its standard input.
pub(crate) fn run_command_with_stdin(mut command: Command, stdin: &str) -> Run {
    command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn the spanlake binary");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    let text = stdin.to_owned();
    // Write from another thread so a child that fills its stdout pipe first
    // cannot deadlock us.
    let writer = std::thread::spawn(move || {
        let _ = pipe.write_all(text.as_bytes());
    });
    let output = child.wait_with_output().expect("wait for spanlake");
    writer.join().expect("stdin writer thread");
    Run::from_output(output)
}

/// Create a bucket on the S3-compatible test server (moto accepts an
/// unsigned `PUT /bucket`).
pub(crate) fn create_bucket(endpoint: &str, bucket: &str) {
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).expect("connect to the S3 server");
    write!(
        stream,
        "PUT /{bucket} HTTP/1.1\r\nHost: {address}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
}

/// The value of the environment variable of a test service (set by
/// `scripts/test`), or `None` with a notice; with `SPANLAKE_REQUIRE_SERVICES`
/// set, a missing one fails the test.
pub(crate) fn service_var(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(value) => Some(value),
        Err(_) => {
            assert!(
                std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
                "SPANLAKE_REQUIRE_SERVICES is set but {name} is not: run the tests with scripts/test"
            );
            eprintln!("skipped: {name} is unset (scripts/test sets it)");
            None
        }
    }
}

/// Run `sql` in DuckDB (through `python`, `$SPANLAKE_DUCKDB_PYTHON`) and
/// return the rows as JSON.
pub(crate) fn duckdb_rows(python: &str, sql: &str) -> serde_json::Value {
    let script = r#"
import json, sys, duckdb
rows = duckdb.connect().execute(sys.argv[1]).fetchall()
print(json.dumps(rows, default=str))
"#;
    let output = Command::new(python)
        .args(["-c", script, sql])
        .output()
        .expect("run python with duckdb");
    assert!(
        output.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("duckdb printed JSON")
}

/// Total size of the files under `path`, recursively.
pub(crate) fn dir_bytes(path: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(path).expect("read a directory") {
        let entry = entry.expect("a directory entry");
        let meta = entry.metadata().expect("file metadata");
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

impl Spanlake {
    /// The Delta table directory of the only project of the data dir.
    pub(crate) fn only_table_dir(&self) -> PathBuf {
        let projects = self.data_dir().join("projects");
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(&projects)
            .expect("the projects directory")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        assert_eq!(
            dirs.len(),
            1,
            "expected one project in {}",
            projects.display()
        );
        dirs.pop().expect("one project").join("logs")
    }
}

/// The data files that the latest version of the Delta table at `table`
/// references, from its JSON commits (adds minus removes, in version order).
pub(crate) fn delta_live_files(table: &Path) -> std::collections::BTreeSet<String> {
    let log = table.join("_delta_log");
    let mut commits: Vec<PathBuf> = std::fs::read_dir(&log)
        .expect("the Delta log")
        .map(|e| e.expect("a log entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    commits.sort();
    let mut live = std::collections::BTreeSet::new();
    for commit in commits {
        let text = std::fs::read_to_string(&commit).expect("read a commit");
        for line in text.lines() {
            let action: serde_json::Value = serde_json::from_str(line).expect("a JSON action");
            if let Some(path) = action["add"]["path"].as_str() {
                live.insert(path.to_string());
            }
            if let Some(path) = action["remove"]["path"].as_str() {
                live.remove(path);
            }
        }
    }
    live
}

/// The data files on disk under the Delta table at `table` (not the log).
pub(crate) fn delta_disk_files(table: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(table)
        .expect("the table directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}
