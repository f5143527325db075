//! Fault injection for S3 exports. A small HTTP/1.1 proxy (std threads and
//! `std::net`, one thread per connection, `Connection: close` on every
//! answer) sits in front of the S3-compatible test server (moto,
//! `$SPANLAKE_S3_ENDPOINT`). For a seeded ~10% of requests it answers
//! `503 SlowDown` or `500 InternalError` without forwarding, closes the
//! connection without answering, stalls past the client timeout, or
//! forwards the request and cuts the response (the server applied it, the
//! client never hears so). Exports through it must commit exactly the rows
//! of a fault-free export, leave no file outside the committed manifests,
//! and a server that stays down must fail the run cleanly, with the cursor
//! where it was.
//!
//! Without `SPANLAKE_S3_ENDPOINT` these tests skip with a notice, unless
//! `SPANLAKE_REQUIRE_SERVICES` is set (then they fail).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::support::{Run, Spanlake, create_bucket, fixtures_dir};

/// object_store's request timeout for runs through the proxy
/// (`AWS_TIMEOUT`, read by `AmazonS3Builder::from_env`; the default is 30 s).
const CLIENT_TIMEOUT: &str = "5s";
/// How long a stalled connection is held: longer than `CLIENT_TIMEOUT`.
const STALL: Duration = Duration::from_secs(8);
/// Socket read timeout, so that every proxy thread notices the stop flag.
const POLL: Duration = Duration::from_millis(100);
/// Most time one request or response may take to arrive in full.
const IO_LIMIT: Duration = Duration::from_secs(60);
/// Most time one `spanlake` command may take.
const RUN_LIMIT: Duration = Duration::from_secs(300);

fn s3_endpoint() -> Option<String> {
    match std::env::var("SPANLAKE_S3_ENDPOINT") {
        Ok(value) => Some(value.trim_end_matches('/').to_owned()),
        Err(_) => {
            assert!(
                std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
                "SPANLAKE_REQUIRE_SERVICES is set but SPANLAKE_S3_ENDPOINT is not: run the tests with scripts/test"
            );
            eprintln!("skipped: SPANLAKE_S3_ENDPOINT is unset (scripts/test sets it)");
            None
        }
    }
}

pub(super) fn host_port(endpoint: &str) -> String {
    endpoint.trim_start_matches("http://").to_owned()
}

// ---------------------------------------------------------------- the proxy

/// What the proxy does to one request instead of forwarding it faithfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Fault {
    /// `503 Slow Down`, not forwarded.
    SlowDown,
    /// `500 Internal Error`, not forwarded.
    InternalError,
    /// The request is read, not forwarded, and the connection closed.
    Reset,
    /// The request is read, not forwarded, and nothing answered for
    /// [`STALL`]; then the connection is closed.
    Stall,
    /// Forwarded (the server applies it), then the response is cut after a
    /// few bytes of its status line.
    CutResponse,
}

/// How the proxy treats requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Mode {
    /// Forward everything.
    Pass = 0,
    /// A seeded ~10% of requests get a [`Fault`].
    Faulty = 1,
    /// Every request gets `503 Slow Down`.
    Down = 2,
}

/// One request seen by the proxy.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub(super) method: String,
    target: String,
    pub(super) fault: Option<Fault>,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    stop: AtomicBool,
    mode: AtomicU8,
    rng: Mutex<u64>,
    /// Faulty mode: requests faulted, per thousand.
    per_mille: u64,
    /// Stalls and cut responses still allowed: they may fail a run, so
    /// their number is bounded for the export to converge.
    severe_budget: AtomicUsize,
    /// In `Pass` mode, switch to `Down` after this many more requests
    /// (`usize::MAX`: never).
    down_after: AtomicUsize,
    /// Writes (`PUT`, `POST`) still to answer `503 Slow Down`, whatever
    /// the mode.
    write_burst: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

