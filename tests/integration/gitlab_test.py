#!/usr/bin/env python3
"""agentlabd as a GitLab runner, end to end against the fake GitLab.

  gitlab_test.py register AGENTLAB
      `agentlab gitlab register` against the fake (no VM).
  gitlab_test.py jobs AGENTLABD
      the real daemon with the micro image (AGENTLAB_TEST_STATE): one daemon
      takes a passing job (checkout on the host, masked and file variables,
      after_script, artifacts, a simulated trace loss), a failing one, one
      that times out, one GitLab cancels, one whose commit cannot be fetched,
      one with a malformed payload, one whose image: names a second image
      (micro under another name), and two refused before any VM: an image
      outside the pool's allowed_images and a container image reference. Then: states, failure reasons, exit
      codes, the exact trace, masked values nowhere (trace, daemon log, the
      SQLite files, job files), no VM, overlay or run dir left, and no
      protocol error seen by the fake.
  gitlab_test.py pipeline AGENTLABD
      a 3-stage pipeline, twice, each job in its own micro VM: build writes
      bin/app and fills a cache (expensive work only on a cache miss), test
      reads bin/app from its dependency, restores the cache through a
      fallback key and writes report.xml as a junit report (gzip), deploy
      reads both. The second run's build hits the cache and is faster (the
      numbers are printed); every upload and download is checked by the
      fake against gitlab-runner's requests.
"""
import base64
import json
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fakes"))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support"))
from gitlab_fake import FakeGitLab, make_job  # noqa: E402
from gitlab_git_repos import LFS_CONTENT, SUB_CONTENT, make_sub_lfs_repos  # noqa: E402
from libvirt_cleanup import destroy_test_pools  # noqa: E402
from skip import skip  # noqa: E402

RUNNER_TOKEN = "glrt-t3_AgentlabFakeRunnerToken01"
MASKED = "Sup3r-S3cret-Masked-Value-42"
FILE_SECRET = "file-variable-secret-contents-77"


DUMP = []  # called on failure to show what the fake saw


def fail(msg):
    for d in DUMP:
        d()
    print("FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def test_register(agentlab):
    tmp = tempfile.mkdtemp(prefix="al-glreg.")
    try:
        fake = FakeGitLab(RUNNER_TOKEN).start()
        ut = os.path.join(tmp, "user.token")
        with open(ut, "w") as f:
            f.write(fake.user_token + "\n")
        os.chmod(ut, 0o600)
        out = os.path.join(tmp, "etc", "runner.token")
        args = [agentlab, "gitlab", "register", "--url", fake.url + "/", "--user-token-file", ut,
                "--tags", "agentlab,vm", "--token-file", out, "--runner-type", "group_type",
                "--group-id", "42", "--description", "test runner"]
        p = subprocess.run(args, capture_output=True, text=True)
        check(p.returncode == 0, f"register failed: {p.stderr}")
        check(stat.S_IMODE(os.stat(out).st_mode) == 0o600, "token file is not mode 0600")
        token = open(out).read().strip()
        check(token == fake.runners[0]["token"], "token file does not hold the runner token")
        check(token not in p.stdout + p.stderr, "the runner token was printed")
        check(fake.user_token not in p.stdout + p.stderr, "the user token was printed")
        req = fake.runners[0]["request"]
        check(req["runner_type"] == "group_type" and req["group_id"] == 42, f"request {req}")
        check(req["tag_list"] == ["agentlab", "vm"], f"tags {req['tag_list']}")
        check("type = gitlab" in p.stdout and f"token_file = {out}" in p.stdout,
              f"config snippet: {p.stdout}")
        p = subprocess.run(args, capture_output=True, text=True)
        check(p.returncode == 1 and "exists" in p.stderr, "an existing token file was replaced")
        with open(ut, "w") as f:
            f.write("glpat-wrong-token\n")
        p = subprocess.run(args + ["--force"], capture_output=True, text=True)
        check(p.returncode == 1 and "401" in p.stderr, f"bad user token: {p.stderr}")
        check(open(out).read().strip() == token, "a failed register touched the token file")
        check(not fake.errors, f"fake saw protocol errors: {fake.errors}")
        fake.stop()
        print("gitlab register: ok")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def git(*args, cwd=None):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env=dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.test",
                            GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.test",
                            GIT_CONFIG_NOSYSTEM="1", HOME=cwd or "/tmp"))


def make_repo(root):
    """A bare repo at root/demo.git with one commit; returns its sha."""
    work = os.path.join(root, "work")
    os.makedirs(work)
    git("init", "-q", "-b", "main", ".", cwd=work)
    with open(os.path.join(work, "README.txt"), "w") as f:
        f.write("readme from the repository\n")
    os.makedirs(os.path.join(work, "src"))
    with open(os.path.join(work, "src", "main.c"), "w") as f:
        f.write("int main(void) { return 0; }\n")
    git("add", ".", cwd=work)
    git("commit", "-q", "-m", "first", cwd=work)
    sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=work, capture_output=True, text=True,
                         check=True).stdout.strip()
    bare = os.path.join(root, "demo.git")
    git("clone", "-q", "--bare", work, bare, cwd=root)
    git("update-ref", "refs/pipelines/7", sha, cwd=bare)
    return sha


