//! A server safe to share. Tenant isolation: with two orgs' keys, every route
//! answers the other org's objects as if they did not exist (never a 2xx),
//! whatever project names exist, including projects named after the other
//! org's ids. Internal errors answer an id, not their details; another
//! process holding the state database stalls no read.

use crate::http::{Server, api_key, create_project, logs3_body};
use crate::support::Spanlake;

/// The statuses of `calls` that are 2xx, with their route: empty when
/// the other org got nothing.
fn successes(calls: &[(String, u16, serde_json::Value)]) -> Vec<String> {
    calls
        .iter()
        .filter(|(_, status, _)| (200..300).contains(status))
        .map(|(route, status, body)| format!("{route} -> {status} {body}"))
        .collect()
}

#[test]
fn another_orgs_objects_are_404_on_every_route_whatever_names_exist() {
    let spanlake = Spanlake::new();
    let a = api_key(&spanlake, "local");
    let b = api_key(&spanlake, "bee");
    // Org A (the local org): a project with rows, an export automation made
    // by the CLI, a retention automation made over REST.
    let rows = spanlake.write_file(
        "a.jsonl",
        &(0..3)
            .map(|i| {
                format!(
                    "{{\"id\": \"secret-{i}\", \"created\": \"2026-11-01T00:00:0{i}Z\", \"input\": \"a's data\"}}\n"
                )
            })
            .collect::<String>(),
    );
    spanlake.ingest("p", &rows);
    let out = spanlake.root().join("a-export");
    spanlake.create_export(
        "ae",
        "spans",
        &format!("file://{}", out.display()),
        &["--interval", "1h"],
    );
    let server = Server::start(&spanlake, &[]);
    let (_, list) = server.call("GET", "/v1/project?project_name=p", Some(&a), "");
    let pa = list["objects"][0]["id"]
        .as_str()
        .expect("a's project")
        .to_string();
    let (status, retention) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&a),
        // Days enough that its scheduled run keeps A's rows of 2026-11-01.
        &serde_json::json!({"project_id": pa, "name": "ra", "kind": "retention",
            "config": {"retention_days": 36500, "grace": "0s", "interval": "24h"}})
        .to_string(),
    );
    assert_eq!(status, 200, "{retention}");
    let ra = retention["id"].as_str().unwrap().to_string();
    let (_, autos) = server.call(
        "GET",
        &format!("/v1/project_automation?project_id={pa}"),
        Some(&a),
        "",
    );
    let ea = autos["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "ae")
        .expect("the CLI's export")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, overflow) = server.call(
        "POST",
        "/logs3/overflow",
        Some(&a),
        r#"{"size_bytes": 100}"#,
    );
    assert_eq!(status, 200, "{overflow}");
    let upload_key = overflow["key"].as_str().unwrap().to_string();
    let signed = overflow["signedUrl"].as_str().unwrap();
    let upload_path = &signed[signed.find("/logs3/").unwrap()..];
    let uploaded = logs3_body(&pa, &[serde_json::json!({"id": "via-overflow"})]);
    let (status, _) = server.call("PUT", upload_path, None, &uploaded);
    assert_eq!(status, 200);
    let a_query = format!("select: id | from: project_logs('{pa}') | limit: 1");
    let (status, page) = server.call(
        "POST",
        "/btql",
        Some(&a),
        &serde_json::json!({"query": a_query}).to_string(),
    );
    assert_eq!(status, 200, "{page}");
    let a_cursor = page["cursor"].as_str().expect("a cursor").to_string();

    // Org B: its own project, and names that read as A's ids are refused.
    let mine = create_project(&server, &b, "mine");
    let (_, login) = server.call("POST", "/api/apikey/login", Some(&b), "");
    let b_org = login["org_info"][0]["id"].as_str().unwrap().to_string();
    for name in [&pa, &ea, &ra, &pa.to_uppercase()] {
        let body = serde_json::json!({ "name": name }).to_string();
        let (status, answer) = server.call("POST", "/v1/project", Some(&b), &body);
        assert_eq!(status, 400, "a project named {name}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("UUID"),
            "{answer}"
        );
        let body = serde_json::json!({ "project_name": name }).to_string();
        let (status, answer) = server.call("POST", "/api/project/register", Some(&b), &body);
        assert_eq!(status, 400, "{answer}");
    }
    // Projects of B named after A's ids that exist all the same (as a store
    // written before names were checked may hold): they change nothing.
    let db = spanlake.data_dir().join("state.db");
    let python = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, uuid\n\
             c = sqlite3.connect(sys.argv[1])\n\
             for name in sys.argv[3:]:\n\
             \x20   c.execute('INSERT INTO projects (id, name, org_id, created) VALUES (?, ?, ?, ?)',\n\
             \x20             (str(uuid.uuid4()), name, sys.argv[2], '2026-01-01T00:00:00Z'))\n\
             c.commit()\n",
        )
        .arg(&db)
        .arg(&b_org)
        .args([&pa, &ea, &ra])
        .status()
        .expect("python3");
    assert!(python.success());

    let mut calls: Vec<(String, u16, serde_json::Value)> = Vec::new();
    let mut call = |method: &str, path: &str, body: &str| {
        let (status, answer) = server.call(method, path, Some(&b), body);
        calls.push((format!("{method} {path}"), status, answer.clone()));
        (status, answer)
    };
    // Projects.
    assert_eq!(call("GET", &format!("/v1/project/{pa}"), "").0, 404);
    assert_eq!(call("GET", &format!("/api/project?id={pa}"), "").0, 404);
    let register_into_a = serde_json::json!({"project_name": "x", "org_id": pa}).to_string();
    assert_eq!(
        call("POST", "/api/project/register", &register_into_a).0,
        403
    );
    // Logs: insert, /logs3 (inline and through A's overflow upload), fetch.
    let row = serde_json::json!({"id": "from-b", "input": "b's"});
    assert_eq!(
        call(
            "POST",
            "/logs3",
            &logs3_body(&pa, std::slice::from_ref(&row))
        )
        .0,
        404
    );
    let insert = serde_json::json!({ "events": [row] }).to_string();
    assert_eq!(
        call("POST", &format!("/v1/project_logs/{pa}/insert"), &insert).0,
        404
    );
    let reference = serde_json::json!({"rows": {"type": "logs3_overflow", "key": upload_key}, "api_version": 2});
    assert!(call("POST", "/logs3", &reference.to_string()).0 >= 400);
    assert_eq!(
        call("GET", &format!("/v1/project_logs/{pa}/fetch"), "").0,
        404
    );
    assert_eq!(
        call("POST", &format!("/v1/project_logs/{pa}/fetch"), "{}").0,
        404
    );
    // Queries, in the three forms, and A's cursor.
    let text = serde_json::json!({ "query": format!("select: * | from: project_logs('{pa}')") });
    let sql = serde_json::json!({ "query": format!("SELECT * FROM project_logs('{pa}')") });
    let ast = serde_json::json!({"query": {
        "select": [{"op": "star"}],
        "from": {"op": "function", "name": {"op": "ident", "name": ["project_logs"]},
                 "args": [{"op": "literal", "value": pa}]}}});
    let with_cursor = serde_json::json!({ "query": a_query, "cursor": a_cursor });
    for body in [&text, &sql, &ast, &with_cursor] {
        let (status, answer) = call("POST", "/btql", &body.to_string());
        assert!((400..500).contains(&status), "{body}: {status} {answer}");
        assert!(!answer.to_string().contains("secret-"), "{answer}");
    }
    // Automations: every route of both of A's automations.
    for id in [&ea, &ra] {
        let path = |tail: &str| format!("/v1/project_automation/{id}{tail}");
        let hijack = serde_json::json!({"config": {"data": "spans", "export_path": "file:///tmp/stolen"}, "status": "paused"}).to_string();
        for (method, path, body) in [
            ("GET", path(""), String::new()),
            ("PATCH", path(""), hijack.clone()),
            ("PUT", path(""), hijack.clone()),
            ("POST", path("/run"), String::new()),
            ("POST", path("/test"), String::new()),
            ("POST", path("/reset"), String::new()),
            ("GET", path("/status"), String::new()),
            ("GET", path("/history"), String::new()),
            ("DELETE", path(""), String::new()),
        ] {
            let (status, answer) = call(method, &path, &body);
            assert_eq!(status, 404, "{method} {path}: {answer}");
        }
    }
    assert_eq!(
        call(
            "GET",
            &format!("/v1/project_automation?project_id={pa}"),
            ""
        )
        .0,
        404
    );
    let create_in_a = serde_json::json!({"project_id": pa, "name": "mine", "kind": "retention",
        "config": {"retention_days": 1}})
    .to_string();
    assert_eq!(call("POST", "/v1/project_automation", &create_in_a).0, 404);
    let (status, listed) = call("GET", "/v1/project_automation", "");
    assert_eq!(status, 200);
    assert_eq!(listed["objects"], serde_json::json!([]), "{listed}");
    // B's project list holds its own projects only (its shadow projects
    // named after A's ids among them, with ids of their own).
    let (_, projects) = call("GET", "/v1/project", "");
    for project in projects["objects"].as_array().unwrap() {
        assert_eq!(
            project["org_id"].as_str(),
            Some(b_org.as_str()),
            "{project}"
        );
        assert_ne!(project["id"].as_str(), Some(pa.as_str()));
    }
    // B's own work is unaffected.
    let own = serde_json::json!({ "query": format!("select: id | from: project_logs('{mine}')") });
    let (status, answer) = server.call("POST", "/btql", Some(&b), &own.to_string());
    assert_eq!(
        (status, &answer["data"]),
        (200, &serde_json::json!([])),
        "{answer}"
    );
    // The only wrongful successes would be listed here.
    let leaked = successes(
        &calls
            .iter()
            .filter(|(route, _, _)| {
                !matches!(
                    route.as_str(),
                    "GET /v1/project_automation" | "GET /v1/project"
                )
            })
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert!(leaked.is_empty(), "org B got A's objects: {leaked:#?}");

    // A's objects are as they were: nothing ran, moved, paused or vanished.
    let (_, export) = server.call("GET", &format!("/v1/project_automation/{ea}"), Some(&a), "");
    assert_eq!(
        export["config"]["export_path"].as_str(),
        Some(format!("file://{}", out.display()).as_str()),
        "{export}"
    );
    for id in [&ea, &ra] {
        let (status, automation) =
            server.call("GET", &format!("/v1/project_automation/{id}"), Some(&a), "");
        assert_eq!(status, 200, "{automation}");
        assert_eq!(automation["status"], "active", "{automation}");
        assert!(!automation.to_string().contains("stolen"), "{automation}");
        let (_, history) = server.call(
            "GET",
            &format!("/v1/project_automation/{id}/history"),
            Some(&a),
            "",
        );
        // The scheduler may have run A's export on its own; nobody else did.
        assert!(
            history["objects"]
                .as_array()
                .unwrap()
                .iter()
                .all(|run| run["trigger"] == "schedule"),
            "{history}"
        );
    }
    assert!(!std::path::Path::new("/tmp/stolen").exists());
    // A's own overflow upload still commits, for A.
    let (status, answer) = server.call("POST", "/logs3", Some(&a), &reference.to_string());
    assert_eq!(status, 200, "{answer}");
    let ids = spanlake
        .query_jsonl("select: id | from: project_logs('p') | sort: id")
        .ok()
        .jsonl();
    assert_eq!(
        ids,
        (0..3)
            .map(|i| serde_json::json!({ "id": format!("secret-{i}") }))
            .chain([serde_json::json!({"id": "via-overflow"})])
            .collect::<Vec<_>>()
    );
    let scrape = |key: &str| {
        let (status, _, body) = server.raw("GET", "/metrics", Some(key), b"");
        assert_eq!(status, 200);
        String::from_utf8(body).unwrap()
    };
    assert!(
        scrape(&a).contains("spanlake_rows_ingested_total 1"),
        "{}",
        scrape(&a)
    );
    let metrics = scrape(&b);
    // B's metrics count none of A's ingest or requests.
    assert!(!metrics.contains(&pa), "{metrics}");
    assert!(
        metrics.contains("spanlake_rows_ingested_total 0"),
        "B's /metrics shows another org's ingest:\n{metrics}"
    );
}

