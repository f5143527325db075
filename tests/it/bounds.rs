//! Bounded memory and time per request (issue 14): the overflow upload and
//! every authenticated route refuse before reading a body; queries (a pivot
//! of 1000 keys included) stay in their memory pool and time limit; a cap
//! on queries per API key; header, idle and body timeouts; the ingest
//! budget in bytes.
//!
//! Memory is the server process's `VmRSS` (from `/proc`), sampled while the
//! requests run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::http::{Server, api_key, create_object, create_project, logs3_body};
use crate::support::Spanlake;

const MB: u64 = 1024 * 1024;

/// The server's resident memory, in bytes.
fn rss(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id()))
        .expect("read the server's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// Runs `work` while sampling the server's RSS; its result and the peak.
fn peak_rss_during<T>(server: &Server, work: impl FnOnce() -> T) -> (T, u64) {
    let peak = AtomicU64::new(rss(server));
    let done = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                peak.fetch_max(rss(server), Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        let result = work();
        done.store(true, Ordering::SeqCst);
        result
    });
    peak.fetch_max(rss(server), Ordering::SeqCst);
    (result, peak.into_inner())
}

/// A connection that sent `head` and (as far as the server reads it)
/// `body_start`, reading with a timeout.
fn open(server: &Server, head: &str, body_start: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(&server.address).expect("connect to the server");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before reading a body.
    let _ = stream.write_all(body_start);
    stream
}

