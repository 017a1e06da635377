#!/usr/bin/env python3
"""A fake GitHub REST API for the self-hosted runner side (Python stdlib only).

Every request is checked against GitHub's official OpenAPI description
(actions-runners-openapi.json, loaded at start): the path must be one of its
templates, the method one of the template's operations, path parameters of
the declared type, query parameters declared (with their types and enums),
and the JSON body must have the required fields with the declared types,
item types, enums and array bounds (unknown fields are errors here). The
headers GitHub expects are checked too (Accept, X-GitHub-Api-Version,
Authorization, User-Agent). Every violation is recorded in `errors` and
answered 400, so a test can assert the client never drifted. The fake's own
answers are built from the response schemas (synth()) and checked against
them as well, so they are as complete as GitHub's.

Outside that file, GitHub's App API is simulated and checked by hand:
  GET  /repos/{owner}/{repo}/installation, /orgs/{org}/installation
  POST /app/installations/{id}/access_tokens
with the App JWT verified (RS256 against the App's public key, iat/exp
window at most 10 minutes, iss the App id).

State: runners (generate-jitconfig creates them; DELETE of a busy one is
422 like GitHub), workflow runs and jobs for the polling fallback (with
ETags and 304), rate-limit headers on every answer and scripted faults
(`fail_next`: e.g. a 403 with Retry-After). Webhook deliveries are sent by
`send_webhook()`, signed with the test secret (or a wrong one).

Listens on 127.0.0.1 only.
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API_VERSION = "2022-11-28"


class ContractMissing(Exception):
    pass


CONTRACTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "contracts")


def find_contract():
    """(openapi path, examples path) from GITHUB_OPENAPI / GITHUB_WEBHOOK_EXAMPLES,
    by default the copies in tests/contracts/."""
    spec = os.environ.get("GITHUB_OPENAPI") or os.path.join(CONTRACTS,
                                                            "actions-runners-openapi.json")
    ex = os.environ.get("GITHUB_WEBHOOK_EXAMPLES") or os.path.join(
        CONTRACTS, "workflow_job-webhook-examples.json")
    for p in (spec, ex):
        if not p or not os.path.isfile(p):
            raise ContractMissing(
                "the GitHub contract files are not there (GITHUB_OPENAPI=%r, "
                "GITHUB_WEBHOOK_EXAMPLES=%r): they live in tests/contracts/" % (spec, ex))
    return spec, ex


# ---------------------------------------------------------------- schemas

def check_value(schema, value, path, errors, strict=True):
    """Appends a message for each way value breaks schema."""
    if schema is None:
        return
    if value is None:
        if not schema.get("nullable") and schema.get("type") is not None:
            errors.append(f"{path}: null where {schema.get('type')} is required")
        return
    for key in ("allOf",):
        for s in schema.get(key, []):
            check_value(s, value, path, errors, strict)
    if "anyOf" in schema or "oneOf" in schema:
        alts = schema.get("anyOf") or schema.get("oneOf")
        for s in alts:
            e = []
            check_value(s, value, path, e, strict)
            if not e:
                break
        else:
            errors.append(f"{path}: matches none of the alternatives")
        return
    t = schema.get("type")
    ok = {
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
        "array": lambda v: isinstance(v, list),
        "object": lambda v: isinstance(v, dict),
    }
    if t in ok and not ok[t](value):
        errors.append(f"{path}: expected {t}, got {type(value).__name__}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{path}: {value!r} is not one of {schema['enum']}")
    if t == "array":
        if "minItems" in schema and len(value) < schema["minItems"]:
            errors.append(f"{path}: fewer than {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            errors.append(f"{path}: more than {schema['maxItems']} items")
        for i, v in enumerate(value):
            check_value(schema.get("items"), v, f"{path}[{i}]", errors, strict)
    if t == "object" or (t is None and isinstance(value, dict) and "properties" in schema):
        props = schema.get("properties", {})
        for r in schema.get("required", []):
            if r not in value:
                errors.append(f"{path}.{r}: required, missing")
        for k, v in value.items():
            if k in props:
                check_value(props[k], v, f"{path}.{k}", errors, strict)
            elif strict and props and schema.get("additionalProperties") is not True:
                errors.append(f"{path}.{k}: not in the schema")


def synth(schema, depth=0):
    """A value that satisfies schema: every required field, examples where given."""
    if schema is None or depth > 12:
        return None
    if "allOf" in schema:
        out = {}
        for s in schema["allOf"]:
            v = synth(s, depth + 1)
            if isinstance(v, dict):
                out.update(v)
        return out
    if "anyOf" in schema or "oneOf" in schema:
        return synth((schema.get("anyOf") or schema.get("oneOf"))[0], depth + 1)
    t = schema.get("type")
    if "enum" in schema:
        return schema["enum"][0]
    if "example" in schema and t not in ("object", "array"):
        ex = schema["example"]
        e = []
        check_value(schema, ex, "", e)
        if not e:
            return ex
    if t == "string":
        fmt = schema.get("format")
        if fmt == "date-time":
            return "2026-01-01T00:00:00Z"
        if fmt == "uri":
            return "https://api.github.example/x"
        return "x"
    if t == "integer":
        return 1
    if t == "number":
        return 1.0
    if t == "boolean":
        return False
    if t == "array":
        return []
    if t == "object" or "properties" in schema:
        out = {}
        props = schema.get("properties", {})
        for r in schema.get("required", []):
            out[r] = synth(props.get(r), depth + 1)
        return out
    return None


class Contract:
    def __init__(self, spec_path):
        with open(spec_path) as f:
            self.spec = json.load(f)
        self.routes = []
        for tmpl, ops in self.spec["paths"].items():
            names = re.findall(r"\{([^}]+)\}", tmpl)
            rx = "^" + re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(tmpl)) + "$"
            self.routes.append((re.compile(rx), tmpl, names, ops))

    def match(self, path):
        for rx, tmpl, names, ops in self.routes:
            m = rx.match(path)
            if m:
                return tmpl, dict(zip(names, m.groups())), ops
        return None, None, None

    def response_schema(self, tmpl, method, status):
        op = self.spec["paths"][tmpl][method.lower()]
        r = op["responses"].get(str(status))
        if not r or "content" not in r:
            return None
        return r["content"]["application/json"]["schema"]

    def validate(self, method, path, query, body, headers):
        """Violations of the contract by one request (a list of messages)."""
        errs = []
        tmpl, params, ops = self.match(path)
        if not tmpl:
            return [f"{method} {path}: no such path in the contract"], None, None
        op = ops.get(method.lower())
        if not op:
            return [f"{method} {tmpl}: method not in the contract ({', '.join(ops)})"], tmpl, params
        where = f"{method} {tmpl}"
        declared = {p["name"]: p for p in op.get("parameters", [])}
        for name, value in params.items():
            p = declared.get(name)
            if not p or p["in"] != "path":
                errs.append(f"{where}: path parameter {name} not declared")
                continue
            if p["schema"].get("type") == "integer" and not re.fullmatch(r"\d+", value):
                errs.append(f"{where}: path parameter {name}={value!r} is not an integer")
        for name, values in query.items():
            p = declared.get(name)
            if not p or p["in"] != "query":
                errs.append(f"{where}: unknown query parameter {name}")
                continue
            s = p.get("schema", {})
            for v in values:
                if s.get("type") == "integer" and not re.fullmatch(r"\d+", v):
                    errs.append(f"{where}: {name}={v!r} is not an integer")
                if s.get("type") == "boolean" and v not in ("true", "false"):
                    errs.append(f"{where}: {name}={v!r} is not a boolean")
                if "enum" in s and v not in s["enum"]:
                    errs.append(f"{where}: {name}={v!r} is not one of {s['enum']}")
            if name == "per_page" and values and values[0].isdigit() and int(values[0]) > 100:
                errs.append(f"{where}: per_page above 100")
        for name, p in declared.items():
            if p.get("required") and p["in"] == "query" and name not in query:
                errs.append(f"{where}: required query parameter {name} missing")
        rb = op.get("requestBody")
        if rb:
            schema = rb["content"].get("application/json", {}).get("schema")
            if not body:
                if rb.get("required"):
                    errs.append(f"{where}: a JSON body is required")
            else:
                if not (headers.get("content-type") or "").startswith("application/json"):
                    errs.append(f"{where}: Content-Type is not application/json")
                try:
                    doc = json.loads(body)
                except ValueError:
                    errs.append(f"{where}: the body is not JSON")
                else:
                    check_value(schema, doc, "body", errs)
        elif body:
            errs.append(f"{where}: a body where the contract has none")
        return [f"{where}: {e}" if not e.startswith(where) else e for e in errs], tmpl, params


def check_headers(headers, errs, where):
    acc = headers.get("accept") or ""
    if "application/vnd.github+json" not in acc:
        errs.append(f"{where}: Accept is {acc!r}, not application/vnd.github+json")
    if headers.get("x-github-api-version") != API_VERSION:
        errs.append(f"{where}: X-GitHub-Api-Version is not {API_VERSION}")
    if not headers.get("user-agent"):
        errs.append(f"{where}: no User-Agent (GitHub rejects such requests)")


# ---------------------------------------------------------------- RSA (JWT check)

def rsa_public_numbers(pem_path):
    """(n, e) of an RSA key file, through the openssl CLI."""
    out = subprocess.run(["openssl", "rsa", "-in", pem_path, "-noout", "-text"],
                         capture_output=True, text=True, check=True).stdout
    m = re.search(r"modulus:\s*\n((?:\s+[0-9a-f:]+\n)+)", out)
    e = re.search(r"publicExponent: (\d+)", out)
    n = int(re.sub(r"[\s:]", "", m.group(1)), 16)
    return n, int(e.group(1))


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def verify_rs256(n, e, signing_input, sig):
    k = (n.bit_length() + 7) // 8
    if len(sig) != k:
        return False
    em = pow(int.from_bytes(sig, "big"), e, n).to_bytes(k, "big")
    digest_info = bytes.fromhex("3031300d060960864801650304020105000420")
    h = hashlib.sha256(signing_input).digest()
    want = b"\x00\x01" + b"\xff" * (k - 3 - len(digest_info) - len(h)) + b"\x00" + digest_info + h
    return hmac.compare_digest(em, want)


# ---------------------------------------------------------------- the fake

class Runner:
    def __init__(self, rid, name, labels, group, jit, mode):
        self.id = rid
        self.name = name
        self.labels = labels
        self.group = group
        self.jit = jit            # the encoded config handed out
        self.mode = mode          # what the stand-in runner does with it
        self.busy = False
        self.status = "offline"
        self.created = time.time()
        self.deleted = None       # time of a successful DELETE


class FakeGitHub:
    def __init__(self, spec_path, repo, token=None, app=None, jit_mode="exit"):
        """repo: "owner/name" the fake hosts. token: the accepted bearer token.
        app: {"id": "123", "key": PEM path, "installation": 77, "ttl": seconds}."""
        self.contract = Contract(spec_path)
        self.repo = repo
        self.token = token
        self.app = app
        if app:
            self.app_n, self.app_e = rsa_public_numbers(app["key"])
        self.jit_mode = jit_mode
        # reentrant: wait() holds it while a condition calls runner_named() and co.
        self.lock = threading.RLock()
        self.errors = []
        self.requests = []        # (time received, method, path, status)
        self.runners = {}
        self.next_runner = 1000
        self.jits = []            # every config handed out, with its secret parts
        self.runs = {}            # run id -> {"status", "updated_at", "jobs": [...]}
        self.faults = []          # [{"match": regex, "status", "headers", "body", "times"}]
        self.tokens = []          # installation tokens issued (with expiry)
        self.jwts_seen = 0
        self.remaining = 4999
        self.not_modified = 0
        self.srv = None

    # -- control
    def start(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _do(self):
                fake.handle(self)

            do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _do

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.srv.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        return self

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()

    def fail_next(self, match, status, headers=None, body=None, times=1):
        with self.lock:
            self.faults.append({"match": re.compile(match), "status": status,
                                "headers": headers or {}, "body": body, "times": times})

    def add_runner(self, name, busy=False):
        """A runner that exists on GitHub already (left by an earlier daemon)."""
        with self.lock:
            r = Runner(self.next_runner, name, ["self-hosted"], 1, None, None)
            self.next_runner += 1
            r.busy = busy
            r.status = "online" if busy else "offline"
            self.runners[r.id] = r
            return r

    def add_run(self, run_id, jobs, status="queued"):
        """A workflow run with its jobs (dicts with id, name, labels, status)."""
        with self.lock:
            self.runs[run_id] = {"status": status, "updated_at": self._now(), "jobs": jobs}

    def set_job(self, run_id, job_id, **fields):
        with self.lock:
            run = self.runs[run_id]
            for j in run["jobs"]:
                if j["id"] == job_id:
                    j.update(fields)
            run["updated_at"] = self._now()

    def runner_named(self, name):
        with self.lock:
            for r in self.runners.values():
                if r.name == name:
                    return r
        return None

    def take_job(self, name):
        """The runner connected and took a job (GitHub marks it busy)."""
        r = self.runner_named(name)
        if r:
            r.busy = True
            r.status = "online"

    def finish_job(self, name):
        """An ephemeral runner finished its job: GitHub removes it."""
        with self.lock:
            for rid, r in list(self.runners.items()):
                if r.name == name:
                    del self.runners[rid]

    def wait(self, cond, timeout):
        end = time.time() + timeout
        while time.time() < end:
            with self.lock:
                if cond():
                    return True
            time.sleep(0.1)
        with self.lock:
            return cond()

    def count(self, method, rx):
        rx = re.compile(rx)
        with self.lock:
            return sum(1 for r in self.requests if r[1] == method and rx.search(r[2]))

    @staticmethod
    def _now():
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + str(time.monotonic_ns())[-6:]

    # -- HTTP
    def handle(self, h):
        method = h.command
        u = urllib.parse.urlsplit(h.path)
        path = u.path
        query = urllib.parse.parse_qs(u.query, keep_blank_values=True)
        n = int(h.headers.get("Content-Length") or 0)
        body = h.rfile.read(n) if n else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        received = time.time()
        status, extra, payload = self.dispatch(method, path, query, body, headers)
        data = b"" if payload is None else json.dumps(payload).encode()
        with self.lock:
            self.requests.append((received, method, h.path, status))
            self.remaining = max(0, self.remaining - 1)
            rl = {"X-RateLimit-Limit": "5000", "X-RateLimit-Remaining": str(self.remaining),
                  "X-RateLimit-Reset": str(int(time.time()) + 3600),
                  "X-RateLimit-Used": str(5000 - self.remaining), "X-RateLimit-Resource": "core"}
        h.send_response(status)
        for k, v in {**rl, **extra}.items():
            h.send_header(k, v)
        if payload is not None:
            h.send_header("Content-Type", "application/json; charset=utf-8")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if data and method != "HEAD":
            h.wfile.write(data)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg)

    def dispatch(self, method, path, query, body, headers):
        where = f"{method} {path}"
        # scripted faults first (the request still has to be well-formed)
        with self.lock:
            for f in self.faults:
                if f["times"] > 0 and f["match"].search(f"{method} {path}"):
                    f["times"] -= 1
                    return f["status"], f["headers"], f["body"] or {
                        "message": "You have exceeded a secondary rate limit. Please wait a "
                                   "few minutes before you try again.",
                        "documentation_url": "https://docs.github.com/rest/overview/rate-limits"}
        errs = []
        check_headers(headers, errs, where)
        if path.startswith("/app/") or path.endswith("/installation"):
            return self.app_api(method, path, body, headers, errs)
        auth_ok = self.check_auth(headers, errs, where)
        verrs, tmpl, params = self.contract.validate(method, path, query, body, headers)
        errs += verrs
        if errs:
            for e in errs:
                self.error(e)
            return 400, {}, {"message": "; ".join(errs)[:500],
                             "documentation_url": "https://docs.github.com/rest"}
        if not auth_ok:
            return 401, {}, {"message": "Bad credentials",
                             "documentation_url": "https://docs.github.com/rest"}
        owner_repo = f"{params.get('owner')}/{params.get('repo')}" if "owner" in params else None
        if owner_repo and owner_repo.lower() != self.repo.lower():
            return 404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"}
        status, extra, payload = self.route(method, tmpl, params, query, body, headers)
        if payload is not None and status < 300:
            schema = self.contract.response_schema(tmpl, method, status)
            e = []
            check_value(schema, payload, "response", e, strict=False)
            for x in e:
                self.error(f"the fake's own answer to {method} {tmpl}: {x}")
        return status, extra, payload

    def check_auth(self, headers, errs, where):
        a = headers.get("authorization") or ""
        if not a.startswith("Bearer "):
            errs.append(f"{where}: no Authorization: Bearer")
            return False
        tok = a[7:]
        if self.app:
            now = time.time()
            with self.lock:
                for t in self.tokens:
                    if t["token"] == tok:
                        if t["expires"] <= now:
                            return False
                        t["used"] += 1
                        return True
            return False
        return tok == self.token

    # -- the App API (not in the contract file)
    def check_jwt(self, headers, errs, where):
        a = headers.get("authorization") or ""
        if not a.startswith("Bearer "):
            errs.append(f"{where}: the App API needs Authorization: Bearer <JWT>")
            return False
        parts = a[7:].split(".")
        if len(parts) != 3:
            errs.append(f"{where}: not a JWT")
            return False
        try:
            head = json.loads(b64url_decode(parts[0]))
            claims = json.loads(b64url_decode(parts[1]))
            sig = b64url_decode(parts[2])
        except ValueError:
            errs.append(f"{where}: JWT parts are not base64url JSON")
            return False
        if head.get("alg") != "RS256":
            errs.append(f"{where}: JWT alg is {head.get('alg')}, not RS256")
        if not verify_rs256(self.app_n, self.app_e, (parts[0] + "." + parts[1]).encode(), sig):
            errs.append(f"{where}: the JWT signature does not verify with the App's key")
            return False
        now = time.time()
        iat, exp = claims.get("iat"), claims.get("exp")
        if not isinstance(iat, int) or not isinstance(exp, int):
            errs.append(f"{where}: iat/exp are not integers")
            return False
        if iat > now + 5 or exp < now or exp - iat > 600:
            errs.append(f"{where}: JWT window iat={iat} exp={exp} now={int(now)} is wrong")
        if str(claims.get("iss")) != str(self.app["id"]):
            errs.append(f"{where}: JWT iss {claims.get('iss')!r} is not the App id")
        with self.lock:
            self.jwts_seen += 1
        return True

    def app_api(self, method, path, body, headers, errs):
        where = f"{method} {path}"
        if not self.app:
            errs.append(f"{where}: App API used with token auth")
        elif self.check_jwt(headers, errs, where):
            pass
        if errs:
            for e in errs:
                self.error(e)
            return 401, {}, {"message": "A JSON web token could not be decoded"}
        inst = self.app["installation"]
        if method == "GET" and path in (f"/repos/{self.repo}/installation",
                                        f"/orgs/{self.repo.split('/')[0]}/installation"):
            return 200, {}, {"id": inst, "account": {"login": self.repo.split("/")[0]},
                             "app_id": int(self.app["id"]) if str(self.app["id"]).isdigit() else 1}
        if method == "POST" and path == f"/app/installations/{inst}/access_tokens":
            if body and body.strip() not in (b"", b"{}"):
                self.error(f"{where}: unexpected body")
            ttl = self.app.get("ttl", 3600)
            tok = "ghs_" + secrets.token_urlsafe(27)
            exp = time.time() + ttl
            with self.lock:
                self.tokens.append({"token": tok, "expires": exp, "used": 0})
            return 201, {}, {"token": tok, "expires_at": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)), "permissions": {
                "administration": "write", "actions": "read"}, "repository_selection": "all"}
        self.error(f"{where}: no such App API endpoint")
        return 404, {}, {"message": "Not Found"}

    # -- the contract's endpoints
    def runner_json(self, r):
        return {"id": r.id, "runner_group_id": r.group, "name": r.name, "os": "Linux",
                "status": r.status, "busy": r.busy, "ephemeral": True,
                "labels": [{"id": i + 1, "name": n, "type": "custom" if i > 2 else "read-only"}
                           for i, n in enumerate(r.labels)]}

    def make_jit(self, name, rid):
        """A config shaped like GitHub's: base64 of {file: base64(content)}."""
        rsa = base64.b64encode(secrets.token_bytes(48)).decode()
        cred = {"scheme": "OAuthAccessToken",
                "data": {"clientId": secrets.token_hex(16), "authorizationUrl":
                         "https://vstoken.actions.githubusercontent.com/_apis/oauth2/token/x"}}
        runner = {"agentId": rid, "agentName": name, "poolId": 1, "poolName": "Default",
                  "serverUrl": "https://pipelines.actions.githubusercontent.com/x",
                  "gitHubUrl": f"https://github.com/{self.repo}", "workFolder": "_work",
                  "ephemeral": True, "agentlabTestMode": self.jit_mode}
        files = {".runner": base64.b64encode(json.dumps(runner).encode()).decode(),
                 ".credentials": base64.b64encode(json.dumps(cred).encode()).decode(),
                 ".credentials_rsaparams": base64.b64encode(json.dumps(
                     {"d": rsa, "modulus": secrets.token_hex(32)}).encode()).decode()}
        decoded = json.dumps(files)
        enc = base64.b64encode(decoded.encode()).decode()
        return enc, decoded, [rsa, cred["data"]["clientId"]]

    def route(self, method, tmpl, params, query, body, headers):
        notfound = (404, {}, {"message": "Not Found", "documentation_url": "https://docs.github.com/rest"})
        if tmpl.endswith("/actions/runners/generate-jitconfig"):
            doc = json.loads(body)
            with self.lock:
                for r in self.runners.values():
                    if r.name == doc["name"]:
                        return 409, {}, {"message": "Already exists - A runner with the name "
                                                    f"{doc['name']} already exists.",
                                         "documentation_url": "https://docs.github.com/rest"}
                rid = self.next_runner
                self.next_runner += 1
                enc, decoded, parts = self.make_jit(doc["name"], rid)
                r = Runner(rid, doc["name"], doc["labels"], doc["runner_group_id"], enc,
                           self.jit_mode)
                self.runners[rid] = r
                self.jits.append({"runner": doc["name"], "id": rid, "encoded": enc,
                                  "decoded": decoded, "parts": parts,
                                  "sha256": hashlib.sha256(decoded.encode()).hexdigest(),
                                  "labels": doc["labels"], "body": doc})
                return 201, {}, {"runner": self.runner_json(r), "encoded_jit_config": enc}
        if tmpl.endswith("/actions/runners") and method == "GET":
            per = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            name = query.get("name", [None])[0]
            with self.lock:
                rs = [r for r in sorted(self.runners.values(), key=lambda r: r.id)
                      if name is None or r.name == name]
                chunk = rs[(page - 1) * per:page * per]
                return 200, {}, {"total_count": len(rs),
                                 "runners": [self.runner_json(r) for r in chunk]}
        if tmpl.endswith("/actions/runners/{runner_id}"):
            rid = int(params["runner_id"])
            with self.lock:
                r = self.runners.get(rid)
                if not r:
                    return notfound
                if method == "GET":
                    return 200, {}, self.runner_json(r)
                if r.busy:
                    return 422, {}, {"message": f"Bad request - Runner \"{r.name}\" is still "
                                                "running a job\"",
                                     "documentation_url": "https://docs.github.com/rest"}
                r.deleted = time.time()
                del self.runners[rid]
                return 204, {}, None
        if tmpl == "/repos/{owner}/{repo}/actions/runs":
            st = query.get("status", [None])[0]
            per = int(query.get("per_page", ["30"])[0])
            schema = self.contract.response_schema(tmpl, "GET", 200)
            item = schema["properties"]["workflow_runs"]["items"]
            with self.lock:
                runs = []
                for rid in sorted(self.runs):
                    run = self.runs[rid]
                    if st and run["status"] != st:
                        continue
                    x = synth(item)
                    x.update({"id": rid, "status": run["status"], "updated_at": run["updated_at"]})
                    runs.append(x)
                doc = {"total_count": len(runs), "workflow_runs": runs[:per]}
                etag = '"' + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32] + '"'
                if headers.get("if-none-match") == etag:
                    self.not_modified += 1
                    return 304, {"ETag": etag}, None
            return 200, {"ETag": etag}, doc
        if tmpl == "/repos/{owner}/{repo}/actions/runs/{run_id}/jobs":
            with self.lock:
                run = self.runs.get(int(params["run_id"]))
                if not run:
                    return notfound
                jobs = [self.job_json(int(params["run_id"]), j) for j in run["jobs"]]
            return 200, {}, {"total_count": len(jobs), "jobs": jobs}
        if tmpl == "/repos/{owner}/{repo}/actions/jobs/{job_id}":
            jid = int(params["job_id"])
            with self.lock:
                for rid, run in self.runs.items():
                    for j in run["jobs"]:
                        if j["id"] == jid:
                            return 200, {}, self.job_json(rid, j)
            return notfound
        self.error(f"{method} {tmpl}: valid but not simulated")
        return 501, {}, {"message": "not simulated"}

    def job_json(self, run_id, j):
        schema = self.contract.response_schema("/repos/{owner}/{repo}/actions/jobs/{job_id}",
                                               "GET", 200)
        x = synth(schema)
        x.update({"id": j["id"], "run_id": run_id, "name": j.get("name", "build"),
                  "status": j.get("status", "queued"), "conclusion": j.get("conclusion"),
                  "labels": j["labels"], "runner_name": j.get("runner_name"),
                  "runner_id": j.get("runner_id"), "steps": [],
                  "html_url": f"https://github.com/{self.repo}/actions/runs/{run_id}/job/{j['id']}"})
        return x


# ---------------------------------------------------------------- webhooks

def sign(secret, body):
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def send_webhook(port, body, secret, event="workflow_job", delivery=None, signature=None,
                 content_type="application/json", method="POST"):
    """POSTs one delivery to agentlabd's listener; returns (status, text)."""
    delivery = delivery or secrets.token_hex(4) + "-" + secrets.token_hex(2) + "-11f0-" + \
        secrets.token_hex(2) + "-" + secrets.token_hex(6)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery,
               "X-GitHub-Hook-ID": "4711", "User-Agent": "GitHub-Hookshot/044aadd",
               "Content-Type": content_type}
    sig = signature if signature is not None else sign(secret, body)
    if sig:
        headers["X-Hub-Signature-256"] = sig
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        c.request(method, "/", body=body, headers=headers)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace"), delivery
    finally:
        c.close()