#[test]
fn an_internal_error_answers_an_id_and_keeps_its_details_in_the_log() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "local");
    let rows = spanlake.write_file("r.jsonl", "{\"id\": \"a\", \"input\": 1}\n");
    spanlake.ingest("p", &rows);
    // A data file that no longer reads: the query fails inside the engine.
    let logs = spanlake.only_table_dir();
    let file = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "parquet"))
        .expect("a data file");
    let length = std::fs::metadata(&file).unwrap().len() as usize;
    std::fs::write(&file, vec![b'x'; length]).unwrap();
    let server = Server::start(&spanlake, &[]);
    let (status, answer) = server.call(
        "POST",
        "/btql",
        Some(&key),
        &serde_json::json!({"query": "select: * | from: project_logs('p')"}).to_string(),
    );
    assert_eq!(status, 500, "{answer}");
    let text = answer.to_string();
    let data_dir = spanlake.data_dir().canonicalize().unwrap();
    assert!(!text.contains(&*data_dir.to_string_lossy()), "{text}");
    assert!(!text.contains(".parquet"), "{text}");
    let id = answer["error"]["details"]["error_id"]
        .as_str()
        .expect("an error id");
    assert!(answer["error"]["message"].as_str().unwrap().contains(id));
    // The log has the id with what went wrong.
    let mut logged = String::new();
    for _ in 0..50 {
        logged = server.log();
        if logged.contains(id) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let line = logged
        .lines()
        .find(|l| l.contains(id))
        .unwrap_or_else(|| panic!("no log line with {id}:\n{logged}"));
    assert!(
        line.contains("parquet") || line.contains("Parquet"),
        "{line}"
    );
}

