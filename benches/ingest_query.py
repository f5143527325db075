#!/usr/bin/env python3
"""Ingest + query benchmark: spanlake vs DuckDB on the same synthetic span log.

One run, on one generated JSONL file of Braintrust-style spans
(tools/gen_spans.py):

1. Ingest.  ``spanlake ingest`` of the JSONL into a fresh data dir, and DuckDB
   converting the same JSONL to zstd Parquet with
   ``COPY (SELECT * FROM read_json_auto(...)) TO ... (FORMAT parquet,
   COMPRESSION zstd)`` in its own ``python -c`` process (default thread count).
2. Query.  One filtered span query on each, both writing JSON Lines to a file:
     spanlake: select: id, span_id, created, metrics.tokens as tokens
               | from: project_logs('bench') spans
               | filter: span_attributes.type = 'llm' and metrics.tokens > T
     DuckDB:   COPY (SELECT id, span_id, created, metrics.tokens AS tokens
               FROM 'x.parquet' WHERE span_attributes.type = 'llm'
               AND metrics.tokens > T) TO 'out.jsonl' (FORMAT json)
   (the DuckDB expressions adapt to the inferred Parquet column types: struct
   field access, or ->> on JSON text).  Each query runs --repeat times; the
   run with the best wall time is reported.  Both must return the same number
   of rows, else the script exits 1.

Every measured step is its own child process, reaped with os.wait4, so its
user+sys CPU time and peak RSS (ru_maxrss) are its own.  The JSONL is read
once beforehand so both ingests start with it in the page cache.  DuckDB
figures include starting Python and importing duckdb (the baseline is
measured and printed as "python+duckdb startup").

Usage:
  python3 benches/ingest_query.py                     # 1M spans, full comparison
  python3 benches/ingest_query.py --spans 20000       # quick run (< 1 minute)
  python3 benches/ingest_query.py --spans 100000 --duckdb-only
  python3 benches/ingest_query.py --spans 100000 --json > figures.json
  python3 benches/ingest_query.py --bin path/to/spanlake --repeat 5

Options (see --help): --spans N (default 1000000), --work DIR (cache of
generated data and outputs, default $HOME/.cache/spanlake-bench), --bin PATH
(default ${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}/release/spanlake;
never built by this script: cargo build --release -p spanlake), --repeat K
(default 3), --min-tokens T (default 600: the generator's llm spans have
166..~950 tokens, so the "> 1000" threshold would select no rows),
--project NAME (default bench), --duckdb-read-opts OPTS (extra
read_json_auto arguments, e.g. "sample_size=-1"), --duckdb-only, --json.

Python: the script re-executes itself in a venv at
$HOME/.cache/spanlake-tools/bench-venv (override with $SPANLAKE_BENCH_VENV),
creating it and installing benches/requirements.txt when missing or stale.

Exit status: 0 on success, 1 if the two engines' row counts differ, 2 on a
setup or run error (missing binary, failed command).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"
HOME = Path.home()
VENV = Path(os.environ.get("SPANLAKE_BENCH_VENV", HOME / ".cache/spanlake-tools/bench-venv"))
DEFAULT_WORK = HOME / ".cache/spanlake-bench"
DEFAULT_GEN = Path(__file__).resolve().parent.parent / "tools" / "gen_spans.py"
DEFAULT_BIN = (Path(os.environ.get("CARGO_TARGET_DIR", HOME / ".cache/spanlake-target"))
               / "release" / "spanlake")
BUILD_HINT = "build it with: cargo build --release -p spanlake"


# --------------------------------------------------------------------------- venv

def ensure_venv(script: Path | None = None) -> None:
    """Re-exec `script` (default: this one) under the bench venv, creating or
    updating the venv first."""
    script = script or Path(__file__)
    venv_python = VENV / "bin" / "python"
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    stamp = VENV / ".requirements-installed"
    wanted = REQUIREMENTS.read_text()
    if not venv_python.exists() or not stamp.exists() or stamp.read_text() != wanted:
        log(f"setting up bench venv {VENV} ...")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(venv_python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True)
        stamp.write_text(wanted)
    os.execv(str(venv_python), [str(venv_python), str(script.resolve()), *sys.argv[1:]])


# --------------------------------------------------------------------- measuring

@dataclass
class Run:
    """Resource use of one child process."""
    wall_s: float
    cpu_s: float           # user + sys
    peak_rss_mib: float    # ru_maxrss of this child alone
    returncode: int
    stderr: str = field(default="", repr=False)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(cmd: list[str], stdout_path: Path | None = None) -> Run:
    """Run cmd under export.py's small launcher and return its wall/CPU/RSS.

    Linux carries the peak RSS a process had before execve into the new
    program's ru_maxrss, so a command forked straight from this script would
    report at least this script's RSS (which grows with duckdb imported);
    the launcher is a fresh `python -S` that forks, execs and reaps it.
    stdout goes to stdout_path (or nowhere), stderr to a temporary file.
    """
    from export import LAUNCHER  # benches/export.py: stdlib only at import

    with tempfile.TemporaryFile("w+") as err, \
            open(stdout_path or os.devnull, "wb") as out, \
            tempfile.NamedTemporaryFile("r", suffix=".json") as fig:
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, fig.name, *cmd],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        proc.wait()
        err.seek(0)
        stderr = err.read()
        try:
            f = json.loads(fig.read())
        except ValueError:
            f = {"wall_s": 0.0, "cpu_s": 0.0, "maxrss_kib": 0, "rc": proc.returncode or 2}
    return Run(wall_s=f["wall_s"], cpu_s=f["cpu_s"],
               peak_rss_mib=f["maxrss_kib"] / 1024.0,  # Linux: KiB
               returncode=f["rc"], stderr=stderr)


def check(run: Run, what: str) -> Run:
    if run.returncode != 0:
        log(f"error: {what} failed with exit code {run.returncode}\n{run.stderr.rstrip()}")
        sys.exit(2)
    return run


def best_of(runs: list[Run]) -> Run:
    return min(runs, key=lambda r: r.wall_s)


def count_lines(path: Path) -> int:
    n = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                n += 1
    return n


def dir_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def sql_str(s: str | Path) -> str:
    return "'" + str(s).replace("'", "''") + "'"


# ------------------------------------------------------------------------- data

def generate(gen: Path, spans: int, work: Path) -> Path:
    """Return the cached JSONL for `spans` spans, generating it if missing."""
    target = work / f"spans_{spans}.jsonl"
    if target.exists():
        log(f"reusing {target}")
        return target
    tmp = work / f".gen-{spans}-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    log(f"generating {spans} spans -> {target} ...")
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(gen), "--spans", str(spans), "--out", str(tmp),
                    "--formats", "jsonl"], check=True)
    (tmp / f"spans_{spans}.jsonl").rename(target)  # only complete files land
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"generated in {time.perf_counter() - t0:.1f}s")
    return target


def warm_page_cache(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 24):
            pass


# ------------------------------------------------------------------------ DuckDB

# Runs one SQL statement in a fresh process with DuckDB's default settings.
DUCKDB_RUN = "import sys, duckdb; duckdb.connect().execute(sys.argv[1])"


def duckdb_read_expr(jsonl: Path, read_opts: str) -> str:
    args = sql_str(jsonl) + (", " + read_opts if read_opts.strip() else "")
    return f"read_json_auto({args})"


def duckdb_schema(parquet: Path) -> dict[str, str]:
    import duckdb  # only available inside the venv
    rows = duckdb.connect().execute(f"DESCRIBE SELECT * FROM {sql_str(parquet)}").fetchall()
    return {r[0]: r[1] for r in rows}


def duckdb_query_sql(schema: dict[str, str], parquet: Path, out: Path, min_tokens: int) -> str:
    """The benchmark query, adapted to how DuckDB typed metrics/span_attributes."""
    def field_expr(col: str, key: str, cast: str | None = None) -> str:
        typ = schema.get(col, "")
        if typ.startswith("STRUCT") and f"{key} " in typ.replace('"', ""):
            return f"{col}.{key}"
        # JSON or VARCHAR holding JSON text
        e = f"({col} ->> '$.{key}')"
        return f"TRY_CAST({e} AS {cast})" if cast else e

    tokens = field_expr("metrics", "tokens", "BIGINT")
    typ = field_expr("span_attributes", "type")
    select = (f"SELECT id, span_id, created, {tokens} AS tokens FROM {sql_str(parquet)} "
              f"WHERE {typ} = 'llm' AND {tokens} > {int(min_tokens)}")
    return f"COPY ({select}) TO {sql_str(out)} (FORMAT json)"


# ---------------------------------------------------------------------- spanlake

def spanlake_query_text(project: str, min_tokens: int) -> str:
    return ("select: id, span_id, created, metrics.tokens as tokens"
            f" | from: project_logs('{project}') spans"
            f" | filter: span_attributes.type = 'llm' and metrics.tokens > {int(min_tokens)}")


# ------------------------------------------------------------------------ report

def phase_figures(engine: str, run: Run | None, rows: int, **extra) -> dict | None:
    if run is None:
        return None
    return {"engine": engine, "wall_s": round(run.wall_s, 4), "cpu_s": round(run.cpu_s, 4),
            "peak_rss_mib": round(run.peak_rss_mib, 1),
            "rows_per_s": round(rows / run.wall_s) if run.wall_s > 0 else None, **extra}


def ratio(duck: dict | None, span: dict | None, key: str) -> float | None:
    if not duck or not span or not span[key]:
        return None
    return round(duck[key] / span[key], 3)


def print_table(res: dict) -> None:
    cols = ["phase", "engine", "wall s", "CPU s", "peak RSS MiB", "rows/s", "size MiB",
            "DuckDB/spanlake"]
    lines = []
    for phase in ("ingest", "query"):
        p = res[phase]
        for key, name in (("spanlake", "spanlake"), ("duckdb", "DuckDB")):
            f = p[key]
            if f is None:
                lines.append([phase, name, "-", "-", "-", "-", "-", ""])
                continue
            size = f.get("output_bytes")
            lines.append([phase, name, f"{f['wall_s']:.3f}", f"{f['cpu_s']:.3f}",
                          f"{f['peak_rss_mib']:.1f}", f"{f['rows_per_s']:,}",
                          f"{size / 2**20:.1f}" if size is not None else "",
                          ""])
        r = p["ratio_wall"]
        rc = p["ratio_cpu"]
        lines[-1][-1] = (f"wall x{r:.2f}, CPU x{rc:.2f}" if r is not None else "n/a")
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join("{:<%d}" % w if i < 2 else "{:>%d}" % w for i, w in enumerate(widths))
    print()
    print(f"spanlake vs DuckDB {res['duckdb']['version']}: {res['spans']:,} spans "
          f"({res['jsonl_bytes'] / 2**20:.1f} MiB JSONL), {res['cpus']} CPUs, "
          f"DuckDB threads={res['duckdb']['threads']}")
    print(fmt.format(*cols))
    print(fmt.format(*("-" * w for w in widths)))
    for l in lines:
        print(fmt.format(*l))
    q = res["query"]
    print()
    print(f"query: best of {res['repeat']}, rows scanned/s; result rows: "
          f"spanlake={q['rows_spanlake']}, DuckDB={q['rows_duckdb']}"
          + ("" if q["rows_match"] in (None, True) else "  ** MISMATCH **"))
    print(f"ratio = DuckDB / spanlake (>1: spanlake is faster / cheaper)")
    print(f"DuckDB read: {res['duckdb']['read_expr']}")
    print(f"DuckDB inferred: " + ", ".join(f"{k} {v}" for k, v in res["duckdb"]["types"].items()))
    print(f"DuckDB query: {res['duckdb']['query_sql']}")
    print(f"python+duckdb startup (included in DuckDB figures): "
          f"{res['duckdb']['startup_wall_s']:.3f}s wall, "
          f"{res['duckdb']['startup_rss_mib']:.1f} MiB RSS")
    if res["spanlake"]["ingest_summary"]:
        print("spanlake ingest: " + res["spanlake"]["ingest_summary"])


# -------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000, help="spans to generate (default 1000000)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK,
                    help=f"cache/work dir for data and outputs (default {DEFAULT_WORK})")
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN, help=f"spanlake binary (default {DEFAULT_BIN})")
    ap.add_argument("--gen", type=Path, default=DEFAULT_GEN, help=f"span generator (default {DEFAULT_GEN})")
    ap.add_argument("--repeat", type=int, default=3, help="query repetitions, best wall kept (default 3)")
    ap.add_argument("--min-tokens", type=int, default=600,
                    help="query filter: metrics.tokens > T (default 600)")
    ap.add_argument("--project", default="bench", help="spanlake project name (default bench)")
    ap.add_argument("--duckdb-read-opts", default="",
                    help="extra read_json_auto arguments, e.g. 'sample_size=-1'")
    ap.add_argument("--duckdb-only", action="store_true", help="skip spanlake (binary not needed)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    a = ap.parse_args()
    if a.spans <= 0 or a.repeat <= 0:
        ap.error("--spans and --repeat must be positive")
    return a


def main() -> int:
    a = parse_args()
    use_spanlake = not a.duckdb_only
    if use_spanlake and not (a.bin.is_file() and os.access(a.bin, os.X_OK)):
        log(f"error: spanlake binary not found at {a.bin}; {BUILD_HINT} "
            "(or pass --bin PATH, or --duckdb-only)")
        return 2
    import duckdb

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    jsonl = generate(a.gen, a.spans, work)
    n = a.spans
    warm_page_cache(jsonl)
    out_dir = work / f"run_{n}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    data_dir = out_dir / "spanlake-data"
    parquet = out_dir / f"spans_{n}.parquet"
    py = sys.executable

    # Baseline cost of a DuckDB child: start Python and import duckdb.
    startup = best_of([check(measure([py, "-c", "import duckdb"]), "python -c 'import duckdb'")
                       for _ in range(3)])

    # ---- ingest
    span_ingest = None
    ingest_summary = ""
    if use_spanlake:
        log("spanlake ingest ...")
        span_ingest = check(measure([str(a.bin), "--data-dir", str(data_dir), "ingest",
                                     "--project", a.project, str(jsonl)]), "spanlake ingest")
        ingest_summary = " ".join(span_ingest.stderr.split())[:300]
    log("DuckDB JSONL -> Parquet ...")
    read_expr = duckdb_read_expr(jsonl, a.duckdb_read_opts)
    convert_sql = (f"COPY (SELECT * FROM {read_expr}) TO {sql_str(parquet)} "
                   "(FORMAT parquet, COMPRESSION zstd)")
    duck_ingest = check(measure([py, "-c", DUCKDB_RUN, convert_sql]), "DuckDB convert")

    schema = duckdb_schema(parquet)
    con = duckdb.connect()  # untimed look-ups only
    parquet_rows = con.execute(f"SELECT count(*) FROM {sql_str(parquet)}").fetchone()[0]
    if parquet_rows != n:
        log(f"error: DuckDB wrote {parquet_rows} rows, expected {n}")
        return 2

    # ---- query
    query_sql = duckdb_query_sql(schema, parquet, out_dir / "duckdb_out.jsonl", a.min_tokens)
    span_runs: list[Run] = []
    duck_runs: list[Run] = []
    rows_span = rows_duck = None
    for i in range(a.repeat):
        log(f"query round {i + 1}/{a.repeat} ...")
        if use_spanlake:
            out = out_dir / "spanlake_out.jsonl"
            out.unlink(missing_ok=True)
            span_runs.append(check(measure(
                [str(a.bin), "--data-dir", str(data_dir), "query", "--format", "jsonl",
                 "--output", str(out), spanlake_query_text(a.project, a.min_tokens)]),
                "spanlake query"))
            rows_span = count_lines(out)
        out = out_dir / "duckdb_out.jsonl"
        out.unlink(missing_ok=True)
        duck_runs.append(check(measure([py, "-c", DUCKDB_RUN, query_sql]), "DuckDB query"))
        rows_duck = count_lines(out)

    # ---- figures
    res: dict = {
        "spans": n, "jsonl_path": str(jsonl), "jsonl_bytes": jsonl.stat().st_size,
        "cpus": os.cpu_count(), "repeat": a.repeat, "min_tokens": a.min_tokens,
        "duckdb": {
            "version": duckdb.__version__,
            "threads": con.execute("SELECT current_setting('threads')").fetchone()[0],
            "read_expr": read_expr, "convert_sql": convert_sql, "query_sql": query_sql,
            "types": {c: schema.get(c, "?") for c in
                      ("input", "output", "expected", "metadata", "metrics", "span_attributes")},
            "startup_wall_s": round(startup.wall_s, 4),
            "startup_rss_mib": round(startup.peak_rss_mib, 1),
        },
        "spanlake": {
            "bin": str(a.bin) if use_spanlake else None,
            "query": spanlake_query_text(a.project, a.min_tokens),
            "ingest_summary": ingest_summary,
        },
    }
    ingest = {
        "spanlake": phase_figures("spanlake", span_ingest, n,
                                  output_bytes=dir_size(data_dir) if use_spanlake else None),
        "duckdb": phase_figures("duckdb", duck_ingest, n, output_bytes=parquet.stat().st_size),
    }
    query = {
        "spanlake": phase_figures("spanlake", best_of(span_runs) if span_runs else None, n),
        "duckdb": phase_figures("duckdb", best_of(duck_runs), n),
        "rows_spanlake": rows_span, "rows_duckdb": rows_duck,
        "rows_match": None if rows_span is None else rows_span == rows_duck,
        "all_wall_s": {"spanlake": [round(r.wall_s, 4) for r in span_runs],
                       "duckdb": [round(r.wall_s, 4) for r in duck_runs]},
    }
    for p in (ingest, query):
        p["ratio_wall"] = ratio(p["duckdb"], p["spanlake"], "wall_s")
        p["ratio_cpu"] = ratio(p["duckdb"], p["spanlake"], "cpu_s")
    res["ingest"], res["query"] = ingest, query

    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    if query["rows_match"] is False:
        log(f"error: row counts differ: spanlake {rows_span}, DuckDB {rows_duck}")
        return 1
    return 0


if __name__ == "__main__":
    ensure_venv()
    sys.exit(main())
