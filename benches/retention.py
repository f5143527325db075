#!/usr/bin/env python3
"""Retention benchmark: spanlake retention vs delta-rs DELETE + VACUUM vs DuckDB
rewriting day-partitioned Parquet, on the same generated spans.

One run, on one generated JSONL file of Braintrust-style spans over 60 days
(tools/gen_spans.py, cached like benches/ingest_query.py's), with one cutoff
in the middle of a day, about halfway through the data:

1. spanlake.  The JSONL is split, in order, into --commits files, each
   ingested as one commit (so the table has that many data files, each a
   stretch of days).  ``spanlake automation create-retention --days D
   --grace 0s`` then ``automation run``: the planned delete (files entirely
   older than the cutoff dropped unread, the straddling one rewritten, one
   commit) followed by the vacuum that deletes the removed files (grace 0s).
   The run's report gives the cutoff that the other engines then use.
2. delta-rs (PyPI ``deltalake``).  A Delta table of the same rows, written
   with ``write_deltalake`` in the same number of appends (JSON fields as
   text, ``created`` as a UTC timestamp, as spanlake stores them); then
   ``DeltaTable.delete("created < '<cutoff>'")`` and
   ``DeltaTable.vacuum(retention_hours=0, enforce_retention_duration=False)``,
   each in its own process.
3. DuckDB.  The same rows as Parquet partitioned by UTC day
   (``COPY ... PARTITION_BY (date)``); retention deletes the folders of days
   before the cutoff's day and rewrites that day's files without the expired
   rows (one process, DuckDB's default settings).

The three must delete the same number of rows, else the script exits 1.
Then the cost-vs-files-touched series: spanlake retention on copies of the
same table with cutoffs that drop 1, about half, and all but one of the
files, to show that the run time follows the files touched, not the table.

Every measured step is its own child process (benches/export.py's launcher),
so wall time, user+sys CPU and peak RSS are its own.  Setup steps (ingest,
table and partition writes) are not compared.

Usage:
  python3 benches/retention.py                    # 1M spans, 20 commits
  python3 benches/retention.py --spans 100000     # quicker
  python3 benches/retention.py --spans 100000 --json > figures.json

Options (see --help): --spans N (default 1000000), --commits K (default 20),
--work DIR (default $HOME/.cache/spanlake-bench), --bin PATH (default
${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}/release/spanlake; build it
with cargo build --release -p spanlake), --no-series, --json.

Python: the bench venv of benches/ingest_query.py (benches/requirements.txt:
duckdb, deltalake, pyarrow).

Exit status: 0 on success, 1 if the engines deleted different row counts,
2 on a setup or run error.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ingest_query  # noqa: E402  (stdlib only at import)
from ingest_query import (DEFAULT_BIN, DEFAULT_GEN, DEFAULT_WORK, BUILD_HINT,  # noqa: E402
                          dir_size, generate, log, sql_str)

# The generator's default time range: 60 days ending here.
DATA_END = datetime(2026, 11, 1, tzinfo=timezone.utc)
DATA_DAYS = 60
GOAL_VS_DELTARS_DELETE = 2.0


def export_mod():
    import export  # benches/export.py: its launcher-based measure and check
    return export


def measure(cmd: list[str]):
    return export_mod().measure(cmd)


def check(run, what: str):
    return export_mod().check(run, what)


# ------------------------------------------------------------------------- data

def split_jsonl(jsonl: Path, parts: int, out: Path) -> list[Path]:
    """Split `jsonl` in line order into `parts` files (cached)."""
    files = [out / f"part-{i:03}.jsonl" for i in range(parts)]
    if all(f.exists() for f in files):
        return files
    out.mkdir(parents=True, exist_ok=True)
    total = ingest_query.count_lines(jsonl)
    per = -(-total // parts)
    with open(jsonl, "rb") as src:
        for f in files:
            tmp = f.with_suffix(".tmp")
            with open(tmp, "wb") as dst:
                for _ in range(per):
                    line = src.readline()
                    if not line:
                        break
                    dst.write(line)
            tmp.rename(f)
    return files


def days_for(cutoff_target: datetime, now: datetime) -> int:
    """Whole days D such that now - D days is closest to the target."""
    return max(1, round((now - cutoff_target) / timedelta(days=1)))


# ---------------------------------------------------------------------- spanlake

def spanlake(bin_: Path, data_dir: Path, *args: str) -> list[str]:
    return [str(bin_), "--data-dir", str(data_dir), *args]


def spanlake_setup(bin_: Path, data_dir: Path, parts: list[Path]) -> float:
    shutil.rmtree(data_dir, ignore_errors=True)
    wall = 0.0
    for i, part in enumerate(parts):
        log(f"spanlake ingest {i + 1}/{len(parts)} ...")
        wall += check(measure(spanlake(bin_, data_dir, "ingest", "--project", "bench",
                                       str(part))), "spanlake ingest").wall_s
    return wall


def spanlake_retention(bin_: Path, data_dir: Path, days: int, preview: bool = False):
    check(measure(spanlake(bin_, data_dir, "automation", "create-retention", "--project",
                           "bench", "--days", str(days), "--grace", "0s")),
          "spanlake create-retention")
    name = f"retention-{days}d"
    test = None
    if preview:
        test = check(measure(spanlake(bin_, data_dir, "automation", "test", name, "-p",
                                      "bench")), "spanlake retention preview")
    run = check(measure(spanlake(bin_, data_dir, "automation", "run", name, "-p", "bench")),
                "spanlake retention run")
    return test, run, json.loads(run.stdout)


# ---------------------------------------------------------------------- delta-rs

DELTARS_WRITE = r"""
import sys, duckdb
from deltalake import write_deltalake
table, parts = sys.argv[1], sys.argv[2:]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
for part in parts:
    rel = con.sql(f"SELECT * FROM read_json_auto('{part}', maximum_depth = 1)")
    cols = []
    for name, typ in zip(rel.columns, rel.types):
        q = '"' + name + '"'
        if name == "created":
            cols.append(f"CAST({q} AS TIMESTAMPTZ) AS {q}")
        elif str(typ) == "JSON":
            cols.append(f"CAST({q} AS VARCHAR) AS {q}")
        else:
            cols.append(q)
    batch = con.sql(f"SELECT {', '.join(cols)} FROM rel").to_arrow_table()
    write_deltalake(table, batch, mode="append")
