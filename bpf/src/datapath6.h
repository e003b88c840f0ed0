/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv6 half of the programs in datapath.c (included from there): the same
 * steps as IPv4 on the *6 maps. No extension headers (such packets are
 * forwarded but not load-balanced), no hairpin. */
#pragma once

#include <linux/ipv6.h>

struct pkt6 {
	struct flow6_key flow; /* ports are 0 when !has_ports */
	__u32 l4_off;
	__u8 has_ports;
	__u8 tcp_flags;
	__u8 natted; /* as struct pkt */
};

#include "policy6.h"

static __always_inline int parse6(struct __sk_buff *skb, struct pkt6 *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IPV6))
		return -1;
	ip6 = (void *)(eth + 1);
	if ((void *)(ip6 + 1) > data_end)
		return -1;
	__builtin_memset(p, 0, sizeof(*p));
	__builtin_memcpy(&p->flow.saddr, &ip6->saddr, sizeof(p->flow.saddr));
	__builtin_memcpy(&p->flow.daddr, &ip6->daddr, sizeof(p->flow.daddr));
	p->flow.proto = ip6->nexthdr;
	p->l4_off = ETH_HLEN + sizeof(struct ipv6hdr);
	if (ip6->nexthdr == IPPROTO_TCP || ip6->nexthdr == IPPROTO_UDP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return -1;
		p->flow.sport = ports[0];
		p->flow.dport = ports[1];
		p->has_ports = 1;
		if (ip6->nexthdr == IPPROTO_TCP &&
		    bpf_skb_load_bytes(skb, p->l4_off + TCP_FLAGS, &p->tcp_flags, 1))
			return -1;
	}
	return 0;
}

static __always_inline int in6_eq(const struct in6 *a, const struct in6 *b)
{
	return a->w[0] == b->w[0] && a->w[1] == b->w[1] && a->w[2] == b->w[2] && a->w[3] == b->w[3];
}

/* IPv6 has no header checksum: only the L4 checksum (pseudo header) moves. */
static __always_inline int rewrite6(struct __sk_buff *skb, struct pkt6 *p, int is_src,
				    const struct in6 *to, __be16 new_port)
{
	struct in6 new_ip = *to;
	struct in6 old_ip = is_src ? p->flow.saddr : p->flow.daddr;
	__be16 old_port = is_src ? p->flow.sport : p->flow.dport;
	__u32 ip_off = ETH_HLEN + (is_src ? offsetof(struct ipv6hdr, saddr) : offsetof(struct ipv6hdr, daddr));
	__u32 port_off = p->l4_off + (is_src ? 0 : 2);
	__u32 csum_off = p->l4_off + (p->flow.proto == IPPROTO_TCP ? TCP_CSUM : UDP_CSUM);
	__u64 mangled = p->flow.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (!in6_eq(&old_ip, &new_ip)) {
		__s64 diff = bpf_csum_diff(old_ip.w, sizeof(old_ip), new_ip.w, sizeof(new_ip), 0);

		if (diff < 0)
			return -1;
		if (bpf_l4_csum_replace(skb, csum_off, 0, diff, mangled | BPF_F_PSEUDO_HDR))
			return -1;
		if (bpf_skb_store_bytes(skb, ip_off, &new_ip, sizeof(new_ip), 0))
			return -1;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, csum_off, old_port, new_port,
					mangled | sizeof(new_port)))
			return -1;
		if (bpf_skb_store_bytes(skb, port_off, &new_port, sizeof(new_port), 0))
			return -1;
	}
	if (is_src) {
		p->flow.saddr = new_ip;
		p->flow.sport = new_port;
	} else {
		p->flow.daddr = new_ip;
		p->flow.dport = new_port;
	}
	return 0;
}

static __always_inline __u32 flow_hash6(const struct flow6_key *f)
{
	__u32 h = mix32(f->proto + 0x9e3779b9);

#pragma unroll
	for (int i = 0; i < 4; i++) {
		h = mix32(h ^ f->saddr.w[i]);
		h = mix32(h ^ f->daddr.w[i]);
	}
	h = mix32(h ^ (((__u32)f->sport << 16) | f->dport));
	return h;
}

static __always_inline void forget_revnat6(struct pkt6 *p)
{
	struct flow6_key rev = {
		.saddr = p->flow.daddr,
		.daddr = p->flow.saddr,
		.sport = p->flow.dport,
		.dport = p->flow.sport,
		.proto = p->flow.proto,
	};

	if (p->flow.proto == IPPROTO_UDP || tcp_opens(p->tcp_flags))
		bpf_map_delete_elem(&cm_revnat6, &rev);
}

