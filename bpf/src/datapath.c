// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* The Clustermesh datapath: tc programs attached (with tcx, or tc clsact on
 * kernels before 6.6) on the host side of every pod veth (cm_from_pod) and on
 * the node's vxlan external device (cm_from_tunnel at ingress, cm_to_tunnel
 * at egress). See README.md for the packet walk. IPv4 only. */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "datapath.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* Verdicts (tcx and tc clsact): CM_NEXT lets the next program (or the
 * stack) decide, CM_STACK hands the packet to the host stack. */
#define CM_NEXT TC_ACT_UNSPEC
#define CM_STACK TC_ACT_OK
#define CM_DROP TC_ACT_SHOT

#define IP_OFF ETH_HLEN
#define IP_CSUM_OFF (ETH_HLEN + offsetof(struct iphdr, check))
#define IP_SRC_OFF (ETH_HLEN + offsetof(struct iphdr, saddr))
#define IP_DST_OFF (ETH_HLEN + offsetof(struct iphdr, daddr))
#define TCP_CSUM 16
#define UDP_CSUM 6
#define TCP_FLAGS 13
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10
#define IP_MF 0x2000
#define IP_OFFSET 0x1fff
#define WORLD_IDENTITY 2
/* Source of hairpinned service traffic (a pod reaching itself through a
 * frontend): 169.254.42.1, as Cilium's IPv4 loopback address. */
#define HAIRPIN_IP bpf_htonl(0xa9fe2a01)

/* The parsed part of an IPv4 packet that the programs look at. */
struct pkt {
	struct flow_key flow; /* ports are 0 when !has_ports */
	__u32 l4_off;
	__u8 has_ports;
	__u8 tcp_flags;
	__u8 natted; /* translated by a frontend or reverse NAT: ours to deliver */
	__u8 frag;   /* a fragment: no L4 header to look at */
};

static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;

	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return -1;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end || ip->ihl < 5)
		return -1;
	__builtin_memset(p, 0, sizeof(*p));
	p->flow.saddr = ip->saddr;
	p->flow.daddr = ip->daddr;
	p->flow.proto = ip->protocol;
	p->l4_off = ETH_HLEN + ip->ihl * 4;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		p->frag = 1;
		return 0; /* fragments carry no (or partial) L4 header */
	}
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, p->l4_off, ports, sizeof(ports)))
			return -1;
		p->flow.sport = ports[0];
		p->flow.dport = ports[1];
		p->has_ports = 1;
		if (ip->protocol == IPPROTO_TCP &&
		    bpf_skb_load_bytes(skb, p->l4_off + TCP_FLAGS, &p->tcp_flags, 1))
			return -1;
	}
	return 0;
}

/* tcp_opens reports whether a TCP packet opens a connection (SYN without
 * ACK). */
