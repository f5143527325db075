//! The destinations policy of `spanlake serve` (issue 14, DESIGN decision
//! 10): exports created or changed over the API write only where the
//! operator allows (`--allow-export-to`, `--allow-endpoint`), through a role
//! otherwise; refusals are 403s naming the rule and the flag, with nothing
//! written and no request to the refused host; scheduled runs are checked
//! again; the CLI keeps its freedom.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::http::{Server, api_key, create_project, logs3_body};
use crate::support::{Spanlake, create_bucket, fixtures_dir, service_var};

/// `n` rows for `/logs3`.
fn rows(n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| serde_json::json!({"id": format!("r{i}"), "created": "2026-11-01T00:00:00Z", "input": i}))
        .collect()
}

fn log_rows(server: &Server, key: &str, project: &str, n: usize) {
    let (status, body) = server.call("POST", "/logs3", Some(key), &logs3_body(project, &rows(n)));
    assert_eq!(status, 200, "{body}");
}

/// `POST /v1/project_automation` of an export.
fn create_export(
    server: &Server,
    key: &str,
    project: &str,
    name: &str,
    config: serde_json::Value,
) -> (u16, serde_json::Value) {
    server.call(
        "POST",
        "/v1/project_automation",
        Some(key),
        &serde_json::json!({"project_id": project, "name": name, "kind": "export", "config": config})
            .to_string(),
    )
}

/// Create an export (asserting 200) and pause it at once, so that the
/// server's scheduler leaves it to the test's own `run` calls (it may have
/// run it once before the pause: create it before its rows arrive).
fn create_paused(
    server: &Server,
    key: &str,
    project: &str,
    name: &str,
    config: serde_json::Value,
) -> String {
    let (status, automation) = create_export(server, key, project, name, config);
    assert_eq!(status, 200, "{automation}");
    assert_eq!(automation["origin"], "api", "{automation}");
    let id = automation["id"].as_str().unwrap().to_string();
    let (status, paused) = server.call(
        "PATCH",
        &format!("/v1/project_automation/{id}"),
        Some(key),
        r#"{"status": "paused"}"#,
    );
    assert_eq!(status, 200, "{paused}");
    id
}

/// The error message of a refusal, asserting it is a 403 of the policy.
#[track_caller]
fn refusal(answer: &(u16, serde_json::Value)) -> String {
    let (status, body) = answer;
    assert_eq!(*status, 403, "{body}");
    assert_eq!(body["error"]["code"], "destination_refused", "{body}");
    let message = body["error"]["message"].as_str().unwrap().to_string();
    assert!(message.contains("nothing was written"), "{message}");
    message
}

/// Every file under `dir` (none if it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_under(&path));
        } else {
            found.push(path);
        }
    }
    found
}

/// Lines of the exported JSON Lines files under `dir`.
fn exported_lines(dir: &Path) -> usize {
    files_under(dir)
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .map(|p| std::fs::read_to_string(p).unwrap().lines().count())
        .sum()
}

fn file_url(path: &Path) -> String {
    format!("file://{}", path.display())
}

/// Whether anything connected to `listener` (non-blocking accept).
fn was_contacted(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    }
}

