#!/usr/bin/env python3
"""Secrets audit: a secret handed to a job never shows up anywhere the host
keeps or serves.

  secrets_audit.py AGENTLABD

One daemon (real libvirt, the micro image from AGENTLAB_TEST_STATE) runs a
job per secret source:

  api     a job submitted to the control API with secret_env
  gitlab  a GitLab job, through the fake GitLab, with a masked variable (the
          runner token and the job token are secrets too)

Each job proves that its secret reached the guest intact and prints it.
Afterwards every place a secret could leak to is read: the daemon's log, the
SQLite database and its -wal/-shm, every file under the state dir (job logs,
artifacts), the run dir, and what the API serves (jobs, logs, events, the
status JSON, the status page HTML, /metrics), and the GitLab trace. None
may hold a secret's value, nor its base64 at any of the three alignments.

A new secret source (a GitHub JIT config) is one more function that sets up
its jobs and returns its secrets: see SOURCES.
"""
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
from gitlab_fake import FakeGitLab, make_job  # noqa: E402
from libvirt_cleanup import destroy_test_pools  # noqa: E402
from skip import skip  # noqa: E402

API_SECRET = "api-Secret-Env-Value-7f3a9c"
GL_RUNNER_TOKEN = "glrt-t3_AuditRunnerToken0000042"
GL_MASKED = "Audit-Masked-Variable-93b1e"
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "ERROR", "REJECTED")


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def encodings(secret):
    """The secret, its base64, and the part of its base64 that is the same
    wherever the secret starts inside a larger encoded blob (the three byte
    alignments): the characters whose six bits all come from the secret."""
    raw = secret.encode()
    out = [raw, base64.b64encode(raw)]
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw)
        first = -(-8 * pad // 6)
        last = (8 * (pad + len(raw)) - 6) // 6
        out.append(enc[first:last + 1])
    return out


class Daemon:
    def __init__(self, agentlabd, tmp, run, state, conf):
        self.sock = os.path.join(run, "agentlabd.sock")
        self.log_path = os.path.join(tmp, "daemon.log")
        env = dict(os.environ, AGENTLAB_CONFIG=conf, AGENTLAB_STATE_DIR=state,
                   AGENTLAB_RUN_DIR=run)
        self.logf = open(self.log_path, "wb")
        self.proc = subprocess.Popen([agentlabd], env=env, stdout=self.logf, stderr=self.logf)
        deadline = time.time() + 60
        while self.get("/healthz", quiet=True)[0] != 200:
            check(self.proc.poll() is None, "agentlabd exited at start:\n" + self.log())
            check(time.time() < deadline, "the API did not come up")
            time.sleep(0.2)

    def log(self):
        return open(self.log_path, "rb").read().decode(errors="replace")

    def get(self, path, method="GET", body=None, quiet=False):
        args = ["curl", "-s", "-S", "--max-time", "60", "--unix-socket", self.sock,
                "-X", method, "-o", "-", "-w", "\n%{http_code}", "http://agentlabd" + path]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        p = subprocess.run(args, input=body, capture_output=True, check=False)
        if quiet and p.returncode != 0:
            return 0, b""
        check(p.returncode == 0, f"curl {path}: {p.stderr.decode(errors='replace')}")
        data, _, code = p.stdout.rpartition(b"\n")
        return int(code), data

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "killed"
        self.logf.close()
        return rc


# ------------------------------------------------------------ secret sources
# Each source has a setup(ctx) that returns its secrets and a started(ctx,
# daemon) that submits or awaits its jobs and returns their agentlab ids.

def api_setup(ctx):
    return {"secrets": [API_SECRET], "conf": ""}


def api_started(ctx, d):
    spec = {
        "name": "secrets audit api",
        "command": ["sh", "-c",
                    'test "$AUDIT_TOKEN" = "%s" && echo "secret arrived: $AUDIT_TOKEN"'
                    % API_SECRET],
        "secret_env": {"AUDIT_TOKEN": API_SECRET},
    }
    code, body = d.get("/v1/jobs", "POST", json.dumps(spec).encode())
    check(code == 201, f"api: submit answered {code}: {body!r}")
    job = json.loads(body)
    return [("api", job["id"], "SUCCEEDED", b"secret arrived: ***")]


def gitlab_setup(ctx):
    gitroot = os.path.join(ctx["tmp"], "git")
    os.makedirs(gitroot)
    sha = make_repo(gitroot)
    fake = FakeGitLab(GL_RUNNER_TOKEN, git_root=gitroot, long_poll_s=2.0).start()
    ctx["gitlab"] = fake
    token_file = os.path.join(ctx["tmp"], "runner.token")
    with open(token_file, "w") as f:
        f.write(GL_RUNNER_TOKEN + "\n")
    os.chmod(token_file, 0o600)
    masked = {"key": "DEPLOY_KEY", "value": GL_MASKED, "public": False, "masked": True,
              "file": False, "raw": False}
    job = fake.add_job(make_job(201, fake.url, sha, name="audit-job", variables=[masked],
                                script=['test "$DEPLOY_KEY" = "%s"' % GL_MASKED,
                                        'echo "secret arrived: $DEPLOY_KEY"']))
    ctx["gitlab_job"] = job
    conf = f"""[source "gl"]
type = gitlab
url = {fake.url}
token_file = {token_file}
labels = agentlab
concurrent = 1
poll_interval = 1s
"""
    return {"secrets": [GL_MASKED, GL_RUNNER_TOKEN, job.payload["token"]], "conf": conf}


def gitlab_started(ctx, d):
    fake, job = ctx["gitlab"], ctx["gitlab_job"]
    check(fake.wait(lambda: job.final is not None, 600),
          f"gitlab: the job was not reported (status {job.status})\n" + d.log()[-4000:])
    check(job.final["state"] == "success", f"gitlab: {job.final}")
    check(b"secret arrived: ***" in job.trace, f"gitlab: trace {job.trace!r}")
    ctx["served"].append(("gitlab trace", job.trace))
    code, body = d.get("/v1/jobs?source=gitlab")
    check(code == 200, f"gitlab: list answered {code}")
    jobs = json.loads(body)["jobs"]
    check(len(jobs) == 1, f"gitlab: {len(jobs)} jobs")
    return [("gitlab", jobs[0]["id"], "SUCCEEDED", b"secret arrived: ***")]


def gitlab_cleanup(ctx):
    if "gitlab" in ctx:
        ctx["gitlab"].stop()


SOURCES = [
    ("api", api_setup, api_started, None),
    ("gitlab", gitlab_setup, gitlab_started, gitlab_cleanup),
    # ("github", github_setup, github_started, github_cleanup): a JIT config
]


def make_repo(root):
    """A bare repo at root/demo.git with one commit; returns its sha."""
    env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.test",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test",
               GIT_CONFIG_NOSYSTEM="1", HOME=root)
    work = os.path.join(root, "work")
    os.makedirs(work)

    def git(*args, cwd=work):
        subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)
    git("init", "-q", "-b", "main", ".")
    with open(os.path.join(work, "README.txt"), "w") as f:
        f.write("audit\n")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True,
                         check=True, env=env).stdout.strip()
    bare = os.path.join(root, "demo.git")
    git("clone", "-q", "--bare", work, bare, cwd=root)
    git("update-ref", "refs/pipelines/7", sha, cwd=bare)
    return sha


