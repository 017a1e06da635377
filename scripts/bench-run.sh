#!/bin/sh
# Cold job start-up: agentlab against the usual shell recipe, side by side.
#
#   agentlab:  `agentlab run --json -- true` with the default image
#   baseline:  qemu-img create -b (overlay) + genisoimage (NoCloud seed) +
#              virsh create (same kernel, initrd and cmdline), then wait for
#              a runcmd marker on the serial console, then virsh destroy
#
# Prints medians per phase over N runs each (default 5), interleaved so both
# see the same machine load. Host-side provisioning is "accepted -> domain
# started"; boot is "domain started -> workload running".
# Usage: scripts/bench-run.sh [N]        (needs root, a built image)
set -eu
cd "$(dirname "$0")/.."
n=${1:-5}
agentlab=${AGENTLAB:-$PWD/build/agentlab}
state=${AGENTLAB_STATE_DIR:-/var/lib/agentlab}
img=$state/images/${IMAGE:-debian-12}
[ -r "$img/manifest.json" ] || { echo "no image in $img: run 'agentlab image build' first"; exit 1; }
cmdline=$(sed -n 's/.*"cmdline": *"\([^"]*\)".*/\1/p' "$img/manifest.json")
work=$(mktemp -d /tmp/agentlab-bench.XXXXXX)
chmod 0711 "$work"
trap 'virsh -q destroy agentlab-bench-baseline >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

. scripts/bench-lib.sh

agentlab_once() {
    t0=$(now_ms)
    "$agentlab" run -q --json -- true 2>/dev/null >"$work/a.json"
    t3=$(now_ms)
    prov=$(sed -n 's/.*"provision":\([0-9]*\).*/\1/p' "$work/a.json")
    start=$(sed -n 's/.*"start":\([0-9]*\).*/\1/p' "$work/a.json")
    boot=$(sed -n 's/.*"boot":\([0-9]*\).*/\1/p' "$work/a.json")
    echo "$((prov + start)) $boot $((t3 - t0)) $prov $start" >>"$work/agentlab"
}

i=0
while [ $i -lt "$n" ]; do
    agentlab_once
    baseline_once $i >>"$work/baseline"
    i=$((i + 1))
    echo "run $i/$n done" >&2
done

ap=$(col 1 "$work/agentlab") ab=$(col 2 "$work/agentlab") at=$(col 3 "$work/agentlab")
aprov=$(col 4 "$work/agentlab") astart=$(col 5 "$work/agentlab")
bp=$(col 1 "$work/baseline") bb=$(col 2 "$work/baseline") bt=$(col 4 "$work/baseline")
echo
echo "medians over $n runs each, ms (machine: $(nproc) cores, $(uptime | sed 's/.*load/load/'))"
printf '%-40s %10s %10s %8s\n' phase agentlab baseline ratio
printf '%-40s %10s %10s %8s\n' "host provisioning (accepted -> started)" "$ap" "$bp" \
    "$(awk -v a="$ap" -v b="$bp" 'BEGIN{printf "%.2f", a/b}')"
printf '%-40s %10s %10s\n' "  of which agentlab's own work" "$aprov" "-"
printf '%-40s %10s %10s\n' "  of which libvirt domain create" "$astart" "-"
printf '%-40s %10s %10s %8s\n' "boot (started -> workload running)" "$ab" "$bb" \
    "$(awk -v a="$ab" -v b="$bb" 'BEGIN{printf "%.2f", a/b}')"
printf '%-40s %10s %10s %8s\n' "total (incl. teardown)" "$at" "$bt" \
    "$(awk -v a="$at" -v b="$bt" 'BEGIN{printf "%.2f", a/b}')"