#[test]
fn file_exports_over_rest_are_refused_and_write_nothing() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let ok = spanlake.root().join("ok");
    let allow = format!("{}/", file_url(&ok));
    let server = Server::start(&spanlake, &["--allow-export-to", &allow]);
    let project = create_project(&server, &key, "dest");
    let allowed_url = file_url(&ok.join("exports"));
    let id = create_paused(
        &server,
        &key,
        &project,
        "allowed",
        serde_json::json!({"data": "spans", "export_path": allowed_url, "format": "jsonl"}),
    );
    log_rows(&server, &key, &project, 3);

    let evil = spanlake.root().join("evil");
    let url = file_url(&evil.join("deep"));
    let message = refusal(&create_export(
        &server,
        &key,
        &project,
        "to-disk",
        serde_json::json!({"data": "spans", "export_path": url, "format": "jsonl"}),
    ));
    assert!(
        message.contains(&format!(
            "export_path `{url}`: local destinations are refused for exports created over the API; the operator can allow a prefix with `spanlake serve --allow-export-to {url}/`"
        )),
        "{message}"
    );
    let answer = create_export(
        &server,
        &key,
        &project,
        "to-disk",
        serde_json::json!({"data": "spans", "export_path": url, "format": "jsonl"}),
    );
    assert_eq!(
        answer.1["error"]["details"][0]["rule"], "local_destination",
        "{}",
        answer.1
    );
    // A bare path, a sibling that shares the allowed prefix's first
    // characters, and `..` out of the allowed prefix are refused too.
    let okay = spanlake.root().join("okay");
    for path in [
        evil.display().to_string(),
        file_url(&okay),
        format!("{}/../evil", file_url(&ok)),
        format!("{}/%2e%2e/evil", file_url(&ok)),
    ] {
        let answer = create_export(
            &server,
            &key,
            &project,
            "sneaky",
            serde_json::json!({"data": "spans", "export_path": path, "format": "jsonl"}),
        );
        let message = refusal(&answer);
        assert!(message.contains("export_path"), "{message}");
    }
    let (_, list) = server.call("GET", "/v1/project_automation", Some(&key), "");
    assert_eq!(list["objects"].as_array().unwrap().len(), 1, "{list}");

    // PATCH of an allowed export to a refused destination: refused, the
    // stored configuration stays.
    let message = refusal(&server.call(
        "PATCH",
        &format!("/v1/project_automation/{id}"),
        Some(&key),
        &serde_json::json!({"config": {"data": "spans", "export_path": file_url(&evil), "format": "jsonl"}})
            .to_string(),
    ));
    assert!(
        message.contains("local destinations are refused"),
        "{message}"
    );
    let (_, stored) = server.call(
        "GET",
        &format!("/v1/project_automation/{id}"),
        Some(&key),
        "",
    );
    assert_eq!(
        stored["config"]["export_path"],
        allowed_url.as_str(),
        "{stored}"
    );
    let (status, run) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/run"),
        Some(&key),
        "",
    );
    assert_eq!(
        (status, &run["rows"]),
        (200, &serde_json::json!(3)),
        "{run}"
    );

    assert!(
        !evil.exists(),
        "a refused export created {}",
        evil.display()
    );
    assert!(!okay.exists());
    assert_eq!(exported_lines(&ok), 3, "the allowed export still runs");
}

#[test]
fn link_local_and_loopback_endpoints_are_refused_without_a_connection() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    // A listener no request may reach.
    let trap = TcpListener::bind("127.0.0.1:0").unwrap();
    let trap_url = format!("http://{}", trap.local_addr().unwrap());
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "dest");
    log_rows(&server, &key, &project, 2);
    let role = "arn:aws:iam::123456789012:role/export";
    for (endpoint, class) in [
        (
            "http://169.254.169.254",
            "link-local (169.254.0.0/16) address",
        ),
        ("http://[fe80::1]:9000", "link-local (fe80::/10) address"),
        (trap_url.as_str(), "loopback address"),
        ("http://localhost:9", "loopback address"),
        ("http://10.0.0.7:9000", "private address"),
        ("https://s3.example.com", "custom endpoints are refused"),
    ] {
        let message = refusal(&create_export(
            &server,
            &key,
            &project,
            "metadata",
            serde_json::json!({"data": "spans", "export_path": "s3://bucket/p", "role_arn": role, "endpoint": endpoint}),
        ));
        assert!(
            message.contains(&format!("endpoint `{endpoint}`: ")) && message.contains(class),
            "{endpoint}: {message}"
        );
        assert!(
            message.contains(&format!("spanlake serve --allow-endpoint {endpoint}`")),
            "{endpoint}: {message}"
        );
    }
    drop(server);

    // Allowed, it is stored; once the flag is gone, `test` and `run` are
    // refused before any request.
    let allowed = Server::start(&spanlake, &["--allow-endpoint", &trap_url]);
    let id = create_paused(
        &allowed,
        &key,
        &project,
        "trap",
        serde_json::json!({"data": "spans", "export_path": "s3://bucket/p", "role_arn": role, "endpoint": trap_url}),
    );
    drop(allowed);
    // The scheduler of the first server may have tried it before the pause:
    // only what comes after counts.
    while was_contacted(&trap) {}
    let server = Server::start(&spanlake, &[]);
    for step in ["test", "run"] {
        let message = refusal(&server.call(
            "POST",
            &format!("/v1/project_automation/{id}/{step}"),
            Some(&key),
            "",
        ));
        assert!(message.contains("loopback address"), "{step}: {message}");
    }
    assert!(!was_contacted(&trap), "a refused endpoint was contacted");
}

