#!/usr/bin/env python3
"""A strict fake of GitHub's runner scale set protocol (shared/github/SCALESET.md
section 7), for agentlabd's `mode = scaleset` tests. 127.0.0.1 only, stdlib only.

The REST side (App JWT, installation token, registration-token) is FakeGitHub's
(github_fake.py: OpenAPI contract, RS256 JWT check). On top:

  POST /actions/runner-registration        RemoteAuth <registration token>
  {svc} = /tenant/1/_apis/...               Bearer <admin JWT>, api-version
  {mq}  = /mq/<session id>/message          Bearer <mq token>, X-ScaleSetMaxCapacity

Every request is checked; each problem is appended to .errors (a protocol
violation). Knobs: conflict_next(n) (409 at session creation), expire_mq_token()
(401 on the queue), lose_session() (404), queue_jobs(n) (a burst of JobAvailable
in one message), start_job()/complete_job() (GitHub's side of a runner taking
and ending a job), admin_ttl, hold_s, session_orphan_s.
"""
import base64
import hashlib
import json
import re
import secrets
import threading
import time
import urllib.parse

from github_fake import FakeGitHub

API_VERSION = "6.0-preview"
PREFIX = "GitHub.Actions.Runtime.WebApi."


def exc(name, message):
    return {"typeName": f"{PREFIX}{name}, GitHub.Actions.Runtime.WebApi", "message": message}


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


