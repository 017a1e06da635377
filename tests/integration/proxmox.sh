#!/bin/sh
# Jobs through the Proxmox backend against the simulator (tests/fakes/pve_sim.py),
# with `agentlab run --backend cluster`. Every mode ends by asserting that
# nothing is left in the simulator and that no request broke the API schema
# or the wire rules.
#
# Usage: proxmox.sh AGENTLAB MODE
#   jobs      exit codes, stdout/stderr, env and secrets, live output, work dir,
#             artifacts, big output, timeout, Ctrl-C, ticket auth
#   faults    lock timeouts, "no such task", nextid collisions, agent late and
#             flapping, slow tasks, dropped connections (before and after the
#             server acted), 5xx on delete: the jobs still succeed
#   badinput  bad token, TLS fingerprint mismatch, unknown template, a VM that
#             is not a template, no node with room, node offline, quota error:
#             a clear message with Proxmox's reason, exit 125, no VM left
#   gc        an `agentlab run` killed mid-job leaves a tagged VM; `agentlab gc`
#             finds it by its tags and removes it
#   simcheck  the simulator's validator catches each kind of violation
set -eu
AGENTLAB=$1
# AL_WRAP (e.g. "valgrind --error-exitcode=99 --leak-check=full") runs agentlab under a tool
WRAP=${AL_WRAP:-}
MODE=$2
AL_SOURCE_DIR=${AL_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
. "$(dirname "$0")/pve_lib.sh"
pve_test_env

stamp() { date +%s.%N; }

# run_job NAME [agentlab run args...]: output in $TEST_TMP/NAME.{out,err,rc}
run_job() {
    name=$1
    shift
    rc=0
    $WRAP "$AGENTLAB" run --backend cluster "$@" >"$TEST_TMP/$name.out" 2>"$TEST_TMP/$name.err" || rc=$?
    echo "$rc" >"$TEST_TMP/$name.rc"
}

expect_rc() { # expect_rc NAME RC
    got=$(cat "$TEST_TMP/$1.rc")
    [ "$got" -eq "$2" ] || { cat "$TEST_TMP/$1.out" "$TEST_TMP/$1.err"; fail "$1: exit $got, want $2"; }
}

expect_err() { # expect_err NAME PATTERN
    grep -q -- "$2" "$TEST_TMP/$1.err" || { cat "$TEST_TMP/$1.err"; fail "$1: no \"$2\" on stderr"; }
}

case "$MODE" in
jobs)
    pve_sim_start '{"task_time": {"qmclone": 0.3, "qmstart": 0.2, "qmstop": 0.1, "qmdestroy": 0.1},
                   "agent_delay_s": 0.5, "nodes": [{"name": "pve1", "mem": 8589934592}, {"name": "pve2"}],
                   "vms": [{"vmid": 9000, "name": "debian-tmpl", "node": "pve1", "template": 1},
                           {"vmid": 9001, "name": "actions-tmpl", "node": "pve2", "template": 1}]}'
    pve_conf

    # exit code, both streams, env, a secret masked in the output
    run_job basic --env GREETING=hello --secret-env TOKEN=s3cret-value-42 -- \
        sh -c 'echo "$GREETING from $AGENTLAB_JOB_ID"; echo "to stderr" >&2; echo "token $TOKEN"; exit 3'
    expect_rc basic 3
    grep -q '^hello from j[0-9a-f]*$' "$TEST_TMP/basic.out" || fail "stdout/env missing"
    grep -q '^to stderr$' "$TEST_TMP/basic.err" || fail "stderr missing"
    grep -q '^token \*\*\*$' "$TEST_TMP/basic.out" || { cat "$TEST_TMP/basic.out"; fail "secret not masked"; }
    ! grep -q 's3cret-value-42' "$TEST_TMP/basic.out" "$TEST_TMP/basic.err" || fail "secret leaked"
    expect_err basic 'FAILED (exit 3)'
    ! grep -rq 's3cret-value-42' "$TEST_TMP/sim"/guest-* 2>/dev/null || fail "the secret stayed on the guest's disk"
    pve_check 'len(vms) == 0' 's["vms_created"] == 1' \
        's["clones_by_node"] == {"pve2": 1}' # pve2 has the most free memory

    # live output, a work dir bigger than one file-write, artifacts (one missing)
    mkdir -p "$TEST_TMP/wd/sub"
    printf 'input from the host\n' >"$TEST_TMP/wd/sub/input.txt"
    head -c 300000 /dev/urandom >"$TEST_TMP/wd/blob.bin"
    want_blob=$(sha256sum "$TEST_TMP/wd/blob.bin" | cut -d' ' -f1)
    script='cat sub/input.txt; sha256sum blob.bin; echo live; sleep 3