static __always_inline int lb6(struct __sk_buff *skb, struct pkt6 *p)
{
	struct svc6_key sk = {
		.vip = p->flow.daddr,
		.port = p->flow.dport,
		.proto = p->flow.proto,
	};
	struct backend6_value *be = NULL;
	struct lb_ct_value *ct, nct = {};
	struct svc_value *svc;
	struct flow6_key fwd = p->flow;
	int fresh = 0, kp;

	svc = bpf_map_lookup_elem(&cm_services6, &sk);
	if (!svc) {
		forget_revnat6(p);
		return 0;
	}
	ct = bpf_map_lookup_elem(&cm_lb_ct6, &fwd);
	kp = kube_proxy_flow(p->flow.proto, p->tcp_flags, ct);
	if (ct && ct->svc_id == svc->svc_id &&
	    !(p->flow.proto == IPPROTO_TCP && tcp_opens(p->tcp_flags))) {
		be = bpf_map_lookup_elem(&cm_backends6, &ct->backend_id);
		if (be && be->svc_id != svc->svc_id)
			be = NULL;
		nct.backend_id = ct->backend_id;
	}
	if (!be) {
		struct slot_key slot;
		__u32 *id;

		if (svc->nslots == 0)
			return no_backend();
		slot.svc_id = svc->svc_id;
		slot.slot = flow_hash6(&p->flow) % svc->nslots;
		id = bpf_map_lookup_elem(&cm_lb_slots, &slot);
		if (!id)
			return no_backend();
		nct.backend_id = *id;
		be = bpf_map_lookup_elem(&cm_backends6, &nct.backend_id);
		if (!be)
			return no_backend();
		nct.svc_id = svc->svc_id;
		fresh = 1;
	}

	struct flow6_key rev = {
		.saddr = be->ip,
		.daddr = p->flow.saddr,
		.sport = be->port,
		.dport = p->flow.sport,
		.proto = p->flow.proto,
	};
	struct revnat6_value *rn = bpf_map_lookup_elem(&cm_revnat6, &rev);

	if (kp && !(rn && in6_eq(&rn->vip, &sk.vip) && rn->vport == sk.port))
		return 0; /* as lb4's agent_flow */
	if (fresh && bpf_map_update_elem(&cm_lb_ct6, &fwd, &nct, BPF_ANY))
		return -1;
	if (fresh || !rn) {
		struct revnat6_value rn = { .vip = sk.vip, .vport = sk.port };

		if (bpf_map_update_elem(&cm_revnat6, &rev, &rn, BPF_ANY))
			return -1;
	}
	struct in6 ip = be->ip;
	p->natted = 1;
	return rewrite6(skb, p, 0, &ip, be->port);
}

/* revnat6 is revnat4 for IPv6: the reply of a service flow gets its
 * frontend back as source. */
static __always_inline int revnat6(struct __sk_buff *skb, struct pkt6 *p)
{
	struct revnat6_value *rn;
	struct in6 vip;

	if (!p->has_ports)
		return 0;
	rn = bpf_map_lookup_elem(&cm_revnat6, &p->flow);
	if (!rn)
		return 0;
	vip = rn->vip;
	p->natted = 1;
	return rewrite6(skb, p, 1, &vip, rn->vport);
}

static __always_inline int deliver_local6(struct __sk_buff *skb, struct pkt6 *p, __u32 src_id,
					  __u32 src_cluster)
{
	struct endpoint_value *ep;
	struct ipcache_value *dst;
	struct pol_ctx c = { .peer = src_id, .src_cluster = src_cluster };
	struct lpm6_key key = { .prefixlen = 128, .addr = p->flow.daddr };
	__u32 ifindex;

	ep = bpf_map_lookup_elem(&cm_endpoints6, &p->flow.daddr);
	if (!ep)
		return -1;
	ifindex = ep->ifindex;
	dst = bpf_map_lookup_elem(&cm_ipcache6, &key);
	c.subject = endpoint_identity(dst);
	if (pol_check6(skb, p, &c))
		return CM_DROP;
	if (revnat6(skb, p))
		return CM_DROP;
	to_host(skb);
	if (!p->natted && coexist())
		return CM_STACK;
	return bpf_redirect_peer(ifindex, 0);
}