#[test]
fn another_process_holding_the_state_lock_stalls_no_read_and_writes_answer_busy_at_once() {
    let spanlake = Spanlake::new();
    let a = api_key(&spanlake, "local");
    let b = api_key(&spanlake, "bee");
    let server = Server::start(&spanlake, &[]);
    let bees = create_project(&server, &b, "bees");
    let (status, retention) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&b),
        &serde_json::json!({"project_id": bees, "name": "rb", "kind": "retention",
            "config": {"retention_days": 7, "grace": "0s", "interval": "24h"}})
        .to_string(),
    );
    assert_eq!(status, 200, "{retention}");
    let rb = retention["id"].as_str().unwrap().to_string();
    // Another process takes the state database's write lock and keeps it.
    let mut holder = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3, sys, time\n\
             c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
             c.execute('BEGIN IMMEDIATE')\n\
             print('locked', flush=True)\n\
             time.sleep(12)\n",
        )
        .arg(spanlake.data_dir().join("state.db"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(holder.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "locked");
    // A write waits out the short busy timeout and answers 503 with
    // Retry-After, not after a 10 s hang; while it waits, reads of another
    // org (projects, automations) answer at once: the waiting write holds
    // its own state connection, not one every request queues behind.
    let (write, write_took) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let started = std::time::Instant::now();
            let answer = server.raw(
                "POST",
                "/v1/project",
                Some(&a),
                br#"{"name": "while-locked"}"#,
            );
            (answer, started.elapsed())
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        for path in [
            "/v1/project".to_string(),
            "/v1/project_automation".to_string(),
            format!("/v1/project_automation/{rb}"),
            format!("/v1/project_automation/{rb}/history"),
        ] {
            let started = std::time::Instant::now();
            let (status, answer) = server.call("GET", &path, Some(&b), "");
            let took = started.elapsed();
            assert_eq!(status, 200, "{path}: {answer}");
            assert!(
                took < std::time::Duration::from_millis(1500),
                "{path} took {took:?} while another org's write waited on the lock"
            );
        }
        writer.join().unwrap()
    });
    // Automation writes answer busy alike.
    let (patch_status, patch_headers, patch_body) = server.raw(
        "PATCH",
        &format!("/v1/project_automation/{rb}"),
        Some(&b),
        br#"{"description": "while locked"}"#,
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let (status, headers, body) = write;
    assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
    for headers in [&headers, &patch_headers] {
        assert!(
            headers.iter().any(|(k, v)| k == "retry-after" && v == "1"),
            "{headers:?}"
        );
    }
    assert_eq!(
        patch_status,
        503,
        "{}",
        String::from_utf8_lossy(&patch_body)
    );
    assert!(
        write_took >= std::time::Duration::from_millis(1500)
            && write_took < std::time::Duration::from_secs(6),
        "the write took {write_took:?}"
    );
    // Once the lock is gone the same write succeeds.
    create_project(&server, &a, "while-locked");
}
