#!/usr/bin/env python3
"""Export benchmark: spanlake export vs DuckDB COPY ... PARTITION_BY, same spans.

One run, on one generated JSONL file of Braintrust-style spans
(tools/gen_spans.py, cached in --work):

0. Setup (not part of the comparison).  ``spanlake ingest`` of the JSONL into
   a fresh data dir (timed, reported on its own line), and DuckDB converting
   the same JSONL once to its own source table: a DuckDB database file
   (``--duckdb-source db``, default) or zstd Parquet (``--duckdb-source
   parquet``), cached in --work and reused while the JSONL, the DuckDB version
   and --duckdb-read-opts are unchanged.  So both engines export from data
   they already hold, not from the raw JSONL.
1. spanlake Parquet, local:
     spanlake export "select: * | from: project_logs('bench') spans"
       --to DIR --format parquet --compression zstd --partitioning day
2. spanlake Parquet, S3: the same to s3://BUCKET/PREFIX on a local S3 server
   (tools/s3-server, moto; the script starts it on --s3-port and stops it
   again if it started it; the bucket is made with an unsigned PUT and
   emptied afterwards).  --s3-formats parquet,jsonl adds a JSONL S3 run.
3. spanlake JSON Lines, local: the same with --format jsonl
   --compression none (or --jsonl-compression gzip).
4. DuckDB Parquet:
     SET TimeZone='UTC';
     COPY (SELECT *, CAST(created AS DATE) AS date FROM spans) TO 'DIR'
       (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))
5. DuckDB JSON Lines: the same with (FORMAT json, PARTITION_BY (date)).

Each measured step is its own process (DuckDB: a fresh ``python -c`` with
default settings, threads = CPU count), forked by a small ``python -S``
launcher and reaped with os.wait4, so its wall time, user+sys CPU and peak
RSS (ru_maxrss) are its own (Linux carries the parent's RSS into a child's
ru_maxrss across fork+exec; the launcher keeps that floor at ~10 MiB, printed
as "launcher floor").  DuckDB
figures include starting Python and importing duckdb (baseline printed as
"python+duckdb startup").  Sources are read once beforehand so every export
starts from the page cache.  --repeat K runs each step K times and keeps the
run with the best wall time.  Outputs are not fsynced by either engine.

Reported per step: wall s, CPU s per million spans, peak RSS MiB, rows/s,
output bytes (data files; spanlake manifests excluded), files, rows.  Rows:
spanlake from its `_manifests/<run>.json` (and, for the local Parquet run,
re-counted with DuckDB); DuckDB by counting its output with DuckDB.  Ratios
(goal in brackets):
  Parquet throughput spanlake / DuckDB   (>= 1.2)
  JSONL   throughput spanlake / DuckDB   (>= 1.5)
  peak RSS spanlake / DuckDB, per format (<= 0.5)
  S3 wall / local wall, spanlake Parquet (<= 1.15)

Usage:
  python3 benches/export.py                          # 1M spans (~1.7 GB JSONL)
  python3 benches/export.py --spans 20000            # quick run (< 1 minute)
  python3 benches/export.py --spans 100000 --repeat 3 --json > figures.json
  python3 benches/export.py --no-s3                  # skip the S3 step
  python3 benches/export.py --s3-spans 200000        # S3 step on a smaller file
  python3 benches/export.py --perf                   # + perf profile of step 1

Options (see --help): --spans N (default 1000000), --work DIR (default
$HOME/.cache/spanlake-bench), --bin PATH (default
${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}/release/spanlake; never
built here: cargo build --release -p spanlake), --repeat K (default 3 up to
200000 spans, else 1),
--project NAME (default bench), --duckdb-source db|parquet,
--duckdb-read-opts OPTS, --jsonl-compression none|gzip, --s3-port P
(default 9311), --s3-spans N (run the S3 step on N spans instead, e.g. if
moto cannot hold the full export in memory; reported as such), --s3-formats,
--no-s3, --keep (keep the export outputs and spanlake data dirs in
--work/export_N), --perf, --json.

Python: the script re-executes itself in the venv of benches/ingest_query.py
($HOME/.cache/spanlake-tools/bench-venv, override with $SPANLAKE_BENCH_VENV),
creating it and installing benches/requirements.txt when missing or stale.

Exit status: 0 on success (goals missed are reported, not fatal), 1 if row
counts differ (between engines, or from the number of spans), 2 on a setup or
run error (missing or stale binary, failed command).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
REQUIREMENTS = HERE / "requirements.txt"
HOME = Path.home()
VENV = Path(os.environ.get("SPANLAKE_BENCH_VENV", HOME / ".cache/spanlake-tools/bench-venv"))
DEFAULT_WORK = HOME / ".cache/spanlake-bench"
DEFAULT_GEN = ROOT / "tools" / "gen_spans.py"
S3_SERVER = ROOT / "tools" / "s3-server"
DEFAULT_BIN = (Path(os.environ.get("CARGO_TARGET_DIR", HOME / ".cache/spanlake-target"))
               / "release" / "spanlake")
BUILD_HINT = "build it with: cargo build --release -p spanlake"

GOALS = {  # name: (comparison, threshold)
    "parquet_throughput": (">=", 1.2),
    "jsonl_throughput": (">=", 1.5),
    "parquet_rss": ("<=", 0.5),
    "jsonl_rss": ("<=", 0.5),
    "s3_over_local_wall": ("<=", 1.15),
}


# --------------------------------------------------------------------------- venv

def ensure_venv() -> None:
    """Re-exec this script under the bench venv (benches/ingest_query.py sets it up)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ingest_query

    ingest_query.ensure_venv(Path(__file__))


