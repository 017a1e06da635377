#!/usr/bin/env python3
"""The fault campaign (issue #24): components die at a phase of a job.

For every case the expectation is the same: the job ends in a correct,
durable state (retried on a fresh VM where the rules allow), nothing of it is
left behind (domains, overlays, run dirs, job dirs), and the database passes
PRAGMA integrity_check. Each case runs on real libvirtd/QEMU with the micro
image (tests/integration/micro_image.sh) and its own agentlabd and state dir.
At the end a table is printed (and written to $AL_TEST_OUTDIR/faults.md):
fault, phase, job outcome, leftovers, time from the fault to the job's end.

Usage: faults.py AGENTLABD AGENTLAB [CASE...]   (default: every case)
Needs root, libvirtd and virtlogd (scripts/setup.sh), and the micro image in
$AGENTLAB_TEST_STATE/images/micro.
"""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
import skip  # noqa: E402

VIRSH = ["virsh", "-c", "qemu:///system"]
TERMINAL = ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "ERROR")
OWNER_NS = "https://agentlab.dev/xmlns/domain/1"


class Failure(Exception):
    pass


def sh(*argv, check=True, **kw):
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


class Env:
    """A private state dir (a copy of the micro image), run dir and config."""

    def __init__(self, daemon, cli, name, agent_extra="", state_size=None):
        self.daemon, self.cli, self.name = daemon, cli, name
        self.tmp = tempfile.mkdtemp(prefix="al-fault.")
        os.chmod(self.tmp, 0o711)
        self.state = os.path.join(self.tmp, "state")
        self.mounted = False
        if state_size:
            # a small file system of its own, to fill
            os.makedirs(self.state)
            sh("mount", "-t", "tmpfs", "-o", f"size={state_size},mode=0711", "tmpfs", self.state)
            self.mounted = True
        os.makedirs(os.path.join(self.state, "images"))
        os.chmod(self.state, 0o711)
        src = os.path.join(os.environ["AGENTLAB_TEST_STATE"], "images", "micro")
        shutil.copytree(src, os.path.join(self.state, "images", "micro"), symlinks=True)
        # short: unix socket paths must stay under 108 bytes
        self.run = tempfile.mkdtemp(prefix="al-f.", dir="/tmp")
        os.chmod(self.run, 0o711)
        self.config = os.path.join(self.tmp, "agentlab.conf")
        with open(self.config, "w") as f:
            f.write("[agent]\nlog_level = info\nimage = micro\nboot_timeout = 20m\n"
                    + agent_extra + "[backend \"local\"]\nmax_vms = 1\n")
        self.env = dict(os.environ, AGENTLAB_STATE_DIR=self.state, AGENTLAB_RUN_DIR=self.run,
                        AGENTLAB_CONFIG=self.config)
        self.db = os.path.join(self.state, "agentlab.db")
        self.proc = None
        self.log = os.path.join(self.tmp, "daemon.log")
        # owner ids of `agentlab run` processes ("run:BOOT:PID:"), see owner.c
        self.run_owners = []

    # -- agentlabd --
    def start(self, env=None):
        logf = open(self.log, "a")
        self.proc = subprocess.Popen([self.daemon], env=env or self.env, stderr=logf,
                                     stdout=subprocess.DEVNULL)
        logf.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with open(self.log) as f:
                if "ready" in f.read():
                    return
            if self.proc.poll() is not None:
                raise Failure("agentlabd exited at start:\n" + self.tail())
            time.sleep(0.1)
        raise Failure("agentlabd did not get ready")

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=120)
        self.proc = None

    def tail(self, n=30):
        try:
            with open(self.log) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def agentlab(self, *args, stdin=None, check=True, timeout=120):
        return subprocess.run([self.cli, *args], env=self.env, input=stdin, text=True,
                              capture_output=True, check=check, timeout=timeout)

    # -- the database (read-only, as another process would) --
    def q(self, sql, *args):
        for _ in range(50):
            try:
                con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
                try:
                    return con.execute(sql, args).fetchall()
                finally:
                    con.close()
            except sqlite3.OperationalError:
                time.sleep(0.1)
        raise Failure(f"database not readable: {sql}")

    def submit(self, command, **extra):
        spec = {"name": self.name, "command": ["sh", "-c", command], "timeout_s": 300}
        spec.update(extra)
        r = self.agentlab("job", "submit", "-", stdin=json.dumps(spec))
        job = r.stdout.strip().split()[-1]
        if not job.startswith("j"):
            raise Failure(f"job submit printed {r.stdout!r}")
        return job

    def job(self, job):
        rows = self.q("select state, attempts, reason from jobs where id = ?", job)
        return rows[0] if rows else (None, 0, None)

    def wait_state(self, job, states, timeout=300):
        """Waits for one of states; an attempt's ERROR that is being retried
        ("retrying on a fresh VM") is not the job's end."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st, _n, reason = self.job(job)
            if st in states and not (st in TERMINAL and "retrying" in (reason or "")):
                return st
            time.sleep(0.05)
        raise Failure(f"job {job} never reached {states} (it is {self.job(job)[0]})\n"
                      + self.tail())

    def logs(self, job):
        r = self.agentlab("job", "logs", job, check=False)
        return r.stdout

    def wait_output(self, job, text, timeout=300):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.logs(job):
                return
            if self.job(job)[0] in TERMINAL:
                break
            time.sleep(0.2)
        raise Failure(f"job {job} never printed {text!r} (state {self.job(job)[0]})\n"
                      + self.tail())

    def vm_of(self, job, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.q("select vm_name from vms where job_id = ? order by attempt desc", job)
            if rows and rows[0][0]:
                return rows[0][0]
            time.sleep(0.05)
        raise Failure(f"job {job} got no VM")

    # -- what must be gone --
    def leftovers(self):
        found = []
        owners = list(self.run_owners)
        try:
            owners.append(open(os.path.join(self.state, "owner-id")).read().strip())
        except FileNotFoundError:
            pass  # no agentlabd ran on this state dir
        doms = sh(*VIRSH, "list", "--all", "--name", check=False).stdout.split()
        for d in doms:
            if not d.startswith("agentlab-"):
                continue
            md = sh(*VIRSH, "metadata", d, OWNER_NS, check=False).stdout
            if any(o in md for o in owners):
                found.append(f"domain {d}")
        pools = os.path.join(self.state, "pools")
        for root, _dirs, files in os.walk(pools):
            found += [f"overlay {os.path.join(root, f)}" for f in files]
        for sub in ("vms", "jobs"):
            d = os.path.join(self.run, sub)
            if os.path.isdir(d):
                found += [f"{sub}/{e}" for e in os.listdir(d)]
        imgs = os.path.join(self.state, "images")
        found += [f"images/{e}" for e in os.listdir(imgs) if e.startswith(".build-")]
        return found

    def healthz(self):
        sock = os.path.join(self.run, "agentlabd.sock")
        r = sh("curl", "-sS", "--max-time", "10", "--unix-socket", sock, "http://agentlab/healthz",
               check=False)
        if r.returncode != 0:
            raise Failure(f"/healthz did not answer: {r.stderr.strip()}")
        return json.loads(r.stdout)

    def integrity(self):
        return self.q("pragma integrity_check")[0][0]

    def cleanup(self):
        self.stop()
        # the transient storage pool of this state dir
        for p in sh(*VIRSH, "pool-list", "--name", check=False).stdout.split():
            if not p.startswith("agentlab-"):
                continue
            xml = sh(*VIRSH, "pool-dumpxml", p, check=False).stdout
            if f"<path>{self.state}/" in xml:
                sh(*VIRSH, "pool-destroy", p, check=False)
        if self.mounted:
            sh("umount", "-l", self.state, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)
        shutil.rmtree(self.run, ignore_errors=True)


def qemu_pid(vm, timeout=60):
    path = f"/run/libvirt/qemu/{vm}.pid"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            time.sleep(0.05)
    raise Failure(f"no QEMU process for {vm}")


def pids_of(name):
    r = sh("pgrep", "-x", name, check=False)
    return [int(p) for p in r.stdout.split()]


def restart_libvirt_daemon(name):
    """SIGKILL every `name` process and start it again as scripts/setup.sh does."""
    for pid in pids_of(name):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while pids_of(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    sh(name, "-d")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sh(*VIRSH, "version", check=False).returncode == 0:
            return
        time.sleep(0.2)
    raise Failure(f"{name} did not come back")


# ---- the cases: each returns (phase, outcome, recover seconds) and raises
# Failure when the outcome is wrong ----

RUN_CMD = "echo started; sleep 6; echo finished"


def expect(env, job, state, attempts=None):
    st, n, reason = env.job(job)
    if st != state or (attempts is not None and n != attempts):
        raise Failure(f"job {job} ended {st} after {n} attempts ({reason}); expected {state}"
                      + (f" after {attempts}" if attempts is not None else "") + "\n" + env.tail())
    return f"{st}, {n} attempt{'s' if n != 1 else ''}"


def case_qemu_kill_booting(env):
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_state(job, ("BOOTING",))
    pid = qemu_pid(env.vm_of(job))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    env.wait_state(job, TERMINAL)
    if "finished" not in env.logs(job):
        raise Failure("the retried attempt's output is missing")
    return "booting", expect(env, job, "SUCCEEDED", 2), time.monotonic() - t0


def case_qemu_kill_running(env):
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_output(job, "started")
    pid = qemu_pid(env.vm_of(job))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    env.wait_state(job, TERMINAL)
    return "running", expect(env, job, "SUCCEEDED", 2), time.monotonic() - t0


def case_guest_frozen(env):
    """QEMU stopped (SIGSTOP): the guest stops reading its channel and sends
    no heartbeat; the attempt ends at heartbeat_timeout and is retried."""
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_output(job, "started")
    pid = qemu_pid(env.vm_of(job))
    t0 = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        env.wait_state(job, TERMINAL)
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except OSError:
            pass
    return "running", expect(env, job, "SUCCEEDED", 2), time.monotonic() - t0


def case_channel_socket_removed(env):
    """The channel's socket file vanishes on the host while the job runs: the
    connection is already open, the job is not affected."""
    env.start()
    job = env.submit(RUN_CMD, max_attempts=1)
    env.wait_output(job, "started")
    sock = os.path.join(env.run, "vms", env.vm_of(job), "job.sock")
    t0 = time.monotonic()
    os.unlink(sock)
    env.wait_state(job, TERMINAL)
    return "running", expect(env, job, "SUCCEEDED", 1), time.monotonic() - t0


def case_agentlabd_kill(env):
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_output(job, "started")
    t0 = time.monotonic()
    env.stop(signal.SIGKILL)
    env.start()
    env.wait_state(job, TERMINAL)
    return "running", expect(env, job, "SUCCEEDED", 2), time.monotonic() - t0


def case_run_kill(env):
    """`agentlab run` (no daemon) is SIGKILLed while its job runs; the VM it
    leaves is what `agentlab gc` is for."""
    out = os.path.join(env.tmp, "run.out")
    with open(out, "w") as f:
        p = subprocess.Popen([env.cli, "run", "--", "sh", "-c", RUN_CMD], env=env.env,
                             stdout=f, stderr=subprocess.STDOUT)
    env.run_owners.append(f":{p.pid}:")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if "started" in open(out).read():
            break
        if p.poll() is not None:
            raise Failure("agentlab run ended early:\n" + open(out).read())
        time.sleep(0.1)
    else:
        p.kill()
        raise Failure("agentlab run never started the job:\n" + open(out).read())
    t0 = time.monotonic()
    p.kill()
    p.wait()
    left = env.leftovers()
    if not any(x.startswith("domain") for x in left):
        raise Failure(f"the killed run left no VM to collect ({left}): the fault did not land")
    r = env.agentlab("gc", check=False, timeout=300)
    if r.returncode != 0:
        raise Failure(f"agentlab gc failed: {r.stdout}{r.stderr}")
    return "running", "killed; " + r.stdout.strip().splitlines()[-1], time.monotonic() - t0


def case_libvirtd_kill(env):
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_output(job, "started")
    t0 = time.monotonic()
    restart_libvirt_daemon("libvirtd")
    env.wait_state(job, TERMINAL)
    st = env.job(job)[0]
    if st != "SUCCEEDED":
        raise Failure(f"job ended {st} after libvirtd came back\n" + env.tail())
    return "running", expect(env, job, "SUCCEEDED"), time.monotonic() - t0


def case_virtlogd_kill(env):
    env.start()
    job = env.submit(RUN_CMD, max_attempts=2)
    env.wait_output(job, "started")
    t0 = time.monotonic()
    restart_libvirt_daemon("virtlogd")
    env.wait_state(job, TERMINAL)
    return "running", expect(env, job, "SUCCEEDED"), time.monotonic() - t0


def case_image_build_kill(env):
    """`agentlab image build` is SIGKILLed while mmdebstrap bootstraps: the
    build dir it leaves is removed by `agentlab gc` once no process of the
    killed build holds its lock (mmdebstrap, its pipe gone, dies on its next
    write), and no process of the build is left."""
    out = os.path.join(env.tmp, "build.out")
    images = os.path.join(env.state, "images")
    with open(out, "w") as f:
        p = subprocess.Popen([env.cli, "image", "build", "debian-12", "--force"], env=env.env,
                             stdout=f, stderr=subprocess.STDOUT)

    def build_dirs():
        return [e for e in os.listdir(images) if e.startswith(".build-debian-12-")]

    deadline = time.monotonic() + 180
    while not build_dirs() and time.monotonic() < deadline:
        if p.poll() is not None:
            raise Failure("the image build ended early:\n" + open(out).read()[-2000:])
        time.sleep(0.1)
    if not build_dirs():
        p.kill()
        raise Failure("the image build made no build dir:\n" + open(out).read()[-2000:])
    time.sleep(4)  # mmdebstrap is at work
    t0 = time.monotonic()
    p.kill()
    p.wait()
    if not build_dirs():
        raise Failure("the killed build left no build dir: the fault did not land")
    removed = ""
    deadline = time.monotonic() + 300
    while build_dirs() and time.monotonic() < deadline:
        r = env.agentlab("gc", check=False, timeout=300)
        if r.returncode != 0:
            raise Failure(f"agentlab gc failed: {r.stdout}{r.stderr}")
        removed = removed or next((l for l in r.stdout.splitlines() if "image build" in l), "")
        if build_dirs():
            time.sleep(2)
    if build_dirs():
        raise Failure(f"gc never removed {build_dirs()}")
    left = sh("pgrep", "-f", env.state, check=False).stdout.split()
    if left:
        raise Failure(f"processes of the killed build are left: {left}")
    return "bootstrap", "killed; " + (removed or "gc removed the build dir"), time.monotonic() - t0


FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def case_clock_jump(env):
    """The wall clock jumps 2 h forward, then 3 h back (1 h behind), while a job with a
    60 s timeout runs for 8 s: timeouts, heartbeats and timers use the
    monotonic clock, so the job succeeds on its first attempt. Only
    agentlabd's clock moves (libfaketime, monotonic clock left alone)."""
    if not os.path.exists(FAKETIME_LIB):
        raise Failure(f"{FAKETIME_LIB} is missing (scripts/setup.sh installs faketime)")
    offset = os.path.join(env.tmp, "faketime")
    with open(offset, "w") as f:
        f.write("+0\n")
    fenv = dict(env.env, LD_PRELOAD=FAKETIME_LIB, FAKETIME_TIMESTAMP_FILE=offset,
                FAKETIME_NO_CACHE="1", FAKETIME_DONT_FAKE_MONOTONIC="1",
                FAKETIME_DONT_RESET="1")
    env.start(fenv)
    job = env.submit("echo started; sleep 8; echo finished", max_attempts=1, timeout_s=60)
    env.wait_output(job, "started")
    t0 = time.monotonic()
    for jump in ("+2h", "-1h"):
        tmp = offset + ".tmp"
        with open(tmp, "w") as f:
            f.write(jump + "\n")
        os.rename(tmp, offset)
        time.sleep(2)
    env.wait_state(job, TERMINAL)
    if "finished" not in env.logs(job):
        raise Failure("the job's output is incomplete")
    # the daemon really saw the jump: its log lines carry the faked time
    with open(env.log) as f:
        text = f.read()
    real_hour = time.gmtime().tm_hour
    hours = {int(l[11:13]) for l in text.splitlines() if l[:2] == "20" and l[10:11] == "T"}
    if (real_hour + 2) % 24 not in hours and (real_hour - 1) % 24 not in hours:
        raise Failure(f"agentlabd's log shows no jumped time (hours {sorted(hours)})")
    return "running", expect(env, job, "SUCCEEDED", 1), time.monotonic() - t0


