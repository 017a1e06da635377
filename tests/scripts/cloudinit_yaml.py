#!/usr/bin/python3
"""Reads rendered cloud-init documents with cloud-init's own code (Debian
installs it for /usr/bin/python3, not for whatever python3 is first in PATH).

test_cloudinit runs this so the checks use the parser and the write_files
implementation the guest will run, not a re-implementation in the test.

  cloudinit_yaml.py get FILE KEYPATH...  print string values, each followed
                                         by a NUL (KEYPATH: key.0.key...)
  cloudinit_yaml.py write-files FILE ROOT          run cc_write_files under ROOT
  cloudinit_yaml.py known-keys FILE                fail on top-level keys the
                                                   schema does not define
Exit status 0 on success, 1 on a failed check, 2 on usage errors.
"""
import json
import os
import sys

from cloudinit import util
from cloudinit.config import cc_write_files
from cloudinit.config import schema as ci_schema


def load(path):
    with open(path, "rb") as f:
        data = f.read().decode("utf-8")
    doc = util.load_yaml(data, default=None)
    if not isinstance(doc, dict):
        sys.exit("%s: not a YAML mapping" % path)
    return doc


def cmd_get(path, keypaths):
    doc = load(path)
    for keypath in keypaths:
        node = doc
        for part in keypath.split("."):
            if isinstance(node, list):
                node = node[int(part)]
            else:
                node = node[part]
        if not isinstance(node, str):
            sys.exit("%s is %r, not a string" % (keypath, type(node).__name__))
        sys.stdout.buffer.write(node.encode("utf-8") + b"\0")


def cmd_write_files(path, root):
    files = load(path).get("write_files") or []
    for f in files:
        f["path"] = os.path.join(root, f["path"].lstrip("/"))
    cc_write_files.write_files("write_files", files, "root:root")


def cmd_known_keys(path):
    # The 22.4 schema allows unknown top-level keys, so a typo such as
    # "package_updates" would pass `cloud-init schema`; check them here.
    known = set()
    for d in ci_schema.get_schema()["$defs"].values():
        known.update(d.get("properties", {}).keys())
    unknown = sorted(set(load(path).keys()) - known)
    if unknown:
        print("unknown top-level keys: %s" % json.dumps(unknown))
        sys.exit(1)


def main(argv):
    if len(argv) >= 4 and argv[1] == "get":
        cmd_get(argv[2], argv[3:])
    elif len(argv) == 4 and argv[1] == "write-files":
        cmd_write_files(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "known-keys":
        cmd_known_keys(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main(sys.argv)
