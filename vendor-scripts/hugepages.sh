#!/bin/bash
# Reserves hugepages for DPDK on bare metal and mounts hugetlbfs (tests and the veth lab run
# with --no-huge and need none of this).
#   usage: hugepages.sh PAGES [2M|1G]     e.g. hugepages.sh 1024      (2 GiB of 2 MiB pages)
#          hugepages.sh 0                  release them
# Per NUMA node reservations: write the node's own nr_hugepages instead
# (/sys/devices/system/node/nodeN/hugepages/...); DPDK wants memory on the NIC's node.
set -euo pipefail
pages=${1:?usage: hugepages.sh PAGES [2M|1G]}
size=${2:-2M}
case "$size" in
2M) dir=/sys/kernel/mm/hugepages/hugepages-2048kB ;;
1G) dir=/sys/kernel/mm/hugepages/hugepages-1048576kB ;;
*) echo "size must be 2M or 1G" >&2; exit 2 ;;
esac
[ -d "$dir" ] || { echo "this kernel has no $size hugepages ($dir)" >&2; exit 1; }
echo "$pages" > "$dir/nr_hugepages"
got=$(cat "$dir/nr_hugepages")
echo "$size hugepages: $got reserved (asked $pages)"
if [ "$pages" != 0 ] && ! mountpoint -q /dev/hugepages; then
    mkdir -p /dev/hugepages
    mount -t hugetlbfs -o "pagesize=$size" nodev /dev/hugepages
fi
[ "$got" = "$pages" ] || { echo "fewer pages than asked: memory is fragmented; reserve at boot (hugepages= on the kernel command line)" >&2; exit 1; }