impl Shared {
    fn decide(&self) -> Option<Fault> {
        let mode = self.mode.load(Ordering::SeqCst);
        if mode == Mode::Pass as u8 {
            let left = self.down_after.load(Ordering::SeqCst);
            if left != usize::MAX {
                if left == 0 {
                    self.mode.store(Mode::Down as u8, Ordering::SeqCst);
                    return Some(Fault::SlowDown);
                }
                self.down_after.store(left - 1, Ordering::SeqCst);
            }
            return None;
        }
        if mode == Mode::Down as u8 {
            return Some(Fault::SlowDown);
        }
        let draw = {
            let mut state = self.rng.lock().unwrap();
            splitmix64(&mut state)
        };
        if draw % 1000 >= self.per_mille {
            return None;
        }
        let fault = match (draw / 1000) % 100 {
            0..35 => Fault::SlowDown,
            35..65 => Fault::InternalError,
            65..80 => Fault::Reset,
            80..90 => Fault::Stall,
            _ => Fault::CutResponse,
        };
        if matches!(fault, Fault::Stall | Fault::CutResponse)
            && self
                .severe_budget
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_err()
        {
            return Some(Fault::SlowDown);
        }
        Some(fault)
    }
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The proxy: listens on 127.0.0.1:`port`; its threads stop when it drops.
#[derive(Debug)]
pub(super) struct FaultProxy {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl FaultProxy {
    pub(super) fn start(
        upstream: &str,
        seed: u64,
        mode: Mode,
        per_mille: u64,
        severe_budget: usize,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.to_owned(),
            stop: AtomicBool::new(false),
            mode: AtomicU8::new(mode as u8),
            rng: Mutex::new(seed),
            per_mille,
            severe_budget: AtomicUsize::new(severe_budget),
            down_after: AtomicUsize::new(usize::MAX),
            write_burst: AtomicUsize::new(0),
            seen: Mutex::new(Vec::new()),
        });
        let workers = Arc::new(Mutex::new(Vec::<JoinHandle<()>>::new()));
        let acceptor = {
            let shared = Arc::clone(&shared);
            let workers = Arc::clone(&workers);
            std::thread::spawn(move || {
                while !shared.stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let shared = Arc::clone(&shared);
                            let handle = std::thread::spawn(move || serve(client, &shared));
                            let mut workers = workers.lock().unwrap();
                            workers.retain(|w| !w.is_finished());
                            workers.push(handle);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            })
        };
        Self {
            port,
            shared,
            acceptor: Some(acceptor),
            workers,
        }
    }

    pub(super) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub(super) fn set_mode(&self, mode: Mode) {
        self.shared.down_after.store(usize::MAX, Ordering::SeqCst);
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Forward `requests` more requests, then answer 503 to everything.
    pub(super) fn go_down_after(&self, requests: usize) {
        self.set_mode(Mode::Pass);
        self.shared.down_after.store(requests, Ordering::SeqCst);
    }

    /// Answer the next `writes` writes with `503 Slow Down`.
    fn fail_writes(&self, writes: usize) {
        self.shared.write_burst.store(writes, Ordering::SeqCst);
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// Count of requests per fault (`None`: forwarded as is).
    fn fault_counts(&self) -> BTreeMap<Option<Fault>, usize> {
        let mut counts = BTreeMap::new();
        for seen in self.seen() {
            *counts.entry(seen.fault).or_default() += 1;
        }
        counts
    }

    /// Stop accepting, end every connection thread, wait for all of them.
    pub(super) fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let workers = std::mem::take(&mut *self.workers.lock().unwrap());
        for worker in workers {
            let _ = worker.join();
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy)]
enum BodyKind {
    None,
    Length(usize),
    Chunked,
    UntilEof,
}

/// One HTTP/1.1 message as read from the wire; the body stays encoded as it
/// came (chunked or not).
#[derive(Debug)]
struct Message {
    start_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    chunked: bool,
}

impl Message {
    /// The message with `Connection: close` instead of its own connection
    /// headers, as bytes.
    fn to_bytes_closing(&self) -> Vec<u8> {
        let mut out = format!("{}\r\n", self.start_line).into_bytes();
        for (name, value) in &self.headers {
            let hop = ["connection", "keep-alive", "proxy-connection"];
            if !hop.iter().any(|h| name.eq_ignore_ascii_case(h)) {
                out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
            }
        }
        out.extend_from_slice(b"Connection: close\r\n\r\n");
        out.extend_from_slice(&self.body);
        out
    }

    /// The body without chunked encoding.
    fn decoded_body(&self) -> Vec<u8> {
        if !self.chunked {
            return self.body.clone();
        }
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(end) = find(&self.body[at..], b"\r\n") {
            let line = String::from_utf8_lossy(&self.body[at..at + end]).into_owned();
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).unwrap();
            at += end + 2;
            if size == 0 {
                break;
            }
            out.extend_from_slice(&self.body[at..at + size]);
            at += size + 2;
        }
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Read more bytes into `buf`; `Ok(false)` at end of stream. Gives up when
/// `stop` is set or at `deadline`.
fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    stop: &AtomicBool,
    deadline: Instant,
) -> std::io::Result<bool> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("proxy stopped"));
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "message not complete in time",
            ));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(false),
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(true);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read one message from `stream` (a connection that carries one message).
/// `body_kind` tells, from the start line and headers, how its body ends.
/// `Ok(None)`: the stream ended before any byte.
fn read_message(
    stream: &mut TcpStream,
    stop: &AtomicBool,
    body_kind: impl Fn(&str, &[(String, String)]) -> BodyKind,
) -> std::io::Result<Option<Message>> {
    let deadline = Instant::now() + IO_LIMIT;
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if !fill(stream, &mut buf, stop, deadline)? {
            if buf.is_empty() {
                return Ok(None);
            }
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let start_line = lines.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf.split_off(head_end + 4);
    let kind = body_kind(&start_line, &headers);
    let eof = || std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
    match kind {
        BodyKind::None => body.clear(),
        BodyKind::Length(length) => {
            while body.len() < length {
                if !fill(stream, &mut body, stop, deadline)? {
                    return Err(eof());
                }
            }
            body.truncate(length);
        }
        BodyKind::UntilEof => while fill(stream, &mut body, stop, deadline)? {},
        BodyKind::Chunked => {
            // Walk the chunks until the last one and its trailers.
            let mut at = 0;
            loop {
                let line_end = loop {
                    if let Some(end) = find(&body[at..], b"\r\n") {
                        break at + end;
                    }
                    if !fill(stream, &mut body, stop, deadline)? {
                        return Err(eof());
                    }
                };
                let line = String::from_utf8_lossy(&body[at..line_end]).into_owned();
                let size =
                    usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                        .map_err(|_| std::io::Error::other(format!("bad chunk size `{line}`")))?;
                at = line_end + 2;
                if size == 0 {
                    // Trailers, up to an empty line.
                    loop {
                        if let Some(end) = find(&body[at..], b"\r\n") {
                            at += end + 2;
                            if end == 0 {
                                break;
                            }
                            continue;
                        }
                        if !fill(stream, &mut body, stop, deadline)? {
                            return Err(eof());
                        }
                    }
                    body.truncate(at);
                    break;
                }
                while body.len() < at + size + 2 {
                    if !fill(stream, &mut body, stop, deadline)? {
                        return Err(eof());
                    }
                }
                at += size + 2;
            }
        }
    }
    Ok(Some(Message {
        start_line,
        headers,
        body,
        chunked: matches!(kind, BodyKind::Chunked),
    }))
}

fn framing(headers: &[(String, String)]) -> Option<BodyKind> {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    if get("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked")) {
        return Some(BodyKind::Chunked);
    }
    get("content-length").map(|v| BodyKind::Length(v.parse().unwrap_or(0)))
}

