#!/bin/bash
# Hands a NIC to DPDK on bare metal: binds PCI function(s) to vfio-pci (needs the IOMMU on:
# intel_iommu=on / amd_iommu=on), or gives them back to their kernel driver.
#   usage: bind-vfio.sh bind   0000:03:00.0 [...]
#          bind-vfio.sh unbind 0000:03:00.0 [...]
#          bind-vfio.sh status
# The interface disappears from the kernel while bound: do not bind the NIC you log in over.
set -euo pipefail
cmd=${1:-status}
shift || true

status() {
    for d in /sys/bus/pci/devices/*; do
        [ "$(cat "$d/class")" = 0x020000 ] || continue # Ethernet controllers
        drv=$(basename "$(readlink -f "$d/driver" 2>/dev/null)" 2>/dev/null || echo none)
        echo "$(basename "$d") driver=$drv numa_node=$(cat "$d/numa_node" 2>/dev/null || echo ?)"
    done
}

rebind() { # pci override
    local dev=/sys/bus/pci/devices/$1
    [ -d "$dev" ] || { echo "no PCI device $1" >&2; exit 1; }
    echo "$2" > "$dev/driver_override"
    if [ -e "$dev/driver" ]; then
        echo "$1" > "$dev/driver/unbind"
    fi
    echo "$1" > /sys/bus/pci/drivers_probe
    echo "$1 -> $(basename "$(readlink -f "$dev/driver" 2>/dev/null)" 2>/dev/null || echo none)"
}

case "$cmd" in
bind)
    modprobe vfio-pci
    for p in "$@"; do rebind "$p" vfio-pci; done
    ;;
unbind)
    for p in "$@"; do rebind "$p" ""; done
    ;;
status) status ;;
*) echo "usage: $0 bind|unbind PCI... | status" >&2; exit 2 ;;
esac