"""

DELTARS_DELETE = r"""
import json, sys
from deltalake import DeltaTable
metrics = DeltaTable(sys.argv[1]).delete(sys.argv[2])
print(json.dumps(metrics))
"""

DELTARS_VACUUM = r"""
import json, sys
from deltalake import DeltaTable
files = DeltaTable(sys.argv[1]).vacuum(retention_hours=0, enforce_retention_duration=False,
                                       dry_run=False)
print(json.dumps({"files_deleted": len(files)}))
"""

# ------------------------------------------------------------------------ DuckDB

DUCKDB_PARTITION = r"""
import sys, duckdb
jsonl, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
con.execute(f'''COPY (SELECT * REPLACE (CAST(created AS TIMESTAMPTZ) AS created),
                      strftime(CAST(created AS TIMESTAMPTZ), '%Y-%m-%d') AS date
                FROM read_json_auto('{jsonl}'))
               TO '{out}' (FORMAT parquet, PARTITION_BY (date), COMPRESSION zstd)''')
"""

DUCKDB_RETENTION = r"""
import json, os, shutil, sys, duckdb
root, cutoff = sys.argv[1], sys.argv[2]
day = cutoff[:10]
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
deleted = dropped = rewritten = 0
for name in sorted(os.listdir(root)):
    if not name.startswith("date="):
        continue
    d, folder = name[5:], os.path.join(root, name)
    if d < day:
        files = [os.path.join(folder, f) for f in os.listdir(folder)]
        # Row counts from the Parquet footers (metadata only).
        deleted += con.execute(
            f"SELECT sum(num_rows) FROM (SELECT DISTINCT file_name, row_group_id, "
            f"row_group_num_rows AS num_rows FROM parquet_metadata({files!r}))").fetchone()[0] or 0
        shutil.rmtree(folder)
        dropped += 1
    elif d == day:
        files = [os.path.join(folder, f) for f in os.listdir(folder)]
        before = con.execute(f"SELECT count(*) FROM read_parquet({files!r})").fetchone()[0]
        new = os.path.join(folder, "rewritten.parquet.tmp")
        con.execute(f"COPY (SELECT * FROM read_parquet({files!r}) "
                    f"WHERE created >= '{cutoff}'::TIMESTAMPTZ) TO '{new}' "
                    f"(FORMAT parquet, COMPRESSION zstd)")
        after = con.execute(f"SELECT count(*) FROM read_parquet('{new}')").fetchone()[0]
        for f in files:
            os.remove(f)
        os.rename(new, os.path.join(folder, "rewritten.parquet"))
        deleted += before - after
        rewritten += 1
print(json.dumps({"rows_deleted": int(deleted), "days_dropped": dropped,
                  "days_rewritten": rewritten}))