static __always_inline int tcp_opens(__u8 flags)
{
	return (flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

#include "policy.h"

/* coexist reports whether the node runs beside a primary CNI (CM_F_COEXIST). */
static __always_inline int coexist(void)
{
	struct config_value *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&cm_config, &zero);
	return cfg && (cfg->flags & CM_F_COEXIST);
}

/* Rewrites the source (is_src) or destination address and port of the packet
 * and fixes the IPv4 and L4 checksums (incrementally, pseudo header included). */
static __always_inline int rewrite(struct __sk_buff *skb, struct pkt *p, int is_src,
				   __be32 new_ip, __be16 new_port)
{
	__be32 old_ip = is_src ? p->flow.saddr : p->flow.daddr;
	__be16 old_port = is_src ? p->flow.sport : p->flow.dport;
	__u32 ip_off = is_src ? IP_SRC_OFF : IP_DST_OFF;
	__u32 port_off = p->l4_off + (is_src ? 0 : 2);
	__u32 csum_off = p->l4_off + (p->flow.proto == IPPROTO_TCP ? TCP_CSUM : UDP_CSUM);
	__u64 mangled = p->flow.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;

	if (old_ip != new_ip) {
		if (bpf_l4_csum_replace(skb, csum_off, old_ip, new_ip,
					mangled | BPF_F_PSEUDO_HDR | sizeof(new_ip)))
			return -1;
		if (bpf_l3_csum_replace(skb, IP_CSUM_OFF, old_ip, new_ip, sizeof(new_ip)))
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

static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* A deterministic hash of the flow: the same 5-tuple picks the same slot even
 * without a CT entry (e.g. after LRU eviction). */
static __always_inline __u32 flow_hash(const struct flow_key *f)
{
	__u32 h = mix32(f->proto + 0x9e3779b9);

	h = mix32(h ^ f->saddr);
	h = mix32(h ^ f->daddr);
	h = mix32(h ^ (((__u32)f->sport << 16) | f->dport));
	return h;
}

/* A flow that does not go through a frontend and uses the tuple of an earlier
 * service flow (same client port, same backend) must not be reverse-NATed:
 * forget the stale entry when such a flow starts (TCP SYN; every UDP packet). */
static __always_inline void forget_revnat(struct pkt *p)
{
	struct flow_key rev = {
		.saddr = p->flow.daddr,
		.daddr = p->flow.saddr,
		.sport = p->flow.dport,
		.dport = p->flow.sport,
		.proto = p->flow.proto,
	};

	if (p->flow.proto == IPPROTO_UDP || tcp_opens(p->tcp_flags))
		bpf_map_delete_elem(&cm_revnat, &rev);
}

/* kube_proxy_flow reports whether a packet to a frontend may belong to a
 * connection kube-proxy translated (ct: the flow's entry in the agent's
 * service conntrack, NULL if none): in coexistence mode (CM_F_COEXIST), a
 * TCP packet that does not open a connection, of a flow without a CT entry.
 * Unless the reverse NAT the agent recorded for the flow shows it is the
 * agent's (its CT entry evicted: agent_flow), such a connection was opened
 * before the agent programmed the Service and is left untranslated, so the
 * host's conntrack keeps carrying it to the backend kube-proxy chose;
 * translating it anew would move it to a backend (or a tuple) that knows
 * nothing of it and answers with a reset. */
static __always_inline int kube_proxy_flow(__u8 proto, __u8 tcp_flags, const void *ct)
{
	return proto == IPPROTO_TCP && !ct && !tcp_opens(tcp_flags) && coexist();
}

/* agent_flow reports whether the reverse NAT entry rn (of the reply tuple
 * towards the backend the slot table picks) stands for the frontend sk: the
 * agent translated the flow, whose CT entry the LRU evicted. */
static __always_inline int agent_flow(const struct revnat_value *rn, const struct svc_key *sk)
{
	return rn && rn->vip == sk->vip && rn->vport == sk->port;
}

/* no_backend is lb4's and lb6's verdict on a packet to a frontend without a
 * backend to pick (a Service without ready endpoints, a global Service whose
 * local and remote backends are all gone): dropped, except beside kube-proxy
 * (CM_F_COEXIST), where it goes on untranslated, every protocol, so that
 * kube-proxy's rule for a Service without endpoints rejects it (ICMP port
 * unreachable) and the client fails at once instead of waiting for a
 * timeout. Its egress is decided against the frontend's address. */
static __always_inline int no_backend(void)
{
	return coexist() ? 0 : -1;
}

/* Service load balancing: if the packet targets a frontend, pick a backend
 * (CT entry of the flow first; a new TCP SYN or a vanished backend selects
 * again from the weighted slot table), record the reverse NAT and DNAT.
 * Beside kube-proxy a mid-stream TCP packet of a flow the agent never
 * translated is left alone (kube_proxy_flow), and so is every packet to a
 * frontend without a backend (no_backend). */
static __always_inline int lb4(struct __sk_buff *skb, struct pkt *p)
{
	struct svc_key sk = {
		.vip = p->flow.daddr,
		.port = p->flow.dport,
		.proto = p->flow.proto,
	};
	struct backend_value *be = NULL;
	struct lb_ct_value *ct, nct = {};
	struct svc_value *svc;
	struct flow_key fwd = p->flow;
	int fresh = 0, kp;

	svc = bpf_map_lookup_elem(&cm_services, &sk);
	if (!svc) {
		forget_revnat(p);
		return 0;
	}
	ct = bpf_map_lookup_elem(&cm_lb_ct, &fwd);
	kp = kube_proxy_flow(p->flow.proto, p->tcp_flags, ct);
	if (ct && ct->svc_id == svc->svc_id &&
	    !(p->flow.proto == IPPROTO_TCP && tcp_opens(p->tcp_flags))) {
		be = bpf_map_lookup_elem(&cm_backends, &ct->backend_id);
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
		slot.slot = flow_hash(&p->flow) % svc->nslots;
		id = bpf_map_lookup_elem(&cm_lb_slots, &slot);
		if (!id)
			return no_backend();
		nct.backend_id = *id;
		be = bpf_map_lookup_elem(&cm_backends, &nct.backend_id);
		if (!be)
			return no_backend();
		nct.svc_id = svc->svc_id;
		fresh = 1;
	}

	/* A client that is its own backend would receive a packet from its own
	 * address, which its stack drops: the source becomes HAIRPIN_IP. */
	int hairpin = be->ip == p->flow.saddr;
	struct flow_key rev = {
		.saddr = be->ip,
		.daddr = hairpin ? HAIRPIN_IP : p->flow.saddr,
		.sport = be->port,
		.dport = p->flow.sport,
		.proto = p->flow.proto,
	};
	if (kp && !agent_flow(bpf_map_lookup_elem(&cm_revnat, &rev), &sk))
		return 0;
	if (fresh && bpf_map_update_elem(&cm_lb_ct, &fwd, &nct, BPF_ANY))
		return -1;
	if (fresh || !bpf_map_lookup_elem(&cm_revnat, &rev)) {
		struct revnat_value rn = { .vip = sk.vip, .vport = sk.port };

		if (bpf_map_update_elem(&cm_revnat, &rev, &rn, BPF_ANY))
			return -1;
	}
	if (rewrite(skb, p, 0, be->ip, be->port))
		return -1;
	p->natted = 1;
	if (hairpin)
		return rewrite(skb, p, 1, HAIRPIN_IP, p->flow.sport);
	return 0;
}

/* A reply of a hairpinned flow (pod -> HAIRPIN_IP) goes back into the pod as
 * coming from the frontend. */
static __always_inline int hairpin_reply(struct __sk_buff *skb, struct pkt *p)
{
	struct revnat_value *rn;
	__be32 pod = p->flow.saddr;
	__be32 vip;
	__be16 vport;

	rn = bpf_map_lookup_elem(&cm_revnat, &p->flow);
	if (!rn)
		return -1;
	vip = rn->vip;
	vport = rn->vport;
	if (rewrite(skb, p, 1, vip, vport))
		return -1;
	p->natted = 1;
	return rewrite(skb, p, 0, pod, p->flow.dport);
}

/* Reverse NAT of a reply from a backend to a client of a frontend. */
static __always_inline int revnat4(struct __sk_buff *skb, struct pkt *p)
{
	struct revnat_value *rn;

	if (!p->has_ports)
		return 0;
	rn = bpf_map_lookup_elem(&cm_revnat, &p->flow);
	if (!rn)
		return 0;
	p->natted = 1;
	return rewrite(skb, p, 1, rn->vip, rn->vport);
}

/* Decapsulated frames carry the sending tunnel device's MAC: the stack
 * would drop them as for another host. */
static __always_inline void to_host(struct __sk_buff *skb)
{
	if (skb->pkt_type != PACKET_HOST)
		bpf_skb_change_type(skb, PACKET_HOST);
}

/* Delivers to a local endpoint (reverse-NATing replies on the way) by moving
 * the packet straight into the pod's namespace; returns -1 if the destination
 * is not local. In coexistence mode only the packets we translated (service
 * traffic, whose NAT the host's conntrack never sees) are ours: every other
 * one goes to the host stack, where the primary CNI and kube-proxy decide.
 * The endpoint's ingress policy is enforced first (src_id: the source's
 * identity; skip_policy: hairpinned traffic of a pod to itself). */
static __always_inline int deliver_local(struct __sk_buff *skb, struct pkt *p, __u32 src_id,
					 __u32 src_cluster, int skip_policy)
{
	struct endpoint_value *ep;
	struct ipcache_value *dst;
	__u32 ifindex;

	ep = bpf_map_lookup_elem(&cm_endpoints, &p->flow.daddr);
	if (!ep)
		return -1;
	ifindex = ep->ifindex;
	if (!skip_policy) {
		struct pol_ctx c = { .peer = src_id, .src_cluster = src_cluster };

		dst = bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, p->flow.daddr });
		c.subject = endpoint_identity(dst);
		if (pol_check4(skb, p, &c))
			return CM_DROP;
	}
	if (revnat4(skb, p))
		return CM_DROP;
	/* The inner MAC may not be ours (decapsulated traffic): the stack
	 * drops packets for another host, the pod's stack only looks at
	 * pkt_type once the packet is inside its namespace. */
	to_host(skb);
	if (!p->natted && coexist())
		return CM_STACK;
	return bpf_redirect_peer(ifindex, 0);
}

/* Sets the tunnel key towards remote (an IPv4 underlay address): the VNI
 * carries the source's security identity (as Cilium does). */
static __always_inline int set_tunnel(struct __sk_buff *skb, __be32 remote, __u32 identity)
{
	struct bpf_tunnel_key key = {};

	key.tunnel_id = identity & 0xffffff;
	key.remote_ipv4 = bpf_ntohl(remote);
	key.tunnel_ttl = 64;
	return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX) ? -1 : 0;
}

