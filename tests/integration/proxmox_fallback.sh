#!/bin/sh
# Fallback from local libvirt to a Proxmox cluster: agentlabd with a pool of
# "local" (libvirt, the micro image, max_vms = 1) then "cluster" (the
# simulator). Three jobs dropped into the spool at once: one runs locally,
# two overflow to the cluster; all succeed, the database records where each
# attempt ran, and nothing is left on either side.
# Usage: proxmox_fallback.sh AGENTLABD
set -eu
daemon=$1
AL_SOURCE_DIR=${AL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
. "$(dirname "$0")/pve_lib.sh"
[ -d "${AGENTLAB_TEST_STATE:-}/images/micro" ] || al_skip "proxmox_fallback: no micro image (run the micro fixture)"
pve_test_env
state=$AGENTLAB_STATE_DIR
mkdir -p "$state/images"
cp -a "$AGENTLAB_TEST_STATE/images/micro" "$state/images/"
pve_sim_start '{"task_time": {"qmclone": 0.5, "qmstart": 0.3, "qmstop": 0.2, "qmdestroy": 0.2},
               "agent_delay_s": 0.5}'
pve_conf '' 'image = micro
boot_timeout = 2m'
cat >>"$AGENTLAB_CONFIG" <<CONF
[backend "local"]
max_vms = 1
[pool "default"]
backends = local, cluster
[source "drop"]
type = spool
poll_interval = 1s
CONF

spool=$state/spool
mkdir -p "$spool"
for i in 1 2 3; do
    printf '{"name":"fallback-%d","command":["sh","-c","sleep 2; echo done %d"],"timeout_s":120}\n' \
        $i $i >"$spool/.job$i.tmp"
done
for i in 1 2 3; do mv "$spool/.job$i.tmp" "$spool/job$i.json"; done

db=$state/agentlab.db
q() { sqlite3 -cmd '.timeout 5000' "$db" "$1" 2>/dev/null || true; }
"$daemon" 2>"$TEST_TMP/daemon.log" &
dpid=$!
i=0
while :; do
    total=$(q "select count(*) from jobs")
    left=$(q "select count(*) from jobs where state not in ('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')")
    [ "$total" = 3 ] && [ "$left" = 0 ] && break
    i=$((i + 1))
    if [ $i -gt 600 ] || ! kill -0 $dpid 2>/dev/null; then
        kill -TERM $dpid 2>/dev/null || true
        tail -40 "$TEST_TMP/daemon.log"
        fail "jobs did not finish ($left of $total left)"
    fi
    sleep 0.2
done
kill -TERM $dpid
rc=0
wait $dpid || rc=$?
[ $rc -eq 0 ] || { tail -30 "$TEST_TMP/daemon.log"; fail "agentlabd exited $rc on SIGTERM"; }

echo "--- attempts:"
q "select j.name, a.n, a.backend, a.result from attempts a join jobs j on j.id = a.job_id order by j.name"
[ "$(q "select count(*) from jobs where state = 'SUCCEEDED'")" = 3 ] ||
    { q "select name, state, reason from jobs"; fail "not every job succeeded"; }
[ "$(q "select count(*) from attempts")" = 3 ] || fail "a job needed more than one attempt"
[ "$(q "select count(*) from attempts where backend = 'local'")" = 1 ] || fail "not one job ran locally"
[ "$(q "select count(*) from attempts where backend = 'cluster'")" = 2 ] || fail "not two jobs ran on the cluster"
grep -q 'falling back to backend cluster: backend local is full (1/1 VMs' "$TEST_TMP/daemon.log" ||
    { tail -30 "$TEST_TMP/daemon.log"; fail "the fallback reason was not logged"; }
for j in $(q "select id from jobs"); do
    grep -q '^done [123]$' "$state/jobs/$j/output.log" || fail "job $j: output missing"
done
owner=$(cat "$state/owner-id")
for dom in $(virsh -c qemu:///system list --all --name | grep '^agentlab-' || true); do
    if virsh -c qemu:///system metadata "$dom" https://agentlab.dev/xmlns/domain/1 2>/dev/null |
        grep -q "$owner"; then
        fail "domain $dom of this daemon is left"
    fi
done
[ -z "$(ls "$state/pools/local" 2>/dev/null)" ] || fail "overlays left"
pve_check 's["vms_created"] == 2'
pve_assert_clean
for p in $(virsh -c qemu:///system pool-list --name | grep '^agentlab-local-'); do
    path=$(virsh -c qemu:///system pool-dumpxml "$p" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p')
    case "$path" in "$state"/*) virsh -c qemu:///system pool-destroy "$p" >/dev/null ;; esac
done
echo "proxmox fallback: ok"
