#!/usr/bin/env python3
"""A fake GitLab for the runner side of the API (Python stdlib only).

It serves queued jobs with realistic payloads and checks every request the
runner makes against the contract in ../shared/PROTOCOLS.md (method, path,
headers, body fields and their types): anything off is recorded in
`errors` (and answered 400), so a test can assert the client never drifted.

Simulated server behaviour:
  - long polling of POST /api/v4/jobs/request: a request that echoes the
    current X-GitLab-Last-Update is held until a job is queued or
    `long_poll_s` passes, then answered 204 (like Workhorse);
  - Content-Range continuity of PATCH .../trace (416 with the server's
    Range otherwise) and, per job, one simulated loss of trace data
    (`lose_trace=True`: the second PATCH is answered 416 from an earlier
    offset);
  - cancellation: when a job's trace contains its `cancel_on` text, its
    status becomes "canceling" and every answer says Job-Status: canceling;
  - the final PUT is answered 202 `accept_202` times before 200, and its
    output checksum and bytesize are checked against the trace;
  - artifacts uploads are checked against the job's artifacts[] entries as
    gitlab-runner sends them (query artifact_type, artifact_format and
    expire_in; one multipart part "file" named as gitlab-runner's uploader
    names it: the last component of the entry's `name` expanded against the
    job's variables, "artifacts" without a name, "default" when nothing is
    left, with .zip or .gz; zip archives, gzip one member per file, raw as
    is),
    unpacked and kept (the archive as `artifacts`, reports in `reports`);
  - git over smart HTTP (git http-backend) under /git/, with the job token
    as Basic auth (user gitlab-ci-token) on every request: a request
    without it, or with another token, is answered 401 and counted in
    `git_auth_failures` (with its path in `git_auth_paths`);
  - the Git LFS batch API of those repositories (POST
    /git/P.git/info/lfs/objects/batch, operation download, basic transfer)
    with download actions on /git/P.git/gitlab-lfs/objects/OID, as GitLab
    lays them out; objects come from `lfs_objects` (oid -> bytes), each
    download is recorded in `lfs_downloads` and any request off the LFS
    contract is a protocol error.

Listens on 127.0.0.1 only. Run standalone for a manual demo:
  gitlab_fake.py --runner-token glrt-... [--port N]
"""
import argparse
import base64
import io
import json
import re
import subprocess
import threading
import time
import urllib.parse
import zipfile
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SYSTEM_ID_RE = re.compile(r"^[rs]_[A-Za-z0-9]{12}$")
CONTENT_RANGE_RE = re.compile(r"^(\d+)-(\d+)$")
FAILURE_REASONS = {
    "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
    "runner_system_failure", "missing_dependency_failure", "runner_unsupported",
    "stale_schedule", "job_execution_timeout", "archived_failure", "unmet_prerequisites",
    "scheduler_failure", "data_integrity_failure", "forward_deployment_failure",
    "user_blocked", "project_deleted", "insufficient_bridge_permissions",
    "downstream_bridge_project_not_found", "invalid_bridge_trigger",
    "bridge_pipeline_is_child_pipeline", "downstream_pipeline_creation_failed",
    "secrets_provider_not_found", "reached_max_descendant_pipelines_depth",
    "ip_restriction_failure", "reached_max_pipeline_hierarchy_size", "job_canceled",
}
RUNNER_TYPES = {"instance_type", "group_type", "project_type"}


def predefined_variables(job_id, job_name, project, token, server):
    """The CI_* variables GitLab sends with every job (a realistic subset)."""
    path = "group/" + project
    def var(k, v, public=True, masked=False):
        return {"key": k, "value": v, "public": public, "masked": masked, "file": False,
                "raw": False}
    return [
        var("CI_PIPELINE_ID", "7"),
        var("CI_PIPELINE_URL", f"{server}/{path}/-/pipelines/7"),
        var("CI_JOB_ID", str(job_id)),
        var("CI_JOB_URL", f"{server}/{path}/-/jobs/{job_id}"),
        var("CI_JOB_TOKEN", token, public=False, masked=True),
        var("CI_JOB_NAME", job_name),
        var("CI_JOB_STAGE", "test"),
        var("CI_BUILD_TOKEN", token, public=False, masked=True),
        var("CI_REGISTRY_USER", "gitlab-ci-token"),
        var("CI_REGISTRY_PASSWORD", token, public=False, masked=True),
        var("CI_REPOSITORY_URL", f"{server.replace('://', '://gitlab-ci-token:' + token + '@')}/git/{project}.git"),
        var("CI_PROJECT_ID", "1"),
        var("CI_PROJECT_NAME", project),
        var("CI_PROJECT_PATH", path),
        var("CI_SERVER_URL", server),
        var("CI", "true"),
        var("GITLAB_CI", "true"),
        var("CI_COMMIT_REF_NAME", "main"),
    ]


