#!/usr/bin/env python3
"""HTTP load test of `spanlake serve` (issue 6): concurrent /logs3 clients.

N clients (threads, one keep-alive `http.client` connection each) post
`/logs3` batches of generated spans as fast as the server answers, for a
fixed time; then the script proves that no row was lost or duplicated.

1. Setup.  A fresh temporary data dir, `spanlake apikey create --org bench`,
   `spanlake serve --listen 127.0.0.1:<free port>`, `POST /v1/project
   {"name": "load"}`.  Rows come from a pool of spans made by
   tools/gen_spans.py (default 20000, cached in $HOME/.cache/spanlake-bench
   by ingest_query.generate).  Each row of a batch is a pool row whose
   uuids (id, span_id, root_span_id, span_parents, session ids) get their
   first 8 hex digits replaced by <client:2><pass over the pool:6>, so every
   id is unique and the same (client, batch) always gives the same bytes
   (deterministic, and a body can be rebuilt to be replayed).  Rows carry
   `project_id` and `log_id: "g"` like the SDK's.
2. Load.  `--clients` threads post `--batch`-row bodies until `--seconds`
   have passed (requests in flight then are waited for).  A request is
   acknowledged when it answers 2xx with the ids that were sent; a failure
   is retried with the same bytes, as the SDK does (3 tries).  Latency is
   per attempt, from sending to having read the whole answer.
3. Replay.  A sample of acknowledged bodies (`--replay`, each sent twice at
   once) is resent: each must answer 2xx with its first `xact_id`.  Then
   `--dup-fresh` new bodies are each posted by two connections at the same
   moment (a retry racing the first attempt): both copies must be answered
   with one `xact_id`, and their rows counted once.
4. Exact count.  With the server up: `/btql` count(1) and count_distinct(id)
   equal the rows acknowledged; the rows of each `_xact_id` equal the rows
   acknowledged with that `xact_id` (a duplicated version would carry a
   later one); `spanlake_rows_ingested_total` equals the distinct rows sent
   (no version written twice).  After stopping the server: `spanlake query`
   gives the same counts, and the Delta log's active files hold exactly that
   many row versions (stats.numRecords).

Figures: rows/s and requests/s of phase 2, latency p50/p90/p99/max, Delta
commits vs requests (group commit), CPU of the client (this process) and
the server over phase 2, and rows acknowledged per 10 s.

Usage:
  python3 benches/http_load.py                         # 8 clients x 100 rows, 60 s, release build
  python3 benches/http_load.py --seconds 5 --debug     # quick run on the debug build
  python3 benches/http_load.py --clients 16 --batch 50 --server-arg=--no-compact
  python3 benches/http_load.py --json > figures.json

The binary is ${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}/release/spanlake
(…/debug/spanlake with --debug), or --bin PATH.  When it is missing, or with
--build, the script runs `cargo build --release -p spanlake --locked`
(`cargo build -p spanlake --locked` with --debug) and nothing else.

Stdlib only.  Exit status: 0 when every check passes, 1 when a row is lost
or duplicated, a count disagrees or a batch could not be acknowledged, 2 on
a setup error.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from ingest_query import DEFAULT_BIN, DEFAULT_GEN, DEFAULT_WORK, generate, log  # noqa: E402

REPO = HERE.parent
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/spanlake-target"))
DEBUG_BIN = TARGET_DIR / "debug" / "spanlake"
HOST = "127.0.0.1"
MARK = b"\x00PFX\x00"  # never in JSON text: stands for a uuid's first 8 hex digits
UUID_RE = re.compile(rb'"[0-9a-f]{8}(-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"')
CLK_TCK = os.sysconf("SC_CLK_TCK")


class SetupError(Exception):
    pass


# ----------------------------------------------------------------------- binary

def find_or_build(a: argparse.Namespace) -> Path:
    """The spanlake binary; built with cargo when missing or with --build."""
    bin_ = a.bin or (DEBUG_BIN if a.debug else DEFAULT_BIN)
    if a.build or not (bin_.is_file() and os.access(bin_, os.X_OK)):
        if a.bin is not None:
            raise SetupError(f"{bin_} is not an executable (give --bin a built spanlake)")
        cmd = ["cargo", "build", "-p", "spanlake", "--locked"]
        if not a.debug:
            cmd.insert(2, "--release")
        env = dict(os.environ, CARGO_TARGET_DIR=str(TARGET_DIR))
        log(f"building: {' '.join(cmd)} (CARGO_TARGET_DIR={TARGET_DIR}) ...")
        if subprocess.run(cmd, cwd=REPO, env=env).returncode != 0:
            raise SetupError("cargo build failed")
    return bin_


# ------------------------------------------------------------------------- rows

@dataclass
class Pool:
    """Row templates: `rows[i]` with MARK where each uuid's first 8 hex digits go."""
    rows: list[bytes]
    id_suffixes: list[str]   # id of row i without its first 8 hex digits

    def __len__(self) -> int:
        return len(self.rows)


