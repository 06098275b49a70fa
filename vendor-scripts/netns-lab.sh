#!/bin/bash
# The network-namespace lab used by the end-to-end tests (and by hand):
#
#   PFX-lana          PFX-gwa                 PFX-net               PFX-gwb          PFX-lanb
#   lan0 10.1.0.10 -- lan [roamgate] wan -- to-a ] br0 [ to-b -- wan [roamgate] lan -- lan0 10.2.0.10
#        fd00:a::10                             "internet"                            fd00:b::10
#
# The gateway namespaces get no IP addresses: roamgate owns their "lan" and "wan" veths
# (AF_XDP or DPDK af_packet) and answers ARP and neighbour solicitations for its addresses.
# Hosts route the other site via their gateway; the gateways know their next hops' MACs
# statically (configs/netns-{a,b}.yaml). Offloads are off on
# every veth: a checksum left for "hardware" to fill in (CHECKSUM_PARTIAL) would reach the
# tunnel unfinished, and GSO super-frames are larger than any MTU.
#
# usage: netns-lab.sh up [PFX]     create (removing a previous lab of that prefix first)
#        netns-lab.sh down [PFX]   remove
#        netns-lab.sh rw-up [PFX]  the road-warrior lab of the IKE interop tests instead:
#            PFX-lan 10.9.0.10 -- lan [roamgate PFX-gw] wan 192.0.2.1 -- eth0 192.0.2.10 PFX-rw
#          (PFX-rw runs strongSwan; virtual IPs 10.99.0.0/24 are routed back via the gateway)
#        netns-lab.sh rw-down [PFX]
#        netns-lab.sh rw2q-up [PFX]  the road-warrior lab with two rx/tx queues on every veth
#            (a gateway of two workers, tests/workers_netns.rs); rw-down removes it
#        netns-lab.sh rwcl2q-up [PFX]  rw2q-up with roamgate as a site in PFX-rw (WAN eth0, LAN
#            lan): PFX-home 10.7.0.10 -- lan [PFX-rw] (two queues; 10.7.0.0/24 is routed back
#            via the gateway; rw-down removes it)
#        netns-lab.sh cl-up [PFX]  the client lab (roamgate client against a strongSwan gateway):
#            PFX-home 10.7.0.10 -- lan [roamgate client PFX-cl] wan 192.0.2.10 --
#              eth0 192.0.2.1 [PFX-sgw, strongSwan, forwarding] eth1 10.9.0.1 -- lan0 10.9.0.10 PFX-srv
#        netns-lab.sh cl-down [PFX]
#        netns-lab.sh mob-up [PFX]  the roaming lab of the MOBIKE tests: a client with two access
#            networks (192.0.2.0/24 and 198.51.100.0/24 on one link to a router) and a gateway
#            behind the router:
#            PFX-home 10.7.0.10 -- lan [PFX-cl] wan 192.0.2.10 -- eth0 [PFX-rtr] eth1 --
#              wan 203.0.113.1 [PFX-gw] lan 10.9.0.1 -- lan0 10.9.0.10 PFX-srv
#          (the client's kernel holds its WAN address: `roamgate client` follows it, so does
#          strongSwan; a roam is `ip addr add` of the new address, then `ip addr del` of the old)
#        netns-lab.sh mob-down [PFX]
#        netns-lab.sh ha-up [PFX]   the HA lab (tests/ha_failover.rs, configs/ha-a.yaml, ha-b.yaml):
#            the MOBIKE lab's client and router, and two gateways sharing 203.0.113.1 (WAN)
#            and 10.9.0.1 (LAN) on one bridge each side, joined by a sync link:
#              PFX-home 10.7.0.10 -- lan [PFX-cl] wan 192.0.2.10 -- eth0 [PFX-rtr] br1 --
#                wan [PFX-gwa] / wan [PFX-gwb] -- br0 [PFX-lsw] -- lan0 10.9.0.10 PFX-srv
#              sync 169.254.77.1 [PFX-gwa] -- sync 169.254.77.2 [PFX-gwb] (kernel TCP)
#              PFX-sw wan 100.64.0.20 -- eth1 [PFX-rtr] (a second road warrior: strongSwan)
#        netns-lab.sh ha-down [PFX]
#        netns-lab.sh hs-up [PFX]   the HA lab with the nodes' WAN on different subnets
#            (tests/ha_subnet.rs, configs/ha-subnet-a.yaml, ha-subnet-b.yaml: takeover by
#            announcement): as ha-up, but the router reaches node A on 203.0.113.0/24 (port pa)
#            and node B on 198.18.0.0/24 (port pb, MAC 02:00:00:00:71:03); the LAN side is
#            shared (10.9.0.1); strongSwan's namespace as in ha-up (it is redirected, RFC 5685):
#              PFX-home 10.7.0.10 -- lan [PFX-cl] wan 192.0.2.10 -- eth0 [PFX-rtr] pa --
#                wan 203.0.113.1 [PFX-gwa]; [PFX-rtr] pb -- wan 198.18.0.2 [PFX-gwb];
#                gwa/gwb lan -- br0 [PFX-lsw] -- lan0 10.9.0.10 PFX-srv; sync as in ha-up
#              PFX-sw wan 100.64.0.20 -- eth1 [PFX-rtr]
#        netns-lab.sh hs-down [PFX]
#        netns-lab.sh cluster-up [PFX]  the cluster lab (tests/cluster_move.rs, configs/cluster/):
#            the client side of the HA lab; edges PFX-e0, PFX-e1, PFX-e2 sharing the public
#            address 203.0.113.1 behind the router, each on its own router link (pN, router
#            MAC 02:00:00:00:72:0N) so `ip route replace 203.0.113.1/32 dev pN` steers the
#            clients to edge N; a LAN router PFX-lr (link lN 10.8.N.1 to edge N's lan 10.8.N.2,
#            10.9.0.1 to the server) with `ip route replace 10.99.0.0/24 via 10.8.N.2`; the
#            crypto node PFX-cn on a management bridge (169.254.80.1; edge N at 169.254.80.1N):
#              PFX-home 10.7.0.10 -- lan [PFX-cl] wan 192.0.2.10 -- eth0 [PFX-rtr] pN --
#                wan [PFX-eN] lan -- lN [PFX-lr] lan1 -- lan0 10.9.0.10 PFX-srv
#              PFX-sw eth0 198.51.100.10 (strongSwan) -- eth1 198.51.100.254 [PFX-rtr]
#        netns-lab.sh cluster-down [PFX]
#        netns-lab.sh encnode-up [PFX]  the cluster lab plus an encryption node (tests/cluster_encnode.rs,
#            configs/cluster/encryption-node.yaml): PFX-en's wan on the LAN router's x9
#            (10.8.9.1; 203.0.113.1/32 routed there: the edges pass filtered clients' ESP to it),
#            its lan 10.8.10.2 on y9 (10.8.10.1; the pool 10.99.0.0/24 routed there), mgmt
#            169.254.80.19 on the crypto node's bridge; the LAN router sends 192.0.2.0/24 and
#            198.51.100.0/24 (the two clients' access networks: the encryption node's ESP to
#            them) back through edge 0 (10.8.0.2); the server also holds 10.9.1.20 and 10.9.1.30 (the
#            filters' direct host and a dropped one), which the router in front routes to
#            edge 0:
#              [PFX-e0] lan -- l0 [PFX-lr] x9 -- wan [PFX-en] lan -- y9 [PFX-lr] lan1 -- PFX-srv
#        netns-lab.sh encnode-down [PFX]
#        netns-lab.sh mobnat-up [PFX]  the mobile-NAT lab (tests/mobile_nat.rs, configs/cluster/mobnat-*.yaml,
#            issue 21): cluster-up's client side, router in front and crypto node, but the
#            edges' LAN ports and the LAN router share ONE L2 segment (bridge br0 in PFX-lr,
#            10.8.0.1, MAC 02:00:00:00:81:00; edge N's lan 10.8.0.(2+N), MAC 02:00:00:00:82:0N,
#            on bridge port lN), so a masquerading address (10.8.0.100 edge a, .101 b, .102 c:
#            on no interface; the edges' data planes answer ARP for the ones they serve) moves
#            between edges by gratuitous ARP (arp_accept on br0). The server holds 10.9.0.20 and
#            10.9.0.30 besides 10.9.0.10 (destinations the access policy tells apart); the pools
#            10.99.0.0/24 and 10.98.0.0/24 are routed via edge a (traffic not masqueraded).
#            etcd (started by the test) listens on the crypto node's 169.254.80.1, which the
#            edges reach over the management bridge:
#              PFX-home 10.7.0.10 -- lan [PFX-cl] wan 192.0.2.10 -- eth0 [PFX-rtr] pN --
#                wan [PFX-eN] lan -- lN ] br0 10.8.0.1 [PFX-lr] lan1 10.9.0.1 -- lan0 10.9.0.10 PFX-srv
#              PFX-sw eth0 198.51.100.10 (strongSwan) -- eth1 198.51.100.254 [PFX-rtr]
#              [PFX-eN] mgmt 169.254.80.1N -- mN ] brm 169.254.80.1 [PFX-cn]
#        netns-lab.sh mobnat-down [PFX]
#        netns-lab.sh vcm-up [PFX]  the connectivity-manager lab (tests/vcm.rs, configs/vcm-gw.yaml):
#            two road warriors on separate access networks behind one router, the gateway
#            behind the router; the gateway path crosses PFX-dl, where the test runs
#            tests/tools/delay_bridge.py x0 x1 MS (no netem in this kernel):
#              PFX-a eth0 192.0.2.10 -- eth0 192.0.2.254 [PFX-rtr] eth2 198.51.100.254 -- eth0 198.51.100.10 PFX-b
#                                       eth1 203.0.113.254 -- x0 [PFX-dl] x1 -- wan 203.0.113.1 [PFX-gw] lan 10.9.0.1 -- lan0 10.9.0.10 PFX-srv
#            and two roamgate clients with a host each (tests/vcm.rs cases switch, return,
#            blackhole):
#              PFX-ha 10.7.1.10 -- lan [PFX-ca] wan 192.0.3.10 -- eth3 192.0.3.254 [PFX-rtr]
#              PFX-hb 10.7.2.10 -- lan [PFX-cb] wan 198.51.101.10 -- eth4 198.51.101.254 [PFX-rtr]
#            (eth4 also holds 172.16.9.254/24: an access network the gateway counts as inside
#            the protected network, `vcm.inside`, case inside), and two more roamgate clients
#            each behind a NAT namespace of its own (nftables masquerade, port-preserving, and
#            unsolicited inbound dropped: a home router; case nat):
#              PFX-hna 10.7.3.10 -- lan [PFX-cna] wan 192.168.1.10 -- in 192.168.1.1 [PFX-na]
#                eth0 100.64.1.2 -- eth5 100.64.1.1 [PFX-rtr]
#              PFX-hnb 10.7.4.10 -- lan [PFX-cnb] wan 192.168.2.10 -- in 192.168.2.1 [PFX-nb]
#                eth0 100.64.2.2 -- eth6 100.64.2.1 [PFX-rtr]
#        netns-lab.sh vcm-down [PFX]
#        netns-lab.sh group-up [PFX]  the group-mode lab (tests/group_sa.rs, G-IKEv2): a key server
#            and four branch gateways on one WAN segment (bridge br0 in PFX-wan), a LAN host
#            behind each gateway:
#              PFX-k eth0 192.0.2.100 (roamgate gcks, kernel UDP) -- k0 ] br0 [PFX-wan]
#              PFX-hN lan0 10.N.0.10 -- lan [PFX-gN] wan 192.0.2.N -- pN ] br0   (N = 1..4)
#            MACs: gN wan 02:00:00:00:0N:01, gN lan 02:00:00:00:0N:02, hN 02:00:00:00:0N:fe,
#            k 02:00:00:00:64:01
#        netns-lab.sh group-down [PFX]
#        netns-lab.sh exec PFX-NS cmd...   (= ip netns exec)
# PFX defaults to "rg". Needs root, iproute2 and ethtool.
set -euo pipefail

