#!/usr/bin/env python3
"""Headline benchmark (issue 11): spanlake vs DuckDB on five jobs, interleaved, two sizes.

One run, on generated JSONL files of Braintrust-style spans (tools/gen_spans.py,
200k and 1M spans by default, cached in --work like the other scripts):

0. Setup per size (not compared).  ``spanlake ingest`` of the JSONL into a
   fresh data dir (timed, reported on its own line), and DuckDB converting the
   same JSONL once to zstd Parquet (benches/export.py's ``--duckdb-source
   parquet`` staging, cached in --work and reused while the JSONL and the
   DuckDB version are unchanged).  Every DuckDB job reads that Parquet file.
1. export parquet: spanlake
     spanlake export "select: * | from: project_logs('bench') spans"
       --to DIR --format parquet --compression zstd --partitioning day
   vs DuckDB
     SET TimeZone='UTC';
     COPY (SELECT *, CAST(created AS DATE) AS date FROM read_parquet('<src>'))
       TO 'DIR' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (date))
2. export jsonl: the same with --format jsonl --compression none, DuckDB
   (FORMAT json, COMPRESSION none, PARTITION_BY (date)).
3. query: benches/ingest_query.py's filtered span query (span_attributes.type
   = 'llm' and metrics.tokens > --min-tokens), both writing JSON Lines.
4. measures: benches/shapes.py's dimensions/measures query.
5. summary: benches/shapes.py's summary shape (one row per trace).
   (4. and 5. run spanlake with --memory-limit-mib, default 512, as shapes.py.)

Interleaved: for each of --repeat repetitions, each job runs once on each
engine, back to back (spanlake first on odd repetitions, DuckDB first on even
ones), so drift of the machine hits both engines alike.  Each measured run is
its own process, forked by benches/export.py's small ``python -S`` launcher and
reaped with os.wait4: wall time, user+sys CPU seconds and peak RSS
(ru_maxrss) are that process's own.  DuckDB runs are a fresh ``python -c`` with
default settings (threads = CPU count) and include starting Python and
importing duckdb (baseline printed as "python+duckdb startup").  The source
(spanlake data dir, DuckDB Parquet) is read once before every run so each
starts from the page cache.  Outputs are deleted after each run (--keep keeps
the last ones); spanlake fsyncs its export files by default, DuckDB does not
(--no-fsync passes spanlake's --no-fsync to its exports).

Reported per size and job: median wall, min/max wall, median CPU s, median
cores busy ((user+sys)/wall), median peak RSS, and ratio = median DuckDB wall /
median spanlake wall (>1: spanlake is faster).  Goals (issue 11), each marked
met or MISSED:
  export parquet, export jsonl: ratio >= 1.5 at 1M spans and more, >= 1.3
    below (the issue names 200k); spanlake peak RSS <= 0.5 x DuckDB's;
    spanlake cores busy > 1.7
  query, measures: ratio >= 1.0;  summary: ratio >= 1.5
Rows are checked for every job and repetition: exports by the spanlake
manifest (total and per day) against DuckDB's output counted with DuckDB, and
against the number of spans (spanlake's own output is also re-counted with
DuckDB on the first repetition); queries by the JSON Lines rows of both.

Usage:
  python3 benches/cores.py                                  # 200k and 1M, 3 repetitions
  python3 benches/cores.py --sizes 20000,40000              # quick run (~1 minute)
  python3 benches/cores.py --sizes 1000000 --repeat 5 --json > figures.json
  python3 benches/cores.py --bin path/to/spanlake --work /tmp/bench --keep

Options (see --help): --sizes N,N (default 200000,1000000), --repeat K
(default 3, at least 3 for the issue's figures), --work DIR (default
$HOME/.cache/spanlake-bench), --bin PATH (default
${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}/release/spanlake; never
built here: cargo build --release -p spanlake), --gen PATH, --min-tokens T
(default 600), --memory-limit-mib MIB (default 512), --no-fsync, --keep
(keep the spanlake data dirs and the last outputs in --work/cores_N), --json.

Python: the script re-executes itself in the venv of benches/ingest_query.py
($HOME/.cache/spanlake-tools/bench-venv, override with $SPANLAKE_BENCH_VENV),
creating it and installing benches/requirements.txt when missing or stale.

Exit status: 0 on success (goals missed are reported, not fatal), 1 if row
counts differ (between the engines, or from the number of spans), 2 on a
setup or run error (missing or stale binary, failed command).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import export as ex  # noqa: E402  (launcher, export commands, DuckDB staging and counts)
import ingest_query as iq  # noqa: E402  (venv, data, filtered query on both sides)
import shapes  # noqa: E402  (summary and dimensions/measures on both sides)

PROJECT = "bench"  # shapes.py's query texts name project_logs('bench')
JOBS = ("export parquet", "export jsonl", "query", "measures", "summary")
ENGINES = ("spanlake", "duckdb")
CORES_GOAL = 1.7


def log(msg: str) -> None:
    iq.log(msg)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="200000,1000000",
                    help="comma list of span counts (default 200000,1000000)")
    ap.add_argument("--repeat", type=int, default=3,
                    help="interleaved repetitions per job and engine (default 3)")
    ap.add_argument("--work", type=Path, default=iq.DEFAULT_WORK,
                    help=f"cache/work dir for data and outputs (default {iq.DEFAULT_WORK})")
    ap.add_argument("--bin", type=Path, default=iq.DEFAULT_BIN,
                    help=f"spanlake binary (default {iq.DEFAULT_BIN})")
    ap.add_argument("--gen", type=Path, default=iq.DEFAULT_GEN,
                    help=f"span generator (default {iq.DEFAULT_GEN})")
    ap.add_argument("--min-tokens", type=int, default=600,
                    help="filtered query: metrics.tokens > T (default 600)")
    ap.add_argument("--memory-limit-mib", type=int, default=512,
                    help="spanlake --memory-limit-mib for measures and summary (default 512)")
    ap.add_argument("--no-fsync", action="store_true",
                    help="run spanlake's exports with --no-fsync (DuckDB never fsyncs)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the spanlake data dirs and the last run's outputs")
    ap.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    a = ap.parse_args()
    try:
        a.sizes = [int(s.replace("_", "")) for s in a.sizes.split(",") if s.strip()]
    except ValueError:
        ap.error("--sizes takes a comma list of integers")
    if not a.sizes or any(n <= 0 for n in a.sizes) or a.repeat <= 0:
        ap.error("--sizes and --repeat must be positive")
    return a


# ------------------------------------------------------------------------ jobs

class Size:
    """Everything one size needs: data, the commands of both engines per job, checks."""

    def __init__(self, a: argparse.Namespace, n: int, work: Path):
        import duckdb

        self.a, self.n, self.work = a, n, work
        self.jsonl = iq.generate(a.gen, n, work)
        self.run_dir = work / f"cores_{n}"
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.run_dir.mkdir(parents=True)
        self.data_dir = self.run_dir / "spanlake-data"
        log(f"[{n}] spanlake ingest (setup) ...")
        self.ingest = ex.spanlake_ingest(a.bin, self.data_dir, PROJECT, self.jsonl)
        self.src, self.from_expr, _ = ex.duckdb_stage(self.jsonl, "parquet", "", work)
        con = duckdb.connect()
        src_rows = con.execute(f"SELECT count(*) FROM {self.from_expr}").fetchone()[0]
        con.close()
        if src_rows != n:
            log(f"error: DuckDB source {self.src} holds {src_rows} rows, expected {n}")
            sys.exit(2)
        self.schema = iq.duckdb_schema(self.src)
        self.errors: list[str] = []
        self.runs = {j: {e: [] for e in ENGINES} for j in JOBS}
        self.rows = {j: {e: None for e in ENGINES} for j in JOBS}

    def out(self, job: str, engine: str) -> Path:
        ext = "" if job.startswith("export") else ".jsonl"
        return self.run_dir / f"{engine}-{job.replace(' ', '-')}{ext}"

    def command(self, job: str, engine: str, out: Path) -> list[str]:
        a, py = self.a, sys.executable
        if engine == "spanlake":
            if job.startswith("export"):
                fmt, comp = ("parquet", "zstd") if job == "export parquet" else ("jsonl", "none")
                cmd = ex.spanlake_export_cmd(a.bin, self.data_dir, PROJECT, str(out), fmt, comp)
                return cmd[:1] + ["--no-fsync"] + cmd[1:] if a.no_fsync else cmd
            base = [str(a.bin), "--data-dir", str(self.data_dir), "query", "--format", "jsonl",
                    "--output", str(out)]
            if job == "query":
                return base + [iq.spanlake_query_text(PROJECT, a.min_tokens)]
            text = shapes.SPANLAKE_MEASURES if job == "measures" else shapes.SPANLAKE_SUMMARY
            return base + ["--memory-limit-mib", str(a.memory_limit_mib), text]
        return [py, "-c", ex.DUCKDB_RUN, ":memory:", *self.duckdb_sql(job, out)]

    def duckdb_sql(self, job: str, out: Path) -> list[str]:
        if job == "export parquet":
            return ["SET TimeZone='UTC'", ex.duckdb_copy_sql(self.from_expr, out, "parquet", "none")]
        if job == "export jsonl":
            return ["SET TimeZone='UTC'", ex.duckdb_copy_sql(self.from_expr, out, "jsonl", "none")]
        if job == "query":
            return [iq.duckdb_query_sql(self.schema, self.src, out, self.a.min_tokens)]
        if job == "measures":
            return [shapes.duckdb_measures_sql(self.src, out)]
        return [shapes.duckdb_summary_sql(self.src, out)]

    def run_once(self, job: str, engine: str, rep: int) -> None:
        out = self.out(job, engine)
        if out.is_dir():
            shutil.rmtree(out)
        out.unlink(missing_ok=True)
        ex.warm_page_cache(self.data_dir if engine == "spanlake" else self.src)
        log(f"[{self.n}] {job}: {engine}, run {rep + 1}/{self.a.repeat} ...")
        run = ex.check(ex.measure(self.command(job, engine, out)), f"{engine} {job}")
        self.runs[job][engine].append(run)
        self.rows[job][engine] = self.count(job, engine, out, rep)
        if not self.a.keep or rep + 1 < self.a.repeat:
            if out.is_dir():
                shutil.rmtree(out, ignore_errors=True)
            else:
                out.unlink(missing_ok=True)

    def count(self, job: str, engine: str, out: Path, rep: int) -> dict:
        """Rows of one run's output: {"rows": N, "parts": {day: N}} (parts for exports)."""
        if not job.startswith("export"):
            return {"rows": iq.count_lines(out)}
        fmt = "parquet" if job == "export parquet" else "jsonl"
        if engine == "duckdb":
            rows, parts = ex.duckdb_count(out, fmt)
            return {"rows": rows, "parts": parts}
        m = ex.manifest_summary(ex.local_manifest(out))
        files = ex.data_files(out)
        if len(files) != m["files"]:
            self.errors.append(f"spanlake {job}: {len(files)} data files, manifest lists {m['files']}")
        if rep == 0:
            rows, _ = ex.duckdb_count(out, fmt)
            if rows != m["rows"]:
                self.errors.append(f"spanlake {job}: DuckDB counts {rows} rows, manifest says {m['rows']}")
        return {"rows": m["rows"], "parts": m["partitions"]}

    def check_rows(self, job: str, rep: int) -> None:
        s, d = self.rows[job]["spanlake"], self.rows[job]["duckdb"]
        where = f"{job} (run {rep + 1})"
        if s["rows"] != d["rows"]:
            self.errors.append(f"{where}: spanlake {s['rows']} rows, DuckDB {d['rows']}")
        if job.startswith("export"):
            for e, r in (("spanlake", s), ("DuckDB", d)):
                if r["rows"] != self.n:
                    self.errors.append(f"{where}: {e} wrote {r['rows']} rows, expected {self.n}")
            if s["parts"] != d["parts"]:
                diff = sorted(k for k in set(s["parts"]) | set(d["parts"])
                              if s["parts"].get(k) != d["parts"].get(k))
                self.errors.append(f"{where}: per-day rows differ on {len(diff)} day(s), e.g. "
                                   + ", ".join(f"{k}: spanlake {s['parts'].get(k)} DuckDB "
                                               f"{d['parts'].get(k)}" for k in diff[:3]))