# --------------------------------------------------------------------- measuring

@dataclass
class Run:
    """Resource use of one child process."""
    wall_s: float
    cpu_s: float           # user + sys
    peak_rss_mib: float    # ru_maxrss of this child alone
    returncode: int
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# A small launcher between this script and each measured command.  Linux
# carries the peak RSS of the image a process had before execve into the new
# program's ru_maxrss, so a command forked straight from this script (which
# grows while it counts outputs with DuckDB) would report at least this
# script's RSS.  The launcher is a fresh `python -S` (~10 MiB), forks and
# execs the command, reaps it with wait4 and writes its figures to argv[1].
LAUNCHER = """
import json, os, sys, time
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t0
with open(sys.argv[1], "w") as f:
    json.dump({"wall_s": wall, "cpu_s": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "rc": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(cmd: list[str], env: dict | None = None) -> Run:
    """Run cmd as a grandchild under LAUNCHER; return its wall/CPU/peak RSS.

    stdout/stderr go to temporary files (not pipes) so the command never
    blocks on them.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as fig:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, fig.name, *cmd],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        try:
            f = json.loads(fig.read())
        except ValueError:
            f = {"wall_s": 0.0, "cpu_s": 0.0, "maxrss_kib": 0, "rc": proc.returncode or 2}
    return Run(wall_s=f["wall_s"], cpu_s=f["cpu_s"],
               peak_rss_mib=f["maxrss_kib"] / 1024.0,  # Linux: KiB
               returncode=f["rc"], stdout=stdout, stderr=stderr)


def check(run: Run, what: str) -> Run:
    if run.returncode != 0:
        log(f"error: {what} failed with exit code {run.returncode}\n"
            f"{(run.stdout + run.stderr).rstrip()[-4000:]}")
        sys.exit(2)
    return run


def data_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*")
            if p.is_file() and "_manifests" not in p.parts and not p.name.startswith(".")]