cmd=${1:-}
p=${2:-rg}
NSS="lana gwa net gwb lanb"
RW_NSS="lan gw rw"
CL_NSS="home cl sgw srv"
MOB_NSS="home cl rtr gw srv"
HA_NSS="home cl rtr gwa gwb lsw srv sw"
HS_NSS="home cl rtr gwa gwb lsw srv sw"
CLUSTER_NSS="home cl sw rtr e0 e1 e2 lr cn srv"
VCM_NSS="a b rtr dl gw srv ca cb ha hb na nb cna cnb hna hnb"
GROUP_NSS="wan k g1 g2 g3 g4 h1 h2 h3 h4"

offloads_off() { # ns dev
    ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
}

ns_del() { # names...
    for n in "$@"; do
        ip netns del "$p-$n" 2>/dev/null || true
    done
}

ns_add() { # names... (removing a previous lab of those names first)
    ns_del "$@"
    for n in "$@"; do
        ip netns add "$p-$n"
        ip -n "$p-$n" link set lo up
    done
}

no_ipv6() { # ns: a quiet kernel (no IPv6 autoconf/ND chatter)
    ip netns exec "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
    ip netns exec "$1" sysctl -qw net.ipv6.conf.default.disable_ipv6=1
}

links_up() { # ns devs...: offloads off, up
    local ns=$1
    shift
    for d in "$@"; do
        offloads_off "$ns" "$d"
        ip -n "$ns" link set dev "$d" up
    done
}

