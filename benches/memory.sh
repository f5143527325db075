#!/usr/bin/env bash
# Peak memory of ingest and of a streamed `select: *` query, at several sizes:
# shows whether memory grows with the row count (it should not).
#
#   benches/memory.sh                 # 100000 and 1000000 spans
#   benches/memory.sh 20000 200000    # other sizes
#
# Needs the release binary (cargo build --release -p spanlake) and GNU time.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$HOME/.cache/spanlake-target}"
bin="${SPANLAKE_BIN:-$target/release/spanlake}"
work="${WORK:-$HOME/.cache/spanlake-bench}"
[ -x "$bin" ] || { echo "missing $bin: build it with: cargo build --release -p spanlake" >&2; exit 2; }
command -v /usr/bin/time >/dev/null || { echo "needs GNU time (/usr/bin/time)" >&2; exit 2; }
sizes=("$@"); [ ${#sizes[@]} -gt 0 ] || sizes=(100000 1000000)
mkdir -p "$work"

printf '%-10s %-8s %10s %12s %10s\n' spans step wall_s peak_rss_mib rows
for n in "${sizes[@]}"; do
  file="$work/spans_$n.jsonl"
  [ -f "$file" ] || python3 tools/gen_spans.py --spans "$n" --out "$work" --formats jsonl >&2
  dir=$(mktemp -d "$work/memory-XXXX")
  /usr/bin/time -f '%e %M' -o "$dir/ingest.time" \
    "$bin" --data-dir "$dir/data" ingest --project mem "$file" 2>"$dir/ingest.log"
  read -r wall kb < "$dir/ingest.time"
  printf '%-10s %-8s %10s %12d %10s\n' "$n" ingest "$wall" $((kb / 1024)) "$n"
  /usr/bin/time -f '%e %M' -o "$dir/query.time" \
    "$bin" --data-dir "$dir/data" query --format jsonl --output "$dir/out.jsonl" \
    "select: * | from: project_logs('mem') spans"
  read -r wall kb < "$dir/query.time"
  rows=$(wc -l < "$dir/out.jsonl")
  printf '%-10s %-8s %10s %12d %10s\n' "$n" query "$wall" $((kb / 1024)) "$rows"
  [ "$rows" -eq "$n" ] || { echo "query returned $rows rows, expected $n" >&2; exit 1; }
  rm -rf "$dir"
done
