#!/bin/sh
# Start-up speed, side by side in one run (issue "warm pools and speed"):
#
#  1. agentlab run started -> the workload's first output line: cold (agentlab run), warm
#     (a daemon with warm = 1), snapshot (a daemon with start = snapshot and no
#     warm pool; plus the host-side cost of one restore, virDomainRestoreFlags,
#     the guest's part after it, and what making the snapshot cost), and the
#     shell-recipe baseline (qemu-img create -b + genisoimage + virsh create +
#     waiting for a runcmd line on the serial console)
#  2. host-side provisioning of a cold job (accepted -> domain started), split
#     into libvirt's own domain-create call and everything agentlab does
#  3. total job time against a bare `virsh create` of the same image running
#     the same command: agentlab's overhead in percent
#  4. 8 jobs submitted at once to a daemon: throughput, p50/p95 latency
#  5. the daemon's RSS and CPU use while idle with a warm pool of 2
#
# Medians over N runs (default 5). Needs root, a built image (IMAGE, default
# debian-12) and a free machine: the numbers are only comparable with each
# other. ROWS=start measures only the start-up rows (1: cold, warm, snapshot)
# and skips the baseline, 4 and 5 (a Debian run in a third of the time).
# Usage: [IMAGE=NAME] [ROWS=all|start] scripts/bench-speed.sh [N]
set -eu
cd "$(dirname "$0")/.."
n=${1:-5}
image=${IMAGE:-debian-12}
rows=${ROWS:-all}
case $rows in all|start) ;; *) echo "ROWS is all or start"; exit 2 ;; esac
build=$PWD/build
agentlab=$build/agentlab
daemon=$build/agentlabd
state=${AGENTLAB_STATE_DIR:-/var/lib/agentlab}
img=$state/images/$image
[ -r "$img/manifest.json" ] || { echo "no image $image in $state: run agentlab image build"; exit 1; }