gateway() { # ns devs...: roamgate's devices, quiet kernel
    no_ipv6 "$1"
    links_up "$@"
}

host4() { # ns addr/len gw4: a host on lan0 with a default route
    links_up "$1" lan0
    ip -n "$1" addr add "$2" dev lan0
    ip -n "$1" route add default via "$3"
}

host() { # ns addr4 gw4 addr6 gw6
    host4 "$1" "$2/24" "$3"
    ip -n "$1" -6 addr add "$4/64" dev lan0 nodad
    ip -n "$1" -6 route add default via "$5"
}

down() { ns_del $NSS; }

up() {
    ns_add $NSS
    ip link add lan0 netns "$p-lana" address 02:00:00:00:0a:fe type veth \
        peer name lan netns "$p-gwa" address 02:00:00:00:0a:01
    ip link add wan netns "$p-gwa" address 02:00:00:00:aa:01 type veth \
        peer name to-a netns "$p-net"
    ip link add wan netns "$p-gwb" address 02:00:00:00:bb:01 type veth \
        peer name to-b netns "$p-net"
    ip link add lan0 netns "$p-lanb" address 02:00:00:00:0b:fe type veth \
        peer name lan netns "$p-gwb" address 02:00:00:00:0b:01

    # The internet: a bridge joining the two WAN links (capture here: it sees both ways).
    ip -n "$p-net" link add br0 type bridge
    no_ipv6 "$p-net"
    for d in to-a to-b; do
        ip -n "$p-net" link set dev "$d" master br0
    done
    links_up "$p-net" to-a to-b
    ip -n "$p-net" link set br0 up

    gateway "$p-gwa" lan wan
    gateway "$p-gwb" lan wan
    host "$p-lana" 10.1.0.10 10.1.0.1 fd00:a::10 fd00:a::1
    host "$p-lanb" 10.2.0.10 10.2.0.1 fd00:b::10 fd00:b::1
}

