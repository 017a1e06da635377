#!/bin/sh
# Pools as flavours on a real agentlabd with real VMs (the micro image): two
# pools, "small" (1 vCPU, 512 MiB, the default) and "big" (label big, 2
# vCPUs, 1536 MiB, one warm VM). Jobs with and without the label report the
# CPUs and MemTotal their VM has, which must be their pool's; the big job
# takes the warm VM and the small one boots cold; a job asking 4 vCPUs in
# big is refused naming max_cpus; a job naming no known pool gets 400
# no_pool; pool status, /v1/pools, /metrics and job show say it all.
# Usage: pools.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
al_test_env
al_private_state micro
# vcpus and memory overcommit the 2-CPU host: a warm big VM, a cold small
# one and the big pool's replacement warm VM are up at once
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
image = micro
pool = small
boot_timeout = 5m
[backend "local"]
max_vms = 3
vcpus = 8
memory = 6G
[pool "small"]
cpus = 1
memory = 512M
[pool "big"]
labels = big
cpus = 2
memory = 1536M
warm = 1
CONF
sock=$AGENTLAB_RUN_DIR/agentlabd.sock
t0=$(date +%s)
al_daemon_start "$daemon"

api() { # METHOD PATH [BODY]
    if [ $# -ge 3 ]; then
        curl -s --unix-socket "$sock" -X "$1" -H 'Content-Type: application/json' \
            --data-binary "$3" "http://agentlabd$2"
    else
        curl -sf --unix-socket "$sock" -X "$1" "http://agentlabd$2"
    fi
}
state_of() {
    "$cli" job show "$1" | sed -n 's/^state: *\([A-Z_]*\).*/\1/p'
}
wait_done() { # ID SECONDS
    i=0
    while :; do
        st=$(state_of "$1")
        case "$st" in SUCCEEDED) return 0 ;; FAILED | ERROR | CANCELED | TIMED_OUT)
            "$cli" job show "$1"; "$cli" job logs "$1" || true; fail "job $1 ended $st" ;;
        esac
        i=$((i + 1))
        [ $i -lt $(($2 * 10)) ] || fail "job $1 is $st after $2 s"
        sleep 0.1
    done
}

# the flavours, before any job
"$cli" pool status >"$TEST_TMP/status.txt"
cat "$TEST_TMP/status.txt"
grep -q '^small .*micro 1 vCPU 512 MiB *1 vCPU 512 MiB' "$TEST_TMP/status.txt" ||
    fail "pool status does not show small's flavour and limits"
grep -q '^big .*big *micro 2 vCPU 1536 MiB' "$TEST_TMP/status.txt" ||
    fail "pool status does not show big's labels and flavour"
api GET /v1/pools | python3 -c '
import json, sys
p = {x["name"]: x for x in json.load(sys.stdin)["pools"]}
assert (p["big"]["image"], p["big"]["cpus"], p["big"]["memory_mb"]) == ("micro", 2, 1536), p["big"]
assert (p["small"]["cpus"], p["small"]["memory_mb"], p["small"]["max_cpus"]) == (1, 512, 1), p
assert p["small"]["default"] and p["big"]["labels"] == ["big"] and p["big"]["warm"] == 1, p
' || fail "/v1/pools lacks the flavours"
curl -sf --unix-socket "$sock" http://agentlabd/metrics >"$TEST_TMP/metrics"
grep -q '^agentlab_pool_info{pool="big",image="micro",cpus="2",memory_mb="1536"} 1$' \
    "$TEST_TMP/metrics" || fail "no agentlab_pool_info for big"

# refusals, before anything is stored
echo '{"labels": ["big"], "command": ["true"], "resources": {"cpus": 4}}' >"$TEST_TMP/four.json"
if "$cli" job submit "$TEST_TMP/four.json" >"$TEST_TMP/four.out" 2>&1; then
    fail "a job asking 4 vCPUs in big was accepted"
fi
cat "$TEST_TMP/four.out"
grep -q 'resources.cpus: 4 exceeds pool "big"'"'"'s max_cpus 2' "$TEST_TMP/four.out" ||
    fail "the refusal does not name the limit"
