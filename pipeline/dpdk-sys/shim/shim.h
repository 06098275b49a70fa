/* roamgate's C shim over DPDK: DPDK's fast-path calls (rte_eth_rx_burst, rte_pktmbuf_*) are
 * static inline functions in its headers, which no FFI can call. These wrappers are compiled
 * with the same flags as DPDK (pkg-config libdpdk) so they inline. The mbuf stays opaque to
 * Rust: every field access goes through here. */
#ifndef ROAMGATE_DPDK_SHIM_H
#define ROAMGATE_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

uint16_t rg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);
uint16_t rg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n);

struct rte_mbuf *rg_pktmbuf_alloc(struct rte_mempool *mp);
void rg_pktmbuf_free(struct rte_mbuf *m);

/* Data window of a single-segment mbuf. */
uint8_t *rg_mbuf_data(struct rte_mbuf *m);
uint16_t rg_mbuf_data_len(const struct rte_mbuf *m);
uint16_t rg_mbuf_headroom(const struct rte_mbuf *m);
uint16_t rg_mbuf_tailroom(const struct rte_mbuf *m);
uint16_t rg_mbuf_nb_segs(const struct rte_mbuf *m);
/* 0 on success, -1 without room (no change), like the DPDK calls they wrap. */
int rg_mbuf_prepend(struct rte_mbuf *m, uint16_t n);
int rg_mbuf_adj(struct rte_mbuf *m, uint16_t n);
int rg_mbuf_append(struct rte_mbuf *m, uint16_t n);
int rg_mbuf_trim(struct rte_mbuf *m, uint16_t n);

/* offsetof() of the rte_mbuf fields Rust reads and writes in place, in this order: buf_addr,
 * data_off, nb_segs, pkt_len, data_len, buf_len; then sizeof(struct rte_mbuf). */
void rg_mbuf_layout(uint32_t out[7]);

int rg_errno(void);
unsigned rg_lcore_id(void);
/* Gives the calling thread an lcore id (rte_thread_register) unless it has one: mempool
 * caches are per lcore, and a thread without one takes every mbuf from the pool's ring. 0: now
 * registered; 1: it already had an lcore id (an EAL thread); -1: failed (rte_errno). */
int rg_thread_register(void);
/* Releases the calling thread's lcore id. */
void rg_thread_unregister(void);

/* Configures port `port` with `nb_queues` rx and tx queues of `nb_desc` descriptors each,
 * all rx queues fed from `pool`, RSS over IP addresses when there is more than one queue,
 * promiscuous mode, and starts it. Returns 0 or a negative errno. */
int rg_port_setup(uint16_t port, uint16_t nb_queues, uint16_t nb_desc, struct rte_mempool *pool);

/* Steers ESP (IPv4 and IPv6, not UDP-encapsulated) by SPI with rte_flow: for every value v
 * of the SPI's top `bits` bits a rule to rx queue v % nb_queues, validated before it is
 * created. Returns the number of rules, or a negative errno with `why` filled (NUL-terminated,
 * at most why_len bytes) when the port refuses one; then none is left in place. */
int rg_flow_steer_esp(uint16_t port, uint16_t nb_queues, uint8_t bits, char *why,
		      size_t why_len);

/* The port's MAC address into mac[6]; 0 or a negative errno. */
int rg_port_mac(uint16_t port, uint8_t mac[6]);

/* Current link status: 1 up, 0 down, negative errno. */
int rg_port_link_up(uint16_t port);

/* Basic port counters (rte_eth_stats): 0 or a negative errno. */
int rg_port_stats(uint16_t port, uint64_t *ipackets, uint64_t *opackets, uint64_t *imissed,
                  uint64_t *ierrors, uint64_t *oerrors, uint64_t *rx_nombuf);

#endif