# --------------------------------------------------------------------- figures

def engine_figures(runs: list) -> dict:
    walls = [r.wall_s for r in runs]
    cores = [r.cpu_s / r.wall_s if r.wall_s > 0 else 0.0 for r in runs]
    return {"wall_s": round(statistics.median(walls), 4),
            "wall_min_s": round(min(walls), 4), "wall_max_s": round(max(walls), 4),
            "cpu_s": round(statistics.median(r.cpu_s for r in runs), 4),
            "cores_busy": round(statistics.median(cores), 3),
            "peak_rss_mib": round(statistics.median(r.peak_rss_mib for r in runs), 1),
            "peak_rss_max_mib": round(max(r.peak_rss_mib for r in runs), 1),
            "runs": [{"wall_s": round(r.wall_s, 4), "cpu_s": round(r.cpu_s, 4),
                      "peak_rss_mib": round(r.peak_rss_mib, 1)} for r in runs]}


def goal(name: str, value: float | None, op: str, thr: float) -> dict:
    met = None if value is None else {">=": value >= thr, "<=": value <= thr, ">": value > thr}[op]
    return {"goal": name, "value": None if value is None else round(value, 3),
            "target": f"{op} {thr}", "met": met}


def size_figures(s: Size) -> dict:
    jobs = {}
    for j in JOBS:
        sp, dk = engine_figures(s.runs[j]["spanlake"]), engine_figures(s.runs[j]["duckdb"])
        jobs[j] = {"spanlake": sp, "duckdb": dk,
                   "ratio": round(dk["wall_s"] / sp["wall_s"], 3) if sp["wall_s"] else None,
                   "rows": {e: s.rows[j][e]["rows"] for e in ENGINES}}
    export_thr = 1.5 if s.n >= 1_000_000 else 1.3
    goals = []
    for j in ("export parquet", "export jsonl"):
        f = jobs[j]
        goals.append(goal(f"{j}: DuckDB/spanlake wall", f["ratio"], ">=", export_thr))
        dk_rss = f["duckdb"]["peak_rss_mib"]
        goals.append(goal(f"{j}: spanlake/DuckDB peak RSS",
                          f["spanlake"]["peak_rss_mib"] / dk_rss if dk_rss else None, "<=", 0.5))
        goals.append(goal(f"{j}: spanlake cores busy", f["spanlake"]["cores_busy"], ">", CORES_GOAL))
    for j, thr in (("query", 1.0), ("measures", 1.0), ("summary", 1.5)):
        goals.append(goal(f"{j}: DuckDB/spanlake wall", jobs[j]["ratio"], ">=", thr))
    return {"spans": s.n, "jsonl_path": str(s.jsonl), "jsonl_bytes": s.jsonl.stat().st_size,
            "duckdb_source": str(s.src), "duckdb_source_bytes": s.src.stat().st_size,
            "spanlake_ingest": {"wall_s": round(s.ingest.wall_s, 3), "cpu_s": round(s.ingest.cpu_s, 3),
                                "peak_rss_mib": round(s.ingest.peak_rss_mib, 1)},
            "jobs": jobs, "goals": goals,
            "checks": {"ok": not s.errors, "errors": s.errors}}


