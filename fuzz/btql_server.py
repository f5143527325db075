#!/usr/bin/env python3
"""Server-level fuzz of `POST /btql` (issue 14): generated and mutated
queries of at most 4 KB in all three forms (clause text, SQL text, JSON
AST) against a real `spanlake serve` on loopback.

It starts the server itself (a temporary data dir, a key from
`spanlake apikey create`, `--listen 127.0.0.1:0`), logs a few rows, then
sends queries one at a time for `--seconds` (and at most `--max-queries`).
It fails (exit 1) when any answer is a 5xx, takes longer than
`--limit-seconds`, or the server dies or stops answering `/health`; each
failing query is written to `--out` for replay. Python 3 standard library
only; it talks to 127.0.0.1 only.

    python3 fuzz/btql_server.py --bin target/debug/spanlake --seconds 600

Figures printed at the end: queries sent, answers by status and form,
latency p50 / p99 / max.
"""

import argparse
import http.client
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque

MAX_BYTES_DEFAULT = 4096

# ---- generators -------------------------------------------------------------

FIELDS = [
    "id", "created", "input", "output", "expected", "error", "tags", "is_root",
    "span_id", "root_span_id", "_xact_id", "metadata.model", "metadata.user.name",
    "metadata.\"a b\"", "scores.accuracy", "metrics.tokens", "metrics.latency",
    "span_attributes.name", "tags[0]", "metadata['k']", "model", "n",
]
FUNCTIONS = [
    "count", "sum", "avg", "min", "max", "lower", "upper", "len", "concat",
    "coalesce", "day", "hour", "week", "month", "year", "now", "percentile",
    "any_span", "json_extract", "to_string", "abs", "round", "nosuchfn",
]
BINARY = [
    "+", "-", "*", "/", "%", "=", "!=", "<>", "<", "<=", ">", ">=", "<=>",
    "<!=>", "and", "or", "like", "ilike", "match", "includes", "not like",
]
LITERALS = [
    "1", "0", "-1", "2.5", "1e3", "'x'", "'gpt-4'", "''", "'it''s'", "null",
    "true", "false", "\"dq\"", "interval 1 day", "interval 7 hours",
    "[1, 2]", "[]", "'2026-01-01T00:00:00Z'", "99999999999999999999",
]
ADVERSARIAL_PIECES = [
    "(", ")", "[", "]", "?", ":", ".", ",", "not ", "- ", "\"a b\".", "f(",
    "a in (", "'", "\"", "--", "\n", "|", "{", "}", "\\", "NOT ", ".\"a b\"",
    "\u00e9", "\u2603", "\x00",
]


def gen_expr(rng, depth=0):
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        return rng.choice(FIELDS if rng.random() < 0.6 else LITERALS)
    if roll < 0.55:
        return f"{gen_expr(rng, depth + 1)} {rng.choice(BINARY)} {gen_expr(rng, depth + 1)}"
    if roll < 0.7:
        args = ", ".join(gen_expr(rng, depth + 1) for _ in range(rng.randint(0, 3)))
        return f"{rng.choice(FUNCTIONS)}({args})"
    if roll < 0.78:
        return f"({gen_expr(rng, depth + 1)})"
    if roll < 0.84:
        return f"not {gen_expr(rng, depth + 1)}"
    if roll < 0.9:
        items = ", ".join(gen_expr(rng, depth + 1) for _ in range(rng.randint(1, 3)))
        return f"{gen_expr(rng, depth + 1)} {'not ' if rng.random() < 0.3 else ''}in [{items}]"
    if roll < 0.95:
        return f"{gen_expr(rng, depth + 1)} ? {gen_expr(rng, depth + 1)} : {gen_expr(rng, depth + 1)}"
    return f"{gen_expr(rng, depth + 1)} is {'not ' if rng.random() < 0.5 else ''}null"


