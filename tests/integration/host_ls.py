#!/usr/bin/env python3
"""`agentlab host ls` against agentlabd with two libvirt backends and no VM:

  - "local" on libvirt's test driver (test:///default): transport local,
    reachable, its accelerator and capacity, and the images of the daemon's
    catalogue with their sha256 ("local files");
  - "h2" on a second libvirtd in its own mount namespace, reached over
    qemu+tcp://127.0.0.1:PORT/system (tests/scripts/remote-libvirtd.sh):
    transport remote, reachable, and the complete image volumes of its
    storage pool with the sha256 of their markers (a volume without a marker
    and one whose marker does not match are left out); after the remote
    libvirtd stops, reachable turns false with the connection error, and
    true again once it is back;
  - "h3" at a TCP port on 127.0.0.1 that accepts connections and never
    answers (a host that hangs): the daemon still gets ready and serves the
    others (a network URI is connected in the background, never on the
    event loop), h3 shows as unreachable while connecting, and once the
    port closes the daemon stops cleanly;
  - the table output names both hosts; the daemon stops cleanly.

Usage: host_ls.py AGENTLABD AGENTLAB REMOTE_LIBVIRTD_SH
By hand, HOST_LS_WRAP="valgrind --error-exitcode=99 --leak-check=full" runs
the daemon under that prefix.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import socket
import tempfile
import threading
import time

DAEMON, CLI, REMOTE = sys.argv[1:4]
WRAP = os.environ.get("HOST_LS_WRAP", "").split()
failures = []


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def hosts(env):
    p = run([CLI, "host", "ls", "--json"], env=env, timeout=60)
    if p.returncode != 0:
        raise RuntimeError("agentlab host ls --json: %d %s" % (p.returncode, p.stderr))
    return {h["name"]: h for h in json.loads(p.stdout)["hosts"]}


def wait_for(env, name, pred, seconds):
    end = time.monotonic() + seconds
    while True:
        h = hosts(env)[name]
        if pred(h) or time.monotonic() > end:
            return h
        time.sleep(0.5)


def write_catalog_image(state, name, sha):
    d = os.path.join(state, "images", name)
    os.makedirs(d)
    for f in ("disk.qcow2", "vmlinuz", "initrd.img"):
        with open(os.path.join(d, f), "w") as fh:
            fh.write("x")
    manifest = {"schema": 1, "name": name, "recipe": "test", "recipe_hash": "0",
                "disk": "disk.qcow2", "format": "qcow2", "size": 1, "virtual_size": 1,
                "sha256": sha, "kernel": "vmlinuz", "initrd": "initrd.img",
                "cmdline": "console=ttyS0"}
    with open(os.path.join(d, "manifest.json"), "w") as fh:
        json.dump(manifest, fh)


def virsh(uri, *args):
    p = run(["virsh", "-q", "-c", uri] + list(args), timeout=60)
    if p.returncode != 0:
        raise RuntimeError("virsh %s: %s" % (" ".join(args), p.stderr.strip()))
    return p.stdout


def upload_volume(uri, pool, name, path):
    virsh(uri, "vol-create-as", pool, name, str(os.path.getsize(path)), "--format", "raw")
    virsh(uri, "vol-upload", "--pool", pool, name, path)


class HangingHost:
    """A listener on 127.0.0.1 that accepts and never says a word."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.accepted = 0
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self.conns.append(c)

    def close(self):
        # shutdown wakes the accept() of the thread (close alone does not,
        # and the socket would go on taking connections)
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        for c in self.conns:
            c.close()


