#!/bin/sh
# Control-API benchmark: GET /v1/jobs?limit=50 against a real agentlabd whose
# database holds JOBS jobs (default 10,000), on the unix socket and on the TCP
# listener (127.0.0.1, bearer token), with 1 and 4 keep-alive connections,
# SECONDS (default 10) each. Builds a Release tree in build-bench/ (or
# $AL_BENCH_BUILD). Prints requests/s, latency percentiles and the daemon's
# CPU time per request.
#   scripts/bench-api.sh [SECONDS] [JOBS]
set -eu
cd "$(dirname "$0")/.."
secs=${1:-10}
njobs=${2:-10000}
build=${AL_BENCH_BUILD:-build-bench}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target bench_api agentlabd >/dev/null

dir=$(mktemp -d "${TMPDIR:-/var/tmp}/agentlab-bench-api.XXXXXX")
chmod 0711 "$dir"
dpid=
trap '[ -z "$dpid" ] || kill -TERM $dpid 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT INT TERM
export AGENTLAB_STATE_DIR=$dir/state AGENTLAB_RUN_DIR=$dir/run AGENTLAB_CONFIG=$dir/agentlab.conf
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$dir/token"
chmod 0600 "$dir/token"
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = warn
api_listen = 127.0.0.1:0
api_token_file = $dir/token
api_max_connections = 64
CONF
"$build"/tests/bench_api populate "$AGENTLAB_STATE_DIR" "$njobs"
"$build"/agentlabd -l info 2>"$dir/daemon.log" &
dpid=$!
i=0
until grep -q " ready " "$dir/daemon.log"; do
    i=$((i + 1))
    [ $i -lt 300 ] || { cat "$dir/daemon.log"; exit 1; }
    sleep 0.1
done
port=$(sed -n 's/.*TCP port \([0-9]*\) .*/\1/p' "$dir/daemon.log" | tail -n 1)
echo "agentlabd: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
for conns in 1 4; do
    "$build"/tests/bench_api run --socket "$AGENTLAB_RUN_DIR/agentlabd.sock" --conns $conns --seconds "$secs" --pid $dpid
    "$build"/tests/bench_api run --port "$port" --token-file "$dir/token" --conns $conns --seconds "$secs" --pid $dpid
done
"$build"/tests/bench_api run --socket "$AGENTLAB_RUN_DIR/agentlabd.sock" --conns 4 --seconds "$secs" --path /healthz --pid $dpid
ps -o rss=,cmd= -p $dpid | awk '{printf "agentlabd RSS after the runs: %.1f MB\n", $1 / 1024}'