def case_state_dir_full(env):
    """The state dir's file system fills up with a job's output: the daemon
    keeps answering, says so on /healthz (degraded, state_dir.low) and in
    metrics, the job ends, and the database stays intact. The log's end is
    lost, not the job."""
    env.start()
    if env.healthz()["status"] != "ok":
        raise Failure(f"/healthz not ok before the fault: {env.healthz()}")
    # ~96 MB of output into a 40 MiB file system
    job = env.submit("echo started; yes 0123456789abcdef0123456789abcdef0123456789abcdef | "
                     "head -c 96000000; echo finished", max_attempts=1)
    env.wait_output(job, "started")
    t0 = time.monotonic()
    saw_low = False
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        h = env.healthz()
        if h.get("state_dir", {}).get("low"):
            saw_low = h["status"] == "degraded"
        if env.job(job)[0] in TERMINAL:
            break
        time.sleep(0.5)
    env.wait_state(job, TERMINAL)
    h = env.healthz()
    if not (saw_low or (h.get("state_dir", {}).get("low") and h["status"] == "degraded")):
        raise Failure(f"/healthz never said the state dir was full: {h}")
    sock = os.path.join(env.run, "agentlabd.sock")
    m = sh("curl", "-sS", "--unix-socket", sock, "http://agentlab/metrics").stdout
    if "agentlab_state_dir_low 1" not in m:
        raise Failure("metrics do not say the state dir is full")
    if env.integrity() != "ok":
        raise Failure("integrity_check failed with the disk full")
    with open(env.log) as f:
        if "No space left on device; the stored log ends at byte" not in f.read():
            raise Failure("the daemon did not say why the stored log ends early")
    st, n, reason = env.job(job)
    if os.environ.get("AL_FAULTS_DEBUG"):
        print(env.tail(40), file=sys.stderr)
    return "running", f"{st}, {n} attempt ({reason})", time.monotonic() - t0


