#!/usr/bin/env bash
# Installs what building and testing roamgate needs on Debian 12 (run as root).
#   libipsec-mb-dev  intel-ipsec-mb 1.3: the hot-path AES-GCM (pipeline feature `ipsecmb`)
#   libclang-dev     for bindgen (ipsecmb-sys, dpdk-sys)
#   make patch python3  building the ipsec-secgw baseline; the roaming tests' UDP stream tool
#   libdpdk-dev pkg-config   DPDK 22.11 for the DPDK port (feature `dpdk`); dpdk-doc ships the
#                    ipsec-secgw example source the perf lab builds as its baseline
#   tshark           independent check: decrypts roamgate's ESP with the exported keys
#   scapy + cryptography (PyPI)  second independent ESP implementation for the tests
#   cargo-fuzz       bounded fuzz runs of every parser (CI)
#   iproute2 ethtool iputils-ping iperf3   the network-namespace lab of the end-to-end tests
#                    (vendor-scripts/netns-lab.sh): veths, offloads off, ping and TCP through
#                    the tunnel
#   strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins
#                    the IKEv2 interop peer (kernel-libipsec: userspace ESP over TUN)
#   freeradius freeradius-utils   the RADIUS server of the EAP pass-through tests (and smbencrypt)
#   etcd-server etcd-client  etcd 3.4 + etcdctl: the cluster store's backend (tests/cluster_store.rs
#                    starts a 3-member cluster on loopback; roamgate perf cluster-store)
#   protobuf-compiler  protoc, which the etcd-client crate's build script needs for etcd's protos
#   openssl          makes the test PKI of the cluster store's TLS + auth test
#   nftables         the NAT namespaces of the connectivity-manager lab (netns-lab.sh vcm-up, tests/vcm.rs nat)
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
for p in libipsec-mb-dev libclang-dev clang make patch python3 tshark libdpdk-dev pkg-config dpdk-doc iproute2 ethtool iputils-ping iperf3 curl \
         strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
         freeradius freeradius-utils \
         etcd-server etcd-client protobuf-compiler openssl nftables; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
python3 -c "import scapy, cryptography" 2>/dev/null || \
  python3 -m pip install -q --disable-pip-version-check "scapy==2.6.1" "cryptography>=41"
# cargo-fuzz for the bounded fuzz runs in CI (it runs on stable with RUSTC_BOOTSTRAP=1, see
# pipeline/fuzz/run-all.sh).
command -v cargo-fuzz >/dev/null 2>&1 || cargo install --locked cargo-fuzz