"""


# ------------------------------------------------------------------------ report

def figures(run, **extra) -> dict:
    return {"wall_s": round(run.wall_s, 3), "cpu_s": round(run.cpu_s, 3),
            "peak_rss_mib": round(run.peak_rss_mib, 1), **extra}


def print_table(res: dict) -> None:
    print()
    print(f"retention: {res['spans']:,} spans over {DATA_DAYS} days, {res['commits']} commits "
          f"(spanlake and delta-rs files), cutoff {res['cutoff']} "
          f"(--days {res['days']}), {res['cpus']} CPUs, deltalake {res['deltalake_version']}, "
          f"DuckDB {res['duckdb_version']}")
    cols = ["engine", "step", "wall s", "CPU s", "peak RSS MiB", "rows deleted", "notes"]
    lines = []
    for key, engine, step in (("spanlake_run", "spanlake", "retention run (delete+vacuum)"),
                              ("spanlake_preview", "spanlake", "preview (dry run)"),
                              ("deltars_delete", "delta-rs", "DELETE"),
                              ("deltars_vacuum", "delta-rs", "VACUUM"),
                              ("duckdb", "DuckDB", "drop days + rewrite day")):
        f = res.get(key)
        if not f:
            continue
        lines.append([engine, step, f"{f['wall_s']:.3f}", f"{f['cpu_s']:.3f}",
                      f"{f['peak_rss_mib']:.1f}", str(f.get("rows_deleted", "")),
                      f.get("notes", "")])
    widths = [max(len(c), *(len(l[i]) for l in lines)) for i, c in enumerate(cols)]
    fmt = "  ".join("{:<%d}" % w if i in (0, 1, 6) else "{:>%d}" % w
                    for i, w in enumerate(widths))
    print(fmt.format(*cols))
    print(fmt.format(*("-" * w for w in widths)))
    for l in lines:
        print(fmt.format(*l))
    print()
    for name, value in res["ratios"].items():
        print(f"{name}: x{value:.2f}" if value is not None else f"{name}: n/a")
    g = res["goal"]
    print(f"goal: spanlake retention >= {g['threshold']}x faster than the delta-rs DELETE: "
          + ("met" if g["met"] else "NOT met"))
    if res.get("series"):
        print()
        print("spanlake retention cost vs files touched (same table, other cutoffs):")
        print(f"  {'--days':>6}  {'dropped':>7}  {'rewritten':>9}  {'rows deleted':>12}  "
              f"{'rows copied':>11}  {'wall s':>7}  {'CPU s':>6}")
        for s in res["series"]:
            print(f"  {s['days']:>6}  {s['files_dropped']:>7}  {s['files_rewritten']:>9}  "
                  f"{s['rows_deleted']:>12}  {s['rows_copied']:>11}  {s['wall_s']:>7.3f}  {s['cpu_s']:>6.3f}")


# -------------------------------------------------------------------------- main

def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--commits", type=int, default=20, help="ingest commits (data files)")
    ap.add_argument("--work", type=Path, default=DEFAULT_WORK)
    ap.add_argument("--bin", type=Path, default=DEFAULT_BIN)
    ap.add_argument("--gen", type=Path, default=DEFAULT_GEN)
    ap.add_argument("--no-series", action="store_true",
                    help="skip the cost-vs-files-touched series")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    a = ap.parse_args()
    if a.spans <= 0 or a.commits <= 0:
        ap.error("--spans and --commits must be positive")
    return a


def main() -> int:
    a = parse_args()
    if not (a.bin.is_file() and os.access(a.bin, os.X_OK)):
        log(f"error: spanlake binary not found at {a.bin}; {BUILD_HINT}")
        return 2
    import deltalake
    import duckdb

    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    jsonl = generate(a.gen, a.spans, work)
    run_dir = work / f"retention_{a.spans}"
    parts = split_jsonl(jsonl, a.commits, run_dir / f"parts_{a.commits}")
    py = sys.executable

    # ---- setup: the same rows in the three stores (not compared)
    base = run_dir / "spanlake-base"
    if not (base / ".complete").exists():
        spanlake_setup(a.bin, base, parts)
        (base / ".complete").write_text("")
    deltars = run_dir / "deltars-table"
    shutil.rmtree(deltars, ignore_errors=True)
    log("delta-rs: writing the table ...")
    check(measure([py, "-c", DELTARS_WRITE, str(deltars), *map(str, parts)]), "delta-rs write")
    days_dir = run_dir / "duckdb-days"
    shutil.rmtree(days_dir, ignore_errors=True)
    log("DuckDB: writing day partitions ...")
    check(measure([py, "-c", DUCKDB_PARTITION, str(jsonl), str(days_dir)]),
          "DuckDB partition write")

    # ---- spanlake: cutoff near the middle of the data, in the middle of a day
    now = datetime.now(timezone.utc)
    days = days_for(DATA_END - timedelta(days=DATA_DAYS / 2), now)
    data_dir = run_dir / "spanlake-mid"
    shutil.rmtree(data_dir, ignore_errors=True)
    shutil.copytree(base, data_dir)
    bytes_before = dir_size(data_dir / "projects")
    log(f"spanlake retention --days {days} ...")
    preview, run, report = spanlake_retention(a.bin, data_dir, days, preview=True)
    bytes_after = dir_size(data_dir / "projects")
    cutoff = report["cutoff"]
    preview_report = json.loads(preview.stdout)

    # ---- delta-rs with the same cutoff
    log("delta-rs DELETE ...")
    d_delete = check(measure([py, "-c", DELTARS_DELETE, str(deltars),
                              f"created < '{cutoff}'"]), "delta-rs DELETE")
    d_metrics = json.loads(d_delete.stdout)
    log("delta-rs VACUUM ...")
    d_vacuum = check(measure([py, "-c", DELTARS_VACUUM, str(deltars)]), "delta-rs VACUUM")

    # ---- DuckDB with the same cutoff
    log("DuckDB retention ...")
    duck = check(measure([py, "-c", DUCKDB_RETENTION, str(days_dir), cutoff]), "DuckDB retention")
    duck_report = json.loads(duck.stdout)

    res: dict = {
        "spans": a.spans, "commits": a.commits, "days": days, "cutoff": cutoff,
        "cpus": os.cpu_count(), "deltalake_version": deltalake.__version__,
        "duckdb_version": duckdb.__version__,
        "spanlake_run": figures(
            run, rows_deleted=report["rows_deleted"],
            files_dropped=report["files_dropped"], files_rewritten=report["files_rewritten"],
            rows_copied=report["rows_copied"],
            bytes_purged=report["bytes_purged"], bytes_before=bytes_before,
            bytes_after=bytes_after,
            notes=f"{report['files_dropped']} files dropped unread, "
                  f"{report['files_rewritten']} rewritten, {report['files_purged']} purged"),
        "spanlake_preview": figures(preview, rows_deleted=preview_report["rows"],
                                    notes=f"{preview_report['traces']} traces"),
        "deltars_delete": figures(
            d_delete, rows_deleted=d_metrics.get("num_deleted_rows"),
            notes=f"{d_metrics.get('num_removed_files')} files removed, "
                  f"{d_metrics.get('num_added_files')} added"),
        "deltars_vacuum": figures(
            d_vacuum, notes=f"{json.loads(d_vacuum.stdout)['files_deleted']} files deleted"),
        "duckdb": figures(
            duck, rows_deleted=duck_report["rows_deleted"],
            notes=f"{duck_report['days_dropped']} days dropped, "
                  f"{duck_report['days_rewritten']} rewritten"),
    }
    sl = res["spanlake_run"]["wall_s"]
    res["ratios"] = {
        "delta-rs DELETE / spanlake run (wall)": res["deltars_delete"]["wall_s"] / sl,
        "delta-rs DELETE+VACUUM / spanlake run (wall)":
            (res["deltars_delete"]["wall_s"] + res["deltars_vacuum"]["wall_s"]) / sl,
        "delta-rs DELETE / spanlake run (CPU)":
            res["deltars_delete"]["cpu_s"] / max(res["spanlake_run"]["cpu_s"], 1e-9),
        "DuckDB / spanlake run (wall)": res["duckdb"]["wall_s"] / sl,
    }
    ratio = res["ratios"]["delta-rs DELETE / spanlake run (wall)"]
    res["goal"] = {"threshold": GOAL_VS_DELTARS_DELETE, "value": round(ratio, 3),
                   "met": ratio >= GOAL_VS_DELTARS_DELETE}

    # ---- spanlake cost vs files touched
    if not a.no_series:
        series = []
        step = timedelta(days=DATA_DAYS) / a.commits
        start = DATA_END - timedelta(days=DATA_DAYS)
        for target in (start + step * 1.5, start + timedelta(days=DATA_DAYS / 2),
                       DATA_END - step * 1.5):
            d = days_for(target, datetime.now(timezone.utc))
            copy = run_dir / f"spanlake-series-{d}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(base, copy)
            log(f"spanlake retention --days {d} (series) ...")
            _, r, rep = spanlake_retention(a.bin, copy, d)
            series.append({"days": d, "cutoff": rep["cutoff"],
                           "files_dropped": rep["files_dropped"],
                           "files_rewritten": rep["files_rewritten"],
                           "rows_deleted": rep["rows_deleted"],
                           "rows_copied": rep["rows_copied"],
                           "wall_s": round(r.wall_s, 3), "cpu_s": round(r.cpu_s, 3)})
            shutil.rmtree(copy, ignore_errors=True)
        res["series"] = series

    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    counts = {report["rows_deleted"], d_metrics.get("num_deleted_rows"),
              duck_report["rows_deleted"]}
    if len(counts) != 1:
        log(f"error: rows deleted differ: spanlake {report['rows_deleted']}, delta-rs "
            f"{d_metrics.get('num_deleted_rows')}, DuckDB {duck_report['rows_deleted']}")
        return 1
    return 0


if __name__ == "__main__":
    ingest_query.ensure_venv(Path(__file__))
    sys.exit(main())