head -c 200000 /dev/urandom > art.bin; sha256sum art.bin
mkdir -p out/deep; echo nested > out/deep/f.txt; echo done'
    {
        rc=0
        $WRAP "$AGENTLAB" run --backend cluster --workdir "$TEST_TMP/wd" --artifact art.bin \
            --artifact out --artifact no-such-file --artifacts-dir "$TEST_TMP/art" \
            -- sh -c "$script" 2>"$TEST_TMP/live.err" || rc=$?
        echo "$rc" >"$TEST_TMP/live.rc"
    } | while IFS= read -r line; do printf '%s %s\n' "$(stamp)" "$line"; done >"$TEST_TMP/live.out"
    end=$(stamp)
    expect_rc live 0
    grep -q ' input from the host$' "$TEST_TMP/live.out" || fail "the work dir did not arrive"
    grep -q " $want_blob  blob.bin\$" "$TEST_TMP/live.out" || fail "the work dir's blob differs in the guest"
    live_at=$(sed -n 's/^\([0-9.]*\) live$/\1/p' "$TEST_TMP/live.out")
    awk -v h="$live_at" -v e="$end" 'BEGIN { exit !(e - h >= 2.5) }' ||
        fail "stdout was not streamed live (line at $live_at, end $end)"
    want=$(sed -n 's/^[0-9.]* \([0-9a-f]\{64\}\)  art.bin$/\1/p' "$TEST_TMP/live.out")
    got=$(sha256sum "$TEST_TMP/art/art.bin" | cut -d' ' -f1)
    [ -n "$want" ] && [ "$want" = "$got" ] || fail "artifact differs: guest $want, host $got"
    [ "$(cat "$TEST_TMP/art/out/deep/f.txt")" = nested ] || fail "directory artifact missing"

    # output bigger than one file-read
    run_job big -- sh -c 'head -c 2500000 /dev/zero | tr "\0" a; echo; echo tail-line'
    expect_rc big 0
    [ "$(head -n 1 "$TEST_TMP/big.out" | wc -c)" -eq 2500001 ] || fail "big output cut"
    [ "$(tail -n 1 "$TEST_TMP/big.out")" = tail-line ] || fail "big output: the end is missing"

    # the job's timeout is enforced in the guest
    t0=$(date +%s)
    run_job timeout --timeout 3 -- sh -c 'echo started; sleep 120'
    expect_rc timeout 124
    [ $(($(date +%s) - t0)) -lt 30 ] || fail "the timeout took too long"
    grep -q '^started$' "$TEST_TMP/timeout.out" || fail "output before the timeout lost"

    # Ctrl-C cancels: the VM is stopped and purged
    $WRAP "$AGENTLAB" run --backend cluster -- sleep 300 2>"$TEST_TMP/cancel.err" &
    pid=$!
    i=0
    until grep -q '] running$' "$TEST_TMP/cancel.err"; do
        i=$((i + 1))
        [ $i -lt 300 ] || { kill -9 $pid; cat "$TEST_TMP/cancel.err"; fail "never running"; }
        sleep 0.1
    done
    kill -INT $pid
    rc=0
    wait $pid || rc=$?
    [ "$rc" -eq 130 ] || { cat "$TEST_TMP/cancel.err"; fail "SIGINT: exit $rc, want 130"; }

    # ticket auth instead of a token, a template named rather than numbered,
    # a NIC and cloud-init keys (sshkeys travel percent-encoded twice)
    printf 'sim-password\n' >"$TEST_TMP/password"
    chmod 0600 "$TEST_TMP/password"
    printf 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB+x/y= ci@host\nssh-rsa AAAAB3Nza+1= other key\n' \
        >"$TEST_TMP/keys.pub"
    pve_conf 'user = agentlab@pve
