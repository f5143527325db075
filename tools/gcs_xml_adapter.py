#!/usr/bin/env python3
"""GCS's XML API in front of fake-gcs-server, for tests.

object_store's GCS client (what spanlake's `gs://` exports use) speaks GCS's
XML API: `PUT /bucket/key` with `x-goog-if-generation-match`, `GET
/bucket?list-type=2`, `DELETE /bucket/key`, XML multipart uploads. The GCS
emulators on PyPI do not: fake-gcs-server (its PyPI wrapper bundles v1.54)
serves the JSON API and only XML reads; gcp-storage-emulator has XML PUT and
GET, but no DELETE, no multipart and no preconditions at all.

This adapter maps each XML request onto fake-gcs-server's JSON API one to one,
and keeps no object state of its own (only the parts of open XML multipart
uploads, until they are completed as one JSON upload). What is stored, whether
a bucket exists, and whether a create-only write (`ifGenerationMatch=0`) is
refused because the object exists are all decided by fake-gcs-server, whose
multipart upload honours `ifGenerationMatch` atomically.

    gcs_xml_adapter.py LISTEN_PORT UPSTREAM_PORT
"""

import hashlib
import http.client
import http.server
import json
import sys
import threading
import urllib.parse
import uuid
import xml.etree.ElementTree as tree
from xml.sax.saxutils import escape

UPSTREAM = ("127.0.0.1", 0)
UPLOADS = {}
UPLOADS_LOCK = threading.Lock()


