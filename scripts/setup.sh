#!/bin/sh
# Install everything agentlab needs on Debian 12 and start the libvirt daemons.
# Idempotent: a second run only checks and returns in seconds.
set -eu

# scdoc renders the man pages at build time, man-db checks them (man_pages);
# debhelper and lintian build and check the Debian package (scripts/package.sh).
# faketime moves agentlabd's wall clock in the fault campaign (tests/faults/).
# git-lfs: the GitLab host checkout pulls Git LFS objects (runner/sources/gitlab_checkout.c).
# libxml2-utils: xmllint checks batch JUnit reports against tests/contracts/junit.xsd.
PKGS="build-essential cmake pkg-config git git-lfs ca-certificates
libvirt-dev libguestfs-dev libcurl4-openssl-dev libyajl-dev libuv1-dev
libcmocka-dev libsqlite3-dev sqlite3 libarchive-dev libinih-dev libhttp-parser-dev
libssl-dev zlib1g-dev
libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils
libguestfs-tools linux-image-amd64 mmdebstrap genisoimage
python3 openssl curl clang libclang-rt-14-dev valgrind chromium faketime libxml2-utils
cloud-init
scdoc man-db debhelper lintian"

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$'; then
        missing="$missing $p"
    fi
done

# cloud-init is here only for its schema validator (`cloud-init schema`,
# used by test_cloudinit). On a host that did not have it, keep it from ever
# running at boot; a host that already used cloud-init is left alone.
had_cloud_init=yes
case " $missing " in *" cloud-init "*) had_cloud_init=no ;; esac

if [ -n "$missing" ]; then
    log "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    # Third-party sources on a host may be unreachable; Debian's own are what we need.
    $SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq || log "apt-get update reported errors; continuing with what was fetched"
    # shellcheck disable=SC2086
    $SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing
else
    log "all packages present"
fi

if [ "$had_cloud_init" = no ] && [ ! -e /etc/cloud/cloud-init.disabled ]; then
    $SUDO mkdir -p /etc/cloud
    $SUDO touch /etc/cloud/cloud-init.disabled
fi

# libguestfs needs a readable kernel in /boot to build its appliance.
for k in /boot/vmlinuz-*; do
    [ -e "$k" ] || continue
    [ -r "$k" ] || $SUDO chmod 0644 "$k"
done

running() { pgrep -x "$1" >/dev/null 2>&1; }

if [ -d /run/systemd/system ]; then
    for u in virtlogd.socket libvirtd.socket libvirtd.service; do
        $SUDO systemctl start "$u" 2>/dev/null || true
    done
else
    if ! running virtlogd; then
        log "starting virtlogd"
        $SUDO virtlogd -d
    fi
    if ! running libvirtd; then
        log "starting libvirtd"
        $SUDO libvirtd -d
    fi
fi

# Wait until libvirtd answers (it takes a moment after -d).
i=0
while ! $SUDO virsh -c qemu:///system version >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        log "libvirtd did not come up"
        exit 1
    fi
    sleep 0.1
done
log "ready"