password_file = '"$TEST_TMP/password"'
bridge = vmbr0
ciuser = ci
sshkeys_file = '"$TEST_TMP/keys.pub"
    sed -i -e '/^token_file/d' -e 's/^template = 9000/template = debian-tmpl/' "$AGENTLAB_CONFIG"
    run_job ticket --cpus 2 --memory 768 -- sh -c 'echo via ticket'
    expect_rc ticket 0
    grep -q '^via ticket$' "$TEST_TMP/ticket.out" || fail "ticket auth job output missing"
    job=$(job_id_from "$TEST_TMP/ticket.err")
    pve_check "[d['config'] for d in s['destroyed'] if d['config']['name'] == 'agentlab-$job-1']" \
        "(lambda c: c['cores'] == '2' and c['memory'] == '768' and c['agent'] == '1'
            and c['net0'] == 'virtio,bridge=vmbr0' and c['ciuser'] == 'ci'
            and __import__('urllib.parse').parse.unquote(c['sshkeys']) == open('$TEST_TMP/keys.pub').read()
            and set(c['tags'].split(';')) >= {'agentlab', 'agentlab-backend.cluster', 'agentlab-job.$job'}
         )([d['config'] for d in s['destroyed'] if d['config']['name'] == 'agentlab-$job-1'][0])"

    # templates per image: a job of image "actions" is cloned from 9001, one
    # of the default image from template, one of an image without a template
    # is refused before anything is cloned
    pve_conf 'templates = actions:9001'
    run_job act --image actions -- sh -c 'echo from actions'
    expect_rc act 0
    act=$(job_id_from "$TEST_TMP/act.err")
    run_job dflt -- true
    expect_rc dflt 0
    dflt=$(job_id_from "$TEST_TMP/dflt.err")
    pve_check "s['clone_sources']['agentlab-$act-1'] == 9001" \
        "s['clone_sources']['agentlab-$dflt-1'] == 9000"
    run_job notmpl --image other -- true
    expect_rc notmpl 125
    expect_err notmpl 'no backend of pool "default" has a template for "other"'
    pve_assert_clean
    ;;

faults)
    pve_sim_start '{"agent_delay_s": 2.5}'
    pve_conf
    # the faults of a busy cluster, all at once
    pve_ctl faults '[
      {"match": "GET /cluster/nextid", "action": "collide", "times": 1},
      {"match": "POST /nodes/*/qemu/9000/clone", "action": "collide_in_task", "skip": 1, "times": 1},
      {"match": "POST /nodes/*/qemu/9000/clone", "action": "slow:2", "skip": 1, "times": 1},
      {"match": "GET /nodes/*/tasks/*/status", "action": "no_such_task", "times": 3},
      {"match": "PUT /nodes/*/qemu/*/config", "action": "lock_timeout", "times": 2},
      {"match": "POST /nodes/*/qemu/*/status/start", "action": "drop", "times": 1},
      {"match": "POST /nodes/*/qemu/*/agent/file-write", "action": "agent_down", "skip": 1, "times": 1},
      {"match": "GET /nodes/*/qemu/*/agent/exec-status", "action": "drop", "times": 1},
      {"match": "GET /nodes/*/qemu/*/agent/exec-status", "action": "agent_down", "skip": 2, "times": 2},
      {"match": "GET /nodes/*/qemu/*/agent/file-read", "action": "drop", "skip": 1, "times": 1},
      {"match": "GET /nodes/*/qemu/*/agent/file-read", "action": "error:502:Bad Gateway", "skip": 3, "times": 1},
      {"match": "POST /nodes/*/qemu/*/status/stop", "action": "lock_timeout", "times": 1},
      {"match": "DELETE /nodes/*/qemu/*", "action": "locked", "times": 2},
      {"match": "GET /nodes", "action": "drop", "skip": 1, "times": 1}
    ]'
    run_job busy -- sh -c 'for i in 1 2 3; do echo line $i; sleep 1; done; echo err >&2; exit 7'
    expect_rc busy 7
    [ "$(grep -c '^line [123]$' "$TEST_TMP/busy.out")" -eq 3 ] || { cat "$TEST_TMP/busy.out"; fail "lines lost"; }
    grep -q '^err$' "$TEST_TMP/busy.err" || fail "stderr lost"
    expect_err busy 'attempt 1 on backend cluster'
    ! grep -q 'retrying on a fresh VM' "$TEST_TMP/busy.err" || { cat "$TEST_TMP/busy.err"; fail "a transient fault cost an attempt"; }
    pve_check 'all(f["fired"] >= 1 for f in s["faults"])'

    # the clone request reached the server but the reply was lost: the
    # attempt fails, its VM is found by name and removed, the retry works
    pve_ctl faults '[{"match": "POST /nodes/*/qemu/9000/clone", "action": "drop_after", "times": 1}]'
    run_job lost -- sh -c 'echo second try'
    expect_rc lost 0
    expect_err lost 'retrying on a fresh VM'
    grep -q '^second try$' "$TEST_TMP/lost.out" || fail "output of the retried job missing"
    pve_check 's["vms_created"] == 3' 's["vms_destroyed"] == 3'
    pve_assert_clean
    ;;

