#!/bin/sh
# agentlabd.service proven under systemd, in a VM: an image from debian-12's
# recipe plus the package's run-time dependencies (read from the .deb's
# Depends), the .deb copied in as the job's work dir and installed with
# dpkg -i, then: `systemctl start` returns once agentlabd said READY=1
# (Type=notify), /healthz answers on the socket, `systemctl stop` ends it
# cleanly, QEMU under TCG runs inside the unit's sandbox, and
# `systemd-analyze security` gives the unit's exposure score.
# usage: package_systemd.sh AGENTLAB DEB RECIPES_DIR
#   AGENTLAB: the CLI that builds the image and runs the VM (the build tree's)
#   RECIPES_DIR: the source tree's images/recipes
# Needs AGENTLAB_STATE_DIR (the image store, shared with the image fixture).
set -eu
AGENTLAB=$1
deb=$2
recipes=$3
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
[ -f "$deb" ] || fail "no package $deb (scripts/package.sh builds it)"
: "${AGENTLAB_STATE_DIR:?}"
tmp=$(mktemp -d /tmp/al-sd.XXXXXX)
chmod 0711 "$tmp"
trap 'rm -rf "$tmp"' EXIT
export AGENTLAB_RUN_DIR="$tmp/run"
export AGENTLAB_CONFIG="$tmp/agentlab.conf"
printf '[agent]\nboot_timeout = 20m\n' >"$AGENTLAB_CONFIG"

# The recipe: debian-12 as it is in the tree, plus the package's Depends
# (without versions: the image gets bookworm's, as `apt install` would).
name=debian-12-agentlabd
mkdir -p "$tmp/recipes"
cp -a "$recipes/debian-12" "$tmp/recipes/$name"
deps=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/(.*)//; s/|.*//; s/ //g' | grep . |
    sort -u | tr '\n' ' ')
echo "run-time dependencies: $deps"
awk -v deps="$deps" '
    /^description = / { print "description = debian-12 with the run-time dependencies of agentlab (package_systemd test)"; next }
    /^packages = / { print; print "    " deps; next }
    { print }' "$recipes/debian-12/recipe.conf" >"$tmp/recipes/$name/recipe.conf"
grep -q 'libvirt-daemon-system' "$tmp/recipes/$name/recipe.conf" || fail "recipe not assembled"

t0=$(date +%s)
"$AGENTLAB" image build "$name" --recipes "$tmp/recipes" || fail "image build $name"
echo "image $name ready in $(($(date +%s) - t0)) s"

mkdir "$tmp/wd"
cp "$deb" "$tmp/wd/"
cat >"$tmp/wd/check.sh" <<'EOS'
#!/bin/sh
# runs in the VM as root
set -u
ok=1
bad() { echo "GUEST FAIL: $*"; ok=0; }
unit=agentlabd.service
sock=/run/agentlab/agentlabd.sock
[ "$(cat /proc/1/comm)" = systemd ] || bad "PID 1 is $(cat /proc/1/comm)"

t=$(date +%s)
dpkg -i ./agentlab_*.deb || bad "dpkg -i"
echo "dpkg -i: $(($(date +%s) - t)) s"
systemctl is-enabled "$unit" || bad "$unit is not enabled by the installation"
# the postinst starts it (deb-systemd-invoke): stop it and start it by hand
systemctl stop "$unit"

t=$(date +%s)
# Type=notify: start returns only after READY=1 (or fails)
systemctl start "$unit" || bad "systemctl start"
echo "systemctl start: $(($(date +%s) - t)) s"
systemctl show -p Type -p ActiveState -p SubState -p MainPID -p NotifyAccess "$unit"
[ "$(systemctl show -P Type "$unit")" = notify ] || bad "not Type=notify"
[ "$(systemctl show -P ActiveState "$unit")" = active ] || bad "not active after start"
[ "$(systemctl show -P SubState "$unit")" = running ] || bad "not running after start"
journalctl -u "$unit" --no-pager -o cat | grep -q 'ready' || bad "no ready line in the journal"