work=$(mktemp -d /tmp/agentlab-bench-speed.XXXXXX)
chmod 0711 "$work"
dpid=""
cleanup() {
    if [ -n "$dpid" ]; then kill -TERM "$dpid" 2>/dev/null || true; wait "$dpid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

. scripts/bench-lib.sh
pct() { sort -n | awk -v p="$1" '{a[NR]=$1} END {i=int((NR-1)*p/100)+1; print a[i]}'; }
jsonv() { sed -n "s/.*\"$1\":\([0-9]*\).*/\1/p"; }

# Runs "agentlab run ... -- sh -c 'echo first; ...'" and prints the ms from
# the start to its first output line, then the ms to the end.
first_line_ms() {
    t0=$(now_ms)
    first=""
    "$@" 2>>"$work/run.err" | while IFS= read -r line; do
        [ -z "$first" ] && { first=1; echo $(( $(now_ms) - t0 )) >"$work/first"; }
    done
    echo "$(cat "$work/first") $(( $(now_ms) - t0 ))"
}

# --- a private state with the image, a config per scenario ---
export AGENTLAB_STATE_DIR=$work/state AGENTLAB_RUN_DIR=$work/run
mkdir -p "$AGENTLAB_STATE_DIR/images"
cp -a "$img" "$AGENTLAB_STATE_DIR/images/"
# memory snapshots need a helper that speaks SYNC and FRESHEN: the private
# copy gets this build's helper when the image has another one
if ! grep -q "\"guest_helper_sha256\": *\"$(sha256sum "$build/agentlab-guest" | cut -d' ' -f1)\"" \
    "$img/manifest.json" && [ -n "$(sed -n 's/.*"filesystem_label": *"\(.*\)".*/\1/p' "$img/manifest.json")" ]; then
    virt-copy-in -a "$AGENTLAB_STATE_DIR/images/$image/disk.qcow2" "$build/agentlab-guest" /usr/local/bin/
fi
conf() { printf '[agent]\nimage = %s\nlog_level = warn\nmax_attempts = 1\n[backend "local"]\nmax_vms = %s\n[pool "default"]\nwarm = %s\n' "$image" "$1" "$2" >"$work/$3.conf"; }
conf 2 0 cold
conf 2 1 warm1
conf 2 0 burst
conf 2 2 warm2
printf 'start = snapshot\n' | cat "$work/cold.conf" - >"$work/snap.conf"

echo "== 1, 2, 3: cold jobs (agentlab run in-process) and the shell baseline, $n each"
i=0
while [ $i -lt "$n" ]; do
    AGENTLAB_CONFIG=$work/cold.conf "$agentlab" run -q --json -- sh -c 'echo first' \
        >"$work/cold.json" 2>/dev/null
    prov=$(jsonv provision <"$work/cold.json")
    start=$(jsonv start <"$work/cold.json")
    boot=$(jsonv boot <"$work/cold.json")
    total=$(jsonv total <"$work/cold.json")
    api=$(jsonv provision_api <"$work/cold.json")
    # agentlab's own share of provisioning: all of it but libvirt's calls
    own=$(awk -v p="$prov" -v a="$api" 'BEGIN{printf "%.1f", p - a / 1000}')
    echo "$own $start $boot $total $(awk -v a="$api" 'BEGIN{printf "%.1f", a / 1000}')" >>"$work/cold"
    # queued -> first output line, measured from outside
    r=$(first_line_ms env AGENTLAB_CONFIG="$work/cold.conf" "$agentlab" run -q -- sh -c 'echo first')
    echo "$r" >>"$work/cold_first"
    i=$((i + 1))
done

# the baseline needs cloud-init in the image (its runcmd prints the line): an
# image without a root file system (micro: kernel + initramfs) has none
if [ "$rows" = start ]; then
    echo "- - - -" >"$work/baseline"
elif [ -n "$(sed -n 's/.*"filesystem_label": *"\(.*\)".*/\1/p' "$img/manifest.json")" ]; then
    echo "== baseline: the shell recipe, $n runs"
    cmdline=$(sed -n 's/.*"cmdline": *"\([^"]*\)".*/\1/p' "$img/manifest.json")
    i=0
    while [ $i -lt "$n" ]; do
        baseline_once $i >>"$work/baseline"
        i=$((i + 1))
    done
else
    echo "== baseline: skipped, $image has no cloud-init"
    echo "- - - -" >"$work/baseline"
fi

warm_ready_is() {
    AGENTLAB_CONFIG=$1 "$agentlab" pool status --json 2>/dev/null | grep -q "\"warm_ready\":$2"
}
wait_ready() { bench_wait 1200 "warm VMs never became ready" warm_ready_is "$1" "$2"; }
# start_daemon NAME: agentlabd with $work/NAME.conf in the background ($dpid)
start_daemon() {
    AGENTLAB_CONFIG=$work/$1.conf "$daemon" 2>"$work/daemon-$1.log" &
    dpid=$!
}
stop_daemon() {
    kill -TERM "$dpid"
    wait "$dpid" || true
    dpid=""
}

echo "== warm: a daemon with warm = 1, $n jobs"
start_daemon warm1
i=0
while [ $i -lt "$n" ]; do
    wait_ready "$work/warm1.conf" 1
    r=$(first_line_ms env AGENTLAB_CONFIG="$work/warm1.conf" "$agentlab" run -q -- sh -c 'echo first')
    echo "$r" >>"$work/warm_first"
    i=$((i + 1))
done
stop_daemon

echo "== snapshot: a daemon with start = snapshot and no warm pool, $n jobs"
start_daemon snap
# the first job boots and has the snapshot made (slot 0 boots, slot 1 is a copy)
AGENTLAB_CONFIG=$work/snap.conf "$agentlab" run -q -- true >/dev/null 2>&1
slots_ready() { [ "$(ls "$AGENTLAB_STATE_DIR"/images/"$image"/snapshots/*/slot-*/manifest.json 2>/dev/null | wc -l)" -ge 2 ]; }
bench_wait 1200 "the snapshot was never made" slots_ready
i=0
while [ $i -lt "$n" ]; do
    r=$(first_line_ms env AGENTLAB_CONFIG="$work/snap.conf" "$agentlab" run -q -- sh -c 'echo first')
    echo "$r" >>"$work/snap_first"
    i=$((i + 1))
done
stop_daemon
# host-side cost of one restore: the attempt's "start" phase is the
# virDomainRestoreFlags() call (agentlab run in-process, same slots)
i=0
while [ $i -lt "$n" ]; do
    AGENTLAB_CONFIG=$work/snap.conf "$agentlab" run -q --json -- sh -c 'echo first' \
        >"$work/snap.json" 2>/dev/null
    echo "$(jsonv start <"$work/snap.json") $(jsonv provision <"$work/snap.json") $(jsonv boot <"$work/snap.json")" >>"$work/snap_host"
    i=$((i + 1))
done
snapdir=$(dirname "$(ls "$AGENTLAB_STATE_DIR"/images/"$image"/snapshots/*/slot-0/manifest.json | head -1)")
snap_made=$(sed -n 's/.*"made_ms": *\([0-9]*\).*/\1/p' "$snapdir/manifest.json")
snap_state=$(du -k "$snapdir/state" | cut -f1)
snap_base=$(du -k "$snapdir/base.qcow2" | cut -f1)

# the rows of 1 (cold, warm, snapshot)
start_rows() {
    printf '%-58s %10s\n' "agentlab run started -> first output line, cold" "$(col 1 "$work/cold_first")"
    printf '%-58s %10s\n' "agentlab run started -> first output line, warm (warm = 1)" "$(col 1 "$work/warm_first")"
    printf '%-58s %10s\n' "agentlab run started -> first output line, snapshot" "$(col 1 "$work/snap_first")"
    printf '%-58s %10s\n' "snapshot: host-side restore (virDomainRestoreFlags)" "$(col 1 "$work/snap_host")"
    printf '%-58s %10s\n' "snapshot: host provisioning before the restore" "$(col 2 "$work/snap_host")"
    printf '%-58s %10s\n' "snapshot: restored -> workload started (guest wakes, FRESHEN)" "$(col 3 "$work/snap_host")"
    printf '%-58s %10s\n' "snapshot: making slot 0 (boot + sync + save), once" "$snap_made"
    printf '%-58s %7s KiB\n' "snapshot: disk per slot (state), shared base" "$snap_state + $snap_base"
}
if [ "$rows" = start ]; then
    echo
    echo "image: $image; medians over $n runs, milliseconds (ROWS=start)"
    start_rows
    exit 0
fi

echo "== 4: 8 jobs at once to a daemon (max_vms = 2)"
start_daemon burst
sleep 2
: >"$work/burst"
t0=$(now_ms)
i=0
while [ $i -lt 8 ]; do
    ( s=$(now_ms)
      AGENTLAB_CONFIG=$work/burst.conf "$agentlab" run -q -- sh -c 'echo job' >/dev/null 2>&1
      echo $(( $(now_ms) - s )) >>"$work/burst" ) &
    i=$((i + 1))
done
burst_done() { [ "$(wc -l <"$work/burst")" -ge 8 ]; }
bench_wait 7200 "burst did not finish" burst_done
burst_total=$(( $(now_ms) - t0 ))
stop_daemon

echo "== 5: idle daemon with warm = 2 (60 s)"
start_daemon warm2
wait_ready "$work/warm2.conf" 2
ticks() { awk '{print $14 + $15}' "/proc/$dpid/stat"; }
c0=$(ticks)
sleep 60
c1=$(ticks)
rss=$(awk '/VmRSS/ {print $2}' "/proc/$dpid/status")
hz=$(getconf CLK_TCK)
stop_daemon

echo
echo "machine: $(nproc) cores, $(free -g | awk '/Mem/ {print $2}') GiB, $(uname -r), accel: $(sed -n 's/^kind=//p' "$work/run/accel-probe" 2>/dev/null || echo ?)"
echo "image: $image; medians over $n runs, milliseconds"
start_rows
printf '%-58s %10s\n' "first output line, baseline shell recipe" "$(col 3 "$work/baseline")"
printf '%-58s %10s\n' "cold host provisioning: agentlab's own work" "$(col 1 "$work/cold")"
printf '%-58s %10s\n' "cold host provisioning: libvirt overlay volume create" "$(col 5 "$work/cold")"
printf '%-58s %10s\n' "cold host provisioning: libvirt domain create" "$(col 2 "$work/cold")"
printf '%-58s %10s\n' "baseline host provisioning (qemu-img + genisoimage + virsh)" "$(col 1 "$work/baseline")"
at=$(col 4 "$work/cold")
bt=$(col 4 "$work/baseline")
printf '%-58s %10s\n' "total job time, agentlab (cold)" "$at"
printf '%-58s %10s\n' "total job time, bare virsh create (baseline)" "$bt"
printf '%-58s %9s%%\n' "agentlab overhead over the baseline" \
    "$(awk -v a="$at" -v b="$bt" 'BEGIN{if (b + 0 > 0) printf "%.1f", (a-b)*100/b; else printf "-"}')"
printf '%-58s %10s\n' "8 jobs at once: wall time" "$burst_total"
printf '%-58s %10s\n' "8 jobs at once: p50 latency" "$(pct 50 <"$work/burst")"
printf '%-58s %10s\n' "8 jobs at once: p95 latency" "$(pct 95 <"$work/burst")"
printf '%-58s %10s\n' "8 jobs at once: throughput (jobs/min)" \
    "$(awk -v t="$burst_total" 'BEGIN{printf "%.1f", 8*60000/t}')"
printf '%-58s %7s KiB\n' "idle daemon with warm = 2: RSS" "$rss"
printf '%-58s %9s%%\n' "idle daemon with warm = 2: CPU over 60 s" \
    "$(awk -v c="$((c1 - c0))" -v hz="$hz" 'BEGIN{printf "%.2f", c*100/hz/60}')"
