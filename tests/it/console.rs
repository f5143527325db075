//! The web console, in a real browser: each test starts a `spanlake serve`
//! of its own, then `tests/browser/console.py` drives headless Chromium
//! (Debian's `chromium` and `chromium-driver`, through Selenium from the
//! test venv) through one group of scenarios, as a person would, and saves a
//! screenshot of each step under the test's temp dir (`screenshot: PATH`
//! lines, printed again here).
//!
//! Needs `$SPANLAKE_DUCKDB_PYTHON` (the venv, with Selenium and DuckDB),
//! the browser and its driver, and the S3 server (`$SPANLAKE_S3_ENDPOINT`),
//! all set up by `scripts/test`; without them these tests skip with a
//! notice, unless `SPANLAKE_REQUIRE_SERVICES` is set, when they fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::http::{Server, api_key, create_object, create_project};
use crate::roles::{ACCOUNT, Moto, allow, moto_server, user};
use crate::support::{Spanlake, create_bucket, fixtures_dir, service_var, tests_dir};

/// The Python of the test venv, if the browser and its driver are there.
fn browser_python() -> Option<String> {
    let python = service_var("SPANLAKE_DUCKDB_PYTHON")?;
    for (variable, default) in [
        ("SPANLAKE_CHROMIUM", "/usr/bin/chromium"),
        ("SPANLAKE_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ] {
        let path = std::env::var(variable).unwrap_or_else(|_| default.to_string());
        if !Path::new(&path).is_file() {
            assert!(
                std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
                "SPANLAKE_REQUIRE_SERVICES is set but {path} is missing (scripts/test installs chromium and chromium-driver)"
            );
            eprintln!("skipped: {path} is missing (scripts/test installs it)");
            return None;
        }
    }
    Some(python)
}

/// Where a test's screenshots go: `screenshots/` in its temp dir, or
/// `$SPANLAKE_SCREENSHOTS/<name>` to keep them after the test.
fn screenshots(spanlake: &Spanlake, name: &str) -> PathBuf {
    match std::env::var_os("SPANLAKE_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir).join(name),
        None => spanlake.root().join("screenshots"),
    }
}

/// Run one scenario of `console.py`; panics with its output unless it
/// passed. Prints the screenshots' paths.
fn scenario(
    python: &str,
    name: &str,
    server: &Server,
    key: &str,
    project: &str,
    out: &Path,
    expect: &serde_json::Value,
) {
    let started = Instant::now();
    let output = Command::new(python)
        .arg(tests_dir().join("browser/console.py"))
        .args([
            name,
            "--url",
            &server.url(),
            "--key",
            key,
            "--project",
            project,
        ])
        .arg("--out")
        .arg(out)
        .arg("--expect")
        .arg(expect.to_string())
        .output()
        .expect("run tests/browser/console.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for line in stdout.lines().filter(|l| l.starts_with("screenshot: ")) {
        println!("{line}");
    }
    assert!(
        output.status.success(),
        "browser scenario `{name}` failed after {:.1} s\n--- stdout\n{stdout}--- stderr\n{stderr}--- server log\n{}",
        started.elapsed().as_secs_f64(),
        server.log()
    );
    assert!(
        stdout.contains(&format!("scenario {name} passed")),
        "{stdout}"
    );
    // The key went out only in headers: the server never logged it.
    assert!(
        !server.log().contains(key),
        "the API key is in the server's log"
    );
    println!(
        "browser scenario `{name}` passed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

fn project_ids(spanlake: &Spanlake) -> (String, String) {
    let projects: serde_json::Value = serde_json::from_str(
        &spanlake
            .run(["project", "list", "--format", "json"])
            .ok()
            .stdout,
    )
    .expect("project list is JSON");
    (
        projects[0]["org_id"].as_str().unwrap().to_string(),
        projects[0]["id"].as_str().unwrap().to_string(),
    )
}

/// The headers of `path` (lowercase names).
fn headers(server: &Server, path: &str) -> (u16, Vec<(String, String)>, String) {
    let (status, headers, body) = server.raw("GET", path, None, b"");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn console_is_served_embedded_with_a_strict_content_security_policy() {
    let spanlake = Spanlake::new();
    let server = Server::start(&spanlake, &[]);
    let (status, page_headers, page) = headers(&server, "/");
    assert_eq!(status, 200);
    assert!(
        header(&page_headers, "content-type").is_some_and(|v| v.starts_with("text/html")),
        "{page_headers:?}"
    );
    let csp = header(&page_headers, "content-security-policy").expect("a CSP header");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(
        header(&page_headers, "x-content-type-options"),
        Some("nosniff")
    );
    assert!(page.contains("/console/app.js"), "{page}");
    for (path, kind) in [
        ("/console/app.js", "text/javascript"),
        ("/console/style.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let (status, file_headers, body) = headers(&server, path);
        assert_eq!(status, 200, "{path}");
        assert!(
            header(&file_headers, "content-type").is_some_and(|v| v.starts_with(kind)),
            "{path}: {file_headers:?}"
        );
        assert!(
            header(&file_headers, "content-security-policy").is_some(),
            "{path}"
        );
        assert!(!body.is_empty());
    }
    // Nothing else is served from there, and the API still wants a key.
    let (status, _, _) = headers(&server, "/console/../Cargo.toml");
    assert_eq!(status, 404);
    let (status, _, _) = headers(&server, "/console/nope.js");
    assert_eq!(status, 404);
    let (status, _) = server.call("GET", "/v1/project", None, "");
    assert_eq!(status, 401);
}

#[test]
fn console_signs_in_queries_pages_shows_the_caret_and_renders_spans_as_text() {
    let Some(python) = browser_python() else {
        return;
    };
    let spanlake = Spanlake::new();
    let script = "<script>window.__pwned=1;document.title='pwned'</script>";
    let img = r#"<img src=x onerror="window.__pwned=1">"#;
    let bold = "<b>bold</b>";
    let mut lines: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({
                "id": format!("r{i:02}"),
                "created": format!("2026-11-{:02}T10:00:00Z", i + 1),
                "input": format!("question {i}"),
                "span_attributes": {"name": "chat", "type": "llm"},
            })
            .to_string()
        })
        .collect();
    lines.push(
        serde_json::json!({
            "id": "xss",
            "created": "2026-11-20T10:00:00Z",
            "input": script,
            "output": {"html": "<iframe src=\"javascript:alert(1)\"></iframe>"},
            "metadata": {"html": img},
            "span_attributes": {"name": bold},
        })
        .to_string(),
    );
    let file = spanlake.write_file("rows.jsonl", &lines.join("\n"));
    spanlake.ingest("console", &file);
    let key = api_key(&spanlake, "local");
    let (_, project) = project_ids(&spanlake);
    let server = Server::start(&spanlake, &[]);
    let mut ids: Vec<String> = (0..12).map(|i| format!("r{i:02}")).collect();
    ids.push("xss".to_string());
    scenario(
        &python,
        "query",
        &server,
        &key,
        &project,
        &screenshots(&spanlake, "query"),
        &serde_json::json!({"ids": ids, "script": script, "img": "<img src=x onerror=", "bold": bold}),
    );
}

#[test]
fn console_creates_tests_runs_resets_and_pauses_a_parquet_export_to_s3() {
    let Some(python) = browser_python() else {
        return;
    };
    let Some(endpoint) = service_var("SPANLAKE_S3_ENDPOINT") else {
        return;
    };
    let bucket = format!("console-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    spanlake.ingest("console", &fixtures_dir().join("basic.jsonl"));
    let key = api_key(&spanlake, "local");
    let (org_id, project) = project_ids(&spanlake);
    let server = Server::start(&spanlake, &["--allow-endpoint", &endpoint]);
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/console-export");
    scenario(
        &python,
        "export",
        &server,
        &key,
        &project,
        &screenshots(&spanlake, "export"),
        &serde_json::json!({"endpoint": endpoint, "bucket": bucket, "role_arn": role_arn, "rows": 13}),
    );

    // What the dialog stored is the configuration it showed.
    let (_, list) = server.call(
        "GET",
        &format!("/v1/project_automation?project_id={project}"),
        Some(&key),
        "",
    );
    let export = &list["objects"][0];
    assert_eq!(export["name"], "nightly-parquet", "{list}");
    assert_eq!(export["status"], "paused", "{list}");
    let config = &export["config"];
    assert_eq!(config["interval"], "4h", "{config}");
    assert_eq!(
        (
            &config["data"],
            &config["format"],
            &config["batch_size"],
            &config["partitioning"]
        ),
        (
            &serde_json::json!("spans"),
            &serde_json::json!("parquet"),
            &serde_json::json!(500),
            &serde_json::json!("day")
        ),
        "{config}"
    );
    // The role helper over REST and the CLI: the saved export's own id.
    let id = export["id"].as_str().unwrap();
    let external_id = format!("spanlake:{org_id}:{project}:{id}");
    let (status, policy) = server.call(
        "GET",
        &format!(
            "/v1/project_automation/{id}/role_policy?principal=arn:aws:iam::{ACCOUNT}:user/spanlake"
        ),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{policy}");
    assert_eq!(policy["external_id"], external_id.as_str());
    assert_eq!(
        policy["trust_policy"]["Statement"][0]["Condition"]["StringEquals"]["sts:ExternalId"],
        external_id.as_str()
    );
    assert_eq!(
        policy["trust_policy"]["Statement"][0]["Principal"]["AWS"],
        format!("arn:aws:iam::{ACCOUNT}:user/spanlake")
    );
    let cli = spanlake
        .run([
            "automation",
            "role-policy",
            "nightly-parquet",
            "-p",
            "console",
            "--json",
        ])
        .ok();
    let from_cli: serde_json::Value = serde_json::from_str(&cli.stdout).unwrap();
    assert_eq!(from_cli["external_id"], external_id.as_str());
    assert_eq!(
        from_cli["permissions_policy"]["Statement"][0]["Resource"],
        format!("arn:aws:s3:::{bucket}/console/spans/*")
    );
    let text = spanlake
        .run([
            "automation",
            "role-policy",
            "nightly-parquet",
            "-p",
            "console",
        ])
        .ok();
    assert!(
        text.stdout.contains(&format!("external id: {external_id}")),
        "{}",
        text.stdout
    );
    assert!(text.stderr.contains("replace"), "{}", text.stderr);
}

/// An experiment's export edited in the console stays that experiment's
/// export (the form used to rebuild its config without `object_type` and
/// `object_id`, turning it into an export of the project's logs).
#[test]
fn console_edit_of_an_experiment_export_keeps_its_experiment() {
    let Some(python) = browser_python() else {
        return;
    };
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "local");
    let allow = format!("file://{}/", spanlake.root().join("out").display());
    let server = Server::start(&spanlake, &["--allow-export-to", &allow]);
    let project = create_project(&server, &key, "console");
    let experiment = create_object(&server, &key, "experiment", &project, "e");
    let config = serde_json::json!({"object_type": "experiment", "object_id": experiment, "data": "spans", "export_path": format!("{allow}e"), "interval": "1h"});
    let (status, created) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &serde_json::json!({"project_id": project, "name": "experiment-export", "kind": "export", "config": config})
            .to_string(),
    );
    assert_eq!(status, 200, "{created}");
    scenario(
        &python,
        "edit-object-export",
        &server,
        &key,
        &project,
        &screenshots(&spanlake, "edit-object-export"),
        &serde_json::json!({"object_id": experiment}),
    );
    let (status, stored) = server.call(
        "GET",
        &format!("/v1/project_automation/{}", created["id"].as_str().unwrap()),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        (
            stored["config"]["object_type"].as_str(),
            stored["config"]["object_id"].as_str(),
            stored["config"]["interval"].as_str()
        ),
        (Some("experiment"), Some(experiment.as_str()), Some("4h")),
        "{stored}"
    );
}

/// `n` rows per day for `days` days back from now (each an hour older than
/// the whole days): (JSON Lines, UTC dates seen, rows older than `keep` days).
fn rows_over_days(days: i64, per_day: i64, keep: i64) -> (String, usize, usize) {
    let now = chrono::Utc::now();
    let mut lines = Vec::new();
    let mut dates = std::collections::BTreeSet::new();
    let mut older = 0;
    for day in 0..days {
        for i in 0..per_day {
            let created = now - chrono::Duration::days(day) - chrono::Duration::minutes(60 + i);
            dates.insert(created.date_naive());
            if created < now - chrono::Duration::days(keep) {
                older += 1;
            }
            lines.push(
                serde_json::json!({
                    "id": format!("d{day}-{i}"),
                    "created": created.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "input": "x",
                })
                .to_string(),
            );
        }
    }
    (lines.join("\n"), dates.len(), older)
}

#[test]
fn console_previews_a_retention_with_its_chart_and_runs_it() {
    let Some(python) = browser_python() else {
        return;
    };
    let spanlake = Spanlake::new();
    let (rows, days, older) = rows_over_days(10, 3, 5);
    let file = spanlake.write_file("days.jsonl", &rows);
    spanlake.ingest("console", &file);
    let key = api_key(&spanlake, "local");
    let (_, project) = project_ids(&spanlake);
    let server = Server::start(&spanlake, &[]);
    scenario(
        &python,
        "retention",
        &server,
        &key,
        &project,
        &screenshots(&spanlake, "retention"),
        &serde_json::json!({"days": days, "rows_to_delete": older}),
    );
    // The run deleted exactly the rows the preview announced.
    let (_, answer) = server.call(
        "POST",
        "/btql",
        Some(&key),
        &serde_json::json!({"query": format!("measures: count(1) as n | from: project_logs('{project}')")})
            .to_string(),
    );
    assert_eq!(answer["data"][0]["n"], 30 - older, "{answer}");
}

#[test]
fn console_names_the_failing_step_of_a_wrong_role_and_why() {
    let Some(python) = browser_python() else {
        return;
    };
    let Some(binary) = moto_server() else {
        return;
    };
    let spanlake = Spanlake::new();
    spanlake.ingest("console", &fixtures_dir().join("basic.jsonl"));
    let key = api_key(&spanlake, "local");
    let (org_id, project) = project_ids(&spanlake);

    // A moto that enforces IAM after the setup: 1 (bucket) + 3 (user) + 2
    // (the export's role) + 1 (another role) unsigned actions.
    let moto = Moto::start(&binary, 7);
    let endpoint = moto.endpoint();
    let bucket = "console-roles";
    let (status, reply) = moto.call("s3", "PUT", &format!("/{bucket}"), &[]);
    assert_eq!(status, 200, "{reply}");
    let caller = user(
        &moto,
        "caller",
        &allow(&["sts:AssumeRole"], &["*".to_string()]),
    );
    // The role trusts the caller with the external id an unsaved export
    // of this project presents.
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/caller")},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": format!("spanlake:{org_id}:{project}:unsaved")}},
        }],
    });
    moto.iam(&[
        ("Action", "CreateRole"),
        ("RoleName", "console-export"),
        ("AssumeRolePolicyDocument", &trust.to_string()),
    ]);
    moto.iam(&[
        ("Action", "PutRolePolicy"),
        ("RoleName", "console-export"),
        ("PolicyName", "write"),
        (
            "PolicyDocument",
            &allow(
                &["s3:*"],
                &[
                    format!("arn:aws:s3:::{bucket}"),
                    format!("arn:aws:s3:::{bucket}/*"),
                ],
            )
            .to_string(),
        ),
    ]);

    // Another team's role: it trusts the caller only with that team's
    // external id, so this project's export cannot assume it.
    let other = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/caller")},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": "spanlake:another-org:*"}},
        }],
    });
    moto.iam(&[
        ("Action", "CreateRole"),
        ("RoleName", "another-teams-role"),
        ("AssumeRolePolicyDocument", &other.to_string()),
    ]);

    // The server runs as the caller, who may only assume roles.
    let mut command = spanlake.command([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--allow-endpoint",
        &endpoint,
    ]);
    crate::roles::with_only_keys(&mut command, &caller);
    let server = Server::start_command(command);
    let out = screenshots(&spanlake, "wrong-role");
    scenario(
        &python,
        "wrong-role",
        &server,
        &key,
        &project,
        &out,
        &serde_json::json!({
            "endpoint": endpoint,
            "bucket": bucket,
            "wrong_role_arn": format!("arn:aws:iam::{ACCOUNT}:role/another-teams-role"),
            "role_arn": format!("arn:aws:iam::{ACCOUNT}:role/console-export"),
        }),
    );
    assert!(
        !server.log().contains(&caller.1),
        "the secret key is in the log"
    );
}

