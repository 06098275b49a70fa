#include <errno.h>
#include <stddef.h>
#include <string.h>

#include <rte_errno.h>
#include <rte_esp.h>
#include <rte_ethdev.h>
#include <rte_flow.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <stdio.h>

#include "shim.h"

uint16_t rg_rx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_rx_burst(port, queue, pkts, n);
}

uint16_t rg_tx_burst(uint16_t port, uint16_t queue, struct rte_mbuf **pkts, uint16_t n)
{
	return rte_eth_tx_burst(port, queue, pkts, n);
}

struct rte_mbuf *rg_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

void rg_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

uint8_t *rg_mbuf_data(struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, uint8_t *);
}

uint16_t rg_mbuf_data_len(const struct rte_mbuf *m)
{
	return m->data_len;
}

uint16_t rg_mbuf_headroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_headroom(m);
}

uint16_t rg_mbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

uint16_t rg_mbuf_nb_segs(const struct rte_mbuf *m)
{
	return m->nb_segs;
}

int rg_mbuf_prepend(struct rte_mbuf *m, uint16_t n)
{
	return rte_pktmbuf_prepend(m, n) == NULL ? -1 : 0;
}

int rg_mbuf_adj(struct rte_mbuf *m, uint16_t n)
{
	return rte_pktmbuf_adj(m, n) == NULL ? -1 : 0;
}

int rg_mbuf_append(struct rte_mbuf *m, uint16_t n)
{
	return rte_pktmbuf_append(m, n) == NULL ? -1 : 0;
}

int rg_mbuf_trim(struct rte_mbuf *m, uint16_t n)
{
	return rte_pktmbuf_trim(m, n);
}

void rg_mbuf_layout(uint32_t out[7])
{
	out[0] = offsetof(struct rte_mbuf, buf_addr);
	out[1] = offsetof(struct rte_mbuf, data_off);
	out[2] = offsetof(struct rte_mbuf, nb_segs);
	out[3] = offsetof(struct rte_mbuf, pkt_len);
	out[4] = offsetof(struct rte_mbuf, data_len);
	out[5] = offsetof(struct rte_mbuf, buf_len);
	out[6] = sizeof(struct rte_mbuf);
}

int rg_errno(void)
{
	return rte_errno;
}

unsigned rg_lcore_id(void)
{
	return rte_lcore_id();
}

int rg_thread_register(void)
{
	if (rte_lcore_id() != LCORE_ID_ANY)
		return 1;
	return rte_thread_register();
}

void rg_thread_unregister(void)
{
	rte_thread_unregister();
}

int rg_port_setup(uint16_t port, uint16_t nb_queues, uint16_t nb_desc, struct rte_mempool *pool)
{
	struct rte_eth_dev_info info;
	struct rte_eth_conf conf;
	int ret;
	uint16_t q;
	uint16_t nb_rxd = nb_desc, nb_txd = nb_desc;

	ret = rte_eth_dev_info_get(port, &info);
	if (ret != 0)
		return ret;
	if (nb_queues > info.max_rx_queues || nb_queues > info.max_tx_queues)
		return -EINVAL;

	memset(&conf, 0, sizeof(conf));
	if (nb_queues > 1) {
		conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
		conf.rx_adv_conf.rss_conf.rss_hf = RTE_ETH_RSS_IP & info.flow_type_rss_offloads;
	}
	/* Fast mbuf free when the driver has it: every mbuf of a queue comes from one pool and
	 * has a refcount of one, which is how roamgate uses them. */
	if (info.tx_offload_capa & RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE)
		conf.txmode.offloads |= RTE_ETH_TX_OFFLOAD_MBUF_FAST_FREE;

	ret = rte_eth_dev_configure(port, nb_queues, nb_queues, &conf);
	if (ret != 0)
		return ret;
	ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nb_rxd, &nb_txd);
	if (ret != 0)
		return ret;
	int socket = rte_eth_dev_socket_id(port);
	for (q = 0; q < nb_queues; q++) {
		ret = rte_eth_rx_queue_setup(port, q, nb_rxd, socket, NULL, pool);
		if (ret != 0)
			return ret;
		ret = rte_eth_tx_queue_setup(port, q, nb_txd, socket, NULL);
		if (ret != 0)
			return ret;
	}
	ret = rte_eth_dev_start(port);
	if (ret != 0)
		return ret;
	/* Not every virtual driver has promiscuous mode; a failure here is not fatal. */
	(void)rte_eth_promiscuous_enable(port);
	return 0;
}

