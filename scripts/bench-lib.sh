# Shared by the bench scripts (sourced, not run): timing, medians, and the
# shell-recipe baseline VM that agentlab is compared with.

now_ms() { date +%s%3N; }
# median of one number a line (decimals allowed); "-" for none
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }
# col N FILE: the median of column N of FILE
col() { cut -d' ' -f"$1" "$2" | median; }

# bench_wait TRIES WHAT CMD...: runs CMD every 0.5 s until it succeeds; after
# TRIES failures prints "WHAT" and exits 1.
# (its own variables: shell functions share the caller's)
bench_wait() {
    bw_tries=$1 bw_what=$2
    shift 2
    bw_n=0
    until "$@"; do
        bw_n=$((bw_n + 1))
        [ $bw_n -lt "$bw_tries" ] || { echo "$bw_what"; exit 1; }
        sleep 0.5
    done
}

# baseline_once I: the usual shell recipe with the image in $img (kernel
# command line $cmdline) below $work: qemu-img create -b (overlay) +
# genisoimage (NoCloud seed) + virsh create, then wait for a runcmd marker
# on the serial console, then virsh destroy. Prints "provision boot first
# total" in ms: accepted -> domain started, started -> marker, accepted ->
# marker, accepted -> torn down.
# shellcheck disable=SC2154 # work, img and cmdline are the caller's
baseline_once() {
    d=$work/b$1
    mkdir -p "$d/seed"
    chmod 0711 "$d"
    t0=$(now_ms)
    qemu-img create -q -f qcow2 -b "$img/disk.qcow2" -F qcow2 "$d/overlay.qcow2"
    printf 'instance-id: bench-%s\nlocal-hostname: bench\n' "$1" >"$d/seed/meta-data"
    printf '#cloud-config\nruncmd:\n  - [sh, -c, "echo AGENTLAB-BENCH-READY > /dev/ttyS0"]\n' \
        >"$d/seed/user-data"
    genisoimage -quiet -output "$d/seed.iso" -volid cidata -joliet -rock \
        "$d/seed/meta-data" "$d/seed/user-data"
    cat >"$d/dom.xml" <<XML
<domain type='qemu'>
  <name>agentlab-bench-baseline</name>
  <memory unit='MiB'>1024</memory><vcpu>1</vcpu>
  <os><type arch='x86_64'>hvm</type><kernel>$img/vmlinuz</kernel><initrd>$img/initrd.img</initrd>
  <cmdline>$cmdline</cmdline></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='$d/overlay.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/>
      <source file='$d/seed.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <serial type='file'><source path='$d/console.log'/><target port='0'/></serial>
    <memballoon model='none'/>
  </devices>
</domain>
XML
    virsh -q create "$d/dom.xml" >/dev/null
    t1=$(now_ms)
    until grep -q AGENTLAB-BENCH-READY "$d/console.log" 2>/dev/null; do
        [ $(( $(now_ms) - t1 )) -lt 600000 ] || { echo "baseline VM never ran runcmd" >&2; exit 1; }
        sleep 0.05
    done
    t2=$(now_ms)
    virsh -q destroy agentlab-bench-baseline >/dev/null
    rm -rf "$d"
    t3=$(now_ms)
    echo "$((t1 - t0)) $((t2 - t1)) $((t2 - t0)) $((t3 - t0))"
}
