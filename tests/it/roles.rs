//! Exports that assume an IAM role with the automation's external id, against
//! a moto server of their own that enforces signatures, IAM policies and
//! trust policies (`INITIAL_NO_AUTH_ACTION_COUNT`: the first N requests, our
//! unsigned setup, are let through; every later one is checked).
//!
//! moto comes from the venv that `tools/s3-server` installs
//! (`${SPANLAKE_TOOLS_CACHE:-~/.cache/spanlake-tools}/moto-venv`); without it
//! the test skips with a notice, unless `SPANLAKE_REQUIRE_SERVICES` is set.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Run, Spanlake, fixtures_dir};

/// moto's default account.
pub(crate) const ACCOUNT: &str = "123456789012";

pub(crate) fn moto_server() -> Option<PathBuf> {
    let cache = std::env::var_os("SPANLAKE_TOOLS_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("spanlake-tools"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/spanlake-tools"))
        })?;
    let binary = cache.join("moto-venv/bin/moto_server");
    if binary.is_file() {
        return Some(binary);
    }
    assert!(
        std::env::var_os("SPANLAKE_REQUIRE_SERVICES").is_none(),
        "SPANLAKE_REQUIRE_SERVICES is set but moto is not installed at {} (run tools/s3-server start once)",
        binary.display()
    );
    eprintln!(
        "skipped: moto is not installed at {} (tools/s3-server start installs it)",
        binary.display()
    );
    None
}

/// A moto server on a free port, killed (by its pid) when dropped.
pub(crate) struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    pub(crate) fn start(binary: &PathBuf, no_auth_actions: u32) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("INITIAL_NO_AUTH_ACTION_COUNT", no_auth_actions.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        // A plain connect: any HTTP request would count as an action.
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "moto did not start on port {port}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        moto
    }

    pub(crate) fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// An unsigned request that names `service` in a dummy SigV4 header (so
    /// moto routes it); accepted only while the no-auth count lasts.
    pub(crate) fn call(
        &self,
        service: &str,
        method: &str,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, String) {
        let body: String = form
            .iter()
            .map(|(k, v)| format!("{k}={}", percent(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=setup/20240101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n{body}",
            port = self.port,
            len = body.len()
        )
        .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        let status = reply
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, reply)
    }

    pub(crate) fn iam(&self, form: &[(&str, &str)]) -> String {
        let mut all = vec![("Version", "2010-05-08")];
        all.extend_from_slice(form);
        let (status, reply) = self.call("iam", "POST", "/", &all);
        assert_eq!(status, 200, "IAM {form:?}: {reply}");
        reply
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn percent(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tag<'a>(xml: &'a str, name: &str) -> &'a str {
    let open = format!("<{name}>");
    let start = xml
        .find(&open)
        .unwrap_or_else(|| panic!("no <{name}> in {xml}"))
        + open.len();
    let end = start + xml[start..].find('<').unwrap();
    &xml[start..end]
}

/// A user with an access key and an inline policy; returns (key id, secret).
/// Three actions.
pub(crate) fn user(moto: &Moto, name: &str, policy: &serde_json::Value) -> (String, String) {
    moto.iam(&[("Action", "CreateUser"), ("UserName", name)]);
    let reply = moto.iam(&[("Action", "CreateAccessKey"), ("UserName", name)]);
    let keys = (
        tag(&reply, "AccessKeyId").to_string(),
        tag(&reply, "SecretAccessKey").to_string(),
    );
    moto.iam(&[
        ("Action", "PutUserPolicy"),
        ("UserName", name),
        ("PolicyName", "inline"),
        ("PolicyDocument", &policy.to_string()),
    ]);
    keys
}

pub(crate) fn allow(actions: &[&str], resources: &[String]) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}],
    })
}

/// `command` with exactly these AWS keys in its environment: no endpoint,
/// session, profile, role or metadata lookup inherited.
pub(crate) fn with_only_keys(command: &mut Command, keys: &(String, String)) {
    for name in [
        "AWS_ENDPOINT",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_STS",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    ] {
        command.env_remove(name);
    }
    command
        .env("AWS_ACCESS_KEY_ID", &keys.0)
        .env("AWS_SECRET_ACCESS_KEY", &keys.1)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_ALLOW_HTTP", "true")
        // No instance metadata lookups on a machine without it.
        .env("AWS_EC2_METADATA_DISABLED", "true");
}

