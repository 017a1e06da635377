# Shared helpers for the shell integration tests. Sourced, not run.
# Needs: AGENTLAB (the CLI), AL_BUILD_DIR.

# al_skip: a test that cannot run fails (unless AGENTLAB_ALLOW_SKIP=1, never in CI)
. "$(dirname "$0")/../support/skip.sh"

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# A private state/run dir per test run; the image store is shared across
# tests through AGENTLAB_TEST_STATE (built once by the image fixture).
al_test_env() {
    export AGENTLAB_STATE_DIR="${AGENTLAB_TEST_STATE:-$AL_BUILD_DIR/test-state}"
    # short: unix socket paths must stay under 108 bytes
    AGENTLAB_RUN_DIR=$(mktemp -d /tmp/al-it.XXXXXX)
    chmod 0711 "$AGENTLAB_RUN_DIR"
    export AGENTLAB_RUN_DIR
    export AGENTLAB_CONFIG="$AGENTLAB_RUN_DIR/agentlab.conf"
    # VM tests are not timing tests: a loaded machine may boot slowly
    printf '[agent]\nboot_timeout = 20m\n' >"$AGENTLAB_CONFIG"
    TEST_TMP=$(mktemp -d /tmp/al-it-tmp.XXXXXX)
    trap al_test_cleanup EXIT
}

# A private state dir for the test ($TEST_TMP/state, exported as
# AGENTLAB_STATE_DIR and left in $state) holding a copy of the suite's image
# $1 (built by its fixture); readable on the way by libvirt's QEMU user.
al_private_state() {
    state=$TEST_TMP/state
    mkdir -p "$state/images"
    chmod 0711 "$TEST_TMP" "$state"
    cp -a "${AGENTLAB_TEST_STATE}/images/$1" "$state/images/"
    export AGENTLAB_STATE_DIR=$state
}

al_test_cleanup() {
    al_destroy_test_pools
    rm -rf "$TEST_TMP" "$AGENTLAB_RUN_DIR"
}

# The transient storage pool the libvirt backend made for a test's private
# state dir outlives the test in libvirtd: destroy the pools below TEST_TMP.
al_destroy_test_pools() {
    [ -n "${TEST_TMP:-}" ] || return 0
    for pool in $(virsh -c qemu:///system pool-list --name 2>/dev/null | grep '^agentlab-'); do
        case "$(virsh -c qemu:///system pool-dumpxml "$pool" 2>/dev/null |
            sed -n 's|.*<path>\(.*\)</path>.*|\1|p' | head -n 1)" in
        "$TEST_TMP"/*) virsh -c qemu:///system pool-destroy "$pool" >/dev/null 2>&1 || true ;;
        esac
    done
    return 0
}

# Asserts nothing of job $1 is left: no domain, no overlay volume, no run dir.
assert_no_leftovers() {
    job=$1
    [ -n "$job" ] || fail "no job id to check for leftovers"
    if virsh -c qemu:///system list --all --name | grep -q -- "$job"; then
        virsh -c qemu:///system list --all
        fail "a domain of job $job is still defined"
    fi
    for pool in $(virsh -c qemu:///system pool-list --name | grep '^agentlab-'); do
        virsh -c qemu:///system pool-refresh "$pool" >/dev/null 2>&1 || true
        if virsh -c qemu:///system vol-list "$pool" 2>/dev/null | grep -q -- "$job"; then
            fail "an overlay of job $job is left in pool $pool"
        fi
    done
    if ls "$AGENTLAB_STATE_DIR"/pools/*/ 2>/dev/null | grep -q -- "$job"; then
        fail "an overlay file of job $job is left on disk"
    fi
    if [ -n "$(ls -A "$AGENTLAB_RUN_DIR/vms" 2>/dev/null)" ]; then
        ls -la "$AGENTLAB_RUN_DIR/vms"
        fail "a VM run dir is left"
    fi
    if [ -n "$(ls -A "$AGENTLAB_RUN_DIR/jobs" 2>/dev/null)" ]; then
        fail "a job dir is left in $AGENTLAB_RUN_DIR/jobs"
    fi
}

# The job id agentlab printed on stderr ("job jXXXX: queued").
job_id_from() {
    sed -n 's/.*job \(j[0-9a-f]*\): queued.*/\1/p' "$1" | head -n 1
}

# Starts agentlabd ($1) in the background with its log in
# $TEST_TMP/daemon.log and waits until it says it is ready. From then on the
# EXIT trap stops it and keeps its log in AL_TEST_OUTDIR (when set).
al_daemon_start() {
    "$1" 2>"$TEST_TMP/daemon.log" &
    AL_DAEMON_PID=$!
    trap 'al_daemon_stop; [ -z "${AL_TEST_OUTDIR:-}" ] || { mkdir -p "$AL_TEST_OUTDIR"; cp "$TEST_TMP/daemon.log" "$AL_TEST_OUTDIR/"; }; al_test_cleanup' EXIT
    i=0
    until grep -q "ready" "$TEST_TMP/daemon.log"; do
        i=$((i + 1))
        [ $i -lt 100 ] || { cat "$TEST_TMP/daemon.log"; fail "agentlabd did not get ready"; }
        sleep 0.1
    done
}

# Stops the daemon al_daemon_start started (SIGTERM, then waits); its exit
# status is left in AL_DAEMON_RC.
al_daemon_stop() {
    AL_DAEMON_RC=0
    if [ -n "${AL_DAEMON_PID:-}" ] && kill -0 "$AL_DAEMON_PID" 2>/dev/null; then
        kill -TERM "$AL_DAEMON_PID"
        wait "$AL_DAEMON_PID" || AL_DAEMON_RC=$?
    fi
    AL_DAEMON_PID=
}