/* Encapsulates towards remote through the vxlan external device. */
static __always_inline int encap(struct __sk_buff *skb, __be32 remote, __u32 identity)
{
	struct config_value *cfg;
	__u32 zero = 0;

	cfg = bpf_map_lookup_elem(&cm_config, &zero);
	if (!cfg || !cfg->tunnel_ifindex)
		return CM_DROP;
	if (set_tunnel(skb, remote, identity))
		return CM_DROP;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* tunnel_remote4 is the underlay address of the node holding daddr (the
 * ipcache entry's tunnel endpoint, else the cm_tunnel route), 0 if none. */
static __always_inline __be32 tunnel_remote4(__be32 daddr)
{
	struct ipcache_value *ipc;
	struct tunnel_value *t;

	ipc = bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, daddr });
	if (ipc && ipc->tunnel_ep)
		return ipc->tunnel_ep;
	t = bpf_map_lookup_elem(&cm_tunnel, &(struct lpm4_key){ 32, daddr });
	return t ? t->node_ip : 0;
}

/* identity4 is the security identity saddr carries in the VNI (world if
 * unknown or a CIDR identity). */
static __always_inline __u32 identity4(__be32 saddr)
{
	return vni_identity(bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, saddr }));
}

static __always_inline int from_pod4(struct __sk_buff *skb)
{
	struct ipcache_value *ipc;
	struct pkt p;
	__be32 remote;
	__u32 src_id = UNKNOWN_IDENTITY, src_cluster = 0;
	int ret, hairpin = 0;

	if (parse(skb, &p))
		return CM_NEXT;
	/* The source is a pod of this node: an identity of 0 is one the agent
	 * does not know yet (matched only by rules for every peer). */
	ipc = bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, p.flow.saddr });
	src_id = endpoint_identity(ipc);
	if (ipc)
		src_cluster = ipc->cluster_id;
	if (p.has_ports && p.flow.daddr == HAIRPIN_IP) {
		if (hairpin_reply(skb, &p))
			return CM_DROP;
		hairpin = 1;
	} else if (p.has_ports && lb4(skb, &p)) {
		return CM_DROP;
	}
	hairpin |= p.flow.saddr == HAIRPIN_IP;

	/* Egress policy of the source, on the translated destination. */
	if (!hairpin) {
		struct pol_ctx c = { .subject = src_id, .egress = 1, .src_cluster = src_cluster };
		struct ipcache_value *dst;

		dst = bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, p.flow.daddr });
		c.peer = dst ? dst->identity : WORLD_IDENTITY;
		if (pol_check4(skb, &p, &c))
			return CM_DROP;
	}

	ret = deliver_local(skb, &p, src_id, src_cluster, hairpin);
	if (ret >= 0)
		return ret;
	/* Coexistence: a packet no program translated is the host's to route
	 * (the CNI's routes; the agent's routes of remote pod CIDRs into the
	 * tunnel device, whose egress program sets the tunnel key), so that
	 * the host's conntrack and FORWARD rules see both directions of every
	 * flow they see one of. */
	if (!p.natted && coexist())
		return CM_STACK;
	remote = tunnel_remote4(p.flow.daddr);
	if (!remote)
		return CM_NEXT;
	return encap(skb, remote, identity4(p.flow.saddr));
}

