#!/usr/bin/env python3
"""Summary shape and dimensions/measures: spanlake vs DuckDB, same data, one run.

On one generated JSONL of spans (tools/gen_spans.py; reused from
benches/ingest_query.py's cache, and its spanlake store and DuckDB Parquet when
they exist, else built here, untimed):

1. summary: spanlake ``select: * | from: project_logs('bench') summary`` (one
   row per trace: averaged scores, summed tokens and cost, call and error
   counts, start/end/duration, root previews) vs DuckDB's GROUP BY
   root_span_id over the same data as Parquet computing the same aggregates;
2. dimensions/measures: spanlake ``dimensions: metadata.model, day(created) |
   measures: count(1), avg(metrics.tokens), sum(metrics.estimated_cost),
   percentile(metrics.tokens, 0.95)`` vs the equivalent DuckDB GROUP BY.

Both write JSON Lines to a file. Each is its own child process (wall, CPU,
peak RSS via os.wait4), best of --repeat. Row counts must match (exit 1
otherwise). spanlake runs with --memory-limit-mib (default 512): its
aggregations spill past it, so memory is bounded by configuration.

Usage:
  python3 benches/shapes.py                  # 1M spans
  python3 benches/shapes.py --spans 20000    # quick
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest_query as iq  # noqa: E402  (shared venv, measuring and data helpers)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=1_000_000)
    ap.add_argument("--work", type=Path, default=iq.DEFAULT_WORK)
    ap.add_argument("--bin", type=Path, default=iq.DEFAULT_BIN)
    ap.add_argument("--gen", type=Path, default=iq.DEFAULT_GEN)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--memory-limit-mib", type=int, default=512)
    ap.add_argument("--json", action="store_true")
    return ap.parse_args()


SPANLAKE_SUMMARY = "select: * | from: project_logs('bench') summary"
SPANLAKE_MEASURES = (
    "dimensions: metadata.model as model, day(created) as day"
    " | measures: count(1) as n, avg(metrics.tokens) as avg_tokens,"
    " sum(metrics.estimated_cost) as cost, percentile(metrics.tokens, 0.95) as p95"
    " | from: project_logs('bench') spans"
)


def duckdb_summary_sql(parquet: Path, out: Path) -> str:
    p = iq.sql_str(parquet)
    return f"""COPY (
  WITH s AS (SELECT * FROM read_parquet({p})),
  sc AS (SELECT root_span_id, k AS name, avg(v) AS avg
         FROM (SELECT root_span_id, unnest(map_keys(CAST(to_json(scores) AS MAP(VARCHAR, DOUBLE)))) AS k,
                      unnest(map_values(CAST(to_json(scores) AS MAP(VARCHAR, DOUBLE)))) AS v
               FROM s WHERE scores IS NOT NULL)
         GROUP BY 1, 2),
  agg AS (SELECT root_span_id,
      sum(metrics.prompt_tokens) AS prompt_tokens, sum(metrics.completion_tokens) AS completion_tokens,
      sum(metrics.tokens) AS total_tokens, sum(metrics.estimated_cost) AS estimated_cost,
      count(*) FILTER (WHERE span_attributes.type = 'llm') AS llm_calls,
      count(*) FILTER (WHERE span_attributes.type = 'tool') AS tool_calls,
      count(*) FILTER (WHERE span_attributes.type = 'llm' AND error IS NOT NULL) AS llm_errors,
      count(*) FILTER (WHERE span_attributes.type = 'tool' AND error IS NOT NULL) AS tool_errors,
      min(metrics.start) AS "start", max(metrics."end") AS "end",
      max(metrics."end") - min(metrics.start) AS duration,
      sum(metrics."end" - metrics.start) FILTER (WHERE span_attributes.type = 'llm') AS llm_duration,
      bool_or(error IS NOT NULL) AS has_error
    FROM s GROUP BY root_span_id)
  SELECT r.id, r.root_span_id, r.created, r.tags, r.span_attributes,
         left(CAST(r.input AS VARCHAR), 124) AS input, left(CAST(r.output AS VARCHAR), 124) AS output,
         r.error, CAST(r.metadata AS VARCHAR) AS metadata, agg.*,
         (SELECT map_from_entries(list(struct_pack(k := sc.name, v := sc.avg))) FROM sc
          WHERE sc.root_span_id = agg.root_span_id) AS scores
  FROM agg JOIN s AS r ON r.span_id = agg.root_span_id
) TO {iq.sql_str(out)} (FORMAT json)"""


def duckdb_measures_sql(parquet: Path, out: Path) -> str:
    p = iq.sql_str(parquet)
    return f"""COPY (
  SELECT metadata.model AS model, date_trunc('day', created AT TIME ZONE 'UTC') AS day, count(*) AS n,
         avg(metrics.tokens) AS avg_tokens, sum(metrics.estimated_cost) AS cost,
         quantile_cont(metrics.tokens, 0.95) AS p95
  FROM read_parquet({p}) GROUP BY ALL
) TO {iq.sql_str(out)} (FORMAT json)"""


def main() -> int:
    iq.ensure_venv(Path(__file__))
    args = parse_args()
    if not args.bin.exists():
        iq.log(f"error: missing {args.bin}: {iq.BUILD_HINT}")
        return 2
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    jsonl = iq.generate(args.gen, args.spans, work)
    run_dir = work / f"shapes_{args.spans}"
    run_dir.mkdir(exist_ok=True)
    data_dir = run_dir / "spanlake-data"
    parquet = run_dir / "spans.parquet"
    if not (data_dir / "state.db").exists():
        iq.log("ingesting into spanlake (untimed) ...")
        iq.check(iq.measure([str(args.bin), "--data-dir", str(data_dir), "ingest", "--project", "bench", str(jsonl)]),
                 "spanlake ingest")
    if not parquet.exists():
        iq.log("converting to Parquet for DuckDB (untimed) ...")
        sql = f"COPY (SELECT * FROM read_json_auto({iq.sql_str(jsonl)})) TO {iq.sql_str(parquet)} (FORMAT parquet, COMPRESSION zstd)"
        iq.check(iq.measure([sys.executable, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"]),
                 "DuckDB conversion")

    results = {}
    for name, btql, duck_sql in [
        ("summary", SPANLAKE_SUMMARY, duckdb_summary_sql),
        ("measures", SPANLAKE_MEASURES, duckdb_measures_sql),
    ]:
        s_out = run_dir / f"{name}_spanlake.jsonl"
        d_out = run_dir / f"{name}_duckdb.jsonl"
        s_runs, d_runs = [], []
        for i in range(args.repeat):
            iq.log(f"{name} round {i + 1}/{args.repeat} ...")
            s_runs.append(iq.check(iq.measure(
                [str(args.bin), "--data-dir", str(data_dir), "query", "--format", "jsonl",
                 "--memory-limit-mib", str(args.memory_limit_mib), "--output", str(s_out), btql]),
                f"spanlake {name}"))
            sql = duck_sql(parquet, d_out)
            d_runs.append(iq.check(iq.measure([sys.executable, "-c", f"import duckdb; duckdb.connect().execute({sql!r})"]),
                                   f"DuckDB {name}"))
        s, d = iq.best_of(s_runs), iq.best_of(d_runs)
        s_rows, d_rows = iq.count_lines(s_out), iq.count_lines(d_out)
        results[name] = {
            "spanlake": {"wall_s": s.wall_s, "cpu_s": s.cpu_s, "peak_rss_mib": s.peak_rss_mib, "rows": s_rows},
            "duckdb": {"wall_s": d.wall_s, "cpu_s": d.cpu_s, "peak_rss_mib": d.peak_rss_mib, "rows": d_rows},
            "speed_ratio": d.wall_s / s.wall_s,
        }
        if s_rows != d_rows:
            iq.log(f"error: {name}: spanlake returned {s_rows} rows, DuckDB {d_rows}")
            print(json.dumps(results, indent=2))
            return 1

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\nspanlake vs DuckDB: {args.spans:,} spans, memory limit {args.memory_limit_mib} MiB")
    print(f"{'query':<9} {'engine':<9} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'rows':>9}  DuckDB/spanlake")
    for name, r in results.items():
        for engine in ("spanlake", "duckdb"):
            f = r[engine]
            tail = f"wall x{r['speed_ratio']:.2f}" if engine == "duckdb" else ""
            print(f"{name:<9} {engine:<9} {f['wall_s']:>8.3f} {f['cpu_s']:>8.3f} {f['peak_rss_mib']:>13.1f} {f['rows']:>9}  {tail}")
    print("ratio = DuckDB wall / spanlake wall (>1: spanlake is faster); DuckDB figures include starting Python")
    return 0


if __name__ == "__main__":
    sys.exit(main())
