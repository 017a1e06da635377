#!/bin/sh
# Turns an agentlab golden image into a Proxmox VE template (see README.md).
#
#   make-template.sh VMID IMAGE_DIR [--storage STORAGE] [--bridge BRIDGE]
#                    [--name NAME] [--kernel-root DIR] [--dry-run]
#
# Run as root@pam on the PVE node. IMAGE_DIR is <state>/images/<name> (it
# holds manifest.json, disk.qcow2, vmlinuz, initrd.img).
set -eu

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 2 ] || usage
vmid=$1 dir=$2
shift 2
storage=local-lvm bridge= name= kroot=/var/lib/vz/agentlab dry=
while [ $# -gt 0 ]; do
    case "$1" in
    --storage) storage=$2; shift ;;
    --bridge) bridge=$2; shift ;;
    --name) name=$2; shift ;;
    --kernel-root) kroot=$2; shift ;;
    --dry-run) dry=1 ;;
    *) usage ;;
    esac
    shift
done

m="$dir/manifest.json"
[ -r "$m" ] || { echo "make-template: $m not found" >&2; exit 1; }
# manifest keys are one per line ("key": "value",)
get() { sed -n "s/^ *\"$1\": \"\(.*\)\",\{0,1\}$/\1/p" "$m" | head -n1; }
img=$(get name)
cmdline=$(get cmdline)
sha=$(get sha256)
[ -n "$img" ] && [ -n "$cmdline" ] && [ -n "$sha" ] || { echo "make-template: bad manifest $m" >&2; exit 1; }
case "$cmdline" in *"'"*) echo "make-template: cmdline contains a quote" >&2; exit 1 ;; esac
name=${name:-agentlab-$img}
kdir="$kroot/$img-$(printf '%.12s' "$sha")"

run() {
    echo "+ $*"
    [ -n "$dry" ] || "$@"
}

run mkdir -p "$kdir"
run cp "$dir/vmlinuz" "$dir/initrd.img" "$kdir/"
net=
[ -n "$bridge" ] && net="--net0 virtio,bridge=$bridge"
# shellcheck disable=SC2086
run qm create "$vmid" --name "$name" --ostype l26 --memory 2048 --cores 2 --cpu host \
    --scsihw virtio-scsi-single --serial0 socket --vga serial0 --agent enabled=1 \
    --tags agentlab $net
run qm disk import "$vmid" "$dir/disk.qcow2" "$storage"
# the imported disk is the VM's first unused disk
disk=$(qm config "$vmid" 2>/dev/null | sed -n 's/^unused0: //p')
[ -n "$disk" ] || disk="$storage:vm-$vmid-disk-0"
run qm set "$vmid" --virtio0 "$disk,discard=on" --boot order=virtio0
run qm set "$vmid" --ide2 "$storage:cloudinit" --ciuser agentlab
[ -n "$bridge" ] && run qm set "$vmid" --ipconfig0 ip=dhcp
run qm set "$vmid" --args "-kernel $kdir/vmlinuz -initrd $kdir/initrd.img -append '$cmdline'"
run qm template "$vmid"
echo "template $vmid ($name) ready; copy $kdir to every node that starts clones"