def print_report(res: dict) -> None:
    d = res["duckdb"]
    print()
    print(f"spanlake vs DuckDB {d['version']}: {res['cpus']} CPUs, DuckDB threads={d['threads']}, "
          f"{res['repeat']} interleaved repetitions, medians; spanlake exports "
          f"{'without' if res['spanlake']['no_fsync'] else 'with'} fsync")
    cols = ["job", "engine", "wall s", "min-max s", "CPU s", "cores", "peak RSS MiB", "rows",
            "DuckDB/spanlake"]
    for sz in res["sizes"]:
        lines = []
        for j, f in sz["jobs"].items():
            for e in ENGINES:
                g = f[e]
                lines.append([j, e, f"{g['wall_s']:.3f}",
                              f"{g['wall_min_s']:.3f}-{g['wall_max_s']:.3f}", f"{g['cpu_s']:.3f}",
                              f"{g['cores_busy']:.2f}", f"{g['peak_rss_mib']:.1f}",
                              f"{f['rows'][e]:,}",
                              (f"x{f['ratio']:.2f}" if f["ratio"] is not None else "n/a")
                              if e == "duckdb" else ""])
        widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
        fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
        ing = sz["spanlake_ingest"]
        print()
        print(f"{sz['spans']:,} spans ({sz['jsonl_bytes'] / 2**20:.1f} MiB JSONL; DuckDB reads "
              f"{sz['duckdb_source_bytes'] / 2**20:.1f} MiB zstd Parquet; spanlake ingest, setup: "
              f"{ing['wall_s']:.2f}s wall, {ing['peak_rss_mib']:.0f} MiB)")
        print(fmt.format(*cols))
        print(fmt.format(*("-" * w for w in widths)))
        for l in lines:
            print(fmt.format(*l))
        print("goals:")
        for g in sz["goals"]:
            v = "n/a" if g["value"] is None else f"{g['value']:.3f}"
            met = {True: "met", False: "MISSED", None: "-"}[g["met"]]
            print(f"  {g['goal']:<44} {v:>7}   goal {g['target']:<6} {met}")
        c = sz["checks"]
        print("row counts: " + ("all match" if c["ok"] else "** MISMATCH **: " + "; ".join(c["errors"])))
    print()
    print("ratio = median DuckDB wall / median spanlake wall (>1: spanlake is faster); "
          "cores = (user+sys)/wall")
    print(f"python+duckdb startup (included in DuckDB figures): {d['startup_wall_s']:.3f}s wall, "
          f"{d['startup_rss_mib']:.1f} MiB RSS; launcher floor of every RSS figure (`true`): "
          f"{res['launcher_floor_rss_mib']:.1f} MiB")
    print(f"spanlake: {res['spanlake']['bin']}; whole run {res['elapsed_s']:.0f}s")