/// `spanlake <args>` with exactly these AWS keys in the environment.
fn run_as(spanlake: &Spanlake, keys: &(String, String), args: &[&str]) -> Run {
    let mut command = spanlake.command(args);
    with_only_keys(&mut command, keys);
    let output = command.output().expect("run the spanlake binary");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn export_assumes_its_role_with_the_automation_external_id() {
    let Some(binary) = moto_server() else {
        return;
    };
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let projects: serde_json::Value = serde_json::from_str(
        &spanlake
            .run(["project", "list", "--format", "json"])
            .ok()
            .stdout,
    )
    .unwrap();
    let org_id = projects[0]["org_id"].as_str().unwrap().to_string();
    let project_id = projects[0]["id"].as_str().unwrap().to_string();

    // Setup: 1 (bucket) + 3 (caller) + 3 (reader) + 2 (role) unsigned actions.
    let moto = Moto::start(&binary, 9);
    let endpoint = moto.endpoint();
    let bucket = "spanlake-roles";
    let role_arn = format!("arn:aws:iam::{ACCOUNT}:role/spanlake-export");
    let create = |name: &str, role: Option<&str>| -> String {
        let url = format!("s3://{bucket}/exports/{name}");
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
            &url,
            "--format",
            "jsonl",
            "--endpoint",
            &endpoint,
        ];
        if let Some(role) = role {
            args.extend(["--role-arn", role]);
        }
        let run = spanlake.run(&args).ok();
        run.stdout.lines().next().unwrap().trim().to_string()
    };
    let good_id = create("good", Some(&role_arn));
    let wrong_id = create("wrong", Some(&role_arn));
    create("reader", None);
    let good_external = format!("spanlake:{org_id}:{project_id}:{good_id}");
    let wrong_external = format!("spanlake:{org_id}:{project_id}:{wrong_id}");

    let (status, reply) = moto.call("s3", "PUT", &format!("/{bucket}"), &[]);
    assert_eq!(status, 200, "{reply}");
    // The caller may only assume roles; it has no S3 permission of its own.
    let caller = user(
        &moto,
        "caller",
        &allow(&["sts:AssumeRole"], &["*".to_string()]),
    );
    // The reader can read the bucket but not write it.
    let reader = user(
        &moto,
        "reader",
        &allow(
            &["s3:GetObject", "s3:ListBucket"],
            &[
                format!("arn:aws:s3:::{bucket}"),
                format!("arn:aws:s3:::{bucket}/*"),
            ],
        ),
    );
    let trust = serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"AWS": format!("arn:aws:iam::{ACCOUNT}:user/caller")},
            "Action": "sts:AssumeRole",
            "Condition": {"StringEquals": {"sts:ExternalId": good_external}},
        }],
    });
    moto.iam(&[
        ("Action", "CreateRole"),
        ("RoleName", "spanlake-export"),
        ("AssumeRolePolicyDocument", &trust.to_string()),
    ]);
    moto.iam(&[
        ("Action", "PutRolePolicy"),
        ("RoleName", "spanlake-export"),
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
    // Enforcement is on now: an unsigned request is refused.
    let (status, reply) = moto.call(
        "iam",
        "POST",
        "/",
        &[("Action", "ListUsers"), ("Version", "2010-05-08")],
    );
    assert_eq!(
        status, 403,
        "moto should enforce IAM after the setup: {reply}"
    );

    let secrets = [&caller.1, &reader.1];
    let no_secret = |run: &Run| {
        for secret in secrets {
            assert!(
                !run.stdout.contains(secret.as_str()) && !run.stderr.contains(secret.as_str()),
                "a secret leaked:\n{}{}",
                run.stdout,
                run.stderr
            );
        }
    };

    // The right external id: every step of `test` passes, and a run exports.
    let test = run_as(
        &spanlake,
        &caller,
        &["automation", "test", "good", "--project", "p"],
    );
    no_secret(&test);
    let test = test.ok();
    assert_eq!(test.stdout.matches("ok ").count(), 5, "{}", test.stdout);
    assert!(test.stdout.contains("ok   assume"), "{}", test.stdout);
    assert!(test.stdout.contains(&good_external), "{}", test.stdout);
    let run = run_as(
        &spanlake,
        &caller,
        &["automation", "run", "good", "--project", "p", "--json"],
    );
    no_secret(&run);
    let report: serde_json::Value = serde_json::from_str(&run.ok().stdout).unwrap();
    assert_eq!(report["rows"], 13, "{report}");
    assert!(report["files"].as_u64().unwrap() >= 1, "{report}");
    let manifest = report["manifest"].as_str().unwrap();
    assert!(
        manifest.starts_with("exports/good/_manifests/"),
        "{manifest}"
    );
    // Nothing new: the second run reads the manifest cursor and stops.
    let again = run_as(
        &spanlake,
        &caller,
        &["automation", "run", "good", "--project", "p", "--json"],
    );
    let again: serde_json::Value = serde_json::from_str(&again.ok().stdout).unwrap();
    assert_eq!(again["rows"], 0, "{again}");

    // Without the role the same user cannot write: the data above landed
    // through the assumed role only.
    let direct = run_as(
        &spanlake,
        &caller,
        &["automation", "test", "reader", "--project", "p"],
    );
    assert_ne!(direct.code, 0, "{}", direct.stdout);
    assert!(direct.stdout.contains("FAIL write"), "{}", direct.stdout);

    // Another automation's external id: STS refuses with 403 at `assume`.
    let wrong = run_as(
        &spanlake,
        &caller,
        &["automation", "test", "wrong", "--project", "p"],
    );
    no_secret(&wrong);
    assert_eq!(wrong.code, 2, "{}{}", wrong.stdout, wrong.stderr);
    assert!(wrong.stdout.contains("FAIL assume"), "{}", wrong.stdout);
    assert!(wrong.stdout.contains("403"), "{}", wrong.stdout);
    assert!(
        wrong.stdout.contains(&format!(
            "the role's trust policy must allow this account/user with sts:ExternalId = `{wrong_external}`"
        )),
        "{}",
        wrong.stdout
    );
    assert!(!wrong.stdout.contains("write"), "{}", wrong.stdout);
    let run = run_as(
        &spanlake,
        &caller,
        &["automation", "run", "wrong", "--project", "p"],
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(run.stderr.contains("sts:ExternalId"), "{}", run.stderr);

    // A user without s3:PutObject: `test` fails at `write` with the hint.
    let denied = run_as(
        &spanlake,
        &reader,
        &["automation", "test", "reader", "--project", "p"],
    );
    no_secret(&denied);
    assert_eq!(denied.code, 2, "{}{}", denied.stdout, denied.stderr);
    assert!(denied.stdout.contains("ok   connect"), "{}", denied.stdout);
    assert!(denied.stdout.contains("FAIL write"), "{}", denied.stdout);
    assert!(denied.stdout.contains("s3:PutObject"), "{}", denied.stdout);
}