rw_down() { ns_del $RW_NSS home; }

rwcl_up() { # the two-queue road-warrior lab with roamgate as a site (or client) in PFX-rw
    rw_up 2
    ip -n "$p-lan" route add 10.7.0.0/24 via 10.9.0.1
    ns_add home
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe numtxqueues 2 numrxqueues 2 \
        type veth peer name lan netns "$p-rw" address 02:00:00:00:07:01 \
        numtxqueues 2 numrxqueues 2
    gateway "$p-rw" lan eth0
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
}

rw_up() { # [queues per veth, default 1]
    local q="numtxqueues ${1:-1} numrxqueues ${1:-1}"
    ns_add $RW_NSS
    # shellcheck disable=SC2086
    ip link add lan0 netns "$p-lan" address 02:00:00:00:09:fe $q type veth \
        peer name lan netns "$p-gw" address 02:00:00:00:09:01 $q
    # shellcheck disable=SC2086
    ip link add wan netns "$p-gw" address 02:00:00:00:02:01 $q type veth \
        peer name eth0 netns "$p-rw" address 02:00:00:00:02:0a $q
    gateway "$p-gw" lan wan
    links_up "$p-lan" lan0
    ip -n "$p-lan" addr add 10.9.0.10/24 dev lan0
    ip -n "$p-lan" route add 10.99.0.0/24 via 10.9.0.1
    links_up "$p-rw" eth0
    ip -n "$p-rw" addr add 192.0.2.10/24 dev eth0
}

cl_down() { ns_del $CL_NSS; }

cl_up() {
    ns_add $CL_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-sgw" address 02:00:00:00:02:01
    ip link add eth1 netns "$p-sgw" address 02:00:00:00:09:01 type veth \
        peer name lan0 netns "$p-srv" address 02:00:00:00:09:fe
    gateway "$p-cl" lan wan
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    ip netns exec "$p-sgw" sysctl -qw net.ipv4.ip_forward=1
    links_up "$p-sgw" eth0 eth1
    ip -n "$p-sgw" addr add 192.0.2.1/24 dev eth0
    ip -n "$p-sgw" addr add 10.9.0.1/24 dev eth1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
}

mob_down() { ns_del $MOB_NSS; }

mob_up() {
    ns_add $MOB_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:71:01
    ip link add eth1 netns "$p-rtr" address 02:00:00:00:71:02 type veth \
        peer name wan netns "$p-gw" address 02:00:00:00:03:01
    ip link add lan netns "$p-gw" address 02:00:00:00:09:01 type veth \
        peer name lan0 netns "$p-srv" address 02:00:00:00:09:fe
    gateway "$p-cl" lan wan
    gateway "$p-gw" lan wan
    # The client's first access network; its kernel holds the address.
    ip -n "$p-cl" addr add 192.0.2.10/24 dev wan
    # The router: both access networks on one link, the gateway's network on the other.
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.ip_forward=1
    links_up "$p-rtr" eth0 eth1
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" addr add 198.51.100.254/24 dev eth0
    ip -n "$p-rtr" addr add 203.0.113.254/24 dev eth1
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
}

ha_up() {
    ns_add $HA_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:71:01
    # The router's side of the gateways' WAN: a bridge with the router's address on it.
    ip -n "$p-rtr" link add br1 address 02:00:00:00:71:02 type bridge
    ip -n "$p-lsw" link add br0 type bridge
    for g in a b; do
        ip link add "p$g" netns "$p-rtr" type veth peer name wan netns "$p-gw$g" \
            address "02:00:00:00:03:0${g/a/1}"
        ip link add "l$g" netns "$p-lsw" type veth peer name lan netns "$p-gw$g" \
            address "02:00:00:00:09:0${g/a/1}"
        ip -n "$p-rtr" link set "p$g" master br1
        ip -n "$p-lsw" link set "l$g" master br0
        links_up "$p-rtr" "p$g"
        links_up "$p-lsw" "l$g"
    done
    ip link add sync netns "$p-gwa" type veth peer name sync netns "$p-gwb"
    ip link add lan0 netns "$p-srv" address 02:00:00:00:09:fe type veth \
        peer name ls netns "$p-lsw"
    ip -n "$p-lsw" link set ls master br0
    links_up "$p-lsw" ls br0
    gateway "$p-cl" lan wan
    gateway "$p-gwa" lan wan sync
    gateway "$p-gwb" lan wan sync
    ip -n "$p-gwa" addr add 169.254.77.1/30 dev sync
    ip -n "$p-gwb" addr add 169.254.77.2/30 dev sync
    ip -n "$p-cl" addr add 192.0.2.10/24 dev wan
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.ip_forward=1
    # Taken-over addresses: gratuitous ARP moves the router's entry at once.
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.conf.all.arp_accept=1
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.conf.br1.arp_accept=1
    links_up "$p-rtr" eth0 br1
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" addr add 198.51.100.254/24 dev eth0
    ip -n "$p-rtr" addr add 203.0.113.254/24 dev br1
    ip link add wan netns "$p-sw" address 02:00:00:00:64:14 type veth \
        peer name eth1 netns "$p-rtr" address 02:00:00:00:64:fe
    links_up "$p-rtr" eth1
    ip -n "$p-rtr" addr add 100.64.0.254/24 dev eth1
    no_ipv6 "$p-sw"
    links_up "$p-sw" wan
    ip -n "$p-sw" addr add 100.64.0.20/24 dev wan
    ip -n "$p-sw" route add default via 100.64.0.254
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
    ip netns exec "$p-srv" sysctl -qw net.ipv4.conf.all.arp_accept=1
    ip netns exec "$p-srv" sysctl -qw net.ipv4.conf.lan0.arp_accept=1
}