fn request_body(_start: &str, headers: &[(String, String)]) -> BodyKind {
    framing(headers).unwrap_or(BodyKind::None)
}

fn response_body(method: &str) -> impl Fn(&str, &[(String, String)]) -> BodyKind + '_ {
    move |start, headers| {
        let status: u16 = start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if method == "HEAD" || (100..200).contains(&status) || status == 204 || status == 304 {
            BodyKind::None
        } else {
            framing(headers).unwrap_or(BodyKind::UntilEof)
        }
    }
}

/// One client connection: one request, one answer (or a fault), closed.
fn serve(mut client: TcpStream, shared: &Shared) {
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(POLL));
    let Ok(Some(request)) = read_message(&mut client, &shared.stop, request_body) else {
        return;
    };
    let mut words = request.start_line.split(' ');
    let method = words.next().unwrap_or_default().to_owned();
    let target = words.next().unwrap_or_default().to_owned();
    let in_burst = matches!(method.as_str(), "PUT" | "POST")
        && shared
            .write_burst
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    let fault = if in_burst {
        Some(Fault::SlowDown)
    } else {
        shared.decide()
    };
    let number = {
        let mut seen = shared.seen.lock().unwrap();
        seen.push(Seen {
            method: method.clone(),
            target,
            fault,
        });
        seen.len()
    };
    match fault {
        Some(Fault::SlowDown) => s3_error(&mut client, 503, "Slow Down", "SlowDown", number),
        Some(Fault::InternalError) => {
            s3_error(
                &mut client,
                500,
                "Internal Server Error",
                "InternalError",
                number,
            );
        }
        Some(Fault::Reset) => {}
        Some(Fault::Stall) => {
            let until = Instant::now() + STALL;
            while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                std::thread::sleep(POLL);
            }
        }
        None | Some(Fault::CutResponse) => {
            if let Ok(response) = forward(&request, &method, shared) {
                let bytes = response.to_bytes_closing();
                if fault.is_some() {
                    // "HTTP/1.1 20": the request took effect, the answer is lost.
                    let _ = client.write_all(&bytes[..bytes.len().min(11)]);
                } else {
                    let _ = client.write_all(&bytes);
                }
            }
        }
    }
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Both);
}

fn s3_error(client: &mut TcpStream, status: u16, reason: &str, code: &str, number: usize) {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected fault: {reason}</Message><RequestId>fault-{number}</RequestId></Error>"
    );
    let _ = write!(
        client,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn forward(request: &Message, method: &str, shared: &Shared) -> std::io::Result<Message> {
    let address = shared
        .upstream
        .parse()
        .map_err(|_| std::io::Error::other("bad upstream address"))?;
    let mut upstream = TcpStream::connect_timeout(&address, Duration::from_secs(5))?;
    upstream.set_read_timeout(Some(POLL))?;
    upstream.write_all(&request.to_bytes_closing())?;
    upstream.flush()?;
    read_message(&mut upstream, &shared.stop, response_body(method))?
        .ok_or_else(|| std::io::ErrorKind::UnexpectedEof.into())
}

// ------------------------------------------------- S3 read-back, unproxied

/// A GET on the S3 server: status and decoded body. moto wants some
/// `Authorization` header on object reads; it does not check signatures.
fn s3_get(endpoint: &str, target: &str) -> (u16, Vec<u8>) {
    let address = host_port(endpoint);
    let mut stream = TcpStream::connect(&address).expect("connect to the S3 server");
    stream.set_read_timeout(Some(POLL)).unwrap();
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {address}\r\nAuthorization: AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00\r\nx-amz-date: 20260101T000000Z\r\nx-amz-content-sha256: UNSIGNED-PAYLOAD\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let never = AtomicBool::new(false);
    let response = read_message(&mut stream, &never, response_body("GET"))
        .expect("read the S3 response")
        .expect("an S3 response");
    let status = response
        .start_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response.decoded_body())
}

fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| {
            rest.split_once(&close)
                .map(|(v, _)| v.replace("&amp;", "&"))
        })
        .collect()
}

/// Every key under `prefix` (ListObjectsV2, following continuation tokens).
fn list_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token: Option<String> = None;
    for _ in 0..1000 {
        let mut target = format!("/{bucket}?list-type=2&prefix={prefix}");
        if let Some(token) = &token {
            target.push_str(&format!("&continuation-token={}", percent(token)));
        }
        let (status, body) = s3_get(endpoint, &target);
        let xml = String::from_utf8_lossy(&body).into_owned();
        assert_eq!(status, 200, "list {target}: {xml}");
        keys.extend(xml_values(&xml, "Key"));
        if xml_values(&xml, "IsTruncated").first().map(String::as_str) != Some("true") {
            keys.sort();
            return keys;
        }
        token = xml_values(&xml, "NextContinuationToken").into_iter().next();
    }
    panic!("listing {prefix} did not end");
}

fn percent(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Multipart uploads still in progress under `prefix`.
fn open_multipart_uploads(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    let (status, body) = s3_get(endpoint, &format!("/{bucket}?uploads&prefix={prefix}"));
    let xml = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(status, 200, "{xml}");
    xml_values(&xml, "Key")
}

fn get_object(endpoint: &str, bucket: &str, key: &str) -> Vec<u8> {
    let (status, body) = s3_get(endpoint, &format!("/{bucket}/{key}"));
    assert_eq!(status, 200, "GET {key}: {}", String::from_utf8_lossy(&body));
    body
}

/// The committed manifests under `prefix` (`<prefix>/_manifests/*.json`).
fn manifests(endpoint: &str, bucket: &str, prefix: &str) -> Vec<serde_json::Value> {
    list_keys(endpoint, bucket, &format!("{prefix}/_manifests/"))
        .iter()
        .map(|key| serde_json::from_slice(&get_object(endpoint, bucket, key)).unwrap())
        .collect()
}

fn committed_keys(manifests: &[serde_json::Value]) -> Vec<String> {
    let mut keys: Vec<String> = manifests
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap().clone())
        .map(|f| f["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

fn manifest_rows(manifests: &[serde_json::Value]) -> u64 {
    manifests.iter().map(|m| m["rows"].as_u64().unwrap()).sum()
}

/// The data files under `prefix` (everything but the manifests).
fn data_keys(endpoint: &str, bucket: &str, prefix: &str) -> Vec<String> {
    list_keys(endpoint, bucket, &format!("{prefix}/"))
        .into_iter()
        .filter(|k| !k.contains("/_manifests/"))
        .collect()
}

/// `(id, _xact_id)` of every row of the committed files, sorted; `None`
/// when the files are Parquet and DuckDB is not available.
fn committed_rows(
    endpoint: &str,
    bucket: &str,
    manifests: &[serde_json::Value],
    scratch: &Path,
) -> Option<Vec<(String, String)>> {
    let keys = committed_keys(manifests);
    let mut rows = Vec::new();
    if keys.iter().all(|k| k.ends_with(".jsonl")) {
        for key in &keys {
            let text = String::from_utf8(get_object(endpoint, bucket, key)).unwrap();
            for line in text.lines() {
                let row: serde_json::Value = serde_json::from_str(line).unwrap();
                rows.push((
                    row["id"].as_str().unwrap().to_owned(),
                    row["_xact_id"].to_string().trim_matches('"').to_owned(),
                ));
            }
        }
    } else {
        let Ok(python) = std::env::var("SPANLAKE_DUCKDB_PYTHON") else {
            assert!(
                std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
                "SPANLAKE_REQUIRE_SERVICES is set but SPANLAKE_DUCKDB_PYTHON is not"
            );
            eprintln!("not compared row by row: SPANLAKE_DUCKDB_PYTHON is unset");
            return None;
        };
        std::fs::create_dir_all(scratch).unwrap();
        let mut files = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let file = scratch.join(format!("{i:05}.parquet"));
            std::fs::write(&file, get_object(endpoint, bucket, key)).unwrap();
            files.push(format!("'{}'", file.display()));
        }
        let sql = format!(
            "select id, cast(_xact_id as varchar) from read_parquet([{}])",
            files.join(", ")
        );
        let script = "import json, sys, duckdb\nprint(json.dumps(duckdb.connect().execute(sys.argv[1]).fetchall()))";
        let output = Command::new(python)
            .args(["-c", script, &sql])
            .output()
            .expect("run python with duckdb");
        assert!(
            output.status.success(),
            "duckdb: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let read: Vec<(String, String)> = serde_json::from_slice(&output.stdout).unwrap();
        rows.extend(read);
    }
    rows.sort();
    Some(rows)
}

// ------------------------------------------------------------ the CLI side

/// Run `spanlake <args>` with the S3 settings for the test server and
/// `AWS_TIMEOUT`; kill it and fail past [`RUN_LIMIT`]. Returns the run and
/// how long it took.
fn run_bounded(spanlake: &Spanlake, args: &[&str]) -> (Run, Duration) {
    run_bounded_with(spanlake, args, &[])
}

/// [`run_bounded`] with more environment variables.
fn run_bounded_with(spanlake: &Spanlake, args: &[&str], env: &[(&str, &str)]) -> (Run, Duration) {
    let started = Instant::now();
    let mut child = spanlake
        .command(args)
        .envs(env.iter().copied())
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_TIMEOUT", CLIENT_TIMEOUT)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn spanlake");
    let pipe = |mut reader: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = reader.read_to_string(&mut text);
            text
        })
    };
    let stdout = pipe(Box::new(child.stdout.take().unwrap()));
    let stderr = pipe(Box::new(child.stderr.take().unwrap()));
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > RUN_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`spanlake {}` did not finish within {RUN_LIMIT:?}",
                args.join(" ")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    };
    (run, started.elapsed())
}