int rg_port_mac(uint16_t port, uint8_t mac[6])
{
	struct rte_ether_addr a;
	int ret = rte_eth_macaddr_get(port, &a);
	if (ret != 0)
		return ret;
	memcpy(mac, a.addr_bytes, 6);
	return 0;
}

int rg_port_link_up(uint16_t port)
{
	struct rte_eth_link link;
	int ret = rte_eth_link_get_nowait(port, &link);
	if (ret != 0)
		return ret;
	return link.link_status == RTE_ETH_LINK_UP;
}

int rg_port_stats(uint16_t port, uint64_t *ipackets, uint64_t *opackets, uint64_t *imissed,
		  uint64_t *ierrors, uint64_t *oerrors, uint64_t *rx_nombuf)
{
	struct rte_eth_stats s;
	int ret = rte_eth_stats_get(port, &s);
	if (ret != 0)
		return ret;
	*ipackets = s.ipackets;
	*opackets = s.opackets;
	*imissed = s.imissed;
	*ierrors = s.ierrors;
	*oerrors = s.oerrors;
	*rx_nombuf = s.rx_nombuf;
	return 0;
}

/* One rule: ESP over IPv4 (ipv6 = 0) or IPv6 whose SPI's top `bits` bits are `value`, to
 * rx queue `queue`. Validated first; NULL with `err` filled when the port refuses it. */
static struct rte_flow *esp_rule(uint16_t port, int ipv6, uint8_t bits, uint32_t value,
				 uint16_t queue, struct rte_flow_error *err)
{
	struct rte_flow_attr attr = { .ingress = 1 };
	struct rte_flow_item_esp spec = { 0 }, mask = { 0 };
	uint32_t shift = 32u - bits;
	spec.hdr.spi = rte_cpu_to_be_32(value << shift);
	mask.hdr.spi = rte_cpu_to_be_32(((1u << bits) - 1u) << shift);
	struct rte_flow_item pattern[] = {
		{ .type = RTE_FLOW_ITEM_TYPE_ETH },
		{ .type = ipv6 ? RTE_FLOW_ITEM_TYPE_IPV6 : RTE_FLOW_ITEM_TYPE_IPV4 },
		{ .type = RTE_FLOW_ITEM_TYPE_ESP, .spec = &spec, .mask = &mask },
		{ .type = RTE_FLOW_ITEM_TYPE_END },
	};
	struct rte_flow_action_queue q = { .index = queue };
	struct rte_flow_action actions[] = {
		{ .type = RTE_FLOW_ACTION_TYPE_QUEUE, .conf = &q },
		{ .type = RTE_FLOW_ACTION_TYPE_END },
	};
	if (rte_flow_validate(port, &attr, pattern, actions, err) != 0)
		return NULL;
	return rte_flow_create(port, &attr, pattern, actions, err);
}

int rg_flow_steer_esp(uint16_t port, uint16_t nb_queues, uint8_t bits, char *why,
		      size_t why_len)
{
	struct rte_flow_error err;
	int made = 0;
	if (bits == 0 || bits > 16 || nb_queues < 2) {
		snprintf(why, why_len, "nothing to steer (%u queues, %u SPI bits)", nb_queues, bits);
		return -EINVAL;
	}
	for (int ipv6 = 0; ipv6 < 2; ipv6++) {
		for (uint32_t v = 0; v < (1u << bits); v++) {
			memset(&err, 0, sizeof(err));
			if (esp_rule(port, ipv6, bits, v, (uint16_t)(v % nb_queues), &err) != NULL) {
				made++;
				continue;
			}
			int e = rte_errno ? rte_errno : EINVAL;
			snprintf(why, why_len, "ESP over IPv%d, SPI top bits %u -> queue %u: %s (errno %d)",
				 ipv6 ? 6 : 4, v, v % nb_queues,
				 err.message ? err.message : rte_strerror(e), e);
			/* All or nothing: a half-steered port would split one SA's packets. */
			(void)rte_flow_flush(port, &err);
			return -e;
		}
	}
	return made;
}