/// The status, headers (lowercase names) and body of the one answer on
/// `stream` (the server closes the connection after it, or it has a
/// `Content-Length`).
fn read_answer(stream: &mut TcpStream) -> (u16, Vec<(String, String)>, String) {
    let mut reply = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if reply.is_empty() => panic!("no answer: {e}"),
            Err(_) => 0,
        };
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if let Some(split) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&reply[..split]).to_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if length.is_some_and(|length| reply.len() >= split + 4 + length) {
                break;
            }
        }
    }
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {}", String::from_utf8_lossy(&reply)));
    let head = String::from_utf8_lossy(&reply[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (
        status,
        headers,
        String::from_utf8_lossy(&reply[split + 4..]).into_owned(),
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// `id`s stored in `project`, through the CLI (not the server).
fn stored_ids(spanlake: &Spanlake, project: &str) -> Vec<String> {
    let mut ids: Vec<String> = spanlake
        .query_jsonl(&format!("select: id | from: project_logs('{project}')"))
        .ok()
        .jsonl()
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect();
    ids.sort();
    ids
}

#[test]
fn bounds_uploads_and_authenticated_routes_refuse_before_reading_the_body() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &[]);
    let project = create_project(&server, &key, "uploads");
    // A real overflow key: its signed URL's token is the only credential.
    let (status, grant) = server.call(
        "POST",
        "/logs3/overflow",
        Some(&key),
        r#"{"size_bytes": 62914560}"#,
    );
    assert_eq!(status, 200, "{grant}");
    let upload_key = grant["key"].as_str().unwrap().to_string();
    let signed = grant["signedUrl"].as_str().unwrap().to_string();
    let upload_path = &signed[signed.find("/logs3/").unwrap()..];
    let (status, _) = server.call("GET", "/health", None, "");
    assert_eq!(status, 200);
    let idle = rss(&server);

    // 8 unauthenticated clients at once, each declaring 60 MB: 4 uploads with
    // a wrong or no token, 4 `/logs3` without an API key.
    let size = 60 * MB as usize;
    let chunk = vec![b' '; MB as usize];
    let (answers, peak) = peak_rss_during(&server, || {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|client| {
                    let chunk = &chunk;
                    let server = &server;
                    let upload_key = &upload_key;
                    scope.spawn(move || {
                        let head = match client {
                            0 | 1 => format!(
                                "PUT /logs3/overflow/upload/{upload_key}?token=wrong{client} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
                            ),
                            2 | 3 => format!(
                                "PUT /logs3/overflow/upload/{upload_key} HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
                            ),
                            _ => format!(
                                "POST /logs3 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
                            ),
                        };
                        let started = Instant::now();
                        let mut stream = open(server, &head, chunk);
                        let (status, _, body) = read_answer(&mut stream);
                        let answered = started.elapsed();
                        // Keep sending the rest, as a client that does not
                        // read answers early would (the server may have
                        // closed the connection: then writes fail).
                        for _ in 1..60 {
                            if stream.write_all(chunk).is_err() {
                                break;
                            }
                        }
                        (client, status, body, answered)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        })
    });
    for (client, status, body, answered) in &answers {
        let expected = if *client < 4 { 403 } else { 401 };
        assert_eq!(*status, expected, "client {client}: {body}");
        assert!(
            *answered < Duration::from_secs(5),
            "client {client} answered after {answered:?}"
        );
    }
    eprintln!(
        "8 unauthenticated 60 MB requests: RSS idle {} MB, peak {} MB",
        idle / MB,
        peak / MB
    );
    assert!(
        peak < idle + 50 * MB,
        "RSS rose from {} MB to {} MB",
        idle / MB,
        peak / MB
    );

    // The granted upload itself streams to its file (bounded memory) ...
    let rows: Vec<serde_json::Value> = (0..2000)
        .map(|i| serde_json::json!({"id": format!("big{i}"), "input": "x".repeat(400)}))
        .collect();
    let batch = logs3_body(&project, &rows);
    let mut padded = batch.into_bytes();
    padded.resize(size, b' ');
    let ((status, _, body), peak) =
        peak_rss_during(&server, || server.raw("PUT", upload_path, None, &padded));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    eprintln!(
        "one granted 60 MB upload: RSS idle {} MB, peak {} MB",
        idle / MB,
        peak / MB
    );
    assert!(peak < idle + 50 * MB, "RSS peaked at {} MB", peak / MB);
    // ... which `/logs3` then commits by reference.
    let reference = serde_json::json!({
        "rows": {"type": "logs3_overflow", "key": upload_key},
        "api_version": 2,
    });
    let (status, committed) = server.call("POST", "/logs3", Some(&key), &reference.to_string());
    assert_eq!(status, 200, "{committed}");
    assert_eq!(stored_ids(&spanlake, &project).len(), 2000);

    // An upload over --max-body stops there: 413, nothing kept.
    let (status, grant) = server.call("POST", "/logs3/overflow", Some(&key), "{}");
    assert_eq!(status, 200, "{grant}");
    let signed = grant["signedUrl"].as_str().unwrap();
    let mut stream = open(
        &server,
        &format!(
            "PUT {} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            &signed[signed.find("/logs3/").unwrap()..],
            65 * MB
        ),
        b"",
    );
    for _ in 0..65 {
        if stream.write_all(&chunk).is_err() {
            break;
        }
    }
    let (status, _, body) = read_answer(&mut stream);
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("--max-body"), "{body}");
    let kept: Vec<_> = std::fs::read_dir(spanlake.data_dir().join("overflow"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(grant["key"].as_str().unwrap()))
        .collect();
    assert_eq!(kept.len(), 1, "only its .meta stays: {kept:?}");
}

/// 20k rows: `g` has 2000 values of 10 rows, `k` 1000 values of 20 rows.
fn ingest_pivot_rows(server: &Server, key: &str, project: &str) {
    for part in 0..4 {
        let rows: Vec<serde_json::Value> = (part * 5000..(part + 1) * 5000)
            .map(|i| {
                serde_json::json!({
                    "id": format!("r{i}"),
                    "metadata": {"g": format!("g{:04}", i / 10), "k": format!("k{:04}", i % 1000)},
                    "scores": {"s": (i % 7) as f64 / 7.0},
                })
            })
            .collect();
        let (status, answer) =
            server.call("POST", "/logs3", Some(key), &logs3_body(project, &rows));
        assert_eq!(status, 200, "{answer}");
    }
}

fn pivot_query(project: &str) -> String {
    serde_json::json!({
        "query": format!(
            "from: project_logs('{project}') | dimensions: metadata.g as g, metadata.k as k | measures: count(1) as n | pivot: n"
        ),
        "fmt": "json",
    })
    .to_string()
}

#[test]
fn bounds_a_pivot_of_1000_keys_stays_in_its_memory_pool_and_time_limit() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let project = {
        let server = Server::start(&spanlake, &[]);
        let project = create_project(&server, &key, "pivots");
        ingest_pivot_rows(&server, &key, &project);
        project
    };

    // The default pool (256 MiB): answered, memory bounded and released.
    let server = Server::start(&spanlake, &[]);
    let (status, _) = server.call("GET", "/health", None, "");
    assert_eq!(status, 200);
    let idle = rss(&server);
    let started = Instant::now();
    let ((status, answer), peak) = peak_rss_during(&server, || {
        server.call("POST", "/btql", Some(&key), &pivot_query(&project))
    });
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(&server);
    eprintln!(
        "pivot of 1000 keys over 20k rows: {status} in {took:?}; RSS idle {} MB, peak {} MB, after {} MB",
        idle / MB,
        peak / MB,
        after / MB
    );
    assert_eq!(status, 200, "{answer}");
    let data = answer["data"].as_array().expect("data");
    assert_eq!(data.len(), 2000);
    let first = data[0].as_object().unwrap();
    assert_eq!(first.len(), 1001, "g and 1000 pivoted columns");
    assert_eq!(first["g"], "g0000");
    assert_eq!(first["k0000_n"], 1);
    assert_eq!(first["k0009_n"], 1);
    assert!(first["k0010_n"].is_null());
    assert_eq!(data[1999]["k0999_n"], 1);
    assert!(peak < idle + 400 * MB, "RSS peaked at {} MB", peak / MB);
    assert!(after < idle + 200 * MB, "RSS stayed at {} MB", after / MB);
    assert!(took < Duration::from_secs(60), "the pivot took {took:?}");
    let (status, _) = server.call("GET", "/health", None, "");
    assert_eq!(status, 200);
    drop(server);

    // A pool too small for it: a clear 413 naming the limit and the flag,
    // quickly, and the server keeps answering.
    let server = Server::start(&spanlake, &["--query-memory", "4MiB"]);
    let idle = rss(&server);
    let started = Instant::now();
    let ((status, answer), peak) = peak_rss_during(&server, || {
        server.call("POST", "/btql", Some(&key), &pivot_query(&project))
    });
    let took = started.elapsed();
    eprintln!(
        "the same pivot in 4 MiB: {status} in {took:?}; RSS idle {} MB, peak {} MB",
        idle / MB,
        peak / MB
    );
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "query_memory_limit", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("4 MiB") && message.contains("--query-memory"),
        "{message}"
    );
    assert!(peak < idle + 400 * MB, "RSS peaked at {} MB", peak / MB);
    let (status, answer) = server.call(
        "POST",
        "/btql",
        Some(&key),
        &serde_json::json!({"query": format!("from: project_logs('{project}') | select: id | limit: 1")})
            .to_string(),
    );
    assert_eq!(status, 200, "{answer}");
    drop(server);

    // Over the time limit: cancelled, 504 naming the limit and the flag.
    let server = Server::start(&spanlake, &["--query-timeout", "200ms"]);
    let started = Instant::now();
    let (status, answer) = server.call("POST", "/btql", Some(&key), &pivot_query(&project));
    let took = started.elapsed();
    eprintln!("the same pivot with a 200ms limit: {status} in {took:?}");
    assert_eq!(status, 504, "{answer}");
    assert_eq!(answer["error"]["code"], "query_timeout", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("200ms") && message.contains("--query-timeout"),
        "{message}"
    );
    assert!(took < Duration::from_secs(10), "answered after {took:?}");
    let (status, _) = server.call("GET", "/health", None, "");
    assert_eq!(status, 200);
}

