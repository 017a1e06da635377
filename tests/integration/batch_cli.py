#!/usr/bin/env python3
"""`agentlab batch` end to end without VMs: the real CLI against the real
control API and engine on the simulated hypervisor (fake_agentlabd).

  - a bad line refuses the whole batch, naming the line and the field;
  - 200 jobs (5 of them failing) complete; `batch watch` shows the progress
    under a pseudo-terminal (one redrawn line) and without one (plain
    lines), and exits 1; `results --jsonl` has 200 rows, `--json` one
    document, `--junit` validates against tests/contracts/junit.xsd;
  - a --matrix batch that passes exits 0 with its parameters in the rows;
  - a batch with an infrastructure error exits 2, a cancelled one too;
  - --max-parallel 2: never more than 2 of the batch's jobs past QUEUED
    (from the daemon's own event stream), and a CI job submitted after it
    starts before the batch's last job does.

Usage: batch_cli.py FAKE_AGENTLABD AGENTLAB JUNIT_XSD
By hand, BATCH_CLI_WRAP="valgrind --error-exitcode=99 ..." runs the daemon and
every CLI command under that prefix.
"""
import http.client
import json
import os
import pty
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

FAKED, CLI, XSD = sys.argv[1:4]
WRAP = os.environ.get("BATCH_CLI_WRAP", "").split()
TOKEN = "batch-cli-token-0123456789"
failures = []
passes = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    (passes if cond else failures).append(what)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=30)
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(30)
        s.connect(self.unix_path)
        self.sock = s


def api_get(sock, path):
    c = UnixHTTP(sock)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    if r.status != 200:
        raise RuntimeError(f"GET {path}: {r.status} {body[:200]!r}")
    return json.loads(body)


def api_text(sock, path):
    c = UnixHTTP(sock)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read().decode()
    c.close()
    return r.status, body


def all_events(sock):
    out, after = [], 0
    while True:
        page = api_get(sock, f"/v1/events?after={after}&limit=1000")
        out += page["events"]
        if not page["events"]:
            return out
        after = page["next_after"]


def cli(env, *args, stdin=None, timeout=120):
    p = subprocess.run([*WRAP, CLI, *args], input=stdin, capture_output=True, text=True, env=env,
                       timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def watch_pty(env, bid):
    """Runs `batch watch` with its stdout on a pseudo-terminal."""
    master, slave = pty.openpty()
    p = subprocess.Popen([*WRAP, CLI, "batch", "watch", bid], stdout=slave, stderr=slave, env=env)
    os.close(slave)
    data = b""
    deadline = time.time() + 120
    while time.time() < deadline:
        r, _, _ = select.select([master], [], [], 0.5)
        if r:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elif p.poll() is not None:
            break
    rc = p.wait(timeout=30)
    os.close(master)
    return rc, data.decode("utf-8", "replace")


def spec(fake, name=None, **extra):
    s = {"command": ["work"], "env": {"FAKE": fake}}
    if fake.startswith("stream:"):
        s["env"]["FAKE_MS"] = extra.pop("ms", "50")
    if name:
        s["name"] = name
    s.update(extra)
    return json.dumps(s)


def main():
    tmp = tempfile.mkdtemp(prefix="agentlab-batch-cli-")
    outdir = os.environ.get("AL_TEST_OUTDIR", tmp)
    os.makedirs(outdir, exist_ok=True)
    state = os.path.join(tmp, "state")
    sock = os.path.join(state, "api.sock")
    daemon = subprocess.Popen([*WRAP, FAKED, state, "8", "2", TOKEN], stdout=subprocess.PIPE, text=True)
    try:
        line = daemon.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("fake_agentlabd did not start")
        env = dict(os.environ, AGENTLAB_SOCKET=sock)
        env.pop("AGENTLAB_URL", None)
        run(env, sock, tmp, outdir, int(line[1]))
    finally:
        daemon.terminate()
        rc = daemon.wait(timeout=30)
        check(rc == 0, f"fake_agentlabd stopped cleanly (exit {rc})")
        shutil.rmtree(tmp, ignore_errors=True)


def browse(tmp, url, *args):
    """Headless Chromium on the status page, as tests/integration/status_page.sh does."""
    profile = tempfile.mkdtemp(dir=tmp, prefix="chromium.")
    p = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--user-data-dir=" + profile, "--virtual-time-budget=5000", *args, url],
                       capture_output=True, text=True, timeout=90)
    return p.stdout