def load_pool(jsonl: Path, project_id: str) -> Pool:
    rows, suffixes = [], []
    head = b'","project_id":' + json.dumps(project_id).encode() + b',"log_id":"g",'
    with open(jsonl, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            if MARK in line:
                raise SetupError("a generated row contains the template marker")
            obj = json.loads(line)
            rid = obj.pop("id")
            obj.pop("project_id", None)
            obj.pop("log_id", None)
            rest = json.dumps(obj, separators=(",", ":")).encode()[1:]  # without "{"
            rest = UUID_RE.sub(lambda m: b'"' + MARK + m.group(1) + b'"', rest)
            suffixes.append(rid[8:])
            rows.append(b'{"id":"' + MARK + rid[8:].encode() + head + rest)
    if len(set(suffixes)) != len(suffixes):
        raise SetupError("the pool's ids are not unique past their first 8 hex digits")
    return Pool(rows, suffixes)


def make_batch(pool: Pool, client: int, batch_no: int, size: int) -> tuple[bytes, list[str]]:
    """Body and row ids of batch `batch_no` of `client` (deterministic)."""
    n = len(pool)
    start = (client * 7919) % n  # clients start at different rows of the pool
    rows, ids = [], []
    cached_pass, prefix = -1, b""
    for k in range(batch_no * size, (batch_no + 1) * size):
        p = k // n
        if p != cached_pass:
            cached_pass, prefix = p, b"%02x%06x" % (client, p)
        i = (start + k) % n
        rows.append(pool.rows[i].replace(MARK, prefix))
        ids.append(prefix.decode() + pool.id_suffixes[i])
    return b'{"rows":[' + b",".join(rows) + b'],"api_version":2}', ids


# ----------------------------------------------------------------------- server

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, bin_: Path, data_dir: Path, extra: list[str], log_path: Path):
        self.bin, self.data_dir, self.extra, self.log_path = bin_, data_dir, extra, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.key = ""

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin), "--data-dir", str(self.data_dir), *args],
                              capture_output=True, text=True)

    def start(self) -> None:
        r = self.cli("apikey", "create", "--org", "bench")
        if r.returncode != 0 or not r.stdout.strip():
            raise SetupError(f"apikey create failed: {r.stderr.strip()}")
        self.key = r.stdout.strip().splitlines()[-1].strip()
        self.proc = subprocess.Popen(
            [str(self.bin), "--data-dir", str(self.data_dir), "serve",
             "--listen", f"{HOST}:{self.port}", *self.extra],
            stdin=subprocess.DEVNULL, stdout=open(self.log_path, "ab"),
            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"spanlake serve exited with {self.proc.returncode}:\n"
                                 + self.log_tail())
            try:
                status, _ = self.request("GET", "/health", auth=False)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise SetupError("spanlake serve did not answer /health within 60 s:\n" + self.log_tail())

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def cpu_s(self) -> float:
        """user+sys CPU seconds of the server process so far."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(HOST, self.port, timeout=300)

    def request(self, method: str, path: str, body: object = None, auth: bool = True,
                conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
        c = conn or self.connection()
        headers = {"Authorization": f"Bearer {self.key}"} if auth else {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
        try:
            c.request(method, path, body=body, headers=headers)
            resp = c.getresponse()
            return resp.status, resp.read()
        finally:
            if conn is None:
                c.close()

    def json(self, method: str, path: str, body: object = None) -> dict:
        status, data = self.request(method, path, body)
        if not 200 <= status < 300:
            raise SetupError(f"{method} {path}: HTTP {status}: {data[:500]!r}")
        return json.loads(data)

    def btql(self, query: str) -> list[dict]:
        rows, cursor = [], None
        while True:
            body = {"query": query, "fmt": "json"}
            if cursor:
                body["cursor"] = cursor
            page = self.json("POST", "/btql", body)
            rows.extend(page.get("data") or [])
            cursor = page.get("cursor")
            if not cursor or not page.get("data"):
                return rows

    def metrics(self) -> dict[str, float]:
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise SetupError(f"GET /metrics: HTTP {status}")
        out: dict[str, float] = {}
        for line in data.decode().splitlines():
            if not line or line.startswith("#"):
                continue
            m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
            if not m:
                continue
            name, labels, value = m.groups()
            try:
                v = float(value)
            except ValueError:
                continue
            out[name] = out.get(name, 0.0) + v          # summed over labels
            if labels:
                out[name + labels] = v
        return out


# ------------------------------------------------------------------------ client

@dataclass
class Outcome:
    ok: bool
    xact: str = ""
    error: str = ""
    attempts: int = 0


@dataclass
class ClientStats:
    latencies: list[float] = field(default_factory=list)   # s, per answered attempt
    ends: list[float] = field(default_factory=list)        # perf_counter at each ack
    acked: list[tuple[int, int, str]] = field(default_factory=list)  # (client, batch, xact)
    failed: list[tuple[int, int, str]] = field(default_factory=list)  # (client, batch, error)
    errors: Counter = field(default_factory=Counter)       # per-attempt errors by kind
    retries: int = 0
    build_s: float = 0.0                                  # time spent making bodies


def post_batch(server: Server, conn_box: list, body: bytes, ids: list[str], stats: ClientStats,
               tries: int = 3) -> Outcome:
    """POST one /logs3 body with the SDK's retries (same bytes each time)."""
    last = ""
    for attempt in range(1, tries + 1):
        if attempt > 1:
            stats.retries += 1
            time.sleep(0.5 * (attempt - 1))
        t0 = time.perf_counter()
        try:
            status, data = server.request("POST", "/logs3", body, conn=conn_box[0])
        except (OSError, http.client.HTTPException) as e:
            conn_box[0].close()
            conn_box[0] = server.connection()
            last = f"{type(e).__name__}: {e}"
            stats.errors[type(e).__name__] += 1
            continue
        t1 = time.perf_counter()
        stats.latencies.append(t1 - t0)
        if 200 <= status < 300:
            try:
                answer = json.loads(data)
            except ValueError:
                answer = {}
            if answer.get("ids") != ids or not isinstance(answer.get("xact_id"), str):
                stats.errors["bad answer"] += 1
                return Outcome(False, error=f"2xx with other ids or no xact_id: {data[:200]!r}",
                               attempts=attempt)
            stats.ends.append(t1)
            return Outcome(True, xact=answer["xact_id"], attempts=attempt)
        stats.errors[f"HTTP {status}"] += 1
        last = f"HTTP {status}: {data[:300]!r}"
        if 400 <= status < 500 and status not in (408, 429):
            break  # the SDK drops these too
    return Outcome(False, error=last, attempts=tries)


