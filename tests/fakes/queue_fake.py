#!/usr/bin/env python3
"""A job queue speaking agentlab's HTTP queue protocol (runner/sources/httpq.h).

Serves the job specs in --jobs (a JSON list of {"id", "body"} where body is the
exact response text), long-polls when empty, records every status/result
report as a JSON line in --out, answers 410 to the status reports of ids in
--cancel once they are RUNNING, and fails the test (exit status, and a
"violation" line) on any request that breaks the protocol: wrong method or
path, missing or wrong bearer token, non-JSON bodies, unknown states.
Listens on 127.0.0.1 only; writes the port to --port-file.
"""
import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STATUS = {"QUEUED", "PROVISIONING", "BOOTING", "RUNNING"}
RESULT = {"SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "ERROR", "REJECTED"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--cancel", default="")
    a = ap.parse_args()
    jobs = json.load(open(a.jobs))
    cancel = set(x for x in a.cancel.split(",") if x)
    lock = threading.Lock()
    out = open(a.out, "a", buffering=1)

    def record(obj):
        with lock:
            out.write(json.dumps(obj) + "\n")

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)

        def authorized(self):
            if self.headers.get("Authorization") != "Bearer " + a.token:
                record({"violation": "bad or missing bearer token", "path": self.path})
                self.reply(401)
                return False
            return True

        def do_GET(self):
            if not self.authorized():
                return
            m = re.fullmatch(r"/jobs/next\?wait=(\d+)", self.path)
            if not m:
                record({"violation": "unexpected GET", "path": self.path})
                return self.reply(404)
            deadline = time.time() + min(int(m.group(1)), 2)
            while True:
                with lock:
                    job = jobs.pop(0) if jobs else None
                if job or time.time() >= deadline:
                    break
                time.sleep(0.1)
            if not job:
                return self.reply(204)
            body = job["body"].encode()
            self.reply(200, body, [("Content-Type", "application/json"), ("X-Job-Id", job["id"])])

        def do_POST(self):
            if not self.authorized():
                return
            m = re.fullmatch(r"/jobs/([A-Za-z0-9._:-]+)/(status|result)", self.path)
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n)
            if not m:
                record({"violation": "unexpected POST", "path": self.path})
                return self.reply(404)
            try:
                doc = json.loads(raw)
            except ValueError:
                record({"violation": "body is not JSON", "path": self.path})
                return self.reply(400)
            kind = m.group(2)
            if doc.get("state") not in (STATUS if kind == "status" else RESULT):
                record({"violation": "unknown state", "path": self.path, "doc": doc})
                return self.reply(400)
            record({"id": m.group(1), "kind": kind, "doc": doc})
            if kind == "status" and m.group(1) in cancel and doc["state"] == "RUNNING":
                return self.reply(410)
            self.reply(200, b"{}", [("Content-Type", "application/json")])

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(a.port_file + ".tmp", a.port_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
