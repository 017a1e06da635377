#!/bin/sh
# Job-state persistence benchmark: N jobs (default 10,000) walked QUEUED ->
# ... -> SUCCEEDED through the SQLite store, as the daemon's loop thread does
# it. Prints jobs/s, per-commit latency and peak RSS (targets from issue 5:
# >= 2,000 jobs/s, <= 20 MB RSS). Builds a Release tree in build-bench/ (or
# $AL_BENCH_BUILD).
#
#   scripts/bench-store.sh [N]        synchronous=NORMAL, store_sync() every
#                                     second on a second thread (what the
#                                     daemon does)
#   scripts/bench-store.sh --all [N]  also: no store_sync() at all, and FULL
#                                     (N / 20 jobs)
set -eu
cd "$(dirname "$0")/.."
build=${AL_BENCH_BUILD:-build-bench}
all=
if [ "${1:-}" = "--all" ]; then
    all=1
    shift
fi
jobs=${1:-10000}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target bench_store >/dev/null

dir=$(mktemp -d "${TMPDIR:-/var/tmp}/agentlab-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM

run() {
    rm -f "$dir"/agentlab.db*
    "$build"/tests/bench_store --dir "$dir" "$@"
}

run --jobs "$jobs"
if [ -n "$all" ]; then
    run --jobs "$jobs" --sync-ms 0
    run --jobs $((jobs / 20 > 0 ? jobs / 20 : 1)) --sync-full
fi
