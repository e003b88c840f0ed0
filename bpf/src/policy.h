/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Network policy: maps, verdicts, connection tracking and drop events
 * (included from datapath.c). Egress is enforced in cm_from_pod at the
 * source endpoint, ingress at the destination endpoint when one of our
 * programs delivers to it (deliver_local). See README.md, "Policy". */
#pragma once

/* Policy map key. An LPM trie over everything after prefixlen: the fields up
 * to and including pad2 always match in full (POL_FIXED_BITS); proto and
 * dport may be wildcarded: prefixlen POL_FIXED_BITS is every protocol,
 * +8 one protocol and every port, +8+n a port prefix of n bits (a port range
 * is written as the prefixes that cover it). Multi-byte fields are in
 * network order so that prefixes compare the most significant bits first. */
struct policy_key {
	__u32 prefixlen;
	__u8 egress; /* 0: ingress, 1: egress */
	__u8 deny;   /* 1: a deny entry (looked up before the allow entries) */
	__u16 pad;
	__be32 subject; /* identity of the local endpoint the policy is for */
	__be32 peer;    /* identity of the other side; 0: every peer */
	__u8 pad2;
	__u8 proto;
	__be16 dport;
};

#define POL_FIXED_BITS 104
#define POL_FULL_BITS 128

struct policy_value {
	__u32 rule; /* the agent's id of the deciding rule (drop events name it) */
	__u32 pad;
};

/* Per local identity: is it in default deny in a direction? */
struct pol_mode_value {
	__u8 enforced[2]; /* [0] ingress, [1] egress */
	__u16 pad;
};

/* A node whose underlay address may send us tunnelled traffic: the VNI's
 * identity is believed only if it lies in [id_lo, id_hi) (its cluster's
 * range) or is reserved (< 256; host is taken as remote-node). */
struct node_value {
	__u32 cluster_id;
	__u32 id_lo;
	__u32 id_hi;
	__u32 pad;
};

/* Policy connection tracking: one entry per flow and enforcement point
 * (egress at the source, ingress at the destination), as seen there. */
struct pol_ct_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 egress;
	__u8 pad[2];
};

struct pol_ct6_key {
	struct in6 saddr;
	struct in6 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 egress;
	__u8 pad[2];
};

struct pol_ct_value {
	__u64 seen_ns; /* last refresh (bpf_ktime_get_ns), at most every second */
};

/* A drop, sent to the agent through cm_pol_events. */
struct drop_event {
	__u32 src_identity;
	__u32 dst_identity;
	__u32 src_cluster;
	__u32 rule; /* deny rule id; 0 for a default deny */
	__u32 saddr[4]; /* IPv4 in saddr[0] */
	__u32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 egress;
	__u8 reason; /* DROP_* */
	__u8 family; /* 4 or 6 */
};

#define DROP_POLICY_DENY 1    /* a deny rule matched */
#define DROP_POLICY_DEFAULT 2 /* default deny: no allow rule matched */

/* Unknown identity: matched only by entries for every peer (0). */
#define UNKNOWN_IDENTITY 0
#define HOST_IDENTITY 1
#define REMOTE_NODE_IDENTITY 6
/* Below: Cilium's reserved identities; from here: endpoints' (a cluster's
 * range, or a CIDR identity with bit 24 set). */
#define FIRST_POD_IDENTITY 256

/* CIDR identities of network policy are node-local (Cilium's local scope):
 * bit 24 set, outside the 24 bits a VNI carries. */
#define IDENTITY_SCOPE_MASK 0xff000000
#define IDENTITY_SCOPE_LOCAL 0x01000000

static __always_inline int identity_is_cidr(__u32 id)
{
	return (id & IDENTITY_SCOPE_MASK) == IDENTITY_SCOPE_LOCAL;
}

/* endpoint_identity is the identity of a local endpoint from the ipcache
 * entry its address matches: only an entry of its own names it; a CIDR
 * prefix or the world entry of a local prefix covering it says nothing. */