/* tunnel_remote6 is the underlay address of the node holding daddr, 0 if
 * none (as tunnel_remote4). */
static __always_inline __be32 tunnel_remote6(const struct in6 *daddr)
{
	struct lpm6_key key = { .prefixlen = 128, .addr = *daddr };
	struct ipcache_value *ipc;
	struct tunnel_value *t;

	ipc = bpf_map_lookup_elem(&cm_ipcache6, &key);
	if (ipc && ipc->tunnel_ep)
		return ipc->tunnel_ep;
	t = bpf_map_lookup_elem(&cm_tunnel6, &key);
	return t ? t->node_ip : 0;
}

static __always_inline __u32 identity6(const struct in6 *saddr)
{
	struct lpm6_key key = { .prefixlen = 128, .addr = *saddr };

	return vni_identity(bpf_map_lookup_elem(&cm_ipcache6, &key));
}

static __always_inline int from_pod6(struct __sk_buff *skb)
{
	struct ipcache_value *ipc;
	struct lpm6_key key = { .prefixlen = 128 };
	struct pkt6 p;
	__be32 remote;
	__u32 src_id = UNKNOWN_IDENTITY, src_cluster = 0;
	int ret;

	if (parse6(skb, &p))
		return CM_NEXT;
	key.addr = p.flow.saddr;
	ipc = bpf_map_lookup_elem(&cm_ipcache6, &key);
	src_id = endpoint_identity(ipc);
	if (ipc)
		src_cluster = ipc->cluster_id;
	if (p.has_ports && lb6(skb, &p))
		return CM_DROP;
	{
		struct pol_ctx c = { .subject = src_id, .egress = 1, .src_cluster = src_cluster };

		key.addr = p.flow.daddr;
		ipc = bpf_map_lookup_elem(&cm_ipcache6, &key);
		c.peer = ipc ? ipc->identity : WORLD_IDENTITY;
		if (pol_check6(skb, &p, &c))
			return CM_DROP;
	}
	ret = deliver_local6(skb, &p, src_id, src_cluster);
	if (ret >= 0)
		return ret;
	if (!p.natted && coexist())
		return CM_STACK; /* as from_pod4 */
	remote = tunnel_remote6(&p.flow.daddr);
	if (!remote)
		return CM_NEXT;
	return encap(skb, remote, identity6(&p.flow.saddr));
}

static __always_inline int from_tunnel6(struct __sk_buff *skb)
{
	struct pkt6 p;
	__u32 src_id, src_cluster;
	int ret;

	if (parse6(skb, &p))
		return CM_NEXT;
	to_host(skb);
	src_id = tunnel_identity(skb, &src_cluster);
	ret = deliver_local6(skb, &p, src_id, src_cluster);
	return ret >= 0 ? ret : CM_NEXT;
}

/* to_pod6 is to_pod4 for IPv6. */
static __always_inline int to_pod6(struct __sk_buff *skb)
{
	struct lpm6_key key = { .prefixlen = 128 };
	struct bpf_fib_lookup fib = { .family = 10 /* AF_INET6 */ };
	struct ipcache_value *ipc;
	struct pol_ctx c = {};
	struct pkt6 p;

	if (parse6(skb, &p))
		return CM_NEXT;
	key.addr = p.flow.saddr;
	ipc = bpf_map_lookup_elem(&cm_ipcache6, &key);
	if (skb->ingress_ifindex) {
		__builtin_memcpy(fib.ipv6_dst, &p.flow.saddr, sizeof(fib.ipv6_dst));
		if (forwarded_peer(skb, ipc, &fib, &c)) {
			key.addr = p.flow.daddr;
			c.subject = endpoint_identity(bpf_map_lookup_elem(&cm_ipcache6, &key));
			if (pol_check6(skb, &p, &c))
				return CM_DROP;
			return revnat6(skb, &p) ? CM_DROP : CM_NEXT;
		}
	}
	pol_track6(skb, &p);
	return revnat6(skb, &p) ? CM_DROP : CM_NEXT;
}

static __always_inline int to_tunnel6(struct __sk_buff *skb)
{
	struct pkt6 p;
	__be32 remote;

	if (parse6(skb, &p))
		return CM_NEXT;
	remote = tunnel_remote6(&p.flow.daddr);
	if (!remote)
		return CM_DROP;
	return set_tunnel(skb, remote, identity6(&p.flow.saddr)) ? CM_DROP : CM_NEXT;
}
