#!/usr/bin/env python3
"""How long submitting and listing a batch of N jobs (default 10,000) takes,
and the daemon's memory with them: the real CLI against fake_agentlabd (the
real API, engine and store on the simulated hypervisor).

  1. N jobs that wait (one VM, every job hangs): submit (one request, one
     transaction), `batch show`, `batch ls`, `batch results --jsonl` (every
     row), `job ls` (one page), the daemon's RSS with N queued jobs, cancel.
  2. N jobs that run (64 VMs, each job ends at once): submit, `batch watch`
     until all have ended, results.

Usage: bench_batch.py FAKE_AGENTLABD AGENTLAB [N]
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

FAKED, CLI = sys.argv[1:3]
N = int(sys.argv[3]) if len(sys.argv) > 3 else 10000


def rss_kib(pid):
    vals = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                vals[k] = int(v.split()[0])
    return vals


def timed(env, *args, stdin=None):
    t0 = time.monotonic()
    p = subprocess.run([CLI, *args], input=stdin, capture_output=True, text=True, env=env)
    dt = time.monotonic() - t0
    if p.returncode not in (0, 1, 2):
        raise RuntimeError(f"{args}: {p.returncode} {p.stderr}")
    return dt, p.stdout


def start(tmp, vms):
    state = os.path.join(tmp, f"state-{vms}")
    d = subprocess.Popen([FAKED, state, str(vms), "0"], stdout=subprocess.PIPE, text=True)
    if not d.stdout.readline().startswith("ready"):
        raise RuntimeError("fake_agentlabd did not start")
    env = dict(os.environ, AGENTLAB_SOCKET=os.path.join(state, "api.sock"))
    return d, env


def stop(d):
    d.terminate()
    d.wait(timeout=120)


def main():
    tmp = tempfile.mkdtemp(prefix="agentlab-bench-batch-")
    try:
        body_wait = "".join(json.dumps({"command": ["x"], "env": {"FAKE": "hang"}}) + "\n"
                            for _ in range(N))
        body_run = "".join(json.dumps({"command": ["x"], "env": {"FAKE": "ok"}}) + "\n"
                           for _ in range(N))
        print(f"batch of {N} jobs ({len(body_wait) / 1e6:.1f} MB of JSON Lines)")

        d, env = start(tmp, 1)
        base = rss_kib(d.pid)
        dt, out = timed(env, "batch", "submit", "--name", "wait", "-", stdin=body_wait)
        bid = out.strip()
        print(f"  submit (all queued):           {dt:7.3f} s")
        after = rss_kib(d.pid)
        dt, _ = timed(env, "batch", "show", bid)
        print(f"  batch show:                    {dt:7.3f} s")
        dt, _ = timed(env, "batch", "ls")
        print(f"  batch ls:                      {dt:7.3f} s")
        dt, out = timed(env, "batch", "results", "--jsonl", bid)
        rows = len(out.splitlines())
        print(f"  batch results --jsonl ({rows} rows): {dt:7.3f} s")
        dt, _ = timed(env, "job", "ls")
        print(f"  job ls (first page):           {dt:7.3f} s")
        print(f"  daemon RSS: {base['VmRSS'] / 1024:.1f} MiB before, "
              f"{after['VmRSS'] / 1024:.1f} MiB with {N} queued (peak {after['VmHWM'] / 1024:.1f} MiB)")
        dt, _ = timed(env, "batch", "cancel", bid)
        print(f"  batch cancel:                  {dt:7.3f} s")
        stop(d)

        d, env = start(tmp, 64)
        t0 = time.monotonic()
        dt, out = timed(env, "batch", "submit", "--name", "run", "-", stdin=body_run)
        bid = out.strip()
        print(f"  submit (running at once):      {dt:7.3f} s")
        dt, out = timed(env, "batch", "watch", "--interval", "60", bid)
        total = time.monotonic() - t0
        print(f"  all {N} ended after            {total:7.3f} s ({N / total:.0f} jobs/s), "
              f"last line: {out.strip().splitlines()[-1]}")
        dt, out = timed(env, "batch", "results", "--jsonl", bid)
        print(f"  batch results --jsonl ({len(out.splitlines())} rows): {dt:7.3f} s")
        print(f"  daemon peak RSS: {rss_kib(d.pid)['VmHWM'] / 1024:.1f} MiB")
        stop(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