static __always_inline __u32 endpoint_identity(const struct ipcache_value *ipc)
{
	if (!ipc || identity_is_cidr(ipc->identity) || ipc->identity == WORLD_IDENTITY)
		return UNKNOWN_IDENTITY;
	return ipc->identity;
}

/* vni_identity is the identity a packet from saddr carries in the VNI
 * (ipc: saddr's ipcache entry): world for addresses without one and for
 * CIDR identities, which are this node's alone. */
static __always_inline __u32 vni_identity(const struct ipcache_value *ipc)
{
	if (!ipc || identity_is_cidr(ipc->identity))
		return WORLD_IDENTITY;
	return ipc->identity;
}

/* Lifetime of a policy CT entry without traffic. */
#define POL_CT_TCP_NS (6ULL * 3600 * 1000000000ULL)
#define POL_CT_OTHER_NS (60ULL * 1000000000ULL)

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct policy_key);
	__type(value, struct policy_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_policy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* local identity */
	__type(value, struct pol_mode_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_mode SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32); /* node underlay IPv4 */
	__type(value, struct node_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_nodes SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct pol_ct_key);
	__type(value, struct pol_ct_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct pol_ct6_key);
	__type(value, struct pol_ct_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_ct6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 256 * 1024);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_events SEC(".maps");

/* [0]: drop events lost because the ring buffer was full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_pol_lost SEC(".maps");

/* What an enforcement point knows about a packet. */
struct pol_ctx {
	__u32 subject;     /* the local endpoint's identity */
	__u32 peer;        /* the other side's identity */
	__u32 src_cluster; /* cluster of the source (drop events) */
	__u8 egress;
	__u8 proto;
	__be16 sport; /* CT ports (ICMP echo: the identifier on both) */
	__be16 dport;
	__be16 pol_dport; /* port looked up in cm_policy (0 without ports) */
	__u8 syn;         /* a TCP SYN without ACK: a new connection */
};

static __always_inline int pol_enforced(__u32 subject, __u8 egress)
{
	struct pol_mode_value *m = bpf_map_lookup_elem(&cm_pol_mode, &subject);

	return m && m->enforced[egress & 1];
}

/* pol_match looks up one verdict class (deny or allow) for the peer and for
 * every peer; returns the entry or NULL. */
static __always_inline struct policy_value *pol_match(struct pol_ctx *c, __u8 deny)
{
	struct policy_key k = {
		.prefixlen = POL_FULL_BITS,
		.egress = c->egress,
		.deny = deny,
		.subject = bpf_htonl(c->subject),
		.peer = bpf_htonl(c->peer),
		.proto = c->proto,
		.dport = c->pol_dport,
	};
	struct policy_value *v = NULL;

	if (c->peer != 0)
		v = bpf_map_lookup_elem(&cm_policy, &k);
	if (!v) {
		k.peer = 0;
		v = bpf_map_lookup_elem(&cm_policy, &k);
	}
	return v;
}

/* pol_decide returns 0 when the policy allows the packet, else DROP_* with
 * *rule set to the deciding rule (0 for default deny). Deny wins. */
static __always_inline int pol_decide(struct pol_ctx *c, __u32 *rule)
{
	struct policy_value *v;

	*rule = 0;
	v = pol_match(c, 1);
	if (v) {
		*rule = v->rule;
		return DROP_POLICY_DENY;
	}
	if (pol_match(c, 0))
		return 0;
	return DROP_POLICY_DEFAULT;
}

static __always_inline void pol_event(struct pol_ctx *c, int reason, __u32 rule,
				      const __u32 *saddr, const __u32 *daddr, int family)
{
	struct drop_event *e;
	int n = family == 4 ? 1 : 4;

	e = bpf_ringbuf_reserve(&cm_pol_events, sizeof(*e), 0);
	if (!e) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&cm_pol_lost, &zero);

		if (lost)
			*lost += 1;
		return;
	}
	__builtin_memset(e, 0, sizeof(*e));
	e->src_identity = c->egress ? c->subject : c->peer;
	e->dst_identity = c->egress ? c->peer : c->subject;
	e->src_cluster = c->src_cluster;
	e->rule = rule;
	for (int i = 0; i < 4; i++) {
		if (i < n) {
			e->saddr[i] = saddr[i];
			e->daddr[i] = daddr[i];
		}
	}
	e->sport = c->sport;
	e->dport = c->pol_dport;
	e->proto = c->proto;
	e->egress = c->egress;
	e->reason = reason;
	e->family = family;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline __u64 pol_ct_life(__u8 proto)
{
	return proto == IPPROTO_TCP ? POL_CT_TCP_NS : POL_CT_OTHER_NS;
}

