#!/bin/sh
# Hostile guests against the host side (issue: "hostile guests, hostile
# inputs"): garbage and oversized frames, a guest that never speaks, one that
# never sends an exit status, one that floods the log (while a normal job runs
# next to it), one that sends a malicious artifact tarball, one that sends
# host-only frames, a fork bomb and a 10 GB sparse artifact in a real job.
# Each must end with the right state and reason, write nothing outside the
# job's directories, and leave nothing behind. Micro image, real libvirt.
# Usage: hostile.sh AGENTLAB
set -eu
AGENTLAB=$1
. "$(dirname "$0")/lib.sh"
al_test_env
micro=$AGENTLAB_STATE_DIR/images/micro
[ -r "$micro/manifest.json" ] || fail "the micro image is missing"
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
image = micro
# the micro image boots in 7-25 s even on a loaded host
boot_timeout = 90s
max_attempts = 1
max_log_size = 1M
max_artifact_size = 10M
heartbeat_timeout = 20s
[backend "local"]
max_vms = 2
CONF
rm -f /tmp/agentlab-pwned-*
imported=""
hostile_image() {
    "$AGENTLAB" image import "hostile-$1" --force --kernel "$micro/vmlinuz" \
        --initrd "$micro/initrd.img" --cmdline "console=ttyS0 quiet panic=-1 agentlab.hostile=$1" \
        >/dev/null
    imported="$imported hostile-$1"
}
cleanup_images() {
    for i in $imported; do "$AGENTLAB" image rm "$i" >/dev/null 2>&1 || true; done
    al_test_cleanup
}
trap cleanup_images EXIT

# expect MODE RC REASON_REGEX [agentlab run options...]
expect() {
    mode=$1 want_rc=$2 want=$3
    shift 3
    hostile_image "$mode"
    rc=0
    "$AGENTLAB" run --image "hostile-$mode" "$@" -- true >"$TEST_TMP/out" 2>"$TEST_TMP/err" || rc=$?
    cat "$TEST_TMP/err"
    [ "$rc" -eq "$want_rc" ] || fail "$mode: exit $rc, want $want_rc"
    grep -Eq -- "$want" "$TEST_TMP/err" || fail "$mode: no \"$want\" in the reason"
    assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
    echo "--- hostile $mode: ok"
}

expect garbage 125 'malformed frame'
expect oversized 125 'oversized frame'
grep -q 'limits hit: .*frame_size' "$TEST_TMP/err" || fail "oversized: frame_size not reported"
expect lies 125 'host-only frame'
# a guest that never speaks waits out the whole boot timeout: a shorter one
# for it alone (the others need the margin of a loaded host)
sed 's/^boot_timeout = .*/boot_timeout = 30s/' "$AGENTLAB_CONFIG" >"$TEST_TMP/silent.conf"
(AGENTLAB_CONFIG=$TEST_TMP/silent.conf && export AGENTLAB_CONFIG &&
    expect silent 125 'boot timeout') || exit 1
expect noexit 124 'did not stop it' --timeout 5

# the artifact attack: only the harmless files arrive, nothing outside
hostile_image artifacts
rc=0
"$AGENTLAB" run --image hostile-artifacts --artifact x --artifacts-dir "$TEST_TMP/art" -- true \
    2>"$TEST_TMP/err" || rc=$?
cat "$TEST_TMP/err"
[ "$rc" -eq 0 ] || fail "artifacts: exit $rc"
ls -la "$TEST_TMP/art"
[ "$(cat "$TEST_TMP/art/good.txt")" = "a harmless artifact" ] || fail "the good artifact is missing"
[ ! -e "$TEST_TMP/art/null" ] && [ ! -L "$TEST_TMP/art/root" ] || fail "a device or link was extracted"
[ -f "$TEST_TMP/art/suid" ] && [ ! -u "$TEST_TMP/art/suid" ] || fail "setuid survived"
ls /tmp/agentlab-pwned-* 2>/dev/null && fail "the artifact tarball wrote outside its directory"
grep -q 'skipped' "$TEST_TMP/err" || fail "skipped entries not reported"
assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
echo "--- hostile artifacts: ok"

# the flood: output capped at max_log_size with a marker, while a normal job
# on the same host completes
hostile_image flood
"$AGENTLAB" run --image hostile-flood --timeout 10 -- true >"$TEST_TMP/flood.out" 2>"$TEST_TMP/flood.err" &
flood=$!
sleep 5
t0=$(date +%s)
"$AGENTLAB" run -- sh -c 'echo still responsive' >"$TEST_TMP/normal.out" 2>"$TEST_TMP/normal.err" ||
    { cat "$TEST_TMP/normal.err"; fail "a normal job failed during the flood"; }
echo "normal job during the flood took $(( $(date +%s) - t0 ))s"
grep -q 'still responsive' "$TEST_TMP/normal.out" || fail "the normal job's output is missing"
rc=0
wait $flood || rc=$?
cat "$TEST_TMP/flood.err"
[ "$rc" -eq 124 ] || fail "flood: exit $rc, want 124"
size=$(wc -c <"$TEST_TMP/flood.out")
[ "$size" -le $((1024 * 1024)) ] || fail "flood: $size bytes of output passed the 1M limit"
grep -q 'output truncated at 1048576 bytes' "$TEST_TMP/flood.err" "$TEST_TMP/flood.out" ||
    fail "flood: no truncation marker"
grep -q 'limits hit: .*log_size' "$TEST_TMP/flood.err" || fail "flood: log_size not reported"
assert_no_leftovers "$(job_id_from "$TEST_TMP/flood.err")"
echo "--- hostile flood: ok ($size bytes kept)"

# a real job that fork-bombs its VM and stays around: the job ends (timeout
# or lost heartbeat) and the VM goes with it
rc=0
"$AGENTLAB" run --timeout 15 -- sh -c 'b() { b | b & }; b; sleep 600' >/dev/null \
    2>"$TEST_TMP/err" || rc=$?
cat "$TEST_TMP/err"
[ "$rc" -eq 124 ] || [ "$rc" -eq 125 ] || fail "fork bomb: exit $rc, want 124 or 125"
assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
echo "--- fork bomb: ok (exit $rc)"

# a 10 GB sparse artifact against max_artifact_size = 10M
rc=0
"$AGENTLAB" run --artifact big --artifacts-dir "$TEST_TMP/big" -- \
    dd if=/dev/zero of=big bs=1 count=0 seek=10G 2>"$TEST_TMP/err" || rc=$?
cat "$TEST_TMP/err"
[ "$rc" -eq 0 ] || fail "sparse artifact: exit $rc"
used=$(du -sk "$TEST_TMP/big" 2>/dev/null | cut -f1)
[ "${used:-0}" -le 20480 ] || fail "sparse artifact: $used KiB written on the host"
# the summary must name the limit, the file it stopped at and the limit hit
grep -q '] artifacts: .*artifact limit of 10485760 bytes reached at "big"' "$TEST_TMP/err" ||
    fail "sparse artifact: the artifact limit is not reported"
grep -q '] limits hit: .*artifact_size' "$TEST_TMP/err" || fail "sparse artifact: artifact_size not reported"
[ ! -e "$TEST_TMP/big/big" ] || fail "sparse artifact: the file over the limit was extracted"
assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
echo "--- sparse artifact: ok (${used:-0} KiB on the host)"
echo "hostile: ok"
