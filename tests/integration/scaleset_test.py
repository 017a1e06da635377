#!/usr/bin/env python3
"""agentlabd as a GitHub runner scale set listener against the strict fake
(tests/fakes/scaleset_fake.py, SCALESET.md section 7).

  scaleset_test.py jobs AGENTLABD AGENTLAB AGENTLAB_GUEST VM_INIT
  scaleset_test.py idle AGENTLABD SECONDS HOLD_S
  scaleset_test.py protocol AGENTLABD

jobs: micro-image VMs whose /opt/actions-runner/run.sh is the stand-in runner
(github_runner/): it prints the runner name and a digest of the JIT config it
was given. VMs have no NIC, so the test plays GitHub's side: when a runner's VM
prints that it started, the fake sends JobStarted; when it prints that the job
is done, JobCompleted. Asserted:
  - a 409 at the first session creation is retried and logged, no crash
  - 5 jobs queued at once (one message of 5 JobAvailable) on a pool with
    max_vms = 2 all run, each in its own VM with its own JIT config, never
    more than 2 VMs at once, never more than 2 jobs acquired at once
  - an expired message-queue token (401) is refreshed; a lost session (404)
    is replaced; no job lost or duplicated
  - SIGKILL while a runner runs a job, then a restart: the VM is destroyed,
    the runner removed from the scale set, a new session opened (after the
    orphaned one's 409s)
  - SIGTERM deletes the session; no secret in the log or the state dir; the
    fake saw no protocol violation

idle: no jobs; counts the requests agentlabd makes in SECONDS with the fake
holding each long poll HOLD_S seconds, and prints the rate per hour.
"""
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
from github_fake import ContractMissing, find_contract  # noqa: E402
from scaleset_fake import ScalesetFake  # noqa: E402
from libvirt_cleanup import destroy_test_pools  # noqa: E402
from skip import SKIP_EXIT  # noqa: E402

REPO = "octo-org/app"
SOURCE = "ss"
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


def read(path):
    try:
        return open(path, "rb").read().decode(errors="replace")
    except OSError:
        return ""


