#!/bin/sh
# The README's first command: runs a sample job in a throwaway VM.
#
# Installs what is missing, builds agentlab, builds the default image when it
# is absent (a few minutes the first time, then "up to date" in under a
# second), and runs a job that prints from inside the VM and returns an
# artifact. The VM, its disk and its cloud-init data are destroyed at the end.
set -eu
cd "$(dirname "$0")/.."
jobs=$(nproc 2>/dev/null || echo 2)

scripts/setup.sh
cmake -S . -B build >/dev/null
cmake --build build -j"$jobs" >/dev/null
AGENTLAB=$PWD/build/agentlab

"$AGENTLAB" image build debian-12

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "--- running a sample job in a throwaway VM"
"$AGENTLAB" run --artifact report.txt --artifacts-dir "$out" -- sh -c '
    echo "hello from $(hostname), a throwaway VM"
    echo "kernel: $(uname -r)"
    echo "cloud-init: $(cloud-init status 2>/dev/null || echo unknown)"
    echo "running as: $(id -un), in $(pwd)"
    { echo "report written by job on $(hostname)"; uname -a; } > report.txt'
echo "--- the artifact the job returned:"
cat "$out/report.txt"