fn create_export(spanlake: &Spanlake, name: &str, url: &str, endpoint: &str, sink: &[&str]) {
    let mut args = vec![
        "automation",
        "create-export",
        "--project",
        "p",
        "--name",
        name,
        "--data",
        "spans",
        "--to",
        url,
        "--endpoint",
        endpoint,
    ];
    args.extend_from_slice(sink);
    spanlake.run(&args).ok();
}

fn cursor(spanlake: &Spanlake, name: &str) -> serde_json::Value {
    let run = spanlake
        .run(["automation", "status", name, "-p", "p", "--json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    status["cursor"].clone()
}

fn history(spanlake: &Spanlake, name: &str) -> Vec<serde_json::Value> {
    let run = spanlake
        .run(["automation", "history", name, "-p", "p", "--json"])
        .ok();
    serde_json::from_str::<serde_json::Value>(&run.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Ingest the fixture and a generated file of `spans` spans into `p`.
fn ingest_data(spanlake: &Spanlake, spans: usize) {
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    if spans == 0 {
        return;
    }
    spanlake.ingest("p", &generate_spans(spanlake, spans));
}

/// A JSONL file of `spans` generated spans (tools/gen_spans.py).
fn generate_spans(spanlake: &Spanlake, spans: usize) -> PathBuf {
    let python = std::env::var("SPANLAKE_DUCKDB_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = spanlake.root().join("gen");
    let status = Command::new(python)
        .arg(crate::support::tests_dir().join("../tools/gen_spans.py"))
        .args(["--spans", &spans.to_string(), "--formats", "jsonl", "--out"])
        .arg(&out)
        .stdout(Stdio::null())
        .status()
        .expect("run tools/gen_spans.py");
    assert!(status.success());
    out.join(format!("spans_{spans}.jsonl"))
}

// ------------------------------------------------------------------ tests

/// Export through the faulty proxy until a run succeeds (a failed run must
/// leave the cursor where it was), then compare with a fault-free export of
/// the same rows to moto directly.
fn export_survives_faults(case: &str, seed: u64, per_mille: u64, sink: &[&str]) {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("faults-{}-{case}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    ingest_data(&spanlake, 7000);
    let total = 7013;

    create_export(
        &spanlake,
        "clean",
        &format!("s3://{bucket}/clean"),
        &endpoint,
        sink,
    );
    let (clean, clean_took) = run_bounded(&spanlake, &["automation", "run", "clean", "-p", "p"]);
    let clean = clean.ok();

    let mut proxy = FaultProxy::start(&host_port(&endpoint), seed, Mode::Faulty, per_mille, 3);
    create_export(
        &spanlake,
        "faulty",
        &format!("s3://{bucket}/faulty"),
        &proxy.endpoint(),
        sink,
    );
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut attempts = Vec::new();
    loop {
        assert!(
            attempts.len() < 8 && Instant::now() < deadline,
            "no run succeeded through the faults: {attempts:#?}"
        );
        let before = cursor(&spanlake, "faulty");
        let (run, took) = run_bounded(&spanlake, &["automation", "run", "faulty", "-p", "p"]);
        let first_error = run
            .stderr
            .lines()
            .find(|l| l.starts_with("error"))
            .unwrap_or_default()
            .to_owned();
        attempts.push((run.code, took, first_error));
        if run.code == 0 {
            break;
        }
        assert_eq!(
            cursor(&spanlake, "faulty"),
            before,
            "a failed run moved the cursor\n{}",
            run.stderr
        );
    }
    // Nothing left: a further run finds nothing new.
    let (again, _) = run_bounded(&spanlake, &["automation", "run", "faulty", "-p", "p"]);
    assert!(
        again.ok().stderr.contains("nothing new to export"),
        "exported twice"
    );
    proxy.stop();
    let counts = proxy.fault_counts();
    let faults: usize = counts
        .iter()
        .filter(|(f, _)| f.is_some())
        .map(|(_, n)| n)
        .sum();
    let requests: usize = counts.values().sum();
    eprintln!(
        "[{case}] clean run {clean_took:?}; faulty runs {attempts:?}; {requests} requests, {faults} faults: {counts:?}"
    );
    let severe: Vec<String> = proxy
        .seen()
        .iter()
        .filter(|s| matches!(s.fault, Some(Fault::Stall | Fault::CutResponse)))
        .map(|s| format!("{:?} {} {}", s.fault.unwrap(), s.method, s.target))
        .collect();
    eprintln!("[{case}] stalls and cut responses: {severe:#?}");
    assert!(faults > 0, "no fault was injected: {counts:?}");

    // Every failed run is in the history with its error.
    let runs = history(&spanlake, "faulty");
    let failed = runs.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!(failed, attempts.len() - 1, "{runs:#?}");
    for run in runs.iter().filter(|r| r["status"] == "failed") {
        assert!(
            run["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{run}"
        );
    }

    // The same rows as the fault-free export, each once.
    let clean_manifests = manifests(&endpoint, &bucket, "clean");
    let faulty_manifests = manifests(&endpoint, &bucket, "faulty");
    assert_eq!(manifest_rows(&clean_manifests), total, "{}", clean.stderr);
    assert_eq!(faulty_manifests.len(), 1, "one committed run");
    assert_eq!(manifest_rows(&faulty_manifests), total);
    // No file outside the committed manifests, no multipart upload left open.
    assert_eq!(
        data_keys(&endpoint, &bucket, "faulty"),
        committed_keys(&faulty_manifests),
        "files outside the committed manifests remain"
    );
    assert_eq!(
        open_multipart_uploads(&endpoint, &bucket, "faulty/"),
        Vec::<String>::new()
    );
    let scratch = spanlake.root().join("read-back");
    let clean_rows = committed_rows(&endpoint, &bucket, &clean_manifests, &scratch.join("c"));
    let faulty_rows = committed_rows(&endpoint, &bucket, &faulty_manifests, &scratch.join("f"));
    if let (Some(clean_rows), Some(faulty_rows)) = (clean_rows, faulty_rows) {
        assert_eq!(faulty_rows.len() as u64, total);
        let mut unique = faulty_rows.clone();
        unique.dedup();
        assert_eq!(unique.len(), faulty_rows.len(), "a row was exported twice");
        assert!(
            faulty_rows == clean_rows,
            "the faulty export has other rows"
        );
    }
}

#[test]
fn faults_jsonl_export_of_many_files_commits_the_same_rows_once() {
    export_survives_faults(
        "jsonl",
        7,
        100,
        &[
            "--format",
            "jsonl",
            "--partitioning",
            "day",
            "--max-file-bytes",
            "64KiB",
        ],
    );
}

#[test]
fn faults_parquet_export_of_many_files_commits_the_same_rows_once() {
    export_survives_faults(
        "parquet",
        11,
        100,
        &[
            "--format",
            "parquet",
            "--partitioning",
            "day",
            "--max-file-bytes",
            "16KiB",
        ],
    );
}

#[test]
fn faults_multipart_jsonl_export_commits_the_same_rows_once() {
    // About 12 MB in one partition: files of 11 MiB go up in 10 MiB parts.
    // Few requests: fault a third of them.
    export_survives_faults(
        "multipart",
        13,
        330,
        &[
            "--format",
            "jsonl",
            "--partitioning",
            "none",
            "--max-file-bytes",
            "11MiB",
        ],
    );
}

/// The server answers 503 to everything: the run fails within a bounded
/// time, naming the operation and key; the history shows it failed; the
/// cursor stays; once the server is back the pending rows go out once.
#[test]
fn faults_server_down_fails_the_run_and_keeps_the_cursor() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("faults-{}-down", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    ingest_data(&spanlake, 0);
    let mut proxy = FaultProxy::start(&host_port(&endpoint), 1, Mode::Down, 0, 0);
    create_export(
        &spanlake,
        "down",
        &format!("s3://{bucket}/down"),
        &proxy.endpoint(),
        &["--format", "jsonl"],
    );
    assert_eq!(cursor(&spanlake, "down"), serde_json::Value::Null);

    let (run, took) = run_bounded(&spanlake, &["automation", "run", "down", "-p", "p"]);
    let requests = proxy.seen().len();
    eprintln!(
        "[down] the run failed after {took:?} and {requests} requests:\n{}",
        run.stderr
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    let error_line = run
        .stderr
        .lines()
        .find(|l| l.starts_with("error"))
        .unwrap_or_default()
        .to_owned();
    let names_operation = |text: &str| text.contains("`put`") && text.contains("down/date=");
    assert!(
        names_operation(&run.stderr),
        "the error does not name the operation and key:\n{}",
        run.stderr
    );
    assert!(
        requests > 1,
        "object_store did not retry ({requests} requests)"
    );
    let runs = history(&spanlake, "down");
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "failed", "{runs:#?}");
    let error = runs[0]["error"].as_str().unwrap_or_default();
    assert!(
        names_operation(error),
        "the history error does not name the operation and key: {error} (stderr: {error_line})"
    );
    assert_eq!(
        cursor(&spanlake, "down"),
        serde_json::Value::Null,
        "the cursor moved"
    );
    assert_eq!(data_keys(&endpoint, &bucket, "down"), Vec::<String>::new());

    // The server is back: exactly the pending rows, once.
    proxy.set_mode(Mode::Pass);
    let (run, _) = run_bounded(&spanlake, &["automation", "run", "down", "-p", "p"]);
    run.ok();
    let committed = manifests(&endpoint, &bucket, "down");
    assert_eq!(committed.len(), 1);
    assert_eq!(manifest_rows(&committed), 13);
    assert_eq!(
        data_keys(&endpoint, &bucket, "down"),
        committed_keys(&committed)
    );
    assert!(cursor(&spanlake, "down").is_string());
    proxy.stop();
}

/// The server goes down in the middle of a run, after some files were
/// written: the run fails, its files are removed (now or by a later run),
/// the cursor stays, and once the server is back everything goes out once.
#[test]
fn faults_server_down_mid_run_leaves_no_orphan_files() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("faults-{}-midrun", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    ingest_data(&spanlake, 2000);
    let mut proxy = FaultProxy::start(&host_port(&endpoint), 1, Mode::Pass, 0, 0);
    create_export(
        &spanlake,
        "mid",
        &format!("s3://{bucket}/mid"),
        &proxy.endpoint(),
        &["--format", "jsonl", "--max-file-bytes", "32KiB"],
    );
    proxy.go_down_after(20);
    let (run, took) = run_bounded(&spanlake, &["automation", "run", "mid", "-p", "p"]);
    eprintln!("[mid-run] failed after {took:?}:\n{}", run.stderr);
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        cursor(&spanlake, "mid"),
        serde_json::Value::Null,
        "the cursor moved"
    );
    let left_after_failure = data_keys(&endpoint, &bucket, "mid");

    proxy.set_mode(Mode::Pass);
    let (run, _) = run_bounded(&spanlake, &["automation", "run", "mid", "-p", "p"]);
    run.ok();
    proxy.stop();
    let committed = manifests(&endpoint, &bucket, "mid");
    assert_eq!(committed.len(), 1);
    assert_eq!(manifest_rows(&committed), 2013);
    assert_eq!(
        data_keys(&endpoint, &bucket, "mid"),
        committed_keys(&committed),
        "files of the failed run remain ({} were left right after it)",
        left_after_failure.len()
    );
}

/// An export whose rows are split across three partitions (set with
/// DataFusion's own `DATAFUSION_EXECUTION_TARGET_PARTITIONS`; three
/// commits, so three files, so three batches dealt round-robin): the server
/// goes down while the partitions write, so one fails first and stops the
/// others; nothing is committed and the cursor stays. The rerun writes one
/// manifest that lists the files of every partition, and nothing else is
/// left in the bucket.
#[test]
fn faults_a_failed_partition_fails_the_run_and_one_manifest_lists_every_partition() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("faults-{}-parts", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    ingest_data(&spanlake, 0);
    let generated = std::fs::read_to_string(generate_spans(&spanlake, 2100)).unwrap();
    let lines: Vec<&str> = generated.lines().collect();
    for (i, chunk) in lines.chunks(700).enumerate() {
        let file = spanlake.root().join(format!("chunk-{i}.jsonl"));
        std::fs::write(&file, chunk.join("\n") + "\n").unwrap();
        spanlake.ingest("p", &file);
    }
    let mut proxy = FaultProxy::start(&host_port(&endpoint), 1, Mode::Pass, 0, 0);
    create_export(
        &spanlake,
        "parts",
        &format!("s3://{bucket}/parts"),
        &proxy.endpoint(),
        &["--format", "jsonl", "--max-file-bytes", "32KiB"],
    );
    let env = [
        ("SPANLAKE_TEST_STORE_RETRIES", "0"),
        ("DATAFUSION_EXECUTION_TARGET_PARTITIONS", "3"),
    ];
    let run = ["automation", "run", "parts", "-p", "p"];
    proxy.go_down_after(12);
    let (failed, _) = run_bounded_with(&spanlake, &run, &env);
    eprintln!("[parts] the failed run:\n{}", failed.stderr);
    assert_ne!(failed.code, 0, "{}", failed.stderr);
    assert!(
        failed.stderr.contains("HTTP 503"),
        "the error does not say what failed: {}",
        failed.stderr
    );
    assert!(
        manifests(&endpoint, &bucket, "parts").is_empty(),
        "a failed run committed a manifest"
    );
    assert_eq!(
        cursor(&spanlake, "parts"),
        serde_json::Value::Null,
        "the cursor moved"
    );
    let partitions_of = |keys: &[String]| {
        keys.iter()
            .filter_map(|k| k.rsplit('/').next()?.get(..7).map(str::to_owned))
            .collect::<BTreeSet<_>>()
    };
    let left = data_keys(&endpoint, &bucket, "parts");
    eprintln!(
        "[parts] left right after the failure: {} file(s) of {:?}",
        left.len(),
        partitions_of(&left)
    );

    proxy.set_mode(Mode::Pass);
    run_bounded_with(&spanlake, &run, &env).0.ok();
    proxy.stop();
    let committed = manifests(&endpoint, &bucket, "parts");
    assert_eq!(committed.len(), 1);
    assert_eq!(manifest_rows(&committed), 2113);
    let keys = committed_keys(&committed);
    assert_eq!(
        partitions_of(&keys),
        BTreeSet::from([
            "part-00".to_owned(),
            "part-01".to_owned(),
            "part-02".to_owned()
        ]),
        "the manifest does not list files of every partition: {keys:#?}"
    );
    assert_eq!(
        data_keys(&endpoint, &bucket, "parts"),
        keys,
        "files of the failed run remain"
    );
    let rows = committed_rows(
        &endpoint,
        &bucket,
        &committed,
        &spanlake.root().join("read"),
    )
    .expect("JSON Lines are read without DuckDB");
    let ids: BTreeSet<&str> = rows.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), rows.len(), "a row was written twice");
    assert_eq!(rows.len(), 2113);
}

/// `spanlake serve` meets a burst of 503s: each scheduled run fails at its
/// first write (object_store's own retries are off for the test), is
/// recorded as retryable, and the scheduler tries again after a doubling
/// wait, until the burst is over and the rows go out once. Beside it, an
/// export to a bucket that does not exist fails once and is not retried
/// within its interval.
#[test]
fn faults_serve_retries_a_503_burst_until_it_succeeds_and_a_missing_bucket_once() {
    let Some(endpoint) = s3_endpoint() else {
        return;
    };
    let bucket = format!("faults-{}-burst", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spanlake = Spanlake::new();
    ingest_data(&spanlake, 0);
    let mut proxy = FaultProxy::start(&host_port(&endpoint), 1, Mode::Pass, 0, 0);
    const BURST: usize = 3;
    proxy.fail_writes(BURST);
    let sink = [
        "--format",
        "jsonl",
        "--partitioning",
        "none",
        "--interval",
        "1h",
    ];
    create_export(
        &spanlake,
        "burst",
        &format!("s3://{bucket}/burst"),
        &proxy.endpoint(),
        &sink,
    );
    create_export(
        &spanlake,
        "nobucket",
        &format!("s3://{bucket}-missing/x"),
        &endpoint,
        &sink,
    );
    let mut serve = spanlake
        .command(["serve", "--no-http", "--retry-delay", "300ms"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_TIMEOUT", CLIENT_TIMEOUT)
        .env("SPANLAKE_TEST_STORE_RETRIES", "0")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn spanlake serve");
    let started = Instant::now();
    let succeeded = |runs: &[serde_json::Value]| runs.iter().any(|r| r["status"] == "succeeded");
    let runs = loop {
        let runs = history(&spanlake, "burst");
        if succeeded(&runs) {
            break runs;
        }
        if started.elapsed() > Duration::from_secs(90) || serve.try_wait().unwrap().is_some() {
            let _ = serve.kill();
            panic!("serve did not get past the burst: {runs:#?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // A few more ticks: the missing bucket must not be tried again.
    std::thread::sleep(Duration::from_secs(2));
    let _ = serve.kill();
    let _ = serve.wait();

    eprintln!(
        "[burst] runs, newest first: {:?}",
        runs.iter()
            .map(|r| (
                r["status"].as_str().unwrap_or_default(),
                r["started"].as_str().unwrap_or_default()
            ))
            .collect::<Vec<_>>()
    );
    assert_eq!(runs.len(), BURST + 1, "{runs:#?}");
    assert_eq!(runs[0]["status"], "succeeded", "{runs:#?}");
    for failed in &runs[1..] {
        assert_eq!(failed["status"], "failed", "{runs:#?}");
        assert_eq!(failed["details"]["retryable"], true, "{failed:#}");
        let error = failed["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("HTTP 503") && error.contains("burst/"),
            "the error does not say what the destination answered for which key: {error}"
        );
    }
    let committed = manifests(&endpoint, &bucket, "burst");
    assert_eq!(committed.len(), 1);
    assert_eq!(manifest_rows(&committed), 13);
    assert_eq!(
        data_keys(&endpoint, &bucket, "burst"),
        committed_keys(&committed),
        "a failed run left a file behind"
    );
    assert!(cursor(&spanlake, "burst").is_string());

    let missing = history(&spanlake, "nobucket");
    assert_eq!(
        missing.len(),
        1,
        "retried within its interval: {missing:#?}"
    );
    assert_eq!(missing[0]["status"], "failed");
    assert_eq!(missing[0]["details"]["retryable"], false, "{missing:#?}");
    proxy.stop();
}