CASES = [
    ("qemu SIGKILL", case_qemu_kill_booting, ""),
    ("qemu SIGKILL", case_qemu_kill_running, ""),
    ("guest frozen (qemu SIGSTOP)", case_guest_frozen, "heartbeat_timeout = 8s\n"),
    ("channel socket removed", case_channel_socket_removed, ""),
    ("agentlabd SIGKILL", case_agentlabd_kill, ""),
    ("agentlab run SIGKILL, then gc", case_run_kill, ""),
    ("libvirtd SIGKILL + restart", case_libvirtd_kill, ""),
    ("virtlogd SIGKILL + restart", case_virtlogd_kill, ""),
    ("agentlab image build SIGKILL, then gc", case_image_build_kill, ""),
    ("wall clock +2 h, then -1 h", case_clock_jump, ""),
    ("state dir full", case_state_dir_full, "max_log_size = 1G\n", "40m"),
]


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    daemon, cli = sys.argv[1], sys.argv[2]
    wanted = set(sys.argv[3:])
    if os.geteuid() != 0:
        skip.skip("the fault campaign kills libvirtd and QEMU: it needs root")
    if not os.path.isdir(os.path.join(os.environ.get("AGENTLAB_TEST_STATE", ""), "images",
                                      "micro")):
        skip.skip("the micro image is missing (the micro_fixture test builds it)")
    rows, failed = [], 0
    for fault, fn, extra, *size in CASES:
        cname = fn.__name__[len("case_"):]
        if wanted and cname not in wanted:
            continue
        env = Env(daemon, cli, cname.replace("_", "-"), extra, *size)
        t_case = time.monotonic()
        try:
            phase, outcome, recover = fn(env)
            env.stop()
            left = env.leftovers()
            integ = env.integrity() if os.path.exists(env.db) else "ok"
            ok = not left and integ == "ok"
            if integ != "ok":
                left.append(f"integrity_check: {integ}")
            rows.append((fault, phase, outcome, ", ".join(left) or "none", f"{recover:.1f} s",
                         "ok" if ok else "FAIL"))
            failed += not ok
        except (Failure, subprocess.SubprocessError, OSError) as e:
            rows.append((fault, "-", f"error: {str(e).splitlines()[0]}", "?", "-", "FAIL"))
            print(f"--- {cname}: {e}", file=sys.stderr)
            failed += 1
        finally:
            env.cleanup()
        print(f"{cname}: {rows[-1][-1]} in {time.monotonic() - t_case:.0f} s", flush=True)

    head = ("fault", "phase", "job outcome", "leftovers", "fault to job end", "")
    table = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    table += ["| " + " | ".join(r) + " |" for r in rows]
    print("\n".join(table))
    outdir = os.environ.get("AL_TEST_OUTDIR")
    if outdir:
        os.makedirs(outdir, exist_ok=True)
        with open(os.path.join(outdir, "faults.md"), "w") as f:
            f.write("\n".join(table) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
