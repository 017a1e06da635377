#!/bin/sh
# The boot watchdog on a real agentlabd, libvirtd and QEMU (micro image): the
# backend's emulator is a stand-in that runs the real QEMU but gives the
# guest of every job's first attempt a kernel command line on which it
# prints nothing and starts nothing, as a KVM that cannot run Linux leaves a
# guest. The watchdog must end that VM, the job must be retried once on a
# fresh VM although its max_attempts is 1, and succeed; /metrics counts the
# silent guest, `agentlab pool status` says which accelerator VMs run under,
# and nothing is left behind.
# Usage: boot_watchdog.sh AGENTLABD AGENTLAB
set -eu
daemon=$1 cli=$2
. "$(dirname "$0")/lib.sh"
AL_BUILD_DIR=${AL_BUILD_DIR:-.}
al_test_env
al_private_state micro

qemu=$(command -v qemu-system-x86_64) || fail "no qemu-system-x86_64"
# libvirt runs the emulator as its own user: the script must be readable
emulator=$TEST_TMP/qemu-silent-first
cat >"$emulator" <<EOF
#!/bin/bash
silent=0
for a in "\$@"; do
    case "\$a" in guest=agentlab-*-1,*) silent=1 ;; esac
done
args=("\$@")
if [ \$silent = 1 ]; then
    for i in "\${!args[@]}"; do
        if [ "\${args[\$i]}" = -append ]; then
            args[\$((i + 1))]="console=ttyS1 panic=0 rdinit=/nonexistent root=/dev/nonexistent"
        fi
    done
fi
exec $qemu "\${args[@]}"
EOF
chmod 0755 "$emulator"

cat >"$AGENTLAB_CONFIG" <<CONF
[agent]
log_level = info
image = micro
boot_timeout = 10m
[backend "local"]
max_vms = 1
emulator = $emulator
boot_watchdog = 30s
boot_watchdog_tcg = 30s
CONF
sock=$AGENTLAB_RUN_DIR/agentlabd.sock

al_daemon_start "$daemon"

# the accelerator VMs start under, and why, where an operator looks
"$cli" pool status >"$TEST_TMP/pool.txt"
if [ ! -e /dev/kvm ]; then
    grep -q '^backend local: VMs run under TCG (no KVM): /dev/kvm does not exist' "$TEST_TMP/pool.txt" ||
        { cat "$TEST_TMP/pool.txt"; fail "pool status does not say why VMs run under TCG"; }
fi

printf '{"command": ["sh", "-c", "echo alive after the watchdog"], "max_attempts": 1}' >"$TEST_TMP/job.json"
"$cli" job submit "$TEST_TMP/job.json" >"$TEST_TMP/submit.txt" 2>&1 || { cat "$TEST_TMP/submit.txt"; fail "submit"; }
job=$(grep -o 'j[0-9a-f]\{20\}' "$TEST_TMP/submit.txt" | head -n 1)
[ -n "$job" ] || { cat "$TEST_TMP/submit.txt"; fail "no job id"; }

# ERROR is passing while the retry is queued after the teardown: only an
# ERROR that stays 30 s is the end
i=0 errors=0
while :; do
    st=$("$cli" job show "$job" | sed -n 's/^state: *\([A-Z_]*\).*/\1/p')
    case "$st" in SUCCEEDED | FAILED | CANCELED | TIMED_OUT) break ;; esac
    if [ "$st" = ERROR ]; then
        errors=$((errors + 1))
        [ $errors -lt 60 ] || break
    else
        errors=0
    fi
    i=$((i + 1))
    [ $i -lt 1200 ] || { tail -30 "$TEST_TMP/daemon.log"; fail "job $job still $st"; }
    sleep 0.5
done
"$cli" job show "$job" >"$TEST_TMP/show.txt"
[ "$st" = SUCCEEDED ] || { cat "$TEST_TMP/show.txt"; tail -30 "$TEST_TMP/daemon.log"; fail "job ended $st"; }
"$cli" job logs "$job" | grep -q '^alive after the watchdog$' || fail "the job's output is missing"

db=$state/agentlab.db
q() { sqlite3 -cmd '.timeout 5000' "$db" "$1"; }
[ "$(q "select count(*) from attempts where job_id = '$job'")" = 2 ] ||
    { q "select * from attempts where job_id = '$job'"; fail "not exactly two attempts"; }
grep -Eq 'no sign of life 30 s after it started under (TCG|KVM)' "$TEST_TMP/daemon.log" ||
    { tail -30 "$TEST_TMP/daemon.log"; fail "the watchdog's reason is not in the log"; }
grep -q 'retrying once on a fresh VM under TCG' "$TEST_TMP/daemon.log" ||
    { tail -30 "$TEST_TMP/daemon.log"; fail "the free retry is not in the log"; }

metric() {
    curl -sf --unix-socket "$sock" http://agentlabd/metrics | awk -v m="$1" '$1 == m {print $2}'
}
silent=$(($(metric 'agentlab_boot_watchdog_total{accel="tcg"}') + $(metric 'agentlab_boot_watchdog_total{accel="kvm"}')))
[ "$silent" = 1 ] ||
    { curl -sf --unix-socket "$sock" http://agentlabd/metrics | grep watchdog; fail "the watchdog counted $silent guests, want 1"; }

al_daemon_stop
assert_no_leftovers "$job"
echo "boot_watchdog: ok (silent first attempt ended by the watchdog, job retried once and succeeded)"
