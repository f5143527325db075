#!/usr/bin/env python3
"""Compaction benchmark: scans before and after `spanlake store compact`.

On one generated JSONL of spans (tools/gen_spans.py, benches/ingest_query.py's
cache) with 30% of its spans merged later (a second JSONL of `_is_merge`
events adding output, scores and metadata, as an SDK's `span.end()` and
later `span.log()` do; cached next to it):

0. Setup: ``spanlake ingest`` of the spans, then of the merges, into a fresh
   data dir (timed, reported).
1. Scans before compaction (30% of the ids have two versions to fold):
     filtered: the span query of benches/ingest_query.py
               (llm spans with metrics.tokens > --min-tokens)
     full:     select: * | from: project_logs('bench')   (every column, JSONL)
2. ``spanlake store compact --dry-run`` (the plan), then ``spanlake store
   compact``: wall, CPU, peak RSS, and its report (rows, files, bytes in/out).
3. The same scans after compaction.
4. Reference, "reads of resolved rows": the full scan's output ingested into
   a fresh data dir (one clean version per id, no fold), and the same scans.

Every measured step is its own process (ingest_query.measure: wall, user+sys
CPU, peak RSS), best of --repeat. The scans must return the same rows in
every state, and the full scan the same bytes before and after compaction
(all columns, `_xact_id` and `_pagination_key` included; order-independent
digest); else exit 1.

Usage:
  python3 benches/compact.py                  # 1M spans, 300k merged later
  python3 benches/compact.py --spans 20000    # quick run
  python3 benches/compact.py --spans 100000 --json

Options: --spans N (default 1000000), --merged-percent P (default 30), --work
DIR, --bin PATH, --gen PATH, --repeat K (default 3), --min-tokens T (default
600), --json. The binary is never built here: cargo build --release -p spanlake.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_query as iq  # noqa: E402  (shared venv, measuring and data helpers)

PROJECT = "bench"
FULL_SCAN = f"select: * | from: project_logs('{PROJECT}')"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--merged-percent", type=int, default=30)
    ap.add_argument("--work", type=Path, default=iq.DEFAULT_WORK)
    ap.add_argument("--bin", type=Path, default=iq.DEFAULT_BIN)
    ap.add_argument("--gen", type=Path, default=iq.DEFAULT_GEN)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--min-tokens", type=int, default=600)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    if a.spans <= 0 or a.repeat <= 0 or not 0 < a.merged_percent <= 100:
        ap.error("--spans and --repeat must be positive, --merged-percent in 1..100")
    return a


def merges(jsonl: Path, percent: int, work: Path) -> tuple[Path, int]:
    """The cached JSONL of merge events for `percent`% of the spans of
    `jsonl` (every span whose line number modulo 100 is below `percent`)."""
    target = work / f"{jsonl.stem}_merges_{percent}.jsonl"
    if target.exists():
        iq.log(f"reusing {target}")
        return target, iq.count_lines(target)
    iq.log(f"writing merges for {percent}% of the spans -> {target} ...")
    tmp = target.with_suffix(f".tmp-{os.getpid()}")
    n = 0
    with open(jsonl, "rb") as src, open(tmp, "w") as out:
        for i, line in enumerate(src):
            if i % 100 >= percent or not line.strip():
                continue
            span_id = json.loads(line)["id"]
            score = (i * 7919 % 1000) / 1000
            out.write(json.dumps({
                "id": span_id, "_is_merge": True,
                "output": {"final": f"reviewed answer {i}"},
                "scores": {"reviewed": score},
                "metadata": {"reviewed": True, "reviewer": f"user_{i % 97:02d}"},
            }, separators=(",", ":")) + "\n")
            n += 1
    tmp.rename(target)
    return target, n


def digest(path: Path) -> str:
    """Order-independent digest of the lines of `path` (sum of SHA-256s)."""
    total = 0
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                total = (total + int.from_bytes(hashlib.sha256(line.rstrip(b"\n")).digest()[:16], "big")) % (1 << 128)
    return f"{total:032x}"


def spanlake(bin: Path, data_dir: Path, *args: str) -> list[str]:
    return [str(bin), "--data-dir", str(data_dir), *args]


def scans(a: argparse.Namespace, data_dir: Path, out_dir: Path, label: str) -> dict:
    """Best of --repeat of each scan on `data_dir`; rows and outputs kept."""
    result = {}
    for name, query in (("filtered", iq.spanlake_query_text(PROJECT, a.min_tokens)),
                        ("full", FULL_SCAN)):
        out = out_dir / f"{label}_{name}.jsonl"
        runs = []
        for i in range(a.repeat):
            iq.log(f"{label}: {name} scan {i + 1}/{a.repeat} ...")
            out.unlink(missing_ok=True)
            runs.append(iq.check(iq.measure(spanlake(a.bin, data_dir, "query", "--format", "jsonl",
                                                     "--output", str(out), query)),
                                 f"spanlake {name} scan ({label})"))
        best = iq.best_of(runs)
        result[name] = {"wall_s": round(best.wall_s, 3), "cpu_s": round(best.cpu_s, 3),
                        "peak_rss_mib": round(best.peak_rss_mib, 1), "rows": iq.count_lines(out),
                        "all_wall_s": [round(r.wall_s, 3) for r in runs], "output": str(out)}
    return result


def main() -> int:
    iq.ensure_venv(Path(__file__))
    a = parse_args()
    if not (a.bin.is_file() and os.access(a.bin, os.X_OK)):
        iq.log(f"error: spanlake binary not found at {a.bin}; {iq.BUILD_HINT}")
        return 2
    work = a.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    jsonl = iq.generate(a.gen, a.spans, work)
    merge_file, merged = merges(jsonl, a.merged_percent, work)
    out_dir = work / f"compact_{a.spans}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir()
    data = out_dir / "merged-data"
    ref = out_dir / "resolved-data"

    # ---- setup
    iq.warm_page_cache(jsonl)
    iq.log("spanlake ingest of the spans ...")
    ingest = iq.check(iq.measure(spanlake(a.bin, data, "ingest", "--project", PROJECT, str(jsonl))),
                      "spanlake ingest")
    iq.log(f"spanlake ingest of {merged} merges ...")
    ingest_merges = iq.check(iq.measure(spanlake(a.bin, data, "ingest", "--project", PROJECT,
                                                 str(merge_file))), "spanlake ingest of merges")
    bytes_before = iq.dir_size(data / "projects")

    # ---- before, compaction, after
    before = scans(a, data, out_dir, "before")
    plan_out = out_dir / "plan.json"
    plan_run = iq.check(iq.measure(spanlake(a.bin, data, "store", "compact", "--project", PROJECT,
                                            "--dry-run"), plan_out), "spanlake store compact --dry-run")
    report_out = out_dir / "compact.json"
    compact_run = iq.check(iq.measure(spanlake(a.bin, data, "store", "compact", "--project", PROJECT),
                                      report_out), "spanlake store compact")
    report = json.loads(report_out.read_text())
    after = scans(a, data, out_dir, "after")

    # ---- reference: the resolved rows, ingested clean
    iq.log("reference: ingesting the resolved rows into a fresh store ...")
    iq.check(iq.measure(spanlake(a.bin, ref, "ingest", "--project", PROJECT,
                                 before["full"]["output"])), "spanlake ingest of the resolved rows")
    reference = scans(a, ref, out_dir, "resolved")

    # ---- checks
    ok = True
    for name in ("filtered", "full"):
        counts = {label: s[name]["rows"] for label, s in
                  (("before", before), ("after", after), ("resolved", reference))}
        if len(set(counts.values())) != 1:
            iq.log(f"error: {name} scan row counts differ: {counts}")
            ok = False
    same_bytes = digest(Path(before["full"]["output"])) == digest(Path(after["full"]["output"]))
    if not same_bytes:
        iq.log("error: the full scan returned different rows after compaction")
        ok = False

    def figures(run: iq.Run) -> dict:
        return {"wall_s": round(run.wall_s, 3), "cpu_s": round(run.cpu_s, 3),
                "peak_rss_mib": round(run.peak_rss_mib, 1)}

    res = {
        "spans": a.spans, "merged": merged, "merged_percent": a.merged_percent, "cpus": os.cpu_count(),
        "repeat": a.repeat, "bin": str(a.bin),
        "ingest": figures(ingest), "ingest_merges": figures(ingest_merges),
        "store_bytes_before": bytes_before,
        "plan": figures(plan_run), "compact": figures(compact_run), "report": report,
        "store_bytes_after_compaction": iq.dir_size(data / "projects"),
        "scans": {"before": before, "after": after, "resolved": reference},
        "full_scan_identical_before_after": same_bytes,
    }
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"\ncompaction: {a.spans:,} spans, {merged:,} ({a.merged_percent}%) merged later, "
              f"{res['cpus']} CPUs, scans best of {a.repeat}")
        print(f"ingest {ingest.wall_s:.2f}s, merges {ingest_merges.wall_s:.2f}s")
        r = report
        print(f"compact: {compact_run.wall_s:.2f}s wall, {compact_run.cpu_s:.2f}s CPU, "
              f"{compact_run.peak_rss_mib:.0f} MiB peak RSS (plan alone {plan_run.wall_s:.2f}s); "
              f"rows {r['rows_in']:,} -> {r['rows_out']:,}, files {r['files_in']} -> {r['files_out']}, "
              f"{r['bytes_in'] / 2**20:.1f} -> {r['bytes_out'] / 2**20:.1f} MiB, "
              f"{r['ids_folded']:,} ids folded, {r['files_untouched']} files untouched")
        print(f"{'scan':<9} {'state':<17} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'rows':>9}  vs resolved")
        for name in ("filtered", "full"):
            base = reference[name]["wall_s"]
            for label, s in (("before compaction", before), ("after compaction", after),
                             ("resolved rows", reference)):
                f = s[name]
                print(f"{name:<9} {label:<17} {f['wall_s']:>8.3f} {f['cpu_s']:>8.3f} "
                      f"{f['peak_rss_mib']:>13.1f} {f['rows']:>9}  x{f['wall_s'] / base:.2f}")
        print(f"full scan identical before and after (all columns): {same_bytes}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