def api_get(sock, path):
    """GET on the daemon's unix-socket API: (status, body)."""
    class Conn(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(20)
            self.sock.connect(sock)
    c = Conn("localhost", timeout=20)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read().decode(errors="replace")
    finally:
        c.close()


def source_status(sock):
    try:
        status, body = api_get(sock, "/v1/pools")
    except OSError:
        return None
    if status != 200:
        return None
    return next((x for x in json.loads(body).get("sources", []) if x["name"] == SOURCE), None)


def domains():
    return subprocess.run(["virsh", "-c", "qemu:///system", "list", "--name"],
                          capture_output=True, text=True).stdout.split()


class Farm:
    def __init__(self, agentlabd, fake, tmp, run, state, key, image=None):
        self.agentlabd = agentlabd
        self.fake = fake
        self.state = state
        self.conf = os.path.join(tmp, "agentlab.conf")
        with open(self.conf, "w") as f:
            f.write(f"""[agent]
log_level = info
{"image = " + image if image else ""}
boot_timeout = 20m
[backend "local"]
max_vms = 2
[source "{SOURCE}"]
type = github
mode = scaleset
url = {fake.url}
github_url = {fake.url}
repo = {REPO}
app_id = 424242
app_key_file = {key}
scale_set_name = agentlab-vm
labels = linux
max_runners = 4
runner_idle_timeout = 60s
""")
        self.env = dict(os.environ, AGENTLAB_CONFIG=self.conf, AGENTLAB_STATE_DIR=state,
                        AGENTLAB_RUN_DIR=run)
        self.log_path = os.path.join(tmp, "daemon.log")
        self.logf = open(self.log_path, "ab")
        self.proc = None

    def start(self):
        # AL_DAEMON_WRAPPER: a command put in front (valgrind)
        wrap = os.environ.get("AL_DAEMON_WRAPPER", "").split()
        self.proc = subprocess.Popen(wrap + [self.agentlabd], env=self.env, stderr=self.logf,
                                     stdout=self.logf)

    def log(self):
        return read(self.log_path)

    def engine_id(self, runner):
        con = sqlite3.connect(os.path.join(self.state, "agentlab.db"))
        try:
            row = con.execute("select id from jobs where source_type = 'github' and "
                              "source_ref = ?", (runner,)).fetchone()
        except sqlite3.Error:
            row = None
        finally:
            con.close()
        return row[0] if row else None

    def output(self, eid):
        return read(os.path.join(self.state, "jobs", eid, "output.log")) if eid else ""

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return "killed"


def held_at_acquisitions(farm, fake, started):
    """The most jobs held at any acquisition: acquired at or before it and
    bound to a runner whose engine job had not ended yet (its final
    transition, from the daemon's database, in wall-clock ms). A job
    acquired but never started by a runner counts as held throughout."""
    ended = {}
    con = sqlite3.connect(os.path.join(farm.state, "agentlab.db"))
    try:
        for runner, rid in started.items():
            eid = farm.engine_id(runner)
            row = con.execute("select max(at_ms) from events where job_id = ? and to_state in "
                              "('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')",
                              (eid,)).fetchone() if eid and rid else None
            if row and row[0] is not None:
                ended[rid] = row[0]
    finally:
        con.close()
    most = 0
    for t in fake.acquired_ms.values():
        held = sum(1 for rid, a in fake.acquired_ms.items()
                   if a <= t and ended.get(rid, float("inf")) > t)
        most = max(most, held)
    return most


def make_key(tmp):
    key = os.path.join(tmp, "app.pem")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    return key


def dirs(prefix):
    tmp = tempfile.mkdtemp(prefix=prefix)
    run = tempfile.mkdtemp(prefix=prefix + "r.")
    state = os.path.join(tmp, "state")
    os.makedirs(state)
    for d in (tmp, run, state):
        os.chmod(d, 0o711)
    return tmp, run, state


def contract():
    try:
        return find_contract()[0]
    except ContractMissing as e:
        print(f"scaleset: FAIL: {e}", file=sys.stderr)
        sys.exit(1)


def dump_for(farm, fake):
    def dump():
        print(farm.log()[-12000:], file=sys.stderr)
        print("--- fake requests (last 80):", file=sys.stderr)
        for r in fake.requests[-80:]:
            print(f"  {r[0]:.2f} {r[1]} {r[2]} -> {r[3]}", file=sys.stderr)
        print(f"--- fake errors: {fake.errors}", file=sys.stderr)
    return dump


def idle(agentlabd, seconds, hold):
    tmp, run, state = dirs("al-ssi.")
    key = make_key(tmp)
    fake = ScalesetFake(contract(), REPO, app={"id": "424242", "key": key, "installation": 77})
    fake.hold_s = hold
    fake.start()
    farm = Farm(agentlabd, fake, tmp, run, state, key)
    DUMP.append(dump_for(farm, fake))
    farm.start()
    try:
        check(wait_for(lambda: "session " in farm.log() and fake.session, 60),
              "no session was created")
        time.sleep(2)
        n0, t0 = len(fake.requests), time.time()
        time.sleep(seconds)
        reqs = fake.requests[n0:]
        dt = time.time() - t0
    finally:
        rc = farm.stop()
    check(rc == 0, f"agentlabd exited {rc}")
    check(fake.sessions_deleted == 1 and fake.session is None, "the session was not deleted")
    boot = [f"{r[1]} {r[2].split('?')[0]} -> {r[3]}" for r in fake.requests[:12]]
    print("scaleset idle: start-up requests:\n  " + "\n  ".join(boot))
    check(not fake.errors, "protocol violations:\n  " + "\n  ".join(fake.errors))
    kinds = {}
    for r in reqs:
        k = r[1] + " " + re.sub(r"[0-9a-f-]{36}", "SID", r[2].split("?")[0])
        kinds[k] = kinds.get(k, 0) + 1
    others = [k for k in kinds if not k.startswith("GET /mq/")]
    check(not others, f"requests other than the long poll while idle: {kinds}")
    check(len(reqs) <= dt / hold + 2, f"{len(reqs)} polls in {dt:.0f} s: not one long poll at a time")
    print(f"scaleset idle: {len(reqs)} requests in {dt:.0f} s with {hold} s long polls "
          f"= {len(reqs) * 3600 / dt:.0f} per hour: {kinds}")
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)