static __always_inline int from_tunnel4(struct __sk_buff *skb)
{
	struct pkt p;
	__u32 src_id, src_cluster;
	int ret;

	if (parse(skb, &p))
		return CM_NEXT;
	to_host(skb);
	src_id = tunnel_identity(skb, &src_cluster);
	ret = deliver_local(skb, &p, src_id, src_cluster, 0);
	return ret >= 0 ? ret : CM_NEXT;
}

/* coexist_pod_source reports whether, beside a primary CNI, a forwarded
 * packet's source is decided by its ipcache entry's identity (ipc, not
 * NULL): another node (remote-node) or a pod (identity 0 while unknown, or
 * an allocated one). A pod of this node is decided here too: its packets
 * to a pod's address were decided where it sent them (deliver_local; a new
 * connection is decided again here with the same verdict, a later packet
 * is established), but the host may have translated the destination (a
 * kube-proxy ClusterIP) after cm_from_pod saw it. Every other entry (host,
 * a cluster range's world entry, any other reserved identity) is the
 * host's path. */
static __always_inline int coexist_pod_source(const struct ipcache_value *ipc)
{
	__u32 id = ipc->identity;

	return id == REMOTE_NODE_IDENTITY || id == UNKNOWN_IDENTITY || id >= FIRST_POD_IDENTITY;
}