#[test]
fn an_allowed_prefix_is_created_tested_and_run() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let ok = spanlake.root().join("ok");
    let server = Server::start(
        &spanlake,
        &["--allow-export-to", &format!("{}/", file_url(&ok))],
    );
    let project = create_project(&server, &key, "dest");
    let id = create_paused(
        &server,
        &key,
        &project,
        "local",
        serde_json::json!({"data": "spans", "export_path": file_url(&ok.join("team-a")), "format": "jsonl"}),
    );
    log_rows(&server, &key, &project, 5);
    let (status, test) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/test"),
        Some(&key),
        "",
    );
    assert_eq!(
        (status, &test["ok"]),
        (200, &serde_json::json!(true)),
        "{test}"
    );
    let (status, run) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/run"),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{run}");
    assert_eq!(run["rows"], 5, "{run}");
    assert_eq!(exported_lines(&ok.join("team-a")), 5);
}

#[test]
fn ambient_credentials_only_under_an_allowed_prefix() {
    let Some(endpoint) = service_var("SPANLAKE_S3_ENDPOINT") else {
        return;
    };
    let bucket = "dest-ambient";
    create_bucket(&endpoint, bucket);
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(
        &spanlake,
        &[
            "--allow-export-to",
            &format!("s3://{bucket}/team-a/"),
            "--allow-endpoint",
            &endpoint,
        ],
    );
    let project = create_project(&server, &key, "dest");
    for path in [
        format!("s3://{bucket}/team-b/x"),
        format!("s3://{bucket}/team-ab/x"),
        format!("s3://{bucket}/team-a/../team-b"),
        format!("s3://other-{bucket}/team-a/x"),
    ] {
        let message = refusal(&create_export(
            &server,
            &key,
            &project,
            "ambient",
            serde_json::json!({"data": "spans", "export_path": path, "format": "jsonl", "endpoint": endpoint}),
        ));
        assert!(
            message.contains(&format!("export_path `{path}`: ")),
            "{message}"
        );
        if !path.contains("..") {
            assert!(
                message.contains("the server's own credentials")
                    && message.contains("role_arn")
                    && message.contains(&format!("--allow-export-to {path}/`")),
                "{message}"
            );
        }
    }
    let path = format!("s3://{bucket}/team-a/x");
    let id = create_paused(
        &server,
        &key,
        &project,
        "ambient",
        serde_json::json!({"data": "spans", "export_path": path, "format": "jsonl", "endpoint": endpoint}),
    );
    log_rows(&server, &key, &project, 4);
    let (_, test) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/test"),
        Some(&key),
        "",
    );
    assert_eq!(test["ok"], true, "{test}");
    let (status, run) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/run"),
        Some(&key),
        "",
    );
    assert_eq!(
        (status, &run["rows"]),
        (200, &serde_json::json!(4)),
        "{run}"
    );
}