ha_down() {
    ns_del $HA_NSS
}

hs_down() { ns_del $HS_NSS; }

hs_up() {
    ns_add $HS_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:71:01
    # Each node's WAN on a router port of its own, in a subnet of its own.
    ip link add pa netns "$p-rtr" address 02:00:00:00:71:02 type veth \
        peer name wan netns "$p-gwa" address 02:00:00:00:03:01
    ip link add pb netns "$p-rtr" address 02:00:00:00:71:03 type veth \
        peer name wan netns "$p-gwb" address 02:00:00:00:03:02
    ip -n "$p-lsw" link add br0 type bridge
    for g in a b; do
        ip link add "l$g" netns "$p-lsw" type veth peer name lan netns "$p-gw$g" \
            address "02:00:00:00:09:0${g/a/1}"
        ip -n "$p-lsw" link set "l$g" master br0
        links_up "$p-lsw" "l$g"
    done
    ip link add sync netns "$p-gwa" type veth peer name sync netns "$p-gwb"
    ip link add lan0 netns "$p-srv" address 02:00:00:00:09:fe type veth \
        peer name ls netns "$p-lsw"
    ip -n "$p-lsw" link set ls master br0
    links_up "$p-lsw" ls br0
    gateway "$p-cl" lan wan
    gateway "$p-gwa" lan wan sync
    gateway "$p-gwb" lan wan sync
    ip -n "$p-gwa" addr add 169.254.77.1/30 dev sync
    ip -n "$p-gwb" addr add 169.254.77.2/30 dev sync
    ip -n "$p-cl" addr add 192.0.2.10/24 dev wan
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.ip_forward=1
    # A node announces its own address when it becomes active (gratuitous ARP).
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.conf.all.arp_accept=1
    links_up "$p-rtr" eth0 pa pb
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.conf.pa.arp_accept=1
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.conf.pb.arp_accept=1
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" addr add 203.0.113.254/24 dev pa
    ip -n "$p-rtr" addr add 198.18.0.254/24 dev pb
    ip link add wan netns "$p-sw" address 02:00:00:00:64:14 type veth \
        peer name eth1 netns "$p-rtr" address 02:00:00:00:64:fe
    links_up "$p-rtr" eth1
    ip -n "$p-rtr" addr add 100.64.0.254/24 dev eth1
    no_ipv6 "$p-sw"
    links_up "$p-sw" wan
    ip -n "$p-sw" addr add 100.64.0.20/24 dev wan
    ip -n "$p-sw" route add default via 100.64.0.254
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
    ip netns exec "$p-srv" sysctl -qw net.ipv4.conf.all.arp_accept=1
    ip netns exec "$p-srv" sysctl -qw net.ipv4.conf.lan0.arp_accept=1
}

vcm_down() { ns_del $VCM_NSS; }