def gen_btql(rng, project):
    shape = rng.choice(["", " spans", " traces", " summary"])
    clauses = [f"from: project_logs('{project}'){shape}"]
    if rng.random() < 0.5:
        clauses.append("dimensions: " + ", ".join(
            f"{gen_expr(rng, 3)} as d{i}" for i in range(rng.randint(1, 2))))
        clauses.append("measures: " + ", ".join(
            f"{rng.choice(['count', 'sum', 'avg', 'max'])}({gen_expr(rng, 4)}) as m{i}"
            for i in range(rng.randint(1, 2))))
        if rng.random() < 0.2:
            clauses.append(f"pivot: {gen_expr(rng, 4)}")
    else:
        clauses.append("select: " + ("*" if rng.random() < 0.2 else ", ".join(
            gen_expr(rng, 2) for _ in range(rng.randint(1, 3)))))
    for clause in ["filter", "sort", "limit", "final_filter", "sample", "unpivot"]:
        if rng.random() < 0.35:
            if clause == "limit":
                clauses.append(f"limit: {rng.choice([1, 5, 100, 0, -1])}")
            elif clause == "sort":
                clauses.append("sort: " + ", ".join(
                    f"{rng.choice(['-', ''])}{gen_expr(rng, 3)} {rng.choice(['asc', 'desc', ''])}"
                    for _ in range(rng.randint(1, 2))))
            elif clause == "sample":
                clauses.append(f"sample: {rng.choice(['10', '50%', '0.5'])}")
            elif clause == "unpivot":
                clauses.append("unpivot: scores as (score, value)")
            else:
                clauses.append(f"{clause}: {gen_expr(rng)}")
    rng.shuffle(clauses)
    return " | ".join(clauses)


def to_sql(btql_expr):
    return (btql_expr.replace(" ? ", " AND ").replace(" : ", " OR ")
            .replace("includes", "LIKE").replace("[", "(").replace("]", ")"))


def gen_sql(rng, project):
    select = ", ".join(to_sql(gen_expr(rng, 2)) for _ in range(rng.randint(1, 3)))
    text = f"SELECT {select} FROM project_logs('{project}'"
    if rng.random() < 0.3:
        text += f", shape => '{rng.choice(['spans', 'traces', 'summary'])}'"
    text += ")"
    if rng.random() < 0.6:
        text += f" WHERE {to_sql(gen_expr(rng))}"
    if rng.random() < 0.3:
        text += f" GROUP BY {to_sql(gen_expr(rng, 4))}"
    if rng.random() < 0.3:
        text += f" ORDER BY {to_sql(gen_expr(rng, 3))} {rng.choice(['ASC', 'DESC', ''])}"
    if rng.random() < 0.3:
        text += f" LIMIT {rng.choice([1, 10, 0])}"
    return text


def json_expr(rng, depth=0):
    roll = rng.random()
    if depth > 4 or roll < 0.3:
        if rng.random() < 0.5:
            return {"op": "ident", "name": rng.choice([["id"], ["metadata", "model"], ["scores", "x"], ["tags", 0]])}
        return {"op": "literal", "value": rng.choice([1, "x", None, True, 2.5, [1, 2]])}
    if roll < 0.5:
        return {"op": rng.choice(["eq", "ne", "lt", "gt", "like", "add", "mul", "is", "includes", "in"]),
                "left": json_expr(rng, depth + 1), "right": json_expr(rng, depth + 1)}
    if roll < 0.65:
        return {"op": rng.choice(["and", "or"]),
                "children": [json_expr(rng, depth + 1) for _ in range(rng.randint(0, 4))]}
    if roll < 0.75:
        return {"op": rng.choice(["not", "neg", "isnull"]), "expr": json_expr(rng, depth + 1)}
    if roll < 0.85:
        return {"op": "function", "name": {"op": "ident", "name": [rng.choice(FUNCTIONS)]},
                "args": [json_expr(rng, depth + 1) for _ in range(rng.randint(0, 2))]}
    if roll < 0.92:
        return {"op": "btql", "btql": gen_expr(rng, 2)}
    return {"op": "if", "conds": [{"cond": json_expr(rng, depth + 1), "then": json_expr(rng, depth + 1)}],
            "else": json_expr(rng, depth + 1)}