/// Everything moto recorded, as text.
fn moto_data(endpoint: &str) -> String {
    use std::io::{Read, Write};
    let address = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    write!(
        stream,
        "GET /moto-api/data.json HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    reply
}

#[test]
fn a_role_export_to_an_allowed_endpoint_works_and_errors_are_summaries() {
    let Some(endpoint) = service_var("SPANLAKE_S3_ENDPOINT") else {
        return;
    };
    let bucket = "dest-role";
    create_bucket(&endpoint, bucket);
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let role = "arn:aws:iam::123456789012:role/dest-export";
    let config = |path: &str| serde_json::json!({"data": "spans", "export_path": path, "format": "jsonl", "role_arn": role, "endpoint": endpoint});
    // Without the flag, the endpoint (plain http, loopback) is refused.
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "dest");
    let (_, project_doc) = server.call("GET", &format!("/v1/project/{project}"), Some(&key), "");
    let org_id = project_doc["org_id"].as_str().unwrap().to_string();
    let message = refusal(&create_export(
        &server,
        &key,
        &project,
        "role",
        config(&format!("s3://{bucket}/p")),
    ));
    assert!(
        message.contains(&format!("--allow-endpoint {endpoint}`")),
        "{message}"
    );
    drop(server);

    let server = Server::start(&spanlake, &["--allow-endpoint", &endpoint]);
    let id = create_paused(
        &server,
        &key,
        &project,
        "role",
        config(&format!("s3://{bucket}/p")),
    );
    let id = id.as_str();
    log_rows(&server, &key, &project, 3);
    let (_, test) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/test"),
        Some(&key),
        "",
    );
    assert_eq!(test["ok"], true, "{test}");
    let external_id = format!("spanlake:{org_id}:{project}:{id}");
    assert!(
        test["steps"][0]["message"]
            .as_str()
            .unwrap()
            .contains(&external_id),
        "{test}"
    );
    let (status, run) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/run"),
        Some(&key),
        "",
    );
    assert_eq!(
        (status, &run["rows"]),
        (200, &serde_json::json!(3)),
        "{run}"
    );
    // The role was assumed with the external id that names the org.
    assert!(
        moto_data(&endpoint).contains(&external_id),
        "moto did not record `{external_id}`"
    );

    // A bucket that does not exist: the write step says so in a summary,
    // without the reply's XML.
    let missing_id = create_paused(
        &server,
        &key,
        &project,
        "missing",
        config("s3://dest-no-such-bucket/p"),
    );
    let missing_id = missing_id.as_str();
    let (_, test) = server.call(
        "POST",
        &format!("/v1/project_automation/{missing_id}/test"),
        Some(&key),
        "",
    );
    assert_eq!(test["ok"], false, "{test}");
    let write = test["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "write")
        .unwrap_or_else(|| panic!("no write step: {test}"));
    let text = write["message"].as_str().unwrap();
    assert!(
        text.contains("HTTP 404") && text.contains("NoSuchBucket"),
        "{text}"
    );
    assert!(text.contains("check the bucket name"), "{text}");
    for raw in ["<?xml", "<Error>", "<Message>", "<BucketName>", "RequestId"] {
        assert!(!text.contains(raw), "the reply's body leaked: {text}");
    }
    // The failed run in the history is a summary too.
    let (status, run) = server.call(
        "POST",
        &format!("/v1/project_automation/{missing_id}/run"),
        Some(&key),
        "",
    );
    assert_eq!(status, 400, "{run}");
    let (_, history) = server.call(
        "GET",
        &format!("/v1/project_automation/{missing_id}/history"),
        Some(&key),
        "",
    );
    let shown = format!("{run}{history}");
    assert!(shown.contains("NoSuchBucket"), "{shown}");
    for raw in ["<?xml", "<Error>", "<Message>", "RequestId"] {
        assert!(!shown.contains(raw), "the reply's body leaked: {shown}");
    }
}

