#!/usr/bin/env python3
"""A stateful Proxmox VE API simulator for agentlab's tests.

HTTPS on 127.0.0.1 (certificate and key made by the test), the JSON API
under /api2/json, and a control API under /_sim for the test itself.

Every API request is validated against the official schema
(pve-api-schema.json: path, method, parameter names, required ones, types,
enums, ranges, formats, additionalProperties) and against the wire rules of
../shared/PROTOCOLS.md (strict percent-encoding, 0/1 booleans, form bodies
only on POST/PUT, nothing on GET/DELETE, sshkeys encoded twice). A violation
is recorded (GET /_sim/state lists them; tests assert there are none) and
answered like Proxmox would: 400 "Parameter verification failed." or 501.

State: nodes, VMs (templates, clones with locks), UPID tasks that take
time, a guest agent that comes up a while after start, and agent/exec that
runs a real local command in a directory standing in for the guest's root
(absolute argv elements under /run, /var and /tmp and every agent file path
are mapped into it).

Faults (config "faults", or POST /_sim/faults): rules
  {"match": "POST /nodes/*/qemu/*/clone",   fnmatch on "METHOD /path"
   "action": ACTION, "skip": 0, "times": 1, "every": 0}
with ACTION one of
  lock_timeout      500 can't lock file ... got timeout (nothing done)
  locked            500 VM is locked (clone)
  no_such_task      400 no such task (task status)
  agent_down        500 QEMU guest agent is not running
  collide           nextid hands out an id a foreign VM takes at once
  collide_in_task   the clone task fails: config file already exists
  drop              close the connection without a reply, nothing done
  drop_after        do the request, then close without a reply
  slow:N            the task started by this request takes N times longer
  error:CODE:TEXT   answer CODE with TEXT as the reason
"""

import argparse
import base64
import fnmatch
import http.server
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse

UNRESERVED = re.compile(r"^[A-Za-z0-9\-._~]*$")
PCT = re.compile(r"%([0-9A-Fa-f]{2})")
GUEST_ARG_PREFIXES = ("/run/", "/var/", "/tmp/")


def now():
    return time.monotonic()