health=$(curl -sS --max-time 10 --unix-socket "$sock" http://agentlabd/healthz) ||
    bad "curl /healthz"
echo "healthz: $health"
echo "$health" | grep -q '"status": *"ok"' || bad "/healthz did not say ok"
stat -c 'socket %a %U:%G %n' "$sock"
stat -c 'dir %a %n' /var/lib/agentlab /run/agentlab

echo "SECURITY-BEGIN"
systemd-analyze security --no-pager "$unit"
echo "SECURITY-END"

# QEMU under TCG inside the unit's sandbox (libguestfs appliances and image
# builds are children of agentlabd, and TCG needs writable+executable
# memory): a drop-in runs a 7-byte firmware under TCG as ExecStartPre, which
# has every setting of the unit; isa-debug-exit turns its write into exit
# status 33, so 33 means a vCPU ran the code inside the sandbox
fw=/var/lib/agentlab/tcg-check.bin
{ head -c 65520 /dev/zero; printf '\260\020\346\364\364\353\375'; head -c 9 /dev/zero; } >"$fw"
mkdir -p "/run/systemd/system/$unit.d"
cat >"/run/systemd/system/$unit.d/tcg-check.conf" <<'EOC'
[Service]
ExecStartPre=/bin/sh -c 'qemu-system-x86_64 -accel tcg -machine pc -m 16 -nodefaults -no-user-config -display none -monitor none -serial none -no-reboot -bios /var/lib/agentlab/tcg-check.bin -device isa-debug-exit,iobase=0xf4,iosize=0x04; s=$$?; echo "QEMU under TCG in the unit: exit $$s"; test $$s = 33'
EOC
systemctl daemon-reload
systemctl restart "$unit" || bad "QEMU under TCG did not run inside the unit's sandbox"
journalctl -u "$unit" --no-pager -o cat | grep 'QEMU under TCG in the unit' | tail -n 1
journalctl -u "$unit" --no-pager -o cat | grep -q 'QEMU under TCG in the unit: exit 33' ||
    bad "no TCG run in the unit's sandbox"
rm -rf "/run/systemd/system/$unit.d" "$fw"
systemctl daemon-reload

t=$(date +%s)
systemctl stop "$unit" || bad "systemctl stop"
echo "systemctl stop: $(($(date +%s) - t)) s"
systemctl show -p ActiveState -p Result -p ExecMainCode -p ExecMainStatus "$unit"
[ "$(systemctl show -P Result "$unit")" = success ] || bad "stop: Result is not success"
[ "$(systemctl show -P ExecMainStatus "$unit")" = 0 ] || bad "agentlabd did not exit 0"
[ "$(systemctl show -P ActiveState "$unit")" = inactive ] || bad "not inactive after stop"
journalctl -u "$unit" --no-pager -o cat | tail -n 30
journalctl -u "$unit" --no-pager -o cat | grep -q 'shutting down' || bad "no clean shutdown logged"
if journalctl -u "$unit" --no-pager -o cat | grep -q 'open handles'; then bad "loop left handles open"; fi
[ $ok = 1 ] && echo "GUEST OK"
EOS
t0=$(date +%s)
rc=0
"$AGENTLAB" run --local --image "$name" --memory 2048 --cpus 2 --timeout 20m --workdir "$tmp/wd" \
    -- sudo sh ./check.sh >"$tmp/out" 2>"$tmp/err" || rc=$?
cat "$tmp/out"
cat "$tmp/err"
echo "VM job: exit $rc in $(($(date +%s) - t0)) s"
[ "$rc" -eq 0 ] || fail "the job exited $rc"
grep -q '^GUEST OK$' "$tmp/out" || fail "checks in the guest failed"
score=$(sed -n 's/.*Overall exposure level for agentlabd.service: *\(.*\)$/\1/p' "$tmp/out")
echo "systemd-analyze security agentlabd: $score"
[ -n "$score" ] || fail "no exposure score"
echo ok
