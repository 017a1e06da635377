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

now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }

baseline_once() {
    i=$1
    d=$work/b$i
    mkdir -p "$d/seed"
    chmod 0711 "$d"
    t0=$(now_ms)
    qemu-img create -q -f qcow2 -b "$img/disk.qcow2" -F qcow2 "$d/overlay.qcow2"
    printf 'instance-id: bench-%s\nlocal-hostname: bench\n' "$i" >"$d/seed/meta-data"
    printf '#cloud-config\nruncmd:\n  - [sh, -c, "echo AGENTLAB-BENCH-READY > /dev/ttyS0"]\n' \
        >"$d/seed/user-data"
    genisoimage -quiet -output "$d/seed.iso" -volid cidata -joliet -rock \
        "$d/seed/meta-data" "$d/seed/user-data"
    cat >"$d/dom.xml" <<XML
<domain type='qemu'>
  <name>agentlab-bench-baseline</name>
  <memory unit='MiB'>1024</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>$img/vmlinuz</kernel><initrd>$img/initrd.img</initrd>
  <cmdline>$cmdline</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='$d/overlay.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='$d/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <serial type='file'><source path='$d/console.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh -q create "$d/dom.xml" >/dev/null
    t1=$(now_ms)
    until grep -q AGENTLAB-BENCH-READY "$d/console.log" 2>/dev/null; do
        [ $(( $(now_ms) - t1 )) -lt 600000 ] || { echo "baseline VM never ran runcmd"; exit 1; }
        sleep 0.05
    done
    t2=$(now_ms)
    virsh -q destroy agentlab-bench-baseline >/dev/null
    rm -rf "$d"
    t3=$(now_ms)
    echo "$((t1 - t0)) $((t2 - t1)) $((t3 - t0))" >>"$work/baseline"
}

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
    baseline_once $i
    i=$((i + 1))
    echo "run $i/$n done" >&2
done

col() { cut -d' ' -f"$1" "$2" | median; }
ap=$(col 1 "$work/agentlab") ab=$(col 2 "$work/agentlab") at=$(col 3 "$work/agentlab")
aprov=$(col 4 "$work/agentlab") astart=$(col 5 "$work/agentlab")
bp=$(col 1 "$work/baseline") bb=$(col 2 "$work/baseline") bt=$(col 3 "$work/baseline")
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
