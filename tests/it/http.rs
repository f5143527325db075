//! A running `spanlake serve` for HTTP tests: start on a port the system
//! chose, plain HTTP/1.1 calls, API keys and projects.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};

use crate::support::{Spanlake, create_bucket, service_var};

/// A running `spanlake serve` on a port the system chose, stopped on drop.
pub(crate) struct Server {
    pub(crate) child: Child,
    pub(crate) address: String,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Server {
    pub(crate) fn start(spanlake: &Spanlake, extra: &[&str]) -> Self {
        Self::start_command(
            spanlake.command(
                ["serve", "--listen", "127.0.0.1:0"]
                    .iter()
                    .chain(extra)
                    .copied(),
            ),
        )
    }

    /// Start `command`, a `spanlake serve` on port 0 made by the caller
    /// (with an environment of its own, e.g. other AWS keys).
    pub(crate) fn start_command(mut command: std::process::Command) -> Self {
        let mut child = command
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("start spanlake serve");
        let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
        let mut address = None;
        let mut seen = String::new();
        for _ in 0..50 {
            let mut line = String::new();
            if stderr.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            seen.push_str(&line);
            if let Some(rest) = line.trim().strip_prefix("HTTP API listening on http://") {
                address = Some(rest.to_string());
                break;
            }
        }
        let address = address.unwrap_or_else(|| panic!("the server did not start:\n{seen}"));
        // Keep draining stderr so the server never blocks on a full pipe,
        // keeping what it says for `log()`.
        let log = std::sync::Arc::new(std::sync::Mutex::new(seen));
        let kept = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).unwrap_or(0) > 0 {
                kept.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        Self {
            child,
            address,
            log,
        }
    }

    /// What the server wrote to its stderr so far (its log).
    pub(crate) fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// One HTTP/1.1 request; status and parsed JSON body (`Null` if none).
    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &str,
    ) -> (u16, serde_json::Value) {
        let (status, _, body) = self.raw(method, path, key, body.as_bytes());
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "not JSON ({e}) from {method} {path}: {}",
                    String::from_utf8_lossy(&body)
                )
            })
        };
        (status, json)
    }

    /// One HTTP/1.1 request: status, headers (lowercase names), body.
    pub(crate) fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut stream = TcpStream::connect(&self.address).expect("connect to the server");
        let auth = key.map_or_else(String::new, |k| format!("Authorization: Bearer {k}\r\n"));
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.address,
            body.len()
        )
        .unwrap();
        stream.write_all(body).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).expect("read the answer");
        let split = reply
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("an HTTP answer");
        let head = String::from_utf8_lossy(&reply[..split]).into_owned();
        let mut lines = head.lines();
        let status: u16 = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        assert!(
            !headers
                .iter()
                .any(|(k, v)| k == "transfer-encoding" && v == "chunked"),
            "chunked answers are not expected"
        );
        (status, headers, reply[split + 4..].to_vec())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn api_key(spanlake: &Spanlake, org: &str) -> String {
    let run = spanlake.run(["apikey", "create", "--org", org]).ok();
    let key = run.stdout.lines().last().expect("a key").trim().to_string();
    assert!(key.starts_with("sl-"), "{}", run.stdout);
    key
}

pub(crate) fn create_project(server: &Server, key: &str, name: &str) -> String {
    let (status, project) = server.call(
        "POST",
        "/v1/project",
        Some(key),
        &serde_json::json!({ "name": name }).to_string(),
    );
    assert_eq!(status, 200, "{project}");
    project["id"].as_str().expect("project id").to_string()
}

/// An experiment or dataset (`kind`) named `name` of `project`, created
/// over `POST /v1/{kind}`; its id.
pub(crate) fn create_object(
    server: &Server,
    key: &str,
    kind: &str,
    project: &str,
    name: &str,
) -> String {
    let (status, object) = server.call(
        "POST",
        &format!("/v1/{kind}"),
        Some(key),
        &serde_json::json!({ "project_id": project, "name": name }).to_string(),
    );
    assert_eq!(status, 200, "{object}");
    object["id"].as_str().expect("object id").to_string()
}

/// Run the SDK script `tests/sdk/<script>` (`$SPANLAKE_DUCKDB_PYTHON`)
/// against a new `spanlake serve` whose API exports may write to
/// `s3://<bucket>/` on the S3 server of `scripts/test`
/// (`$SPANLAKE_S3_ENDPOINT`, the bucket created), with an API key of org
/// `org`, the SDK's environment pointing at the server and `env` besides:
/// the data directory (the server stopped) and the JSON summary the script
/// prints. It fails on a failed script, and on the tracebacks, dropped
/// batches and failed summaries the SDK prints but swallows. `None` when
/// the services are not there (see [`service_var`]).
pub(crate) fn sdk_end_to_end(
    org: &str,
    bucket: &str,
    script: &str,
    env: &[(&str, &str)],
) -> Option<(Spanlake, serde_json::Value)> {
    let python = service_var("SPANLAKE_DUCKDB_PYTHON")?;
    let endpoint = service_var("SPANLAKE_S3_ENDPOINT")?;
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, org);
    let allowed = format!("s3://{bucket}/");
    let server = Server::start(
        &spanlake,
        &["--allow-export-to", &allowed, "--allow-endpoint", &endpoint],
    );
    create_bucket(&endpoint, bucket);
    let output = std::process::Command::new(python)
        .arg(crate::support::tests_dir().join("sdk").join(script))
        .env("BRAINTRUST_APP_URL", server.url())
        .env("BRAINTRUST_API_URL", server.url())
        .env("BRAINTRUST_API_KEY", &key)
        .env("E2E_BUCKET", bucket)
        .env("SPANLAKE_S3_ENDPOINT", &endpoint)
        .envs(env.iter().copied())
        .output()
        .expect("run the SDK script");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "SDK script failed\n--- stdout\n{}\n--- stderr\n{stderr}\n--- server\n{}",
        String::from_utf8_lossy(&output.stdout),
        server.log()
    );
    for sign in ["Traceback", "Dropping", "Failed to fetch"] {
        assert!(!stderr.contains(sign), "{stderr}");
    }
    let summary = serde_json::from_slice(&output.stdout).expect("the script's JSON summary");
    drop(server);
    Some((spanlake, summary))
}

pub(crate) fn logs3_body(project: &str, rows: &[serde_json::Value]) -> String {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| {
            let mut row = row.clone();
            row["project_id"] = project.into();
            row["log_id"] = "g".into();
            row
        })
        .collect();
    serde_json::json!({ "rows": rows, "api_version": 2 }).to_string()
}
