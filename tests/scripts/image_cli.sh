#!/bin/sh
# `agentlab image` on bad input: unknown recipe, missing tools, no disk
# space, an image in use, SIGINT during a build. Each must end with one clear
# line, and no half-built image may be listed or left on disk.
#   image_cli.sh AGENTLAB
set -u
agentlab=$1
. "$(dirname "$0")/../support/skip.sh"
fails=0
skipped=0
tmp=$(mktemp -d /tmp/agentlab-image-cli.XXXXXX)
chmod 0755 "$tmp"
export AGENTLAB_STATE_DIR="$tmp/state" AGENTLAB_RUN_DIR="$tmp/run"
export AGENTLAB_CONFIG="$tmp/none.conf"
printf '' >"$AGENTLAB_CONFIG"
# a stand-in helper: these cases never get as far as installing it
mkdir -p "$tmp/helper"
printf '#!/bin/sh\nexit 0\n' >"$tmp/helper/agentlab-guest"
chmod 0755 "$tmp/helper/agentlab-guest"
printf '[Service]\nExecStart=/usr/local/bin/agentlab-guest\n' >"$tmp/helper/agentlab-guest.service"
export AGENTLAB_GUEST_HELPER="$tmp/helper/agentlab-guest"
mounted=
cleanup() {
    [ -n "$mounted" ] && umount "$mounted" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
    echo "FAIL: $*" >&2
    fails=$((fails + 1))
}

# cannot REASON...: a case that cannot run here fails, or is skipped when
# skipping is allowed (tests/support/skip.sh)
cannot() {
    if al_skip_note "image_cli: $*"; then
        skipped=$((skipped + 1))
    else
        fails=$((fails + 1))
    fi
}

# expect STATUS PATTERN CMD...: exit status and a one-line message matching PATTERN
expect() {
    want=$1 pattern=$2
    shift 2
    "$@" >"$tmp/out" 2>"$tmp/err"
    got=$?
    if [ "$got" -ne "$want" ]; then
        fail "$* exited $got, expected $want: $(cat "$tmp/err")"
    elif ! grep -q -- "$pattern" "$tmp/err" "$tmp/out"; then
        fail "$*: output lacks \"$pattern\": $(cat "$tmp/out" "$tmp/err")"
    elif [ "$want" -eq 1 ] && [ "$(grep -vc '^image .*: ' "$tmp/err")" -gt 1 ]; then
        fail "$*: more than one error line: $(cat "$tmp/err")"
    else
        echo "ok: $* -> $got ($(tail -n1 "$tmp/err" "$tmp/out" | grep -v '^==' | grep -v '^$' | head -n1))"
    fi
}

no_leftovers() {
    if ls -a "$AGENTLAB_STATE_DIR/images" 2>/dev/null | grep -q '^\.build-'; then
        fail "$1: a build directory was left behind: $(ls -a "$AGENTLAB_STATE_DIR/images")"
    fi
    if grep -q " $AGENTLAB_STATE_DIR" /proc/mounts; then
        fail "$1: mounts left under the state dir"
    fi
    if [ -n "$("$agentlab" image list --json | tr -d '[:space:][]')" ]; then
        fail "$1: an image is listed"
    fi
}

# help everywhere
for c in "" build list inspect rm; do
    # shellcheck disable=SC2086
    expect 0 "Usage: agentlab image" "$agentlab" image $c --help
done
expect 2 "unknown command" "$agentlab" image frobnicate
expect 2 "Usage: agentlab image inspect" "$agentlab" image inspect

# unknown recipe and image
expect 1 'unknown recipe "no-such-recipe" (available: ' "$agentlab" image build no-such-recipe
expect 1 'no image "debian-12"' "$agentlab" image inspect debian-12
expect 1 'no image "debian-12"' "$agentlab" image rm debian-12
expect 0 "no images" "$agentlab" image list

# missing tools
mkdir -p "$tmp/emptybin"
expect 1 "mmdebstrap not found in PATH" env PATH="$tmp/emptybin" "$agentlab" image build debian-12
no_leftovers "missing tools"

# missing helper
expect 1 "AGENTLAB_GUEST_HELPER" env AGENTLAB_GUEST_HELPER="$tmp/nope" "$agentlab" image build debian-12

# no disk space: a small tmpfs as the state dir
mkdir -p "$tmp/small"
if [ "$(id -u)" -ne 0 ]; then
    cannot "no-space case: needs root to mount a tmpfs"
elif ! mount -t tmpfs -o size=64m tmpfs "$tmp/small" 2>"$tmp/err"; then
    cannot "no-space case: mounting a tmpfs failed: $(cat "$tmp/err")"
else
    mounted="$tmp/small"
    expect 1 "not enough disk space" env AGENTLAB_STATE_DIR="$tmp/small" "$agentlab" image build debian-12
    umount "$tmp/small" && mounted=
fi

# an image in use cannot be removed; a stale user does not count
img="$AGENTLAB_STATE_DIR/images/fake"
mkdir -p "$img"
cat >"$img/manifest.json" <<'JSON'
{"schema": 1, "name": "fake", "disk": "disk.qcow2", "kernel": "vmlinuz", "initrd": "initrd.img",
 "cmdline": "root=/dev/vda rw", "created": "2026-01-01T00:00:00.000Z", "packages": {}}
JSON
sleep 300 &
user=$!
: >"$img/.inuse.$user"
expect 1 "in use by process $user" "$agentlab" image rm fake --force
kill "$user"
wait "$user" 2>/dev/null
expect 0 "fake" "$agentlab" image list
expect 0 "removed image fake" "$agentlab" image rm fake --force
[ -e "$img" ] && fail "image directory still there after rm"

# SIGINT while bootstrapping: exit 130, nothing left
if ! command -v mmdebstrap >/dev/null; then
    cannot "SIGINT case: mmdebstrap is not installed"
elif [ "$(id -u)" -ne 0 ]; then
    cannot "SIGINT case: needs root for the bootstrap"
else
    "$agentlab" image build debian-12 >"$tmp/out" 2>"$tmp/err" &
    pid=$!
    i=0
    while [ $i -lt 600 ] && ! grep -q "installing\|extracting\|downloading" "$tmp/err"; do
        sleep 0.1
        i=$((i + 1))
    done
    kill -INT "$pid"
    wait "$pid"
    st=$?
    if [ "$st" -ne 130 ]; then
        fail "SIGINT during the build: exit $st, expected 130: $(tail -n 3 "$tmp/err")"
    elif ! grep -q "interrupted" "$tmp/err"; then
        fail "SIGINT during the build: no message: $(tail -n 3 "$tmp/err")"
    else
        echo "ok: SIGINT during bootstrap -> 130 ($(tail -n1 "$tmp/err"))"
    fi
    no_leftovers "SIGINT"
    sleep 1
    if pgrep -f "mmdebstrap.*$AGENTLAB_STATE_DIR" >/dev/null; then
        fail "SIGINT: mmdebstrap still running"
        pkill -f "mmdebstrap.*$AGENTLAB_STATE_DIR"
    fi
fi

if [ "$fails" -ne 0 ]; then
    exit "$fails"
elif [ "$skipped" -ne 0 ]; then
    echo "image_cli: passed, $skipped case(s) skipped"
    exit 77
fi
echo "image_cli: all passed"
