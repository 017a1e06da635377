#!/usr/bin/env python3
"""agentlabd as a GitHub Actions runner farm, end to end against the fake GitHub.

  github_test.py AGENTLABD AGENTLAB AGENTLAB_GUEST VM_INIT

One daemon (GitHub App auth, webhooks and polling) against
tests/fakes/github_fake.py, which checks every request against GitHub's
OpenAPI description and verifies the App JWT. The VMs boot a variant of the
micro image whose /opt/actions-runner/run.sh is a stand-in runner
(github_runner/): it decodes the JIT config it was given and prints the
runner name and a digest of the decoded config. VMs have no NIC, so the
fake plays GitHub's side of the job: signed workflow_job in_progress and
completed deliveries, and the runner list.

Asserted:
  - runners this daemon's name prefix left behind are deleted at start; a
    busy one (422) is kept; another farm's runner is not touched
  - a 403 with Retry-After stops every API call until then, then the call
    is repeated
  - a delivery with a bad signature is refused with 401 and logged without
    its payload
  - a queued job whose labels are not all the source's gets no runner
  - a job with the label big (found by polling) gets a runner with that
    label whose VM is in pool big, with its 2 vCPUs and 768 MiB
  - GitHub's real queued payload yields exactly one JIT runner and one VM,
    whose stand-in runner decoded the config it was given (digest checked);
    a redelivery (same X-GitHub-Delivery) and a second delivery for the same
    job create nothing more
  - in_progress/completed deliveries end the runner; the VM ends with it
  - agentlabd SIGKILLed while a runner's VM runs: restarted, it destroys the
    VM and deletes the runner; the still queued job gets a new runner
  - a runner that never takes its job is removed after runner_idle_timeout,
    with its VM
  - no JIT config (encoded, decoded, or a part of it), installation token or
    webhook secret in the daemon log, the state dir (SQLite files, job logs)
    or the API's answers; no protocol error seen by the fake; no VM left
"""
import copy
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
from libvirt_cleanup import destroy_test_pools  # noqa: E402
from github_fake import ContractMissing, FakeGitHub, find_contract, send_webhook  # noqa: E402
from skip import SKIP_EXIT  # noqa: E402

SECRET = "whsec-agentlab-test-Zq8v2LkP"
REPO = "lineville/elastic-machines-testing"  # the repository of GitHub's queued example
SOURCE = "gh"
IDLE_S = 90  # a micro VM may take over 40 s to boot under TCG on a loaded host

DUMP = []


def fail(msg):
    for d in DUMP:
        d()
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def wait_for(cond, timeout, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return cond()


def all_files(top):
    for dirpath, _, names in os.walk(top):
        for n in names:
            yield os.path.join(dirpath, n)


def read(path):
    try:
        return open(path, "rb").read().decode(errors="replace")
    except OSError:
        return ""


def domains():
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                          capture_output=True, text=True).stdout


def api_get(sock, path):
    """GET on the daemon's unix-socket API; returns the body."""
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(10)
            self.sock.connect(sock)
    c = Conn("localhost", timeout=10)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.read()
    finally:
        c.close()