badinput)
    pve_sim_start '{"nodes": [{"name": "pve1"}, {"name": "pve2", "status": "offline"},
                             {"name": "small", "maxmem": 2147483648, "mem": 1610612736}],
                   "vms": [{"vmid": 9000, "name": "debian-tmpl", "node": "pve1", "template": 1},
                           {"vmid": 9001, "name": "plain-vm", "node": "pve1", "template": 0}]}'
    # one attempt per job: the messages are what matters here
    agent_opts='max_attempts = 1'

    printf 'root@pam!agentlab=ffffffff-0000-0000-0000-000000000000\n' >"$TEST_TMP/badtoken"
    chmod 0600 "$TEST_TMP/badtoken"
    pve_conf '' "$agent_opts"
    sed -i "s|^token_file = .*|token_file = $TEST_TMP/badtoken|" "$AGENTLAB_CONFIG"
    run_job token -- true
    expect_rc token 125
    expect_err token 'HTTP 401 authentication failure (check token_file)'

    pve_conf 'fingerprint = 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF' "$agent_opts"
    sed -i '0,/^fingerprint = /{/^fingerprint = /d}' "$AGENTLAB_CONFIG"
    run_job tls -- true
    expect_rc tls 125
    expect_err tls "certificate has SHA-256 fingerprint $PVE_FP, not the one configured"

    pve_conf '' "$agent_opts"
    sed -i 's/^template = 9000/template = no-such-template/' "$AGENTLAB_CONFIG"
    run_job notfound -- true
    expect_rc notfound 125
    expect_err notfound 'template "no-such-template" not found in the cluster'

    pve_conf '' "$agent_opts"
    sed -i 's/^template = 9000/template = 9001/' "$AGENTLAB_CONFIG"
    run_job nottemplate -- true
    expect_rc nottemplate 125
    expect_err nottemplate 'VM 9001 (plain-vm) is not a template, and a linked clone needs one'

    pve_conf 'node = small' "$agent_opts"
    run_job full --memory 1024 -- true
    expect_rc full 125
    expect_err full "no node can take the job's 1024 MiB: small has 512 MiB free"

    pve_conf 'node = pve2' "$agent_opts"
    run_job offline -- true
    expect_rc offline 125
    expect_err offline "no node can take the job's 1024 MiB: pve2 is offline"

    # Proxmox refusing the clone (a storage quota here): its words reach the user
    pve_conf '' "$agent_opts"
    pve_ctl faults '[{"match": "POST /nodes/*/qemu/9000/clone", "action": "error:500:storage local-lvm: quota exceeded for pool ci", "times": 1}]'
    run_job quota -- true
    expect_rc quota 125
    expect_err quota 'HTTP 500 storage local-lvm: quota exceeded for pool ci'

    # a full clone of the plain VM works when configured
    pve_conf 'full_clone = yes' "$agent_opts"
    sed -i 's/^template = 9000/template = 9001/' "$AGENTLAB_CONFIG"
    run_job fullclone -- sh -c 'echo full clone'
    expect_rc fullclone 0
    pve_assert_clean
    ;;

