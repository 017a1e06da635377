# The skip policy of the shell tests (the same as test_skip() in
# test_util.c and tests/support/skip.py). Sourced, not run.
#
# A test that cannot run what it is meant to test fails. It may skip (exit
# 77, which ctest shows as skipped) only when a developer asked for it with
# AGENTLAB_ALLOW_SKIP=1, and never in CI (CI set to anything but "", "0" or
# "false"): scripts/setup.sh installs everything the tests need, so a skip
# there can only mean that something broke.

# al_skip_allowed: true when a test may skip.
al_skip_allowed() {
    case "${CI:-}" in
    "" | 0 | false) ;;
    *) return 1 ;;
    esac
    [ "${AGENTLAB_ALLOW_SKIP:-}" = 1 ]
}

# al_skip_note REASON...: reports a case the test cannot run; returns 0 when
# skipping it is allowed, 1 when the caller must count it as a failure.
al_skip_note() {
    if al_skip_allowed; then
        echo "SKIP: $*" >&2
        return 0
    fi
    echo "FAIL: $* (a test that cannot run fails; AGENTLAB_ALLOW_SKIP=1 lets it skip outside CI)" >&2
    return 1
}

# al_skip REASON...: ends the test: exit 77 when skipping is allowed, else 1.
al_skip() {
    if al_skip_note "$@"; then
        exit 77
    fi
    exit 1
}
