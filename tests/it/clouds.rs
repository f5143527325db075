//! Exports to Google Cloud Storage and Azure Blob Storage, against their
//! emulators as real processes (`scripts/test` starts them): Azurite
//! (`$SPANLAKE_AZURITE_URL`, which checks Shared Key signatures and SAS
//! tokens) and fake-gcs-server behind `tools/gcs_xml_adapter.py`
//! (`$SPANLAKE_GCS_URL`; it checks no credentials). What the exports wrote is
//! read back from the emulators by the Azure SDK or plain HTTP and by DuckDB,
//! never through spanlake.
//!
//! Without the services these tests skip with a notice, unless
//! `SPANLAKE_REQUIRE_SERVICES` is set (then they fail).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::faults::{FaultProxy, Mode, host_port};
use crate::http::{Server, api_key, create_project, logs3_body};
use crate::support::{Run, Spanlake, duckdb_rows, fixtures_dir, service_var};

/// Reads and writes the emulators' stores with the Azure SDK and plain
/// HTTP: `OP BACKEND PLACE ARG`, answering JSON on stdout.
const STORE_SCRIPT: &str = r#"
import json, os, sys, urllib.parse, urllib.request
op, backend, place, arg = sys.argv[1:5]
def out(value):
    print(json.dumps(value))
if backend == "azure":
    from azure.storage.blob import BlobServiceClient, generate_container_sas, ContainerSasPermissions
    import datetime
    svc = BlobServiceClient.from_connection_string(os.environ["STORE_CS"], api_version="2025-11-05")
    container = svc.get_container_client(place)
    if op == "create":
        container.create_container(); out(True)
    elif op == "list":
        out(sorted(b.name for b in container.list_blobs(name_starts_with=arg)))
    elif op == "download":
        for key, path in json.loads(arg).items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(container.download_blob(key).readall())
        out(True)
    elif op == "sas":
        out(generate_container_sas(os.environ["STORE_ACCOUNT"], place, account_key=os.environ["STORE_KEY"],
            permission=ContainerSasPermissions.from_string(arg),
            expiry=datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)))
else:
    base = os.environ["STORE_GCS"]
    if op == "create":
        body = json.dumps({"name": place}).encode()
        urllib.request.urlopen(urllib.request.Request(f"{base}/storage/v1/b?project=test", data=body,
            headers={"Content-Type": "application/json"}, method="POST")).read()
        out(True)
    elif op == "list":
        names, token = [], None
        while True:
            query = {"prefix": arg}
            if token: query["pageToken"] = token
            listing = json.load(urllib.request.urlopen(f"{base}/storage/v1/b/{place}/o?{urllib.parse.urlencode(query)}"))
            names += [item["name"] for item in listing.get("items", [])]
            token = listing.get("nextPageToken")
            if not token: break
        out(sorted(names))
    elif op == "download":
        for key, path in json.loads(arg).items():
            os.makedirs(os.path.dirname(path), exist_ok=True)
            url = f"{base}/download/storage/v1/b/{place}/o/{urllib.parse.quote(key, safe='')}?alt=media"
            with open(path, "wb") as f:
                f.write(urllib.request.urlopen(url).read())
        out(True)
"#;

/// A cloud under test and how to reach its emulator.
#[derive(Debug, Clone)]
enum Cloud {
    Azure {
        url: String,
        account: String,
        key: String,
    },
    Gcs {
        url: String,
        json_url: String,
    },
}

impl Cloud {
    fn azure() -> Option<Self> {
        Some(Self::Azure {
            url: service_var("SPANLAKE_AZURITE_URL")?,
            account: service_var("SPANLAKE_AZURITE_ACCOUNT")?,
            key: service_var("SPANLAKE_AZURITE_KEY")?,
        })
    }