def run_clients(server: Server, pool: Pool, a: argparse.Namespace) -> tuple[list[ClientStats], float, float]:
    """Phase 2: returns per-client stats, start and end (perf_counter)."""
    stats = [ClientStats() for _ in range(a.clients)]
    ready = threading.Barrier(a.clients + 1)
    times = {}

    def client(c: int) -> None:
        st = stats[c]
        box = [server.connection()]
        box[0].connect()
        ready.wait()
        deadline = times["deadline"]
        b = 0
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            body, ids = make_batch(pool, c, b, a.batch)
            st.build_s += time.perf_counter() - t0
            out = post_batch(server, box, body, ids, st)
            if out.ok:
                st.acked.append((c, b, out.xact))
            else:
                st.failed.append((c, b, out.error))
            b += 1
        box[0].close()

    threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(a.clients)]
    for t in threads:
        t.start()
    times["start"] = time.perf_counter()
    times["deadline"] = times["start"] + a.seconds
    ready.wait()
    for t in threads:
        t.join()
    end = max([e for s in stats for e in s.ends] or [time.perf_counter()])
    return stats, times["start"], end


def replay_phase(server: Server, pool: Pool, a: argparse.Namespace,
                 acked: list[tuple[int, int, str]]) -> dict:
    """Phase 3: replays of acknowledged bodies, and racing duplicates of new ones."""
    rng = random.Random(6)
    sample = rng.sample(acked, min(a.replay, len(acked)))
    jobs = [(c, b, x) for (c, b, x) in sample for _ in range(2)]
    rng.shuffle(jobs)
    lock = threading.Lock()
    res = {"replayed_requests": len(jobs), "replay_mismatch": [], "replay_failed": []}
    st = ClientStats()

    def worker() -> None:
        box = [server.connection()]
        while True:
            with lock:
                if not jobs:
                    break
                c, b, x = jobs.pop()
            body, ids = make_batch(pool, c, b, a.batch)
            out = post_batch(server, box, body, ids, st)
            with lock:
                if not out.ok:
                    res["replay_failed"].append(f"client {c} batch {b}: {out.error}")
                elif out.xact != x:
                    res["replay_mismatch"].append(f"client {c} batch {b}: xact {out.xact} != {x}")
        box[0].close()

    threads = [threading.Thread(target=worker) for _ in range(max(1, a.clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    # New bodies, each posted by two connections at the same moment.
    dup_client = a.clients  # a prefix no load client used
    barrier = threading.Barrier(2)
    answers: list[list[Outcome | None]] = [[None, None] for _ in range(a.dup_fresh)]

    def racer(side: int) -> None:
        box = [server.connection()]
        for b in range(a.dup_fresh):
            body, ids = make_batch(pool, dup_client, b, a.batch)
            barrier.wait()
            answers[b][side] = post_batch(server, box, body, ids, st)
        box[0].close()

    racers = [threading.Thread(target=racer, args=(s,)) for s in range(2)]
    for t in racers:
        t.start()
    for t in racers:
        t.join()
    res["dup_fresh_bodies"] = a.dup_fresh
    res["dup_fresh_failed"] = []
    fresh_xacts: list[tuple[int, int, str]] = []
    for b, (x, y) in enumerate(answers):
        if not (x and y and x.ok and y.ok):
            res["dup_fresh_failed"].append(
                f"batch {b}: {(x.error if x else '?')} / {(y.error if y else '?')}")
        elif x.xact != y.xact:
            res["dup_fresh_failed"].append(f"batch {b}: two xact_ids {x.xact} / {y.xact}")
        else:
            fresh_xacts.append((dup_client, b, x.xact))
    res["fresh_acked"] = fresh_xacts
    res["errors"] = dict(st.errors)
    return res


# ------------------------------------------------------------------------ checks

def delta_row_versions(data_dir: Path, project_id: str) -> tuple[int, int] | None:
    """(row versions, files) in the active files of the project's Delta table,
    replaying its JSON log from version 0; None when it cannot be read so."""
    logs = [p for p in data_dir.rglob("_delta_log") if project_id in str(p)]
    if len(logs) != 1:
        return None
    commits = sorted(logs[0].glob("[0-9]*.json"))
    if not commits or int(commits[0].name.split(".")[0]) != 0:
        return None
    files: dict[str, int] = {}
    for path in commits:
        for line in path.read_text().splitlines():
            if not line.strip():
                continue
            action = json.loads(line)
            if "add" in action:
                stats = json.loads(action["add"].get("stats") or "{}")
                if "numRecords" not in stats:
                    return None
                files[action["add"]["path"]] = stats["numRecords"]
            elif "remove" in action:
                files.pop(action["remove"]["path"], None)
    return sum(files.values()), len(files)


def pct(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(-(-p * len(sorted_values) // 1)) - 1))
    return sorted_values[k]


def read_proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return sum(v) - idle, sum(v)


# -------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--seconds", type=float, default=60.0, help="load duration (default 60)")
    ap.add_argument("--batch", type=int, default=100, help="rows per /logs3 body (default 100)")
    ap.add_argument("--pool", type=int, default=20000,
                    help="generated spans the rows are made from (default 20000)")
    ap.add_argument("--replay", type=int, default=200,
                    help="acknowledged bodies resent (twice each) in the replay phase (default 200)")
    ap.add_argument("--dup-fresh", type=int, default=20,
                    help="new bodies posted by two connections at once (default 20)")
    ap.add_argument("--bin", type=Path, default=None,
                    help=f"spanlake binary (default {DEFAULT_BIN}, built when missing)")
    ap.add_argument("--debug", action="store_true", help=f"use (and build) {DEBUG_BIN}")
    ap.add_argument("--build", action="store_true", help="run cargo build first even if the binary exists")
    ap.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                    help="extra argument of `spanlake serve` (repeatable), e.g. --server-arg=--no-compact")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"cache of generated spans (default {DEFAULT_WORK})")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data dir")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = ap.parse_args()
    if a.clients <= 0 or a.seconds <= 0 or a.batch <= 0 or a.pool < a.batch:
        ap.error("--clients, --seconds, --batch must be positive and --pool >= --batch")
    if a.clients >= 255:
        ap.error("--clients must be below 255")
    return a


def main() -> int:
    a = parse_args()
    try:
        bin_ = find_or_build(a)
    except SetupError as e:
        log(f"error: {e}")
        return 2
    version = subprocess.run([str(bin_), "--version"], capture_output=True, text=True).stdout.strip()
    a.work.mkdir(parents=True, exist_ok=True)
    jsonl = generate(DEFAULT_GEN, a.pool, a.work)
    tmp = Path(tempfile.mkdtemp(prefix="spanlake-http-load-"))
    data_dir = tmp / "data"
    server = Server(bin_, data_dir, a.server_arg, tmp / "serve.log")
    try:
        return run(a, bin_, version, jsonl, server, data_dir)
    except SetupError as e:
        log(f"error: {e}")
        log(f"server log ({server.log_path}):\n{server.log_tail()}")
        return 2
    finally:
        server.stop()
        if a.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run(a, bin_, version, jsonl, server: Server, data_dir: Path) -> int:
    server.start()
    project_id = server.json("POST", "/v1/project", {"name": "load"})["id"]
    pool = load_pool(jsonl, project_id)
    sample_body, _ = make_batch(pool, 0, 0, a.batch)
    log(f"server {bin_} ({version}) on port {server.port}; project {project_id}; "
        f"{a.clients} clients x {a.batch} rows for {a.seconds:g} s "
        f"(body ~{len(sample_body) / 1024:.0f} KiB) ...")

    # ---- phase 2: load
    m0 = server.metrics()
    cpu0, srv0, sys0 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_s(), read_proc_stat()
    stats, t_start, t_end = run_clients(server, pool, a)
    cpu1, srv1, sys1 = resource.getrusage(resource.RUSAGE_SELF), server.cpu_s(), read_proc_stat()
    m1 = server.metrics()
    wall = t_end - t_start
    acked = [x for s in stats for x in s.acked]
    failed = [x for s in stats for x in s.failed]
    lat = sorted(x for s in stats for x in s.latencies)
    requests = sum(len(s.latencies) for s in stats)
    rows_acked = len(acked) * a.batch
    client_cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    busy = (sys1[0] - sys0[0]) / max(1, sys1[1] - sys0[1])
    commits = m1.get("spanlake_commits_total", 0) - m0.get("spanlake_commits_total", 0)
    commit_lat_n = (m1.get("spanlake_commit_latency_seconds_count", 0)
                    - m0.get("spanlake_commit_latency_seconds_count", 0))
    commit_lat_s = (m1.get("spanlake_commit_latency_seconds_sum", 0)
                    - m0.get("spanlake_commit_latency_seconds_sum", 0))
    ends = sorted(e - t_start for s in stats for e in s.ends)
    timeline = Counter(int(e // 10) for e in ends)
    load = {
        "clients": a.clients, "batch": a.batch, "seconds": a.seconds, "wall_s": round(wall, 3),
        "requests": requests, "requests_acked": len(acked), "batches_failed": len(failed),
        "retries": sum(s.retries for s in stats),
        "errors": dict(sum((s.errors for s in stats), Counter())),
        "rows_acked": rows_acked,
        "rows_per_s": round(rows_acked / wall, 1), "requests_per_s": round(len(acked) / wall, 2),
        "latency_ms": {k: round(pct(lat, p) * 1000, 1)
                       for k, p in (("p50", .50), ("p90", .90), ("p99", .99), ("max", 1.0))},
        "commits": int(commits),
        "requests_per_commit": round(len(acked) / commits, 2) if commits else None,
        "rows_per_commit": round(rows_acked / commits, 1) if commits else None,
        "commit_latency_avg_ms": round(1000 * commit_lat_s / commit_lat_n, 1) if commit_lat_n else None,
        "client_cpu_s": round(client_cpu, 2), "client_cores": round(client_cpu / wall, 3),
        "client_body_build_s": round(sum(s.build_s for s in stats), 2),
        "server_cpu_s": round(srv1 - srv0, 2), "server_cores": round((srv1 - srv0) / wall, 3),
        "machine_busy": round(busy, 3), "cpus": os.cpu_count(),
        # CPU of every other process in the meantime (a quiet machine: ~0)
        "other_cores": round(max(0.0, busy * (os.cpu_count() or 1)
                                 - (client_cpu + srv1 - srv0) / wall), 2),
        "rows_per_10s": [timeline.get(i, 0) * a.batch for i in range(int(max(ends or [0]) // 10) + 1)],
    }
    for _, b, err in failed[:5]:
        log(f"batch failed: {err}")

    # ---- exact count (server up), before the replays
    count_q = f"measures: count(1) as n, count_distinct(id) as d | from: project_logs('{project_id}')"
    before = server.btql(count_q)[0]

    # ---- phase 3: replays
    log(f"load done: {rows_acked} rows acknowledged; replaying ...")
    replay = replay_phase(server, pool, a, acked)
    m2 = server.metrics()
    all_acked = acked + replay.pop("fresh_acked")
    expected = len(all_acked) * a.batch
    after = server.btql(count_q)[0]
    by_xact_expected = Counter()
    for _, _, x in all_acked:
        by_xact_expected[str(int(x))] += a.batch
    by_xact = {str(int(r["x"])): int(r["n"]) for r in server.btql(
        f"dimensions: _xact_id as x | measures: count(1) as n "
        f"| from: project_logs('{project_id}') | limit: 100000")}
    xact_diff = {x: (by_xact.get(x, 0), by_xact_expected.get(x, 0))
                 for x in set(by_xact) | set(by_xact_expected)
                 if by_xact.get(x, 0) != by_xact_expected.get(x, 0)}
    rows_ingested = m2.get("spanlake_rows_ingested_total", 0) - m0.get("spanlake_rows_ingested_total", 0)
    replays_metric = m2.get("spanlake_ingest_replays_total", 0) - m1.get("spanlake_ingest_replays_total", 0)

    # ---- after stopping the server: the CLI and the Delta log
    rc = server.stop()
    r = server.cli("query", "--format", "json", count_q)
    cli_counts = json.loads(r.stdout)[0] if r.returncode == 0 else None
    if cli_counts is None:
        log(f"spanlake query failed: {r.stderr.strip()}")
    versions = delta_row_versions(data_dir, project_id)

    checks = {
        "no batch failed": not failed and not replay["replay_failed"] and not replay["dup_fresh_failed"],
        "btql count(1) == acked (before replays)": int(before["n"]) == rows_acked,
        "btql count_distinct(id) == count(1) (before replays)": int(before["d"]) == int(before["n"]),
        "replays answered with their first xact_id": not replay["replay_mismatch"],
        "btql count(1) == acked (after replays)": int(after["n"]) == expected,
        "btql count_distinct(id) == count(1) (after replays)": int(after["d"]) == int(after["n"]),
        "rows per _xact_id == rows acked with it": not xact_diff,
        "rows_ingested_total == distinct rows sent": int(rows_ingested) == expected,
        "CLI query count(1) == count_distinct(id) == acked":
            cli_counts is not None and int(cli_counts["n"]) == int(cli_counts["d"]) == expected,
        "Delta row versions == acked": versions is None or versions[0] == expected,
    }
    res = {
        "binary": str(bin_), "version": version, "load": load,
        "replay": {**replay, "replays_metric": int(replays_metric)},
        "counts": {
            "acked_load": rows_acked, "acked_total": expected,
            "btql_before_replay": before, "btql_after_replay": after,
            "xact_ids": len(by_xact), "xact_mismatches": dict(list(xact_diff.items())[:10]),
            "rows_ingested_total": int(rows_ingested), "cli": cli_counts,
            "delta_row_versions": versions[0] if versions else None,
            "delta_files": versions[1] if versions else None,
            "server_exit": rc,
        },
        "checks": checks, "ok": all(checks.values()),
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    return 0 if res["ok"] else 1


def print_report(res: dict) -> None:
    L, c, rp = res["load"], res["counts"], res["replay"]
    lat = L["latency_ms"]
    print()
    print(f"spanlake HTTP load: {L['clients']} clients x {L['batch']} rows/request, "
          f"{L['seconds']:g} s, {L['cpus']} CPUs; {res['version']} ({res['binary']})")
    print(f"  rows/s            {L['rows_per_s']:,.0f}  ({L['rows_acked']:,} rows acknowledged "
          f"in {L['wall_s']:.1f} s)")
    print(f"  requests/s        {L['requests_per_s']:,.1f}  ({L['requests_acked']:,} acknowledged, "
          f"{L['retries']} retries, {L['batches_failed']} failed, errors {L['errors'] or 'none'})")
    print(f"  latency ms        p50 {lat['p50']}  p90 {lat['p90']}  p99 {lat['p99']}  max {lat['max']}")
    print(f"  Delta commits     {L['commits']:,} for {L['requests_acked']:,} requests "
          f"({L['requests_per_commit']} requests, {L['rows_per_commit']} rows per commit; "
          f"commit avg {L['commit_latency_avg_ms']} ms)")
    print(f"  CPU               client {L['client_cpu_s']} s = {L['client_cores']:.2f} cores "
          f"(making bodies {L['client_body_build_s']} s); server {L['server_cpu_s']} s = "
          f"{L['server_cores']:.2f} cores; machine busy {100 * L['machine_busy']:.0f}%, "
          f"other processes {L['other_cores']:.2f} cores")
    if L["other_cores"] > 0.2:
        print("  warning: other processes used the CPU during the run; the figures are low")
    print(f"  rows per 10 s     {', '.join(f'{x:,}' for x in L['rows_per_10s'])}")
    print(f"  replay            {rp['replayed_requests']} resent bodies (each twice at once; "
          f"replays counted by the server {rp['replays_metric']}), "
          f"{rp['dup_fresh_bodies']} new bodies raced by 2 connections")
    print(f"  exact count       acked {c['acked_total']:,}; /btql n={c['btql_after_replay']['n']} "
          f"distinct={c['btql_after_replay']['d']} (before replay {c['btql_before_replay']['n']}); "
          f"CLI {c['cli']}; rows_ingested_total {c['rows_ingested_total']:,}; "
          f"Delta versions {c['delta_row_versions']} in {c['delta_files']} files; "
          f"{c['xact_ids']} xact_ids")
    for name, ok in res["checks"].items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    for key in ("replay_mismatch", "replay_failed", "dup_fresh_failed"):
        for line in rp[key][:5]:
            print(f"    {key}: {line}")
    if c["xact_mismatches"]:
        print(f"    rows per xact_id (found, acked): {c['xact_mismatches']}")
    print("RESULT: " + ("no row lost or duplicated" if res["ok"] else "FAILED"))


if __name__ == "__main__":
    sys.exit(main())