def protocol(agentlabd):
    """No VM (the pool's image does not exist, so every runner's VM is
    refused): 409, a burst beyond capacity, runners removed after their VM
    failed with a growing back-off, 401, 404, SIGTERM. AGENTLABD may be a
    wrapper (valgrind)."""
    tmp, run, state = dirs("al-ssp.")
    key = make_key(tmp)
    fake = ScalesetFake(contract(), REPO, app={"id": "424242", "key": key, "installation": 77})
    fake.hold_s = 0.5
    fake.admin_ttl = 75  # admin tokens are replaced 60 s before exp: every ~15 s here
    fake.start()
    fake.conflict_next(2)
    farm = Farm(agentlabd, fake, tmp, run, state, key, image="no-such-image")
    DUMP.append(dump_for(farm, fake))
    sock = os.path.join(run, "agentlabd.sock")
    farm.start()
    try:
        # the session state in /v1/pools while the service answers 409
        st = wait_for(lambda: (lambda x: x if x and "conflict" in x["state"] else None)(
            source_status(sock)), 60, step=0.1)
        check(st, "the 409s were not shown in /v1/pools")
        check(st["kind"] == "github_scaleset" and st["gauges"]["session_conflicts"] >= 1,
              f"source status during the 409s: {st}")
        check(wait_for(lambda: re.search(r"session \S+ on scale set", farm.log()), 120),
              "no session")
        check(fake.conflicts_served == 2, f"{fake.conflicts_served} 409s met (want 2)")
        fake.queue_jobs(5)
        check(wait_for(lambda: fake.acquired_total >= 1, 30), "nothing acquired")
        check(wait_for(lambda: len(fake.jits) >= 3, 60), "no runners were retried")
        time.sleep(5)
        check(fake.max_acquired <= 2, f"{fake.max_acquired} jobs acquired with room for 2")
        check("before it took a job" in farm.log() or "refused" in farm.log(),
              "a failed runner VM was not reported")
        n = len(fake.jits)
        time.sleep(10)
        check(len(fake.jits) - n <= 4, f"{len(fake.jits) - n} JIT configs in 10 s: no back-off")
        # the statistics of the last message, the session state, the last message time
        st = source_status(sock)
        check(st and st["state"] == "polling", f"source status: {st}")
        g = st["gauges"]
        check(g["jobs_assigned"] == fake.stats()["totalAssignedJobs"] and g["messages"] >= 1 and
              0 <= st["last_message_age_s"] < 30 and "runners_registered" in g and
              "jobs_available" in g and "runners_busy" in g and "runners_idle" in g,
              f"source status: {st}")
        status, metrics = api_get(sock, "/metrics")
        check(status == 200 and re.search(r'agentlab_source_gauge\{source="ss",'
                                          r'kind="github_scaleset",name="jobs_assigned"\} \d+',
                                          metrics) and
              re.search(r'agentlab_source_last_message_age_seconds\{source="ss"\} \d+', metrics),
              "the scale set's gauges are not in /metrics")
        cli = os.path.join(os.path.dirname(agentlabd), "agentlab")
        if os.path.exists(cli):
            p = subprocess.run([cli, "pool", "status", "--socket", sock], capture_output=True,
                               text=True, env=farm.env)
            check(p.returncode == 0 and re.search(r"ss\s+github_scaleset\s+polling", p.stdout) and
                  "jobs_assigned=" in p.stdout, f"agentlab pool status:\n{p.stdout}{p.stderr}")
            print(p.stdout)
        fake.expire_mq_token()
        check(wait_for(lambda: "session " in farm.log() and " refreshed" in farm.log(), 30),
              "the 401 was not met with a refresh")
        before = fake.sessions_created
        # the new session's answer is slow: SIGTERM comes while it is on its
        # way, and the session the service made must still be deleted
        fake.session_answer_delay_s = 3
        fake.lose_session()
        check(wait_for(lambda: fake.sessions_created > before, 30), "no new session after a 404")
    finally:
        rc = farm.stop()
        farm.logf.close()
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM")
    check(fake.sessions_deleted >= 1 and fake.session is None, "the session was not deleted")
    check("deleted the session created while stopping" in farm.log(),
          "SIGTERM during the session's creation did not delete what the service made")
    check(not fake.errors, "protocol violations:\n  " + "\n  ".join(fake.errors))
    regs = fake.count("POST", r"^/actions/runner-registration$")
    check(regs >= 2, f"{regs} runner-registrations: the short-lived admin token was not replaced")
    check(not any(r[3] == 401 and "/tenant/" in r[2] and "acquirejobs" not in r[2]
                  for r in fake.requests), "an expired admin token was used")
    fake.stop()
    print(f"scaleset protocol: {regs} admin tokens, {len(fake.jits)} JIT runners for VMs that could not start, "
          f"{fake.conflicts_served} 409s, {fake.sessions_created} sessions, "
          f"{len(fake.requests)} requests")
    text = farm.log()
    for line in text.splitlines():
        if "github ss" in line and ("runner" in line or "409" in line or "conflict" in line):
            print("  " + line[:200])
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("scaleset protocol: ok")