    fn gcs() -> Option<Self> {
        Some(Self::Gcs {
            url: service_var("SPANLAKE_GCS_URL")?,
            json_url: service_var("SPANLAKE_GCS_JSON_URL")?,
        })
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Azure { .. } => "azure",
            Self::Gcs { .. } => "gcs",
        }
    }

    /// The export URL of `place` (bucket or container) and `prefix`.
    fn export_url(&self, place: &str, prefix: &str) -> String {
        match self {
            Self::Azure { .. } => format!("az://{place}/{prefix}"),
            Self::Gcs { .. } => format!("gs://{place}/{prefix}"),
        }
    }

    /// A new bucket or container, unique to this test process.
    fn new_place(&self, python: &str, test: &str) -> String {
        let place = format!("sl{}-{test}", std::process::id());
        self.store(python, "create", &place, "");
        place
    }

    fn store(&self, python: &str, op: &str, place: &str, arg: &str) -> serde_json::Value {
        let mut command = Command::new(python);
        command.args(["-c", STORE_SCRIPT, op, self.name(), place, arg]);
        match self {
            Self::Azure { url, account, key } => {
                command
                    .env(
                        "STORE_CS",
                        format!(
                            "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={url}/{account};"
                        ),
                    )
                    .env("STORE_ACCOUNT", account)
                    .env("STORE_KEY", key);
            }
            Self::Gcs { json_url, .. } => {
                command.env("STORE_GCS", json_url);
            }
        }
        let output = command.output().expect("run python");
        assert!(
            output.status.success(),
            "store `{op}` on {place} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).expect("the store script printed JSON")
    }

    fn list(&self, python: &str, place: &str, prefix: &str) -> Vec<String> {
        serde_json::from_value(self.store(python, "list", place, prefix)).unwrap()
    }

    /// Download `keys` into `dir`, keeping their paths; returns the files.
    fn download(&self, python: &str, place: &str, keys: &[String], dir: &Path) -> Vec<PathBuf> {
        let files: Vec<PathBuf> = keys.iter().map(|k| dir.join(k)).collect();
        let map: serde_json::Map<String, serde_json::Value> = keys
            .iter()
            .zip(&files)
            .map(|(k, f)| (k.clone(), f.display().to_string().into()))
            .collect();
        self.store(
            python,
            "download",
            place,
            &serde_json::Value::Object(map).to_string(),
        );
        files
    }

    /// The committed manifests under `prefix`, oldest first (their names
    /// are UUIDv7 run ids).
    fn manifests(
        &self,
        python: &str,
        place: &str,
        prefix: &str,
        dir: &Path,
    ) -> Vec<serde_json::Value> {
        let keys = self.list(python, place, &format!("{prefix}/_manifests/"));
        self.download(python, place, &keys, dir)
            .iter()
            .map(|f| serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap())
            .collect()
    }

    /// The environment of a `spanlake` process that writes to the
    /// emulator with the cloud's usual variables (`how` picks which).
    fn credentials(&self, how: Credentials, scratch: &Path) -> Vec<(String, String)> {
        let pairs: Vec<(&str, String)> = match (self, how) {
            (Self::Azure { url, account, key }, Credentials::Standard) => vec![
                ("AZURE_STORAGE_ACCOUNT_NAME", account.clone()),
                ("AZURE_STORAGE_ACCOUNT_KEY", key.clone()),
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", url.clone()),
            ],
            (Self::Azure { url, account, key }, Credentials::Alternative) => vec![(
                "AZURE_STORAGE_CONNECTION_STRING",
                format!(
                    "DefaultEndpointsProtocol=http;AccountName={account};AccountKey={key};BlobEndpoint={url}/{account};"
                ),
            )],
            (Self::Azure { url, account, .. }, Credentials::WrongKey) => vec![
                ("AZURE_STORAGE_ACCOUNT_NAME", account.clone()),
                // A well-formed key of another account.
                ("AZURE_STORAGE_ACCOUNT_KEY", WRONG_AZURE_KEY.into()),
                ("AZURE_STORAGE_USE_EMULATOR", "true".into()),
                ("AZURITE_BLOB_STORAGE_URL", url.clone()),
            ],
            (Self::Gcs { url, .. }, Credentials::Standard) => {
                // A service-account key file in the emulator convention of
                // object_store: no OAuth, the emulator's base URL.
                let file = scratch.join("gcs-key.json");
                std::fs::write(
                    &file,
                    serde_json::json!({
                        "private_key": "", "private_key_id": "", "client_email": "spanlake-test@example.iam.gserviceaccount.com",
                        "disable_oauth": true, "gcs_base_url": url,
                    })
                    .to_string(),
                )
                .unwrap();
                vec![("GOOGLE_SERVICE_ACCOUNT", file.display().to_string())]
            }
            (Self::Gcs { .. }, Credentials::Alternative) => vec![(
                "GOOGLE_SERVICE_ACCOUNT_KEY",
                serde_json::json!({
                    "private_key": "", "private_key_id": "", "client_email": "spanlake-test@example.iam.gserviceaccount.com",
                    "disable_oauth": true,
                })
                .to_string(),
            )],
            (Self::Gcs { url, .. }, Credentials::WrongKey) => {
                // A key file whose private key is not a key.
                let file = scratch.join("gcs-bad-key.json");
                std::fs::write(
                    &file,
                    serde_json::json!({
                        "type": "service_account",
                        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{WRONG_GCS_KEY}\n-----END PRIVATE KEY-----\n"),
                        "private_key_id": "k1", "client_email": "spanlake-test@example.iam.gserviceaccount.com",
                        "gcs_base_url": url,
                    })
                    .to_string(),
                )
                .unwrap();
                vec![("GOOGLE_SERVICE_ACCOUNT", file.display().to_string())]
            }
        };
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    /// `--endpoint` for the alternative credentials (which name no
    /// endpoint themselves).
    fn alternative_endpoint(&self) -> Option<String> {
        match self {
            Self::Azure { .. } => None,
            Self::Gcs { url, .. } => Some(url.clone()),
        }
    }

    /// Secrets that must never appear in any output.
    fn secrets(&self) -> Vec<String> {
        let mut secrets = vec![WRONG_AZURE_KEY.to_string(), WRONG_GCS_KEY.to_string()];
        if let Self::Azure { key, .. } = self {
            secrets.push(key.clone());
        }
        secrets
    }
}

/// Which credentials a `spanlake` process gets.
#[derive(Debug, Clone, Copy)]
enum Credentials {
    /// Azure: account name and key variables with the emulator's URL; GCS:
    /// `GOOGLE_SERVICE_ACCOUNT` naming a key file that names the base URL.
    Standard,
    /// Azure: a connection string; GCS: `GOOGLE_SERVICE_ACCOUNT_KEY` and
    /// `--endpoint`.
    Alternative,
    /// Azure: a valid key of another account; GCS: a key file whose private
    /// key does not parse.
    WrongKey,
}

const WRONG_AZURE_KEY: &str =
    "d3JvbmctYWNjb3VudC1rZXktZm9yLXNwYW5sYWtlLXRlc3RzLW5vdC1yZWFsLTAxMjM0NTY3ODk=";
const WRONG_GCS_KEY: &str = "bm90LWEtcmVhbC1wcml2YXRlLWtleS1zcGFubGFrZQ==";

/// Run `spanlake <args>` with `env`.
fn run_with(spanlake: &Spanlake, args: &[&str], env: &[(String, String)]) -> Run {
    let mut command = spanlake.command(args);
    for (key, value) in env {
        command.env(key, value);
    }
    let output = command.output().expect("run spanlake");
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[track_caller]
fn assert_no_secret(cloud: &Cloud, text: &str) {
    for secret in cloud.secrets() {
        assert!(!text.contains(&secret), "a secret was printed:\n{text}");
    }
}

fn manifest_rows(manifests: &[serde_json::Value]) -> u64 {
    manifests.iter().map(|m| m["rows"].as_u64().unwrap()).sum()
}

fn manifest_keys(manifests: &[serde_json::Value]) -> Vec<String> {
    let mut keys: Vec<String> = manifests
        .iter()
        .flat_map(|m| m["files"].as_array().unwrap().iter())
        .map(|f| f["key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

/// The data files under `prefix` (everything but the manifests).
fn data_keys(cloud: &Cloud, python: &str, place: &str, prefix: &str) -> Vec<String> {
    cloud
        .list(python, place, &format!("{prefix}/"))
        .into_iter()
        .filter(|k| !k.contains("/_manifests/"))
        .collect()
}

fn history(spanlake: &Spanlake, name: &str) -> String {
    spanlake
        .run(["automation", "history", name, "-p", "p", "--json"])
        .ok()
        .stdout
}

/// A day-partitioned Parquet spans export and a JSON Lines traces export
/// to `cloud`, each read back from the emulator by DuckDB with the
/// manifests' exact counts; a rerun adds nothing; an update goes out once
/// more; no secret is printed or kept in the history.
fn exports_once(cloud: &Cloud) {
    let Some(python) = service_var("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let spanlake = Spanlake::new();
    let scratch = spanlake.root().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let place = cloud.new_place(&python, "exports");
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let traces = spanlake
        .query_jsonl("select: root_span_id | from: project_logs('p') summary")
        .ok()
        .jsonl()
        .len();
    assert!(traces > 1);

    let standard = cloud.credentials(Credentials::Standard, &scratch);
    let alternative = cloud.credentials(Credentials::Alternative, &scratch);
    spanlake.create_export(
        "spans",
        "spans",
        &cloud.export_url(&place, "spans"),
        &["--format", "parquet", "--partitioning", "day"],
    );
    let mut traces_args = vec!["--format", "jsonl", "--partitioning", "none"];
    let endpoint = cloud.alternative_endpoint();
    if let Some(endpoint) = &endpoint {
        traces_args.extend(["--endpoint", endpoint.as_str()]);
    }
    spanlake.create_export(
        "traces",
        "traces",
        &cloud.export_url(&place, "traces"),
        &traces_args,
    );
    let mut outputs = String::new();
    let mut run = |name: &str, env: &[(String, String)]| {
        let run = run_with(&spanlake, &["automation", "run", name, "-p", "p"], env).ok();
        outputs.push_str(&run.stdout);
        outputs.push_str(&run.stderr);
        run
    };
    run("spans", &standard);
    run("traces", &alternative);

    // Spans: one file per day, under hive folders; DuckDB reads exactly the
    // manifest's rows, each once, each in the folder of its day.
    let spans = cloud.manifests(&python, &place, "spans", &scratch.join("m1"));
    assert_eq!(spans.len(), 1, "{spans:#?}");
    assert_eq!(manifest_rows(&spans), 13);
    let keys = manifest_keys(&spans);
    assert_eq!(
        data_keys(cloud, &python, &place, "spans"),
        keys,
        "files outside the manifest"
    );
    assert!(
        keys.iter()
            .all(|k| k.starts_with("spans/date=") && k.ends_with(".parquet")),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 4, "one file per day: {keys:?}");
    let files = cloud.download(&python, &place, &keys, &scratch.join("spans"));
    let list = files
        .iter()
        .map(|f| format!("'{}'", f.display()))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        duckdb_rows(
            &python,
            &format!(
                "select count(*), count(distinct id), count(*) filter (where cast(created as date) <> cast(date as date)) \
                 from read_parquet([{list}], hive_partitioning = true)"
            )
        ),
        serde_json::json!([[13, 13, 0]])
    );

    // Traces: one JSON line per trace.
    let trace_manifests = cloud.manifests(&python, &place, "traces", &scratch.join("m2"));
    assert_eq!(trace_manifests.len(), 1);
    assert_eq!(manifest_rows(&trace_manifests), traces as u64);
    let keys = manifest_keys(&trace_manifests);
    assert_eq!(data_keys(cloud, &python, &place, "traces"), keys);
    let files = cloud.download(&python, &place, &keys, &scratch.join("traces"));
    let list = files
        .iter()
        .map(|f| format!("'{}'", f.display()))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        duckdb_rows(
            &python,
            &format!("select count(*), count(distinct root_span_id) from read_json_auto([{list}])")
        ),
        serde_json::json!([[traces, traces]])
    );

    // A rerun finds nothing new and writes nothing.
    for (name, env) in [("spans", &standard), ("traces", &alternative)] {
        let again = run(name, env);
        assert!(
            again.stderr.contains("nothing new to export"),
            "{}",
            again.stderr
        );
    }
    assert_eq!(
        cloud
            .manifests(&python, &place, "spans", &scratch.join("m3"))
            .len(),
        1
    );
    assert_eq!(
        cloud
            .manifests(&python, &place, "traces", &scratch.join("m4"))
            .len(),
        1
    );

    // A child span of t1 changes: it goes out once more, and so does t1's trace.
    let update = spanlake.write_file(
        "update.jsonl",
        r#"{"id":"t1-llm","_is_merge":true,"output":"changed for the cloud test"}"#,
    );
    spanlake.ingest("p", &update);
    run("spans", &standard);
    run("traces", &alternative);
    let spans = cloud.manifests(&python, &place, "spans", &scratch.join("m5"));
    assert_eq!(spans.len(), 2);
    assert_eq!(manifest_rows(&spans), 14);
    let second = spans
        .iter()
        .find(|m| m["rows"] == 1)
        .expect("a run of one row");
    let key = second["files"][0]["key"].as_str().unwrap().to_string();
    let file = &cloud.download(&python, &place, &[key], &scratch.join("update"))[0];
    assert_eq!(
        duckdb_rows(
            &python,
            &format!("select id, output from read_parquet('{}')", file.display())
        ),
        serde_json::json!([["t1-llm", "\"changed for the cloud test\""]])
    );
    let trace_manifests = cloud.manifests(&python, &place, "traces", &scratch.join("m6"));
    assert_eq!(trace_manifests.len(), 2);
    assert_eq!(manifest_rows(&trace_manifests), traces as u64 + 1);
    assert_eq!(
        data_keys(cloud, &python, &place, "spans"),
        manifest_keys(&spans)
    );

    outputs.push_str(&history(&spanlake, "spans"));
    outputs.push_str(&history(&spanlake, "traces"));
    assert_no_secret(cloud, &outputs);
}

#[test]
fn clouds_azure_exports_spans_parquet_and_traces_jsonl_once() {
    if let Some(cloud) = Cloud::azure() {
        exports_once(&cloud);
    }
}

#[test]
fn clouds_gcs_exports_spans_parquet_and_traces_jsonl_once() {
    if let Some(cloud) = Cloud::gcs() {
        exports_once(&cloud);
    }
}

/// The steps of `automation test NAME` as JSON, and the whole output.
fn probe(
    spanlake: &Spanlake,
    name: &str,
    env: &[(String, String)],
) -> (Vec<serde_json::Value>, String) {
    let run = run_with(
        spanlake,
        &["automation", "test", name, "-p", "p", "--json"],
        env,
    );
    let steps: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr));
    let steps = steps
        .as_array()
        .or_else(|| steps["steps"].as_array())
        .unwrap_or_else(|| panic!("no steps: {steps}"))
        .clone();
    (steps, format!("{}{}", run.stdout, run.stderr))
}

/// The step that failed: its name and message; every step before it is ok.
#[track_caller]
fn failed_step(steps: &[serde_json::Value]) -> (String, String) {
    let at = steps
        .iter()
        .position(|s| s["ok"] == false)
        .unwrap_or_else(|| panic!("no step failed: {steps:#?}"));
    assert_eq!(
        at,
        steps.len() - 1,
        "steps went on after a failure: {steps:#?}"
    );
    (
        steps[at]["step"].as_str().unwrap().to_string(),
        steps[at]["message"].as_str().unwrap().to_string(),
    )
}

/// `automation test` writes, reads back and deletes a probe; with a wrong
/// key or an unknown bucket or container it fails at the step where it
/// fails, naming the bucket or container, the key and the likely fix.
fn probe_reports_each_step(cloud: &Cloud) {
    let Some(python) = service_var("SPANLAKE_DUCKDB_PYTHON") else {
        return;
    };
    let spanlake = Spanlake::new();
    let scratch = spanlake.root().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let place = cloud.new_place(&python, "probe");
    let standard = cloud.credentials(Credentials::Standard, &scratch);
    spanlake.create_export("ok", "spans", &cloud.export_url(&place, "probe"), &[]);
    let (steps, mut outputs) = probe(&spanlake, "ok", &standard);
    let names: Vec<&str> = steps.iter().map(|s| s["step"].as_str().unwrap()).collect();
    assert_eq!(names, ["connect", "write", "read", "delete"], "{steps:#?}");
    assert!(steps.iter().all(|s| s["ok"] == true), "{steps:#?}");
    assert_eq!(
        cloud.list(&python, &place, "probe/"),
        Vec::<String>::new(),
        "the probe was not deleted"
    );

    // An unknown bucket or container: the write fails, naming it.
    let missing = format!("{place}-missing");
    spanlake.create_export(
        "missing",
        "spans",
        &cloud.export_url(&missing, "probe"),
        &[],
    );
    let (steps, text) = probe(&spanlake, "missing", &standard);
    outputs.push_str(&text);
    let (step, message) = failed_step(&steps);
    assert_eq!(step, "write", "{steps:#?}");
    let (kind, code) = match cloud {
        Cloud::Azure { .. } => ("container", "ContainerNotFound"),
        Cloud::Gcs { .. } => ("bucket", "NoSuchBucket"),
    };
    assert!(
        message.contains(&format!("in {kind} `{missing}`"))
            && message.contains("`probe/_spanlake_probe_")
            && message.contains("HTTP 404")
            && message.contains(code)
            && message.contains(&format!("check the {kind} name in the export path")),
        "{message}"
    );

    // A wrong key.
    let wrong = cloud.credentials(Credentials::WrongKey, &scratch);
    let (steps, text) = probe(&spanlake, "ok", &wrong);
    outputs.push_str(&text);
    let (step, message) = failed_step(&steps);
    match cloud {
        // Azurite checks the signature: the first request is refused (with
        // `AuthorizationFailure`, where Azure says `AuthenticationFailed`;
        // both say "Server failed to authenticate the request").
        Cloud::Azure { .. } => {
            assert_eq!(step, "write", "{steps:#?}");
            assert!(
                message.contains(&format!("in container `{place}`"))
                    && message.contains("`probe/_spanlake_probe_")
                    && message.contains("HTTP 403, AuthorizationFailure")
                    && message.contains("the credentials were refused")
                    && message.contains("AZURE_STORAGE_ACCOUNT_KEY"),
                "{message}"
            );
        }
        // The key is read before any request: the store cannot be made.
        // (The emulator checks no credentials, so a well-formed key of
        // another account would not be refused here as GCS would.)
        Cloud::Gcs { .. } => {
            assert_eq!(step, "connect", "{steps:#?}");
            assert!(
                message.contains("GOOGLE_SERVICE_ACCOUNT")
                    && message.contains("service account")
                    && message.contains(&cloud.export_url(&place, "probe")),
                "{message}"
            );
        }
    }
    outputs.push_str(&history(&spanlake, "ok"));
    assert_no_secret(cloud, &outputs);
}

#[test]
fn clouds_azure_probe_reports_each_step_and_the_likely_fix() {
    if let Some(cloud) = Cloud::azure() {
        probe_reports_each_step(&cloud);
    }
}

#[test]
fn clouds_gcs_probe_reports_each_step_and_the_likely_fix() {
    if let Some(cloud) = Cloud::gcs() {
        probe_reports_each_step(&cloud);
    }
}

/// A SAS token: one with write, read and delete passes the probe; a
/// read-only one fails at `write` with the permission hint. The tokens are
/// never printed.
#[test]
fn clouds_azure_sas_tokens_and_their_permissions() {
    let (Some(cloud), Some(python)) = (Cloud::azure(), service_var("SPANLAKE_DUCKDB_PYTHON"))
    else {
        return;
    };
    let Cloud::Azure { url, account, .. } = &cloud else {
        unreachable!()
    };
    let spanlake = Spanlake::new();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let place = cloud.new_place(&python, "sas");
    spanlake.create_export(
        "sas",
        "spans",
        &cloud.export_url(&place, "s"),
        &[
            "--format",
            "jsonl",
            "--endpoint",
            &format!("{url}/{account}"),
        ],
    );
    let mut outputs = String::new();
    let mut tokens = Vec::new();
    for (permissions, passes) in [("rwdl", true), ("rl", false)] {
        let token = cloud.store(&python, "sas", &place, permissions);
        let token = token.as_str().unwrap().to_string();
        let env = vec![
            ("AZURE_STORAGE_ACCOUNT_NAME".to_string(), account.clone()),
            ("AZURE_STORAGE_SAS_KEY".to_string(), token.clone()),
        ];
        let (steps, text) = probe(&spanlake, "sas", &env);
        outputs.push_str(&text);
        if passes {
            assert!(steps.iter().all(|s| s["ok"] == true), "{steps:#?}");
            let run = run_with(&spanlake, &["automation", "run", "sas", "-p", "p"], &env).ok();
            outputs.push_str(&run.stderr);
        } else {
            let (step, message) = failed_step(&steps);
            assert_eq!(step, "write", "{steps:#?}");
            assert!(
                message.contains("HTTP 403") && message.contains("lack permission"),
                "{message}"
            );
        }
        let sig = token
            .split('&')
            .find_map(|p| p.strip_prefix("sig="))
            .unwrap()
            .to_string();
        tokens.push(sig);
    }
    let scratch = spanlake.root().join("m");
    assert_eq!(
        manifest_rows(&cloud.manifests(&python, &place, "s", &scratch)),
        13
    );
    outputs.push_str(&history(&spanlake, "sas"));
    for sig in tokens {
        assert!(
            !outputs.contains(&sig),
            "a SAS signature was printed:\n{outputs}"
        );
    }
}

/// One-shot `spanlake export --to gs://…` writes the query's rows under a
/// manifest, like a run of an automation.
#[test]
fn clouds_gcs_one_shot_export() {
    let (Some(cloud), Some(python)) = (Cloud::gcs(), service_var("SPANLAKE_DUCKDB_PYTHON")) else {
        return;
    };
    let spanlake = Spanlake::new();
    let scratch = spanlake.root().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let place = cloud.new_place(&python, "oneshot");
    let env = cloud.credentials(Credentials::Standard, &scratch);
    let run = run_with(
        &spanlake,
        &[
            "export",
            "select: id, created | from: project_logs('p')",
            "--to",
            &cloud.export_url(&place, "once"),
            "--format",
            "jsonl",
        ],
        &env,
    )
    .ok();
    let manifests = cloud.manifests(&python, &place, "once", &scratch.join("m"));
    assert_eq!(manifests.len(), 1, "{}", run.stderr);
    assert_eq!(manifest_rows(&manifests), 13);
    assert_eq!(
        data_keys(&cloud, &python, &place, "once"),
        manifest_keys(&manifests)
    );
}

/// Exports created over the REST API to Azure: refused without an allowed
/// prefix (there is no role to assume) and, when allowed, refused while
/// the emulator's plain-http endpoint is not; allowed, a run over REST
/// writes to Azurite once.
#[test]
fn clouds_azure_exports_over_rest_follow_the_destinations_policy() {
    let (Some(cloud), Some(python)) = (Cloud::azure(), service_var("SPANLAKE_DUCKDB_PYTHON"))
    else {
        return;
    };
    let Cloud::Azure { url, .. } = &cloud else {
        unreachable!()
    };
    let spanlake = Spanlake::new();
    let scratch = spanlake.root().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let place = cloud.new_place(&python, "rest");
    let key = api_key(&spanlake, "acme");
    let env = cloud.credentials(Credentials::Standard, &scratch);
    let start = |extra: &[&str]| {
        let mut command = spanlake.command(
            ["serve", "--listen", "127.0.0.1:0"]
                .iter()
                .chain(extra)
                .copied(),
        );
        for (k, v) in &env {
            command.env(k, v);
        }
        Server::start_command(command)
    };
    let export_path = cloud.export_url(&place, "team-a/spans");
    let body = |project: &str| {
        serde_json::json!({"project_id": project, "name": "to-azure", "kind": "export",
            "config": {"data": "spans", "export_path": export_path, "format": "jsonl"}})
        .to_string()
    };

    let prefix = format!("az://{place}/team-a/");
    let endpoint = host_port(url);
    for (extra, rule) in [
        (vec![], "ambient_credentials"),
        (vec!["--allow-export-to", prefix.as_str()], "plain_http"),
    ] {
        let server = start(&extra);
        let project = create_project(&server, &key, "dest");
        let (status, answer) = server.call(
            "POST",
            "/v1/project_automation",
            Some(&key),
            &body(&project),
        );
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["details"][0]["rule"], rule, "{answer}");
    }
    let allowed_endpoint = format!("http://{endpoint}");
    let server = start(&[
        "--allow-export-to",
        &prefix,
        "--allow-endpoint",
        &allowed_endpoint,
    ]);
    let project = create_project(&server, &key, "dest");
    let (status, automation) = server.call(
        "POST",
        "/v1/project_automation",
        Some(&key),
        &body(&project),
    );
    assert_eq!(status, 200, "{automation}");
    let id = automation["id"].as_str().unwrap().to_string();
    let (status, paused) = server.call(
        "PATCH",
        &format!("/v1/project_automation/{id}"),
        Some(&key),
        r#"{"status": "paused"}"#,
    );
    assert_eq!(status, 200, "{paused}");
    let rows: Vec<serde_json::Value> = (0..5)
        .map(|i| serde_json::json!({"id": format!("r{i}"), "created": "2026-11-01T00:00:00Z", "input": i}))
        .collect();
    let (status, answer) = server.call("POST", "/logs3", Some(&key), &logs3_body(&project, &rows));
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = server.call(
        "POST",
        &format!("/v1/project_automation/{id}/run"),
        Some(&key),
        "{}",
    );
    assert_eq!(status, 200, "{answer}");
    let manifests = cloud.manifests(&python, &place, "team-a/spans", &scratch.join("m"));
    assert_eq!(manifest_rows(&manifests), 5, "{answer}");
    assert_no_secret(&cloud, &server.log());
}

/// Azurite goes down (503 to everything) in the middle of a run, after
/// some files were uploaded: the run fails, no manifest is committed, the
/// cursor stays; once it is back the rerun exports every row once and no
/// file of the failed run remains.
#[test]
fn clouds_azure_failure_mid_run_commits_nothing_and_the_rerun_exports_every_row_once() {
    let (Some(cloud), Some(python)) = (Cloud::azure(), service_var("SPANLAKE_DUCKDB_PYTHON"))
    else {
        return;
    };
    let Cloud::Azure { url, .. } = &cloud else {
        unreachable!()
    };
    let spanlake = Spanlake::new();
    let scratch = spanlake.root().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    spanlake.ingest("p", &fixtures_dir().join("basic.jsonl"));
    let generated = spanlake.root().join("gen");
    let status = Command::new(&python)
        .arg(crate::support::tests_dir().join("../tools/gen_spans.py"))
        .args(["--spans", "2000", "--formats", "jsonl", "--out"])
        .arg(&generated)
        .stdout(Stdio::null())
        .status()
        .expect("run tools/gen_spans.py");
    assert!(status.success());
    spanlake.ingest("p", &generated.join("spans_2000.jsonl"));
    let place = cloud.new_place(&python, "faults");

    let mut proxy = FaultProxy::start(&host_port(url), 1, Mode::Pass, 0, 0);
    let mut env = cloud.credentials(Credentials::Standard, &scratch);
    for (k, v) in &mut env {
        if k == "AZURITE_BLOB_STORAGE_URL" {
            *v = proxy.endpoint();
        }
    }
    spanlake.create_export(
        "mid",
        "spans",
        &cloud.export_url(&place, "mid"),
        &["--format", "jsonl", "--max-file-bytes", "32KiB"],
    );
    proxy.go_down_after(20);
    let mut failing = env.clone();
    // Two retries per request instead of ten: the outcome is the same,
    // the test is quicker.
    failing.push(("SPANLAKE_TEST_STORE_RETRIES".to_string(), "2".to_string()));
    let run = run_with(
        &spanlake,
        &["automation", "run", "mid", "-p", "p"],
        &failing,
    );
    assert_ne!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stderr.contains("503") && run.stderr.contains("mid/"),
        "the error names neither the answer nor the key:\n{}",
        run.stderr
    );
    let uploads = proxy
        .seen()
        .iter()
        .filter(|s| s.method == "PUT" && s.fault.is_none())
        .count();
    assert!(
        uploads >= 2,
        "the failure did not come mid-run: {uploads} uploads"
    );
    assert_eq!(
        cloud.list(&python, &place, "mid/_manifests/"),
        Vec::<String>::new(),
        "a manifest of the failed run"
    );
    let status = spanlake
        .run(["automation", "status", "mid", "-p", "p", "--json"])
        .ok();
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(
        status["cursor"],
        serde_json::Value::Null,
        "the cursor moved"
    );

    proxy.set_mode(Mode::Pass);
    run_with(&spanlake, &["automation", "run", "mid", "-p", "p"], &env).ok();
    proxy.stop();
    let manifests = cloud.manifests(&python, &place, "mid", &scratch.join("m"));
    assert_eq!(manifests.len(), 1);
    assert_eq!(manifest_rows(&manifests), 2013);
    let keys = manifest_keys(&manifests);
    assert_eq!(
        data_keys(&cloud, &python, &place, "mid"),
        keys,
        "files of the failed run remain"
    );
    let files = cloud.download(&python, &place, &keys, &scratch.join("data"));
    let list = files
        .iter()
        .map(|f| format!("'{}'", f.display()))
        .collect::<Vec<_>>()
        .join(", ");
    assert_eq!(
        duckdb_rows(
            &python,
            &format!(
                "select count(*), count(distinct id) from read_json([{list}], format = 'newline_delimited', columns = {{'id': 'VARCHAR'}})"
            )
        ),
        serde_json::json!([[2013, 2013]])
    );
    let runs = history(&spanlake, "mid");
    let runs: serde_json::Value = serde_json::from_str(&runs).unwrap();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert!(
        statuses.contains(&"failed") && statuses.contains(&"succeeded"),
        "{statuses:?}"
    );
    assert_no_secret(&cloud, &format!("{}{}{runs}", run.stdout, run.stderr));
}
