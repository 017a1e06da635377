#!/bin/sh
# The control API and the CLI against a real agentlabd running real VMs (the
# micro image): `agentlab job submit` + `job logs -f` show a job's output
# while it runs; `job cancel` mid-run ends a job CANCELED with nothing left
# behind; `agentlab run` goes through the daemon with the same exit codes;
# and /metrics, read with curl on the unix socket, moves with all of it.
# Usage: api_cli.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
al_test_env
al_private_state micro
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
image = micro
boot_timeout = 2m
[backend "local"]
max_vms = 2
CONF
sock=$AGENTLAB_RUN_DIR/agentlabd.sock

al_daemon_start "$daemon"
[ "$(stat -c %a "$sock")" = 660 ] || fail "socket mode is $(stat -c %a "$sock"), want 660"

metric() {
    curl -sf --unix-socket "$sock" http://agentlabd/metrics | awk -v m="$1" '$1 == m {print $2}'
}
state_of() {
    "$cli" job show "$1" | sed -n 's/^state: *\([A-Z_]*\).*/\1/p'
}
wait_state() { # ID STATE SECONDS
    i=0
    while [ "$(state_of "$1")" != "$2" ]; do
        i=$((i + 1))
        [ $i -lt $(($3 * 10)) ] || fail "job $1 is $(state_of "$1"), want $2"
        sleep 0.1
    done
}

[ "$(metric 'agentlab_jobs_submitted_total{source="api"}')" = 0 ] || fail "metrics start at 0"

# 1. submit, and follow the output live
cat >"$TEST_TMP/job.json" <<'JOB'
{"name": "live", "command": ["sh", "-c", "echo first; sleep 4; echo second; sleep 2; echo third"]}
JOB
id=$("$cli" job submit "$TEST_TMP/job.json")
echo "job $id submitted"
"$cli" job logs -f "$id" >"$TEST_TMP/follow.out" &
fpid=$!
i=0
until grep -q first "$TEST_TMP/follow.out"; do
    i=$((i + 1))
    [ $i -lt 3000 ] || fail "no output from job $id within 300 s"
    sleep 0.1
done
st=$(state_of "$id")
[ "$st" = RUNNING ] || fail "\"first\" arrived while the job was $st, not live"
grep -q third "$TEST_TMP/follow.out" && fail "the whole output arrived at once"
echo "live: \"first\" arrived while the job was RUNNING"
wait "$fpid" || fail "job logs -f exited $?"
[ "$(cat "$TEST_TMP/follow.out")" = "$(printf 'first\nsecond\nthird')" ] ||
    { cat "$TEST_TMP/follow.out"; fail "followed output differs"; }
[ "$(state_of "$id")" = SUCCEEDED ] || fail "job $id is $(state_of "$id")"
[ "$(metric 'agentlab_jobs_submitted_total{source="api"}')" = 1 ] || fail "submitted_total did not move"
[ "$(metric 'agentlab_jobs_finished_total{state="SUCCEEDED",source="api"}')" = 1 ] ||
    fail "finished_total did not move"
[ "$(metric 'agentlab_job_phase_duration_seconds_count{phase="boot"}')" = 1 ] ||
    fail "no boot duration observed"
[ "$(metric 'agentlab_backend_jobs_started_total{backend="local",type="libvirt"}')" = 1 ] ||
    fail "backend jobs_started did not move"
"$cli" job ls | grep -q "^$id  SUCCEEDED  0 " || { "$cli" job ls; fail "job ls lacks $id"; }
"$cli" job ls --json --state succeeded | grep -q "\"id\":\"$id\"" || fail "job ls --json lacks $id"

# 2. cancel mid-run: CANCELED, and the VM, its overlay and run dir are gone
id2=$(echo '{"command": ["sh", "-c", "echo started; sleep 300"]}' | "$cli" job submit -)
wait_state "$id2" RUNNING 300
i=0
until "$cli" job logs "$id2" | grep -q started; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "job $id2 never started its workload"
    sleep 0.1
done
[ "$("$cli" vm ls --json | grep -c "\"job\":\"$id2\"")" = 1 ] || fail "vm ls does not show $id2's VM"
[ "$(metric 'agentlab_backend_vms{backend="local",type="libvirt"}')" = 1 ] || fail "active VMs not 1"
"$cli" job cancel "$id2" | grep -q "cancel requested" || fail "job cancel said otherwise"
wait_state "$id2" CANCELED 60
"$cli" job logs -f "$id2" >/dev/null || fail "job logs -f of a cancelled job failed"
i=0
until [ "$(metric 'agentlab_backend_vms{backend="local",type="libvirt"}')" = 0 ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || fail "the VM of $id2 was not destroyed"
    sleep 0.1
done
assert_no_leftovers "$id2"
[ -z "$("$cli" vm ls --json | grep "\"job\"")" ] || fail "vm ls still lists a VM"
[ "$(metric 'agentlab_jobs_finished_total{state="CANCELED",source="api"}')" = 1 ] ||
    fail "the cancel is not in the metrics"
rc=0
"$cli" job cancel "$id2" 2>/dev/null || rc=$?
[ $rc = 1 ] || fail "cancelling a finished job exited $rc, want 1"

# 3. agentlab run goes through the daemon, with the workload's exit code
rc=0
"$cli" run -q -- sh -c 'echo via-daemon; exit 7' >"$TEST_TMP/run.out" 2>"$TEST_TMP/run.err" || rc=$?
[ $rc = 7 ] || { cat "$TEST_TMP/run.err"; fail "run exited $rc, want 7"; }
grep -q via-daemon "$TEST_TMP/run.out" || fail "run output missing"
[ "$(metric 'agentlab_jobs_submitted_total{source="cli"}')" = 1 ] || fail "run did not use the daemon"
"$cli" gc | grep -q "gc (agentlabd): 0 VMs destroyed" || fail "gc through the daemon failed"

curl -sf --unix-socket "$sock" http://agentlabd/metrics | grep -E '^agentlab_(jobs_finished_total|job_phase_duration_seconds_(count|sum)|errors_total)' | grep -v ' 0$' || true
al_daemon_stop
[ $AL_DAEMON_RC = 0 ] || { tail -20 "$TEST_TMP/daemon.log"; fail "agentlabd exited $AL_DAEMON_RC on SIGTERM"; }
[ ! -e "$sock" ] || fail "the socket is still there after shutdown"
! grep -q "open handles" "$TEST_TMP/daemon.log" || fail "event loop did not close cleanly"
# the storage pool this daemon made stays; remove it with its empty dir
for p in $(virsh -c qemu:///system pool-list --name | grep '^agentlab-local-'); do
    path=$(virsh -c qemu:///system pool-dumpxml "$p" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p')
    case "$path" in "$state"/*) virsh -c qemu:///system pool-destroy "$p" >/dev/null ;; esac
done
echo "api_cli: ok"