def expand(s, variables):
    """gitlab-runner's JobVariables.ExpandValue (Go's os.Expand with its
    lookup), written out independently of agentlab's C version."""
    def lookup(name):
        if name == "$":
            return "$"
        if name in ("*", "#", "@", "!", "?") or name.isdigit() and len(name) == 1:
            return ""
        found = [v for v in variables if v["key"] == name]
        return "" if not found or found[-1].get("file") else found[-1]["value"]
    out, i = [], 0
    special = set("*#$@!?-0123456789")
    while i < len(s):
        c = s[i]
        if c != "$" or i + 1 == len(s):
            out.append(c)
            i += 1
            continue
        rest = s[i + 1:]
        if rest[0] == "{":
            if len(rest) > 2 and rest[1] in special and rest[2] == "}":
                out.append(lookup(rest[1]))
                i += 4
                continue
            close = rest.find("}")
            if close < 0:
                i += 2
            elif close == 1:
                i += 3
            else:
                out.append(lookup(rest[1:close]))
                i += close + 2
            continue
        if rest[0] in special:
            out.append(lookup(rest[0]))
            i += 2
            continue
        m = re.match(r"[A-Za-z0-9_]*", rest)
        if not m.group(0):
            out.append("$")
            i += 1
            continue
        out.append(lookup(m.group(0)))
        i += 1 + len(m.group(0))
    return "".join(out)


def artifact_file_name(entry, variables):
    """The multipart file name gitlab-runner's artifacts-uploader sends."""
    fmt = entry.get("artifact_format", "zip")
    ext = {"zip": ".zip", "gzip": ".gz"}.get(fmt, "")
    name = entry.get("name")
    if not name:
        return "artifacts" + ext
    # the job's environment: every value but raw ones expanded once
    env = [dict(v, value=v["value"] if v.get("raw") else expand(v["value"], variables))
           for v in variables]
    base = expand(name, env).rstrip("/")
    base = base.rsplit("/", 1)[-1]
    if base in ("", "."):
        base = "default"
    return base + ext


def make_job(job_id, server, sha, script, *, name=None, token=None, project="demo",
             after_script=None, variables=(), artifacts=None, timeout=3600, depth=20,
             dependencies=(), cache=None, project_id=1, image=None, mask_prefixes=None):
    """A job payload shaped like GitLab's answer to POST /api/v4/jobs/request.
    image: the job's image: (for agentlab, a VM image name); None = none given.
    mask_prefixes: features.token_mask_prefixes; None = not sent."""
    name = name or f"job-{job_id}"
    token = token or f"glcbt-64_fake{job_id:04d}tokenAbCdEfGhIj"
    repo = server.replace("://", "://gitlab-ci-token:" + token + "@") + f"/git/{project}.git"
    steps = [{"name": "script", "script": list(script), "timeout": timeout,
              "when": "on_success", "allow_failure": False}]
    if after_script:
        steps.append({"name": "after_script", "script": list(after_script), "timeout": timeout,
                      "when": "always", "allow_failure": True})
    return {
        "id": job_id,
        "token": token,
        "allow_git_fetch": True,
        "job_info": {"id": job_id, "name": name, "stage": "test", "project_id": project_id,
                     "project_name": project, "time_in_queue_seconds": 1,
                     "project_jobs_running_on_instance_runners_count": "0",
                     "queue_size": 0, "queue_depth": 0},
        "git_info": {"repo_url": repo, "repo_object_format": "sha1", "ref": "main", "sha": sha,
                     "before_sha": "0" * 40, "ref_type": "branch",
                     "refspecs": ["+refs/pipelines/7:refs/pipelines/7",
                                  "+refs/heads/main:refs/remotes/origin/main"],
                     "depth": depth},
        "runner_info": {"timeout": timeout, "runner_session_url": None},
        "variables": predefined_variables(job_id, name, project, token, server) + list(variables),
        "steps": steps,
        "image": ({"name": image, "entrypoint": None, "ports": [], "pull_policy": None}
                  if image is not None else None),
        "services": [],
        "artifacts": artifacts or [],
        "cache": cache or [],
        "credentials": [{"type": "registry", "url": "registry.example.test",
                         "username": "gitlab-ci-token", "password": token}],
        # GitLab sends the dependent job's own token for each dependency
        "dependencies": [dict({"token": token}, **d) for d in dependencies],
        "features": dict({"trace_sections": True, "failure_reasons": sorted(FAILURE_REASONS)},
                         **({"token_mask_prefixes": list(mask_prefixes)}
                            if mask_prefixes is not None else {})),
        "hooks": [],
    }


