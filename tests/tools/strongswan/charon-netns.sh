#!/bin/bash
# Starts Debian's strongSwan 5.9.8 charon in network namespace NS with its own config, for the
# interop tests. Several charons can run at once: each gets a private /run (charon's pid file
# is compiled in as /var/run/charon.pid) and a vici socket under DIR.
#
#   charon-netns.sh start NS DIR     writes DIR/strongswan.conf (kernel-libipsec: userspace
#                                    ESP over a TUN device, this kernel has no ESP module),
#                                    starts charon, loads DIR/swanctl.conf, prints charon's pid
#   charon-netns.sh swanctl NS DIR ARGS...   runs swanctl against that charon
#
# FRAGMENT_SIZE (default 1280, strongSwan's own) is charon.fragment_size: the largest IP
# datagram of an IKE fragment it sends (RFC 7383).
#
# Credentials: when DIR has swanctl's credential folders (x509, x509ca, private, ecdsa, ...),
# swanctl loads them from there (SWANCTL_DIR=DIR) rather than from /etc/swanctl; swanctl.conf
# then names certificates relative to them (certs = rw.pem, cacerts = ca.pem).
#
# Facts learned on this machine (strongSwan 5.9.8, kernel-libipsec):
# - libipsec has no ESN: propose ESP without it ("aes128gcm16", not "aes128gcm16-esn").
# - libipsec sends ESP in UDP 4500 even without a NAT (raw_esp = no is its default); set
#   kernel-libipsec.raw_esp = yes for plain ESP when no NAT is detected.
# - libipsec cannot move an SA's addresses: after a MOBIKE update it rekeys the CHILD_SA.
set -euo pipefail
cmd=$1
ns=$2
dir=$3
shift 3
conf=$dir/strongswan.conf
vici=unix://$dir/charon.vici
if [ -d "$dir/x509" ] || [ -d "$dir/private" ] || [ -d "$dir/x509ca" ]; then
    export SWANCTL_DIR=$dir
fi
case "$cmd" in
start)
    cat > "$conf" <<CONF
charon {
  load_modular = yes
  install_routes = yes
  fragment_size = ${FRAGMENT_SIZE:-1280}
  plugins {
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec { load = yes
      raw_esp = ${RAW_ESP:-no} }
    vici { socket = $vici }
  }
  filelog {
    log { path = $dir/charon.log
      flush_line = yes
      time_format = %H:%M:%S
      default = 1
      ike = 2
      cfg = 2
      chd = 2 }
  }
}
CONF
    ip netns exec "$ns" unshare -m --propagation private sh -c \
        "mount -t tmpfs tmpfs /run && STRONGSWAN_CONF='$conf' exec /usr/lib/ipsec/charon" \
        > "$dir/charon.out" 2>&1 &
    pid=$!
    for _ in $(seq 50); do
        [ -S "$dir/charon.vici" ] && break
        sleep 0.1
    done
    # The socket file appears a moment before charon accepts on it.
    for _ in $(seq 50); do
        STRONGSWAN_CONF=$conf ip netns exec "$ns" swanctl --stats --uri "$vici" >/dev/null 2>&1 && break
        sleep 0.1
    done
    STRONGSWAN_CONF=$conf ip netns exec "$ns" swanctl --load-all --file "$dir/swanctl.conf" --uri "$vici" >&2
    echo "$pid"
    ;;
swanctl)
    STRONGSWAN_CONF=$conf exec ip netns exec "$ns" swanctl "$@" --uri "$vici"
    ;;
*)
    echo "usage: $0 start|swanctl NS DIR [args]" >&2
    exit 2
    ;;
esac