/* pol_ct_hit reports whether v is a live entry, refreshing it. */
static __always_inline int pol_ct_hit(struct pol_ct_value *v, __u8 proto, __u64 now)
{
	if (!v || now - v->seen_ns > pol_ct_life(proto))
		return 0;
	if (now - v->seen_ns > 1000000000ULL)
		v->seen_ns = now;
	return 1;
}

/* L4 ports for policy and CT: TCP, UDP and SCTP ports; the ICMP echo
 * identifier (as both ports, so a reply reverses to its request). */
#define ICMP_ECHOREPLY 0
#define ICMP_ECHO 8
#define ICMPV6_ECHO_REQUEST 128
#define ICMPV6_ECHO_REPLY 129
#define PROTO_ICMPV6 58

static __always_inline int pol_ports(struct __sk_buff *skb, __u32 l4_off, __u8 proto, int frag,
				     __be16 sport, __be16 dport, __u8 tcp_flags, struct pol_ctx *c)
{
	c->proto = proto;
	c->syn = proto == IPPROTO_TCP && tcp_opens(tcp_flags);
	if (frag)
		return 0;
	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
		c->sport = sport;
		c->dport = dport;
		c->pol_dport = dport;
		return 0;
	case IPPROTO_SCTP: {
		__be16 ports[2];

		if (bpf_skb_load_bytes(skb, l4_off, ports, sizeof(ports)))
			return -1;
		c->sport = ports[0];
		c->dport = ports[1];
		c->pol_dport = ports[1];
		return 0;
	}
	case IPPROTO_ICMP:
	case PROTO_ICMPV6: {
		__u8 type;
		__be16 id;

		if (bpf_skb_load_bytes(skb, l4_off, &type, 1))
			return -1;
		if (type == ICMP_ECHO || type == ICMP_ECHOREPLY ||
		    type == ICMPV6_ECHO_REQUEST || type == ICMPV6_ECHO_REPLY) {
			if (bpf_skb_load_bytes(skb, l4_off + 4, &id, sizeof(id)))
				return -1;
			c->sport = id;
			c->dport = id;
		}
		return 0;
	}
	}
	return 0;
}

/* pol_denied decides a packet that no tracked flow admits: if the endpoint
 * is in default deny in this direction and the policy does not allow it,
 * sends a drop event and returns 1. */
static __always_inline int pol_denied(struct pol_ctx *c, const __u32 *saddr, const __u32 *daddr, int family)
{
	__u32 rule;
	int reason;

	if (!pol_enforced(c->subject, c->egress))
		return 0;
	reason = pol_decide(c, &rule);
	if (!reason)
		return 0;
	pol_event(c, reason, rule, saddr, daddr, family);
	return 1;
}

/* pol_check4 decides an IPv4 packet at one enforcement point: replies of
 * tracked flows and packets of tracked flows pass; a new flow (or a TCP SYN)
 * passes if the endpoint is not in default deny in that direction or the
 * policy allows it, and is then tracked. Returns 0 to pass, CM_DROP to drop
 * (after sending a drop event). */