class Job:
    def __init__(self, payload, lose_trace=False, cancel_on=None, accept_202=1):
        self.payload = payload
        self.id = payload["id"]
        self.token = payload["token"]
        self.lose_trace = lose_trace
        self.cancel_on = cancel_on.encode() if cancel_on else None
        self.accept_202 = accept_202
        self.status = "pending"
        self.trace = b""
        self.patches = 0
        self.sent_416 = 0
        self.updates = []       # bodies of every PUT
        self.final = None       # the accepted final PUT body
        self.artifacts = None   # {name: bytes} of the uploaded archive zip
        self.artifact_query = None
        self.reports = {}       # artifact_type: [bytes of each gzip member] (raw: one)
        self.uploads = []       # (artifact_type, artifact_format, file name, query)
        self.handed_at = None
        self.canceled_at = None
        self.finished_at = None


class FakeGitLab:
    def __init__(self, runner_token, user_token="glpat-fakeUserToken0000", long_poll_s=3.0,
                 git_root=None, trace_interval=1):
        self.runner_token = runner_token
        self.user_token = user_token
        self.long_poll_s = long_poll_s
        self.git_root = git_root
        self.trace_interval = trace_interval
        self.lock = threading.Condition()
        self.queue = []
        self.jobs = {}
        self.errors = []
        self.requests = []          # (method, path) of every request
        self.downloads = []         # (requesting job id, dependency id, status)
        self.version = 1            # the X-GitLab-Last-Update value
        self.issued_versions = set()
        self.long_polls = 0         # requests held because last_update matched
        self.echoed = 0             # requests that echoed a value we issued
        self.runners = []
        self.features = None        # info.features of the last job request
        self.git_auth_failures = 0  # git/LFS requests without a running job's token
        self.git_auth_paths = []
        self.lfs_objects = {}       # Git LFS objects served: oid -> bytes
        self.lfs_downloads = []     # oids downloaded
        self.lfs_batches = 0
        self.httpd = None

    # ---- control ----
    def start(self):
        fake = self

        class Handler(_Handler):
            server_fake = fake
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()

    def add_job(self, payload, **kw):
        with self.lock:
            job = Job(payload, **kw)
            self.jobs[job.id] = job
            self.queue.append(job)
            self.version += 1
            self.lock.notify_all()
            return job

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)

    def ready(self):
        """The first queued job whose dependencies have all finished (as GitLab
        creates a later stage's jobs only then). Call with the lock held."""
        for job in self.queue:
            deps = [self.jobs.get(d["id"]) for d in job.payload.get("dependencies", [])]
            if all(d is not None and d.final is not None for d in deps):
                return job
        return None

    def wait(self, cond, timeout):
        end = time.time() + timeout
        with self.lock:
            while not cond():
                left = end - time.time()
                if left <= 0:
                    return False
                self.lock.wait(min(left, 0.5))
            return True