def gen_json(rng, project):
    query = {"from": {"op": "function", "name": {"op": "ident", "name": ["project_logs"]},
                      "args": [{"op": "literal", "value": project}]}}
    if rng.random() < 0.7:
        query["select"] = [{"expr": json_expr(rng, 2), "alias": f"c{i}"} for i in range(rng.randint(1, 3))]
    if rng.random() < 0.6:
        query["filter"] = json_expr(rng)
    if rng.random() < 0.3:
        query["sort"] = [{"expr": json_expr(rng, 3), "dir": rng.choice(["asc", "desc"])}]
    if rng.random() < 0.3:
        query["limit"] = rng.choice([1, 10, 0, -5])
    return query


def deep_json(rng, n):
    inner = {"op": "literal", "value": True}
    text = json.dumps(inner)
    op = rng.choice(["not", "array", "object", "and"])
    for _ in range(n):
        if op == "not":
            text = '{"op":"not","expr":' + text + "}"
        elif op == "array":
            text = "[" + text + "]"
        elif op == "object":
            text = '{"a":' + text + "}"
        else:
            text = '{"op":"and","children":[' + text + "]}"
    if rng.random() < 0.5:
        # Unbalanced: cut the closing brackets.
        text = text[: len(text) - rng.randint(1, n + 1)]
    return '{"filter":' + text + "}"


