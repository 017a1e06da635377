"""What the Python VM tests leave in libvirtd: the transient storage pool the
libvirt backend made for a test's private state dir outlives the daemon
(like tests/integration/lib.sh's al_destroy_test_pools)."""

import subprocess

VIRSH = ["virsh", "-c", "qemu:///system"]


def destroy_test_pools(under):
    """Destroys the agentlab storage pools whose directory lies below `under`."""
    names = subprocess.run(VIRSH + ["pool-list", "--all", "--name"], capture_output=True,
                           text=True).stdout.split()
    prefix = under.rstrip("/") + "/"
    for name in names:
        if not name.startswith("agentlab-"):
            continue
        xml = subprocess.run(VIRSH + ["pool-dumpxml", name], capture_output=True,
                             text=True).stdout
        start, end = xml.find("<path>"), xml.find("</path>")
        if start >= 0 and end > start and xml[start + 6:end].startswith(prefix):
            subprocess.run(VIRSH + ["pool-destroy", name], capture_output=True)
            subprocess.run(VIRSH + ["pool-undefine", name], capture_output=True)
