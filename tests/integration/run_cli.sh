#!/bin/sh
# `agentlab run` end to end on a real libvirtd + QEMU (TCG here): live output,
# exit codes, artifacts, the work dir, both injection modes, and the cleanup
# guarantee. Usage: run_cli.sh AGENTLAB MODE
#   seed | guestfs | limits | badinput: the debian-12 image
#   badguest: a guest that never boots (from the micro image)
set -eu
AGENTLAB=$1
MODE=$2
. "$(dirname "$0")/lib.sh"
al_test_env

stamp() { date +%s.%N; }

case "$MODE" in
seed | guestfs)
    mkdir -p "$TEST_TMP/wd/sub"
    printf 'input from the host\n' > "$TEST_TMP/wd/sub/input.txt"
    # The job prints, waits, prints on stderr, writes a random artifact and
    # prints its checksum, then exits 3.
    script='cat sub/input.txt; echo hello; sleep 3; echo oops >&2;
head -c 200000 /dev/urandom > art.bin; sha256sum art.bin; exit 3'
    {
        rc=0
        "$AGENTLAB" run --inject "$MODE" --timeout 300 --workdir "$TEST_TMP/wd" \
            --artifact art.bin --artifacts-dir "$TEST_TMP/art" \
            -- sh -c "$script" 2>"$TEST_TMP/err" || rc=$?
        echo "$rc" >"$TEST_TMP/rc"
    } | while IFS= read -r line; do
        printf '%s %s\n' "$(stamp)" "$line"
    done >"$TEST_TMP/out"
    end=$(stamp)
    rc=$(cat "$TEST_TMP/rc")
    cat "$TEST_TMP/out"
    cat "$TEST_TMP/err"
    grep -q ' input from the host$' "$TEST_TMP/out" || fail "the work dir did not reach the VM"
    grep -q ' hello$' "$TEST_TMP/out" || fail "stdout line missing"
    grep -q '^oops$' "$TEST_TMP/err" || fail "stderr line missing"
    [ "$rc" -eq 3 ] || fail "exit status $rc, want 3"
    grep -q 'FAILED (exit 3)' "$TEST_TMP/err" || fail "exit 3 not reported"
    # live: "hello" reached us while the job was still sleeping
    hello_at=$(sed -n 's/^\([0-9.]*\) hello$/\1/p' "$TEST_TMP/out")
    awk -v h="$hello_at" -v e="$end" 'BEGIN { exit !(e - h >= 2.5) }' ||
        fail "stdout was not streamed live (hello at $hello_at, end $end)"
    want=$(sed -n 's/^[0-9.]* \([0-9a-f]\{64\}\)  art.bin$/\1/p' "$TEST_TMP/out")
    got=$(sha256sum "$TEST_TMP/art/art.bin" | cut -d' ' -f1)
    [ -n "$want" ] && [ "$want" = "$got" ] || fail "artifact differs: guest $want, host $got"
    job=$(job_id_from "$TEST_TMP/err")
    [ -n "$job" ] || fail "no job id printed"
    assert_no_leftovers "$job"
    ;;

limits)
    # A job that sleeps past --timeout exits 124 and leaves nothing behind.
    rc=0
    "$AGENTLAB" run --timeout 5 -- sleep 600 2>"$TEST_TMP/err" || rc=$?
    cat "$TEST_TMP/err"
    [ "$rc" -eq 124 ] || fail "timeout: exit $rc, want 124"
    assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"

    # Ctrl-C: SIGINT to the CLI cancels the job, still cleans up, exits 130.
    "$AGENTLAB" run -- sleep 600 2>"$TEST_TMP/err" &
    pid=$!
    i=0
    until grep -q '] running$' "$TEST_TMP/err"; do
        i=$((i + 1))
        [ $i -lt 600 ] || { kill -9 $pid; cat "$TEST_TMP/err"; fail "job never started running"; }
        sleep 0.5
    done
    kill -INT $pid
    rc=0
    wait $pid || rc=$?
    cat "$TEST_TMP/err"
    [ "$rc" -eq 130 ] || fail "SIGINT: exit $rc, want 130"
    assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
    ;;

badguest)
    # A guest that never boots: its kernel cannot find init, panics and
    # stops. The job ends ERROR (125) with the console's last lines in the
    # reason, after one retry on a fresh VM, and nothing is left.
    micro=$AGENTLAB_STATE_DIR/images/micro
    [ -r "$micro/manifest.json" ] || fail "the micro image is missing"
    "$AGENTLAB" image import broken --force --kernel "$micro/vmlinuz" --initrd "$micro/initrd.img" \
        --cmdline "console=ttyS0 panic=-1 rdinit=/no-such-init" >/dev/null
    rc=0
    "$AGENTLAB" run --image broken -- true 2>"$TEST_TMP/err" || rc=$?
    cat "$TEST_TMP/err"
    "$AGENTLAB" image rm broken >/dev/null
    [ "$rc" -eq 125 ] || fail "a guest that never boots: exit $rc, want 125"
    grep -q 'error: the VM .* before reporting a result' "$TEST_TMP/err" || fail "no clear reason"
    grep -q 'console: Kernel panic' "$TEST_TMP/err" || fail "the console's panic line is missing"
    grep -q 'retrying on a fresh VM' "$TEST_TMP/err" || fail "the infrastructure error was not retried"
    assert_no_leftovers "$(job_id_from "$TEST_TMP/err")"
    ;;

badinput)
    # Bad input ends with a clear message and exit 125 (or 2 for usage),
    # without booting anything.
    expect() {
        want_rc=$1
        want_msg=$2
        shift 2
        rc=0
        "$AGENTLAB" run "$@" 2>"$TEST_TMP/err" || rc=$?
        [ "$rc" -eq "$want_rc" ] || { cat "$TEST_TMP/err"; fail "$*: exit $rc, want $want_rc"; }
        grep -q -- "$want_msg" "$TEST_TMP/err" || { cat "$TEST_TMP/err"; fail "$*: no \"$want_msg\""; }
    }
    expect 125 'no-such-image' --image no-such-image -- true
    expect 2 '--timeout expects a positive duration' --timeout 0 -- true
    expect 2 '--timeout expects a positive duration' --timeout -5 -- true
    expect 125 'resources: 64 vCPUs and 128 MiB fit no backend' --cpus 64 --memory 128 -- true
    expect 2 '--cpus expects an integer from 1 to 64' --cpus 65 -- true
    expect 125 'work directory /nonexistent' --workdir /nonexistent -- true
    expect 2 'no command given' --timeout 10
    expect 2 'shorter than 4 characters' --secret-env K=abc -- true
    [ -z "$(ls -A "$AGENTLAB_RUN_DIR/vms" 2>/dev/null)" ] || fail "bad input left a VM dir"
    ;;
*)
    fail "unknown mode $MODE"
    ;;
esac
echo "run_cli $MODE: ok"
