#!/usr/bin/env python3
"""The same export locally and on a Ballista cluster of this machine.

Runs the spans export (day-partitioned zstd Parquet to a local folder) of
N generated spans with the local engine and with `--engine ballista://`
on a scheduler and two executors started here (each `--tasks 1` unless
--tasks says otherwise), interleaved, --repeat times each, and prints the
median wall time and the CPU seconds of the coordinator and of the
cluster's processes (read from /proc before and after each run), and
checks that each run's manifest lists N rows (DuckDB counts the first
run's files).

  cargo build --release -p spanlake
  python3 benches/cluster.py --spans 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export as ex  # noqa: E402  (launcher, export command, manifests, DuckDB counts)
import ingest_query as iq  # noqa: E402  (venv, data)

PROJECT = "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Cluster:
    def __init__(self, bin_: Path, work: Path, executors: int, tasks: int):
        self.work = work
        self.address = f"127.0.0.1:{free_port()}"
        self.procs: list[subprocess.Popen] = []
        env = dict(os.environ, SPANLAKE_LOG="info")
        sched_log = work / "scheduler.log"
        self.procs.append(subprocess.Popen(
            [str(bin_), "ballista", "scheduler", "--bind", self.address],
            stdout=subprocess.DEVNULL, stderr=open(sched_log, "w"), env=env))
        for n in range(executors):
            flight, grpc = free_port(), free_port()
            self.procs.append(subprocess.Popen(
                [str(bin_), "ballista", "executor", "--scheduler", self.address,
                 "--bind", f"127.0.0.1:{flight}", "--grpc-port", str(grpc),
                 "--work-dir", str(work / f"work-{n}"), "--tasks", str(tasks),
                 "--memory-limit-mib", "1024"],
                stdout=subprocess.DEVNULL, stderr=open(work / f"executor-{n}.log", "w"), env=env))
        deadline = time.time() + 60
        while sched_log.read_text().count("Received register executor request") < executors:
            if time.time() > deadline:
                sys.exit("error: the executors did not register in 60 s; see " + str(sched_log))
            time.sleep(0.1)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--executors", type=int, default=2)
    ap.add_argument("--tasks", type=int, default=1, help="tasks at once per executor (default 1)")
    ap.add_argument("--partitions", type=int, default=0,
                    help="DATAFUSION_EXECUTION_TARGET_PARTITIONS of both runs (default: cores)")
    ap.add_argument("--work", type=Path, default=iq.DEFAULT_WORK)
    ap.add_argument("--bin", type=Path, default=iq.DEFAULT_BIN)
    ap.add_argument("--gen", type=Path, default=iq.DEFAULT_GEN)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    iq.ensure_venv(Path(__file__).resolve())
    if not ex.binary_ok(a.bin):
        return 2
    jsonl = iq.generate(a.gen, a.spans, a.work)
    run_dir = a.work / f"cluster_{a.spans}"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    data_dir = run_dir / "spanlake-data"
    log(f"[{a.spans}] spanlake ingest (setup) ...")
    ex.spanlake_ingest(a.bin, data_dir, PROJECT, jsonl)
    cluster = Cluster(a.bin, run_dir, a.executors, a.tasks)
    env = dict(os.environ)
    if a.partitions:
        env["DATAFUSION_EXECUTION_TARGET_PARTITIONS"] = str(a.partitions)
    runs: dict[str, list[dict]] = {"local": [], "cluster": []}
    errors: list[str] = []
    try:
        for rep in range(a.repeat):
            for engine in ("local", "cluster"):
                out = run_dir / f"out-{engine}"
                shutil.rmtree(out, ignore_errors=True)
                cmd = ex.spanlake_export_cmd(a.bin, data_dir, PROJECT, str(out), "parquet", "zstd")
                if engine == "cluster":
                    cmd += ["--engine", f"ballista://{cluster.address}"]
                ex.warm_page_cache(data_dir)
                log(f"[{a.spans}] export parquet: {engine}, run {rep + 1}/{a.repeat} ...")
                before = cluster.cpu()
                run = ex.check(ex.measure(cmd, env), f"{engine} export")
                cluster_cpu = cluster.cpu() - before
                m = ex.manifest_summary(ex.local_manifest(out))
                if m["rows"] != a.spans:
                    errors.append(f"{engine} run {rep + 1}: manifest lists {m['rows']} rows")
                if rep == 0:
                    rows, _ = ex.duckdb_count(out, "parquet")
                    if rows != a.spans:
                        errors.append(f"{engine}: DuckDB counts {rows} rows")
                files = len(ex.data_files(out))
                if files != m["files"]:
                    errors.append(f"{engine}: {files} files on disk, manifest lists {m['files']}")
                runs[engine].append({"wall_s": run.wall_s, "coordinator_cpu_s": run.cpu_s,
                                     "cluster_cpu_s": cluster_cpu,
                                     "coordinator_rss_mib": run.peak_rss_mib, "files": m["files"]})
    finally:
        cluster.stop()
    res = {"spans": a.spans, "executors": a.executors, "tasks": a.tasks, "runs": runs,
           "errors": errors}
    med = {e: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for e, rs in runs.items()}
    res["median"] = med
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"\nspans export, day-partitioned zstd Parquet, {a.spans} spans, medians of "
              f"{a.repeat}; cluster = scheduler + {a.executors} executors x {a.tasks} task(s)")
        print("| engine | wall s | coordinator CPU s | cluster CPU s | total CPU s | cores | files |")
        print("|---|---|---|---|---|---|---|")
        for e, m in med.items():
            total = m["coordinator_cpu_s"] + m["cluster_cpu_s"]
            print(f"| {e} | {m['wall_s']:.2f} | {m['coordinator_cpu_s']:.2f} | "
                  f"{m['cluster_cpu_s']:.2f} | {total:.2f} | {total / m['wall_s']:.2f} | "
                  f"{int(m['files'])} |")
        print(f"\ncluster / local wall: {med['cluster']['wall_s'] / med['local']['wall_s']:.2f}")
        for e in errors:
            print("error:", e)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
