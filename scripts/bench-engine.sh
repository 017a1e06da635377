#!/bin/sh
# Engine throughput benchmark: N jobs (default 10,000) through validation,
# submission, admission and every persisted transition with a no-op backend
# (tests/support/fake_backend.c), as the daemon's loop thread runs them.
# Prints jobs/s (wall and per CPU second) and the peak RSS of a process with
# the N jobs in its history (targets from issue 5: >= 2,000 jobs/s, <= 20 MB).
# Builds a Release tree in build-bench/ (or $AL_BENCH_BUILD).
# Usage: scripts/bench-engine.sh [N [HOSTS]] (HOSTS: fake libvirt hosts of one
# pool sharing 64 VM slots, which the spread rule picks among; default 1)
set -eu
cd "$(dirname "$0")/.."
build=${AL_BENCH_BUILD:-build-bench}

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)" --target bench_engine >/dev/null

"$build"/tests/bench_engine "${1:-10000}" ${2:+"$2"}