class ScalesetFake(FakeGitHub):
    def __init__(self, spec_path, repo, app=None, token=None, jit_mode="exit"):
        super().__init__(spec_path, repo, token=token, app=app, jit_mode=jit_mode)
        self.admin_ttl = 3600
        self.mq_ttl = 3600
        self.hold_s = 1.0
        self.reoffer_s = 3.0
        self.session_orphan_s = 15.0
        self.reg_tokens = {}       # token -> spent
        self.admin_tokens = {}     # token -> exp
        self.groups = {1: "default", 2: "gpu"}
        self.scalesets = {}        # id -> {"name", "runnerGroupId", "labels"}
        self.session = None        # {"id", "owner", "mq", "mq_exp", "polled"}
        self.sessions_created = 0
        self.sessions_deleted = 0
        self.conflicts = 0
        self.conflicts_served = 0
        self.ss_runners = {}       # id -> {"name", "jit", "job"}
        self.jobs = {}             # request id -> {"state", "runner", "offered", "display"}
        self.next_rid = 7848900
        self.next_msg = 100000000
        self.events = []           # job messages not yet put in a message
        self.undeleted = []        # delivered, not deleted: [(id, doc, session id)]
        self.last_delivered = None
        self.capacity_seen = []
        self.max_acquired = 0      # most jobs acquired and not completed at once
        self.acquired_total = 0
        self.acquired_ms = {}      # request id -> wall-clock ms of its acquirejobs
        self.acquirable_calls = 0  # GET acquirablejobs
        self.session_answer_delay_s = 0.0
        self.mq_tokens = []        # every message-queue token issued (secrets audit)

    # -- knobs
    def conflict_next(self, n):
        with self.lock:
            self.conflicts += n

    def expire_mq_token(self):
        with self.lock:
            if self.session:
                self.session["mq_exp"] = 0

    def lose_session(self):
        with self.lock:
            self.session = None

    def queue_jobs(self, n, prefix="build"):
        """n jobs become available at once: one message of n JobAvailable."""
        with self.lock:
            rids = []
            for i in range(n):
                rid = self.next_rid
                self.next_rid += 1
                self.jobs[rid] = {"state": "available", "runner": None, "offered": time.time(),
                                  "display": f"{prefix}-{i}"}
                self.events.append(self.job_msg("JobAvailable", rid,
                                                acquireJobUrl=f"{self.url}/acquire/{rid}"))
                rids.append(rid)
            return rids

    def start_job(self, runner_name):
        """The runner took the oldest acquired job: JobAssigned, JobStarted."""
        with self.lock:
            r = next((x for x in self.ss_runners.values() if x["name"] == runner_name), None)
            if not r:
                self.error(f"start_job: no runner {runner_name}")
                return None
            for rid in sorted(self.jobs):
                j = self.jobs[rid]
                if j["state"] == "acquired":
                    j["state"] = "running"
                    j["runner"] = runner_name
                    r["job"] = rid
                    self.events.append(self.job_msg("JobAssigned", rid))
                    self.events.append(self.job_msg("JobStarted", rid, runnerId=r["id"],
                                                    runnerName=runner_name))
                    return rid
            return None

    def complete_job(self, runner_name, result="succeeded"):
        """The ephemeral runner finished: JobCompleted; the runner is removed."""
        with self.lock:
            for rid, r in list(self.ss_runners.items()):
                if r["name"] == runner_name:
                    jr = r["job"]
                    if jr:
                        self.jobs[jr]["state"] = "completed"
                        self.events.append(self.job_msg("JobCompleted", jr, result=result,
                                                        runnerId=rid, runnerName=runner_name))
                    del self.ss_runners[rid]
                    return jr
        return None

    def abandon_job(self, runner_name):
        """The runner went offline mid-job (its VM died): GitHub fails the job
        (JobCompleted) but the runner stays registered until it is removed."""
        with self.lock:
            for rid, r in self.ss_runners.items():
                if r["name"] == runner_name and r["job"]:
                    jr = r["job"]
                    self.jobs[jr]["state"] = "completed"
                    self.events.append(self.job_msg("JobCompleted", jr, result="failed",
                                                    runnerId=rid, runnerName=runner_name))
                    r["job"] = None
                    return jr
        return None

    def job_msg(self, kind, rid, **extra):
        j = self.jobs[rid]
        m = {"messageType": kind, "runnerRequestId": rid, "repositoryName": self.repo.split("/")[1],
             "ownerName": self.repo.split("/")[0], "jobId": str(rid + 1),
             "jobWorkflowRef": f"{self.repo}/.github/workflows/ci.yml@refs/heads/main",
             "jobDisplayName": j["display"], "workflowRunId": 9876543210, "eventName": "push",
             "requestLabels": ["agentlab-vm"], "queueTime": "2026-05-01T12:00:00Z",
             "scaleSetAssignTime": "2026-05-01T12:00:01Z",
             "runnerAssignTime": "0001-01-01T00:00:00Z", "finishTime": "0001-01-01T00:00:00Z"}
        m.update(extra)
        return m

    def stats(self):
        js = list(self.jobs.values())
        busy = sum(1 for r in self.ss_runners.values() if r["job"])
        return {"totalAvailableJobs": sum(1 for j in js if j["state"] == "available"),
                "totalAcquiredJobs": sum(1 for j in js if j["state"] == "acquired"),
                "totalAssignedJobs": sum(1 for j in js if j["state"] in ("acquired", "running")),
                "totalRunningJobs": sum(1 for j in js if j["state"] == "running"),
                "totalRegisteredRunners": len(self.ss_runners), "totalBusyRunners": busy,
                "totalIdleRunners": len(self.ss_runners) - busy}

    def admin_jwt(self):
        exp = int(time.time()) + self.admin_ttl
        tok = ".".join([b64url(json.dumps({"alg": "RS256", "typ": "JWT"}).encode()),
                        b64url(json.dumps({"exp": exp, "iss": "fake"}).encode()),
                        b64url(secrets.token_bytes(32))])
        self.admin_tokens[tok] = exp
        return tok

    # -- dispatch
    def handle(self, h):
        try:
            super().handle(h)
        except (BrokenPipeError, ConnectionResetError):
            pass  # a long poll the client cancelled (agentlabd stopping)

    def dispatch(self, method, path, query, body, headers):
        where = f"{method} {path}"
        if "//" in path:
            self.error(f"{where}: '//' in the path")
        if not headers.get("user-agent"):
            self.error(f"{where}: no User-Agent")
        if path == "/actions/runner-registration":
            return self.runner_registration(method, body, headers)
        if path.startswith("/tenant/1/"):
            self.check_ua(headers, where)
            return self.service(method, path[len("/tenant/1"):], query, body, headers)
        if path.startswith("/mq/"):
            self.check_ua(headers, where)
            return self.message_queue(method, path, query, body, headers)
        return super().dispatch(method, path, query, body, headers)

    def check_ua(self, headers, where):
        try:
            ua = json.loads(headers.get("user-agent") or "")
            if ua.get("kind") != "scaleset":
                self.error(f"{where}: User-Agent kind is not scaleset")
        except ValueError:
            self.error(f"{where}: User-Agent is not JSON")

    def route(self, method, tmpl, params, query, body, headers):
        if tmpl.endswith("/actions/runners/registration-token") and method == "POST":
            if body:
                self.error(f"POST {tmpl}: a body")
            tok = "AREG" + secrets.token_hex(14).upper()
            with self.lock:
                self.reg_tokens[tok] = False
            return 201, {}, {"token": tok, "expires_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))}
        return super().route(method, tmpl, params, query, body, headers)

    def runner_registration(self, method, body, headers):
        where = f"{method} /actions/runner-registration"
        a = headers.get("authorization") or ""
        if method != "POST":
            self.error(f"{where}: not POST")
        if not a.startswith("RemoteAuth "):
            self.error(f"{where}: Authorization is not RemoteAuth")
            return 401, {}, {"message": "Bad credentials"}
        if not (headers.get("content-type") or "").startswith("application/json"):
            self.error(f"{where}: Content-Type is not application/json")
        try:
            doc = json.loads(body)
        except ValueError:
            self.error(f"{where}: the body is not JSON")
            return 400, {}, {"message": "bad body"}
        want = f"{self.url}/{self.repo}"
        if not isinstance(doc, dict) or set(doc) != {"url", "runner_event"}:
            self.error(f"{where}: body keys {sorted(doc) if isinstance(doc, dict) else doc}")
        elif doc["url"] != want or doc["runner_event"] != "register":
            self.error(f"{where}: url {doc['url']!r} (want {want!r}), event {doc['runner_event']!r}")
        with self.lock:
            tok = a[len("RemoteAuth "):]
            if tok not in self.reg_tokens or self.reg_tokens[tok]:
                self.error(f"{where}: a registration token that was not issued or is spent")
                return 401, {}, {"message": "Bad registration token"}
            self.reg_tokens[tok] = True
            return 201, {}, {"url": f"{self.url}/tenant/1/", "token": self.admin_jwt()}

    # -- the Actions Service
    def service(self, method, path, query, body, headers):
        where = f"{method} {path}"
        if query.get("api-version") != [API_VERSION]:
            self.error(f"{where}: api-version is {query.get('api-version')}")
        if headers.get("content-type") != "application/json":
            self.error(f"{where}: Content-Type is {headers.get('content-type')!r}")
        doc = None
        if body:
            try:
                doc = json.loads(body)
            except ValueError:
                self.error(f"{where}: the body is not JSON")
                return 400, {}, exc("ArgumentException", "bad body")
        a = headers.get("authorization") or ""
        tok = a[7:] if a.startswith("Bearer ") else None
        m = re.fullmatch(r"/_apis/runtime/runnerscalesets/(\d+)/acquirejobs", path)
        with self.lock:
            if m:
                return self.acquire(int(m.group(1)), tok, doc, where)
            exp = self.admin_tokens.get(tok)
            if tok and self.session and tok == self.session["mq"]:
                self.error(f"{where}: the message-queue token used for an admin call")
                return 401, {}, None
            if exp is None or exp <= time.time():
                if exp is None:
                    self.error(f"{where}: not a current admin token")
                return 401, {}, None
            res = self.admin(method, path, query, doc, body, where)
        if res[0] == 200 and method == "POST" and path.endswith("/sessions"):
            # the session exists now; its answer may be slow to come back
            time.sleep(self.session_answer_delay_s)
        return res

    def admin(self, method, path, query, doc, body, where):
        if path == "/_apis/runtime/runnergroups/" and method == "GET":
            name = (query.get("groupName") or [""])[0]
            if not name:
                self.error(f"{where}: no groupName")
            v = [{"id": i, "name": n, "size": 0, "isDefaultGroup": i == 1}
                 for i, n in self.groups.items() if n.lower() == name.lower()]
            return 200, {}, {"count": len(v), "value": v}
        if path == "/_apis/runtime/runnerscalesets" and method == "GET":
            name = (query.get("name") or [""])[0]
            gid = (query.get("runnerGroupId") or [""])[0]
            if not name or not gid.isdigit():
                self.error(f"{where}: name or runnerGroupId missing or not an integer")
            v = [dict(s, id=i) for i, s in self.scalesets.items()
                 if s["name"] == name and str(s["runnerGroupId"]) == gid]
            return 200, {}, {"count": len(v), "value": v}
        if path == "/_apis/runtime/runnerscalesets" and method == "POST":
            labels = doc.get("labels") if isinstance(doc, dict) else None
            if not isinstance(doc, dict) or not doc.get("name"):
                self.error(f"{where}: no name")
                return 400, {}, exc("ArgumentException", "name")
            if "id" in doc and doc["id"] not in (0, None):
                self.error(f"{where}: an id")
            if not labels or any(not isinstance(x, dict) or not x.get("name") or
                                 x.get("type") != "System" for x in labels):
                self.error(f"{where}: labels {labels!r}")
            if doc.get("runnerGroupId") not in self.groups:
                self.error(f"{where}: runnerGroupId {doc.get('runnerGroupId')!r}")
            if doc.get("RunnerSetting", {}).get("disableUpdate") is not True:
                self.error(f"{where}: RunnerSetting.disableUpdate is not true")
            if any(s["name"] == doc["name"] and s["runnerGroupId"] == doc.get("runnerGroupId")
                   for s in self.scalesets.values()):
                self.error(f"{where}: created twice")
                return 409, {}, exc("RunnerScaleSetExistsException", "exists")
            sid = len(self.scalesets) + 41
            self.scalesets[sid] = {"name": doc["name"], "runnerGroupId": doc["runnerGroupId"],
                                   "labels": labels}
            return 200, {}, dict(self.scalesets[sid], id=sid, createdOn="2026-05-01T12:00:00Z",
                                 RunnerSetting={"disableUpdate": True})
        m = re.fullmatch(r"/_apis/runtime/runnerscalesets/(\d+)/sessions(?:/([0-9a-f-]+))?", path)
        if m:
            ss = int(m.group(1))
            if ss not in self.scalesets:
                self.error(f"{where}: unknown scale set")
                return 404, {}, exc("RunnerScaleSetNotFoundException", "no such scale set")
            return self.sessions(method, ss, m.group(2), doc, body, where)
        m = re.fullmatch(r"/_apis/runtime/runnerscalesets/(\d+)/acquirablejobs", path)
        if m and method == "GET":
            if int(m.group(1)) not in self.scalesets:
                self.error(f"{where}: unknown scale set")
                return 404, {}, exc("RunnerScaleSetNotFoundException", "no such scale set")
            if body:
                self.error(f"{where}: a body")
            self.acquirable_calls += 1
            v = [self.job_msg("JobAvailable", rid, acquireJobUrl=f"{self.url}/acquire/{rid}")
                 for rid, j in sorted(self.jobs.items()) if j["state"] == "available"]
            if not v:
                return 204, {}, None
            return 200, {}, {"count": len(v), "value": v}
        m = re.fullmatch(r"/_apis/runtime/runnerscalesets/(\d+)/generatejitconfig", path)
        if m and method == "POST":
            if (not isinstance(doc, dict) or not doc.get("name") or
                    not isinstance(doc.get("workFolder"), str)):
                self.error(f"{where}: body {doc!r}")
                return 400, {}, exc("ArgumentException", "name")
            if any(r["name"] == doc["name"] for r in self.ss_runners.values()):
                return 409, {}, exc("AgentExistsException", "exists")
            rid = self.next_runner
            self.next_runner += 1
            enc, decoded, parts = self.make_jit(doc["name"], rid)
            self.ss_runners[rid] = {"id": rid, "name": doc["name"], "job": None}
            self.jits.append({"runner": doc["name"], "id": rid, "encoded": enc,
                              "decoded": decoded, "parts": parts, "time": time.time(),
                              "sha256": hashlib.sha256(decoded.encode()).hexdigest()})
            return 200, {}, {"runner": {"id": rid, "name": doc["name"],
                                        "runnerScaleSetId": int(m.group(1))},
                             "encodedJITConfig": enc}
        m = re.fullmatch(r"/_apis/distributedtask/pools/0/agents/(\d+)", path)
        if m and method in ("GET", "DELETE"):
            r = self.ss_runners.get(int(m.group(1)))
            if not r:
                return 404, {}, exc("AgentNotFoundException", "no such runner")
            if method == "GET":
                return 200, {}, {"id": r["id"], "name": r["name"], "runnerScaleSetId": 41}
            if r["job"] and self.jobs[r["job"]]["state"] == "running":
                return 409, {}, exc("JobStillRunningException", "busy")
            del self.ss_runners[r["id"]]
            return 204, {}, None
        self.error(f"{where}: not an endpoint of the fake")
        return 404, {}, exc("NotFoundException", "no such endpoint")

    def sessions(self, method, ss, sid, doc, body, where):
        now = time.time()
        if method == "POST" and not sid:
            if not isinstance(doc, dict) or not doc.get("ownerName"):
                self.error(f"{where}: no ownerName")
            elif doc.get("sessionId", "00000000-0000-0000-0000-000000000000") != \
                    "00000000-0000-0000-0000-000000000000":
                self.error(f"{where}: a sessionId")
            if self.conflicts > 0:
                self.conflicts -= 1
                self.conflicts_served += 1
                return 409, {}, exc("RunnerScaleSetSessionConflictException",
                                    "The actions runner scaleset already has an active session.")
            if self.session and now - self.session["polled"] < self.session_orphan_s:
                self.conflicts_served += 1
                return 409, {}, exc("RunnerScaleSetSessionConflictException",
                                    "The actions runner scaleset already has an active session.")
            self.session = {"id": str(__import__("uuid").uuid4()), "owner": doc.get("ownerName"),
                            "mq": None, "mq_exp": 0, "polled": now, "ss": ss}
            # a new session starts from the first message not deleted
            self.last_delivered = None
            self.sessions_created += 1
            return 200, {}, self.session_json()
        if not self.session or sid != self.session["id"]:
            if method == "DELETE":
                return 400, {}, exc("RunnerScaleSetSessionExpiredException",
                                    f"The session identifier {sid} is not valid.")
            return 404, {}, exc("RunnerAdminException",
                                "runner referenced a session ID that doesn't exist in redis")
        if method == "PATCH":
            if body:
                self.error(f"{where}: a body")
            return 200, {}, self.session_json()
        if method == "DELETE":
            self.session = None
            self.sessions_deleted += 1
            return 204, {}, None
        self.error(f"{where}: method")
        return 405, {}, None

    def session_json(self):
        s = self.session
        s["mq"] = "mq" + secrets.token_hex(20)
        self.mq_tokens.append(s["mq"])
        s["mq_exp"] = time.time() + self.mq_ttl
        s["polled"] = time.time()
        return {"sessionId": s["id"], "ownerName": s["owner"],
                "runnerScaleSet": dict(self.scalesets[s["ss"]], id=s["ss"]),
                "messageQueueUrl": f"{self.url}/mq/{s['id']}/message",
                "messageQueueAccessToken": s["mq"], "statistics": self.stats()}

    def mq_ok(self, tok, where):
        if not self.session or tok != self.session["mq"]:
            return False
        return self.session["mq_exp"] > time.time()

    def acquire(self, ss, tok, doc, where):
        if tok in self.admin_tokens:
            self.error(f"{where}: an admin token (acquirejobs takes the message-queue token)")
            return 401, {}, None
        if not self.mq_ok(tok, where):
            return 401, {}, None
        if not isinstance(doc, list) or not all(isinstance(x, int) for x in doc):
            self.error(f"{where}: the body is not an array of integers")
            return 400, {}, exc("ArgumentException", "body")
        got = []
        for rid in doc:
            j = self.jobs.get(rid)
            if not j or j["state"] != "available":
                self.error(f"{where}: {rid} was not offered or is acquired already")
                continue
            j["state"] = "acquired"
            self.acquired_ms[rid] = time.time() * 1000
            got.append(rid)
        self.acquired_total += len(got)
        held = sum(1 for j in self.jobs.values() if j["state"] in ("acquired", "running"))
        self.max_acquired = max(self.max_acquired, held)
        return 200, {}, {"count": len(got), "value": got}

    # -- the message queue
    def message_queue(self, method, path, query, body, headers):
        where = f"{method} {path}"
        m = re.fullmatch(r"/mq/([0-9a-f-]+)/message(?:/(\d+))?", path)
        a = headers.get("authorization") or ""
        tok = a[7:] if a.startswith("Bearer ") else None
        with self.lock:
            if not m or not self.session or m.group(1) != self.session["id"]:
                return 404, {}, exc("RunnerAdminException",
                                    "runner referenced a session ID that doesn't exist in redis")
            if tok in self.admin_tokens:
                self.error(f"{where}: an admin token on the message queue")
            if not self.mq_ok(tok, where):
                return 401, {}, None
            self.session["polled"] = time.time()
            if method == "DELETE" and m.group(2):
                mid = int(m.group(2))
                for i, (x, _, _) in enumerate(self.undeleted):
                    if x == mid:
                        del self.undeleted[i]
                        return 204, {}, None
                self.error(f"{where}: message {mid} was not delivered or is deleted already")
                return 404, {}, exc("MessageNotFoundException", "no such message")
            if method != "GET" or m.group(2):
                self.error(f"{where}: not a queue call")
                return 405, {}, None
            if body:
                self.error(f"{where}: a body")
            if headers.get("accept") != f"application/json; api-version={API_VERSION}":
                self.error(f"{where}: Accept is {headers.get('accept')!r}")
            cap = headers.get("x-scalesetmaxcapacity")
            if cap is None or not cap.isdigit():
                self.error(f"{where}: X-ScaleSetMaxCapacity is {cap!r}")
            else:
                self.capacity_seen.append(int(cap))
            last = query.get("lastMessageId")
            want = None if self.last_delivered is None else str(self.last_delivered)
            got = last[0] if last else None
            if got != want:
                self.error(f"{where}: lastMessageId {got} (last delivered {want})")
            mine = [x for x, _, s in self.undeleted if s == self.session["id"]]
            if mine:
                self.error(f"{where}: polled before deleting message {mine[0]}")
        end = time.time() + self.hold_s
        while True:
            with self.lock:
                if not self.session or m.group(1) != self.session["id"]:
                    return 404, {}, exc("RunnerAdminException", "session gone")
                msg = self.next_message()
                if msg:
                    return 200, {}, msg
            if time.time() >= end:
                return 202, {}, None
            time.sleep(0.05)

    def next_message(self):
        if self.undeleted:
            # redelivered (to a new session: the old one never deleted it)
            mid, doc, _ = self.undeleted[0]
            self.undeleted[0] = (mid, doc, self.session["id"])
            self.last_delivered = mid
            return doc
        now = time.time()
        for rid, j in sorted(self.jobs.items()):
            if j["state"] == "available" and now - j["offered"] >= self.reoffer_s and \
                    not any(e["runnerRequestId"] == rid and e["messageType"] == "JobAvailable"
                            for e in self.events):
                j["offered"] = now
                self.events.append(self.job_msg("JobAvailable", rid,
                                                acquireJobUrl=f"{self.url}/acquire/{rid}"))
        if not self.events:
            return None
        batch, self.events = self.events[:50], self.events[50:]
        mid = self.next_msg
        self.next_msg += 1
        doc = {"messageId": mid, "messageType": "RunnerScaleSetJobMessages",
               "body": json.dumps(batch), "statistics": self.stats()}
        self.undeleted.append((mid, doc, self.session["id"]))
        self.last_delivered = mid
        return doc