/* forwarded_peer fills c->peer (and c->src_cluster for a pod) with the
 * identity by which cm_to_pod decides a packet the node forwards (ipc: its
 * source's ipcache entry), and returns 0 when the packet is the host's path and not decided:
 * - a CIDR identity (outside the cluster, in a prefix a policy names);
 * - in full mode world (no entry, or the world entry of a local prefix)
 *   and remote-node (the own cluster's other nodes, remote clusters'
 *   nodes);
 * - beside a primary CNI, remote-node and the own cluster's pods by their
 *   identity (coexist_pod_source), and world only when the
 *   cluster's ranges of the packet's family are known
 *   (CM_F_COEXIST_WORLD4/6) and the source has no entry at all: the world
 *   entries there are the own cluster's ranges (its pod CIDRs, the primary
 *   CNI's ranges, with its gateways and pods not known yet).
 * Never out of the tunnel device (decided at cm_from_tunnel), nor when the
 * source is local (an address of this node: NAT by the host, such as
 * kube-proxy's masquerade; also an address without a route back, which the
 * lookup cannot tell apart). */
static __always_inline int forwarded_peer(struct __sk_buff *skb, const struct ipcache_value *ipc,
					  struct bpf_fib_lookup *fib, struct pol_ctx *c)
{
	struct config_value *cfg;
	__u32 zero = 0;

	if (ipc && identity_is_cidr(ipc->identity)) {
		c->peer = ipc->identity;
		return 1;
	}
	cfg = bpf_map_lookup_elem(&cm_config, &zero);
	if (!cfg || skb->ingress_ifindex == cfg->tunnel_ifindex)
		return 0;
	if (cfg->flags & CM_F_COEXIST) {
		__u32 known = fib->family == 2 /* AF_INET */ ? CM_F_COEXIST_WORLD4 : CM_F_COEXIST_WORLD6;

		if (ipc) {
			if (!coexist_pod_source(ipc))
				return 0;
			c->peer = ipc->identity;
			if (c->peer != REMOTE_NODE_IDENTITY)
				c->src_cluster = ipc->cluster_id;
		} else if (cfg->flags & known) {
			c->peer = WORLD_IDENTITY;
		} else {
			return 0;
		}
	} else if (!ipc || ipc->identity == WORLD_IDENTITY) {
		c->peer = WORLD_IDENTITY;
	} else if (ipc->identity == REMOTE_NODE_IDENTITY) {
		c->peer = REMOTE_NODE_IDENTITY;
	} else {
		return 0;
	}
	fib->ifindex = skb->ingress_ifindex;
	return bpf_fib_lookup(skb, fib, sizeof(*fib), 0) != BPF_FIB_LKUP_RET_NOT_FWDED;
}