def grep_files(paths, needles):
    hits = []
    for p in paths:
        try:
            data = open(p, "rb").read()
        except OSError:
            continue
        for n in needles:
            if n.encode() in data:
                hits.append((p, n))
    return hits


def all_files(top):
    for dirpath, _, names in os.walk(top):
        for n in names:
            yield os.path.join(dirpath, n)


def test_jobs(agentlabd):
    test_state = os.environ.get("AGENTLAB_TEST_STATE")
    micro = os.path.join(test_state or "", "images", "micro")
    if not test_state or not os.path.isdir(micro):
        skip("gitlab jobs: no micro image (run the micro fixture)")
    tmp = tempfile.mkdtemp(prefix="al-gl.")
    run = tempfile.mkdtemp(prefix="al-glr.")  # short: socket paths
    os.chmod(tmp, 0o711)
    os.chmod(run, 0o711)
    state = os.path.join(tmp, "state")
    os.makedirs(os.path.join(state, "images"))
    os.chmod(state, 0o711)
    shutil.copytree(micro, os.path.join(state, "images", "micro"), symlinks=True)
    # a second image: micro under another name (the catalog goes by the
    # manifest's name)
    alias = os.path.join(state, "images", "micro-alias")
    shutil.copytree(micro, alias, symlinks=True)
    with open(os.path.join(alias, "manifest.json")) as f:
        manifest = json.load(f)
    manifest["name"] = "micro-alias"
    # a mark only this image's VMs boot with, so the job proves from inside
    # which image it runs in
    manifest["cmdline"] += " agentlab_test_image=micro-alias"
    with open(os.path.join(alias, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    gitroot = os.path.join(tmp, "git")
    os.makedirs(gitroot)
    sha = make_repo(gitroot)
    # a submodule under a relative URL and a Git LFS file; and a repository
    # whose LFS object the server does not have
    sub_sha, lfs_oid = make_sub_lfs_repos(gitroot)
    gone_sha, _ = make_sub_lfs_repos(gitroot, "lfsgone", b"an object nobody uploaded\n")

    fake = FakeGitLab(RUNNER_TOKEN, git_root=gitroot, long_poll_s=2.0).start()
    fake.lfs_objects[lfs_oid] = LFS_CONTENT
    srv = fake.url
    token_file = os.path.join(tmp, "runner.token")
    with open(token_file, "w") as f:
        f.write(RUNNER_TOKEN + "\n")
    os.chmod(token_file, 0o600)
    conf = os.path.join(tmp, "agentlab.conf")
    with open(conf, "w") as f:
        f.write(f"""[agent]
log_level = info
image = micro
boot_timeout = 2m
[backend "local"]
max_vms = 2
[pool "default"]
allowed_images = micro, micro-*
[source "gl"]
type = gitlab
url = {srv}
token_file = {token_file}
labels = agentlab
concurrent = 2
poll_interval = 1s
""")

    masked_var = {"key": "DEPLOY_KEY", "value": MASKED, "public": False, "masked": True,
                  "file": False, "raw": False}
    file_var = {"key": "CONFIG_FILE", "value": FILE_SECRET, "public": False, "masked": True,
                "file": True, "raw": False}
    notes_var = {"key": "NOTES_FILE", "value": "notes line 1\nnotes line 2\n", "public": True,
                 "masked": False, "file": True, "raw": False}
    plain_var = {"key": "GREETING", "value": "hello 'quoted' \"world\"", "public": True,
                 "masked": False, "file": False, "raw": False}
    arts = [{"name": "results", "untracked": False, "paths": ["out/*.txt", "logs/"],
             "exclude": ["out/skip.txt"], "when": "on_success", "artifact_type": "archive",
             "artifact_format": "zip", "expire_in": "1 week"}]
    jobs = {}
    jobs["pass"] = fake.add_job(make_job(101, srv, sha, name="pass-job", variables=[
        masked_var, file_var, notes_var, plain_var], script=[
        "echo \"greeting: $GREETING\"",
        "cat README.txt",
        "echo \"the key is $DEPLOY_KEY\"",
        "cat \"$CONFIG_FILE\"; echo",
        "test \"$(wc -c < \"$CONFIG_FILE\")\" -eq %d" % len(FILE_SECRET),
        "cat \"$NOTES_FILE\"",
        "sleep 3",
        "echo \"token: ${CI_JOB_TOKEN:-absent}\"",
        "mkdir -p out logs && echo artifact-data > out/result.txt && echo skip > out/skip.txt",
        "echo log > logs/run.log && echo not-wanted > out/other.bin",
    ], after_script=["echo after script ran", "exit 4"], artifacts=arts), lose_trace=True)
    jobs["fail"] = fake.add_job(make_job(102, srv, sha, name="fail-job",
                                         script=["echo failing now", "exit 3", "echo never"],
                                         after_script=["echo after the failure"]))
    jobs["timeout"] = fake.add_job(make_job(103, srv, sha, name="timeout-job", timeout=6,
                                            script=["echo sleeping", "sleep 120"]))
    jobs["cancel"] = fake.add_job(make_job(104, srv, sha, name="cancel-job",
                                           script=["echo CANCEL-ME", "sleep 120"]),
                                  cancel_on="CANCEL-ME")
    jobs["badsha"] = fake.add_job(make_job(105, srv, "1" * 40, name="badsha-job",
                                           script=["echo never runs"]))
    broken = make_job(106, srv, sha, name="broken-job", script=["true"])
    broken["steps"][0]["script"] = "echo not an array"
    jobs["broken"] = fake.add_job(broken)
    # a later stage: the artifacts of pass-job unpacked into its sources
    # (handed out once pass-job has finished); and one whose dependency has none
    jobs["deps"] = fake.add_job(make_job(108, srv, sha, name="deps-job", dependencies=[
        {"id": 101, "name": "pass-job",
         "artifacts_file": {"filename": "artifacts.zip", "size": 1000}}], script=[
        "cat out/result.txt", "cat logs/run.log", "test ! -e out/skip.txt", "cat README.txt",
        "cat /proc/cmdline"]))
    jobs["nodeps"] = fake.add_job(make_job(109, srv, sha, name="nodeps-job", dependencies=[
        {"id": 102, "name": "fail-job",
         "artifacts_file": {"filename": "artifacts.zip", "size": 1000}}],
        script=["echo NODEPS-RAN-$((6 * 7))"]))
    # image: picks the VM image, among the pool's allowed_images
    jobs["image"] = fake.add_job(make_job(110, srv, sha, name="image-job", image="micro-alias",
                                          script=["echo IMAGE-JOB-RAN", "cat /proc/cmdline"]))
    jobs["notallowed"] = fake.add_job(make_job(111, srv, sha, name="notallowed-job",
                                               image="debian-12", script=["echo never runs"]))
    jobs["container"] = fake.add_job(make_job(112, srv, sha, name="container-job",
                                              image="ruby:3.3", script=["echo never runs"]))
    # submodules (recursive, relative URL), Git LFS and GIT_DEPTH=1 on the
    # host checkout (GitLab sends GIT_DEPTH as git_info.depth too)
    def plain(k, v):
        return {"key": k, "value": v, "public": True, "masked": False, "file": False,
                "raw": False}
    jobs["sublfs"] = fake.add_job(make_job(113, srv, sub_sha, name="sublfs-job", project="super",
                                           depth=1, variables=[
        plain("GIT_DEPTH", "1"), plain("GIT_SUBMODULE_STRATEGY", "recursive")], script=[
        "sha256sum lib/sub.txt data/blob.bin", "echo \"shallow: $(cat .git/shallow)\""]))
    jobs["lfsgone"] = fake.add_job(make_job(114, srv, gone_sha, name="lfsgone-job",
                                            project="lfsgone", script=["echo never runs"]))
    jobs["badflags"] = fake.add_job(make_job(115, srv, sha, name="badflags-job", variables=[
        plain("GIT_FETCH_EXTRA_FLAGS", "--prune --upload-pack=/bin/sh")],
        script=["echo never runs"]))
    # last: agentlabd is stopped while it runs
    # (handed out after the later stage: dependencies without artifacts_file
    # download nothing)
    stopped = fake.add_job(make_job(107, srv, sha, name="stopped-job",
                                    script=["echo RUNNING-NOW", "sleep 120"],
                                    dependencies=[{"id": 108, "name": "deps-job"},
                                                  {"id": 109, "name": "nodeps-job"}]))

    def dump():
        for k, j in jobs.items():
            print(f"--- {k} ({j.id}) status {j.status} final {j.final}\n"
                  f"{j.trace.decode(errors='replace')}", file=sys.stderr)
        print(f"--- fake errors: {fake.errors}", file=sys.stderr)
    DUMP.append(dump)
    env = dict(os.environ, AGENTLAB_CONFIG=conf, AGENTLAB_STATE_DIR=state, AGENTLAB_RUN_DIR=run)
    log_path = os.path.join(tmp, "daemon.log")
    logf = open(log_path, "wb")
    t0 = time.time()
    daemon = subprocess.Popen([agentlabd], env=env, stderr=logf, stdout=logf)
    ok = False
    try:
        ok = fake.wait(lambda: all(j.final is not None or j.status in ("canceled",)
                                   for j in jobs.values()), 420)
        elapsed = time.time() - t0
        if ok:
            ok = fake.wait(lambda: b"RUNNING-NOW\n" in stopped.trace, 240)
        if ok:
            # a silent job keeps itself alive with PUT state=running
            ok = fake.wait(lambda: any(u["state"] == "running" for u in stopped.updates), 60)
        t_stop = time.time()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = "killed"
        logf.close()
    log = open(log_path, "rb").read().decode(errors="replace")
    if not ok:
        print(log[-6000:], file=sys.stderr)
        fail("not every job was reported: " + ", ".join(
            f"{k}={j.status}/{j.final}" for k, j in jobs.items()))
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM\n{log[-3000:]}")
    stop_s = time.time() - t_stop
    f = stopped.final
    check(f is not None and f["state"] == "failed" and
          f["failure_reason"] == "runner_system_failure",
          f"a job running at shutdown was reported as {f}")
    check(stopped.trace.endswith(b"ERROR: Job failed (system failure): agentlabd stopped\n"),
          f"stopped: trace {stopped.trace!r}")
    print(f"SIGTERM with a job running: reported and stopped in {stop_s:.1f}s")
    jobs["stopped"] = stopped
    print(f"all jobs reported in {elapsed:.1f}s")
    for k, j in jobs.items():
        print(f"  {k:8} handed out at +{j.handed_at - t0:5.1f}s, reported after "
              f"{j.finished_at - j.handed_at:5.1f}s")
    if os.environ.get("GITLAB_TEST_LOG"):
        shutil.copy(log_path, os.environ["GITLAB_TEST_LOG"])

    def final(name):
        return jobs[name].final

    # states, reasons, exit codes
    f = final("pass")
    check(f["state"] == "success" and f.get("exit_code") == 0, f"pass: {f}")
    f = final("fail")
    check(f["state"] == "failed" and f["failure_reason"] == "script_failure" and
          f.get("exit_code") == 3, f"fail: {f}")
    f = final("timeout")
    check(f["state"] == "failed" and f["failure_reason"] == "job_execution_timeout",
          f"timeout: {f}")
    f = final("cancel")
    check(f["state"] == "failed" and f["failure_reason"] == "job_canceled", f"cancel: {f}")
    check(jobs["cancel"].finished_at - jobs["cancel"].canceled_at < 60,
          "cancel took over a minute")
    f = final("badsha")
    check(f["state"] == "failed" and f["failure_reason"] == "runner_system_failure",
          f"badsha: {f}")
    check(b"fetching the sources failed" in jobs["badsha"].trace, "badsha: trace says why")
    f = final("broken")
    check(f["state"] == "failed" and f["failure_reason"] == "runner_system_failure",
          f"broken: {f}")
    check(b"steps[0].script: expected an array" in jobs["broken"].trace,
          f"broken: trace {jobs['broken'].trace!r}")

    # the exact trace: what the VM printed (the engine's output.log, redacted)
    db = os.path.join(state, "agentlab.db")
    con = sqlite3.connect(db)
    ids = dict(con.execute("select source_ref, id from jobs where source_type = 'gitlab'"))
    con.close()
    for name in ("pass", "fail"):
        gid = str(jobs[name].id)
        check(gid in ids, f"{name}: no agentlab job for GitLab job {gid}")
        printed = open(os.path.join(state, "jobs", ids[gid], "output.log"), "rb").read()
        trace = jobs[name].trace
        if name == "pass":
            check(trace == printed, f"pass: trace differs from what the VM printed:\n"
                                    f"{trace!r}\n--- printed:\n{printed!r}")
        else:
            check(trace.startswith(printed) and
                  trace[len(printed):].endswith(b"ERROR: Job failed: exit code 3\n"),
                  f"fail: trace {trace!r}")
    t = jobs["pass"].trace.decode()
    for want in ("greeting: hello 'quoted' \"world\"", "readme from the repository",
                 "the key is ***", "\n***\n", "notes line 2",
                 "token: absent", "after script ran", "$ cat README.txt",
                 "WARNING: after_script failed"):
        check(want in t, f"pass: {want!r} missing from the trace:\n{t}")
    check("after the failure" in jobs["fail"].trace.decode(), "fail: after_script did not run")
    check("never" not in jobs["fail"].trace.decode().replace("echo never", ""),
          "fail: the script went on after exit 3")
    check(jobs["pass"].sent_416 >= 1, "the simulated trace loss was not exercised")

    # artifacts: only what the patterns ask for
    a = jobs["pass"].artifacts
    check(a is not None, "pass: no artifacts uploaded")
    check(sorted(a) == ["logs/run.log", "out/result.txt"], f"artifacts: {sorted(a)}")
    check(a["out/result.txt"] == b"artifact-data\n", "artifact content")
    check(jobs["pass"].artifact_query.get("expire_in") == ["1 week"], "expire_in")
    check(jobs["fail"].artifacts is None, "a failed job uploaded on_success artifacts")

    # dependencies: downloaded with the dependent job's token, unpacked before the script
    f = final("deps")
    t = jobs["deps"].trace.decode()
    check(f["state"] == "success", f"deps: {f}\n{t}")
    for want in ("Downloading artifacts for pass-job (101)... ok\n", "\nartifact-data\n",
                 "\nlog\n", "readme from the repository"):
        check(want in t, f"deps: {want!r} missing from the trace:\n{t}")
    f = final("nodeps")
    t = jobs["nodeps"].trace.decode()
    check(f["state"] == "failed" and f["failure_reason"] == "runner_system_failure",
          f"nodeps: {f}")
    check("downloading the artifacts of fail-job (102) failed: HTTP 404" in t,
          f"nodeps: trace {t!r}")
    check("NODEPS-RAN-42" not in t, "nodeps: the script ran")
    check(sorted(fake.downloads) == [(108, 101, 200), (109, 102, 404)],
          f"downloads: {fake.downloads}")

    # image: the job ran in the image it named; the others were refused
    # before any checkout or VM, with the reason in the trace
    f = final("image")
    check(f["state"] == "success" and b"IMAGE-JOB-RAN" in jobs["image"].trace,
          f"image: {f} {jobs['image'].trace!r}")
    check(b"agentlab_test_image=micro-alias" in jobs["image"].trace,
          f"image: the job did not run in micro-alias's VM: {jobs['image'].trace!r}")
    check(b"console=ttyS0" in jobs["deps"].trace and
          b"agentlab_test_image=" not in jobs["deps"].trace,
          f"a job without image: did not run in micro's VM: {jobs['deps'].trace!r}")
    con = sqlite3.connect(db)
    row = con.execute("select spec from jobs where source_type = 'gitlab' and source_ref = '110'"
                      ).fetchone()
    n_refused = con.execute("select count(*) from jobs where source_type = 'gitlab' and "
                            "source_ref in ('111', '112')").fetchone()[0]
    con.close()
    check(row and json.loads(row[0]).get("image") == "micro-alias", f"image: spec {row}")
    check(n_refused == 0, "a refused job reached the engine")
    for name, want in (("notallowed", "allowed_images"),
                       ("container", 'image "ruby:3.3": agentlab runs jobs in VM images')):
        f = final(name)
        t = jobs[name].trace.decode()
        check(f["state"] == "failed" and f["failure_reason"] == "runner_system_failure",
              f"{name}: {f}")
        check("ERROR: Job failed (system failure): " in t and want in t,
              f"{name}: the trace does not say {want!r}: {t!r}")
        check("never runs" not in t.replace("echo never runs", ""), f"{name}: the script ran")

    # submodules, LFS, depth: what the job printed of its work dir
    import hashlib
    f = final("sublfs")
    t = jobs["sublfs"].trace.decode()
    check(f["state"] == "success", f"sublfs: {f}\n{t}")
    for want in ("Updating/initializing submodules recursively with git depth set to 1...\n",
                 f"{hashlib.sha256(SUB_CONTENT).hexdigest()}  lib/sub.txt\n",
                 f"{hashlib.sha256(LFS_CONTENT).hexdigest()}  data/blob.bin\n",
                 f"shallow: {sub_sha}\n"):
        check(want in t, f"sublfs: {want!r} missing from the trace:\n{t}")
    check(fake.lfs_downloads == [lfs_oid], f"LFS downloads: {fake.lfs_downloads}")
    for name, want in (("lfsgone", "fetching the sources failed: git lfs pull (Git LFS objects "
                                   "could not be fetched) failed"),
                       ("badflags", 'GIT_FETCH_EXTRA_FLAGS: agentlab does not pass '
                                    '"--upload-pack=/bin/sh"')):
        f = final(name)
        t = jobs[name].trace.decode()
        check(f["state"] == "failed" and f["failure_reason"] == "runner_system_failure",
              f"{name}: {f}")
        check(want in t and "never runs" not in t.replace("echo never runs", ""),
              f"{name}: the trace does not say {want!r}: {t!r}")
    check(fake.git_auth_failures == 0,
          f"git/LFS requests without the job token: {fake.git_auth_paths}")
    # the host checkout's time: from the job's start to its submit (daemon log)
    def stamp(line):
        return time.mktime(time.strptime(line[:19], "%Y-%m-%dT%H:%M:%S")) + \
            int(line[20:23]) / 1000
    for name in ("pass", "image", "sublfs"):
        gid = jobs[name].id
        began = [ln for ln in log.splitlines() if f": job {gid} (" in ln]
        submitted = [ln for ln in log.splitlines() if f"GitLab job {gid} (" in ln]
        if began and submitted:
            print(f"  checkout of {name}: {stamp(submitted[0]) - stamp(began[0]):.2f}s")

    # long polling
    check(fake.echoed > 0, "last_update was never echoed")
    check(fake.long_polls > 0, "no request was long-polled")

    # secrets: nowhere
    secrets = [MASKED, FILE_SECRET, RUNNER_TOKEN] + [j.token for j in jobs.values()]
    secrets += [base64.b64encode(("gitlab-ci-token:" + j.token).encode()).decode()
                for j in jobs.values()]
    for name, j in jobs.items():
        for s in secrets:
            check(s.encode() not in j.trace, f"{name}: a secret is in the trace")
    hits = grep_files([log_path] + list(all_files(state)), secrets)
    hits = [h for h in hits if not h[0].startswith(os.path.join(state, "images"))]
    check(not hits, f"secrets found in files: {hits}")

    # nothing left behind
    names = subprocess.run(["virsh", "-c", "qemu:///system", "list", "--all", "--name"],
                           capture_output=True, text=True).stdout
    for eid in ids.values():
        check(eid not in names, f"a domain of {eid} is left")
    check(not os.listdir(os.path.join(state, "pools", "local")) if
          os.path.isdir(os.path.join(state, "pools", "local")) else True, "overlays left")
    check(not os.listdir(os.path.join(run, "vms")) if os.path.isdir(os.path.join(run, "vms"))
          else True, "VM run dirs left")
    co = os.path.join(state, "gitlab")
    left = [p for p in all_files(co)] if os.path.isdir(co) else []
    check(not left, f"checkout files left: {left}")
    for eid in ids.values():
        check(not os.path.exists(os.path.join(state, "jobs", eid, "workdir.tar")),
              "a work dir archive was kept")
    check(not fake.errors, "the fake saw protocol errors:\n  " + "\n  ".join(fake.errors))
    fake.stop()
    # the storage pool this daemon made for its private state dir
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("gitlab jobs: ok")


EXPENSIVE_S = 12  # what the build does without its cache (a slow dependency fetch)
# tokens a job prints: GitLab's personal access token prefix (always masked)
# and the prefixes GitLab sends in features.token_mask_prefixes
PAT_TOKEN = "glpat-Fak3PersonalAcc3ssT0ken_x9"
SPLIT_TOKEN = "glpat-Spl1tAcrossTw0Writes-q7"
DEPLOY_TOKEN = "gldt-Fak3DeployT0ken.ab=cd"
MASK_PREFIXES = ["gldt-", "glrt-"]


def pipeline_jobs(srv, sha, base):
    """build -> test -> deploy, job ids base+1..base+3."""
    cache = {"key": "deps-non_protected", "untracked": False, "policy": "pull-push",
             "paths": ["vendor/"], "when": "on_success", "fallback_keys": []}
    # a variable referencing others names the archive; tokens with GitLab's
    # prefixes are printed (one split across two writes of the job)
    version = [{"key": "APP_VERSION", "value": "1.4", "public": True, "masked": False,
                "file": False, "raw": False},
               {"key": "APP_TAG", "value": "v$APP_VERSION-${CI_COMMIT_REF_NAME}", "public": True,
                "masked": False, "file": False, "raw": False},
               {"key": "RAW_TAG", "value": "v$APP_VERSION", "public": True, "masked": False,
                "file": False, "raw": True}]
    build = make_job(base + 1, srv, sha, name="build", project_id=77, cache=[cache],
                     variables=version, mask_prefixes=MASK_PREFIXES, script=[
        f"echo \"pushing with {PAT_TOKEN} now\"",
        f"printf '%s' '{SPLIT_TOKEN[:9]}'; sleep 2; printf '%s done\\n' '{SPLIT_TOKEN[9:]}'",
        f"echo deploy token {DEPLOY_TOKEN}.",
        "echo \"tag=$APP_TAG raw=$RAW_TAG\"",
        "start=$(cut -d. -f1 /proc/uptime)",
        "if [ -f vendor/deps.txt ]; then echo CACHE-HIT; else echo CACHE-MISS; "
        f"sleep {EXPENSIVE_S}; mkdir -p vendor; "
        "dd if=/dev/urandom of=vendor/blob bs=1024 count=64 2>/dev/null; "
        "echo deps-$start > vendor/deps.txt; fi",
        "mkdir -p bin && printf '#!/bin/sh\\necho app-built\\n' > bin/app",
        "echo BUILD-STEP-SECONDS=$(( $(cut -d. -f1 /proc/uptime) - start ))",
    ], artifacts=[{"name": "build-$APP_TAG", "untracked": False, "paths": ["bin/"],
                   "when": "on_success", "artifact_type": "archive", "artifact_format": "zip",
                   "expire_in": "1 day"}])
    # test: another key, reaching the build's cache through its fallback key;
    # pull only (never saves)
    tcache = {"key": "test-non_protected", "untracked": False, "policy": "pull",
              "paths": ["vendor/"], "when": "on_success",
              "fallback_keys": ["deps-non_protected"]}
    test = make_job(base + 2, srv, sha, name="test", project_id=77, cache=[tcache], dependencies=[
        {"id": base + 1, "name": "build",
         "artifacts_file": {"filename": "build-v1.4-main.zip", "size": 1000}}], script=[
        "test -f vendor/deps.txt && echo TEST-CACHE-HIT $(cat vendor/deps.txt)",
        "echo scratch > scratch.tmp && echo changed > src/main.c",
        "sh bin/app",
        "printf '<testsuite name=\"unit\" tests=\"2\"><testcase name=\"a\"/>"
        "<testcase name=\"b\"/></testsuite>\\n' > report.xml",
        "mkdir -p more && echo '<testsuite name=\"more\" tests=\"0\"/>' > more/extra.xml",
    ], artifacts=[
        # untracked: what the job and its dependencies and cache brought,
        # not the checkout's files (changed or not), nor what exclude names
        {"name": "test-output", "untracked": True, "paths": ["report.xml"],
         "exclude": ["vendor/**", "*.tmp"],
         "when": "always", "artifact_type": "archive", "artifact_format": "zip"},
        {"name": "junit.xml", "untracked": False, "paths": ["report.xml", "more/*.xml"],
         "when": "always", "artifact_type": "junit", "artifact_format": "gzip",
         "expire_in": "30 days"}])
    deploy = make_job(base + 3, srv, sha, name="deploy", project_id=77, dependencies=[
        {"id": base + 1, "name": "build",
         "artifacts_file": {"filename": "build-v1.4-main.zip", "size": 1000}},
        {"id": base + 2, "name": "test",
         "artifacts_file": {"filename": "test-output.zip", "size": 1000}}], script=[
        "sh bin/app", "case \"$(cat report.xml)\" in *'tests=\"2\"'*) echo REPORT-OK;; esac",
        "echo DEPLOYED"])
    return [build, test, deploy]


def test_pipeline(agentlabd):
    test_state = os.environ.get("AGENTLAB_TEST_STATE")
    micro = os.path.join(test_state or "", "images", "micro")
    if not test_state or not os.path.isdir(micro):
        skip("gitlab pipeline: no micro image (run the micro fixture)")
    tmp = tempfile.mkdtemp(prefix="al-glp.")
    run = tempfile.mkdtemp(prefix="al-glpr.")
    os.chmod(tmp, 0o711)
    os.chmod(run, 0o711)
    state = os.path.join(tmp, "state")
    os.makedirs(os.path.join(state, "images"))
    os.chmod(state, 0o711)
    shutil.copytree(micro, os.path.join(state, "images", "micro"), symlinks=True)
    gitroot = os.path.join(tmp, "git")
    os.makedirs(gitroot)
    sha = make_repo(gitroot)
    cache_dir = os.path.join(tmp, "shared-cache")  # as an NFS mount would be
    fake = FakeGitLab(RUNNER_TOKEN, git_root=gitroot, long_poll_s=2.0).start()
    srv = fake.url
    token_file = os.path.join(tmp, "runner.token")
    with open(token_file, "w") as f:
        f.write(RUNNER_TOKEN + "\n")
    os.chmod(token_file, 0o600)
    conf = os.path.join(tmp, "agentlab.conf")
    with open(conf, "w") as f:
        f.write(f"""[agent]
log_level = info
image = micro
boot_timeout = 2m
[backend "local"]
max_vms = 2
[source "gl"]
type = gitlab
url = {srv}
token_file = {token_file}
concurrent = 2
poll_interval = 1s
cache_dir = {cache_dir}
cache_max_size = 64M
""")
    runs = []
    env = dict(os.environ, AGENTLAB_CONFIG=conf, AGENTLAB_STATE_DIR=state, AGENTLAB_RUN_DIR=run)
    log_path = os.path.join(tmp, "daemon.log")
    logf = open(log_path, "wb")
    t0 = time.time()
    daemon = subprocess.Popen([agentlabd], env=env, stderr=logf, stdout=logf)

    def dump():
        for r in runs:
            for j in r:
                print(f"--- {j.payload['job_info']['name']} ({j.id}) status {j.status} "
                      f"final {j.final} uploads {j.uploads}\n"
                      f"{j.trace.decode(errors='replace')}", file=sys.stderr)
        print(f"--- fake errors: {fake.errors}", file=sys.stderr)
    DUMP.append(dump)
    ok = True
    try:
        for base in (200, 210):
            jobs = [fake.add_job(p) for p in pipeline_jobs(srv, sha, base)]
            runs.append(jobs)
            ok = fake.wait(lambda: all(j.final is not None for j in jobs), 300)
            if not ok:
                break
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            rc = daemon.wait(120)
        except subprocess.TimeoutExpired:
            daemon.kill()
            rc = "killed"
        logf.close()
    log = open(log_path, "rb").read().decode(errors="replace")
    if not ok:
        print(log[-6000:], file=sys.stderr)
        fail("the pipeline did not finish")
    check(rc == 0, f"agentlabd exited {rc} on SIGTERM\n{log[-3000:]}")
    total = time.time() - t0
    check(fake.features.get("cache") is True, f"cache not advertised: {fake.features}")
    check(fake.features.get("upload_raw_artifacts") is True,
          f"upload_raw_artifacts not advertised: {fake.features}")

    def trace(j):
        return j.trace.decode(errors="replace")
    for n, (build, test, deploy) in enumerate(runs):
        for j in (build, test, deploy):
            check(j.final["state"] == "success", f"run {n + 1}: {j.payload['job_info']['name']}: "
                                                 f"{j.final}\n{trace(j)}")
        # build: a miss the first time, a hit the second
        want = "CACHE-MISS" if n == 0 else "CACHE-HIT"
        check(want in trace(build), f"run {n + 1}: build says no {want}:\n{trace(build)}")
        check("Saving cache deps-non_protected for successful job" in trace(build) and
              "Created cache" in trace(build), f"run {n + 1}: build saved no cache")
        if n == 1:
            check("Successfully restored cache" in trace(build), "run 2: build restored nothing")
        # test: the build's cache through the fallback key, and bin/app
        t = trace(test)
        for w in ("Checking cache for test-non_protected...",
                  "Using the cache of fallback key deps-non_protected",
                  "TEST-CACHE-HIT deps-", "app-built", "Downloading artifacts for build"):
            check(w in t, f"run {n + 1}: test: {w!r} missing:\n{t}")
        check("Saving cache" not in t, f"run {n + 1}: a pull-only cache was saved")
        # the junit report: one gzip member per file, with its type and expire_in
        rep = test.reports.get("junit")
        check(rep is not None and len(rep) == 2, f"run {n + 1}: junit members {rep}")
        check(any(b'<testcase name="a"/>' in m for m in rep) and
              any(b'name="more"' in m for m in rep), f"run {n + 1}: junit content {rep}")
        up = {u[0]: u for u in test.uploads}
        check(up["junit"][1:3] == ("gzip", "junit.xml.gz") and
              up["junit"][3].get("expire_in") == ["30 days"], f"junit upload {up['junit']}")
        check(up["archive"][1:3] == ("zip", "test-output.zip"), f"archive upload {up['archive']}")
        check(sorted(test.artifacts) == ["bin/app", "more/extra.xml", "report.xml"],
              f"test archive (report.xml and the untracked files) {sorted(test.artifacts)}")
        check(build.uploads[0][2] == "build-v1.4-main.zip" and
              build.artifact_query.get("expire_in") == ["1 day"], f"build upload {build.uploads}")
        check(sorted(build.artifacts) == ["bin/app"], f"build archive {sorted(build.artifacts)}")
        # tokens: masked by their prefixes, also across two writes
        t = trace(build)
        for w in ("pushing with glpat-*** now", "glpat-*** done", "deploy token gldt-***\n",
                  "tag=v1.4-main raw=v$APP_VERSION"):
            check(w in t, f"run {n + 1}: build: {w!r} missing:\n{t}")
        # deploy: both
        t = trace(deploy)
        for w in ("app-built", "REPORT-OK", "DEPLOYED"):
            check(w in t, f"run {n + 1}: deploy: {w!r} missing:\n{t}")
    # the cache store: one archive per key, per project, nothing half written
    files = sorted(os.path.relpath(p, cache_dir) for p in all_files(cache_dir))
    check(files == ["77/deps-non_protected.zip"], f"cache store: {files}")

    def step_s(j):
        for line in trace(j).splitlines():
            if line.startswith("BUILD-STEP-SECONDS="):
                return int(line.split("=")[1])
        fail(f"no step time in {trace(j)}")
    b1, b2 = runs[0][0], runs[1][0]
    s1, s2 = step_s(b1), step_s(b2)
    j1, j2 = b1.finished_at - b1.handed_at, b2.finished_at - b2.handed_at
    p1 = runs[0][2].finished_at - runs[0][0].handed_at
    p2 = runs[1][2].finished_at - runs[1][0].handed_at
    print(f"build step in the VM: {s1}s without the cache, {s2}s with it; build job "
          f"(handed out to reported): {j1:.1f}s, then {j2:.1f}s; whole pipeline "
          f"{p1:.1f}s, then {p2:.1f}s; {total:.0f}s in all")
    # the step itself is timed in the VM; the job times include a VM boot
    # each, whose spread under TCG on a busy host is only reported
    check(s1 >= EXPENSIVE_S and s2 < EXPENSIVE_S / 2, "the cached build step was not faster")
    check(sorted(fake.downloads) == [(202, 201, 200), (203, 201, 200), (203, 202, 200),
                                     (212, 211, 200), (213, 211, 200), (213, 212, 200)],
          f"downloads {fake.downloads}")
    check(not fake.errors, "the fake saw protocol errors:\n  " + "\n  ".join(fake.errors))
    # the printed tokens nowhere in clear: traces, the daemon's log, the
    # database and every file of the state dir (the split one's second half
    # is in the script's text on its own, where no prefix announces it)
    tokens = [PAT_TOKEN, SPLIT_TOKEN, DEPLOY_TOKEN, PAT_TOKEN[6:], DEPLOY_TOKEN[5:]]
    for r in runs:
        for j in r:
            for tok in tokens:
                check(tok.encode() not in j.trace, f"a token in the trace of {j.id}")
    hits = grep_files([log_path] + list(all_files(state)), tokens)
    hits = [h for h in hits if not h[0].startswith(os.path.join(state, "images"))]
    check(not hits, f"tokens found in files: {hits}")
    fake.stop()
    destroy_test_pools(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(run, ignore_errors=True)
    print("gitlab pipeline: ok")


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("register", "jobs", "pipeline"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    if sys.argv[1] == "register":
        test_register(sys.argv[2])
    elif sys.argv[1] == "pipeline":
        test_pipeline(sys.argv[2])
    else:
        test_jobs(sys.argv[2])


if __name__ == "__main__":
    main()
