/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* IPv6 half of policy.h (included from datapath6.h): the same decision on
 * cm_pol_ct6. */
#pragma once

#define ICMPV6_ND_FIRST 133
#define ICMPV6_ND_LAST 137

/* pol_check6 is pol_check4 for IPv6 (no extension headers: a packet with
 * one is looked up without ports). */
static __always_inline int pol_check6(struct __sk_buff *skb, struct pkt6 *p, struct pol_ctx *c)
{
	struct pol_ct6_key fwd = {
		.saddr = p->flow.saddr,
		.daddr = p->flow.daddr,
		.proto = p->flow.proto,
		.egress = c->egress,
	};
	struct pol_ct_value nv = {};
	__u64 now = bpf_ktime_get_ns();

	if (p->flow.proto == PROTO_ICMPV6) {
		__u8 type;

		/* Neighbor discovery (router and neighbor solicitation and
		 * advertisement, redirect) is never subject to policy. */
		if (bpf_skb_load_bytes(skb, p->l4_off, &type, 1))
			return CM_DROP;
		if (type >= ICMPV6_ND_FIRST && type <= ICMPV6_ND_LAST)
			return 0;
	}
	if (pol_ports(skb, p->l4_off, p->flow.proto, 0, p->flow.sport, p->flow.dport, p->tcp_flags, c))
		return CM_DROP;
	fwd.sport = c->sport;
	fwd.dport = c->dport;
	if (!c->syn) {
		struct pol_ct6_key rev = {
			.saddr = fwd.daddr,
			.daddr = fwd.saddr,
			.sport = fwd.dport,
			.dport = fwd.sport,
			.proto = fwd.proto,
			.egress = !c->egress,
		};

		if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct6, &rev), fwd.proto, now))
			return 0;
		if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct6, &fwd), fwd.proto, now))
			return 0;
	}
	if (pol_denied(c, p->flow.saddr.w, p->flow.daddr.w, 6))
		return CM_DROP;
	nv.seen_ns = now;
	bpf_map_update_elem(&cm_pol_ct6, &fwd, &nv, BPF_ANY);
	return 0;
}


/* pol_track6 is pol_track4 for IPv6 (neighbor discovery is not tracked). */
static __always_inline void pol_track6(struct __sk_buff *skb, struct pkt6 *p)
{
	struct pol_ctx c = {};
	struct pol_ct6_key k = {
		.saddr = p->flow.saddr,
		.daddr = p->flow.daddr,
		.proto = p->flow.proto,
	};
	struct pol_ct_value nv = {};
	__u64 now = bpf_ktime_get_ns();

	if (!pol_trackable(skb, p->l4_off, p->flow.proto))
		return;
	if (pol_ports(skb, p->l4_off, p->flow.proto, 0, p->flow.sport, p->flow.dport, p->tcp_flags, &c))
		return;
	k.sport = c.sport;
	k.dport = c.dport;
	if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct6, &k), k.proto, now))
		return;
	nv.seen_ns = now;
	bpf_map_update_elem(&cm_pol_ct6, &k, &nv, BPF_ANY);
}
