#!/bin/sh
# The HTTP queue source against a fake queue: jobs pulled by long poll,
# status reported in order, results with exit codes and log tails, a bad spec
# rejected with the field named, a job withdrawn by the queue (410) cancelled,
# the bearer token never in the daemon's log. Real libvirt, micro image.
# Usage: httpq.sh AGENTLABD
set -eu
daemon=$1
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
al_test_env
al_private_state micro
token=queue-token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')
printf '%s\n' "$token" >"$TEST_TMP/token"
chmod 0600 "$TEST_TMP/token"
cat >"$TEST_TMP/jobs.json" <<JOBS
[
 {"id": "ok-1", "body": "{\"command\":[\"sh\",\"-c\",\"echo hello from the queue\"],\"source\":{\"type\":\"http\",\"id\":\"ok-1\"}}"},
 {"id": "fail-1", "body": "{\"command\":[\"sh\",\"-c\",\"echo bad; exit 2\"],\"source\":{\"type\":\"http\",\"id\":\"fail-1\"}}"},
 {"id": "bad-1", "body": "{\"command\":[\"true\"],\"resources\":{\"cpus\":\"two\"}}"},
 {"id": "gone-1", "body": "{\"command\":[\"sleep\",\"600\"],\"source\":{\"type\":\"http\",\"id\":\"gone-1\"}}"}
]
JOBS
python3 "$here/../fakes/queue_fake.py" --jobs "$TEST_TMP/jobs.json" --token "$token" \
    --out "$TEST_TMP/reports" --port-file "$TEST_TMP/port" --cancel gone-1 &
fake=$!
dpid=
trap 'kill $fake 2>/dev/null || true; [ -z "$dpid" ] || kill $dpid 2>/dev/null || true; al_test_cleanup' EXIT
i=0
while [ ! -s "$TEST_TMP/port" ]; do i=$((i + 1)); [ $i -lt 100 ] || fail "fake queue did not start"; sleep 0.1; done
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = debug
image = micro
boot_timeout = 20m
[backend "local"]
max_vms = 2
[source "q"]
type = http
url = http://127.0.0.1:$(cat "$TEST_TMP/port")
token_file = $TEST_TMP/token
concurrent = 2
CONF
"$daemon" 2>"$TEST_TMP/daemon.log" &
dpid=$!
i=0
until [ "$(grep -c '"kind": "result"' "$TEST_TMP/reports" 2>/dev/null || true)" -ge 4 ]; do
    i=$((i + 1))
    [ $i -lt 300 ] || { tail -40 "$TEST_TMP/daemon.log"; cat "$TEST_TMP/reports"; fail "results missing"; }
    sleep 1
done
kill -TERM $dpid
wait $dpid || fail "agentlabd did not stop cleanly"
cat "$TEST_TMP/reports"
python3 - "$TEST_TMP/reports" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
bad = [l for l in lines if "violation" in l]
assert not bad, bad
res = {l["id"]: l["doc"] for l in lines if l.get("kind") == "result"}
assert res["ok-1"]["state"] == "SUCCEEDED" and res["ok-1"]["exit_code"] == 0, res["ok-1"]
assert "hello from the queue" in res["ok-1"]["log_tail"], res["ok-1"]
assert res["fail-1"]["state"] == "FAILED" and res["fail-1"]["exit_code"] == 2, res["fail-1"]
assert res["bad-1"]["state"] == "REJECTED" and "resources.cpus" in res["bad-1"]["reason"], res["bad-1"]
assert res["gone-1"]["state"] == "CANCELED", res["gone-1"]
seq = [l["doc"]["state"] for l in lines if l.get("id") == "ok-1" and l["kind"] == "status"]
assert seq == ["QUEUED", "PROVISIONING", "BOOTING", "RUNNING"], seq
print("reports ok")
PY
if grep -q -- "$token" "$TEST_TMP/daemon.log"; then fail "the queue token reached the log"; fi
[ -z "$(ls "$AGENTLAB_RUN_DIR/vms" 2>/dev/null)" ] || fail "run dirs left"
[ -z "$(ls "$state/pools/local" 2>/dev/null)" ] || fail "overlays left"
echo "httpq: ok"
