#!/usr/bin/env python3
"""The GitHub source routes each queued job before it makes a runner (no VM boots).

  github_routing.py AGENTLABD

agentlabd polls tests/fakes/github_fake.py (every request checked against
GitHub's OpenAPI description) with two pools, `small` (labels small, 1 vCPU,
512 MiB, max_memory 1G) and `big` (labels big, 2 vCPUs, 1536 MiB, max_cpus 2). The image is
a stand-in whose disk is no disk: a runner's VM fails before it boots, which
is all this test needs, since what is asserted is decided before.

Asserted:
  - [self-hosted, big]: a runner whose labels include big; its agentlab job
    is in pool big with 2 vCPUs and 1536 MiB
  - [self-hosted, small, agentlab-mem-1g]: a runner (its labels include the
    size label) whose job is in pool small with 1 vCPU and 1024 MiB
  - no other job gets a runner (as the VMs fail, a job gets up to three)
  - [self-hosted, k8s] (no pool carries k8s... nor is there a pool without
    labels), [self-hosted, big, agentlab-cpu-4] (above max_cpus) and
    [self-hosted, big, agentlab-cpu-x] (a bad form): no runner, and exactly
    one warning each naming the job, although the fake changes their runs
    so that every poll lists them again
  - [self-hosted, gpu]: not this source's; no runner, no warning
  - no protocol error seen by the fake
"""
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "fakes"))
sys.path.insert(0, os.path.join(HERE, "..", "support"))
from libvirt_cleanup import destroy_test_pools  # noqa: E402
from github_fake import ContractMissing, FakeGitHub, find_contract  # noqa: E402

REPO = "octo-org/routing"
TOKEN = "ghp_routingTestToken0123456789abcdefABCD"
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