def upstream(method, target, body=None, headers=None):
    connection = http.client.HTTPConnection(*UPSTREAM, timeout=60)
    headers = dict(headers or {})
    # fake-gcs-server routes XML reads by its public host.
    headers["Host"] = f"{UPSTREAM[0]}:{UPSTREAM[1]}"
    connection.request(method, target, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, response.getheaders(), data


def quote(name):
    return urllib.parse.quote(name, safe="")


def bucket_exists(bucket):
    status, _, _ = upstream("GET", f"/storage/v1/b/{quote(bucket)}")
    return status == 200


def json_upload(bucket, name, data, generation_match=None):
    """One JSON multipart upload; returns (status, object resource or None)."""
    boundary = uuid.uuid4().hex
    meta = json.dumps({"name": name}).encode()
    body = (
        f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode()
        + meta
        + f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    query = "uploadType=multipart"
    if generation_match is not None:
        query += f"&ifGenerationMatch={urllib.parse.quote(generation_match)}"
    status, _, reply = upstream(
        "POST",
        f"/upload/storage/v1/b/{quote(bucket)}/o?{query}",
        body=body,
        headers={"Content-Type": f"multipart/related; boundary={boundary}"},
    )
    resource = json.loads(reply) if status == 200 else None
    return status, resource


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    # ------------------------------------------------------------ helpers

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def reply(self, status, body=b"", headers=None, length=None):
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, status, code, message):
        body = (
            "<?xml version='1.0' encoding='UTF-8'?>"
            f"<Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>"
        ).encode()
        self.reply(status, body, {"Content-Type": "application/xml"})

    def not_found(self, bucket):
        if bucket_exists(bucket):
            self.error(404, "NoSuchKey", "The specified key does not exist.")
        else:
            self.error(404, "NoSuchBucket", "The specified bucket does not exist.")

    def split(self):
        parsed = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        parts = parsed.path.lstrip("/").split("/", 1)
        bucket = urllib.parse.unquote(parts[0])
        name = urllib.parse.unquote(parts[1]) if len(parts) > 1 else ""
        return parsed, query, bucket, name

    def passthrough(self):
        data = self.body() if self.command in ("POST", "PUT", "PATCH") else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        status, reply_headers, reply = upstream(self.command, self.path, data, headers)
        keep = {
            k: v
            for k, v in reply_headers
            if k.lower() not in ("content-length", "connection", "transfer-encoding", "date")
        }
        self.reply(status, reply, keep)

    def is_xml(self, parsed):
        first = parsed.path.lstrip("/").split("/", 1)[0]
        return first not in ("storage", "upload", "download", "batch", "_internal", "")

    # ------------------------------------------------------------ methods

    def do_GET(self):
        parsed, query, bucket, name = self.split()
        if not self.is_xml(parsed):
            return self.passthrough()
        if not name and "list-type" in query:
            return self.list_objects(bucket, query)
        status, headers, data = upstream(self.command, self.path, None, {
            k: v for k, v in self.headers.items() if k.lower() in ("range", "if-match", "if-none-match",
                                                                   "if-modified-since", "if-unmodified-since")})
        if status == 404:
            return self.not_found(bucket)
        keep = {k: v for k, v in headers if k.lower() not in ("content-length", "connection", "date")}
        # A HEAD's answer has no body but the object's length.
        length = dict((k.lower(), v) for k, v in headers).get("content-length") if self.command == "HEAD" else None
        self.reply(status, data, keep, length)

    do_HEAD = do_GET

    def list_objects(self, bucket, query):
        params = {}
        for xml_key, json_key in (("prefix", "prefix"), ("delimiter", "delimiter"),
                                  ("continuation-token", "pageToken"), ("max-keys", "maxResults")):
            if query.get(xml_key):
                params[json_key] = query[xml_key][0]
        after = query.get("start-after", [None])[0]
        if after:
            params["startOffset"] = after
        status, _, data = upstream("GET", f"/storage/v1/b/{quote(bucket)}/o?{urllib.parse.urlencode(params)}")
        if status == 404:
            return self.error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if status != 200:
            return self.error(status, "InternalError", "listing failed")
        listing = json.loads(data)
        out = ["<?xml version='1.0' encoding='UTF-8'?><ListBucketResult>"]
        for item in listing.get("items", []):
            if after and item["name"] <= after:
                continue
            out.append(
                f"<Contents><Key>{escape(item['name'])}</Key><Size>{item['size']}</Size>"
                f"<LastModified>{item['updated']}</LastModified>"
                f"<ETag>\"{escape(item.get('etag', ''))}\"</ETag></Contents>"
            )
        for prefix in listing.get("prefixes", []):
            out.append(f"<CommonPrefixes><Prefix>{escape(prefix)}</Prefix></CommonPrefixes>")
        if listing.get("nextPageToken"):
            out.append(f"<NextContinuationToken>{escape(listing['nextPageToken'])}</NextContinuationToken>")
        out.append("</ListBucketResult>")
        self.reply(200, "".join(out).encode(), {"Content-Type": "application/xml"})

    def do_PUT(self):
        parsed, query, bucket, name = self.split()
        if not self.is_xml(parsed):
            return self.passthrough()
        data = self.body()
        if "uploadId" in query:
            upload_id = query["uploadId"][0]
            number = int(query.get("partNumber", ["0"])[0])
            with UPLOADS_LOCK:
                upload = UPLOADS.get(upload_id)
                if upload is None or upload["key"] != (bucket, name):
                    return self.error(404, "NoSuchUpload", "The specified upload does not exist.")
                upload["parts"][number] = data
            return self.reply(200, b"", {"ETag": f"\"{hashlib.md5(data).hexdigest()}\""})
        if self.headers.get("x-goog-copy-source"):
            return self.error(501, "NotImplemented", "copy is not supported by this adapter")
        status, resource = json_upload(bucket, name, data, self.headers.get("x-goog-if-generation-match"))
        if status == 412:
            return self.error(412, "PreconditionFailed", "At least one of the pre-conditions you specified did not hold.")
        if status == 404:
            return self.error(404, "NoSuchBucket", "The specified bucket does not exist.")
        if status != 200:
            return self.error(status, "InternalError", "upload failed")
        self.reply(200, b"", {
            "ETag": f"\"{hashlib.md5(data).hexdigest()}\"",
            "x-goog-generation": resource["generation"],
        })

    def do_POST(self):
        parsed, query, bucket, name = self.split()
        if not self.is_xml(parsed):
            return self.passthrough()
        data = self.body()
        if "uploads" in query:
            if not bucket_exists(bucket):
                return self.error(404, "NoSuchBucket", "The specified bucket does not exist.")
            upload_id = uuid.uuid4().hex
            with UPLOADS_LOCK:
                UPLOADS[upload_id] = {"key": (bucket, name), "parts": {}}
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><InitiateMultipartUploadResult>"
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key>"
                f"<UploadId>{upload_id}</UploadId></InitiateMultipartUploadResult>"
            ).encode()
            return self.reply(200, body, {"Content-Type": "application/xml"})
        if "uploadId" in query:
            upload_id = query["uploadId"][0]
            with UPLOADS_LOCK:
                upload = UPLOADS.get(upload_id)
            if upload is None or upload["key"] != (bucket, name):
                return self.error(404, "NoSuchUpload", "The specified upload does not exist.")
            listed = []
            for part in tree.fromstring(data).iter():
                if part.tag.endswith("Part"):
                    number = etag = None
                    for child in part:
                        if child.tag.endswith("PartNumber"):
                            number = int(child.text)
                        elif child.tag.endswith("ETag"):
                            etag = child.text.strip('"')
                    listed.append((number, etag))
            content = b""
            for number, etag in listed:
                chunk = upload["parts"].get(number)
                if chunk is None or hashlib.md5(chunk).hexdigest() != etag:
                    return self.error(400, "InvalidPart", f"part {number} is missing or differs")
                content += chunk
            status, resource = json_upload(bucket, name, content)
            if status != 200:
                return self.error(status, "InternalError", "completing the upload failed")
            with UPLOADS_LOCK:
                UPLOADS.pop(upload_id, None)
            etag = hashlib.md5(content).hexdigest()
            body = (
                "<?xml version='1.0' encoding='UTF-8'?><CompleteMultipartUploadResult>"
                f"<Bucket>{escape(bucket)}</Bucket><Key>{escape(name)}</Key><ETag>\"{etag}\"</ETag>"
                "</CompleteMultipartUploadResult>"
            ).encode()
            return self.reply(200, body, {"Content-Type": "application/xml",
                                          "x-goog-generation": resource["generation"]})
        self.error(400, "InvalidArgument", "unsupported POST")

    def do_DELETE(self):
        parsed, query, bucket, name = self.split()
        if not self.is_xml(parsed):
            return self.passthrough()
        if "uploadId" in query:
            with UPLOADS_LOCK:
                UPLOADS.pop(query["uploadId"][0], None)
            return self.reply(204)
        status, _, _ = upstream("DELETE", f"/storage/v1/b/{quote(bucket)}/o/{quote(name)}")
        if status == 404:
            return self.not_found(bucket)
        if status not in (200, 204):
            return self.error(status, "InternalError", "delete failed")
        self.reply(204)


def main():
    global UPSTREAM
    listen, upstream_port = int(sys.argv[1]), int(sys.argv[2])
    UPSTREAM = ("127.0.0.1", upstream_port)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", listen), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
