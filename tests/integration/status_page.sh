#!/bin/sh
# The status page in a real headless Chromium: agentlabd with its TCP
# listener on 127.0.0.1 (any free port) and a bearer token; a job runs on
# the micro image; the page, loaded with the token in its URL fragment,
# shows the backend with its capacity, the running job with its phase and
# elapsed time, and the job's live log. A screenshot goes to
# $AL_TEST_OUTDIR/status_page.png. Without the token the page asks for one
# and shows no job. Usage: status_page.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
command -v chromium >/dev/null || al_skip "status_page: chromium is not installed"
al_test_env
out=${AL_TEST_OUTDIR:-$TEST_TMP/out}
mkdir -p "$out"
al_private_state micro
token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$token" >"$TEST_TMP/token"
chmod 0600 "$TEST_TMP/token"
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
image = micro
boot_timeout = 2m
api_listen = 127.0.0.1:0
api_token_file = $TEST_TMP/token
[backend "local"]
max_vms = 2
CONF

al_daemon_start "$daemon"
port=$(sed -n 's/.*TCP port \([0-9]*\) .*/\1/p' "$TEST_TMP/daemon.log" | tail -n 1)
[ -n "$port" ] || fail "no TCP port in the daemon's log"

id=$(printf '%s' '{"name": "page-job", "command": ["sh", "-c", "i=0; while [ $i -lt 60 ]; do i=$((i+1)); echo tick $i; sleep 1; done"]}' |
    "$cli" job submit -)
i=0
until "$cli" job logs "$id" | grep -q "tick 2"; do
    i=$((i + 1))
    [ $i -lt 3000 ] || fail "job $id did not start"
    sleep 0.1
done

browse() { # URL ARGS...
    url=$1
    shift
    profile=$(mktemp -d "$TEST_TMP/chromium.XXXXXX")
    timeout 60 chromium --headless --no-sandbox --disable-gpu --no-first-run \
        --disable-background-networking --disable-component-update --disable-sync \
        --user-data-dir="$profile" --hide-scrollbars --window-size=1280,900 \
        --virtual-time-budget=5000 "$@" "$url" 2>>"$TEST_TMP/chromium.log"
}

browse "http://127.0.0.1:$port/#token=$token" --dump-dom >"$TEST_TMP/dom.html"
grep -q "data-backend=\"local\"" "$TEST_TMP/dom.html" || fail "no backend row on the page"
grep -q "healthy" "$TEST_TMP/dom.html" || fail "the backend's health is missing"
grep -q "1 / 2" "$TEST_TMP/dom.html" || fail "the backend's capacity (1 / 2 VMs) is missing"
grep -q "data-job=\"$id\" data-state=\"RUNNING\"" "$TEST_TMP/dom.html" ||
    { cat "$TEST_TMP/dom.html"; fail "the running job is not on the page"; }
grep -q "<td class=\"elapsed\">[0-9]" "$TEST_TMP/dom.html" || fail "no elapsed time"
grep -q "tick 3" "$TEST_TMP/dom.html" || fail "the live log view shows no output"
echo "status page: backend, running job $id, elapsed time and live log are shown"

browse "http://127.0.0.1:$port/#token=$token&job=$id" --screenshot="$out/status_page.png" >/dev/null
[ -s "$out/status_page.png" ] || fail "no screenshot"
echo "screenshot: $out/status_page.png"

# without the token: the form, and no data
browse "http://127.0.0.1:$port/" --dump-dom >"$TEST_TMP/dom-anon.html"
grep -q 'id="auth" style="display: flex;"' "$TEST_TMP/dom-anon.html" || fail "no token form without a token"
! grep -q "$id" "$TEST_TMP/dom-anon.html" || fail "the page showed a job without a token"

"$cli" job cancel "$id" >/dev/null
i=0
until "$cli" job show "$id" | grep -q "^state: *CANCELED"; do
    i=$((i + 1))
    [ $i -lt 600 ] || fail "job $id was not cancelled"
    sleep 0.1
done
al_daemon_stop
[ $AL_DAEMON_RC = 0 ] || fail "agentlabd exited $AL_DAEMON_RC"
assert_no_leftovers "$id"
for p in $(virsh -c qemu:///system pool-list --name | grep '^agentlab-local-'); do
    path=$(virsh -c qemu:///system pool-dumpxml "$p" | sed -n 's:.*<path>\(.*\)</path>.*:\1:p')
    case "$path" in "$state"/*) virsh -c qemu:///system pool-destroy "$p" >/dev/null ;; esac
done
echo "status_page: ok"
