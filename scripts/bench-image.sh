#!/bin/sh
# Image benchmark: build time per phase and boot-to-runcmd time of a golden
# image, on this host's libvirt (qemu:///system) with the accelerator the
# probe picks (TCG here). A script to read, not a timed test.
#
#   scripts/bench-image.sh [--rebuild] [--boots N] [--blame] [RECIPE]
#
#   --rebuild  build with --force (otherwise an up-to-date image is reused
#              and the build times recorded in its manifest are printed)
#   --boots N  boot the image N times (default 3) and print each time and
#              the median
#   --blame    also print systemd-analyze output from inside the guest
#
# Uses build/agentlab (cmake -S . -B build && cmake --build build first),
# AGENTLAB_STATE_DIR (default build/test-state, shared with the tests) and
# AGENTLAB_GUEST_HELPER when set. The VMs get no NIC.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd)

rebuild=
boots=3
blame=
recipe=debian-12
while [ $# -gt 0 ]; do
    case "$1" in
    --rebuild) rebuild=--force ;;
    --boots) boots=$2; shift ;;
    --blame) blame=1 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    -*) echo "bench-image: unknown option $1" >&2; exit 2 ;;
    *) recipe=$1 ;;
    esac
    shift
done

agentlab=$root/build/agentlab
[ -x "$agentlab" ] || { echo "bench-image: build first: cmake -S . -B build && cmake --build build" >&2; exit 1; }
export AGENTLAB_STATE_DIR="${AGENTLAB_STATE_DIR:-$root/build/test-state}"
uri=qemu:///system

echo "== build ($recipe)"
start=$(date +%s.%N)
"$agentlab" image build "$recipe" $rebuild
end=$(date +%s.%N)
manifest=$("$agentlab" image inspect "$recipe")
field() { printf '%s\n' "$manifest" | sed -n "s/^  \"$1\": \"\(.*\)\",\{0,1\}$/\1/p" | head -n1; }
phase() { printf '%s\n' "$manifest" | sed -n "s/^    \"$1\": \([0-9]*\),\{0,1\}$/\1/p" | head -n1; }
printf 'this run       %6.1f s%s\n' "$(echo "$end - $start" | bc)" "$([ -z "$rebuild" ] && echo ' (up-to-date check when the image existed)')"
for p in bootstrap disk seal checksum; do
    printf '%-14s %6.1f s\n' "$p" "$(echo "scale=1; $(phase $p) / 1000" | bc)"
done

disk=$(field disk)
[ -n "$disk" ] || { echo "bench-image: cannot read the manifest" >&2; exit 1; }
kernel=$(field kernel)
initrd=$(field initrd)
cmdline=$(field cmdline)

work=$(mktemp -d /tmp/agentlab-bench-img.XXXXXX)
chmod 0755 "$work"
dom=
cleanup() {
    [ -n "$dom" ] && virsh -q -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

# KVM only when agentlab's accelerator probe (run by image builds) found it
# working on this boot; TCG always works
type=qemu
probe="${AGENTLAB_RUN_DIR:-/run/agentlab}/accel-probe"
if [ -r "$probe" ] && grep -qx "boot_id=$(cat /proc/sys/kernel/random/boot_id)" "$probe" &&
    grep -qx 'kind=kvm' "$probe"; then
    type=kvm
fi

times=
i=1
while [ "$i" -le "$boots" ]; do
    tag=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    marker="AGENTLAB-BENCH-$tag"
    rm -f "$work"/*
    qemu-img create -q -f qcow2 -F qcow2 -b "$disk" "$work/overlay.qcow2"
    mkdir -p "$work/seed"
    printf 'instance-id: bench-%s\nlocal-hostname: bench\n' "$tag" >"$work/seed/meta-data"
    # the probe runs inside the guest: quoted heredocs, marker filled in by sed
    cat <<'EOF' | sed "s/@MARKER@/$marker/" >"$work/seed/user-data"
#cloud-config
runcmd:
  - [ sh, -c, "echo @MARKER@ $(cut -d' ' -f1 /proc/uptime) > /dev/ttyS0" ]
EOF
    if [ -n "$blame" ]; then
        cat <<'EOF' >>"$work/seed/user-data"
  - [ systemd-run, --no-block, --unit=bench-blame, sh, -c, "while ! systemd-analyze >/dev/null 2>&1; do sleep 0.5; done; (systemd-analyze; systemd-analyze blame | head -n 12) > /dev/ttyS0 2>&1" ]
EOF
    fi
    genisoimage -quiet -output "$work/seed.iso" -volid cidata -joliet -rock \
        "$work/seed/user-data" "$work/seed/meta-data"
    rm -rf "$work/seed"
    chmod 0644 "$work"/*
    dom="agentlab-bench-img-$tag"
    cat >"$work/domain.xml" <<EOF
<domain type='$type'>
  <name>$dom</name>
  <memory unit='MiB'>1024</memory>
  <vcpu>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$kernel</kernel>
    <initrd>$initrd</initrd>
    <cmdline>$cmdline</cmdline>
  </os>
  <features><acpi/></features>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='$work/overlay.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='$work/seed.iso'/>
      <target dev='vdb' bus='virtio'/>
      <readonly/>
    </disk>
    <serial type='file'>
      <source path='$work/console.log'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
    t0=$(date +%s.%N)
    virsh -q -c "$uri" create "$work/domain.xml" >/dev/null
    ok=
    while [ "$(echo "$(date +%s.%N) - $t0 < 300" | bc)" = 1 ]; do
        if grep -q "$marker" "$work/console.log" 2>/dev/null; then
            ok=1
            break
        fi
        sleep 0.2
    done
    t1=$(date +%s.%N)
    if [ -z "$ok" ]; then
        echo "boot $i: no runcmd marker after 300 s; console:" >&2
        tail -n 30 "$work/console.log" >&2 || true
        exit 1
    fi
    secs=$(echo "$t1 - $t0" | bc)
    uptime=$(grep -a "$marker" "$work/console.log" | head -n1 | awk '{print $2}')
    printf 'boot %d: %5.1f s to runcmd (guest uptime %s s)\n' "$i" "$secs" "$uptime"
    if [ -n "$blame" ]; then
        j=0
        while [ $j -lt 150 ] && ! grep -aq 'Startup finished' "$work/console.log"; do
            sleep 0.2
            j=$((j + 1))
        done
        sleep 3
        sed -n '/Startup finished/,$p' "$work/console.log" | tr -d '\r' | head -n 16
    fi
    times="$times $secs"
    virsh -q -c "$uri" destroy "$dom" >/dev/null 2>&1 || true
    dom=
    i=$((i + 1))
done
median=$(printf '%s\n' $times | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}')
printf 'boot-to-runcmd median over %d boot(s): %.1f s (domain type %s, no NIC)\n' "$boots" "$median" "$type"