#[test]
fn bounds_queries_per_api_key_are_capped_and_other_keys_are_not() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let other = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &["--max-queries-per-key", "1"]);
    let project = create_project(&server, &key, "capped");
    let experiment = create_object(&server, &key, "experiment", &project, "e");
    let (status, answer) = server.call(
        "POST",
        "/logs3",
        Some(&key),
        &logs3_body(&project, &[serde_json::json!({"id": "a"})]),
    );
    assert_eq!(status, 200, "{answer}");
    let query =
        serde_json::json!({"query": format!("from: project_logs('{project}') | select: id")})
            .to_string();

    // A query holds its slot from its head to its answer: one whose body is
    // still arriving is running.
    let mut running = open(
        &server,
        &format!(
            "POST /btql HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            query.len()
        ),
        &query.as_bytes()[..10],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (status, headers, body) = server.raw("POST", "/btql", Some(&key), query.as_bytes());
    let body = String::from_utf8_lossy(&body);
    assert_eq!(status, 429, "{body}");
    assert_eq!(header(&headers, "retry-after"), Some("1"), "{headers:?}");
    assert!(body.contains("--max-queries-per-key 1"), "{body}");
    let (status, _, body) = server.raw(
        "GET",
        &format!("/v1/project_logs/{project}/fetch"),
        Some(&key),
        b"",
    );
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    // A summary's full-table queries too.
    let (status, _, body) = server.raw(
        "GET",
        &format!("/v1/experiment/{experiment}/summarize"),
        Some(&key),
        b"",
    );
    assert_eq!(status, 429, "{}", String::from_utf8_lossy(&body));
    // Another key is not affected.
    let (status, answer) = server.call("POST", "/btql", Some(&other), &query);
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["data"].as_array().unwrap().len(), 1);

    // The running one finishes; then the key may query again.
    running.write_all(&query.as_bytes()[10..]).unwrap();
    let (status, _, body) = read_answer(&mut running);
    assert_eq!(status, 200, "{body}");
    let (status, answer) = server.call("POST", "/btql", Some(&key), &query);
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server.call(
        "GET",
        &format!("/v1/experiment/{experiment}/summarize"),
        Some(&key),
        "",
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn bounds_slow_and_idle_connections_are_closed() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(
        &spanlake,
        &["--header-timeout", "1s", "--body-timeout", "1s"],
    );

    /// Seconds until the server closes `stream` (reading whatever it sends).
    fn closed_after(stream: &mut TcpStream) -> Duration {
        let started = Instant::now();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => return started.elapsed(),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return started.elapsed();
                }
                Err(e) => panic!("the server kept the connection open ({e})"),
            }
        }
    }

    // Slowloris: part of a request head, then silence.
    let mut slow = open(&server, "GET /health HTTP/1.1\r\nHost: x\r\n", b"");
    let after = closed_after(&mut slow);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(10),
        "closed after {after:?}"
    );
    // A connection that sends nothing at all.
    let mut silent = open(&server, "", b"");
    let after = closed_after(&mut silent);
    assert!(after < Duration::from_secs(10), "closed after {after:?}");
    // An idle keep-alive connection, after one answer.
    let mut idle = open(&server, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n", b"");
    let (status, _, _) = read_answer(&mut idle);
    assert_eq!(status, 200);
    let after = closed_after(&mut idle);
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_secs(10),
        "closed after {after:?}"
    );
    // A body that stops arriving: 408 and the connection closed.
    let mut dripping = open(
        &server,
        &format!(
            "POST /logs3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Length: 1000\r\n\r\n"
        ),
        b"{\"rows\": [",
    );
    let started = Instant::now();
    let (status, headers, body) = read_answer(&mut dripping);
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("--body-timeout"), "{body}");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(started.elapsed() < Duration::from_secs(10));
    // And the server still answers.
    let (status, _) = server.call("GET", "/health", None, "");
    assert_eq!(status, 200);
}