def main():
    if len(sys.argv) != 5:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    agentlabd, agentlab, guest, vm_init = sys.argv[1:]
    try:
        spec, examples_path = find_contract()
    except ContractMissing as e:
        # a fake without its contract would test nothing: fail, do not skip
        print(f"github: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    examples = json.load(open(examples_path))
    queued = next(x for x in examples if x["action"] == "queued" and
                  x["repository"]["full_name"] == REPO)
    in_progress = next(x for x in examples if x["action"] == "in_progress")
    completed = next(x for x in examples if x["action"] == "completed" and
                     x["workflow_job"]["conclusion"] == "success")
    job_id = queued["workflow_job"]["id"]
    run_id = queued["workflow_job"]["run_id"]

    tmp = tempfile.mkdtemp(prefix="al-gh.")
    run = tempfile.mkdtemp(prefix="al-ghr.")  # short: socket paths
    for d in (tmp, run):
        os.chmod(d, 0o711)
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    os.chmod(state, 0o711)

    # the test image: micro plus the stand-in runner (and what it uses)
    env_img = dict(os.environ, AGENTLAB_STATE_DIR=state, AGENTLAB_CONFIG="/dev/null",
                   MICRO_NAME="micro-actions", MICRO_BINS="base64 sed",
                   MICRO_EXTRA=os.path.join(HERE, "github_runner"))
    p = subprocess.run([os.path.join(HERE, "micro_image.sh"), agentlab, guest, vm_init],
                       env=env_img, capture_output=True, text=True)
    if p.returncode == SKIP_EXIT:
        # micro_image.sh skipped, which tests/support/skip.sh allowed
        print(f"github: {p.stdout}{p.stderr}", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    check(p.returncode == 0, f"building the test image failed: {p.stdout}{p.stderr}")

    key = os.path.join(tmp, "app.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    secret_file = os.path.join(tmp, "webhook.secret")
    with open(secret_file, "w") as f:
        f.write(SECRET + "\n")
    os.chmod(secret_file, 0o600)

    fake = FakeGitHub(spec, REPO, app={"id": "424242", "key": key, "installation": 77},
                      jit_mode="exit").start()
    # runners of this farm (same state dir and source) that a crash left
    prefix = "agentlab-%s-" % hashlib.sha256(f"{state}\n{SOURCE}".encode()).hexdigest()[:8]
    leaked = fake.add_runner(prefix + "0badc0de")
    busy = fake.add_runner(prefix + "0b0b0b0b", busy=True)
    foreign = fake.add_runner("another-farm-runner-1")
    # the first poll is rate limited
    fake.fail_next(r"^GET /repos/[^ ]*/actions/runs$", 403,
                   {"Retry-After": "3", "X-RateLimit-Remaining": "0",
                    "X-RateLimit-Reset": str(int(time.time()) + 3)})

    conf = os.path.join(tmp, "agentlab.conf")
    with open(conf, "w") as f:
        f.write(f"""[agent]
log_level = info
image = micro-actions
boot_timeout = 20m
[backend "local"]
max_vms = 2
[pool "default"]
[pool "big"]
labels = big
cpus = 2
memory = 768M
[source "{SOURCE}"]
type = github
url = {fake.url}/
repo = {REPO}
app_id = 424242
app_key_file = {key}
labels = k8s
pools = default, big
max_runners = 2
webhook_listen = 127.0.0.1:0
webhook_secret_file = {secret_file}
poll = always
poll_interval = 3s
runner_idle_timeout = {IDLE_S}s
""")
    env = dict(os.environ, AGENTLAB_CONFIG=conf, AGENTLAB_STATE_DIR=state, AGENTLAB_RUN_DIR=run)
    log_path = os.path.join(tmp, "daemon.log")
    logf = open(log_path, "wb")

    def log():
        return open(log_path, "rb").read().decode(errors="replace")

    def dump():
        print(log()[-8000:], file=sys.stderr)
        print("--- fake requests:", file=sys.stderr)
        for r in fake.requests:
            print(f"  {r[0]:.2f} {r[1]} {r[2]} -> {r[3]}", file=sys.stderr)
        print(f"--- fake errors: {fake.errors}", file=sys.stderr)
    DUMP.append(dump)

    t0 = time.time()
    daemon = subprocess.Popen([agentlabd], env=env, stderr=logf, stdout=logf)
    rc = None
    try:
        m = wait_for(lambda: re.search(r"webhooks on port (\d+)", log()), 60)
        check(m, "the daemon did not start its webhook listener")
        port = int(m.group(1))

        def hook(body, **kw):
            return send_webhook(port, body, kw.pop("secret", SECRET), **kw)

        # -- start-up sweep
        check(fake.wait(lambda: leaked.id not in fake.runners, 60), "the leaked runner was kept")
        check(wait_for(lambda: fake.count("DELETE", rf"/actions/runners/{busy.id}$") >= 1, 30),
              "the busy leftover was not tried")
        check(busy.id in fake.runners and foreign.id in fake.runners,
              "a busy or foreign runner was deleted")

        # -- rate limit: nothing for Retry-After, then the same call again
        check(wait_for(lambda: any(r[3] == 403 for r in fake.requests), 30), "no 403 was served")
        check(wait_for(lambda: fake.count("GET", r"/actions/runs\?") >= 2, 30),
              "the rate-limited call was not repeated")
        t403 = next(r[0] for r in fake.requests if r[3] == 403)
        early = [r for r in fake.requests if t403 + 0.5 < r[0] < t403 + 2.9]
        check(not early, f"API calls during Retry-After: {early}")
        check("rate limited (HTTP 403); no API calls for 3 s" in log(), "the back-off was not logged")

        # -- a bad signature
        bad = copy.deepcopy(queued)
        bad["workflow_job"]["id"] = 900001
        bad["workflow_job"]["name"] = "payload-marker-badsig-5d1e"
        status, text, delivery = hook(bad, secret="not-the-secret")
        check(status == 401, f"a bad signature got {status} {text}")
        check(wait_for(lambda: f"webhook delivery {delivery}" in log(), 10),
              "the bad signature was not logged")
        check("payload-marker-badsig" not in log(), "a rejected payload was logged")
        status, _, _ = hook(bad, signature="")
        check(status == 401, f"a delivery without a signature got {status}")

        # -- labels that are not all the pool's
        other = copy.deepcopy(queued)
        other["workflow_job"]["id"] = 900002
        other["workflow_job"]["labels"] = ["self-hosted", "k8s", "gpu"]
        status, _, _ = hook(other)
        check(status == 202, f"the non-matching job got {status}")

        # -- GitHub's real queued payload, as delivered
        t_hook = time.time()
        status, text, delivery = hook(queued)
        check(status == 202, f"the queued delivery got {status} {text}")
        fake.add_run(run_id, [{"id": job_id, "name": queued["workflow_job"]["name"],
                               "labels": queued["workflow_job"]["labels"], "status": "queued"}])
        status, text, _ = hook(queued, delivery=delivery)
        check(status == 200 and "duplicate" in text, f"a redelivery got {status} {text}")
        status, _, _ = hook(queued)  # a new delivery id, the same job
        check(status == 202, f"a second delivery got {status}")
        check(fake.wait(lambda: len(fake.jits) >= 1, 60), "no JIT runner was generated")
        jit = fake.jits[0]
        t_jit = fake.requests[[i for i, r in enumerate(fake.requests)
                               if r[2].endswith("generate-jitconfig")][0]][0]
        check(jit["runner"].startswith(prefix), f"runner name {jit['runner']}")
        check(sorted(jit["labels"]) == sorted(["self-hosted", "Linux", "X64", "k8s"]),
              f"runner labels {jit['labels']}")

        def engine_id(runner):
            db = os.path.join(state, "agentlab.db")
            con = sqlite3.connect(db)
            try:
                row = con.execute("select id from jobs where source_type = 'github' and "
                                  "source_ref = ?", (runner,)).fetchone()
            finally:
                con.close()
            return row[0] if row else None

        eid = wait_for(lambda: engine_id(jit["runner"]), 30)
        check(eid, "no agentlab job for the runner")
        out = os.path.join(state, "jobs", eid, "output.log")

        def printed():
            try:
                return open(out, "rb").read().decode(errors="replace")
            except OSError:
                return ""
        check(wait_for(lambda: "stand-in runner: agentName=" in printed(), 600),
              "the stand-in runner never started")
        t_vm = time.time()
        want = (f"stand-in runner: agentName={jit['runner']} mode=exit "
                f"config-sha256={jit['sha256']}")
        check(want in printed(), f"the runner did not get the config: {printed()!r}")

        # GitHub's side of the job: the runner takes it, runs it, is removed
        fake.take_job(jit["runner"])
        fake.set_job(run_id, job_id, status="in_progress", runner_name=jit["runner"],
                     runner_id=jit["id"])
        ip = copy.deepcopy(in_progress)
        ip["repository"] = queued["repository"]
        ip["workflow_job"].update(id=job_id, run_id=run_id, labels=queued["workflow_job"]["labels"],
                                  runner_id=jit["id"], runner_name=jit["runner"])
        check(hook(ip)[0] == 202, "in_progress refused")
        check(wait_for(lambda: f"runner {jit['runner']} took job {job_id}" in log(), 10),
              "in_progress was not noticed")
        check(wait_for(lambda: "stand-in runner: job done" in printed(), 120),
              "the stand-in runner did not finish")
        fake.finish_job(jit["runner"])
        fake.set_job(run_id, job_id, status="completed", conclusion="success")
        cp = copy.deepcopy(completed)
        cp["repository"] = queued["repository"]
        cp["workflow_job"].update(id=job_id, run_id=run_id, labels=queued["workflow_job"]["labels"],
                                  runner_id=jit["id"], runner_name=jit["runner"])
        check(hook(cp)[0] == 202, "completed refused")

        def job_state(e):
            con = sqlite3.connect(os.path.join(state, "agentlab.db"))
            try:
                row = con.execute("select state from jobs where id = ?", (e,)).fetchone()
            finally:
                con.close()
            return row[0] if row else None
        check(wait_for(lambda: job_state(eid) in ("succeeded", "SUCCEEDED"), 120),
              f"the runner's VM job ended {job_state(eid)}")
        check(len(fake.jits) == 1, f"{len(fake.jits)} JIT runners for one job")
        t_end1 = time.time()

        # -- found by polling; agentlabd crashes while the runner's VM runs: the
        #    restarted daemon destroys the VM and deletes the runner
        fake.jit_mode = "hold"
        #    (the job wants the big pool: its runner has the label, its VM
        #    the pool's size)
        fake.add_run(run_id + 1, [{"id": job_id + 1, "name": "poll-job",
                                   "labels": ["self-hosted", "k8s", "big"], "status": "queued"}])
        check(fake.wait(lambda: len(fake.jits) >= 2, 60), "polling did not find the job")
        jit2 = fake.jits[1]
        check("big" in jit2["labels"], f"the big job's runner has labels {jit2['labels']}")
        eid2 = wait_for(lambda: engine_id(jit2["runner"]), 30)
        check(eid2, "no agentlab job for the polled runner")
        check(wait_for(lambda: f"agentName={jit2['runner']} mode=hold" in
                       read(os.path.join(state, "jobs", eid2, "output.log")), 600),
              "the polled job's runner never started")
        con = sqlite3.connect(os.path.join(state, "agentlab.db"))
        pool2 = con.execute("select pool from jobs where id = ?", (eid2,)).fetchone()[0]
        con.close()
        check(pool2 == "big", f"the big job's runner went to pool {pool2}")
        xml = ""
        for name in domains().split():
            if eid2 in name:
                xml = subprocess.run(["virsh", "-c", "qemu:///system", "dumpxml", name],
                                     capture_output=True, text=True).stdout
        check(re.search(r"<vcpu[^>]*>2</vcpu>", xml) and
              re.search(r"<memory unit='KiB'>786432</memory>", xml),
              f"the big job's VM is not the pool's size:\n{xml[:1500]}")
        daemon.kill()
        daemon.wait(30)
        logf.close()
        logf = open(log_path, "ab")
        t_restart = time.time()
        daemon = subprocess.Popen([agentlabd], env=env, stderr=logf, stdout=logf)
        check(fake.wait(lambda: fake.runner_named(jit2["runner"]) is None, 60),
              "the crashed daemon's runner was not deleted after the restart")
        t_swept = time.time()
        check(wait_for(lambda: job_state(eid2) in ("error", "ERROR"), 60),
              f"the crashed daemon's runner job ended {job_state(eid2)}")
        check(wait_for(lambda: eid2 not in domains(), 60), "the crashed daemon's VM was kept")

        # -- the job is still queued: a new runner, which never takes it and
        #    is removed after runner_idle_timeout, with its VM
        check(fake.wait(lambda: len(fake.jits) >= 3, 60), "the still queued job got no runner")
        jit3 = fake.jits[2]
        t_jit3 = time.time()
        eid3 = wait_for(lambda: engine_id(jit3["runner"]), 30)
        check(eid3, "no agentlab job for the new runner")
        check(fake.wait(lambda: fake.runner_named(jit3["runner"]) is None, IDLE_S + 90),
              "the idle runner was not deleted")
        t_del = time.time()
        fake.set_job(run_id + 1, job_id + 1, status="completed", conclusion="cancelled")
        check(wait_for(lambda: job_state(eid3) in ("canceled", "CANCELED"), 120),
              f"the idle runner's VM job ended {job_state(eid3)}")
        check(t_del - t_jit3 >= IDLE_S - 5, f"the idle runner went after {t_del - t_jit3:.0f}s")

        # nothing leaked through the API
        sock = os.path.join(run, "agentlabd.sock")
        api_out = b""
        for path in ("/v1/jobs", f"/v1/jobs/{eid}", f"/v1/jobs/{eid}/events",
                     f"/v1/jobs/{eid}/logs", f"/v1/jobs/{eid2}", f"/v1/jobs/{eid3}",
                     "/v1/status"):
            api_out += api_get(sock, path)
        t_stop = time.time()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = "killed"
        logf.close()
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM")
    text = log()
    check(len(fake.jits) == 3, f"{len(fake.jits)} JIT runners in all (want 3)")
    check(fake.count("POST", "generate-jitconfig") == 3, "more generate-jitconfig calls than runners")
    check("900002" in text and "not all among" in text, "the non-matching job was not explained")

    # secrets: nowhere
    secrets = [SECRET] + [t["token"] for t in fake.tokens]
    for j in fake.jits:
        secrets += [j["encoded"], j["decoded"]] + j["parts"]
    for s in secrets:
        check(s not in text, "a secret is in the daemon log")
        check(s.encode() not in api_out, "a secret is in the API's answers")
    hits = []
    for p in all_files(state):
        if p.startswith(os.path.join(state, "images")):
            continue
        data = open(p, "rb").read()
        hits += [(p, s[:12]) for s in secrets if s.encode() in data]
    check(not hits, f"secrets found in files: {hits}")

    names = domains()
    check(all(e not in names for e in (eid, eid2, eid3)), "a runner's domain is left")
    check(not fake.errors, "the fake saw protocol errors:\n  " + "\n  ".join(fake.errors))
    fake.stop()

    reqs = fake.requests
    print(f"github: webhook -> generate-jitconfig {1000 * (t_jit - t_hook):.0f} ms, "
          f"-> runner started in the VM {t_vm - t_hook:.1f}s")
    per_job = {}
    for r in reqs:
        if t_hook <= r[0] <= t_end1:
            kind = re.sub(r"\d+", "N", r[1] + " " + r[2].split("?")[0])
            per_job[kind] = per_job.get(kind, 0) + 1
    print(f"github: API calls from the webhook to the job's end: {per_job}")
    print(f"github: API calls in all: {len(reqs)} ({fake.not_modified} answered 304)")
    print(f"github: after a SIGKILL, the restarted daemon deleted the runner in "
          f"{t_swept - t_restart:.1f}s")
    print(f"github: idle runner removed {t_del - t_jit3:.0f}s after it was made; "
          f"SIGTERM handled in {time.time() - t_stop:.1f}s; whole test {time.time() - t0:.0f}s")
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("github: ok")


if __name__ == "__main__":
    main()
