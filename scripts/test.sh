#!/bin/sh
# Runs every agentlab test: installs what is missing (scripts/setup.sh),
# builds in build/, runs the whole suite with ctest, checks that it left
# nothing in libvirtd (tests/scripts/leftovers.sh), then builds Release with
# -Werror in build-rel/ and runs every benchmark that needs no VM once with a
# tiny size (so none can rot unnoticed), then builds with AddressSanitizer +
# UBSan in build-asan/ and runs the unit suite there, then runs every
# libFuzzer target for AL_FUZZ_SECONDS (default 30) in build-fuzz/.
#
#   scripts/test.sh            everything
#   scripts/test.sh -L unit    only tests with this ctest label (no sanitizer pass)
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

scripts/setup.sh
# what this host offers VMs (the accelerator probe decides; see README)
if [ -e /dev/kvm ]; then kvm_dev="/dev/kvm present"; else kvm_dev="no /dev/kvm"; fi
kvm_mods=$({ lsmod 2>/dev/null || cat /proc/modules 2>/dev/null; } | awk '/^kvm/ {print $1}' | tr '\n' ' ')
echo "test.sh: $kvm_dev; kvm modules: ${kvm_mods:-none visible}; kernel $(uname -r)"

cmake -S . -B build -DAL_WERROR=ON >/dev/null
cmake --build build -j"$jobs"

if [ $# -gt 0 ]; then
    cd build && exec ctest --output-on-failure "$@"
fi

# no domain or storage pool of a test is left in libvirtd
tests/scripts/leftovers.sh --before build/libvirt-before.txt
(cd build && ctest --output-on-failure -j"$jobs")
tests/scripts/leftovers.sh build build/libvirt-before.txt

# Release with -Werror (what the benchmarks build), then each benchmark once,
# tiny, on that one tree; the numbers mean nothing at this size
cmake -S . -B build-rel -DCMAKE_BUILD_TYPE=Release -DAL_WERROR=ON >/dev/null
cmake --build build-rel -j"$jobs"
AL_BENCH_BUILD=build-rel scripts/bench-engine.sh 200
AL_BENCH_BUILD=build-rel scripts/bench-store.sh --all 200
AL_BENCH_BUILD=build-rel scripts/bench-api.sh 1 200
scripts/bench-proxmox.sh build-rel 2 0

cmake -S . -B build-asan -DAL_WERROR=ON -DAL_SANITIZE=address,undefined >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ctest --output-on-failure -j"$jobs" -L 'unit|daemon')

# libFuzzer targets (clang, ASan+UBSan), each for a bounded time
CC=clang cmake -S . -B build-fuzz -DAL_WERROR=ON -DAL_FUZZ=ON -DAL_SANITIZE=address,undefined \
    -DAL_FUZZ_SECONDS="${AL_FUZZ_SECONDS:-30}" >/dev/null
cmake --build build-fuzz -j"$jobs" --target $(cd build-fuzz && ctest -N -L fuzz |
    sed -n 's/^ *Test *#[0-9]*: //p')
# one libFuzzer process per CPU: each runs its time whatever the others do
(cd build-fuzz && ctest --output-on-failure -j"$jobs" -L fuzz)
echo "test.sh: all tests passed"