def _type_ok(v, t):
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    return isinstance(v, t)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake = None

    def log_message(self, fmt, *args):
        pass

    # ---- plumbing ----
    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def reply(self, code, body=b"", headers=None, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        if body:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def bad(self, msg):
        self.server_fake.error(f"{self.command} {self.path}: {msg}")
        self.reply(400, {"message": msg})

    def json_body(self, raw):
        if not self.headers.get("Content-Type", "").startswith("application/json"):
            self.bad("Content-Type must be application/json")
            return None
        try:
            doc = json.loads(raw)
        except ValueError:
            self.bad("body is not JSON")
            return None
        if not isinstance(doc, dict):
            self.bad("body is not a JSON object")
            return None
        return doc

    def route(self):
        fake = self.server_fake
        url = urllib.parse.urlsplit(self.path)
        with fake.lock:
            fake.requests.append((self.command, url.path))
        if url.path.startswith("/git/"):
            return self.git(url)
        routes = [
            ("POST", r"^/api/v4/jobs/request$", self.jobs_request),
            ("PATCH", r"^/api/v4/jobs/(\d+)/trace$", self.trace),
            ("PUT", r"^/api/v4/jobs/(\d+)$", self.update),
            ("POST", r"^/api/v4/jobs/(\d+)/artifacts$", self.artifacts),
            ("GET", r"^/api/v4/jobs/(\d+)/artifacts$", self.download_artifacts),
            ("POST", r"^/api/v4/user/runners$", self.create_runner),
        ]
        path_known = False
        for method, pattern, fn in routes:
            m = re.match(pattern, url.path)
            if m:
                path_known = True
                if self.command == method:
                    return fn(url, *m.groups())
        self.body()
        if path_known:
            return self.bad(f"method {self.command} not allowed here")
        self.bad("unknown endpoint")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = lambda self: self.route()

    def job(self, job_id, token):
        fake = self.server_fake
        job = fake.jobs.get(int(job_id))
        if not job:
            self.reply(404, {"message": "404 Not found"})
            return None
        if token != job.token:
            fake.error(f"{self.command} {self.path}: wrong job token")
            self.reply(403, {"message": "403 Forbidden"})
            return None
        return job

    # ---- endpoints ----
    def jobs_request(self, url):
        fake = self.server_fake
        doc = self.json_body(self.body())
        if doc is None:
            return
        allowed = {"token", "system_id", "info", "last_update"}
        if set(doc) - allowed:
            return self.bad(f"unknown fields {sorted(set(doc) - allowed)}")
        if not isinstance(doc.get("token"), str):
            return self.bad("token missing")
        if doc["token"] != fake.runner_token:
            return self.reply(403, {"message": "403 Forbidden"})
        if not isinstance(doc.get("system_id"), str) or not SYSTEM_ID_RE.match(doc["system_id"]):
            return self.bad("system_id must match [rs]_ + 12 alphanumerics")
        info = doc.get("info")
        if not isinstance(info, dict):
            return self.bad("info must be an object")
        for k in ("name", "version", "executor"):
            if not isinstance(info.get(k), str) or not info[k]:
                return self.bad(f"info.{k} must be a non-empty string")
        feats = info.get("features")
        if not isinstance(feats, dict) or not all(isinstance(v, bool) for v in feats.values()):
            return self.bad("info.features must map names to booleans")
        with fake.lock:
            fake.features = dict(feats)
        for need in ("variables", "artifacts", "masking", "trace_checksum", "trace_size",
                     "cancelable", "return_exit_code", "refspecs", "multi_build_steps"):
            if feats.get(need) is not True:
                return self.bad(f"info.features.{need} should be true for this runner")
        lu = doc.get("last_update")
        if lu is not None and not isinstance(lu, str):
            return self.bad("last_update must be a string")
        with fake.lock:
            if lu is not None:
                if lu not in fake.issued_versions:
                    fake.errors.append(f"last_update {lu!r} was never issued")
                else:
                    fake.echoed += 1
            if not fake.ready() and lu == str(fake.version):
                fake.long_polls += 1
                end = time.time() + fake.long_poll_s
                while not fake.ready() and lu == str(fake.version) and time.time() < end:
                    fake.lock.wait(end - time.time())
                # Workhorse answers "something changed" with 204, the runner asks again
                version = str(fake.version)
                fake.issued_versions.add(version)
                return self.reply(204, headers={"X-GitLab-Last-Update": version})
            version = str(fake.version)
            fake.issued_versions.add(version)
            job = fake.ready()
            if not job:
                return self.reply(204, headers={"X-GitLab-Last-Update": version})
            fake.queue.remove(job)
            job.status = "running"
            job.handed_at = time.time()
        self.reply(201, job.payload, headers={"X-GitLab-Last-Update": version})

    def trace(self, url, job_id):
        fake = self.server_fake
        data = self.body()
        job = self.job(job_id, self.headers.get("JOB-TOKEN"))
        if not job:
            return
        if not self.headers.get("Content-Type", "").startswith("text/plain"):
            return self.bad("Content-Type must be text/plain")
        cr = self.headers.get("Content-Range", "")
        m = CONTENT_RANGE_RE.match(cr)
        if not m:
            return self.bad(f"Content-Range {cr!r} is not START-END")
        start, end = int(m.group(1)), int(m.group(2))
        if end - start + 1 != len(data):
            return self.bad(f"Content-Range {cr} does not match {len(data)} body bytes")
        with fake.lock:
            if job.status not in ("running", "canceling"):
                return self.reply(403, {"message": "403 Forbidden - Job is not running"},
                                  headers={"Job-Status": job.status})
            job.patches += 1
            headers = {"X-GitLab-Trace-Update-Interval": fake.trace_interval}
            if job.lose_trace and start > 0 and start == len(job.trace):
                # pretend the tail of what we had was lost: the runner must resend
                job.trace = job.trace[: len(job.trace) // 2]
                job.lose_trace = False
                job.sent_416 += 1
                return self.reply(416, {"message": "416 Range Not Satisfiable"},
                                  headers=dict(headers, **{"Range": f"0-{len(job.trace)}",
                                                           "Job-Status": job.status}))
            if start != len(job.trace):
                job.sent_416 += 1
                return self.reply(416, {"message": "416 Range Not Satisfiable"},
                                  headers=dict(headers, **{"Range": f"0-{len(job.trace)}",
                                                           "Job-Status": job.status}))
            job.trace += data
            if job.cancel_on and job.cancel_on in job.trace and job.status == "running":
                job.status = "canceling"
                job.canceled_at = time.time()
            fake.lock.notify_all()
            self.reply(202, headers=dict(headers, **{"Range": f"0-{len(job.trace)}",
                                                     "Job-Status": job.status}))

    def update(self, url, job_id):
        fake = self.server_fake
        doc = self.json_body(self.body())
        if doc is None:
            return
        job = self.job(job_id, doc.get("token"))
        if not job:
            return
        allowed = {"token", "state", "failure_reason", "exit_code", "output", "checksum", "info"}
        if set(doc) - allowed:
            return self.bad(f"unknown fields {sorted(set(doc) - allowed)}")
        state = doc.get("state")
        if state not in ("running", "success", "failed"):
            return self.bad(f"state {state!r} is not running, success or failed")
        if "exit_code" in doc and not _type_ok(doc["exit_code"], int):
            return self.bad("exit_code must be an integer")
        with fake.lock:
            job.updates.append(doc)
            if job.status not in ("running", "canceling"):
                return self.reply(403, {"message": "403 Forbidden - Job is not running"},
                                  headers={"Job-Status": job.status})
            if state == "running":
                return self.reply(200, headers={"Job-Status": job.status})
            if state == "failed":
                fr = doc.get("failure_reason")
                if fr not in FAILURE_REASONS:
                    return self.bad(f"failure_reason {fr!r} is not a GitLab failure reason")
            elif "failure_reason" in doc:
                return self.bad("failure_reason on a successful job")
            out = doc.get("output")
            if not isinstance(out, dict) or set(out) != {"checksum", "bytesize"}:
                return self.bad("output must be {checksum, bytesize}")
            if not isinstance(out["checksum"], str) or not re.match(r"^crc32:[0-9a-f]{8}$",
                                                                     out["checksum"]):
                return self.bad("output.checksum must be crc32:%08x")
            if not _type_ok(out["bytesize"], int):
                return self.bad("output.bytesize must be an integer")
            want = "crc32:%08x" % (zlib.crc32(job.trace) & 0xffffffff)
            if out["checksum"] != want or out["bytesize"] != len(job.trace):
                fake.errors.append(
                    f"job {job.id}: output {out} does not match the trace the server has "
                    f"({want}, {len(job.trace)} bytes)")
            if job.accept_202 > 0:
                job.accept_202 -= 1
                return self.reply(202, {"message": "202 Accepted"},
                                  headers={"Job-Status": job.status,
                                           "X-GitLab-Trace-Update-Interval": 1})
            job.final = doc
            job.status = "canceled" if job.status == "canceling" else state
            job.finished_at = time.time()
            if any(d["id"] == job.id for j in fake.queue
                   for d in j.payload.get("dependencies", [])):
                fake.version += 1  # a later stage's job is ready now
            fake.lock.notify_all()
            self.reply(200, headers={"Job-Status": job.status})

    def artifacts(self, url, job_id):
        fake = self.server_fake
        data = self.body()
        job = self.job(job_id, self.headers.get("JOB-TOKEN"))
        if not job:
            return
        # gitlab-runner (network/gitlab.go UploadRawArtifacts): the options in
        # the query, the file as the one multipart part "file"
        q = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        if set(q) - {"artifact_format", "artifact_type", "expire_in"}:
            return self.bad(f"query {url.query!r}: unknown parameters")
        if any(len(v) != 1 for v in q.values()):
            return self.bad(f"query {url.query!r}: a parameter given twice")
        atype = q.get("artifact_type", [None])[0]
        afmt = q.get("artifact_format", [None])[0]
        entry = next((a for a in job.payload.get("artifacts", [])
                      if a.get("artifact_type", "archive") == atype and
                      a.get("artifact_format", "zip") == afmt), None)
        if entry is None:
            return self.bad(f"query {url.query!r}: no artifacts entry of the job has this "
                            f"artifact_type and artifact_format")
        if atype == "archive" and afmt != "zip":
            return self.bad("the archive must be a zip")
        if q.get("expire_in", [None])[0] != entry.get("expire_in"):
            return self.bad(f"expire_in {q.get('expire_in')} is not the entry's "
                            f"{entry.get('expire_in')!r}")
        ctype = self.headers.get("Content-Type", "")
        m = re.match(r"^multipart/form-data;\s*boundary=(.+)$", ctype)
        if not m:
            return self.bad("Content-Type must be multipart/form-data")
        boundary = m.group(1).strip('"').encode()
        parts = []
        for part in data.split(b"--" + boundary)[1:]:
            if part.startswith(b"--"):
                break
            head, _, content = part.partition(b"\r\n\r\n")
            parts.append((head.decode(errors="replace"),
                          content[:-2] if content.endswith(b"\r\n") else content))
        if len(parts) != 1:
            return self.bad(f"{len(parts)} multipart parts, want the one \"file\"")
        head, file_data = parts[0]
        disp = re.search(r'Content-Disposition:\s*form-data;\s*name="file";\s*'
                         r'filename="([^"]*)"', head, re.I)
        if not disp:
            return self.bad(f"the part is not form-data name=\"file\" with a filename: {head!r}")
        want = artifact_file_name(entry, job.payload.get("variables", []))
        if disp.group(1) != want:
            return self.bad(f"file name {disp.group(1)!r}, want {want!r}")
        if afmt == "zip":
            try:
                with zipfile.ZipFile(io.BytesIO(file_data)) as z:
                    if z.testzip() is not None:
                        return self.bad("corrupt zip")
                    files = {n: z.read(n) for n in z.namelist()}
            except zipfile.BadZipFile:
                return self.bad("the file is not a zip archive")
            members = None
        elif afmt == "gzip":
            # one gzip member per file, one after the other
            members, rest = [], file_data
            while rest:
                if rest[:3] != b"\x1f\x8b\x08":
                    return self.bad("gzip: a member does not start with a gzip header")
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
                try:
                    members.append(d.decompress(rest) + d.flush())
                except zlib.error as e:
                    return self.bad(f"gzip: {e}")
                if not d.eof:
                    return self.bad("gzip: a member is cut short")
                rest = d.unused_data
            if not members:
                return self.bad("gzip: empty upload")
        elif afmt == "raw":
            members = [file_data]
        else:
            return self.bad(f"artifact_format {afmt!r} is not zip, gzip or raw")
        with fake.lock:
            job.uploads.append((atype, afmt, disp.group(1), q))
            if atype == "archive":
                job.artifacts = files
                job.artifact_query = q
            elif members is not None:
                job.reports[atype] = members
            else:
                job.reports[atype] = [files]
        self.reply(201, {"message": "201 Created"})

    def download_artifacts(self, url, job_id):
        """GET /api/v4/jobs/:id/artifacts with JOB-TOKEN: the token of a running
        job that lists :id among its dependencies."""
        fake = self.server_fake
        if self.body():
            return self.bad("GET with a body")
        token = self.headers.get("JOB-TOKEN")
        dep_id = int(job_id)
        with fake.lock:
            asker = next((j for j in fake.jobs.values() if j.token == token and
                          j.status == "running" and
                          any(d["id"] == dep_id and d.get("token") == token
                              for d in j.payload.get("dependencies", []))), None)
            dep = fake.jobs.get(dep_id)
            files = dep.artifacts if dep else None
        if asker is None:
            fake.error(f"GET {self.path}: JOB-TOKEN is not that of a running job needing {dep_id}")
            return self.reply(403, {"message": "403 Forbidden"})
        with fake.lock:
            fake.downloads.append((asker.id, dep_id, 200 if files is not None else 404))
        if files is None:
            return self.reply(404, {"message": "404 Not Found"})
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in sorted(files.items()):
                z.writestr(name, data)
        self.reply(200, buf.getvalue(), ctype="application/zip")

    def create_runner(self, url):
        fake = self.server_fake
        raw = self.body()
        if self.headers.get("PRIVATE-TOKEN") != fake.user_token:
            return self.reply(401, {"message": "401 Unauthorized"})
        doc = self.json_body(raw)
        if doc is None:
            return
        allowed = {"runner_type", "group_id", "project_id", "description", "paused", "locked",
                   "run_untagged", "tag_list", "access_level", "maximum_timeout",
                   "maintenance_note"}
        if set(doc) - allowed:
            return self.bad(f"unknown fields {sorted(set(doc) - allowed)}")
        rt = doc.get("runner_type")
        if rt not in RUNNER_TYPES:
            return self.bad(f"runner_type {rt!r} is not one of {sorted(RUNNER_TYPES)}")
        if rt == "group_type" and not _type_ok(doc.get("group_id"), int):
            return self.bad("group_type needs group_id")
        if rt == "project_type" and not _type_ok(doc.get("project_id"), int):
            return self.bad("project_type needs project_id")
        tags = doc.get("tag_list", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            return self.bad("tag_list must be an array of strings")
        for k in ("run_untagged", "locked", "paused"):
            if k in doc and not isinstance(doc[k], bool):
                return self.bad(f"{k} must be a boolean")
        with fake.lock:
            rid = len(fake.runners) + 1
            token = f"glrt-fake{rid:04d}RunnerToken-xyz"
            fake.runners.append({"id": rid, "token": token, "request": doc})
        self.reply(201, {"id": rid, "token": token, "token_expires_at": None})

    # ---- git smart HTTP ----
    def git(self, url):
        fake = self.server_fake
        data = self.body()
        lfs_batch = re.match(r"^/git/([\w.-]+\.git)/info/lfs/objects/batch$", url.path)
        lfs_object = re.match(r"^/git/([\w.-]+\.git)/gitlab-lfs/objects/([0-9a-f]{64})$",
                              url.path)
        auth = self.headers.get("Authorization", "")
        ok = False
        if auth.startswith("Basic "):
            try:
                user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                with fake.lock:
                    ok = user == "gitlab-ci-token" and any(
                        j.token == pw and j.status in ("running", "canceling")
                        for j in fake.jobs.values())
            except ValueError:
                ok = False
        if not ok:
            with fake.lock:
                fake.git_auth_failures += 1
                fake.git_auth_paths.append(url.path)
            return self.reply(401, "HTTP Basic: Access denied\n",
                              headers={"WWW-Authenticate": 'Basic realm="GitLab"'},
                              ctype="text/plain")
        if lfs_batch:
            return self.lfs_batch(lfs_batch.group(1), data)
        if lfs_object:
            return self.lfs_object(lfs_object.group(2))
        if "/info/lfs/" in url.path or "/gitlab-lfs/" in url.path:
            return self.bad("not a Git LFS endpoint")
        if not fake.git_root:
            return self.reply(404, "no repositories\n", ctype="text/plain")
        env = {
            "GIT_PROJECT_ROOT": fake.git_root,
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": url.path[len("/git"):],
            "REQUEST_METHOD": self.command,
            "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(data)),
            "REMOTE_USER": "gitlab-ci-token",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
            "PATH": "/usr/bin:/bin",
        }
        if self.headers.get("Content-Encoding") == "gzip":
            import gzip
            data = gzip.decompress(data)
            env["CONTENT_LENGTH"] = str(len(data))
        p = subprocess.run(["git", "http-backend"], input=data, env=env, capture_output=True)
        head, _, body = p.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, body = p.stdout.partition(b"\n\n")
        code = 200
        headers = {}
        ctype = "application/octet-stream"
        for line in head.decode(errors="replace").splitlines():
            k, _, v = line.partition(":")
            v = v.strip()
            if k.lower() == "status":
                code = int(v.split()[0])
            elif k.lower() == "content-type":
                ctype = v
            elif k:
                headers[k] = v
        self.reply(code, body, headers=headers, ctype=ctype)

    # ---- Git LFS (batch API, basic transfer, download only) ----
    LFS_TYPE = "application/vnd.git-lfs+json"

    def lfs_batch(self, repo, data):
        fake = self.server_fake
        if self.command != "POST":
            return self.bad("the LFS batch API takes POST")
        if not self.headers.get("Accept", "").startswith(self.LFS_TYPE):
            return self.bad(f"Accept must be {self.LFS_TYPE}")
        if not self.headers.get("Content-Type", "").startswith(self.LFS_TYPE):
            return self.bad(f"Content-Type must be {self.LFS_TYPE}")
        try:
            doc = json.loads(data)
        except ValueError:
            return self.bad("LFS batch body is not JSON")
        if not isinstance(doc, dict) or doc.get("operation") != "download":
            return self.bad("LFS batch: operation must be download")
        if "basic" not in (doc.get("transfers") or ["basic"]):
            return self.bad("LFS batch: the client does not offer the basic transfer")
        objs = doc.get("objects")
        if not isinstance(objs, list) or not objs:
            return self.bad("LFS batch: objects must be a non-empty list")
        out = []
        for o in objs:
            if (not isinstance(o, dict) or not isinstance(o.get("oid"), str) or
                    not re.match(r"^[0-9a-f]{64}$", o["oid"]) or not _type_ok(o.get("size"), int)):
                return self.bad(f"LFS batch: malformed object {o!r}")
            with fake.lock:
                blob = fake.lfs_objects.get(o["oid"])
            if blob is None or len(blob) != o["size"]:
                out.append({"oid": o["oid"], "size": o["size"],
                            "error": {"code": 404, "message": "Object does not exist"}})
                continue
            href = f"http://{self.headers.get('Host')}/git/{repo}/gitlab-lfs/objects/{o['oid']}"
            out.append({"oid": o["oid"], "size": o["size"], "authenticated": True,
                        "actions": {"download": {"href": href, "expires_in": 3600}}})
        with fake.lock:
            fake.lfs_batches += 1
        self.reply(200, {"transfer": "basic", "objects": out}, ctype=self.LFS_TYPE)

    def lfs_object(self, oid):
        fake = self.server_fake
        if self.command != "GET":
            return self.bad("LFS objects are downloaded with GET")
        with fake.lock:
            blob = fake.lfs_objects.get(oid)
            if blob is not None:
                fake.lfs_downloads.append(oid)
        if blob is None:
            return self.reply(404, {"message": "404 Not Found"})
        self.reply(200, blob, ctype="application/octet-stream")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runner-token", required=True)
    ap.add_argument("--port", type=int, default=0)
    args = ap.parse_args()
    fake = FakeGitLab(args.runner_token)
    fake.httpd = None

    class Handler(_Handler):
        server_fake = fake
    fake.httpd = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(fake.url, flush=True)
    fake.httpd.serve_forever()


if __name__ == "__main__":
    main()