#[test]
fn bounds_the_ingest_queue_is_bounded_in_bytes_and_loses_nothing_accepted() {
    let spanlake = Spanlake::new();
    let key = api_key(&spanlake, "acme");
    let server = Server::start(&spanlake, &["--ingest-queue-bytes", "64KiB"]);
    let project = create_project(&server, &key, "budget");
    let body_of = |prefix: &str, rows: usize| {
        let rows: Vec<serde_json::Value> = (0..rows)
            .map(|i| serde_json::json!({"id": format!("{prefix}-{i}"), "input": "x".repeat(100)}))
            .collect();
        logs3_body(&project, &rows)
    };

    // A request of 60 KiB whose body is still arriving holds 60 of 64 KiB:
    // another of 8 KiB does not fit, and is refused before its body is read.
    let mut held = body_of("held", 10).into_bytes();
    held.resize(60 * 1024, b' ');
    let mut holding = open(
        &server,
        &format!(
            "POST /logs3 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            held.len()
        ),
        &held[..100],
    );
    std::thread::sleep(Duration::from_millis(300));
    let burst: Vec<String> = (0..8).map(|c| body_of(&format!("burst{c}"), 50)).collect();
    assert!(burst[0].len() > 4 * 1024);
    type Raw = (u16, Vec<(String, String)>, Vec<u8>);
    let answers: Vec<Raw> = std::thread::scope(|scope| {
        let handles: Vec<_> = burst
            .iter()
            .map(|body| {
                let server = &server;
                let key = &key;
                scope.spawn(move || server.raw("POST", "/logs3", Some(key), body.as_bytes()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (status, headers, body) in &answers {
        let body = String::from_utf8_lossy(body);
        assert_eq!(*status, 503, "{body}");
        assert_eq!(header(headers, "retry-after"), Some("1"), "{headers:?}");
        assert!(
            body.contains("--ingest-queue-bytes") && body.contains("65536"),
            "{body}"
        );
    }
    // The held request completes and is committed.
    holding.write_all(&held[100..]).unwrap();
    let (status, _, body) = read_answer(&mut holding);
    assert_eq!(status, 200, "{body}");
    assert_eq!(stored_ids(&spanlake, &project).len(), 10);

    // A burst of 16 at once with nothing held: each is committed or refused
    // whole; retried as the SDK does, every row is stored exactly once.
    let burst: Vec<String> = (0..16).map(|c| body_of(&format!("c{c}"), 50)).collect();
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let handles: Vec<_> = burst
            .iter()
            .map(|body| {
                let server = &server;
                let key = &key;
                scope.spawn(move || {
                    let mut first = None;
                    for _ in 0..200 {
                        let (status, headers, answer) =
                            server.raw("POST", "/logs3", Some(key), body.as_bytes());
                        first.get_or_insert(status);
                        match status {
                            200 => return first.unwrap(),
                            503 => {
                                assert_eq!(header(&headers, "retry-after"), Some("1"));
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            _ => panic!("{status}: {}", String::from_utf8_lossy(&answer)),
                        }
                    }
                    panic!("never accepted");
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!("first answers of a burst of 16 over a 64 KiB budget: {statuses:?}");
    let ids = stored_ids(&spanlake, &project);
    assert_eq!(ids.len(), 10 + 16 * 50);
    let mut unique = ids.clone();
    unique.dedup();
    assert_eq!(unique.len(), ids.len(), "a row stored twice");
}