def main():
    tmp = tempfile.mkdtemp(prefix="host-ls-")
    hang = HangingHost()
    state, rundir, rl = (os.path.join(tmp, d) for d in ("state", "run", "rl"))
    os.makedirs(state)
    os.makedirs(rundir)
    daemon = None
    remote_started = False
    try:
        local_sha = hashlib.sha256(b"catalogue image").hexdigest()
        write_catalog_image(state, "tiny", local_sha)
        p = run(["sh", REMOTE, "start", rl, "--fresh", "--hide", state, "--hide", rundir,
                 "--owner", str(os.getpid())], timeout=120)
        if p.returncode != 0:
            raise RuntimeError("remote-libvirtd.sh start: " + p.stderr)
        remote_started = True
        uri = p.stdout.strip().splitlines()[-1]
        conf = os.path.join(tmp, "agentlab.conf")
        with open(conf, "w") as fh:
            fh.write("[agent]\nstate_dir = %s\nrun_dir = %s\nlog_level = info\n"
                     "[backend \"local\"]\nuri = test:///default\nmax_vms = 3\n"
                     "[backend \"h2\"]\nuri = %s\nmax_vms = 1\n"
                     "[backend \"h3\"]\nuri = qemu+tcp://127.0.0.1:%d/system\nmax_vms = 1\n"
                     % (state, rundir, uri, hang.port))
        env = dict(os.environ, AGENTLAB_CONFIG=conf)
        env.pop("AGENTLAB_STATE_DIR", None)
        env.pop("AGENTLAB_RUN_DIR", None)
        log = open(os.path.join(tmp, "agentlabd.log"), "w+")
        daemon = subprocess.Popen(WRAP + [DAEMON], env=env, stderr=log)
        end = time.monotonic() + 60
        while True:
            log.seek(0)
            if " ready " in log.read():
                break
            if daemon.poll() is not None or time.monotonic() > end:
                log.seek(0)
                raise RuntimeError("agentlabd did not get ready:\n" + log.read())
            time.sleep(0.1)

        # the daemon connects to h2 in the background and makes its pool
        # there (not asked through `host ls` yet: that would read h2's
        # images before the volumes below exist); give it one complete image
        # volume and two that are not complete
        end = time.monotonic() + 30
        while True:
            pools = [x.strip() for x in virsh(uri, "pool-list", "--name").splitlines() if x.strip()]
            pool = [x for x in pools if x.startswith("agentlab-h2-")]
            if pool or time.monotonic() > end:
                break
            time.sleep(0.2)
        check(len(pool) == 1, "the daemon created its storage pool on the remote host")
        pool = pool[0]
        content = os.path.join(tmp, "kernel")
        with open(content, "wb") as fh:
            fh.write(b"hello kernel\n")
        sha = hashlib.sha256(b"hello kernel\n").hexdigest()
        vol = "agentlab-img-micro-kernel-" + sha[:16]
        marker = os.path.join(tmp, "marker")
        with open(marker, "w") as fh:
            fh.write("sha256 %s size 13\n" % sha)
        upload_volume(uri, pool, vol, content)
        upload_volume(uri, pool, vol + ".sha256", marker)
        # cut: content, no marker
        upload_volume(uri, pool, "agentlab-img-micro-initrd-0011223344556677", content)
        # stale: the marker's size is not the content's
        other = hashlib.sha256(b"other").hexdigest()
        stale = "agentlab-img-micro-disk-%s.qcow2" % other[:16]
        with open(marker, "w") as fh:
            fh.write("sha256 %s size 99\n" % other)
        upload_volume(uri, pool, stale, content)
        upload_volume(uri, pool, stale + ".sha256", marker)

        # h3 hangs: the daemon is ready and serves the others all the same
        check(hang.accepted >= 1, "the daemon is connecting to the hanging host (%d)" % hang.accepted)
        h3 = hosts(env)["h3"]
        check(h3["reachable"] is False and
              h3["error"] == "connecting to qemu+tcp://127.0.0.1:%d/system" % hang.port,
              "h3: unreachable while connecting: %s" % h3["error"])

        h = wait_for(env, "h2", lambda x: x["images_age_ms"] is not None, 20)
        all_hosts = hosts(env)
        loc = all_hosts["local"]
        check(loc["type"] == "libvirt" and loc["transport"] == "local",
              "local: libvirt, transport local")
        check(loc["uri"] == "test:///default", "local: its URI")
        check(loc["reachable"] is True and loc["error"] is None, "local: reachable")
        check(loc["accel"] in ("kvm", "tcg"), "local: accelerator %s" % loc["accel"])
        check(loc["accel"] == "kvm" or bool(loc["accel_reason"]), "local: why not KVM")
        check(loc["max_vms"] == 3 and loc["used_vms"] == 0 and loc["vcpus"] > 0
              and loc["memory"] > 0, "local: capacity")
        check(loc["warm_ready"] == 0 and loc["warm_booting"] == 0, "local: no warm VMs")
        check(loc["images_source"] == "local files", "local: images are the daemon's files")
        check([(i["name"], i["sha256"]) for i in loc["images"]] == [("tiny", local_sha)],
              "local: the catalogue's image with its sha256")

        check(h["transport"] == "remote" and h["uri"] == uri, "h2: transport remote, its URI")
        check(h["reachable"] is True and h["error"] is None, "h2: reachable")
        check(h["max_vms"] == 1, "h2: capacity")
        # that host's accelerator and size come from its libvirt, not from
        # this machine's probe (the host is this machine here, so its CPUs
        # are ours; KVM when its libvirt offers KVM domains)
        check(h["vcpus"] == os.cpu_count() and h["memory"] > 0,
              "h2: the host's CPUs and memory: %s vCPUs" % h["vcpus"])
        check(h["accel"] == "kvm" or (h["accel"] == "tcg" and
                                      h["accel_reason"].startswith("the host offers no KVM")),
              "h2: accelerator from the host's libvirt: %s (%s)" % (h["accel"], h["accel_reason"]))
        check(h["images_source"] == "host storage pool" and h["images_error"] is None,
              "h2: images read from its pool")
        got = [(i["name"], i["role"], i["sha256"], i["size"], i["volume"]) for i in h["images"]]
        check(got == [("micro", "kernel", sha, 13, vol)],
              "h2: only the complete volume, with its sha256: %s" % got)

        p = run([CLI, "host", "ls"], env=env, timeout=60)
        check(p.returncode == 0 and "h2" in p.stdout and "remote" in p.stdout
              and "micro(kernel) " + sha[:12] in p.stdout and "tiny " + local_sha[:12] in p.stdout,
              "the table shows both hosts and their images")

        # the host goes away, then comes back
        p = run(["sh", REMOTE, "stop", rl], timeout=60)
        check(p.returncode == 0, "remote libvirtd stopped")
        h = wait_for(env, "h2", lambda x: not x["reachable"], 30)
        check(h["reachable"] is False and bool(h["error"]),
              "h2: unreachable once its libvirtd is gone: %s" % h["error"])
        check(hosts(env)["local"]["reachable"] is True, "local stays reachable")
        p = run(["sh", REMOTE, "start", rl, "--hide", state, "--hide", rundir,
                 "--owner", str(os.getpid())], timeout=120)
        check(p.returncode == 0, "remote libvirtd started again")
        h = wait_for(env, "h2", lambda x: x["reachable"], 30)
        check(h["reachable"] is True and h["error"] is None, "h2: reachable again")

        # the hanging host hangs up: its connection attempt ends, the
        # daemon can stop (it waits for a connection attempt in flight)
        hang.close()
        connecting = "connecting to qemu+tcp://127.0.0.1:%d/system" % hang.port
        h3 = wait_for(env, "h3", lambda x: x["error"] != connecting, 30)
        check(h3["reachable"] is False and h3["error"].startswith(connecting + ": "),
              "h3: unreachable, with the connection error: %s" % h3["error"])
        daemon.send_signal(signal.SIGTERM)
        rc = daemon.wait(timeout=60)
        daemon = None
        check(rc == 0, "agentlabd stopped cleanly (exit %d)" % rc)
        log.seek(0)
        text = log.read()
        check("open handles" not in text, "no open handles at exit")
        if WRAP:
            print(text[-3000:])
    finally:
        hang.close()
        if daemon:
            daemon.kill()
            daemon.wait()
        if remote_started:
            run(["sh", REMOTE, "stop", rl], timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print("%d check(s) failed" % len(failures))
        return 1
    print("host_ls: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
