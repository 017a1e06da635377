#!/bin/sh
# The Debian package on this host: dpkg -i, then `agentlab run -- echo ok`
# with the installed programs only, then dpkg -r keeps the state dir and the
# conffile. The host is changed (CI machines are throwaway) but left as it was
# found: the package is removed at the end, the state dir and the conffile
# are deleted only when the package's installation created them.
# usage: package_install.sh DEB IMAGE_STATE_DIR
#   IMAGE_STATE_DIR: a state dir with the debian-12 image (the image fixture's),
#   used when /var/lib/agentlab has none
set -eu
deb=$1
image_state=$2
fail() {
    echo "FAIL: $*" >&2
    exit 1
}
# A test that cannot run fails, with the reason.
[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i)"
[ -f "$deb" ] || fail "no package $deb (scripts/package.sh builds it)"
if dpkg-query -W -f='${Status}' agentlab 2>/dev/null | grep -q 'ok installed'; then
    fail "the agentlab package is installed on this host already; this test will not replace it"
fi

# Installed programs only: nothing of a build tree on PATH.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
export PATH
unset AGENTLAB_CONFIG AGENTLAB_STATE_DIR AGENTLAB_RUN_DIR AGENTLAB_SOCKET AGENTLAB_RECIPES \
    AGENTLAB_GUEST_HELPER

had_state=no
[ -d /var/lib/agentlab ] && had_state=yes
had_conf=no
[ -e /etc/agentlab/agentlab.conf ] && had_conf=yes
[ "$had_conf" = no ] || fail "/etc/agentlab/agentlab.conf exists without the package; not touching it"
tmp=$(mktemp -d /tmp/al-pkg.XXXXXX)
chmod 0711 "$tmp"
cleanup() {
    rc=$?
    # purge removes the conffile too; the state dir outlives even a purge
    dpkg --purge agentlab >/dev/null 2>&1 || true
    if [ "$had_state" = no ]; then rm -rf /var/lib/agentlab; fi
    rm -rf "$tmp"
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
# Depends are satisfied on a host prepared by scripts/setup.sh: dpkg -i does
# not fetch anything, so a missing run-time dependency fails here.
dpkg -i "$deb" || fail "dpkg -i $deb"
echo "installed in $(($(date +%s) - t0)) s"

[ "$(command -v agentlab)" = /usr/bin/agentlab ] || fail "agentlab is $(command -v agentlab)"
[ "$(command -v agentlabd)" = /usr/bin/agentlabd ] || fail "agentlabd is $(command -v agentlabd)"
agentlab --version
agentlabd --version
[ -x /usr/libexec/agentlab/agentlab-guest ] || fail "no guest helper"
[ -f /usr/share/agentlab/recipes/debian-12/recipe.conf ] || fail "no recipes"
[ -f /usr/share/agentlab/agentlab-guest.service ] || fail "no guest unit"
[ -f /lib/systemd/system/agentlabd.service ] || fail "no unit"
[ -f /usr/share/bash-completion/completions/agentlab ] || fail "no bash completion"
grep -qx /etc/agentlab/agentlab.conf /var/lib/dpkg/info/agentlab.conffiles ||
    fail "/etc/agentlab/agentlab.conf is not a conffile"
[ -d /var/lib/agentlab ] || fail "postinst did not create /var/lib/agentlab"
for page in agentlab agentlabd 'agentlab.conf'; do
    man -w "$page" >/dev/null || fail "man $page: not installed"
done
# The installed programs look only where they were installed, never into the
# tree they were built in.
if strings /usr/bin/agentlab /usr/bin/agentlabd | grep -E '/(build|src)/agentlab|images/recipes' |
    grep -v '^/usr/'; then
    fail "the installed programs name paths of the build tree"
fi
# The recipes and the helper are found from the installed paths: an unknown
# recipe's error lists the installed ones.
msg=$(AGENTLAB_STATE_DIR="$tmp/state" agentlab image build no-such-recipe 2>&1) &&
    fail "building no-such-recipe succeeded"
echo "$msg"
echo "$msg" | grep -q 'debian-12-actions' || fail "the installed recipes were not found"
# The conffile as shipped is the built-in configuration.
agentlab config show | head -n 1 | grep -qF '(/etc/agentlab/agentlab.conf)' ||
    fail "config show does not read the conffile"

# One job, in a VM, with the installed programs. A private run dir: no daemon
# answers there, so `run` runs the engine in-process (a daemon of someone
# else's never gets the job); the state dir is the default one when it has
# the image, else the fixture's.
if [ -f /var/lib/agentlab/images/debian-12/manifest.json ]; then
    state=/var/lib/agentlab
else
    state=$image_state
fi
echo "image from $state"
printf '[agent]\nstate_dir = %s\nrun_dir = %s/run\nboot_timeout = 20m\n' "$state" "$tmp" \
    >"$tmp/agentlab.conf"
t0=$(date +%s)
out=$(AGENTLAB_CONFIG="$tmp/agentlab.conf" agentlab run -- echo ok 2>"$tmp/err") || {
    cat "$tmp/err"
    fail "agentlab run failed"
}
cat "$tmp/err"
[ "$out" = ok ] || fail "agentlab run printed \"$out\", want ok"
echo "agentlab run -- echo ok: ok in $(($(date +%s) - t0)) s"

# dpkg -r: programs gone; state and conffile kept.
dpkg -r agentlab
[ ! -e /usr/bin/agentlab ] && [ ! -e /usr/bin/agentlabd ] || fail "dpkg -r left the programs"
[ ! -e /usr/libexec/agentlab/agentlab-guest ] || fail "dpkg -r left the helper"
[ -d /var/lib/agentlab ] || fail "dpkg -r removed /var/lib/agentlab"
[ -f /etc/agentlab/agentlab.conf ] || fail "dpkg -r removed the conffile"
dpkg-query -W -f='${Status}\n' agentlab | grep -q 'config-files' ||
    fail "after dpkg -r the package is not in state config-files"
if [ "$state" = /var/lib/agentlab ]; then
    [ -f /var/lib/agentlab/images/debian-12/manifest.json ] || fail "the image is gone"
fi
# purge: the conffile goes, the state dir stays (jobs, images)
dpkg --purge agentlab >/dev/null
[ ! -e /etc/agentlab/agentlab.conf ] || fail "dpkg --purge kept the conffile"
[ -d /var/lib/agentlab ] || fail "dpkg --purge removed /var/lib/agentlab"
echo ok
