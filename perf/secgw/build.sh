#!/bin/sh
# Builds DPDK's example ipsec-secgw (the perf lab's baseline) with the local vdev patch.
#
#   perf/secgw/build.sh OUTDIR
#
# Copies the example source shipped with DPDK (Debian: dpdk-doc, under
# /usr/share/dpdk/examples; override with DPDK_EXAMPLES=dir) to OUTDIR/src, applies
# vdev.patch from this directory, builds it with the example's own Makefile against the
# installed DPDK (pkg-config libdpdk, shared linkage) and leaves the binary at
# OUTDIR/ipsec-secgw. Does nothing when that binary is newer than the patch and this
# script. The compiler runs under `nice -n 19`.
set -eu

die() {
    echo "secgw build: $*" >&2
    exit 1
}

[ $# -eq 1 ] || die "usage: $0 OUTDIR"
out=$1
here=$(cd "$(dirname "$0")" && pwd)
patch_file=$here/vdev.patch
examples=${DPDK_EXAMPLES:-/usr/share/dpdk/examples}
src=$examples/ipsec-secgw
bin=$out/ipsec-secgw

[ -f "$patch_file" ] || die "missing $patch_file"

# Up to date? (-nt: newer modification time; false when the binary is missing.)
if [ "$bin" -nt "$patch_file" ] && [ "$bin" -nt "$here/build.sh" ] && [ -x "$bin" ]; then
    echo "secgw build: $bin is up to date"
    exit 0
fi

command -v pkg-config >/dev/null 2>&1 ||
    die "pkg-config not found (Debian: apt-get install pkg-config libdpdk-dev)"
pkg-config --exists libdpdk ||
    die "DPDK development files not found: pkg-config libdpdk failed (Debian: apt-get install libdpdk-dev)"
[ -f "$src/ipsec-secgw.c" ] && [ -f "$src/Makefile" ] ||
    die "DPDK example source not found at $src (Debian: apt-get install dpdk-doc, or set DPDK_EXAMPLES)"
for tool in make cc patch; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done

echo "secgw build: DPDK $(pkg-config --modversion libdpdk), source $src"
mkdir -p "$out"
rm -rf "$out/src" "$out/common"
cp -R "$src" "$out/src"
# The Makefile adds -I../common; copy it when the installation ships it.
if [ -d "$examples/common" ]; then
    cp -R "$examples/common" "$out/common"
fi
patch -p1 --forward --batch --silent -d "$out/src" <"$patch_file" ||
    die "vdev.patch does not apply to $src (another DPDK version?)"

log=$out/build.log
if ! nice -n 19 make -C "$out/src" shared >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "make failed (full log: $log)"
fi
cp "$out/src/build/ipsec-secgw-shared" "$bin.tmp"
mv -f "$bin.tmp" "$bin"
echo "secgw build: built $bin"
