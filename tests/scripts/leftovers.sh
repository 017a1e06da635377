#!/bin/sh
# Run after the whole suite: nothing agentlab made for a test may be left in
# libvirtd. Domains named agentlab-* must all be gone. The storage pools of
# tests are transient and outlive their daemons: the build tree's shared
# test state pool is removed here (the suite is over); a pool of a test's
# private dir under /tmp is a test that did not clean up, which fails.
# Pools elsewhere (an installation's own state dir), and whatever was there
# before the suite started, are not the suite's.
# Usage: leftovers.sh --before FILE      (before the suite: what is there)
#        leftovers.sh BUILD_DIR FILE     (after it)
set -eu
virsh="virsh -c qemu:///system"
if [ "$1" = --before ]; then
    { $virsh list --all --name; $virsh pool-list --all --name; } | grep '^agentlab-' >"$2" || true
    exit 0
fi
build=$(cd "$1" && pwd)
before=$2
was_there() { grep -qx -- "$1" "$before" 2>/dev/null; }
bad=0

doms=""
for d in $($virsh list --all --name | grep '^agentlab-' || true); do
    was_there "$d" || doms="$doms $d"
done
if [ -n "$doms" ]; then
    echo "leftovers: domains: $doms" >&2
    for d in $doms; do $virsh destroy "$d" >/dev/null 2>&1 || true; done
    bad=1
fi
for p in $($virsh pool-list --all --name | grep '^agentlab-' || true); do
    was_there "$p" && continue
    path=$($virsh pool-dumpxml "$p" 2>/dev/null | sed -n 's|.*<path>\(.*\)</path>.*|\1|p' | head -n 1)
    case "$path" in
    "$build"/*) ;;
    /tmp/*)
        echo "leftovers: storage pool $p of a test ($path)" >&2
        bad=1
        ;;
    *) continue ;;
    esac
    $virsh pool-destroy "$p" >/dev/null 2>&1 || true
    $virsh pool-undefine "$p" >/dev/null 2>&1 || true
done
[ $bad -eq 0 ] || exit 1
echo "leftovers: none (virsh list --all, virsh pool-list --all)"
