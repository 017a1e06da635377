#!/bin/sh
# Crash recovery: agentlabd is SIGKILLed at many different moments while it
# runs jobs on real libvirt (the micro image), and restarted each time. In
# the end every job must be terminal, no VM, overlay or run dir of this
# daemon may be left, and the database must pass PRAGMA integrity_check.
# The kills must have landed in at least 4 distinct phases, among them
# provisioning, booting and running.
# Usage: chaos.sh AGENTLABD AGENTLAB KILLS
set -eu
daemon=$1 cli=$2 kills=${3:-10}
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
al_test_env
state=$TEST_TMP/state
mkdir -p "$state"
chmod 0711 "$TEST_TMP" "$state"
# the micro image from the shared test state
mkdir -p "$state/images"
cp -a "${AGENTLAB_TEST_STATE}/images/micro" "$state/images/"
export AGENTLAB_STATE_DIR=$state
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
image = micro
boot_timeout = 20m
[backend "local"]
max_vms = 2
[source "drop"]
type = spool
poll_interval = 1s
CONF
db=$state/agentlab.db
spool=$state/spool
mkdir -p "$spool"

njobs=8
i=0
while [ $i -lt $njobs ]; do
    printf '{"name":"chaos-%d","command":["sh","-c","sleep 4; echo done %d"],"max_attempts":10,"timeout_s":120}\n' \
        $i $i >"$spool/.job$i.tmp"
    mv "$spool/.job$i.tmp" "$spool/job$i.json"
    i=$((i + 1))
done

q() { sqlite3 -cmd '.timeout 5000' "$db" "$1" 2>/dev/null || true; }
start_daemon() {
    "$daemon" 2>>"$TEST_TMP/daemon.log" &
    dpid=$!
}

# The phases the daemon is in, one per line: the states of its active jobs;
# RECONCILING while VMs recorded by the killed daemon still wait to be
# swept (a VM record of a QUEUED job); STARTING when neither (start-up,
# spool scan, admission).
phases_now() {
    p=$(q "select state from jobs where state in ('PROVISIONING','BOOTING','RUNNING')
           union select 'RECONCILING' from vms join jobs on jobs.id = vms.job_id
           where jobs.state = 'QUEUED'")
    echo "${p:-STARTING}"
}

# Each kill lands either when a phase is first seen (polled every 50 ms, at
# most 120 s; RECONCILING comes right after a start or not at all: 15 s) or
# after a delay in seconds. Boot times under TCG vary from 7 to 25 s, so
# fixed delays alone may never reach RUNNING: the phase targets make the
# spread certain, the delays add moments in between.
targets="PROVISIONING BOOTING RECONCILING RUNNING RECONCILING 0.4 BOOTING 2.5 RUNNING PROVISIONING 9 6"
n=0
for t in $targets $targets; do
    [ $n -lt "$kills" ] || break
    start_daemon
    t0=$(date +%s.%N)
    case "$t" in
    [A-Z]*)
        i=0
        max=2400
        [ "$t" != RECONCILING ] || max=300
        while ! phases_now | grep -qx "$t" && [ $i -lt $max ]; do
            sleep 0.05
            i=$((i + 1))
        done
        ;;
    *) sleep "$t" ;;
    esac
    phases=$(phases_now)
    kill -KILL $dpid
    wait $dpid 2>/dev/null || true
    n=$((n + 1))
    echo "kill $n ($t) after $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")s; phases:" $phases
    echo "$phases" >>"$TEST_TMP/phases"
done

# let it finish
start_daemon
i=0
while :; do
    left=$(q "select count(*) from jobs where state not in ('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')")
    total=$(q "select count(*) from jobs")
    [ "$total" = "$njobs" ] && [ "$left" = "0" ] && break
    i=$((i + 1))
    if [ $i -gt 600 ]; then
        kill -TERM $dpid
        tail -50 "$TEST_TMP/daemon.log"
        fail "jobs did not finish: $left of $total left"
    fi
    sleep 1
done
kill -TERM $dpid
rc=0
wait $dpid || rc=$?
[ $rc -eq 0 ] || { tail -30 "$TEST_TMP/daemon.log"; fail "agentlabd exited $rc on SIGTERM"; }

echo "--- phases hit by the kills:"
sort "$TEST_TMP/phases" | grep . | uniq -c || true
echo "--- final states:"
q "select state, count(*), sum(attempts) from jobs group by state"
[ "$(q "select count(*) from jobs where state='SUCCEEDED'")" = "$njobs" ] ||
    fail "not every job succeeded after requeues"
[ "$(q 'pragma integrity_check')" = "ok" ] || fail "integrity_check failed"
owner=$(cat "$state/owner-id")
for dom in $(virsh -c qemu:///system list --all --name | grep '^agentlab-' || true); do
    if virsh -c qemu:///system metadata "$dom" https://agentlab.dev/xmlns/domain/1 2>/dev/null |
        grep -q "$owner"; then
        fail "domain $dom of this daemon is left"
    fi
done
[ -z "$(ls "$state/pools/local" 2>/dev/null)" ] || { ls -la "$state/pools/local"; fail "overlays left"; }
[ -z "$(ls "$AGENTLAB_RUN_DIR/vms" 2>/dev/null)" ] || fail "run dirs left"
[ -z "$(ls "$spool"/*.json 2>/dev/null)" ] || fail "spool files not picked up"
[ "$(ls "$spool/accepted"/*.id | wc -l)" = "$njobs" ] || fail "accepted ids missing"
distinct=$(sort -u "$TEST_TMP/phases" | grep -c . || true)
[ "$distinct" -ge 4 ] || fail "the kills hit only $distinct distinct phases: $(sort -u "$TEST_TMP/phases" | tr '\n' ' ')"
for p in PROVISIONING BOOTING RUNNING; do
    grep -qx "$p" "$TEST_TMP/phases" || fail "no kill landed while a job was $p"
done
# the pool this daemon made is still there; remove it with its empty dir
for p in $(virsh -c qemu:///system pool-list --name | grep '^agentlab-local-'); do
    path=$(virsh -c qemu:///system pool-dumpxml "$p" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p')
    case "$path" in "$state"/*) virsh -c qemu:///system pool-destroy "$p" >/dev/null ;; esac
done
echo "chaos: ok ($n kills)"