def files_under(top, skip=()):
    for dirpath, dirs, names in os.walk(top):
        dirs[:] = [x for x in dirs if os.path.join(dirpath, x) not in skip]
        for n in names:
            yield os.path.join(dirpath, n)


def read_files(log_path, state, run):
    """{path: bytes} of the daemon log and every file under the state dir
    (but the images) and the run dir."""
    paths = [log_path] + list(files_under(state, skip=(os.path.join(state, "images"),)))
    paths += list(files_under(run))
    out = {}
    for p in paths:
        if os.path.islink(p) or not os.path.isfile(p):
            continue  # sockets, FIFOs: nothing kept there
        try:
            with open(p, "rb") as f:
                out[p] = f.read()
        except OSError:
            pass
    return out


def main():
    if len(sys.argv) != 2:
        fail("usage: secrets_audit.py AGENTLABD")
    agentlabd = sys.argv[1]
    # the search itself: an encoded copy at any offset is found
    for k in range(3):
        blob = base64.b64encode(b"x" * k + API_SECRET.encode() + b"tail")
        check(any(e in blob for e in encodings(API_SECRET)), f"encodings miss offset {k}")
    test_state = os.environ.get("AGENTLAB_TEST_STATE")
    micro = os.path.join(test_state or "", "images", "micro")
    if not test_state or not os.path.isdir(micro):
        skip("secrets audit: no micro image (run the micro fixture)")
    tmp = tempfile.mkdtemp(prefix="al-sa.")
    run = tempfile.mkdtemp(prefix="al-sar.")  # short: socket paths
    os.chmod(tmp, 0o711)
    os.chmod(run, 0o711)
    state = os.path.join(tmp, "state")
    os.makedirs(os.path.join(state, "images"))
    os.chmod(state, 0o711)
    shutil.copytree(micro, os.path.join(state, "images", "micro"), symlinks=True)
    ctx = {"tmp": tmp, "served": []}
    d = None
    try:
        secrets, confs = [], []
        for name, setup, _, _ in SOURCES:
            s = setup(ctx)
            secrets += s["secrets"]
            confs.append(s["conf"])
        conf = os.path.join(tmp, "agentlab.conf")
        with open(conf, "w") as f:
            f.write("[agent]\nlog_level = debug\nimage = micro\nboot_timeout = 20m\n"
                    "[backend \"local\"]\nmax_vms = 2\n" + "".join(confs))
        d = Daemon(agentlabd, tmp, run, state, conf)
        t0 = time.time()
        expected = []
        for name, _, started, _ in SOURCES:
            expected += started(ctx, d)
        for src, jid, want, out in expected:
            deadline = time.time() + 600
            while True:
                code, body = d.get(f"/v1/jobs/{jid}")
                check(code == 200, f"{src}: GET job answered {code}")
                job = json.loads(body)["job"]
                if job["state"] in TERMINAL:
                    break
                check(time.time() < deadline, f"{src}: job {jid} stuck in {job['state']}")
                time.sleep(1)
            check(job["state"] == want, f"{src}: job {jid} ended {job['state']}: {job}")
            code, log = d.get(f"/v1/jobs/{jid}/logs")
            check(code == 200 and out in log, f"{src}: the log lacks {out!r}: {log!r}")
        print(f"secrets audit: {len(expected)} jobs done in {time.time() - t0:.1f}s")

        # everything the API serves about them
        paths = ["/", "/v1/status", "/v1/jobs", "/v1/events?after=0", "/metrics", "/v1/vms"]
        for _, jid, _, _ in expected:
            paths += [f"/v1/jobs/{jid}", f"/v1/jobs/{jid}/logs", f"/v1/jobs/{jid}/events",
                      f"/v1/jobs/{jid}/artifacts"]
        for p in paths:
            code, body = d.get(p)
            check(code == 200, f"GET {p} answered {code}")
            ctx["served"].append(("GET " + p, body))
        page = dict(ctx["served"])["GET /"]
        check(b"<html" in page.lower(), "GET / is not the status page")
        # the files while the daemon runs: the WAL and -shm exist only now
        ctx["live_files"] = read_files(d.log_path, state, run)
        check(any(p.endswith("agentlab.db-wal") for p in ctx["live_files"]),
              "no WAL file while the daemon runs")
    finally:
        rc = d.stop() if d else 0
        for _, _, _, cleanup in SOURCES:
            if cleanup:
                cleanup(ctx)
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM")

    # every file the daemon wrote, again after it stopped: its log, the
    # database, job logs and artifacts, whatever is left in the run dir
    check(os.path.exists(os.path.join(state, "agentlab.db")), "no database")
    files = ctx["live_files"]
    files.update({"after stop: " + p: data
                  for p, data in read_files(d.log_path, state, run).items()})
    needles = [(s, e) for s in secrets for e in encodings(s)]
    hits = []
    for path, data in files.items():
        hits += [(path, s) for s, e in needles if e in data]
    for what, data in ctx["served"]:
        hits += [(what, s) for s, e in needles if e in data]
    searched = len(files) + len(ctx["served"])
    if hits:
        for where, s in hits:
            print(f"  secret {s[:6]}... found in {where}", file=sys.stderr)
        fail(f"{len(hits)} secret occurrences in {searched} places")
    names = ", ".join(sorted({os.path.basename(f) for f in files if "agentlab.db" in f}))
    names += f"; {sum(len(x) for x in files.values()) >> 10} KiB of files"
    print(f"secrets audit: {len(secrets)} secrets x {len(needles) // len(secrets)} encodings, "
          f"{searched} files and responses searched ({names}): no hits")
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("secrets audit: ok")


if __name__ == "__main__":
    main()