static __always_inline int pol_check4(struct __sk_buff *skb, struct pkt *p, struct pol_ctx *c)
{
	struct pol_ct_key fwd = {
		.saddr = p->flow.saddr,
		.daddr = p->flow.daddr,
		.proto = p->flow.proto,
		.egress = c->egress,
	};
	struct pol_ct_value nv = {};
	__u64 now = bpf_ktime_get_ns();

	if (pol_ports(skb, p->l4_off, p->flow.proto, p->frag, p->flow.sport, p->flow.dport, p->tcp_flags, c))
		return CM_DROP;
	fwd.sport = c->sport;
	fwd.dport = c->dport;
	if (!c->syn) {
		struct pol_ct_key rev = {
			.saddr = fwd.daddr,
			.daddr = fwd.saddr,
			.sport = fwd.dport,
			.dport = fwd.sport,
			.proto = fwd.proto,
			.egress = !c->egress,
		};

		if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct, &rev), fwd.proto, now))
			return 0; /* a reply of a flow this endpoint let in or out */
		if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct, &fwd), fwd.proto, now))
			return 0; /* established */
	}
	if (pol_denied(c, &p->flow.saddr, &p->flow.daddr, 4))
		return CM_DROP;
	nv.seen_ns = now;
	bpf_map_update_elem(&cm_pol_ct, &fwd, &nv, BPF_ANY);
	return 0;
}

/* pol_trackable reports whether a packet the host stack delivers to a pod
 * starts or continues a flow worth tracking: TCP, UDP, SCTP, or an ICMP echo
 * request (never ICMP errors or neighbor discovery). */
static __always_inline int pol_trackable(struct __sk_buff *skb, __u32 l4_off, __u8 proto)
{
	__u8 type;

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP:
		return 1;
	case IPPROTO_ICMP:
	case PROTO_ICMPV6:
		if (bpf_skb_load_bytes(skb, l4_off, &type, 1))
			return 0;
		return type == ICMP_ECHO || type == ICMPV6_ECHO_REQUEST;
	}
	return 0;
}

/* pol_track4 records a flow the host stack delivers to a pod (cm_to_pod:
 * from the node itself, or in coexistence mode through the primary CNI)
 * as the pod's ingress point would have admitted it, so that the pod's
 * replies pass its egress policy as replies (pol_check4 looks them up in
 * the reverse direction). Ingress policy is not decided here: these paths
 * are the host's (see README.md, "Policy"). */
static __always_inline void pol_track4(struct __sk_buff *skb, struct pkt *p)
{
	struct pol_ctx c = {};
	struct pol_ct_key k = {
		.saddr = p->flow.saddr,
		.daddr = p->flow.daddr,
		.proto = p->flow.proto,
	};
	struct pol_ct_value nv = {};
	__u64 now = bpf_ktime_get_ns();

	if (p->frag || !pol_trackable(skb, p->l4_off, p->flow.proto))
		return;
	if (pol_ports(skb, p->l4_off, p->flow.proto, 0, p->flow.sport, p->flow.dport, p->tcp_flags, &c))
		return;
	k.sport = c.sport;
	k.dport = c.dport;
	if (pol_ct_hit(bpf_map_lookup_elem(&cm_pol_ct, &k), k.proto, now))
		return; /* tracked, refreshed at most every second */
	nv.seen_ns = now;
	bpf_map_update_elem(&cm_pol_ct, &k, &nv, BPF_ANY);
}

/* tunnel_identity returns the source identity carried in the VNI of a
 * decapsulated packet, if its outer source is a known node allowed to claim
 * it; UNKNOWN_IDENTITY otherwise. *cluster is the node's cluster. */
static __always_inline __u32 tunnel_identity(struct __sk_buff *skb, __u32 *cluster)
{
	struct bpf_tunnel_key key = {};
	struct node_value *n;
	__be32 outer;
	__u32 id;

	*cluster = 0;
	if (bpf_skb_get_tunnel_key(skb, &key, sizeof(key), 0))
		return UNKNOWN_IDENTITY;
	outer = bpf_htonl(key.remote_ipv4);
	n = bpf_map_lookup_elem(&cm_nodes, &outer);
	if (!n)
		return UNKNOWN_IDENTITY;
	*cluster = n->cluster_id;
	id = key.tunnel_id & 0xffffff;
	if (id == HOST_IDENTITY)
		return REMOTE_NODE_IDENTITY;
	if (id < 256 || (id >= n->id_lo && id < n->id_hi))
		return id;
	return UNKNOWN_IDENTITY;
}
