#!/bin/sh
# Job-state persistence benchmark: 10,000 jobs walked QUEUED -> ... ->
# SUCCEEDED through the SQLite store, as the daemon's loop thread does it.
# Prints jobs/s, per-commit latency and peak RSS (targets from issue 5:
# >= 2,000 jobs/s, <= 20 MB RSS). Builds a Release tree in build-bench/.
#
#   scripts/bench-store.sh        synchronous=NORMAL, store_sync() every second
#                                 on a second thread (what the daemon does)
#   scripts/bench-store.sh --all  also: no store_sync() at all, and FULL
set -eu
cd "$(dirname "$0")/.."

cmake -S . -B build-bench -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build build-bench -j"$(nproc 2>/dev/null || echo 2)" --target bench_store >/dev/null

dir=$(mktemp -d "${TMPDIR:-/var/tmp}/agentlab-bench.XXXXXX")
trap 'rm -rf "$dir"' EXIT INT TERM

run() {
    rm -f "$dir"/agentlab.db*
    build-bench/tests/bench_store --dir "$dir" "$@"
}

run --jobs 10000
if [ "${1:-}" = "--all" ]; then
    run --jobs 10000 --sync-ms 0
    run --jobs 500 --sync-full
fi