def fake_image(state, name):
    """An image the catalog lists, whose files are not what they claim."""
    d = os.path.join(state, "images", name)
    os.makedirs(d)
    for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
        with open(os.path.join(d, f), "wb") as out:
            out.write(b"not an image\n")
    manifest = {"schema": 1, "name": name, "recipe": "import", "recipe_hash": "",
                "created": "2026-01-01T00:00:00.000Z", "builder_version": "test",
                "disk": "disk.qcow2", "format": "qcow2", "size": 13,
                "virtual_size": 67108864, "sha256": "0" * 64, "filesystem_label": None,
                "kernel": "vmlinuz", "initrd": "initrd.img", "kernel_version": None,
                "cmdline": "console=ttyS0", "guest_helper_sha256": None,
                "build_ms": {"bootstrap": 0, "disk": 0, "seal": 0, "checksum": 0},
                "packages": {}}
    with open(os.path.join(d, "manifest.json"), "w") as out:
        json.dump(manifest, out)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    agentlabd = sys.argv[1]
    try:
        spec, _ = find_contract()
    except ContractMissing as e:
        print(f"github_routing: FAIL: {e}", file=sys.stderr)
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="al-ghrt.")
    run = tempfile.mkdtemp(prefix="al-ghrr.")
    for d in (tmp, run):
        os.chmod(d, 0o711)
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    os.chmod(state, 0o711)
    fake_image(state, "stand-in")
    token_file = os.path.join(tmp, "token")
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    os.chmod(token_file, 0o600)

    fake = FakeGitHub(spec, REPO, token=TOKEN).start()
    conf = os.path.join(tmp, "agentlab.conf")
    with open(conf, "w") as f:
        f.write(f"""[agent]
log_level = info
image = stand-in
pool = small
[backend "local"]
max_vms = 4
[pool "small"]
labels = small
cpus = 1
memory = 512M
max_memory = 1G
[pool "big"]
labels = big
cpus = 2
memory = 1536M
max_cpus = 2
[source "gh"]
type = github
url = {fake.url}
repo = {REPO}
token_file = {token_file}
labels = k8s
pools = small, big
poll = always
poll_interval = 1s
max_runners = 4
""")
    env = dict(os.environ, AGENTLAB_CONFIG=conf, AGENTLAB_STATE_DIR=state, AGENTLAB_RUN_DIR=run)
    log_path = os.path.join(tmp, "daemon.log")
    logf = open(log_path, "wb")

    def log():
        return open(log_path, "rb").read().decode(errors="replace")

    def dump():
        print(log()[-6000:], file=sys.stderr)
        print(f"--- fake errors: {fake.errors}", file=sys.stderr)
    DUMP.append(dump)

    jobs = {
        101: ["self-hosted", "big"],
        102: ["self-hosted", "small", "agentlab-mem-1g"],
        103: ["self-hosted", "k8s"],
        104: ["self-hosted", "big", "agentlab-cpu-4"],
        105: ["self-hosted", "big", "agentlab-cpu-x"],
        106: ["self-hosted", "gpu"],
    }
    for i, (jid, labels) in enumerate(jobs.items()):
        fake.add_run(500 + i, [{"id": jid, "name": f"job-{jid}", "labels": labels,
                                "status": "queued"}])

    def engine_job(runner):
        con = sqlite3.connect(os.path.join(state, "agentlab.db"))
        try:
            row = con.execute("select pool, spec from jobs where source_type = 'github' and "
                              "source_ref = ?", (runner,)).fetchone()
        finally:
            con.close()
        return (row[0], json.loads(row[1])) if row else None

    t0 = time.time()
    # AL_DAEMON_WRAPPER: valgrind and its options, for the _valgrind variant
    wrapper = os.environ.get("AL_DAEMON_WRAPPER", "").split()
    daemon = subprocess.Popen(wrapper + [agentlabd], env=env, stderr=logf, stdout=logf)
    rc = None
    try:
        check(fake.wait(lambda: len(fake.jits) >= 2, 60), "the routed jobs got no runners")
        # every poll lists the refused jobs again: their runs keep changing
        # (until each job was listed 4 more times; slower under valgrind)
        listed = fake.count("GET", r"/actions/runs/\d+/jobs")
        end = time.time() + 90
        while (fake.count("GET", r"/actions/runs/\d+/jobs") < listed + 4 * len(jobs) and
               time.time() < end):
            for k, jid in enumerate(jobs):
                fake.set_job(500 + k, jid, name=f"job-{jid}")
            time.sleep(1)
        n_polls = fake.count("GET", r"/actions/runs/\d+/jobs") - listed
        check(n_polls >= 4 * len(jobs), f"only {n_polls} more job listings")
        # a runner's VM fails at once here, so a job gets up to 3 runners
        # (MAX_RUNNERS_PER_JOB): every one must be for job 101 or 102
        big = [j for j in fake.jits if "big" in j["labels"]]
        small = [j for j in fake.jits if "agentlab-mem-1g" in j["labels"]]
        check(big and small and len(big) + len(small) == len(fake.jits) and
              len(big) <= 3 and len(small) <= 3,
              f"runner labels: {[j['labels'] for j in fake.jits]}")
        big, small = big[0], small[0]
        check("self-hosted" in big["labels"] and "k8s" in big["labels"],
              f"the source's labels are missing: {big['labels']}")
        check("small" in small["labels"], f"small runner labels {small['labels']}")

        jb = wait_for(lambda: engine_job(big["runner"]), 20)
        js = wait_for(lambda: engine_job(small["runner"]), 20)
        check(jb and js, "no agentlab jobs for the runners")
        check(jb[0] == "big", f"the big job went to pool {jb[0]}")
        check(jb[1]["resources"]["cpus"] == 2 and jb[1]["resources"]["memory_mb"] == 1536,
              f"the big job's size: {jb[1]['resources']}")
        check(js[0] == "small", f"the small job went to pool {js[0]}")
        check(js[1]["resources"]["cpus"] == 1 and js[1]["resources"]["memory_mb"] == 1024,
              f"the small job's size: {js[1]['resources']}")

        text = log()
        for jid, want in ((103, "no pool takes a job with labels self-hosted,k8s"), (104, "max_cpus"), (105, "agentlab-cpu-x")):
            lines = [ln for ln in text.splitlines()
                     if f"job {jid} (" in ln and "no runner is made" in ln]
            check(len(lines) == 1, f"job {jid}: {len(lines)} warnings: {lines}")
            check(want in lines[0], f"job {jid}: the warning does not say {want!r}: {lines[0]}")
        check(not [ln for ln in text.splitlines() if "job 106 (" in ln and "WARN" in ln.upper()
                   and "no runner" in ln], "the foreign job was warned about")
        check("job 106 (job-106)" in text and "not all among" in text,
              "the foreign job was not explained")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = "killed"
        logf.close()
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM")
    check(not fake.errors, "the fake saw protocol errors:\n  " + "\n  ".join(fake.errors))
    fake.stop()
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print(f"github_routing: ok ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