api POST /v1/jobs '{"command": ["true"], "pool": "nope"}' >"$TEST_TMP/nope.json"
grep -q '"no_pool"' "$TEST_TMP/nope.json" && grep -q 'no pool named' "$TEST_TMP/nope.json" ||
    { cat "$TEST_TMP/nope.json"; fail "an unknown pool is not a no_pool refusal"; }

# the big pool's warm VM is up before its job comes
i=0
until api GET /v1/pools | python3 -c '
import json, sys
p = {x["name"]: x for x in json.load(sys.stdin)["pools"]}
sys.exit(0 if p["big"]["warm_ready"] == 1 and p["small"]["warm_ready"] == 0 else 1)'; do
    i=$((i + 1))
    [ $i -lt 3000 ] || { tail -30 "$TEST_TMP/daemon.log"; fail "big's warm VM not ready in 300 s"; }
    sleep 0.1
done
echo "warm VM of big ready after $(($(date +%s) - t0)) s"

# what the VM has: CPUs from /proc/cpuinfo, MemTotal from /proc/meminfo (the
# micro image has a shell and no nproc or grep)
probe='n=0; while read -r k _; do [ "$k" = processor ] && n=$((n + 1)); done </proc/cpuinfo; echo "cpus=$n"; while read -r k v _; do [ "$k" = MemTotal: ] && echo "memtotal_kb=$v"; done </proc/meminfo; true'
python3 -c 'import json, sys; print(json.dumps({"name": "big", "labels": ["big"], "script": sys.stdin.read()}))' \
    <<EOF >"$TEST_TMP/big.json"
$probe
EOF
python3 -c 'import json, sys; print(json.dumps({"name": "small", "script": sys.stdin.read()}))' \
    <<EOF >"$TEST_TMP/small.json"
$probe
EOF
big=$("$cli" job submit "$TEST_TMP/big.json")
small=$("$cli" job submit "$TEST_TMP/small.json")
echo "big job $big, small job $small"
wait_done "$big" 300
wait_done "$small" 300

check_vm() { # ID CPUS MIB
    out=$("$cli" job logs "$1")
    echo "$1: $out" | tr '\n' ' '
    echo
    cpus=$(echo "$out" | sed -n 's/^cpus=//p')
    kb=$(echo "$out" | sed -n 's/^memtotal_kb=//p')
    [ "$cpus" = "$2" ] || fail "job $1 saw $cpus CPUs, want $2"
    # MemTotal is the configured memory less what the kernel keeps for itself
    [ -n "$kb" ] && [ "$kb" -le $(($3 * 1024)) ] && [ "$kb" -ge $(($3 * 1024 * 75 / 100)) ] ||
        fail "job $1 saw MemTotal $kb kB, want a little under $3 MiB"
}
check_vm "$big" 2 1536
check_vm "$small" 1 512

# the big job took the warm VM, the small job booted cold
api GET "/v1/jobs/$big/events" >"$TEST_TMP/big.events"
api GET "/v1/jobs/$small/events" >"$TEST_TMP/small.events"
grep -q 'warm VM' "$TEST_TMP/big.events" || { cat "$TEST_TMP/big.events"; fail "the big job did not start warm"; }
if grep -q 'warm VM' "$TEST_TMP/small.events"; then
    cat "$TEST_TMP/small.events"
    fail "the small job took a warm VM"
fi

# where each job went, and why
"$cli" job show "$big" | tee "$TEST_TMP/big.show"
grep -q '^pool: *big (labels big matched pool big)$' "$TEST_TMP/big.show" ||
    fail "job show does not say why the big job went to big"
"$cli" job show "$small" | grep -q '^pool: *small (default pool)$' ||
    fail "job show does not say why the small job went to small"
api GET "/v1/jobs/$big" | grep -q '"pool_reason":"labels big matched pool big"' ||
    fail "the job's JSON lacks pool_reason"

echo "pools: ok in $(($(date +%s) - t0)) s"