#[test]
fn a_scheduled_run_whose_destination_is_no_longer_allowed_fails_and_writes_nothing() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let ok = spanlake.root().join("ok");
    let destination = ok.join("scheduled");
    let project;
    let id;
    {
        let server = Server::start(
            &spanlake,
            &["--allow-export-to", &format!("{}/", file_url(&ok))],
        );
        project = create_project(&server, &key, "dest");
        let (status, automation) = create_export(
            &server,
            &key,
            &project,
            "scheduled",
            serde_json::json!({"data": "spans", "export_path": file_url(&destination), "format": "jsonl", "interval": "1m"}),
        );
        assert_eq!(status, 200, "{automation}");
        id = automation["id"].as_str().unwrap().to_string();
    }
    // Restarted without the flag: rows arrive, the scheduler's run is refused.
    let server = Server::start(&spanlake, &[]);
    log_rows(&server, &key, &project, 4);
    let deadline = Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let (_, history) = server.call(
            "GET",
            &format!("/v1/project_automation/{id}/history"),
            Some(&key),
            "",
        );
        if let Some(run) = history["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["status"] == "failed")
        {
            break run.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no failed run recorded: {history}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(failed["trigger"], "schedule", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("local destinations are refused")
            && error.contains(&format!("--allow-export-to {}/", file_url(&destination)))
            && error.contains("nothing was written"),
        "{error}"
    );
    assert_eq!(failed["rows"], 0, "{failed}");
    assert!(
        files_under(&ok).is_empty(),
        "a refused run wrote {:?}",
        files_under(&ok)
    );
}

#[test]
fn the_cli_creates_and_runs_file_exports_freely() {
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let out = spanlake.root().join("cli-out");
    spanlake.create_export(
        "mine",
        "spans",
        &file_url(&out),
        &["--format", "jsonl", "--interval", "1m"],
    );
    // The scheduler of a server without any flag runs it (its origin is the CLI).
    spanlake.run(["serve", "--once"]).ok();
    assert_eq!(exported_lines(&out), 13);
    let (status, history) = {
        let key = api_key(&spanlake, "local");
        let server = Server::start(&spanlake, &[]);
        let (_, list) = server.call("GET", "/v1/project_automation", Some(&key), "");
        let automation = list["objects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == "mine")
            .unwrap_or_else(|| panic!("{list}"))
            .clone();
        assert_eq!(automation["origin"], "cli", "{automation}");
        let id = automation["id"].as_str().unwrap();
        // Its run over the API is the owner's destination too.
        server.call(
            "POST",
            &format!("/v1/project_automation/{id}/run"),
            Some(&key),
            "",
        )
    };
    assert_eq!(status, 200, "{history}");
    let run = spanlake
        .run(["automation", "run", "mine", "--project", "p", "--json"])
        .ok();
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report["rows"], 0, "{report}");
}

#[test]
fn bad_allow_flags_stop_serve_with_the_flag_named() {
    let spanlake = Spanlake::new();
    for (flag, value, says) in [
        (
            "--allow-export-to",
            "file:///srv/../etc",
            "`..` segments are not allowed",
        ),
        ("--allow-export-to", "s3://", "no bucket"),
        (
            "--allow-endpoint",
            "ftp://files.example.com",
            "is not `http` or `https`",
        ),
        ("--allow-endpoint", "http://minio:9000/bucket", "no path"),
    ] {
        let run = spanlake
            .run(["serve", "--once", flag, value])
            .expect_code(2);
        assert!(
            run.stderr.contains(&format!("{flag} `{value}`: ")) && run.stderr.contains(says),
            "{}",
            run.stderr
        );
    }
}

#[test]
fn an_api_export_runs_on_a_cluster_only_when_the_operator_allows_it() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let ok = spanlake.root().join("ok");
    let allow = format!("{}/", file_url(&ok));
    // A listener that must never be contacted: the refused scheduler.
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    refused.set_nonblocking(true).unwrap();
    let refused_engine = format!("ballista://{}", refused.local_addr().unwrap());
    let server = Server::start(
        &spanlake,
        &[
            "--allow-export-to",
            &allow,
            "--allow-engine",
            "ballista://10.255.0.1:50050",
        ],
    );
    let project = create_project(&server, &key, "dest");
    let export_path = file_url(&ok.join("exports"));
    let config = |engine: &str| serde_json::json!({"data": "spans", "export_path": export_path, "engine": engine});
    let answer = create_export(&server, &key, &project, "cluster", config(&refused_engine));
    let message = refusal(&answer);
    assert_eq!(
        answer.1["error"]["details"][0]["rule"], "engine",
        "{}",
        answer.1
    );
    assert!(
        message.contains(&format!(
            "the operator can allow it with `spanlake serve --allow-engine {refused_engine}`"
        )),
        "{message}"
    );
    assert!(
        !was_contacted(&refused),
        "a refused scheduler is never contacted"
    );
    // The allowed cluster is accepted, and the engine is stored.
    let (status, created) = create_export(
        &server,
        &key,
        &project,
        "allowed",
        config("ballista://10.255.0.1:50050"),
    );
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["config"]["engine"], "ballista://10.255.0.1:50050");
    // An engine that is not one is a 400 naming the key.
    let (status, body) = create_export(&server, &key, &project, "bad", config("spark://x:1"));
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string()
            .contains("engine: `spark://x:1` is not an engine"),
        "{body}"
    );
}