#[test]
fn an_unsaved_configuration_is_tested_and_its_role_described_without_being_stored() {
    let spanlake = Spanlake::new();
    spanlake.ingest("console", &fixtures_dir().join("basic.jsonl"));
    let key = api_key(&spanlake, "local");
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "console");
    let (_, project_doc) = server.call("GET", &format!("/v1/project/{project}"), Some(&key), "");
    let org_id = project_doc["org_id"].as_str().unwrap();
    let test = |body: serde_json::Value| {
        server.call(
            "POST",
            "/v1/project_automation/test",
            Some(&key),
            &body.to_string(),
        )
    };

    // A retention's preview: the plan of a run now; nothing changes.
    let (status, preview) = test(serde_json::json!({
        "project_id": project, "name": "draft", "kind": "retention",
        "config": {"retention_days": 1, "grace": "24h", "interval": "24h"},
    }));
    assert_eq!(status, 200, "{preview}");
    assert_eq!(
        preview["rows"], 13,
        "every fixture row is older than a day: {preview}"
    );
    assert!(preview["cutoff"].as_str().is_some(), "{preview}");
    // Validated as `create` would: 0 days refused unless forced.
    let (status, refused) = test(serde_json::json!({
        "project_id": project, "name": "draft", "kind": "retention",
        "config": {"retention_days": 0, "grace": "24h", "interval": "24h"},
    }));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("retention_days"),
        "{refused}"
    );
    // Held to the destinations policy as `create` would: the server's disk
    // is refused, nothing is written.
    let folder = spanlake.root().join("out");
    let (status, refused) = test(serde_json::json!({
        "project_id": project, "name": "draft", "kind": "export",
        "config": {"data": "spans", "export_path": format!("file://{}", folder.display())},
    }));
    assert_eq!(status, 403, "{refused}");
    assert_eq!(refused["error"]["code"], "destination_refused");
    assert!(!folder.exists());
    // Nothing was stored.
    let (_, list) = server.call("GET", "/v1/project_automation", Some(&key), "");
    assert_eq!(list["objects"], serde_json::json!([]), "{list}");

    // The role of an unsaved export: the project-wide pattern, which the
    // id its test presents matches.
    let (status, policy) = server.call(
        "POST",
        "/v1/project_automation/role_policy",
        Some(&key),
        &serde_json::json!({"project_id": project, "export_path": "s3://b/team"}).to_string(),
    );
    assert_eq!(status, 200, "{policy}");
    assert_eq!(
        policy["trust_policy"]["Statement"][0]["Condition"]["StringLike"]["sts:ExternalId"],
        format!("spanlake:{org_id}:{project}:*")
    );
    let (status, refused) = server.call(
        "POST",
        "/v1/project_automation/role_policy",
        Some(&key),
        &serde_json::json!({"project_id": project, "export_path": "file:///tmp/x"}).to_string(),
    );
    assert_eq!(status, 400, "{refused}");
    // Another org sees neither the project nor its roles.
    let other = api_key(&spanlake, "other");
    let (status, _) = server.call(
        "POST",
        "/v1/project_automation/role_policy",
        Some(&other),
        &serde_json::json!({"project_id": project, "export_path": "s3://b/team"}).to_string(),
    );
    assert_eq!(status, 404);
    let (status, _) = server.call(
        "POST",
        "/v1/project_automation/test",
        Some(&other),
        &serde_json::json!({
            "project_id": project, "name": "draft", "kind": "retention",
            "config": {"retention_days": 1, "grace": "24h", "interval": "24h"},
        })
        .to_string(),
    );
    assert_eq!(status, 404);
}