def run(env, sock, tmp, outdir, port):
    state = os.path.dirname(sock)
    # ---- a bad line refuses the whole batch
    bad = "\n".join([spec("ok"), spec("ok"), json.dumps(
        {"command": ["x"], "resources": {"cpus": "two"}}), spec("ok")]) + "\n"
    rc, out, err = cli(env, "batch", "submit", "--name", "bad", "-", stdin=bad)
    check(rc != 0 and "line 3: resources.cpus" in err,
          f"a bad line refuses the batch, naming line and field (rc {rc}: {err.strip()})")
    rc, out, _ = cli(env, "batch", "ls", "--json")
    check(rc == 0 and json.loads(out)["batches"] == [], "nothing was stored for it")
    check(api_get(sock, "/v1/jobs")["jobs"] == [], "no job was stored for it")

    # ---- 200 jobs, 5 of them failing
    lines = []
    for i in range(200):
        lines.append(spec("fail:3") if i % 40 == 7 else spec("stream:5"))
    path = os.path.join(tmp, "nightly.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    t0 = time.time()
    rc, out, err = cli(env, "batch", "submit", path)
    bid = out.strip()
    check(rc == 0 and re.fullmatch(r"b[0-9a-f]{20}", bid) is not None,
          f"200 jobs submitted in one request ({time.time() - t0:.2f} s): {bid} {err.strip()}")
    plain = subprocess.Popen([*WRAP, CLI, "batch", "watch", "--interval", "1", bid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    rc_tty, screen = watch_pty(env, bid)
    out_plain, err_plain = plain.communicate(timeout=120)
    with open(os.path.join(outdir, "watch_tty.txt"), "w") as f:
        f.write(screen)
    with open(os.path.join(outdir, "watch_plain.txt"), "w") as f:
        f.write(out_plain)
    final = "nightly: 200/200 done, 195 passed, 5 failed, 0 errors, 0 running, 0 queued"
    check(rc_tty == 1, f"watch on a terminal exits 1 when jobs failed (got {rc_tty})")
    redraws = screen.count("\r\x1b[K")
    check(redraws >= 3, f"watch on a terminal redraws one line ({redraws} times)")
    check(final in screen, "the terminal's last line is the final count")
    progress = re.findall(r"nightly: (\d+)/200 done", screen)
    check(any(int(d) < 200 for d in progress) and len(set(progress)) >= 2,
          f"the terminal showed the progress ({sorted(set(int(d) for d in progress))[:5]}...)")
    check(re.search(r"ETA \d+[smh]", screen) is not None, "the terminal line has an ETA")
    plain_lines = out_plain.splitlines()
    check(plain.returncode == 1, f"watch without a terminal exits 1 (got {plain.returncode})")
    check("\x1b" not in out_plain and "\r" not in out_plain,
          "without a terminal: no escape sequences")
    check(len(plain_lines) >= 2 and final in plain_lines[-1],
          f"without a terminal: plain periodic lines ({len(plain_lines)}), the last final")

    rc, out, err = cli(env, "batch", "results", "--jsonl", "--tail", "2", bid)
    rows = [json.loads(x) for x in out.splitlines()]
    check(rc == 0 and len(rows) == 200, f"results --jsonl has 200 rows ({len(rows)})")
    names = {r["name"] for r in rows}
    check(len(names) == 200 and "nightly-001" in names and "nightly-200" in names,
          "each row has its own name (nightly-001 ... nightly-200)")
    failed = [r for r in rows if r["state"] == "FAILED"]
    check(len(failed) == 5 and all(r["exit_code"] == 3 for r in failed),
          "5 rows FAILED with exit code 3")
    ok_rows = [r for r in rows if r["state"] == "SUCCEEDED"]
    check(len(ok_rows) == 195 and all(r["exit_code"] == 0 for r in ok_rows), "195 rows passed")
    check(all(r["output_tail"] == "line 4\nline 5\n" for r in ok_rows),
          f"rows carry the last lines of output ({ok_rows[0]['output_tail']!r})")
    check(all(isinstance(r["duration_ms"], int) and r["duration_ms"] >= 0 for r in rows),
          "rows carry durations")
    check([r["index"] for r in rows] == list(range(1, 201)), "rows come in line order")

    # the fake backend brings no artifacts back: plant what a VM would have
    by_name = {r["name"]: r for r in rows}
    for name in ("nightly-001", "nightly-150"):
        adir = os.path.join(state, "jobs", by_name[name]["id"], "artifacts", "sub")
        os.makedirs(adir, exist_ok=True)
        with open(os.path.join(adir, "report.txt"), "w") as f:
            f.write(f"report of {name}\n")
    arts = os.path.join(tmp, "arts")
    rc, out, err = cli(env, "batch", "results", "--jsonl", "--artifacts", arts, bid)
    rows2 = {json.loads(x)["name"]: json.loads(x) for x in out.splitlines()}
    check(rows2["nightly-001"]["artifacts"] == ["sub/report.txt"]
          and rows2["nightly-002"]["artifacts"] == [], "rows list the artifact paths")
    got = {}
    for name in os.listdir(arts) if os.path.isdir(arts) else []:
        with open(os.path.join(arts, name, "sub", "report.txt")) as f:
            got[name] = f.read()
    check(rc == 0 and got == {"nightly-001": "report of nightly-001\n",
                              "nightly-150": "report of nightly-150\n"}
          and "2 artifacts of 2 jobs" in err,
          f"--artifacts downloads each job's artifacts into DIR/<job name>/ ({sorted(got)}, {err.strip()})")

    rc, out, _ = cli(env, "batch", "results", "--json", bid)
    doc = json.loads(out)
    check(rc == 0 and doc["batch"]["total"] == 200 and len(doc["jobs"]) == 200
          and doc["batch"]["finished"], "results --json: one document with the batch")
    junit = os.path.join(outdir, "nightly.junit.xml")
    rc, out, err = cli(env, "batch", "results", "--junit", junit, bid)
    check(rc == 0 and "nightly-001" in out, f"results prints a table and writes JUnit ({err})")
    x = subprocess.run(["xmllint", "--noout", "--schema", XSD, junit], capture_output=True,
                       text=True)
    check(x.returncode == 0, f"the JUnit report validates against junit.xsd: {x.stderr.strip()}")
    suite = ET.parse(junit).getroot().find("testsuite")
    check(suite.get("tests") == "200" and suite.get("failures") == "5"
          and suite.get("errors") == "0" and len(suite.findall("testcase")) == 200
          and len(suite.findall("testcase/failure")) == 5, "JUnit counts match")

    status, metrics = api_text(sock, "/metrics")
    check(status == 200 and
          f'agentlab_batch_jobs{{batch="{bid}",name="nightly",state="SUCCEEDED"}} 195' in metrics
          and f'agentlab_batch_jobs{{batch="{bid}",name="nightly",state="FAILED"}} 5' in metrics
          and f'agentlab_batch_jobs_submitted{{batch="{bid}",name="nightly"}} 200' in metrics
          and re.search(r'agentlab_batch_throughput_jobs_per_second\{batch="%s",name="nightly"\} '
                        r'[1-9][0-9.]*' % bid, metrics) is not None,
          "/metrics has the batch's jobs by state, its size and throughput")

    rc, out, _ = cli(env, "batch", "show", bid)
    check(rc == 0 and "passed        195" in out and "finished:     yes" in out,
          "batch show has the counts")

    # ---- a --matrix batch that passes: exit 0, parameters in the rows
    tmpl = os.path.join(tmp, "template.json")
    with open(tmpl, "w") as f:
        f.write(spec("ok"))
    tasks = os.path.join(tmp, "tasks.txt")
    with open(tasks, "w") as f:
        f.write("astropy-1\n\ndjango/2\nsympy-3\n")
    rc, out, err = cli(env, "batch", "submit", "--name", "eval", "--matrix", f"task=@{tasks}",
                       "--matrix", "seed=1,2", "--watch", tmpl)
    check(rc == 0, f"a passing --matrix batch: submit --watch exits 0 ({rc}: {err.strip()})")
    mid = out.splitlines()[0] if out else ""
    rc, out, _ = cli(env, "batch", "results", "--jsonl", mid)
    rows = [json.loads(x) for x in out.splitlines()]
    got = sorted((r["params"]["task"], r["params"]["seed"], r["name"]) for r in rows)
    check(len(rows) == 6 and got[0] == ("astropy-1", "1", "astropy-1-1")
          and ("django/2", "2", "django_2-2") in got,
          f"3 tasks x 2 seeds = 6 jobs with their parameters and names ({got[:2]})")

    # ---- an infrastructure error: exit 2
    rc, out, err = cli(env, "batch", "submit", "--name", "broken", "--watch", "-",
                       stdin=spec("ok") + "\n" + spec("error") + "\n" + spec("fail:1") + "\n")
    check(rc == 2, f"a batch with an error: watch exits 2 (got {rc})")

    # ---- --max-parallel 2 and a CI job submitted meanwhile
    capped = "".join(spec("stream:10", ms="300") + "\n" for _ in range(6))
    rc, out, err = cli(env, "batch", "submit", "--name", "capped", "--max-parallel", "2", "-",
                       stdin=capped)
    cid = out.strip()
    ci_spec = os.path.join(tmp, "ci.json")
    with open(ci_spec, "w") as f:
        f.write(spec("ok", name="ci"))
    rc2, out2, err2 = cli(env, "job", "submit", ci_spec)
    ci_job = out2.strip().split()[0] if out2.strip() else ""
    rc, out, err = cli(env, "batch", "watch", "--interval", "1", cid)
    check(rc == 0 and rc2 == 0, f"the capped batch and the CI job ran ({rc}, {rc2}: {err2})")
    rc, out, _ = cli(env, "batch", "results", "--jsonl", cid)
    ids = {json.loads(x)["id"] for x in out.splitlines()}
    running, peak, starts, ci_start_seq = set(), 0, [], None
    for ev in all_events(sock):
        j = ev["job"] if "job" in ev else ev.get("job_id")
        if ev["from"] == "QUEUED" and ev["to"] == "PROVISIONING":
            if j == ci_job:
                ci_start_seq = ev["seq"]
            elif j in ids:
                running.add(j)
                starts.append(ev["seq"])
                peak = max(peak, len(running))
        elif ev["to"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "ERROR", "QUEUED"):
            running.discard(j)
    check(len(ids) == 6 and len(starts) == 6, f"all 6 capped jobs started ({len(starts)})")
    check(peak == 2, f"never more than 2 of them at a time (peak {peak})")
    check(ci_start_seq is not None and ci_start_seq < max(starts),
          "the CI job started before the batch's last job")

    # ---- cancel: exit 2
    hung = "".join(spec("hang") + "\n" for _ in range(3))
    rc, out, err = cli(env, "batch", "submit", "--name", "hung", "--max-parallel", "1", "-",
                       stdin=hung)
    hid = out.strip()
    if shutil.which("chromium"):
        url = f"http://127.0.0.1:{port}/#token={TOKEN}"
        dom = browse(tmp, url, "--dump-dom")
        row = re.search(r'<tr data-batch="%s">(.*?)</tr>' % hid, dom, re.S)
        text = re.sub(r"<[^>]+>", "|", row.group(1)) if row else ""
        check(row is not None and "|hung|" in text and "0 / 3" in text and "|1||0|" not in text
              and re.search(r"\|1\|\|2\|", text) is not None,
              f"the status page shows the running batch with its progress ({text[:120]})")
        browse(tmp, url, "--screenshot=" + os.path.join(outdir, "status_page_batches.png"),
               "--window-size=1280,900")
    else:
        check(False, "chromium is installed (scripts/setup.sh) for the status page check")
    rc, out, err = cli(env, "batch", "cancel", hid)
    check(rc == 0 and "cancel requested for 3 jobs" in out, f"cancel: {out.strip()} {err}")
    rc, out, err = cli(env, "batch", "watch", hid)
    check(rc == 2, f"a cancelled batch: watch exits 2 (got {rc})")

    rc, out, _ = cli(env, "batch", "ls")
    check(rc == 0 and all(n in out for n in ("nightly", "eval", "broken", "capped", "hung")),
          "batch ls lists them all")
    rc, out, err = cli(env, "batch", "watch", "b00000000000000000000")
    check(rc == 4, f"watching an unknown batch: exit 4 ({rc}: {err.strip()})")


if __name__ == "__main__":
    main()
    print(f"{len(passes)} passed, {len(failures)} failed")
    sys.exit(1 if failures else 0)
