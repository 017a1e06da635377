#!/bin/sh
# Boots a throwaway kernel+initramfs VM (TCG) whose PID 1 starts the real
# agentlab-guest in warm mode on a virtio-serial port, and plays the host
# over QEMU's chardev socket: late host connect, job + secrets over the
# port, live output, artifacts, EXIT, and the helper's own power-off.
# Usage: guest_vm_test.sh AGENTLAB_GUEST VM_INIT
set -eu
helper=$1 init=$2
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../support/skip.sh"
kver=$(ls /lib/modules | grep -m1 -- '-amd64$' || true)
kernel=/boot/vmlinuz-$kver
if [ -z "$kver" ] || [ ! -r "$kernel" ] || ! command -v qemu-system-x86_64 >/dev/null; then
    al_skip "guest_vm: no readable Debian kernel or no qemu-system-x86_64"
fi
work=$(mktemp -d /tmp/agentlab-guest-vm.XXXXXX)
trap 'kill $qpid 2>/dev/null || true; rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/modules" "$root/etc" "$root/home/agentlab" \
    "$root/lib64" "$root/lib/x86_64-linux-gnu" "$root/proc" "$root/sys" "$root/dev" "$root/run" "$root/tmp"
cp "$init" "$root/init"
cp "$helper" "$root/usr/local/bin/agentlab-guest"
for b in sh tar uname id cat cut sleep; do
    p=$(command -v $b)
    cp "$p" "$root/bin/$b"
    ldd "$p" | awk '/=>/ {print $3}' | while read -r lib; do cp -n "$lib" "$root/lib/x86_64-linux-gnu/"; done
done
cp /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
ln -s ../bin "$root/usr/bin"
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_console; do
    f=$(find "/lib/modules/$kver" -name "$m.ko*" | head -1)
    case "$f" in
    *.xz) xz -dc "$f" > "$root/modules/$m.ko" ;;
    *) cp "$f" "$root/modules/$m.ko" ;;
    esac
done
printf 'root:x:0:0:root:/root:/bin/sh\nagentlab:x:1000:1000::/home/agentlab:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nagentlab:x:1000:\n' > "$root/etc/group"
(cd "$root" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1) > "$work/initrd.gz"

sock=$work/port.sock
qemu-system-x86_64 -accel tcg -m 512 -smp 1 -nographic -no-reboot \
    -kernel "$kernel" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
    -device virtio-serial-pci -chardev socket,id=job,path="$sock",server=on,wait=off \
    -device virtserialport,chardev=job,name=org.agentlab.job \
    -serial file:"$work/console.log" -monitor none -display none &
qpid=$!
i=0
while [ ! -S "$sock" ]; do i=$((i + 1)); [ $i -lt 100 ] || exit 1; sleep 0.1; done
start=$(date +%s)
if ! python3 "$here/host.py" "$sock" 8; then
    echo "--- console"; cat "$work/console.log"; exit 1
fi
# the helper powered the VM off by itself
i=0
while kill -0 $qpid 2>/dev/null; do
    i=$((i + 1))
    if [ $i -gt 300 ]; then echo "FAIL: VM did not power off"; cat "$work/console.log"; exit 1; fi
    sleep 0.1
done
echo "VM run took $(( $(date +%s) - start ))s"
