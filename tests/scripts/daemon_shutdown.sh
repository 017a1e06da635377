#!/bin/sh
# agentlabd starts with built-in defaults, and SIGTERM/SIGINT shut it down
# cleanly (it exits 1 if its event loop still had open handles).
set -eu
daemon=$1
cli=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export AGENTLAB_STATE_DIR="$tmp/state" AGENTLAB_RUN_DIR="$tmp/run" AGENTLAB_CONFIG="$tmp/none.conf"
printf '[agent]\nlog_level = debug\n' > "$tmp/none.conf"

"$cli" config show | grep -q "^state_dir = $tmp/state\$"

for sig in TERM INT; do
    "$daemon" 2>"$tmp/log" &
    pid=$!
    i=0
    until grep -q "ready" "$tmp/log"; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "daemon did not get ready"; cat "$tmp/log"; exit 1; }
        sleep 0.1
    done
    kill -"$sig" "$pid"
    rc=0
    wait "$pid" || rc=$?
    cat "$tmp/log"
    [ "$rc" -eq 0 ] || { echo "agentlabd exited $rc after SIG$sig"; exit 1; }
    grep -q "shutting down" "$tmp/log"
    ! grep -q "open handles" "$tmp/log"
done

# bad config: one clear line naming file, line and key, exit 1
printf '[agent]\nlog_level = chatty\n' > "$tmp/bad.conf"
rc=0
AGENTLAB_CONFIG="$tmp/bad.conf" "$daemon" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ]
grep -q "bad.conf:2: bad value \"chatty\" for key \"log_level\"" "$tmp/err"
echo "daemon_shutdown: ok"