gc)
    pve_sim_start
    pve_conf
    $WRAP "$AGENTLAB" run --backend cluster -- sleep 300 2>"$TEST_TMP/killed.err" &
    pid=$!
    i=0
    until grep -q '] running$' "$TEST_TMP/killed.err"; do
        i=$((i + 1))
        [ $i -lt 300 ] || { kill -9 $pid; fail "never running"; }
        sleep 0.1
    done
    kill -KILL $pid
    wait $pid 2>/dev/null || true
    pve_check 'len(vms) == 1' 'vms[0]["status"] == "running"' \
        '"agentlab-owner.run." in vms[0]["tags"]' '"agentlab-backend.cluster" in vms[0]["tags"]'
    $WRAP "$AGENTLAB" gc >"$TEST_TMP/gc.out" 2>&1 || { cat "$TEST_TMP/gc.out"; fail "gc failed"; }
    grep -q 'gc: 1 VMs destroyed' "$TEST_TMP/gc.out" || { cat "$TEST_TMP/gc.out"; fail "gc did not destroy the VM"; }
    pve_assert_clean
    ;;

simcheck)
    # the simulator's validator itself: each of these requests breaks one
    # rule and must be recorded as a violation (and refused)
    pve_sim_start
    auth="Authorization: PVEAPIToken=$PVE_TOKEN"
    api="$PVE_URL/api2/json"
    form='Content-Type: application/x-www-form-urlencoded'
    bad() { # bad EXPECTED_STATUS CURL_ARGS...
        want=$1
        shift
        got=$(curl -sk -o /dev/null -w '%{http_code}' -H "$auth" "$@")
        [ "$got" = "$want" ] || fail "simcheck: $*: HTTP $got, want $want"
    }
    n=0
    bad 501 -X GET --data-raw 'x=1' -H "$form" "$api/nodes"; n=$((n + 1))        # body on GET
    bad 400 "$api/cluster/nextid?vmid=abc"; n=$((n + 1))                           # type
    bad 400 "$api/cluster/nextid?vmid=5"; n=$((n + 1))                             # minimum
    bad 400 "$api/cluster/nextid?bogus=1"; n=$((n + 1))                            # additionalProperties
    bad 400 "$api/cluster/resources?type=vms"; n=$((n + 1))                        # enum
    bad 400 -X POST -H "$form" --data-raw 'newid=200&full=true' \
        "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1))                            # boolean as true
    bad 400 -X POST -H "$form" --data-raw 'full=1' "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1)) # required newid
    bad 400 -X POST -H "$form" --data-raw 'newid=200&name=a+b' \
        "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1))                            # '+' for a space
    bad 400 -X POST -H "$form" --data-raw 'newid=200&description=a=b' \
        "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1))                            # raw '='
    bad 400 -X POST -H "$form" --data-raw 'newid=200&newid=201' \
        "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1))                            # repeated scalar
    bad 415 -X POST -H 'Content-Type: text/plain' --data-raw 'newid=200' \
        "$api/nodes/pve1/qemu/9000/clone"; n=$((n + 1))                            # not a form
    bad 400 -X POST -H "$form" --data-raw 'newid=200' \
        "$api/nodes/pve1/qemu/9000/clone?full=1"; n=$((n + 1))                     # query on POST
    bad 400 -X PUT -H "$form" --data-raw 'sshkeys=ssh-ed25519%20AAAA%20me' \
        "$api/nodes/pve1/qemu/9000/config"; n=$((n + 1))                           # sshkeys encoded once
    bad 400 -X PUT -H "$form" --data-raw 'tags=a%20b%3Bc%21' \
        "$api/nodes/pve1/qemu/9000/config"; n=$((n + 1))                           # tag format
    bad 501 "$api/nodes/pve1/qemu/9000/no-such-thing"; n=$((n + 1))               # unknown path
    bad 501 -X DELETE "$api/cluster/nextid"; n=$((n + 1))                          # unknown method
    # and correct requests pass
    curl -skf -H "$auth" "$api/cluster/nextid?vmid=200" >/dev/null || fail "a valid request was refused"
    curl -skf -X PUT -H "$auth" -H "$form" \
        --data-raw 'sshkeys=ssh-ed25519%2520AAAA%2520me&tags=agentlab%3Bagentlab-job.j1&cores=2' \
        "$api/nodes/pve1/qemu/9000/config" >/dev/null || fail "a valid config was refused"
    pve_check "len(s['violations']) == $n"
    ;;

*)
    fail "unknown mode $MODE"
    ;;
esac
echo "proxmox $MODE: ok"
