"""What the SDK end-to-end scripts share: calls to spanlake's HTTP API
(BRAINTRUST_API_URL, BRAINTRUST_API_KEY), reads from the S3 server
(SPANLAKE_S3_ENDPOINT), and DuckDB over the Parquet files of an export."""

import json
import os
import tempfile
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET

import duckdb

API = os.environ["BRAINTRUST_API_URL"].rstrip("/")
KEY = os.environ["BRAINTRUST_API_KEY"]
S3 = os.environ["SPANLAKE_S3_ENDPOINT"].rstrip("/")
BUCKET = os.environ["E2E_BUCKET"]


def call(method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        API + path,
        data=data,
        method=method,
        headers={"Authorization": "Bearer " + KEY, "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read() or b"null")


def btql(query, **extra):
    status, headers, body = call("POST", "/btql", {"query": query, **extra})
    assert status == 200, (status, body)
    return headers, body


def s3(path):
    request = urllib.request.Request(
        S3 + path,
        headers={
            "Authorization": "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=00",
            "x-amz-date": "20260101T000000Z",
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
        },
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.read()


def export_keys(prefix):
    """Every key under `prefix/` of the bucket."""
    listing = ET.fromstring(s3(f"/{BUCKET}?list-type=2&prefix={prefix}/"))
    ns = {"s3": listing.tag.split("}")[0].strip("{")}
    return [k.text for k in listing.findall(".//s3:Contents/s3:Key", ns)]


def duckdb_over_parquet(keys, queries):
    """Download the Parquet files among `keys` and run each (sql, params) of
    `queries` with DuckDB over them (`{files}` in the SQL stands for them);
    the first row of each."""
    with tempfile.TemporaryDirectory() as tmp:
        for i, key in enumerate(k for k in keys if k.endswith(".parquet")):
            with open(os.path.join(tmp, f"{i}.parquet"), "wb") as f:
                f.write(s3(f"/{BUCKET}/{key}"))
        con = duckdb.connect()
        files = f"read_parquet('{tmp}/*.parquet')"
        return [con.execute(sql.format(files=files), params).fetchone() for sql, params in queries]