def adversarial(rng, project, form):
    """Shapes known to hurt parsers: deep nesting, long chains, dangling paths."""
    room = 3800
    kind = rng.choice(["open", "path", "prefix", "chain", "mixed", "ternary", "calls"])
    if kind == "open":
        piece = rng.choice(["(", "[", "f(", "a in (", "[(", "lower("])
        body = piece * rng.randint(1, room // len(piece)) + rng.choice(["1", "", "x"]) + ")" * rng.randint(0, 50)
    elif kind == "path":
        seg = rng.choice(['."a b"', ".a", '."x"[1]', ".\"\"", ".f(x)", ".(b)"])
        body = rng.choice(["err", "f(x)", "a[1]", "metadata", "'s'"]) + seg * rng.randint(1, 300) + rng.choice([".))", ".)", ".", "", " = 1", ".*"])
    elif kind == "prefix":
        piece = rng.choice(["not ", "- ", "NOT ", "neg ", "-"])
        body = piece * rng.randint(1, room // len(piece)) + "x"
    elif kind == "chain":
        op = rng.choice([" + ", " or ", " and ", " = ", " * ", " || ", " like "])
        n = rng.randint(1, room // (len(op) + 1))
        body = op.join(["a"] * n)
    elif kind == "ternary":
        body = "a ? " * rng.randint(1, 900) + "b" + " : c" * rng.randint(0, 900)
    elif kind == "calls":
        n = rng.randint(1, 600)
        body = "lower(" * n + "id" + ")" * n + " = 'x'"
    else:
        body = "".join(rng.choice(ADVERSARIAL_PIECES) for _ in range(rng.randint(1, 1500)))
    if form == "sql":
        return f"SELECT id FROM project_logs('{project}') WHERE {body}"
    if form == "json":
        return '{"filter":{"op":"btql","btql":' + json.dumps(body) + "}}" if rng.random() < 0.5 else deep_json(rng, rng.randint(1, 2000))
    return f"select: id | from: project_logs('{project}') | filter: {body}"


def mutate(rng, text):
    data = list(text)
    for _ in range(rng.randint(1, 8)):
        roll = rng.random()
        at = rng.randint(0, len(data))
        if roll < 0.3 and data:
            del data[rng.randrange(len(data))]
        elif roll < 0.6:
            data[at:at] = list(rng.choice(ADVERSARIAL_PIECES + BINARY + LITERALS + FIELDS))
        elif roll < 0.8 and data:
            start = rng.randrange(len(data))
            end = min(len(data), start + rng.randint(1, 40))
            data[at:at] = data[start:end] * rng.randint(1, 20)
        elif data:
            data = data[: rng.randint(0, len(data))]
    return "".join(data)


def make_query(rng, project):
    """(form, body bytes) of at most `MAX_BYTES` bytes."""
    form = rng.choice(["btql", "sql", "json"])
    roll = rng.random()
    if roll < 0.3:
        text = adversarial(rng, project, form)
    elif form == "btql":
        text = gen_btql(rng, project)
    elif form == "sql":
        text = gen_sql(rng, project)
    else:
        text = json.dumps(gen_json(rng, project))
    if roll > 0.6:
        text = mutate(rng, text)
    encoded = text.encode("utf-8", "replace")[:MAX_BYTES]
    text = encoded.decode("utf-8", "ignore")
    body = {"query": text}
    if form == "json" and rng.random() < 0.6:
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            # Too deep for Python's own parser: send it as text.
            parsed = None
        if isinstance(parsed, dict):
            body = {"query": parsed}
    if rng.random() < 0.1:
        body["fmt"] = rng.choice(["jsonl", "parquet", "csv"])
    try:
        return form, json.dumps(body).encode()
    except RecursionError:
        # Parsed, but too deep for Python's encoder: send it as text.
        body["query"] = text
        return form, json.dumps(body).encode()


# ---- the server -------------------------------------------------------------


class SpanlakeServer:
    def __init__(self, binary, data_dir):
        self.binary = binary
        self.data_dir = data_dir
        self.stderr_tail = deque(maxlen=50)
        self.process = None
        self.address = None

    def cli(self, *args):
        return subprocess.run([self.binary, "--data-dir", self.data_dir, *args],
                              capture_output=True, text=True, check=True, timeout=60)

    def start(self):
        self.process = subprocess.Popen(
            [self.binary, "--data-dir", self.data_dir, "serve", "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.process.stderr.readline()
            if not line:
                break
            self.stderr_tail.append(line.rstrip())
            found = re.search(r"HTTP API listening on http://(\S+)", line)
            if found:
                self.address = found.group(1)
                break
        if not self.address:
            raise RuntimeError("the server did not start:\n" + "\n".join(self.stderr_tail))
        host, _, _ = self.address.rpartition(":")
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            raise RuntimeError(f"refusing to fuzz a non-loopback address {self.address}")
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip())

    def alive(self):
        return self.process.poll() is None

    def request(self, method, path, key, body=b"", timeout=30.0):
        host, _, port = self.address.rpartition(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def stop(self):
        if self.process and self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def seed_rows(server, key):
    status, body = server.request("POST", "/v1/project", key, json.dumps({"name": "fuzz"}).encode())
    if status != 200:
        raise RuntimeError(f"create project: {status} {body[:300]!r}")
    project = json.loads(body)["id"]
    rows = []
    for i, model in enumerate(["gpt-4", "gpt-4", "claude", "llama", None]):
        row = {
            "id": f"r{i}", "project_id": project, "log_id": "g",
            "created": f"2026-11-0{i + 1}T00:00:00Z",
            "input": f"question {i}", "output": {"answer": i},
            "scores": {"accuracy": i / 4}, "metrics": {"tokens": 10 * i, "latency": 0.5 * i},
            "tags": ["t", f"t{i}"], "span_attributes": {"name": f"span{i}"},
        }
        if model:
            row["metadata"] = {"model": model, "user": {"name": "u"}, "a b": i}
        rows.append(row)
    status, body = server.request("POST", "/logs3", key, json.dumps({"rows": rows, "api_version": 2}).encode())
    if status != 200:
        raise RuntimeError(f"logs3: {status} {body[:300]!r}")
    return project


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    index = min(len(sorted_values) - 1, int(round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def main():
    global MAX_BYTES
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", default=os.environ.get("SPANLAKE_BIN"), help="the spanlake binary (default $SPANLAKE_BIN)")
    parser.add_argument("--seconds", type=float, default=600, help="how long to fuzz (default 600)")
    parser.add_argument("--max-queries", type=int, default=1_000_000, help="at most this many queries")
    parser.add_argument("--limit-seconds", type=float, default=1.0, help="slowest acceptable answer (default 1)")
    parser.add_argument("--max-bytes", type=int, default=MAX_BYTES_DEFAULT, help="largest query text (default 4096)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    parser.add_argument("--out", default="fuzz/artifacts/btql_server", help="where failing queries are written")
    args = parser.parse_args()
    if not args.bin:
        parser.error("give the spanlake binary with --bin or $SPANLAKE_BIN")
    MAX_BYTES = args.max_bytes
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)

    with tempfile.TemporaryDirectory(prefix="spanlake-fuzz-") as tmp:
        server = SpanlakeServer(os.path.abspath(args.bin), os.path.join(tmp, "data"))
        key = server.cli("apikey", "create", "--org", "fuzz").stdout.strip().splitlines()[-1].strip()
        server.start()
        failures = []
        statuses = Counter()
        by_form = Counter()
        latencies = []
        slowest = (0.0, None)
        sent = 0
        try:
            project = seed_rows(server, key)
            started = time.time()
            while time.time() - started < args.seconds and sent < args.max_queries:
                form, body = make_query(rng, project)
                t0 = time.perf_counter()
                try:
                    status, answer = server.request("POST", "/btql", key, body, timeout=max(5.0, 5 * args.limit_seconds))
                except (OSError, http.client.HTTPException) as e:
                    status, answer = None, repr(e).encode()
                took = time.perf_counter() - t0
                sent += 1
                latencies.append(took)
                if took > slowest[0]:
                    slowest = (took, body)
                statuses[status] += 1
                by_form[(form, status if status is None else status // 100 * 100)] += 1
                problem = None
                if status is None:
                    problem = f"no answer: {answer.decode(errors='replace')}"
                elif status >= 500:
                    problem = f"status {status}: {answer[:500].decode(errors='replace')}"
                elif took > args.limit_seconds:
                    problem = f"took {took:.3f}s (status {status})"
                if problem:
                    failures.append((problem, body))
                    os.makedirs(args.out, exist_ok=True)
                    with open(os.path.join(args.out, f"failure-{seed}-{len(failures)}.json"), "wb") as f:
                        f.write(body)
                    print(f"FAIL [{form}] {problem}\n  query: {body[:300]!r}", file=sys.stderr)
                if not server.alive():
                    failures.append(("the server died", body))
                    break
                if sent % 500 == 0:
                    health, _ = server.request("GET", "/health", None, timeout=5)
                    if health != 200:
                        failures.append((f"/health answered {health}", body))
                        break
                    print(f"{sent} queries, {time.time() - started:.0f}s, statuses {dict(statuses)}", file=sys.stderr)
                if len(failures) >= 20:
                    break
            try:
                health, _ = server.request("GET", "/health", None, timeout=5)
            except OSError as e:
                health = repr(e)
            if health != 200:
                failures.append((f"/health at the end answered {health}", b""))
        finally:
            alive = server.alive()
            server.stop()
        latencies.sort()
        elapsed = max(1e-9, time.time() - started) if sent else 0
        summary = {
            "seed": seed,
            "queries": sent,
            "queries_per_second": round(sent / elapsed, 1) if sent else 0,
            "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
            "by_form": {f"{form} {status}": n for (form, status), n in sorted(by_form.items(), key=str)},
            "latency_ms": {
                "p50": round(1000 * percentile(latencies, 0.5), 2),
                "p99": round(1000 * percentile(latencies, 0.99), 2),
                "max": round(1000 * (latencies[-1] if latencies else 0), 2),
            },
            "slowest_query": (slowest[1] or b"")[:200].decode(errors="replace"),
            "server_alive_at_end": alive,
            "failures": len(failures),
        }
        print(json.dumps(summary, indent=2))
        if failures:
            for problem, body in failures[:10]:
                print(f"failure: {problem}\n  {body[:300]!r}", file=sys.stderr)
            print("server stderr (last lines):\n" + "\n".join(server.stderr_tail), file=sys.stderr)
            return 1
        return 0


MAX_BYTES = MAX_BYTES_DEFAULT

if __name__ == "__main__":
    sys.exit(main())