# ------------------------------------------------------------------------ main

def main() -> int:
    a = parse_args()
    if not ex.binary_ok(a.bin):
        return 2
    import duckdb

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    py = sys.executable
    startup = min((ex.check(ex.measure([py, "-c", "import duckdb"]), "python -c 'import duckdb'")
                   for _ in range(3)), key=lambda r: r.wall_s)
    floor = ex.check(ex.measure(["true"]), "true")
    threads = duckdb.connect().execute("SELECT current_setting('threads')").fetchone()[0]

    sizes = []
    for n in a.sizes:
        s = Size(a, n, work)
        for rep in range(a.repeat):
            order = ENGINES if rep % 2 == 0 else ENGINES[::-1]
            for job in JOBS:
                for engine in order:
                    s.run_once(job, engine, rep)
                s.check_rows(job, rep)
        sizes.append(size_figures(s))
        if not a.keep:
            shutil.rmtree(s.run_dir, ignore_errors=True)  # the DuckDB source stays cached

    res = {"cpus": os.cpu_count(), "repeat": a.repeat, "min_tokens": a.min_tokens,
           "memory_limit_mib": a.memory_limit_mib, "elapsed_s": round(time.perf_counter() - t0, 1),
           "duckdb": {"version": duckdb.__version__, "threads": threads,
                      "startup_wall_s": round(startup.wall_s, 4),
                      "startup_rss_mib": round(startup.peak_rss_mib, 1)},
           "launcher_floor_rss_mib": round(floor.peak_rss_mib, 1),
           "spanlake": {"bin": str(a.bin), "no_fsync": a.no_fsync},
           "sizes": sizes}
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_report(res)
    errors = [e for sz in sizes for e in sz["checks"]["errors"]]
    for e in errors:
        log(f"error: {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    iq.ensure_venv(Path(__file__))
    sys.exit(main())
