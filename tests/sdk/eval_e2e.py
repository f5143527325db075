"""Experiments and datasets end to end with the unmodified Braintrust SDK
(PyPI `braintrust`).

Run by tests/it/objects.rs against a running `spanlake serve`, with
BRAINTRUST_APP_URL, BRAINTRUST_API_URL and BRAINTRUST_API_KEY pointing at it,
and SPANLAKE_S3_ENDPOINT / E2E_BUCKET for the export. It:

1. inserts a dataset's records through the SDK (`init_dataset`, `insert`),
   updates one and deletes one (each in its own flush, so each is a
   request of its own), then reads them back with a fresh handle's
   `fetch()` (POST /v1/dataset/{id}/fetch);
2. runs an `Eval` over that dataset with a task and two scorers (POST
   /v1/experiment, /logs3 rows with `experiment_id`, GET
   /v1/experiment/{id}/summarize), keeping what the SDK computed itself;
3. reads the experiment back over POST /btql: the `summary` shape (one row
   per case, its scores) in the clause form, the `spans` shape in SQL and
   the `traces` shape as the JSON AST;
4. creates an export of the experiment over REST (`object_type:
   experiment`), runs it, downloads the Parquet files from the S3 server
   and reads them with DuckDB;
5. prints one JSON summary on stdout (the Rust test asserts on it).
"""

import contextlib
import json
import sys

import braintrust
from braintrust import Eval

from client import btql, call, duckdb_over_parquet, export_keys, s3, BUCKET, S3

PROJECT = "eval-e2e"

# 1. A dataset: three records, one updated, one deleted, each its own request.
dataset = braintrust.init_dataset(project=PROJECT, name="arithmetic")
ids = [
    dataset.insert(input={"a": 2, "b": 3}, expected=5, metadata={"kind": "add"}, tags=["easy"]),
    dataset.insert(input={"a": 6, "b": 7}, expected=12, metadata={"kind": "add"}),
    dataset.insert(input={"a": 9, "b": 9}, expected=18, metadata={"kind": "add"}),
]
dataset.flush()
# 6 + 7 is 13: the task misses this case on purpose (`exact` 0, `close` 0.9).
dataset.update(id=ids[1], expected=14, metadata={"reviewed": True})
dataset.flush()
dataset.delete(ids[2])
dataset.flush()
dataset_summary = dataset.summarize()

# A fresh handle: nothing cached, every record fetched from the server.
records = list(braintrust.init_dataset(project=PROJECT, name="arithmetic").fetch())


# 2. An Eval over the dataset, with two scorers.
def exact(input, output, expected):
    return 1.0 if output == expected else 0.0


def close(input, output, expected):
    return max(0.0, 1.0 - abs(output - expected) / 10)


# The SDK prints its summary on stdout: keep stdout for this script's JSON.
with contextlib.redirect_stdout(sys.stderr):
    result = Eval(
        PROJECT,
        data=braintrust.init_dataset(project=PROJECT, name="arithmetic"),
        task=lambda input: input["a"] + input["b"],
        scores=[exact, close],
        experiment_name="adder",
    )
summary = result.summary
experiment_id = summary.experiment_id
sdk_scores = {name: s.score for name, s in summary.comparison.scores.items()}
sdk_cases = sorted(
    ({"input": r.input, "output": r.output, "expected": r.expected, "scores": r.scores} for r in result.results),
    key=lambda c: json.dumps(c["input"], sort_keys=True),
)

# 3. Back over /btql, in the three forms.
_, cases = btql(
    f"select: input, output, expected, scores, origin | from: experiment('{experiment_id}') summary | sort: input.a"
)
_, spans = btql(
    f"SELECT span_attributes.type AS type, span_attributes.name AS name, scores "
    f"FROM experiment('{experiment_id}') ORDER BY name"
)
ast = {
    "select": [{"op": "star"}],
    "from": {
        "op": "function",
        "name": {"op": "ident", "name": ["experiment"]},
        "args": [{"op": "literal", "value": experiment_id}],
        "shape": "traces",
    },
    "filter": {
        "op": "eq",
        "left": {"op": "ident", "name": ["scores", "exact"]},
        "right": {"op": "literal", "value": 0},
    },
}
_, missed = btql(ast)
_, listed = btql(f"select: id, input, expected, metadata, tags | from: dataset('{dataset.id}') | sort: input.a")
status, _, experiments = call("GET", f"/v1/experiment?project_id={summary.project_id}")
assert status == 200, experiments

# 4. Export the experiment's spans to the S3 server; DuckDB reads them.
prefix = "eval-e2e"
status, _, automation = call(
    "POST",
    "/v1/project_automation",
    {
        "project_id": summary.project_id,
        "name": "experiment-to-s3",
        "kind": "export",
        "status": "paused",
        "config": {
            "object_type": "experiment",
            "object_id": experiment_id,
            "data": "spans",
            "export_path": f"s3://{BUCKET}/{prefix}",
            "format": "parquet",
            "endpoint": S3,
        },
    },
)
assert status == 200, automation
status, _, run = call("POST", f"/v1/project_automation/{automation['id']}/run")
assert status == 200, run
# Only the files of this run's manifest (written last: the commit).
manifest = json.loads(s3(f"/{BUCKET}/{run['manifest']}"))
keys = [f["key"] for f in manifest["files"]]
assert set(keys) <= set(export_keys(prefix)), (keys, export_keys(prefix))
exported, exported_scores = duckdb_over_parquet(
    keys,
    [
        ("select count(*), count(distinct id) from {files}", []),
        # Each scorer's span holds its score: their average per scorer.
        (
            "select list(struct_pack(name := name, avg := avg) order by name) from ("
            "  select json_extract_string(span_attributes, '$.name') as name,"
            "  avg(cast(json_extract(scores, '$.' || json_extract_string(span_attributes, '$.name')) as double)) as avg"
            "  from {files} where json_extract_string(span_attributes, '$.type') = 'score' group by 1)",
            [],
        ),
    ],
)

print(
    json.dumps(
        {
            "dataset_id": dataset.id,
            "inserted_ids": ids,
            "records": sorted(records, key=lambda r: r["input"]["a"]),
            "dataset_total_records": dataset_summary.data_summary.total_records,
            "btql_records": listed["data"],
            "experiment_id": experiment_id,
            "experiment_name": summary.experiment_name,
            "experiments": experiments["objects"],
            "sdk_scores": sdk_scores,
            "sdk_metrics": sorted(summary.comparison.metrics),
            "sdk_cases": sdk_cases,
            "btql_cases": cases["data"],
            "btql_spans": spans["data"],
            "btql_missed": missed["data"],
            "run": run,
            "manifest_rows": manifest.get("rows"),
            "exported_rows": exported[0],
            "exported_distinct_ids": exported[1],
            "exported_scorer_averages": {s["name"]: s["avg"] for s in exported_scores[0] or []},
        },
        default=str,
    )
)
