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
    # the previous round's log says "ready" too: without this the signal may
    # come before the new daemon has its handlers (exit 130 under load)
    rm -f "$tmp/log"
    "$daemon" 2>"$tmp/log" &
    pid=$!
    i=0
    until grep -qs "ready" "$tmp/log"; do
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

# a source that cannot start (a token file everyone may read): the daemon
# serves the others, logs one error line, and /healthz says "degraded"
mkdir -p "$tmp/spool"
printf 'queue-token-0123456789\n' > "$tmp/token"
chmod 0644 "$tmp/token"
printf '[agent]\nlog_level = debug\n[source "queue"]\ntype = http\nurl = http://127.0.0.1:9\ntoken_file = %s\n[source "drop"]\ntype = spool\ndir = %s\n' \
    "$tmp/token" "$tmp/spool" > "$tmp/degraded.conf"
rm -f "$tmp/log"
AGENTLAB_CONFIG="$tmp/degraded.conf" "$daemon" 2>"$tmp/log" &
pid=$!
i=0
until grep -qs "ready" "$tmp/log"; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "daemon did not get ready"; cat "$tmp/log"; kill "$pid"; exit 1; }
    sleep 0.1
done
health=$(curl -s --unix-socket "$tmp/run/agentlabd.sock" http://agentlabd/healthz)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
cat "$tmp/log"
echo "$health"
[ "$rc" -eq 0 ] || { echo "agentlabd exited $rc"; exit 1; }
[ "$(grep -c 'source queue did not start' "$tmp/log")" -eq 1 ] || { echo "want one error line"; exit 1; }
grep -q 'ready, degraded' "$tmp/log"
echo "$health" | grep -q '"status":"degraded"' || { echo "/healthz is not degraded"; exit 1; }
echo "$health" | grep -q '"name":"queue","reason":"queue queue: token_file [^"]*is readable by everyone' ||
    { echo "/healthz lacks the source's reason"; exit 1; }
! echo "$health" | grep -q '"name":"drop"'
! grep -q "queue-token-0123456789" "$tmp/log"

# bad config: one clear line naming file, line and key, exit 1
printf '[agent]\nlog_level = chatty\n' > "$tmp/bad.conf"
rc=0
AGENTLAB_CONFIG="$tmp/bad.conf" "$daemon" 2>"$tmp/err" || rc=$?
[ "$rc" -eq 1 ]
grep -q "bad.conf:2: bad value \"chatty\" for key \"log_level\"" "$tmp/err"
echo "daemon_shutdown: ok"
