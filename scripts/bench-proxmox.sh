#!/bin/sh
# Proxmox backend benchmark against the simulator: N concurrent jobs (default
# 20) with LATENCY ms added to every API call (default 20), against one job's
# critical path under the same conditions. agentlabd runs them from its
# spool; a round lasts from the first job's acceptance (job record) until
# the simulator holds no VM of it any more (teardown included).
#
# Usage: scripts/bench-proxmox.sh [BUILD_DIR] [N] [LATENCY_MS]
# Simulated task times are Proxmox-like for linked clones on fast storage:
# clone 1 s, start 0.5 s, stop 0.3 s, destroy 0.4 s; the guest agent answers
# 1 s after start. The job: sleep 2, then print a line.
set -eu
build=${1:-build}
n=${2:-20}
latency=${3:-20}
AL_SOURCE_DIR=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "$build" && pwd)
. "$AL_SOURCE_DIR/tests/integration/pve_lib.sh"
pve_test_env
pve_sim_start "{\"latency_ms\": $latency}"
pve_conf "max_vms = $n
vcpus = $((n * 2))" 'log_level = warn'
cat >>"$AGENTLAB_CONFIG" <<CONF
[source "drop"]
type = spool
poll_interval = 1s
CONF
spool=$AGENTLAB_STATE_DIR/spool
db=$AGENTLAB_STATE_DIR/agentlab.db
mkdir -p "$spool"
q() { sqlite3 -cmd '.timeout 5000' "$db" "$1" 2>/dev/null || true; }

"$build/agentlabd" 2>"$TEST_TMP/daemon.log" &
dpid=$!
trap 'kill -TERM $dpid 2>/dev/null || true; wait $dpid 2>/dev/null || true; pve_test_cleanup' EXIT

# submit COUNT jobs at once; wait until all are terminal
round=0
submit() {
    round=$((round + 1))
    i=0
    while [ $i -lt "$1" ]; do
        printf '{"name":"bench-%d-%d","command":["sh","-c","sleep 2; echo done"],"timeout_s":300}\n' \
            $round $i >"$spool/.r$round-$i.tmp"
        i=$((i + 1))
    done
    for f in "$spool"/.r$round-*.tmp; do
        b=$(basename "$f" .tmp)
        mv "$f" "$spool/${b#.}.json"
    done
    k=0
    while :; do
        done_n=$(q "select count(*) from jobs where name like 'bench-$round-%' and state in ('SUCCEEDED','FAILED','TIMED_OUT','CANCELED','ERROR')")
        if [ "$done_n" = "$1" ] && pve_state | "$PY" -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if not [v for v in s["vms"] if not v["initial"]] and not s["tasks_running"] else 1)'; then
            break
        fi
        k=$((k + 1))
        [ $k -lt 3000 ] || { tail -20 "$TEST_TMP/daemon.log"; fail "round $round did not finish"; }
        sleep 0.05
    done
    end_ms=$(date +%s%3N)
    bad=$(q "select count(*) from jobs where name like 'bench-$round-%' and state != 'SUCCEEDED'")
    [ "$bad" = 0 ] || { q "select name, state, reason from jobs where state != 'SUCCEEDED'"; fail "jobs failed"; }
}
wall() { # wall: first accepted -> all VMs of the round gone, in ms
    echo $((end_ms - $(q "select min(created_ms) from jobs where name like 'bench-$round-%'")))
}
calls() { pve_state | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["calls"])'; }

# warm-up (template cache, TLS), then one job alone, then N at once
submit 1
pve_ctl config '{"reset_counters": true}'
submit 1
single=$(wall)
calls1=$(calls)
pve_ctl config '{"reset_counters": true}'
submit "$n"
many=$(wall)
pve_state >"$TEST_TMP/state.json"
"$PY" - "$TEST_TMP/state.json" "$n" "$single" "$many" "$calls1" "$latency" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
n, single, many, calls1, lat = (int(x) for x in sys.argv[2:])
print("Proxmox backend, %d concurrent jobs, %d ms added per API call (simulator)" % (n, lat))
print("  one job alone (critical path): %.2f s, %d API calls" % (single / 1000, calls1))
print("  %d jobs at once, wall time:    %.2f s  (%.2fx the critical path; target <= 1.5x)"
      % (n, many / 1000, many / single))
print("  API calls per job:             %.1f  (%d total; most requests in flight at once: %d)"
      % (s["calls"] / n, s["calls"], s["max_concurrent"]))
for k, v in sorted(s["calls_by"].items(), key=lambda kv: -kv[1]):
    print("    %6.1f  %s" % (v / n, k))
print("  schema violations: %d" % len(s["violations"]))
for v in s["violations"][:10]:
    print("    %s" % (v,))
sys.exit(1 if s["violations"] else 0)
PY