class Violation(Exception):
    def __init__(self, status, message, errors=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


class ApiError(Exception):
    """A failure Proxmox itself would report (not a client mistake)."""

    def __init__(self, status, message, errors=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = errors


# ---------------------------------------------------------------- schema


class Schema:
    def __init__(self, path):
        with open(path) as f:
            tree = json.load(f)
        self.endpoints = []  # (segments, method, info)

        def walk(n):
            info = n.get("info") or {}
            segs = [s for s in n["path"].split("/") if s]
            for method, mi in info.items():
                self.endpoints.append((segs, method, mi))
            for c in n.get("children") or []:
                walk(c)

        for n in tree:
            walk(n)

    def match(self, method, segs):
        """Returns (template path, info, path params) or raises Violation."""
        best = None
        path_known = False
        for tsegs, m, info in self.endpoints:
            if len(tsegs) != len(segs):
                continue
            params = {}
            literal = 0
            ok = True
            for t, s in zip(tsegs, segs):
                if t.startswith("{") and t.endswith("}"):
                    if not s:
                        ok = False
                        break
                    params[t[1:-1]] = s
                elif t == s:
                    literal += 1
                else:
                    ok = False
                    break
            if not ok:
                continue
            path_known = True
            if m != method:
                continue
            if best is None or literal > best[0]:
                best = (literal, "/" + "/".join(tsegs), info, params)
        if best is None:
            what = "method" if path_known else "path"
            raise Violation(501, "Method '%s /%s' not implemented (unknown %s)"
                            % (method, "/".join(segs), what))
        return best[1], best[2], best[3]


def prop_for(props, name):
    if name in props:
        return props[name]
    for k, v in props.items():
        if k.endswith("[n]"):
            if re.fullmatch(re.escape(k[:-3]) + r"\d+", name):
                return v
    return None


def is_int(s):
    return re.fullmatch(r"-?\d+", s) is not None


def num(x):
    return float(x) if isinstance(x, str) else x


NODE_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?$")
DNS_RE = re.compile(r"^([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?\.)*"
                    r"([A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)$")
TAG_RE = re.compile(r"^[a-z0-9_][a-z0-9_\-+.]*$", re.I)
POOL_RE = re.compile(r"^[A-Za-z0-9\-_/]+$")
STORAGE_RE = re.compile(r"^[a-z][a-z0-9\-_.]*[a-z0-9]$", re.I)
CONFIGID_RE = re.compile(r"^[a-z][a-z_]*\d*$", re.I)


def check_format(fmt, value, name):
    if isinstance(fmt, dict):
        # a property string: key=value,... with an optional default key
        default_key = None
        for k, v in fmt.items():
            if isinstance(v, dict) and v.get("default_key"):
                default_key = k
        for i, part in enumerate(value.split(",")):
            if "=" in part:
                k, _, v = part.partition("=")
                if k not in fmt and not any(
                        isinstance(d, dict) and d.get("alias") == k for d in fmt.values()):
                    # models like net[n] use the model name as a key
                    if name.startswith("net") and i == 0:
                        continue
                    return "unknown property '%s'" % k
            elif i == 0 and (default_key or name.startswith("net")):
                continue
            else:
                return "value without a key: '%s'" % part
        return None
    if fmt == "pve-vmid":
        if not is_int(value) or not 100 <= int(value) <= 999999999:
            return "invalid VMID"
    elif fmt == "pve-node":
        if not NODE_RE.match(value):
            return "invalid node name"
    elif fmt == "dns-name":
        if not DNS_RE.match(value):
            return "invalid DNS name"
    elif fmt == "pve-tag-list":
        tags = [t for t in re.split(r"[;, ]", value) if t]
        if not tags:
            return "empty tag list"
        for t in tags:
            if not TAG_RE.match(t):
                return "invalid tag '%s'" % t
    elif fmt == "pve-poolid":
        if not POOL_RE.match(value):
            return "invalid pool id"
    elif fmt == "pve-storage-id":
        if not STORAGE_RE.match(value):
            return "invalid storage id"
    elif fmt == "pve-configid-list":
        for c in re.split(r"[;, ]", value):
            if c and not CONFIGID_RE.match(c):
                return "invalid config id '%s'" % c
    elif fmt == "urlencoded":
        if not UNRESERVED.match(PCT.sub("", value)):
            return "not strictly percent-encoded (spaces must be %20, never '+')"
    return None


def check_value(spec, value, name):
    t = spec.get("type", "string")
    if t == "boolean":
        if value not in ("0", "1"):
            return "booleans go as 0 or 1, got '%s'" % value[:40]
    elif t == "integer":
        if not is_int(value):
            return "not an integer: '%s'" % value[:40]
        v = int(value)
        if "minimum" in spec and v < num(spec["minimum"]):
            return "%d is below the minimum %s" % (v, spec["minimum"])
        if "maximum" in spec and v > num(spec["maximum"]):
            return "%d is above the maximum %s" % (v, spec["maximum"])
    elif t == "number":
        try:
            float(value)
        except ValueError:
            return "not a number: '%s'" % value[:40]
    elif t == "string":
        if "maxLength" in spec and len(value) > int(spec["maxLength"]):
            return "longer than %s characters" % spec["maxLength"]
        if "minLength" in spec and len(value) < int(spec["minLength"]):
            return "shorter than %s characters" % spec["minLength"]
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            return "does not match %s" % spec["pattern"]
        if "format" in spec:
            msg = check_format(spec["format"], value, name)
            if msg:
                return msg
    if "enum" in spec and value not in spec["enum"]:
        return "value '%s' not in %s" % (value[:40], spec["enum"])
    return None


def validate_params(info, params):
    """params: name -> list of str. Raises Violation (400) with errors."""
    pspec = info.get("parameters") or {}
    props = pspec.get("properties") or {}
    errors = {}
    for name, values in params.items():
        spec = prop_for(props, name)
        if spec is None:
            if pspec.get("additionalProperties", 1) == 0:
                errors[name] = "property is not defined in schema and the schema does not " \
                               "allow additional properties"
            continue
        if spec.get("type") == "array":
            item = spec.get("items") or {}
            for v in values:
                m = check_value(item, v, name)
                if m:
                    errors[name] = m
            continue
        if len(values) != 1:
            errors[name] = "given %d times; only arrays repeat" % len(values)
            continue
        m = check_value(spec, values[0], name)
        if m:
            errors[name] = m
    for name, spec in props.items():
        if spec.get("optional") or name.endswith("[n]"):
            continue
        if name not in params:
            errors[name] = "property is missing and it is not optional"
    if errors:
        raise Violation(400, "Parameter verification failed.", errors)


def parse_form(raw, what):
    """Strict form decoding: name -> [values]. Raises Violation."""
    out = {}
    if raw == "":
        return out
    for pair in raw.split("&"):
        if pair.count("=") != 1:
            raise Violation(400, "%s: '%s' is not one key=value pair (unencoded '=' or '&'?)"
                            % (what, pair[:60]))
        k, v = pair.split("=")
        for part in (k, v):
            if "+" in part:
                raise Violation(400, "%s: '+' in '%s': encode spaces as %%20 and '+' as %%2B"
                                % (what, part[:60]))
            if not UNRESERVED.match(PCT.sub("", part)):
                raise Violation(400, "%s: unencoded characters in '%s'" % (what, part[:60]))
        k = urllib.parse.unquote(k, errors="strict")
        try:
            v = urllib.parse.unquote_to_bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise Violation(400, "%s: value of %s is not UTF-8" % (what, k))
        out.setdefault(k, []).append(v)
    return out


# ---------------------------------------------------------------- state


class Task:
    def __init__(self, sim, node, ttype, tid, duration, done):
        sim.task_seq += 1
        self.node = node
        self.type = ttype
        self.id = str(tid)
        self.start = now()
        self.starttime = int(time.time())
        self.duration = duration
        self.done = done
        self.status = "running"
        self.exitstatus = None
        self.pid = 100000 + sim.task_seq
        self.upid = "UPID:%s:%08X:%08X:%08X:%s:%s:%s:" % (
            node, self.pid, self.pid * 7, self.starttime, ttype, self.id, sim.user)
        self.queries = 0


class Sim:
    def __init__(self, cfg, state_dir, schema):
        self.lock = threading.RLock()
        self.schema = schema
        self.state_dir = state_dir
        self.token = cfg.get("token", "root@pam!agentlab=00000000-1111-2222-3333-444444444444")
        self.user = self.token.split("=", 1)[0] if "=" in self.token else "root@pam"
        self.password_user = cfg.get("user", "agentlab@pve")
        self.password = cfg.get("password", "sim-password")
        self.tickets = {}
        self.latency = cfg.get("latency_ms", 0) / 1000.0
        self.auth_delay = cfg.get("auth_delay_s", 3.0)
        self.task_time = {"qmclone": 1.0, "qmstart": 0.5, "qmstop": 0.3, "qmdestroy": 0.4,
                          "qmconfig": 0.1}
        self.task_time.update(cfg.get("task_time", {}))
        self.agent_delay = cfg.get("agent_delay_s", 1.0)
        self.nodes = {}
        for n in cfg.get("nodes", [{"name": "pve1"}]):
            self.nodes[n["name"]] = {
                "status": n.get("status", "online"),
                "maxmem": n.get("maxmem", 64 << 30),
                "basemem": n.get("mem", 4 << 30),
                "maxcpu": n.get("maxcpu", 16),
            }
        self.pools = set(cfg.get("pools", ["ci"]))
        self.vms = {}
        for v in cfg.get("vms", [{"vmid": 9000, "name": "debian-tmpl", "template": 1}]):
            self.vms[v["vmid"]] = self.new_vm(v["vmid"], v.get("node", next(iter(self.nodes))),
                                              v.get("name"), template=v.get("template", 0))
            self.vms[v["vmid"]]["config"]["agent"] = v.get("agent", "1")
        self.initial_vmids = set(self.vms)
        self.tasks = {}
        self.task_seq = 0
        self.violations = []
        self.calls = 0
        self.calls_by = {}
        self.faults = []
        self.set_faults(cfg.get("faults", []))
        self.exec_seq = 0
        self.max_concurrent = 0
        self.inflight = 0
        self.vms_created = 0
        self.vms_destroyed = 0
        self.clones_by_node = {}
        self.clone_sources = {}  # clone name -> the VMID it was cloned from
        self.destroyed = []  # name and last config of every VM destroyed

    # -- helpers

    def new_vm(self, vmid, node, name, template=0, pool=None):
        root = os.path.join(self.state_dir, "guest-%d" % vmid)
        return {
            "vmid": vmid, "node": node, "status": "stopped", "lock": None,
            "config": {"name": name or "vm%d" % vmid, "cores": 1, "memory": "512",
                       "template": template, "agent": "1"},
            "template": template, "pool": pool, "root": root, "started": None,
            "execs": {}, "foreign_until": None,
        }

    def set_faults(self, rules):
        self.faults = []
        for r in rules:
            r = dict(r)
            r.setdefault("skip", 0)
            r.setdefault("times", 1)
            r.setdefault("every", 0)
            r["seen"] = 0
            r["fired"] = 0
            self.faults.append(r)

    def fault_for(self, method, path):
        key = "%s %s" % (method, path)
        for r in self.faults:
            if not fnmatch.fnmatchcase(key, r["match"]):
                continue
            r["seen"] += 1
            if r["seen"] <= r["skip"]:
                continue
            if r["times"] >= 0 and r["fired"] >= r["times"]:
                continue
            if r["every"] and (r["seen"] - r["skip"]) % r["every"] != 0:
                continue
            r["fired"] += 1
            return r["action"]
        return None

    def violation(self, method, path, problem):
        self.violations.append({"method": method, "path": path, "problem": problem})
        sys.stderr.write("pve_sim: VIOLATION %s %s: %s\n" % (method, path, problem))

    def node_mem(self, name):
        n = self.nodes[name]
        used = n["basemem"]
        for v in self.vms.values():
            if v["node"] == name and v["status"] == "running":
                used += int(str(v["config"].get("memory", "512")).split(",")[0].split("=")[-1]) << 20
        return used

    def advance(self):
        t = now()
        for task in list(self.tasks.values()):
            if task.status == "running" and t >= task.start + task.duration:
                try:
                    task.done()
                    task.exitstatus = "OK"
                except ApiError as e:
                    task.exitstatus = e.message
                task.status = "stopped"
        for vmid, v in list(self.vms.items()):
            if v["foreign_until"] and t >= v["foreign_until"]:
                self.remove_vm(vmid)

    def remove_vm(self, vmid):
        v = self.vms.pop(vmid, None)
        if not v:
            return
        self.kill_execs(v)
        shutil.rmtree(v["root"], ignore_errors=True)

    def kill_execs(self, v):
        for e in v["execs"].values():
            p = e["proc"]
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
            for f in (e["out"], e["err"]):
                f.close()
        v["execs"] = {}

    def add_task(self, node, ttype, tid, done, factor=1.0):
        task = Task(self, node, ttype, tid, self.task_time.get(ttype, 0.2) * factor, done)
        self.tasks[task.upid] = task
        return task.upid

    def vm(self, node, vmid, check_lock=True):
        vmid = int(vmid)
        v = self.vms.get(vmid)
        if not v or v["node"] != node:
            raise ApiError(500, "Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist"
                           % (node, vmid))
        if check_lock and v["lock"]:
            raise ApiError(500, "VM is locked (%s)" % v["lock"])
        return v

    def agent_vm(self, node, vmid):
        v = self.vm(node, vmid, check_lock=False)
        if str(v["config"].get("agent", "0")).split(",")[0] not in ("1", "enabled=1"):
            raise ApiError(500, "No QEMU guest agent configured")
        if v["status"] != "running":
            raise ApiError(500, "VM %d is not running" % int(vmid))
        if now() < v["started"] + self.agent_delay:
            raise ApiError(500, "QEMU guest agent is not running")
        return v

    def guest_path(self, v, path):
        if not path.startswith("/"):
            raise ApiError(500, "Agent error: path '%s' is not absolute" % path)
        full = os.path.normpath(os.path.join(v["root"], path.lstrip("/")))
        if not (full + "/").startswith(v["root"] + "/"):
            raise ApiError(500, "Agent error: path escapes the guest")
        return full

    def state(self):
        with self.lock:
            self.advance()
            vms = []
            for v in self.vms.values():
                vms.append({"vmid": v["vmid"], "node": v["node"], "name": v["config"].get("name"),
                            "status": v["status"], "template": v["template"],
                            "lock": v["lock"], "tags": v["config"].get("tags"),
                            "foreign": bool(v["foreign_until"]),
                            "initial": v["vmid"] in self.initial_vmids,
                            "cores": v["config"].get("cores"),
                            "memory": v["config"].get("memory"),
                            "config": {k: str(x) for k, x in v["config"].items()}})
            running_tasks = [t.upid for t in self.tasks.values() if t.status == "running"]
            procs = sum(1 for v in self.vms.values() for e in v["execs"].values()
                        if e["proc"].poll() is None)
            return {"vms": vms, "violations": self.violations, "calls": self.calls,
                    "calls_by": self.calls_by, "tasks_running": running_tasks,
                    "procs_running": procs, "max_concurrent": self.max_concurrent,
                    "vms_created": self.vms_created, "vms_destroyed": self.vms_destroyed,
                    "clones_by_node": self.clones_by_node,
                    "clone_sources": self.clone_sources,
                    "destroyed": self.destroyed,
                    "faults": [{"match": r["match"], "action": r["action"], "fired": r["fired"]}
                               for r in self.faults]}

    # -- endpoints

    def handle(self, method, tpath, p, fault, user):
        """p: parameters (str, or list for arrays). Returns data or raises."""
        key = "%s %s" % (method, tpath)
        h = HANDLERS.get(key)
        if h is None:
            raise Violation(501, "the simulator does not implement %s" % key)
        return h(self, p, fault, user)


def ep_version(sim, p, fault, user):
    return {"version": "9.1.3", "release": "9.1", "repoid": "sim"}


def ep_nodes(sim, p, fault, user):
    out = []
    for name, n in sim.nodes.items():
        e = {"node": name, "status": n["status"], "type": "node"}
        if n["status"] == "online":
            e.update({"maxmem": n["maxmem"], "mem": sim.node_mem(name), "maxcpu": n["maxcpu"],
                      "cpu": 0.05, "uptime": 1000})
        out.append(e)
    return out


def ep_resources(sim, p, fault, user):
    t = p.get("type")
    out = []
    if t in (None, "node"):
        for e in ep_nodes(sim, p, fault, user):
            e = dict(e)
            e["id"] = "node/" + e["node"]
            out.append(e)
    if t in (None, "vm"):
        for v in sim.vms.values():
            e = {"id": "qemu/%d" % v["vmid"], "type": "qemu", "vmid": v["vmid"],
                 "name": v["config"].get("name"), "node": v["node"], "status": v["status"],
                 "template": v["template"], "maxmem": int(str(v["config"].get("memory", 512))) << 20}
            if v["config"].get("tags"):
                e["tags"] = v["config"]["tags"]
            if v["pool"]:
                e["pool"] = v["pool"]
            out.append(e)
    return out


def lowest_free(sim):
    i = 100
    while i in sim.vms:
        i += 1
    return i


def ep_nextid(sim, p, fault, user):
    if "vmid" in p:
        if int(p["vmid"]) in sim.vms:
            raise ApiError(400, "Parameter verification failed.",
                           {"vmid": "VM %s already exists" % p["vmid"]})
        return p["vmid"]
    i = lowest_free(sim)
    if fault == "collide":
        foreign = sim.new_vm(i, next(iter(sim.nodes)), "foreign-%d" % i)
        foreign["foreign_until"] = now() + 1.5
        sim.vms[i] = foreign
    return str(i)  # Proxmox sends a string


def ep_clone(sim, p, fault, user):
    node, vmid = p["node"], int(p["vmid"])
    src = sim.vms.get(vmid)
    if not src or src["node"] != node:
        raise ApiError(500, "Configuration file 'nodes/%s/qemu-server/%d.conf' does not exist"
                       % (node, vmid))
    newid = int(p["newid"])
    if newid in sim.vms:
        raise ApiError(500, "VM %d already exists on node '%s'" % (newid, sim.vms[newid]["node"]))
    full = p.get("full") == "1" if "full" in p else not src["template"]
    if not full and ("storage" in p or "format" in p):
        raise ApiError(400, "Parameter verification failed.",
                       {"storage": "option is only allowed for full clones"})
    if not full and not src["template"]:
        raise ApiError(500, "Linked clone feature is not supported for drive 'scsi0'")
    if src["lock"] and src["lock"] != "clone-src":
        raise ApiError(500, "VM is locked (%s)" % src["lock"])
    target = p.get("target", node)
    if target not in sim.nodes:
        raise ApiError(500, "no such cluster node '%s'" % target)
    if sim.nodes[target]["status"] != "online":
        raise ApiError(500, "target node '%s' is not online" % target)
    if sim.nodes[node]["status"] != "online":
        raise ApiError(595, "no route to host %s" % node)
    pool = p.get("pool")
    if pool and pool not in sim.pools:
        raise ApiError(500, "pool '%s' does not exist" % pool)
    factor = 1.0
    if fault and fault.startswith("slow:"):
        factor = float(fault[5:])
    if fault == "collide_in_task":
        foreign = sim.new_vm(newid, node, "foreign-%d" % newid)
        foreign["foreign_until"] = now() + 3
        sim.vms[newid] = foreign

        def fail():
            raise ApiError(500, "clone failed: unable to create VM %d: config file already exists"
                           % newid)
        return sim.add_task(node, "qmclone", vmid, fail, factor)
    vm = sim.new_vm(newid, target, p.get("name"), pool=pool)
    vm["lock"] = "clone"
    vm["config"].update({k: v for k, v in src["config"].items() if k not in ("name", "template")})
    vm["config"]["template"] = 0
    if "description" in p:
        vm["config"]["description"] = p["description"]
    sim.vms[newid] = vm
    sim.vms_created += 1
    sim.clones_by_node[target] = sim.clones_by_node.get(target, 0) + 1
    sim.clone_sources[p.get("name") or str(newid)] = vmid
    for d in ("run", "var/lib", "tmp"):
        os.makedirs(os.path.join(vm["root"], d), exist_ok=True)

    def done():
        if sim.vms.get(newid) is vm:
            vm["lock"] = None
    return sim.add_task(node, "qmclone", vmid, done, factor)


def apply_config(sim, v, p):
    for k, val in p.items():
        if k in ("node", "vmid", "digest", "skiplock"):
            continue
        if k == "delete":
            for d in re.split(r"[;, ]", val):
                v["config"].pop(d, None)
            continue
        if k == "sshkeys":
            keys = urllib.parse.unquote(val)
            for line in keys.splitlines():
                if line.strip() and not re.match(r"^(ssh|ecdsa|sk)-\S+ \S+", line.strip()):
                    raise ApiError(400, "Parameter verification failed.",
                                   {"sshkeys": "invalid SSH key"})
        v["config"][k] = val


def ep_config_get(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"], check_lock=False)
    c = dict(v["config"])
    if v["lock"]:
        c["lock"] = v["lock"]
    return c


def ep_config_put(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"])
    apply_config(sim, v, p)
    return None


def ep_config_post(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"])
    apply_config(sim, v, p)
    return sim.add_task(p["node"], "qmconfig", p["vmid"], lambda: None)


def ep_status_current(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"], check_lock=False)
    r = {"vmid": v["vmid"], "status": v["status"], "name": v["config"].get("name"),
         "qmpstatus": v["status"], "agent": 1}
    if v["lock"]:
        r["lock"] = v["lock"]
    return r


def ep_start(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"])
    if v["template"]:
        raise ApiError(500, "you can't start a vm if it's a template")
    if v["status"] == "running":
        raise ApiError(500, "VM %s already running" % p["vmid"])
    factor = float(fault[5:]) if fault and fault.startswith("slow:") else 1.0
    mem = int(str(v["config"].get("memory", "512"))) << 20

    def done():
        n = sim.nodes[v["node"]]
        if sim.node_mem(v["node"]) + mem > n["maxmem"]:
            raise ApiError(500, "start failed: not enough memory on node '%s'" % v["node"])
        v["status"] = "running"
        v["started"] = now()
    return sim.add_task(p["node"], "qmstart", p["vmid"], done, factor)


def ep_stop(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"])

    def done():
        sim.kill_execs(v)
        v["status"] = "stopped"
        v["started"] = None
    return sim.add_task(p["node"], "qmstop", p["vmid"], done)


def ep_destroy(sim, p, fault, user):
    v = sim.vm(p["node"], p["vmid"])
    if v["status"] == "running":
        raise ApiError(500, "VM %s is running - destroy failed" % p["vmid"])
    vmid = int(p["vmid"])

    def done():
        if sim.vms.get(vmid) is v:
            sim.destroyed.append({"vmid": vmid, "node": v["node"],
                                  "config": {k: str(x) for k, x in v["config"].items()}})
            sim.remove_vm(vmid)
            sim.vms_destroyed += 1
    v["lock"] = "destroyed"
    return sim.add_task(p["node"], "qmdestroy", vmid, done)


def ep_task_status(sim, p, fault, user):
    task = sim.tasks.get(p["upid"])
    if fault == "no_such_task" or not task:
        raise ApiError(400, "Parameter verification failed.", {"upid": "no such task"})
    r = {"upid": task.upid, "node": task.node, "pid": task.pid, "pstart": task.pid * 7,
         "starttime": task.starttime, "type": task.type, "id": task.id, "user": sim.user,
         "status": task.status}
    if task.status == "stopped":
        r["exitstatus"] = task.exitstatus
    return r


def ep_agent_ping(sim, p, fault, user):
    sim.agent_vm(p["node"], p["vmid"])
    return {"result": {}}


def ep_agent_ifaces(sim, p, fault, user):
    sim.agent_vm(p["node"], p["vmid"])
    return {"result": [{"name": "lo", "ip-addresses": [{"ip-address": "127.0.0.1",
                                                        "ip-address-type": "ipv4",
                                                        "prefix": 8}]}]}


def ep_file_write(sim, p, fault, user):
    v = sim.agent_vm(p["node"], p["vmid"])
    path = sim.guest_path(v, p["file"])
    if p.get("encode", "1") == "0":
        try:
            data = base64.b64decode(p["content"], validate=True)
        except ValueError:
            raise ApiError(500, "Agent error: Guest agent command failed, error was "
                                "'Invalid base64 data'")
    else:
        data = p["content"].encode("utf-8")
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise ApiError(500, "Agent error: failed to open file '%s': %s" % (p["file"], e.strerror))
    return None


def ep_file_read(sim, p, fault, user):
    v = sim.agent_vm(p["node"], p["vmid"])
    path = sim.guest_path(v, p["file"])
    off = int(p.get("offset", 0))
    count = int(p.get("count", 16 << 20))
    try:
        with open(path, "rb") as f:
            f.seek(off)
            data = f.read(count)
            more = f.read(1) != b""
    except OSError as e:
        raise ApiError(500, "Agent error: failed to open file '%s': %s" % (p["file"], e.strerror))
    r = {}
    if p.get("decode", "1") == "0":
        r["content"] = base64.b64encode(data).decode()
    else:
        r["content"] = data.decode("utf-8", "replace")
    if more:
        r["truncated"] = 1
    return r


def map_arg(v, a):
    if a.startswith(GUEST_ARG_PREFIXES):
        return os.path.join(v["root"], a.lstrip("/"))
    return a


def ep_exec(sim, p, fault, user):
    v = sim.agent_vm(p["node"], p["vmid"])
    cmd = p["command"]
    if isinstance(cmd, str):
        cmd = [cmd]
    argv = [map_arg(v, a) for a in cmd]
    sim.exec_seq += 1
    pid = 1000 + sim.exec_seq
    d = os.path.join(sim.state_dir, "exec-%d-%d" % (v["vmid"], pid))
    os.makedirs(d, exist_ok=True)
    out = open(os.path.join(d, "out"), "w+b")
    err = open(os.path.join(d, "err"), "w+b")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"}
    try:
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err,
                                cwd=v["root"], env=env, start_new_session=True)
    except OSError as e:
        out.close()
        err.close()
        raise ApiError(500, "Agent error: Guest agent command failed, error was "
                            "'Failed to execute child process \"%s\" (%s)'" % (cmd[0], e.strerror))
    data = p.get("input-data", "").encode("utf-8")

    def feed():
        try:
            proc.stdin.write(data)
        except OSError:
            pass
        try:
            proc.stdin.close()
        except OSError:
            pass
    threading.Thread(target=feed, daemon=True).start()
    v["execs"][pid] = {"proc": proc, "out": out, "err": err}
    return {"pid": pid}


def ep_exec_status(sim, p, fault, user):
    v = sim.agent_vm(p["node"], p["vmid"])
    e = v["execs"].get(int(p["pid"]))
    if not e:
        raise ApiError(500, "Agent error: Invalid parameter 'pid'")
    rc = e["proc"].poll()
    if rc is None:
        return {"exited": 0}
    r = {"exited": 1}
    if rc < 0:
        r["signal"] = -rc
    else:
        r["exitcode"] = rc
    for key, f in (("out-data", e["out"]), ("err-data", e["err"])):
        f.seek(0)
        data = f.read(16 << 20)
        if data:
            r[key] = data.decode("utf-8", "replace")
    return r


def ep_ticket(sim, p, fault, user):
    if p.get("username") != sim.password_user or p.get("password") != sim.password:
        time.sleep(sim.auth_delay)
        raise ApiError(401, "authentication failure")
    t = "PVE:%s:%08X::%s" % (sim.password_user, int(time.time()),
                             base64.b64encode(os.urandom(24)).decode())
    csrf = "%08X:%s" % (int(time.time()), base64.b64encode(os.urandom(16)).decode().rstrip("="))
    sim.tickets[t] = csrf
    return {"ticket": t, "CSRFPreventionToken": csrf, "username": sim.password_user}


def ep_pools(sim, p, fault, user):
    return [{"poolid": x} for x in sorted(sim.pools)]


HANDLERS = {
    "GET /version": ep_version,
    "GET /nodes": ep_nodes,
    "GET /cluster/resources": ep_resources,
    "GET /cluster/nextid": ep_nextid,
    "POST /nodes/{node}/qemu/{vmid}/clone": ep_clone,
    "GET /nodes/{node}/qemu/{vmid}/config": ep_config_get,
    "PUT /nodes/{node}/qemu/{vmid}/config": ep_config_put,
    "POST /nodes/{node}/qemu/{vmid}/config": ep_config_post,
    "GET /nodes/{node}/qemu/{vmid}/status/current": ep_status_current,
    "POST /nodes/{node}/qemu/{vmid}/status/start": ep_start,
    "POST /nodes/{node}/qemu/{vmid}/status/stop": ep_stop,
    "POST /nodes/{node}/qemu/{vmid}/status/shutdown": ep_stop,
    "DELETE /nodes/{node}/qemu/{vmid}": ep_destroy,
    "GET /nodes/{node}/tasks/{upid}/status": ep_task_status,
    "POST /nodes/{node}/qemu/{vmid}/agent/ping": ep_agent_ping,
    "GET /nodes/{node}/qemu/{vmid}/agent/network-get-interfaces": ep_agent_ifaces,
    "POST /nodes/{node}/qemu/{vmid}/agent/file-write": ep_file_write,
    "GET /nodes/{node}/qemu/{vmid}/agent/file-read": ep_file_read,
    "POST /nodes/{node}/qemu/{vmid}/agent/exec": ep_exec,
    "GET /nodes/{node}/qemu/{vmid}/agent/exec-status": ep_exec_status,
    "POST /access/ticket": ep_ticket,
    "GET /pools": ep_pools,
}


# ---------------------------------------------------------------- HTTP


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "pve-api-daemon/3.0"

    def setup(self):
        super().setup()
        try:
            self.request.do_handshake()
        except (ssl.SSLError, OSError):
            self.close_connection = True
            self.rfile = open(os.devnull, "rb")

    def log_message(self, fmt, *args):
        if self.server.verbose:
            sys.stderr.write("pve_sim: " + (fmt % args) + "\n")

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PUT(self):
        self.dispatch("PUT")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def reply(self, status, reason, body=None):
        data = b"" if body is None else json.dumps(body).encode()
        reason = re.sub(r"[\r\n]+", " ", reason).strip()
        self.send_response(status, reason)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def drop(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def dispatch(self, method):
        sim = self.server.sim
        url = urllib.parse.urlsplit(self.path)
        body = self.read_body()
        if url.path.startswith("/_sim/"):
            return self.control(method, url.path, body)
        if not url.path.startswith("/api2/json/"):
            return self.reply(404, "Not found")
        with sim.lock:
            sim.inflight += 1
            sim.max_concurrent = max(sim.max_concurrent, sim.inflight)
        try:
            if sim.latency:
                time.sleep(sim.latency)
            self.api(method, url, body)
        finally:
            with sim.lock:
                sim.inflight -= 1

    def authenticate(self, method):
        """Returns the user or None."""
        sim = self.server.sim
        auth = self.headers.get("Authorization")
        if auth is not None:
            if not auth.startswith("PVEAPIToken="):
                sim.violation(method, self.path, "Authorization is not PVEAPIToken=...")
                return None
            return sim.user if auth[len("PVEAPIToken="):] == sim.token else None
        cookie = self.headers.get("Cookie") or ""
        m = re.search(r"PVEAuthCookie=([^;]+)", cookie)
        if m and m.group(1) in sim.tickets:
            if method != "GET" and \
                    self.headers.get("CSRFPreventionToken") != sim.tickets[m.group(1)]:
                return None
            return sim.password_user
        return None

    def api(self, method, url, body):
        sim = self.server.sim
        rel = url.path[len("/api2/json"):]
        raw_segs = [s for s in rel.split("/") if s]
        where = "%s %s" % (method, rel)
        try:
            segs = [urllib.parse.unquote(s, errors="strict") for s in raw_segs]
        except UnicodeDecodeError:
            sim.violation(method, rel, "path segment is not UTF-8")
            return self.reply(400, "bad path")
        for s in raw_segs:
            if not UNRESERVED.match(PCT.sub("", s)):
                sim.violation(method, rel, "unencoded characters in path segment '%s'" % s[:60])
        try:
            tpath, info, path_params = sim.schema.match(method, segs)
        except Violation as v:
            with sim.lock:
                sim.violation(method, rel, v.message)
            return self.reply(v.status, v.message, {"data": None})
        with sim.lock:
            sim.calls += 1
            key = "%s %s" % (method, tpath)
            sim.calls_by[key] = sim.calls_by.get(key, 0) + 1
            fault = sim.fault_for(method, "/" + "/".join(segs))
        if fault == "drop":
            return self.drop()
        if tpath != "/access/ticket":
            user = self.authenticate(method)
            if user is None:
                time.sleep(sim.auth_delay)
                return self.reply(401, "authentication failure")
        else:
            user = None
        # wire rules
        try:
            if method in ("GET", "DELETE"):
                if body:
                    raise Violation(501, "Unexpected content for method '%s'" % method)
                params = parse_form(url.query, "query")
            else:
                if url.query:
                    raise Violation(400, "%s with parameters in the query string" % method)
                ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
                if body and ctype != "application/x-www-form-urlencoded":
                    raise Violation(415, "body of type '%s', not a form" % ctype)
                try:
                    text = body.decode("ascii")
                except UnicodeDecodeError:
                    raise Violation(400, "form body is not ASCII (unencoded bytes)")
                params = parse_form(text, "form")
            for k, v in path_params.items():
                if k in params:
                    raise Violation(400, "path parameter %s repeated in the parameters" % k)
                params[k] = [v]
            if "sshkeys" in params:
                msg = check_format("urlencoded", params["sshkeys"][0], "sshkeys")
                if msg:
                    raise Violation(400, "sshkeys: %s" % msg, {"sshkeys": msg})
            validate_params(info, params)
        except Violation as v:
            with sim.lock:
                sim.violation(method, tpath, v.message + (
                    ": " + json.dumps(v.errors) if v.errors else ""))
            body = {"data": None}
            if v.errors:
                body["errors"] = v.errors
            return self.reply(v.status, v.message, body)
        # flatten: arrays stay lists
        props = (info.get("parameters") or {}).get("properties") or {}
        p = {}
        for k, vals in params.items():
            spec = prop_for(props, k) or {}
            p[k] = vals if spec.get("type") == "array" else vals[0]
        with sim.lock:
            sim.advance()
            if fault and fault.startswith("error:"):
                _, code, text = fault.split(":", 2)
                return self.reply(int(code), text, {"data": None, "message": text + "\n"})
            if fault == "lock_timeout":
                vmid = p.get("vmid", "0")
                text = "can't lock file '/var/lock/qemu-server/lock-%s.conf' - got timeout" % vmid
                return self.reply(500, text, {"data": None, "message": text + "\n"})
            if fault == "locked":
                return self.reply(500, "VM is locked (clone)",
                                  {"data": None, "message": "VM is locked (clone)\n"})
            if fault == "agent_down" and "/agent/" in tpath:
                text = "QEMU guest agent is not running"
                return self.reply(500, text, {"data": None, "message": text + "\n"})
            try:
                data = sim.handle(method, tpath, p, fault, user)
            except ApiError as e:
                if e.status == 401:
                    return self.reply(401, e.message)
                body = {"data": None, "message": e.message + "\n"}
                if e.errors:
                    body["errors"] = e.errors
                return self.reply(e.status, e.message, body)
            except Violation as v:
                sim.violation(method, tpath, v.message)
                return self.reply(v.status, v.message, {"data": None})
        if fault == "drop_after":
            return self.drop()
        self.reply(200, "OK", {"data": data})

    def control(self, method, path, body):
        sim = self.server.sim
        if method == "GET" and path == "/_sim/state":
            return self.reply(200, "OK", sim.state())
        if method == "POST" and path == "/_sim/faults":
            with sim.lock:
                sim.set_faults(json.loads(body or b"[]"))
            return self.reply(200, "OK", {})
        if method == "POST" and path == "/_sim/config":
            c = json.loads(body or b"{}")
            with sim.lock:
                if "latency_ms" in c:
                    sim.latency = c["latency_ms"] / 1000.0
                if "agent_delay_s" in c:
                    sim.agent_delay = c["agent_delay_s"]
                for name, n in c.get("nodes", {}).items():
                    sim.nodes[name].update(n)
                if c.get("reset_counters"):
                    sim.calls = 0
                    sim.calls_by = {}
                    sim.max_concurrent = 0
            return self.reply(200, "OK", {})
        return self.reply(404, "Not found")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if self.verbose:
            super().handle_error(request, client_address)
    allow_reuse_address = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--schema", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--state-dir", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--config", help="JSON file with nodes, vms, token, faults, timings")
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    cfg = {}
    if a.config:
        with open(a.config) as f:
            cfg = json.load(f)
    os.makedirs(a.state_dir, exist_ok=True)
    sim = Sim(cfg, os.path.abspath(a.state_dir), Schema(a.schema))
    srv = Server(("127.0.0.1", 0), Handler)
    srv.sim = sim
    srv.verbose = a.verbose
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    port = srv.server_address[1]
    tmp = a.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % port)
    os.rename(tmp, a.port_file)

    def stop(signum, frame):
        threading.Thread(target=srv.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv.serve_forever(poll_interval=0.2)
    with sim.lock:
        for v in list(sim.vms.values()):
            sim.kill_execs(v)


if __name__ == "__main__":
    main()
