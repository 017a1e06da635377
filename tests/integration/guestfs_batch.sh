#!/bin/sh
# inject = guestfs through the daemon: two jobs submitted together get their
# cloud-init data written into their overlays by ONE libguestfs appliance
# (the launch costs ~20 s under TCG, the second overlay ~0.5 s), each boots
# from its own seed, both succeed, and nothing is left behind.
# Real libvirtd + QEMU + libguestfs, the debian-12 image.
# Usage: guestfs_batch.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
al_test_env
state=$TEST_TMP/state
mkdir -p "$state/images"
chmod 0711 "$TEST_TMP" "$state"
# hard links: the golden image is only ever read
cp -al "${AGENTLAB_TEST_STATE}/images/debian-12" "$state/images/" 2>/dev/null ||
    cp -a "${AGENTLAB_TEST_STATE}/images/debian-12" "$state/images/"
export AGENTLAB_STATE_DIR=$state
cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = debug
image = debian-12
boot_timeout = 20m
max_attempts = 1
[backend "local"]
max_vms = 2
inject = guestfs
CONF
dpid=
trap '[ -z "$dpid" ] || { kill -TERM $dpid 2>/dev/null || true; wait $dpid 2>/dev/null || true; }; al_test_cleanup' EXIT
"$daemon" 2>"$TEST_TMP/daemon.log" &
dpid=$!
i=0
until grep -q "ready" "$TEST_TMP/daemon.log"; do
    i=$((i + 1))
    [ $i -lt 300 ] || { cat "$TEST_TMP/daemon.log"; fail "agentlabd did not get ready"; }
    sleep 0.1
done

# the job shows the seed libguestfs wrote into its own disk
printf '%s\n' '{"command": ["sh", "-c", "echo seed: $(ls /var/lib/cloud/seed/nocloud | tr \"\\n\" \" \"); sudo -n grep -h instance-id /var/lib/cloud/seed/nocloud/meta-data"]}' >"$TEST_TMP/job.json"
# both at once: the backend's coalescing window is 200 ms, and one CLI run
# after another may take longer than that on a busy host
"$cli" job submit "$TEST_TMP/job.json" >"$TEST_TMP/a.id" &
pa=$!
"$cli" job submit "$TEST_TMP/job.json" >"$TEST_TMP/b.id" &
pb=$!
wait $pa || fail "submitting the first job"
wait $pb || fail "submitting the second job"
a=$(cat "$TEST_TMP/a.id") b=$(cat "$TEST_TMP/b.id")
echo "jobs $a $b submitted"
state_of() { "$cli" job show "$1" | sed -n 's/^state: *\([A-Z_]*\).*/\1/p'; }
i=0
while :; do
    sa=$(state_of "$a") sb=$(state_of "$b")
    case "$sa$sb" in
    *QUEUED* | *PROVISIONING* | *BOOTING* | *RUNNING* | "") ;;
    *) break ;;
    esac
    i=$((i + 1))
    [ $i -lt 1800 ] || fail "jobs did not end: $sa $sb"
    sleep 1
done
for id in $a $b; do
    "$cli" job logs "$id" >"$TEST_TMP/$id.log"
    cat "$TEST_TMP/$id.log"
    [ "$(state_of "$id")" = SUCCEEDED ] || { "$cli" job show "$id"; tail -30 "$TEST_TMP/daemon.log"; fail "job $id did not succeed"; }
    grep -q "^seed: .*meta-data .*user-data" "$TEST_TMP/$id.log" || fail "job $id saw no seed in its disk"
    grep -q "instance-id: .*$id" "$TEST_TMP/$id.log" || fail "job $id booted with another job's seed"
done
grep "libguestfs appliance" "$TEST_TMP/daemon.log"
grep -q "one libguestfs appliance for 2 overlays" "$TEST_TMP/daemon.log" ||
    fail "the two overlays did not share one appliance"
kill -TERM $dpid
wait $dpid || fail "agentlabd did not stop cleanly"
dpid=
for id in $a $b; do assert_no_leftovers "$id"; done
echo "guestfs_batch: ok"