vcm_up() {
    ns_add $VCM_NSS
    ip link add eth0 netns "$p-a" address 02:00:00:00:a1:0a type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:71:01
    ip link add eth0 netns "$p-b" address 02:00:00:00:b1:0a type veth \
        peer name eth2 netns "$p-rtr" address 02:00:00:00:71:03
    # The gateway path crosses PFX-dl, two ports the test bridges with a delay
    # (tests/tools/delay_bridge.py: this kernel has no netem); nothing passes until it runs.
    ip link add eth1 netns "$p-rtr" address 02:00:00:00:71:02 type veth \
        peer name x0 netns "$p-dl" address 02:00:00:00:d1:00
    ip link add x1 netns "$p-dl" address 02:00:00:00:d1:01 type veth \
        peer name wan netns "$p-gw" address 02:00:00:00:03:01
    gateway "$p-dl" x0 x1
    ip -n "$p-dl" link set dev x0 promisc on
    ip -n "$p-dl" link set dev x1 promisc on
    ip link add lan netns "$p-gw" address 02:00:00:00:09:01 type veth \
        peer name lan0 netns "$p-srv" address 02:00:00:00:09:fe
    gateway "$p-gw" lan wan
    ip netns exec "$p-rtr" sysctl -qw net.ipv4.ip_forward=1
    links_up "$p-rtr" eth0 eth1 eth2
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" addr add 198.51.100.254/24 dev eth2
    ip -n "$p-rtr" addr add 203.0.113.254/24 dev eth1
    for c in a:192.0.2 b:198.51.100; do
        ns=$p-${c%%:*}
        links_up "$ns" eth0
        ip -n "$ns" addr add "${c#*:}.10/24" dev eth0
        ip -n "$ns" route add default via "${c#*:}.254"
    done
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
    # Two roamgate clients (configs/vcm-client-{a,b}.yaml) on access networks of their own,
    # each with a host behind it (PFX-ha 10.7.1.10, PFX-hb 10.7.2.10); between them the
    # router forwards directly (eth3 <-> eth4), the gateway path crosses eth1.
    ip link add eth3 netns "$p-rtr" address 02:00:00:00:71:04 type veth \
        peer name wan netns "$p-ca" address 02:00:00:00:c1:0a
    ip link add eth4 netns "$p-rtr" address 02:00:00:00:71:05 type veth \
        peer name wan netns "$p-cb" address 02:00:00:00:c2:0a
    links_up "$p-rtr" eth3 eth4
    ip -n "$p-rtr" addr add 192.0.3.254/24 dev eth3
    ip -n "$p-rtr" addr add 198.51.101.254/24 dev eth4
    for c in a:192.0.3.10:1 b:198.51.101.10:2; do
        n=${c%%:*}
        rest=${c#*:}
        ip link add lan0 netns "$p-h$n" address "02:00:00:00:${n}7:fe" type veth \
            peer name lan netns "$p-c$n" address "02:00:00:00:${n}7:01"
        gateway "$p-c$n" lan wan
        ip -n "$p-c$n" addr add "${rest%%:*}/24" dev wan
        host4 "$p-h$n" "10.7.${rest#*:}.10/24" "10.7.${rest#*:}.1"
    done
    ip -n "$p-rtr" addr add 172.16.9.254/24 dev eth4
    vcm_nat_up
}

# The NAT namespaces of the vcm lab and the clients behind them (configs/vcm-client-n{a,b}.yaml).
vcm_nat_up() {
    for c in a:1:5 b:2:6; do
        n=${c%%:*}
        i=$(echo "$c" | cut -d: -f2)
        r=$(echo "$c" | cut -d: -f3)
        ip link add "eth$r" netns "$p-rtr" address "02:00:00:00:71:1$r" type veth \
            peer name eth0 netns "$p-n$n" address "02:00:00:00:d$i:02"
        ip link add in netns "$p-n$n" address "02:00:00:00:d$i:01" type veth \
            peer name wan netns "$p-cn$n" address "02:00:00:00:d$i:0a"
        ip link add lan0 netns "$p-hn$n" address "02:00:00:00:e$i:fe" type veth \
            peer name lan netns "$p-cn$n" address "02:00:00:00:e$i:01"
        links_up "$p-rtr" "eth$r"
        ip -n "$p-rtr" addr add "100.64.$i.1/24" dev "eth$r"
        links_up "$p-n$n" eth0 in
        ip -n "$p-n$n" addr add "100.64.$i.2/24" dev eth0
        ip -n "$p-n$n" addr add "192.168.$i.1/24" dev in
        ip -n "$p-n$n" route add default via "100.64.$i.1"
        ip netns exec "$p-n$n" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$p-n$n" nft -f - <<NFT
table ip nat {
    chain post { type nat hook postrouting priority 100; oifname "eth0" masquerade; }
}
table ip filter {
    chain input { type filter hook input priority 0; iifname "eth0" ct state new drop; }
}
NFT
        gateway "$p-cn$n" lan wan
        ip -n "$p-cn$n" addr add "192.168.$i.10/24" dev wan
        host4 "$p-hn$n" "10.7.$((i + 2)).10/24" "10.7.$((i + 2)).1"
    done
}

group_down() { ns_del $GROUP_NSS; }

group_up() {
    ns_add $GROUP_NSS
    no_ipv6 "$p-wan"
    ip -n "$p-wan" link add br0 type bridge
    ip link add eth0 netns "$p-k" address 02:00:00:00:64:01 type veth peer name k0 netns "$p-wan"
    ip -n "$p-wan" link set dev k0 master br0
    links_up "$p-wan" k0
    no_ipv6 "$p-k"
    links_up "$p-k" eth0
    ip -n "$p-k" addr add 192.0.2.100/24 dev eth0
    for n in 1 2 3 4; do
        ip link add wan netns "$p-g$n" address "02:00:00:00:0$n:01" type veth \
            peer name "p$n" netns "$p-wan"
        ip link add lan netns "$p-g$n" address "02:00:00:00:0$n:02" type veth \
            peer name lan0 netns "$p-h$n" address "02:00:00:00:0$n:fe"
        ip -n "$p-wan" link set dev "p$n" master br0
        links_up "$p-wan" "p$n"
        gateway "$p-g$n" lan wan
        no_ipv6 "$p-h$n"
        host4 "$p-h$n" "10.$n.0.10/24" "10.$n.0.1"
    done
    ip -n "$p-wan" link set br0 up
}

cluster_down() { ns_del $CLUSTER_NSS; }

cluster_up() {
    ns_add $CLUSTER_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:02:01
    ip -n "$p-cn" link add brm type bridge
    for n in 0 1 2; do
        ip link add "p$n" netns "$p-rtr" address "02:00:00:00:72:0$n" type veth \
            peer name wan netns "$p-e$n" address "02:00:00:00:03:0$n"
        ip link add "l$n" netns "$p-lr" address "02:00:00:00:81:0$n" type veth \
            peer name lan netns "$p-e$n" address "02:00:00:00:82:0$n"
        ip link add "m$n" netns "$p-cn" type veth peer name mgmt netns "$p-e$n"
        ip -n "$p-cn" link set "m$n" master brm
        links_up "$p-cn" "m$n"
        gateway "$p-e$n" lan wan mgmt
        ip -n "$p-e$n" addr add "169.254.80.1$n/24" dev mgmt
        links_up "$p-rtr" "p$n"
        ip -n "$p-rtr" addr add 203.0.113.254/24 dev "p$n" 2>/dev/null || true
        links_up "$p-lr" "l$n"
        ip -n "$p-lr" addr add "10.8.$n.1/24" dev "l$n"
    done
    links_up "$p-cn" brm
    ip -n "$p-cn" addr add 169.254.80.1/24 dev brm
    ip link add lan1 netns "$p-lr" address 02:00:00:00:09:01 type veth \
        peer name lan0 netns "$p-srv" address 02:00:00:00:09:fe
    gateway "$p-cl" lan wan
    for r in rtr lr; do
        ip netns exec "$p-$r" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$p-$r" sysctl -qw net.ipv4.conf.all.rp_filter=0
        ip netns exec "$p-$r" sysctl -qw net.ipv4.conf.default.rp_filter=0
    done
    for n in 0 1 2; do
        ip netns exec "$p-rtr" sysctl -qw "net.ipv4.conf.p$n.rp_filter=0"
        ip netns exec "$p-lr" sysctl -qw "net.ipv4.conf.l$n.rp_filter=0"
    done
    links_up "$p-rtr" eth0
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" route replace 203.0.113.1/32 dev p0
    # A kernel-networked client (strongSwan) on a second access network.
    ip link add eth0 netns "$p-sw" address 02:00:00:00:51:0a type veth \
        peer name eth1 netns "$p-rtr" address 02:00:00:00:51:01
    links_up "$p-sw" eth0
    ip -n "$p-sw" addr add 198.51.100.10/24 dev eth0
    ip -n "$p-sw" route add default via 198.51.100.254
    links_up "$p-rtr" eth1
    ip -n "$p-rtr" addr add 198.51.100.254/24 dev eth1
    links_up "$p-lr" lan1
    ip -n "$p-lr" addr add 10.9.0.1/24 dev lan1
    ip -n "$p-lr" route replace 10.99.0.0/24 via 10.8.0.2
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
}

mobnat_down() { ns_del $CLUSTER_NSS; }

# cluster_up with one LAN segment for every edge (a bridge in the LAN router): see the header.
mobnat_up() {
    ns_add $CLUSTER_NSS
    ip link add lan0 netns "$p-home" address 02:00:00:00:07:fe type veth \
        peer name lan netns "$p-cl" address 02:00:00:00:07:01
    ip link add wan netns "$p-cl" address 02:00:00:00:02:10 type veth \
        peer name eth0 netns "$p-rtr" address 02:00:00:00:02:01
    ip -n "$p-cn" link add brm type bridge
    no_ipv6 "$p-lr"
    ip -n "$p-lr" link add br0 address 02:00:00:00:81:00 type bridge
    for n in 0 1 2; do
        ip link add "p$n" netns "$p-rtr" address "02:00:00:00:72:0$n" type veth \
            peer name wan netns "$p-e$n" address "02:00:00:00:03:0$n"
        ip link add "l$n" netns "$p-lr" type veth \
            peer name lan netns "$p-e$n" address "02:00:00:00:82:0$n"
        ip link add "m$n" netns "$p-cn" type veth peer name mgmt netns "$p-e$n"
        ip -n "$p-cn" link set "m$n" master brm
        links_up "$p-cn" "m$n"
        gateway "$p-e$n" lan wan mgmt
        ip -n "$p-e$n" addr add "169.254.80.1$n/24" dev mgmt
        links_up "$p-rtr" "p$n"
        ip -n "$p-rtr" addr add 203.0.113.254/24 dev "p$n" 2>/dev/null || true
        ip -n "$p-lr" link set "l$n" master br0
        links_up "$p-lr" "l$n"
    done
    links_up "$p-cn" brm
    ip -n "$p-cn" addr add 169.254.80.1/24 dev brm
    links_up "$p-lr" br0
    ip -n "$p-lr" addr add 10.8.0.1/24 dev br0
    ip link add lan1 netns "$p-lr" address 02:00:00:00:09:01 type veth \
        peer name lan0 netns "$p-srv" address 02:00:00:00:09:fe
    gateway "$p-cl" lan wan
    for r in rtr lr; do
        ip netns exec "$p-$r" sysctl -qw net.ipv4.ip_forward=1
        ip netns exec "$p-$r" sysctl -qw net.ipv4.conf.all.rp_filter=0
        ip netns exec "$p-$r" sysctl -qw net.ipv4.conf.default.rp_filter=0
    done
    for n in 0 1 2; do
        ip netns exec "$p-rtr" sysctl -qw "net.ipv4.conf.p$n.rp_filter=0"
    done
    # Masquerading addresses move between edges: a gratuitous ARP creates or moves the
    # router's entry at once. Edges reach each other (the inter-node ESP) straight over br0,
    # or through the router when they send to its MAC: no redirects then.
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.br0.rp_filter=0
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.all.arp_accept=1
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.br0.arp_accept=1
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.all.send_redirects=0
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.br0.send_redirects=0
    links_up "$p-rtr" eth0
    ip -n "$p-rtr" addr add 192.0.2.254/24 dev eth0
    ip -n "$p-rtr" route replace 203.0.113.1/32 dev p0
    # A kernel-networked client (strongSwan) on a second access network.
    ip link add eth0 netns "$p-sw" address 02:00:00:00:51:0a type veth \
        peer name eth1 netns "$p-rtr" address 02:00:00:00:51:01
    links_up "$p-sw" eth0
    ip -n "$p-sw" addr add 198.51.100.10/24 dev eth0
    ip -n "$p-sw" route add default via 198.51.100.254
    links_up "$p-rtr" eth1
    ip -n "$p-rtr" addr add 198.51.100.254/24 dev eth1
    links_up "$p-lr" lan1
    ip -n "$p-lr" addr add 10.9.0.1/24 dev lan1
    # Traffic that is not masqueraded (ICMP, excluded destinations) goes back via edge a.
    ip -n "$p-lr" route replace 10.99.0.0/24 via 10.8.0.2
    ip -n "$p-lr" route replace 10.98.0.0/24 via 10.8.0.2
    host4 "$p-home" 10.7.0.10/24 10.7.0.1
    host4 "$p-srv" 10.9.0.10/24 10.9.0.1
    ip -n "$p-srv" addr add 10.9.0.20/24 dev lan0
    ip -n "$p-srv" addr add 10.9.0.30/24 dev lan0
}

encnode_down() { ns_del $CLUSTER_NSS en; }

encnode_up() {
    ns_del en
    cluster_up
    ns_add en
    ip link add x9 netns "$p-lr" address 02:00:00:00:81:09 type veth \
        peer name wan netns "$p-en" address 02:00:00:00:83:09
    ip link add y9 netns "$p-lr" address 02:00:00:00:81:0a type veth \
        peer name lan netns "$p-en" address 02:00:00:00:84:09
    ip link add m9 netns "$p-cn" type veth peer name mgmt netns "$p-en"
    ip -n "$p-cn" link set m9 master brm
    links_up "$p-cn" m9
    gateway "$p-en" lan wan mgmt
    ip -n "$p-en" addr add 169.254.80.19/24 dev mgmt
    links_up "$p-lr" x9 y9
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.x9.rp_filter=0
    ip netns exec "$p-lr" sysctl -qw net.ipv4.conf.y9.rp_filter=0
    ip -n "$p-lr" addr add 10.8.9.1/24 dev x9
    ip -n "$p-lr" addr add 10.8.10.1/24 dev y9
    ip -n "$p-lr" route replace 203.0.113.1/32 dev x9
    ip -n "$p-lr" route replace 10.99.0.0/24 via 10.8.10.2
    ip -n "$p-lr" route replace 192.0.2.0/24 via 10.8.0.2
    ip -n "$p-lr" route replace 198.51.100.0/24 via 10.8.0.2
    ip -n "$p-lr" route replace 10.9.1.0/24 via 10.9.0.10
    # The hosts clients may reach in the clear are routed to the edges by the router in
    # front (through edge 0 here: the edges answer ARP for the shared address).
    ip -n "$p-rtr" route replace 10.9.1.0/24 via 203.0.113.1 dev p0
    ip -n "$p-srv" addr add 10.9.1.20/32 dev lan0
    ip -n "$p-srv" addr add 10.9.1.30/32 dev lan0
}

case "$cmd" in
up) up ;;
down) down ;;
rw-up) rw_up ;;
rw2q-up) rw_up 2 ;;
rwcl2q-up) rwcl_up ;;
rw-down) rw_down ;;
cl-up) cl_up ;;
cl-down) cl_down ;;
mob-up) mob_up ;;
mob-down) mob_down ;;
ha-up) ha_up ;;
ha-down) ha_down ;;
hs-up) hs_up ;;
hs-down) hs_down ;;
cluster-up) cluster_up ;;
encnode-up) encnode_up ;;
encnode-down) encnode_down ;;
mobnat-up) mobnat_up ;;
mobnat-down) mobnat_down ;;
vcm-up) vcm_up ;;
vcm-down) vcm_down ;;
group-up) group_up ;;
group-down) group_down ;;
cluster-down) cluster_down ;;
exec)
    shift
    ns=$1
    shift
    exec ip netns exec "$ns" "$@"
    ;;
*)
    echo "usage: $0 up|down|rw-up|rw2q-up|rwcl2q-up|rw-down|cl-up|cl-down|mob-up|mob-down|ha-up|ha-down|hs-up|hs-down|cluster-up|cluster-down|encnode-up|encnode-down|mobnat-up|mobnat-down|vcm-up|vcm-down|group-up|group-down [prefix] | exec NS cmd..." >&2
    exit 2
    ;;
esac
