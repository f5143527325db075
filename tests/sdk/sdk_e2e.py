"""End to end with the unmodified Braintrust SDK (PyPI `braintrust`).

Run by tests/it/server.rs against a running `spanlake serve`, with
BRAINTRUST_APP_URL, BRAINTRUST_API_URL and BRAINTRUST_API_KEY pointing at it,
and SPANLAKE_S3_ENDPOINT / E2E_BUCKET for the export. It:

1. logs a trace through the SDK: a root span with two children (input,
   output, scores, metrics, metadata, tags), one span too large for an
   inline batch (so the SDK takes the overflow upload path), then a later
   feedback merge (scores, tags, audit metadata) on the root;
2. reads the merged rows back over POST /btql, in text form and in the JSON
   AST form the SDK itself sends, paging with the cursor;
3. creates an export automation over REST, runs it, downloads the Parquet
   files from the S3 server and counts them with DuckDB;
4. prints one JSON summary on stdout (the Rust test asserts on it).
"""

import json

import braintrust

from client import btql, call, duckdb_over_parquet, export_keys, BUCKET, S3


# 1. Log through the SDK.
logger = braintrust.init_logger(project="sdk-e2e")
root = logger.start_span(name="root_task", type="task")
root.log(
    input={"question": "what is 6 x 7?"},
    metadata={"user": "u-1", "nested": {"a": 1}},
    tags=["root-tag"],
    scores={"overall": 0.75},
)
llm = root.start_span(name="llm_call", type="llm")
llm.log(
    input=[{"role": "user", "content": "6 x 7"}],
    output="42",
    metrics={"tokens": 17, "prompt_tokens": 12, "completion_tokens": 5},
)
llm.end()
tool = root.start_span(name="calculator", type="tool")
tool.log(input={"a": 6, "b": 7}, output={"product": 42})
tool.end()
root.log(output={"answer": 42})
root.end()
logger.flush()
root_id = root.id
trace_id = root.root_span_id

# A span larger than BRAINTRUST_MAX_REQUEST_SIZE: its batch is uploaded
# through POST /logs3/overflow and a signed PUT.
big = logger.start_span(name="big_input", type="task")
big.log(input={"blob": "x" * 40_000})
big.end()
logger.flush()

# Feedback later, in its own request: a merge on the root row.
logger.log_feedback(id=root_id, scores={"human": 1.0}, metadata={"reviewer": "r1"}, tags=["late-tag"])
logger.flush()

project_id = logger.project.id

# 2. Read back. Text form:
_, rows = btql(
    f"select: id, span_id, root_span_id, span_parents, is_root, scores, tags, metadata, metrics, "
    f"span_attributes, _xact_id, _pagination_key, created | from: project_logs('{project_id}') | sort: created"
)
by_name = {r["span_attributes"]["name"]: r for r in rows["data"]}

# The AST form the SDK's SpanFetcher sends, paged 2 rows at a time.
ast = {
    "select": [{"op": "star"}],
    "from": {
        "op": "function",
        "name": {"op": "ident", "name": ["project_logs"]},
        "args": [{"op": "literal", "value": project_id}],
    },
    "cursor": None,
    "limit": 2,
    "filter": {
        "op": "and",
        "children": [
            {"op": "eq", "left": {"op": "ident", "name": ["root_span_id"]}, "right": {"op": "literal", "value": trace_id}},
            {
                "op": "or",
                "children": [
                    {"op": "isnull", "expr": {"op": "ident", "name": ["span_attributes", "purpose"]}},
                    {"op": "ne", "left": {"op": "ident", "name": ["span_attributes", "purpose"]}, "right": {"op": "literal", "value": "scorer"}},
                ],
            },
        ],
    },
}
pages = []
trace_ids = []
while True:
    headers, page = btql(ast, use_columnstore=False, brainstore_realtime=True)
    pages.append(len(page["data"]))
    trace_ids.extend(r["id"] for r in page["data"])
    cursor = page.get("cursor")
    if not cursor:
        break
    assert headers.get("x-bt-cursor") == cursor, headers
    ast["cursor"] = cursor
    assert len(pages) < 10, pages

# 3. Export over REST to the S3 server, then DuckDB over the files.
prefix = "sdk-e2e"
status, _, automation = call(
    "POST",
    "/v1/project_automation",
    {
        "project_id": project_id,
        "name": "to-s3",
        "kind": "export",
        # Paused: the server's scheduler would otherwise run it at once and
        # this script's manual run could find it running.
        "status": "paused",
        "config": {
            "data": "spans",
            "export_path": f"s3://{BUCKET}/{prefix}",
            "format": "parquet",
            "interval": "1h",
            "endpoint": S3,
        },
    },
)
assert status == 200, automation
status, _, test = call("POST", f"/v1/project_automation/{automation['id']}/test")
assert status == 200 and test["ok"], test
status, _, run = call("POST", f"/v1/project_automation/{automation['id']}/run")
assert status == 200, run
status, _, history = call("GET", f"/v1/project_automation/{automation['id']}/history")
assert status == 200, history


keys = export_keys(prefix)
exported, root_scores = duckdb_over_parquet(
    keys,
    [
        ("select count(*), count(distinct id) from {files}", []),
        ("select scores from {files} where id = ?", [root_id]),
    ],
)

print(
    json.dumps(
        {
            "project_id": project_id,
            "root_id": root_id,
            "rows": rows["data"],
            "by_name": by_name,
            "ast_pages": pages,
            "ast_ids": trace_ids,
            "automation": automation,
            "run": run,
            "history": history,
            "exported_keys": keys,
            "exported_rows": exported[0],
            "exported_distinct_ids": exported[1],
            "exported_root_scores": json.loads(root_scores[0]) if root_scores else None,
        }
    )
)
