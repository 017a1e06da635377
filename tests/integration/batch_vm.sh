#!/bin/sh
# Batches with real VMs (the micro image): 6 jobs made from a template and a
# matrix, --max-parallel 2 on a backend with room for 3 VMs. Never more than 2
# of the batch's jobs are past QUEUED at once (from the daemon's event
# stream); a CI job submitted after the batch starts in the free slot before
# the batch's third job; `batch results --artifacts` puts each job's artifact
# in its own directory.
# Usage: batch_vm.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
al_test_env
al_private_state micro
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
image = micro
boot_timeout = 5m
[backend "local"]
max_vms = 3
# 3 one-vCPU VMs at once on a 2-CPU host
vcpus = 3
CONF
sock=$AGENTLAB_RUN_DIR/agentlabd.sock
al_daemon_start "$daemon"

cat >"$TEST_TMP/template.json" <<'JOB'
{"command": ["sh", "-c", "echo \"task $TASK\" > result.txt; sleep 3"], "artifacts": ["result.txt"],
 "timeout_s": 600}
JOB
bid=$("$cli" batch submit --name vmcap --max-parallel 2 --matrix TASK=t1,t2,t3,t4,t5,t6 \
    "$TEST_TMP/template.json")
echo "batch $bid submitted"
ci=$(echo '{"name": "ci", "command": ["sh", "-c", "echo ci"]}' | "$cli" job submit -)
echo "CI job $ci submitted"

rc=0
"$cli" batch watch --interval 10 "$bid" || rc=$?
[ "$rc" = 0 ] || { "$cli" batch results "$bid"; fail "batch watch exited $rc, want 0"; }
i=0
until "$cli" job show "$ci" | grep -Eq '^state: *(SUCCEEDED|FAILED|TIMED_OUT|CANCELED|ERROR)'; do
    i=$((i + 1))
    [ $i -lt 600 ] || fail "the CI job did not end"
    sleep 1
done
"$cli" job show "$ci" | grep -q '^state: *SUCCEEDED' || fail "the CI job did not succeed"

curl -sf --unix-socket "$sock" "http://agentlabd/v1/events?after=0&limit=1000" >"$TEST_TMP/events.json"
"$cli" batch results --json "$bid" >"$TEST_TMP/results.json"
python3 - "$TEST_TMP/events.json" "$TEST_TMP/results.json" "$ci" <<'PY' || fail "concurrency"
import json, sys
events = json.load(open(sys.argv[1]))["events"]
ids = {j["id"] for j in json.load(open(sys.argv[2]))["jobs"]}
ci = sys.argv[3]
running, peak, starts, ci_seq = set(), 0, [], None
for ev in events:
    if ev["from"] == "QUEUED" and ev["to"] == "PROVISIONING":
        if ev["job"] == ci:
            ci_seq = ev["seq"]
        elif ev["job"] in ids:
            running.add(ev["job"])
            starts.append(ev["seq"])
            peak = max(peak, len(running))
    elif ev["to"] in ("SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED", "ERROR", "QUEUED"):
        running.discard(ev["job"])
# a VM that failed to boot on a loaded host is retried in a new one: that
# job starts again (QUEUED -> PROVISIONING), which counts toward the peak
first = {}
for ev in events:
    if ev["from"] == "QUEUED" and ev["to"] == "PROVISIONING" and ev["job"] in ids:
        first.setdefault(ev["job"], ev["seq"])
print(f"batch jobs started: {len(first)} ({len(starts) - len(first)} retried), peak at once: "
      f"{peak}, CI job started at seq {ci_seq}, batch starts at {starts}")
assert len(ids) == 6 and len(first) == 6, "6 batch jobs"
assert peak == 2, f"peak {peak}, want 2"
assert ci_seq is not None and ci_seq < sorted(first.values())[2], "the CI job waited for the batch"
PY

"$cli" batch results --artifacts "$TEST_TMP/arts" "$bid"
for t in t1 t2 t3 t4 t5 t6; do
    [ "$(cat "$TEST_TMP/arts/$t/result.txt" 2>/dev/null)" = "task $t" ] ||
        fail "artifact of $t: $(ls -R "$TEST_TMP/arts" | head -20)"
done
echo "artifacts: $(ls "$TEST_TMP/arts" | tr '\n' ' ')"
# the store indexes each collected file (size, SHA-256) and counts it in the
# job's bytes, which retention_size weighs; a job's end is stored before its
# VM is torn down, and its files are indexed after, so the last job's row
# may take a moment
db=$AGENTLAB_STATE_DIR/agentlab.db
i=0
while :; do
    rows=$(sqlite3 -cmd '.timeout 5000' "$db" "select j.id, a.path, a.size, a.sha256,
        j.bytes - j.log_bytes from artifacts a join jobs j on j.id = a.job_id
        join batch_jobs b on b.job_id = j.id where b.batch_id = '$bid' order by j.id")
    [ "$(printf '%s\n' "$rows" | grep -c .)" -lt 6 ] && [ $i -lt 60 ] || break
    i=$((i + 1))
    sleep 0.5
done
echo "$rows"
[ "$(printf '%s\n' "$rows" | grep -c .)" = 6 ] || fail "6 artifacts indexed, got: $rows"
printf '%s\n' "$rows" | while IFS='|' read -r jid path size sum extra; do
    file=$AGENTLAB_STATE_DIR/jobs/$jid/artifacts/$path
    [ "$path" = result.txt ] && [ "$size" = "$(stat -c %s "$file")" ] &&
        [ "$sum" = "$(sha256sum "$file" | cut -d' ' -f1)" ] && [ "$extra" = "$size" ] ||
        fail "index row $jid|$path|$size|$sum|$extra does not match $file"
done
echo "batch_vm: ok"
