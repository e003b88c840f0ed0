/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Maps and their key/value layouts, shared by the programs in datapath.c.
 * The Go side (bpf2go) generates its types from these structs; changing a
 * layout changes the pinned maps' ABI: a loader refuses to reuse pinned maps
 * whose key or value size differs. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* IPv4 prefix key of the LPM tries: prefixlen counts the bits of addr that
 * must match; addr is in network byte order. */
struct lpm4_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Tunnel map value: the underlay address of the node owning a pod CIDR. */
struct tunnel_value {
	__be32 node_ip;
	__u32 cluster_id;
};

/* ipcache value: identity of the prefix and, when remote, its node. */
struct ipcache_value {
	__u32 identity;
	__be32 tunnel_ep; /* 0: on this node */
	__u32 cluster_id;
	__u32 pad;
};

/* Service frontend. */
struct svc_key {
	__be32 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct svc_value {
	__u32 svc_id;     /* key space of cm_lb_slots and backend.svc_id */
	__u32 nslots;     /* 0: no backend selectable, new flows are dropped */
	__u32 nbackends;  /* informational */
	__u32 pad;
};

/* One slot of a service's weighted selection table. */
struct slot_key {
	__u32 svc_id;
	__u32 slot;
};

/* Backend of one service (a backend address used by two services has two
 * ids, so a backend id is never shared and can be freed with its service). */
struct backend_value {
	__be32 ip;
	__be16 port;
	__u16 weight;
	__u32 cluster_id;
	__u32 svc_id;
	__u32 index; /* position in the service's backend list (Dump order) */
};

/* Local endpoint: the host side of the pod's veth. */
struct endpoint_value {
	__u32 ifindex;
	__u32 flags;
};

/* Flow key, as seen on the wire (addresses and ports in network order). */
struct flow_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Forward LB connection tracking: client flow to a frontend -> backend. */
struct lb_ct_value {
	__u32 backend_id;
	__u32 svc_id;
};

/* Reverse NAT: reply flow from a backend -> the frontend it stands for. */
struct revnat_value {
	__be32 vip;
	__be16 vport;
	__u16 pad;
};

/* Node-wide settings written by the loader. */
struct config_value {
	__u32 tunnel_ifindex; /* the vxlan external device, 0: none */
	__u32 flags;          /* CM_F_* */
};

/* Coexistence mode: traffic to a local endpoint that no program translated
 * is handed to the host stack instead of being redirected into the pod, so
 * that the primary CNI's and kube-proxy's rules see it. */
#define CM_F_COEXIST 0x1
/* Coexistence mode with the cluster's address ranges of a family known
 * (the agent's --cluster-cidrs, programmed as world entries of the own
 * cluster's ranges): a forwarded packet of that family from an address
 * without any ipcache entry is world, decided by the pod's ingress policy
 * (cm_to_pod). */
#define CM_F_COEXIST_WORLD4 0x2
#define CM_F_COEXIST_WORLD6 0x4

/* IPv6 variants. Addresses are 16 bytes in network order, held as four
 * words; the underlay (tunnel endpoints) stays IPv4. Service and backend ids
 * share one id space with IPv4, so cm_lb_slots serves both families. */
struct in6 {
	__u32 w[4];
};

struct lpm6_key {
	__u32 prefixlen;
	struct in6 addr;
};

struct svc6_key {
	struct in6 vip;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct backend6_value {
	struct in6 ip;
	__be16 port;
	__u16 weight;
	__u32 cluster_id;
	__u32 svc_id;
	__u32 index;
};

struct flow6_key {
	struct in6 saddr;
	struct in6 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct revnat6_value {
	struct in6 vip;
	__be16 vport;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm4_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_tunnel SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm4_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ipcache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct slot_key);
	__type(value, __u32); /* backend id */
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* backend id */
	__type(value, struct backend_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __be32); /* pod IPv4 */
	__type(value, struct endpoint_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_endpoints SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct lb_ct_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct revnat_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config_value);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm6_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_tunnel6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct lpm6_key);
	__type(value, struct ipcache_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_ipcache6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc6_key);
	__type(value, struct svc_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_services6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* backend id */
	__type(value, struct backend6_value);
	__uint(max_entries, 1048576);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_backends6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct in6); /* pod IPv6 */
	__type(value, struct endpoint_value);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_endpoints6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow6_key);
	__type(value, struct lb_ct_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_lb_ct6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow6_key);
	__type(value, struct revnat6_value);
	__uint(max_entries, 65536); /* Config.CTEntries */
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} cm_revnat6 SEC(".maps");