def sql_str(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


def warm_page_cache(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for p in files:
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass


# ------------------------------------------------------------------------- data

def generate(gen: Path, spans: int, work: Path) -> Path:
    """Return the cached JSONL for `spans` spans (ingest_query.py's cache)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import ingest_query

    return ingest_query.generate(gen, spans, work)


# ---------------------------------------------------------------------- spanlake

def spanlake_query(project: str) -> str:
    return f"select: * | from: project_logs('{project}') spans"


def spanlake_ingest(bin_: Path, data_dir: Path, project: str, jsonl: Path) -> Run:
    shutil.rmtree(data_dir, ignore_errors=True)
    warm_page_cache(jsonl)
    return check(measure([str(bin_), "--data-dir", str(data_dir), "ingest", "--project", project,
                          str(jsonl)]), "spanlake ingest")


def spanlake_export_cmd(bin_: Path, data_dir: Path, project: str, to: str, fmt: str,
                        compression: str, endpoint: str | None = None) -> list[str]:
    cmd = [str(bin_), "--data-dir", str(data_dir), "export", spanlake_query(project),
           "--to", to, "--format", fmt, "--compression", compression, "--partitioning", "day"]
    if endpoint:
        cmd += ["--endpoint", endpoint]
    return cmd


def local_manifest(out: Path) -> dict:
    ms = sorted((out / "_manifests").glob("*.json"))
    if len(ms) != 1:
        log(f"error: expected one manifest in {out / '_manifests'}, found {len(ms)}")
        sys.exit(2)
    return json.loads(ms[0].read_text())


def manifest_summary(m: dict) -> dict:
    parts: dict[str, int] = {}
    for f in m.get("files", []):
        p = f.get("partition", "").removeprefix("date=")
        parts[p] = parts.get(p, 0) + int(f.get("rows", 0))
    return {"rows": int(m["rows"]), "files": len(m.get("files", [])),
            "bytes": sum(int(f.get("bytes", 0)) for f in m.get("files", [])),
            "partitions": parts}


# ---------------------------------------------------------------------------- S3

class S3:
    """Minimal SigV4-signed client for the local S3 server (bucket admin and reads)."""

    def __init__(self, env: dict):
        self.endpoint = env["AWS_ENDPOINT_URL"].rstrip("/")
        self.key = env.get("AWS_ACCESS_KEY_ID", "testing")
        self.secret = env.get("AWS_SECRET_ACCESS_KEY", "testing")
        self.region = env.get("AWS_REGION", "us-east-1")

    def _req(self, method: str, path: str, query: dict | None = None) -> bytes:
        import datetime as dt
        import hashlib
        import hmac
        q = urllib.parse.quote
        uri = "/" + q(path, safe="/-_.~")
        cq = "&".join(f"{q(k, safe='-_.~')}={q(v, safe='-_.~')}"
                      for k, v in sorted((query or {}).items()))
        now = dt.datetime.now(dt.timezone.utc)
        amz, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
        host = urllib.parse.urlsplit(self.endpoint).netloc
        empty = hashlib.sha256(b"").hexdigest()
        signed = "host;x-amz-content-sha256;x-amz-date"
        creq = "\n".join([method, uri, cq, f"host:{host}", f"x-amz-content-sha256:{empty}",
                          f"x-amz-date:{amz}", "", signed, empty])
        scope = f"{day}/{self.region}/s3/aws4_request"
        sts = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                         hashlib.sha256(creq.encode()).hexdigest()])
        k = ("AWS4" + self.secret).encode()
        for part in (day, self.region, "s3", "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
        headers = {"x-amz-date": amz, "x-amz-content-sha256": empty,
                   "Authorization": f"AWS4-HMAC-SHA256 Credential={self.key}/{scope}, "
                                    f"SignedHeaders={signed}, Signature={sig}"}
        url = self.endpoint + uri + ("?" + cq if cq else "")
        req = urllib.request.Request(url, method=method, headers=headers,
                                     data=b"" if method == "PUT" else None)
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.read()

    def create_bucket(self, bucket: str) -> None:
        self._req("PUT", bucket)

    def list(self, bucket: str, prefix: str) -> list[tuple[str, int]]:
        out, token = [], None
        while True:
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            root = ET.fromstring(self._req("GET", bucket, q))
            ns = root.tag.split("}")[0] + "}" if root.tag.startswith("{") else ""
            for c in root.findall(f"{ns}Contents"):
                out.append((c.findtext(f"{ns}Key"), int(c.findtext(f"{ns}Size") or 0)))
            token = root.findtext(f"{ns}NextContinuationToken")
            if root.findtext(f"{ns}IsTruncated") != "true" or not token:
                return out

    def get(self, bucket: str, key: str) -> bytes:
        return self._req("GET", f"{bucket}/{key}")

    def delete_all(self, bucket: str, delete_bucket: bool = True) -> None:
        for key, _ in self.list(bucket, ""):
            self._req("DELETE", f"{bucket}/{key}")
        if delete_bucket:
            self._req("DELETE", bucket)


def s3_start(port: int) -> tuple[dict, bool]:
    """Start tools/s3-server on port; return (env, started_by_us)."""
    cache = Path(os.environ.get("SPANLAKE_TOOLS_CACHE",
                                Path(os.environ.get("XDG_CACHE_HOME", HOME / ".cache"))
                                / "spanlake-tools"))
    pidfile = cache / "run" / f"moto-{port}.pid"
    running_before = False
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), 0)
            running_before = True
        except (ValueError, OSError):
            pass
    r = subprocess.run([str(S3_SERVER), "start", str(port)], capture_output=True, text=True)
    if r.returncode != 0:
        log(f"error: tools/s3-server start {port} failed:\n{r.stdout}{r.stderr}")
        sys.exit(2)
    env = {}
    for line in r.stdout.splitlines():
        line = line.strip()
        if line.startswith("export ") and "=" in line:
            k, v = line[len("export "):].split("=", 1)
            env[k] = v
    return env, not running_before


def s3_stop(port: int) -> None:
    subprocess.run([str(S3_SERVER), "stop", str(port)], capture_output=True)


# ------------------------------------------------------------------------ DuckDB

# One child process with DuckDB's default settings: argv[1] = database file (or
# :memory:), argv[2:] = statements.
DUCKDB_RUN = ("import sys, duckdb; db = sys.argv[1]; "
              "c = duckdb.connect(db, read_only=db != ':memory:'); "
              "[c.execute(s) for s in sys.argv[2:]]")


def duckdb_read_expr(jsonl: Path, read_opts: str) -> str:
    args = sql_str(jsonl) + (", " + read_opts if read_opts.strip() else "")
    return f"read_json_auto({args})"


def duckdb_stage(jsonl: Path, kind: str, read_opts: str, work: Path) -> tuple[Path, str, float]:
    """Convert the JSONL once to DuckDB's own source (cached); return (path, from-expr, seconds)."""
    import duckdb
    st = jsonl.stat()
    key = json.dumps({"jsonl": str(jsonl), "size": st.st_size, "mtime": st.st_mtime_ns,
                      "duckdb": duckdb.__version__, "read_opts": read_opts}, sort_keys=True)
    stem = jsonl.stem
    path = work / (f"{stem}.export-src.duckdb" if kind == "db" else f"{stem}.export-src.parquet")
    stamp = path.with_name(path.name + ".stamp")
    from_expr = "spans" if kind == "db" else sql_str(path)
    if path.exists() and stamp.exists() and stamp.read_text() == key:
        log(f"reusing DuckDB source {path}")
        return path, from_expr, 0.0
    log(f"DuckDB: staging {jsonl.name} -> {path.name} (once, not timed) ...")
    stamp.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    path.with_name(path.name + ".wal").unlink(missing_ok=True)
    t0 = time.perf_counter()
    read = duckdb_read_expr(jsonl, read_opts)
    if kind == "db":
        con = duckdb.connect(str(path))
        con.execute(f"CREATE TABLE spans AS SELECT * FROM {read}")
        con.execute("CHECKPOINT")
        con.close()
    else:
        duckdb.connect().execute(f"COPY (SELECT * FROM {read}) TO {sql_str(path)} "
                                 "(FORMAT parquet, COMPRESSION zstd)")
    stamp.write_text(key)
    secs = time.perf_counter() - t0
    log(f"staged in {secs:.1f}s")
    return path, from_expr, secs


def duckdb_copy_sql(from_expr: str, out: Path, fmt: str, jsonl_compression: str) -> str:
    select = f"SELECT *, CAST(created AS DATE) AS date FROM {from_expr}"
    if fmt == "parquet":
        opts = "FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date)"
    else:
        comp = "gzip" if jsonl_compression == "gzip" else "none"
        opts = f"FORMAT json, COMPRESSION {comp}, PARTITION_BY (date)"
    return f"COPY ({select}) TO {sql_str(out)} ({opts})"


def duckdb_count(out: Path, fmt: str) -> tuple[int, dict[str, int]]:
    """Rows in a DuckDB (or spanlake) partitioned output, in total and per date."""
    import duckdb
    con = duckdb.connect()
    if fmt == "parquet":
        src = f"read_parquet({sql_str(str(out) + '/*/*.parquet')}, hive_partitioning=true)"
    else:
        # a spanlake output's _manifests/*.json must not pick the ".json" pattern
        pattern = next((str(out) + f"/*/*{ext}" for ext in (".json", ".jsonl", ".json.gz",
                                                             ".jsonl.gz", ".gz")
                        if any(Path(g).parent.name != "_manifests"
                               for g in glob.glob(str(out) + f"/*/*{ext}"))), str(out) + "/*/*")
        src = (f"read_json_objects({sql_str(pattern)}, format='newline_delimited', "
               "hive_partitioning=true)")
    rows = con.execute(f"SELECT CAST(date AS VARCHAR), count(*) FROM {src} GROUP BY ALL").fetchall()
    parts = {str(d): int(c) for d, c in rows}
    return sum(parts.values()), parts


# ------------------------------------------------------------------------ report

def figures(engine: str, step: str, run: Run, n: int, rows: int | None, out_bytes: int,
            files: int, **extra) -> dict:
    return {"step": step, "engine": engine, "spans": n, "wall_s": round(run.wall_s, 4),
            "cpu_s": round(run.cpu_s, 4),
            "cpu_s_per_m_spans": round(run.cpu_s / n * 1e6, 3),
            "peak_rss_mib": round(run.peak_rss_mib, 1),
            "rows_per_s": round(n / run.wall_s) if run.wall_s > 0 else None,
            "output_bytes": out_bytes, "files": files, "rows": rows, **extra}


def goal_check(name: str, value: float | None) -> dict:
    op, thr = GOALS[name]
    ok = None if value is None else (value >= thr if op == ">=" else value <= thr)
    return {"value": None if value is None else round(value, 3), "goal": f"{op} {thr}", "met": ok}


def print_table(res: dict) -> None:
    cols = ["step", "engine", "spans", "wall s", "CPU s/M", "peak RSS MiB", "rows/s",
            "out MiB", "files", "rows"]
    lines = []
    for f in res["steps"]:
        lines.append([f["step"], f["engine"], f"{f['spans']:,}", f"{f['wall_s']:.3f}",
                      f"{f['cpu_s_per_m_spans']:.2f}", f"{f['peak_rss_mib']:.1f}",
                      f"{f['rows_per_s']:,}", f"{f['output_bytes'] / 2**20:.1f}",
                      str(f["files"]), f"{f['rows']:,}" if f["rows"] is not None else "?"])
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    print()
    print(f"spanlake export vs DuckDB {res['duckdb']['version']} COPY: {res['spans']:,} spans "
          f"({res['jsonl_bytes'] / 2**20:.1f} MiB JSONL), {res['cpus']} CPUs, "
          f"DuckDB threads={res['duckdb']['threads']}, source={res['duckdb']['source']}, "
          f"best of {res['repeat']}")
    print(fmt.format(*cols))
    print(fmt.format(*("-" * w for w in widths)))
    for l in lines:
        print(fmt.format(*l))
    print()
    print("ratios (spanlake vs DuckDB; S3 vs local):")
    labels = {"parquet_throughput": "Parquet throughput spanlake/DuckDB",
              "jsonl_throughput": "JSONL   throughput spanlake/DuckDB",
              "parquet_rss": "Parquet peak RSS   spanlake/DuckDB",
              "jsonl_rss": "JSONL   peak RSS   spanlake/DuckDB",
              "s3_over_local_wall": "S3 wall / local wall (spanlake Parquet)"}
    for k, lab in labels.items():
        g = res["ratios"].get(k)
        if g is None:
            continue
        v = "n/a" if g["value"] is None else f"{g['value']:.3f}"
        met = {True: "met", False: "MISSED", None: "-"}[g["met"]]
        print(f"  {lab:<42} {v:>7}   goal {g['goal']:<7} {met}")
    if res["ratios"].get("s3_note"):
        print(f"  ({res['ratios']['s3_note']})")
    print()
    c = res["checks"]
    print("row counts: " + ("all match" if c["ok"] else "** MISMATCH **: " + "; ".join(c["errors"])))
    d = res["duckdb"]
    print(f"python+duckdb startup (included in DuckDB figures): {d['startup_wall_s']:.3f}s wall, "
          f"{d['startup_rss_mib']:.1f} MiB RSS; launcher floor of every RSS figure "
          f"(`true`): {res['launcher_floor_rss_mib']:.1f} MiB")
    print(f"DuckDB source: {d['source_path']} ({d['source_bytes'] / 2**20:.1f} MiB), "
          f"{d['columns']} columns; spanlake exports {res['spanlake']['columns'] or '?'} columns")
    print(f"DuckDB Parquet: {d['sql']['parquet']}")
    print(f"DuckDB JSONL:   {d['sql']['jsonl']}")
    s = res["spanlake"]
    print(f"spanlake ingest (setup, not compared): {s['ingest']['wall_s']:.2f}s wall, "
          f"{s['ingest']['cpu_s']:.2f}s CPU, {s['ingest']['peak_rss_mib']:.1f} MiB RSS")
    if s.get("perf"):
        print()
        print(f"perf profile of spanlake Parquet export (untimed run, {s['perf']['data']}):")
        print(s["perf"]["top"])


# -------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000, help="spans to generate (default 1000000)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"cache/work dir for data and outputs (default {DEFAULT_WORK})")
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help=f"spanlake binary (default {DEFAULT_BIN})")
    ap.add_argument("--gen", type=Path, default=DEFAULT_GEN, help=f"span generator (default {DEFAULT_GEN})")
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs per step, best wall kept (default 3 up to 200000 spans, else 1)")
    ap.add_argument("--project", default="bench", help="spanlake project name (default bench)")
    ap.add_argument("--duckdb-source", choices=("db", "parquet"), default="db",
                    help="what DuckDB exports from: a DuckDB database file (default) or Parquet")
    ap.add_argument("--duckdb-read-opts", default="",
                    help="extra read_json_auto arguments for staging, e.g. 'sample_size=-1'")
    ap.add_argument("--jsonl-compression", choices=("none", "gzip"), default="none",
                    help="JSON Lines compression for both engines (default none)")
    ap.add_argument("--s3-port", type=int, default=9311, help="local S3 (moto) port (default 9311)")
    ap.add_argument("--s3-spans", type=int, default=None,
                    help="run the S3 step (and its local baseline) on this many spans instead")
    ap.add_argument("--s3-formats", default="parquet",
                    help="comma list of formats exported to S3 (default parquet)")
    ap.add_argument("--no-s3", action="store_true", help="skip the S3 step")
    ap.add_argument("--keep", action="store_true",
                    help="keep the export outputs and spanlake data dirs")
    ap.add_argument("--perf", action="store_true",
                    help="also profile the spanlake Parquet export with perf record (untimed)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = ap.parse_args()
    if a.repeat is None:
        a.repeat = 3 if a.spans <= 200_000 else 1
    if a.spans <= 0 or a.repeat <= 0 or (a.s3_spans is not None and a.s3_spans <= 0):
        ap.error("--spans, --repeat and --s3-spans must be positive")
    a.s3_formats = [f.strip() for f in a.s3_formats.split(",") if f.strip()]
    if any(f not in ("parquet", "jsonl") for f in a.s3_formats):
        ap.error("--s3-formats takes parquet and/or jsonl")
    return a


def best(runs: list) -> tuple:
    return min(runs, key=lambda r: r[0].wall_s)


def binary_ok(bin_: Path) -> bool:
    """Whether `bin_` is a spanlake binary with partitioned exports; says why not."""
    if not (bin_.is_file() and os.access(bin_, os.X_OK)):
        log(f"error: spanlake binary not found at {bin_}; {BUILD_HINT} (or pass --bin PATH)")
        return False
    r = subprocess.run([str(bin_), "export", "--help"], capture_output=True, text=True)
    if r.returncode != 0 or "--partitioning" not in r.stdout:
        log(f"error: `{bin_} export --help` failed (stale binary?); {BUILD_HINT}")
        return False
    return True


def main() -> int:
    a = parse_args()
    if not binary_ok(a.bin):
        return 2
    import duckdb

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    n = a.spans
    jsonl = generate(a.gen, n, work)
    run_dir = work / f"export_{n}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir()
    py = sys.executable
    errors: list[str] = []
    steps: list[dict] = []
    jc = a.jsonl_compression

    # ---- setup: spanlake ingest (timed on its own), DuckDB staging (cached)
    log("spanlake ingest (setup) ...")
    data_dir = run_dir / "spanlake-data"
    ingest = spanlake_ingest(a.bin, data_dir, a.project, jsonl)
    src_path, from_expr, _ = duckdb_stage(jsonl, a.duckdb_source, a.duckdb_read_opts, work)
    db_arg = str(src_path) if a.duckdb_source == "db" else ":memory:"
    con = duckdb.connect(db_arg, read_only=a.duckdb_source == "db")
    src_rows = con.execute(f"SELECT count(*) FROM {from_expr}").fetchone()[0]
    src_cols = len(con.execute(f"DESCRIBE SELECT * FROM {from_expr}").fetchall())
    threads = con.execute("SELECT current_setting('threads')").fetchone()[0]
    con.close()
    if src_rows != n:
        log(f"error: DuckDB source holds {src_rows} rows, expected {n}")
        return 2
    startup = min((check(measure([py, "-c", "import duckdb"]), "python -c 'import duckdb'")
                   for _ in range(3)), key=lambda r: r.wall_s)
    floor = check(measure(["true"]), "true")

    def spanlake_local(fmt: str, comp: str, ddir: Path, nn: int, step: str) -> dict:
        runs = []
        for i in range(a.repeat):
            out = run_dir / f"spanlake-{fmt}{'-' + str(nn) if nn != n else ''}"
            shutil.rmtree(out, ignore_errors=True)
            warm_page_cache(ddir)
            log(f"{step}: spanlake {fmt} local, run {i + 1}/{a.repeat} ...")
            run = check(measure(spanlake_export_cmd(a.bin, ddir, a.project, str(out), fmt, comp)),
                        f"spanlake export {fmt} local")
            m = manifest_summary(local_manifest(out))
            files = data_files(out)
            runs.append((run, m, out, sum(p.stat().st_size for p in files), len(files)))
        run, m, out, nbytes, nfiles = best(runs)
        if m["rows"] != nn:
            errors.append(f"spanlake {fmt} local manifest: {m['rows']} rows, expected {nn}")
        if nfiles != m["files"]:
            errors.append(f"spanlake {fmt} local: {nfiles} data files, manifest lists {m['files']}")
        f = figures("spanlake", step, run, nn, m["rows"], nbytes, nfiles,
                    partitions=len(m["partitions"]), manifest_bytes=m["bytes"])
        f["_parts"], f["_out"] = m["partitions"], out
        return f

    def spanlake_s3(fmt: str, comp: str, ddir: Path, nn: int, step: str, env: dict,
                    s3: S3, bucket: str) -> dict:
        runs = []
        for i in range(a.repeat):
            prefix = f"{fmt}-{nn}-{i}"
            warm_page_cache(ddir)
            log(f"{step}: spanlake {fmt} -> s3://{bucket}/{prefix}, run {i + 1}/{a.repeat} ...")
            run = check(measure(spanlake_export_cmd(a.bin, ddir, a.project,
                                                    f"s3://{bucket}/{prefix}", fmt, comp,
                                                    env["AWS_ENDPOINT_URL"]),
                                env={**os.environ, **env}), f"spanlake export {fmt} to S3")
            objs = s3.list(bucket, prefix + "/")
            mkeys = [k for k, _ in objs if "/_manifests/" in k and k.endswith(".json")]
            if len(mkeys) != 1:
                log(f"error: expected one manifest under s3://{bucket}/{prefix}/_manifests, "
                    f"found {len(mkeys)}")
                sys.exit(2)
            m = manifest_summary(json.loads(s3.get(bucket, mkeys[0])))
            dobjs = [(k, s) for k, s in objs if "/_manifests/" not in k]
            runs.append((run, m, sum(s for _, s in dobjs), len(dobjs)))
        run, m, nbytes, nfiles = best(runs)
        if m["rows"] != nn:
            errors.append(f"spanlake {fmt} S3 manifest: {m['rows']} rows, expected {nn}")
        if nfiles != m["files"]:
            errors.append(f"spanlake {fmt} S3: {nfiles} objects, manifest lists {m['files']}")
        f = figures("spanlake", step, run, nn, m["rows"], nbytes, nfiles,
                    partitions=len(m["partitions"]), manifest_bytes=m["bytes"])
        f["_parts"] = m["partitions"]
        return f

    def duck(fmt: str, step: str) -> dict:
        sql = duckdb_copy_sql(from_expr, run_dir / f"duckdb-{fmt}", fmt, jc)
        runs = []
        for i in range(a.repeat):
            out = run_dir / f"duckdb-{fmt}"
            shutil.rmtree(out, ignore_errors=True)
            warm_page_cache(src_path)
            log(f"{step}: DuckDB {fmt}, run {i + 1}/{a.repeat} ...")
            run = check(measure([py, "-c", DUCKDB_RUN, db_arg, "SET TimeZone='UTC'", sql]),
                        f"DuckDB COPY {fmt}")
            files = data_files(out)
            runs.append((run, out, sum(p.stat().st_size for p in files), len(files)))
        run, out, nbytes, nfiles = best(runs)
        rows, parts = duckdb_count(out, fmt)
        if rows != n:
            errors.append(f"DuckDB {fmt}: counted {rows} rows, expected {n}")
        f = figures("duckdb", step, run, n, rows, nbytes, nfiles, partitions=len(parts))
        f["_parts"], f["_out"], f["_sql"] = parts, out, sql
        return f

    # ---- 1. spanlake Parquet local
    sp_pq = spanlake_local("parquet", "zstd", data_dir, n, "parquet local")
    rows_read, _ = duckdb_count(sp_pq["_out"], "parquet")
    if rows_read != sp_pq["rows"]:
        errors.append(f"spanlake Parquet: DuckDB counts {rows_read} rows, manifest says {sp_pq['rows']}")
    sp_cols = len(duckdb.connect().execute(
        f"DESCRIBE SELECT * FROM read_parquet({sql_str(str(sp_pq['_out']) + '/*/*.parquet')}, "
        "hive_partitioning=false)"
    ).fetchall())
    steps.append(sp_pq)

    # ---- 2. spanlake -> S3
    s3_figs: list[dict] = []
    s3_base = None
    s3_note = None
    if not a.no_s3:
        nn = a.s3_spans or n
        ddir = data_dir
        if nn != n:
            s3_note = (f"S3 step run on {nn:,} spans (--s3-spans), compared with a local "
                       f"export of the same {nn:,} spans")
            sjsonl = generate(a.gen, nn, work)
            ddir = run_dir / f"spanlake-data-{nn}"
            log(f"spanlake ingest of {nn} spans for the S3 step (setup) ...")
            spanlake_ingest(a.bin, ddir, a.project, sjsonl)
            s3_base = spanlake_local("parquet", "zstd", ddir, nn, "parquet local (S3 base)")
            steps.append(s3_base)
        else:
            s3_base = sp_pq
        env, started = s3_start(a.s3_port)
        s3 = S3(env)
        bucket = f"spanlake-export-bench-{uuid.uuid4().hex[:8]}"
        try:
            s3.create_bucket(bucket)
            for fmt in a.s3_formats:
                comp = "zstd" if fmt == "parquet" else jc
                f = spanlake_s3(fmt, comp, ddir, nn, f"{fmt} S3", env, s3, bucket)
                s3_figs.append(f)
                steps.append(f)
                if fmt == "parquet" and f["_parts"] != s3_base["_parts"]:
                    errors.append("spanlake Parquet: S3 and local per-day row counts differ")
        finally:
            try:
                s3.delete_all(bucket)
            except (urllib.error.URLError, OSError) as e:
                log(f"warning: could not empty bucket {bucket}: {e}")
            if started:
                s3_stop(a.s3_port)

    # ---- 3. spanlake JSONL local
    sp_js = spanlake_local("jsonl", jc, data_dir, n, "jsonl local")
    steps.append(sp_js)

    # ---- 4./5. DuckDB
    dk_pq = duck("parquet", "parquet local")
    dk_js = duck("jsonl", "jsonl local")
    steps += [dk_pq, dk_js]

    # ---- checks: per-day row counts must agree between the engines
    for name, sp, dk in (("Parquet", sp_pq, dk_pq), ("JSONL", sp_js, dk_js)):
        if sp["_parts"] != dk["_parts"]:
            diff = sorted(d for d in set(sp["_parts"]) | set(dk["_parts"])
                          if sp["_parts"].get(d) != dk["_parts"].get(d))
            errors.append(f"{name}: per-day rows differ on {len(diff)} day(s), e.g. "
                          + ", ".join(f"{d}: spanlake {sp['_parts'].get(d)} DuckDB "
                                      f"{dk['_parts'].get(d)}" for d in diff[:3]))
        if sp["rows"] != dk["rows"]:
            errors.append(f"{name}: spanlake {sp['rows']} rows, DuckDB {dk['rows']} rows")

    # ---- perf profile (optional, untimed)
    perf = None
    if a.perf:
        perf = run_perf(a, data_dir, run_dir)

    def r(x, y):
        return x / y if y else None

    ratios = {
        "parquet_throughput": goal_check("parquet_throughput", r(dk_pq["wall_s"], sp_pq["wall_s"])),
        "jsonl_throughput": goal_check("jsonl_throughput", r(dk_js["wall_s"], sp_js["wall_s"])),
        "parquet_rss": goal_check("parquet_rss", r(sp_pq["peak_rss_mib"], dk_pq["peak_rss_mib"])),
        "jsonl_rss": goal_check("jsonl_rss", r(sp_js["peak_rss_mib"], dk_js["peak_rss_mib"])),
    }
    s3_pq = next((f for f in s3_figs if f["step"] == "parquet S3"), None)
    if s3_pq and s3_base:
        ratios["s3_over_local_wall"] = goal_check("s3_over_local_wall",
                                                  r(s3_pq["wall_s"], s3_base["wall_s"]))
        ratios["s3_note"] = s3_note

    res = {
        "spans": n, "jsonl_path": str(jsonl), "jsonl_bytes": jsonl.stat().st_size,
        "cpus": os.cpu_count(), "repeat": a.repeat,
        "steps": [{k: v for k, v in f.items() if not k.startswith("_")} for f in steps],
        "ratios": ratios,
        "checks": {"ok": not errors, "errors": errors},
        "duckdb": {"version": duckdb.__version__, "threads": threads, "source": a.duckdb_source,
                   "source_path": str(src_path), "source_bytes": src_path.stat().st_size,
                   "columns": src_cols,
                   "sql": {"parquet": dk_pq["_sql"], "jsonl": dk_js["_sql"]},
                   "startup_wall_s": round(startup.wall_s, 4),
                   "startup_rss_mib": round(startup.peak_rss_mib, 1)},
        "launcher_floor_rss_mib": round(floor.peak_rss_mib, 1),
        "spanlake": {"bin": str(a.bin), "query": spanlake_query(a.project), "columns": sp_cols,
                     "ingest": {"wall_s": round(ingest.wall_s, 3), "cpu_s": round(ingest.cpu_s, 3),
                                "peak_rss_mib": round(ingest.peak_rss_mib, 1)},
                     "perf": perf},
    }
    if not a.keep:  # outputs and the spanlake data dirs; the DuckDB source stays cached
        for f in steps:
            if f.get("_out"):
                shutil.rmtree(f["_out"], ignore_errors=True)
        for d in run_dir.glob("spanlake-data*"):
            shutil.rmtree(d, ignore_errors=True)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    if errors:
        for e in errors:
            log(f"error: {e}")
        return 1
    return 0


def run_perf(a: argparse.Namespace, data_dir: Path, run_dir: Path) -> dict | None:
    perf = shutil.which("perf")
    if not perf:
        log("warning: perf not found; --perf skipped")
        return None
    out = run_dir / "spanlake-parquet-perf"
    data = run_dir / "perf.data"
    shutil.rmtree(out, ignore_errors=True)
    log("perf record of spanlake Parquet export (untimed) ...")
    r = subprocess.run([perf, "record", "-F", "499", "-g", "-o", str(data), "--",
                        *spanlake_export_cmd(a.bin, data_dir, a.project, str(out), "parquet", "zstd")],
                       capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    if r.returncode != 0:
        log(f"warning: perf record failed: {r.stderr.strip()[-500:]}")
        return None
    rep = subprocess.run([perf, "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                          "--stdio", "-g", "none", "--percent-limit", "1"],
                         capture_output=True, text=True)
    lines = [l for l in rep.stdout.splitlines() if l.strip() and not l.startswith("#")]
    return {"data": str(data), "top": "\n".join(lines[:30])}


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
