#!/bin/sh
# Imports "micro": the host's kernel and an initramfs whose PID 1
# (tests/guest_vm/vm_init.c) starts the real agentlab-guest on the job port.
# It boots in a few seconds under TCG and exercises the whole libvirt path
# (overlay, seed, domain, channel, job delivery, output, artifacts,
# teardown) without cloud-init; the job reaches it over the channel, as in a
# warm VM. Usage: micro_image.sh AGENTLAB AGENTLAB_GUEST VM_INIT
# (AGENTLAB_STATE_DIR says where the image goes).
# A test that needs a variant builds it the same way: MICRO_NAME names the
# image, MICRO_BINS adds host programs and MICRO_EXTRA is a directory copied
# over the root (e.g. the stand-in actions runner of github_test.py).
set -eu
agentlab=$1 helper=$2 init=$3
. "$(dirname "$0")/../support/skip.sh"
kver=$(ls /lib/modules | grep -m1 -- '-amd64$' || true)
kernel=/boot/vmlinuz-$kver
[ -n "$kver" ] && [ -r "$kernel" ] || al_skip "micro_image: no readable Debian kernel in /boot"
work=$(mktemp -d /tmp/agentlab-micro.XXXXXX)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/modules" "$root/etc" "$root/home/agentlab" \
    "$root/lib64" "$root/lib/x86_64-linux-gnu" "$root/proc" "$root/sys" "$root/dev" "$root/run" \
    "$root/tmp"
cp "$init" "$root/init"
cp "$helper" "$root/usr/local/bin/agentlab-guest"
# what test jobs use
for b in sh tar uname id cat cut sleep head dd sha256sum echo ls rm mkdir env yes true false \
    hostname wc seq printf touch ln date ${MICRO_BINS:-}; do
    p=""
    for d in /usr/bin /bin; do [ -x "$d/$b" ] && { p=$d/$b; break; }; done
    [ -n "$p" ] || continue
    cp "$p" "$root/bin/$b"
    ldd "$p" 2>/dev/null | awk '/=>/ {print $3}' | while read -r lib; do
        cp -n "$lib" "$root/lib/x86_64-linux-gnu/"
    done
done
cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
ln -s ../bin "$root/usr/bin"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    f=$(find "/lib/modules/$kver" -name "$m.ko*" | head -1)
    case "$f" in
    *.xz) xz -dc "$f" >"$root/modules/$m.ko" ;;
    *) cp "$f" "$root/modules/$m.ko" ;;
    esac
done
if [ -n "${MICRO_EXTRA:-}" ]; then
    cp -R "$MICRO_EXTRA/." "$root/"
fi
printf 'root:x:0:0:root:/root:/bin/sh\nagentlab:x:1000:1000::/home/agentlab:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nagentlab:x:1000:\n' >"$root/etc/group"
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) >"$work/initrd.gz"
"$agentlab" image import "${MICRO_NAME:-micro}" --force --kernel "$kernel" --initrd "$work/initrd.gz" \
    --cmdline "console=ttyS0 quiet panic=-1"