def jobs(agentlabd, agentlab, guest, vm_init):
    tmp, run, state = dirs("al-ss.")
    env_img = dict(os.environ, AGENTLAB_STATE_DIR=state, AGENTLAB_CONFIG="/dev/null",
                   MICRO_NAME="micro-actions", MICRO_BINS="base64 sed",
                   MICRO_EXTRA=os.path.join(HERE, "github_runner"))
    p = subprocess.run([os.path.join(HERE, "micro_image.sh"), agentlab, guest, vm_init],
                       env=env_img, capture_output=True, text=True)
    if p.returncode == SKIP_EXIT:
        print(f"scaleset: {p.stdout}{p.stderr}", file=sys.stderr)
        sys.exit(SKIP_EXIT)
    check(p.returncode == 0, f"building the test image failed: {p.stdout}{p.stderr}")
    key = make_key(tmp)
    fake = ScalesetFake(contract(), REPO, app={"id": "424242", "key": key, "installation": 77})
    fake.hold_s = 1.0
    fake.session_orphan_s = 12.0
    fake.start()
    fake.conflict_next(1)
    farm = Farm(agentlabd, fake, tmp, run, state, key, image="micro-actions")
    DUMP.append(dump_for(farm, fake))
    t0 = time.time()
    farm.start()
    try:
        # -- a 409 at session creation: retried
        check(wait_for(lambda: re.search(r"session \S+ on scale set agentlab-vm", farm.log()), 60),
              "no session")
        check(fake.conflicts_served == 1 and "already has an active session" in farm.log(),
              "the 409 was not met or not logged")
        check(len(fake.scalesets) == 1, "the scale set was not created once")

        # -- 5 jobs at once on max_vms = 2
        # GitHub offers each job once: the three left available for want of
        # room must be caught up (GET acquirablejobs) when room comes
        fake.reoffer_s = 1e9
        t_jobs = time.time()
        rids = fake.queue_jobs(5)
        started, completed = {}, {}
        most_vms = 0
        expired = lost = False
        while len(completed) < 5 and time.time() - t_jobs < 600:
            eids = {}
            for j in list(fake.jits):
                eid = farm.engine_id(j["runner"])
                if not eid:
                    continue
                eids[eid] = j
                out = farm.output(eid)
                if j["runner"] not in started and "stand-in runner: agentName=" in out:
                    want = (f"stand-in runner: agentName={j['runner']} mode=exit "
                            f"config-sha256={j['sha256']}")
                    check(want in out, f"runner {j['runner']} did not get its config: {out!r}")
                    started[j["runner"]] = fake.start_job(j["runner"])
                    check(started[j["runner"]], f"no acquired job for {j['runner']}")
                if j["runner"] in started and j["runner"] not in completed and \
                        "stand-in runner: job done" in out:
                    completed[j["runner"]] = fake.complete_job(j["runner"])
            live = [d for d in domains() if any(e in d for e in eids)]
            most_vms = max(most_vms, len(live))
            if len(completed) >= 2 and not expired:
                fake.expire_mq_token()
                expired = True
            if len(completed) >= 3 and not lost:
                fake.lose_session()
                lost = True
            time.sleep(0.1)
        t_done = time.time()
        check(len(completed) == 5, f"{len(completed)} of 5 jobs completed: {completed}")
        check(sorted(completed.values()) == sorted(rids), f"jobs run: {completed} of {rids}")
        # a runner whose VM failed to boot (TCG on a loaded host) is replaced:
        # more JIT configs than jobs then, but each in its own VM, and the
        # unused ones removed from the scale set
        check(len(started) == 5, f"{len(started)} runners started for 5 jobs")
        eids_all = [farm.engine_id(j["runner"]) for j in fake.jits]
        check(len(set(eids_all)) == len(fake.jits), "a JIT config went to two VMs")
        unused = [j["runner"] for j in fake.jits if j["runner"] not in started]
        check(wait_for(lambda: not any(r["name"] in unused for r in fake.ss_runners.values()), 30),
              f"unused runners left registered: {unused}")
        check(most_vms <= 2, f"{most_vms} VMs at once on max_vms = 2")
        # The fake learns that a job is done only when this loop sees the
        # stand-in runner say so (the real runner tells GitHub itself before
        # it exits), so its own count lags behind the VMs. What the listener
        # must hold: at each acquisition, the jobs acquired so far whose VM
        # had not ended yet (the daemon's own record: the engine job's final
        # transition) are at most max_vms.
        most_held = held_at_acquisitions(farm, fake, started)
        check(most_held <= 2, f"{most_held} jobs acquired while their VMs ran, on max_vms = 2")
        check(fake.acquirable_calls >= 1 and "acquirable jobs not offered again" in farm.log(),
              f"jobs left available were not caught up ({fake.acquirable_calls} calls)")
        fake.reoffer_s = 3.0
        check(fake.acquired_total == 5, f"{fake.acquired_total} acquisitions for 5 jobs")
        check("the message-queue token expired; refreshing the session" in farm.log(),
              "the 401 was not met")
        check(wait_for(lambda: fake.sessions_created >= 2, 30) and
              "the message session is gone" in farm.log(), "the lost session was not replaced")
        check(fake.count("PATCH", r"/sessions/") >= 1, "no session refresh")

        # -- SIGKILL mid-job, restart
        fake.queue_jobs(1, "killed")
        n_jits = len(fake.jits)
        check(wait_for(lambda: len(fake.jits) > n_jits and farm.engine_id(fake.jits[-1]["runner"]),
                       60), "no runner for the sixth job")
        victim = fake.jits[-1]["runner"]
        veid = farm.engine_id(victim)
        check(wait_for(lambda: "stand-in runner: agentName=" in farm.output(veid), 240),
              "the sixth runner never started")
        fake.start_job(victim)
        check(wait_for(lambda: f"runner {victim} started job" in farm.log(), 20),
              "JobStarted was not seen")
        farm.proc.kill()
        farm.proc.wait()
        sessions_before = fake.sessions_created
        conflicts_before = fake.conflicts_served
        fake.abandon_job(victim)
        t_restart = time.time()
        farm.start()
        check(wait_for(lambda: not any(r["name"] == victim for r in fake.ss_runners.values()), 90),
              "the killed daemon's runner was not removed")
        t_swept = time.time()
        check(wait_for(lambda: not any(veid in d for d in domains()), 90),
              "the killed daemon's VM is still up")
        check(wait_for(lambda: fake.sessions_created > sessions_before, 90),
              "no new session after the restart")
        t_session = time.time()
        check(fake.conflicts_served > conflicts_before,
              "the orphaned session did not answer 409 (the fake's orphan timer)")
        check(not fake.ss_runners, f"runners left: {fake.ss_runners}")
    finally:
        rc = farm.stop()
        farm.logf.close()
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM")
    check(fake.sessions_deleted >= 1 and fake.session is None, "the session was not deleted")
    text = farm.log()
    secrets = list(fake.admin_tokens) + list(fake.reg_tokens) + fake.mq_tokens + \
        [t["token"] for t in fake.tokens]
    for j in fake.jits:
        secrets += [j["encoded"], j["decoded"]] + j["parts"]
    for s in secrets:
        check(s not in text, "a secret is in the daemon log")
    hits = []
    for dp, _, names in os.walk(state):
        if dp.startswith(os.path.join(state, "images")):
            continue
        for n in names:
            data = open(os.path.join(dp, n), "rb").read()
            hits += [(n, s[:10]) for s in secrets if s.encode() in data]
    check(not hits, f"secrets in the state dir: {hits}")
    check(not fake.errors, "protocol violations:\n  " + "\n  ".join(fake.errors))
    fake.stop()
    print(f"scaleset: 5 jobs on 2 VM slots in {t_done - t_jobs:.0f} s with {len(fake.jits) - 1} "
          f"JIT runners (most VMs at once {most_vms}, most jobs acquired at once "
          f"{most_held}; the fake, which learns of an end late, counted {fake.max_acquired}); "
          f"{fake.conflicts_served} session 409s met")
    print(f"scaleset: after SIGKILL the restarted daemon removed the runner in "
          f"{t_swept - t_restart:.1f} s and had a new session in {t_session - t_restart:.1f} s; "
          f"{len(fake.requests)} requests in all; whole test {time.time() - t0:.0f} s")
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("scaleset: ok")


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "jobs":
        jobs(*sys.argv[2:])
    elif len(sys.argv) == 3 and sys.argv[1] == "protocol":
        protocol(sys.argv[2])
    elif len(sys.argv) == 5 and sys.argv[1] == "idle":
        idle(sys.argv[2], float(sys.argv[3]), float(sys.argv[4]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