/* Packets the host stack delivers to a pod (the egress of its host veth;
 * bpf_redirect_peer skips it, so these are the host's): tracked for the
 * pod's replies. A packet the node forwards (not its own: ingress_ifindex
 * set) from an address of a CIDR identity (outside the cluster, in a prefix
 * a policy names), of world or remote-node, or beside a primary CNI of a
 * pod (forwarded_peer), is decided by the pod's ingress
 * policy; any other is the host's path and never dropped. Then the reply of
 * a service flow cm_from_pod translated and handed to the host (beside a
 * primary CNI, a backend the CNI routes: another node of the own cluster,
 * an address outside the pod network) is reverse-NATed here, as
 * deliver_local does for the replies it delivers. */
static __always_inline int to_pod4(struct __sk_buff *skb)
{
	struct ipcache_value *ipc;
	struct bpf_fib_lookup fib = { .family = 2 /* AF_INET */ };
	struct pol_ctx c = {};
	struct pkt p;

	if (parse(skb, &p))
		return CM_NEXT;
	ipc = bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, p.flow.saddr });
	if (skb->ingress_ifindex) {
		fib.ipv4_dst = p.flow.saddr;
		if (forwarded_peer(skb, ipc, &fib, &c)) {
			c.subject = endpoint_identity(bpf_map_lookup_elem(&cm_ipcache, &(struct lpm4_key){ 32, p.flow.daddr }));
			if (pol_check4(skb, &p, &c))
				return CM_DROP;
			return revnat4(skb, &p) ? CM_DROP : CM_NEXT;
		}
	}
	pol_track4(skb, &p);
	return revnat4(skb, &p) ? CM_DROP : CM_NEXT;
}

/* Packets the host stack routed into the tunnel device (coexistence mode)
 * get their tunnel key here; those our programs redirected carry one. */
static __always_inline int to_tunnel4(struct __sk_buff *skb)
{
	struct pkt p;
	__be32 remote;

	if (parse(skb, &p))
		return CM_NEXT;
	remote = tunnel_remote4(p.flow.daddr);
	if (!remote)
		return CM_DROP; /* the device cannot send without a key */
	return set_tunnel(skb, remote, identity4(p.flow.saddr)) ? CM_DROP : CM_NEXT;
}

#include "datapath6.h"

static __always_inline __u16 eth_proto(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return 0;
	return eth->h_proto;
}

SEC("tcx/ingress")
int cm_from_pod(struct __sk_buff *skb)
{
	switch (eth_proto(skb)) {
	case bpf_htons(ETH_P_IP):
		return from_pod4(skb);
	case bpf_htons(ETH_P_IPV6):
		return from_pod6(skb);
	}
	return CM_NEXT;
}

SEC("tcx/ingress")
int cm_from_tunnel(struct __sk_buff *skb)
{
	switch (eth_proto(skb)) {
	case bpf_htons(ETH_P_IP):
		return from_tunnel4(skb);
	case bpf_htons(ETH_P_IPV6):
		return from_tunnel6(skb);
	}
	return CM_NEXT;
}

SEC("tcx/egress")
int cm_to_pod(struct __sk_buff *skb)
{
	switch (eth_proto(skb)) {
	case bpf_htons(ETH_P_IP):
		return to_pod4(skb);
	case bpf_htons(ETH_P_IPV6):
		return to_pod6(skb);
	}
	return CM_NEXT;
}

SEC("tcx/egress")
int cm_to_tunnel(struct __sk_buff *skb)
{
	struct bpf_tunnel_key key;

	if (!bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return CM_NEXT; /* redirected by cm_from_pod with its key */
	switch (eth_proto(skb)) {
	case bpf_htons(ETH_P_IP):
		return to_tunnel4(skb);
	case bpf_htons(ETH_P_IPV6):
		return to_tunnel6(skb);
	}
	return CM_DROP;
}
