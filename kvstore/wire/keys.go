package wire

// This file is THE key schema of the clustermesh kvstore, in one place.
//
// WARNING - STABLE WIRE API: these keys are read by other clusters, which may
// run other versions of clustermesh or Cilium ClusterMesh (1.16 and later).
// Never change an existing key; add new ones only in a backwards-compatible
// way. Keys are joined with "/".
//
//	cilium/cluster-config/<cluster>                        ClusterConfig
//	cilium/.heartbeat                                      RFC 3339 timestamp
//	cilium/state/nodes/v1/<cluster>/<node>                 Node
//	cilium/state/services/v1/<cluster>/<ns>/<name>         ClusterService
//	cilium/state/identities/v1/id/<numeric-id>             identity label string
//	cilium/state/ip/v1/default/<ip>                        IPIdentityPair
//	cilium/synced/<cluster>/cilium/state/<kind>/v1         RFC 3339 timestamp (sync canary)
//	cilium/state/serviceexports/v1/<cluster>/<ns>/<name>   MCS-API service exports (Cilium; we write none)
//	cilium/synced/<cluster>/cilium/state/serviceexports/v1 its canary: written even though the prefix
//	                                                       is empty, because Cilium's KVStoreMesh and
//	                                                       MCS-API operator wait for it whenever the
//	                                                       cluster config has serviceExportsEnabled
//
// Values, as checked against Cilium 1.18 (docs/cilium-interop.md):
//   - ipcache ID: a remote's identity range, or below 256: 0 is "no identity
//     yet" (kept), 1 (host) is programmed as 6 (remote-node) by a reader
//     (RemoteIPCacheIdentity), other reserved IDs are kept.
//   - identity labels: Cilium's set for a pod (k8s: pod labels through its
//     default filter, io.cilium.k8s.namespace.labels.<key>,
//     io.kubernetes.pod.namespace, io.cilium.k8s.policy.serviceaccount,
//     io.cilium.k8s.policy.cluster), sorted by key.
//   - Node Source: one of Cilium's source names (NodeSource*).
//
// Remote readers' etcd users may read (kvstore/etcdserver.RemotePermissions,
// the same ranges as Cilium's "remote" role): cilium/state/ (prefix),
// cilium/synced/<own cluster>/ (prefix), cilium/cluster-config/<own cluster>
// (one key) and the range [cilium/.heartbeat, cilium/.heartbeau), which
// Cilium's client lists as a prefix to confirm a connection.
//
// kvstoremesh copies of a remote cluster, in the local etcd (Cilium's
// KVStoreMesh layout, pkg/clustermesh/kvstoremesh, as of Cilium 1.16-1.18):
//
//	cilium/cluster-config/<cluster>                        the remote's ClusterConfig, copied with
//	                                                       capabilities.cached and syncedCanaries true,
//	                                                       id and maxConnectedClusters as the
//	                                                       remote's, serviceExportsEnabled omitted (no
//	                                                       service exports are cached: a reader waits
//	                                                       for no serviceexports canary)
//	cilium/cache/nodes/v1/<cluster>/<node>                 from cilium/state/nodes/v1/<cluster>/<node>
//	cilium/cache/services/v1/<cluster>/<ns>/<name>         from cilium/state/services/v1/<cluster>/<ns>/<name>
//	cilium/cache/identities/v1/<cluster>/id/<numeric-id>   from cilium/state/identities/v1/id/<numeric-id>
//	cilium/cache/ip/v1/<cluster>/<ip>                      from cilium/state/ip/v1/default/<ip>
//	cilium/synced/<cluster>/cilium/cache/<kind>/v1         cache sync canary, written once the first
//	                                                       complete listing of the remote's kind is in
//	                                                       the cache (kind: nodes, services,
//	                                                       identities, ip)
//
// The rule is Cilium's StateToCachePrefix: "cilium/state/<kind>/v1" becomes
// "cilium/cache/<kind>/v1" and the cluster name is inserted after it (for
// ip it replaces the "default" address space; for identities it comes
// before "id/"). Values are copied byte for byte. A reader finds a cache
// through the copied cluster config: cached true means "read
// WatchPrefix(kind, cluster, true) and WatchSyncedKey(kind, cluster,
// true)" (WatchPrefix below). Cilium's KVStoreMesh also copies
// identities' value/ keys and, with serviceExportsEnabled, service
// exports; clustermesh copies the id/ keys only (the ones agents read) and
// writes no service exports.

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Kind is one of the synchronised prefixes.
type Kind string

// The kinds of synchronised state, as they appear in keys.
const (
	KindNodes      Kind = "nodes"
	KindServices   Kind = "services"
	KindIdentities Kind = "identities"
	KindIP         Kind = "ip"
)

// Kinds returns every Kind, in the order a reader usually syncs them.
func Kinds() []Kind { return []Kind{KindNodes, KindServices, KindIdentities, KindIP} }

// Valid reports whether k is one of the four kinds.
func (k Kind) Valid() bool {
	switch k {
	case KindNodes, KindServices, KindIdentities, KindIP:
		return true
	}
	return false
}

// Fixed keys and prefixes. Prefixes end with "/".
const (
	// BasePrefix is the root of every clustermesh key.
	BasePrefix = "cilium/"
	// HeartbeatKey holds an RFC 3339 timestamp, rewritten every minute.
	HeartbeatKey = "cilium/.heartbeat"
	// ClusterConfigPrefix holds one ClusterConfig per cluster.
	ClusterConfigPrefix = "cilium/cluster-config/"
	// StatePrefix holds the state a cluster publishes about itself.
	StatePrefix = "cilium/state/"
	// CachePrefix holds kvstoremesh copies of remote clusters.
	CachePrefix = "cilium/cache/"
	// SyncedPrefix holds the sync canaries.
	SyncedPrefix = "cilium/synced/"

	// IdentitiesPrefix is the kvstore identity allocator's root.
	IdentitiesPrefix = "cilium/state/identities/v1/"
	// IdentityIDPrefix holds id/<numeric-id> → label string.
	IdentityIDPrefix = "cilium/state/identities/v1/id/"
	// IPPrefix holds <ip> → IPIdentityPair, in the "default" address space.
	IPPrefix = "cilium/state/ip/v1/default/"
)

// ServiceExportsPrefix returns "cilium/state/serviceexports/v1/<cluster>/",
// where Cilium publishes MCS-API service exports. clustermesh publishes
// none, but writes the prefix's canary (ServiceExportsSyncedKey).
func ServiceExportsPrefix(cluster string) string {
	return StatePrefix + "serviceexports/v1/" + cluster + "/"
}

// ServiceExportsSyncedKey returns
// "cilium/synced/<cluster>/cilium/state/serviceexports/v1".
func ServiceExportsSyncedKey(cluster string) string {
	return SyncedPrefix + cluster + "/" + StatePrefix + "serviceexports/v1"
}

// KindStatePrefix returns "cilium/state/<kind>/v1/".
func KindStatePrefix(k Kind) string { return StatePrefix + string(k) + "/v1/" }

// KindCachePrefix returns "cilium/cache/<kind>/v1/<cluster>/", under which
// kvstoremesh stores the copy of one remote cluster's kind.
func KindCachePrefix(k Kind, cluster string) string {
	return CachePrefix + string(k) + "/v1/" + cluster + "/"
}

// ClusterConfigKey returns "cilium/cluster-config/<cluster>".
func ClusterConfigKey(cluster string) string { return ClusterConfigPrefix + cluster }

// NodesPrefix returns "cilium/state/nodes/v1/<cluster>/".
func NodesPrefix(cluster string) string { return KindStatePrefix(KindNodes) + cluster + "/" }

// NodeKey returns "cilium/state/nodes/v1/<cluster>/<node>".
func NodeKey(cluster, node string) string { return NodesPrefix(cluster) + node }

// ServicesPrefix returns "cilium/state/services/v1/<cluster>/".
func ServicesPrefix(cluster string) string {
	return KindStatePrefix(KindServices) + cluster + "/"
}

// ServiceKey returns "cilium/state/services/v1/<cluster>/<namespace>/<name>".
func ServiceKey(cluster, namespace, name string) string {
	return ServicesPrefix(cluster) + namespace + "/" + name
}

// IdentityKey returns "cilium/state/identities/v1/id/<id>".
func IdentityKey(id uint32) string {
	return IdentityIDPrefix + strconv.FormatUint(uint64(id), 10)
}

// IPKey returns "cilium/state/ip/v1/default/<ip>" for a host entry.
func IPKey(ip netip.Addr) string { return IPPrefix + ip.String() }

// IPPrefixKey returns "cilium/state/ip/v1/default/<ip>/<bits>" for a CIDR
// entry (an IPIdentityPair with a Mask).
func IPPrefixKey(p netip.Prefix) string { return IPPrefix + p.String() }

// SyncedKey returns "cilium/synced/<cluster>/cilium/state/<kind>/v1", the
// canary written once the initial listing of that kind has been written.
func SyncedKey(cluster string, k Kind) string {
	return SyncedPrefix + cluster + "/" + StatePrefix + string(k) + "/v1"
}

// CachedNodeKey returns "cilium/cache/nodes/v1/<cluster>/<node>".
func CachedNodeKey(cluster, node string) string {
	return KindCachePrefix(KindNodes, cluster) + node
}

// CachedServiceKey returns "cilium/cache/services/v1/<cluster>/<ns>/<name>".
func CachedServiceKey(cluster, namespace, name string) string {
	return KindCachePrefix(KindServices, cluster) + namespace + "/" + name
}

// CachedIdentityKey returns "cilium/cache/identities/v1/<cluster>/id/<id>".
func CachedIdentityKey(cluster string, id uint32) string {
	return CachedIdentityIDPrefix(cluster) + strconv.FormatUint(uint64(id), 10)
}

// CachedIdentityIDPrefix returns "cilium/cache/identities/v1/<cluster>/id/".
func CachedIdentityIDPrefix(cluster string) string {
	return KindCachePrefix(KindIdentities, cluster) + "id/"
}

// CachedIPKey returns "cilium/cache/ip/v1/<cluster>/<ip>".
func CachedIPKey(cluster string, ip netip.Addr) string {
	return KindCachePrefix(KindIP, cluster) + ip.String()
}

// CachedSyncedKey returns "cilium/synced/<cluster>/cilium/cache/<kind>/v1",
// the canary kvstoremesh writes once its copy of that kind is complete.
func CachedSyncedKey(cluster string, k Kind) string {
	return SyncedPrefix + cluster + "/" + CachePrefix + string(k) + "/v1"
}

// WatchPrefix returns the prefix a reader lists and watches for one kind of
// one remote cluster: under cilium/state/ when reading the remote's own etcd,
// under cilium/cache/ when reading a kvstoremesh copy (cached).
func WatchPrefix(k Kind, cluster string, cached bool) string {
	if cached {
		if k == KindIdentities {
			return CachedIdentityIDPrefix(cluster)
		}
		return KindCachePrefix(k, cluster)
	}
	switch k {
	case KindNodes:
		return NodesPrefix(cluster)
	case KindServices:
		return ServicesPrefix(cluster)
	case KindIdentities:
		return IdentityIDPrefix
	default:
		return IPPrefix
	}
}

// WatchSyncedKey returns the canary that marks WatchPrefix(k, cluster, cached)
// as completely listed.
func WatchSyncedKey(k Kind, cluster string, cached bool) string {
	if cached {
		return CachedSyncedKey(cluster, k)
	}
	return SyncedKey(cluster, k)
}

// ParseNodeKey splits a state or cache node key into its cluster and node
// name. Errors wrap ErrKeyMismatch.
func ParseNodeKey(key string) (cluster, node string, err error) {
	rest, ok := cutEither(key, KindStatePrefix(KindNodes), CachePrefix+string(KindNodes)+"/v1/")
	if !ok {
		return "", "", fmt.Errorf("%w: %q is not a node key", ErrKeyMismatch, key)
	}
	cluster, node, ok = strings.Cut(rest, "/")
	if !ok || cluster == "" || node == "" {
		return "", "", fmt.Errorf("%w: %q is not a node key", ErrKeyMismatch, key)
	}
	return cluster, node, nil
}

// ParseServiceKey splits a state or cache service key into its cluster,
// namespace and name. Errors wrap ErrKeyMismatch.
func ParseServiceKey(key string) (cluster, namespace, name string, err error) {
	rest, ok := cutEither(key, KindStatePrefix(KindServices), CachePrefix+string(KindServices)+"/v1/")
	if ok {
		parts := strings.Split(rest, "/")
		if len(parts) == 3 && parts[0] != "" && parts[1] != "" && parts[2] != "" {
			return parts[0], parts[1], parts[2], nil
		}
	}
	return "", "", "", fmt.Errorf("%w: %q is not a service key", ErrKeyMismatch, key)
}

// ParseIdentityKey returns the numeric identity of a state key
// (cluster == "") or of a cache key (cluster is the cached cluster). The id
// must be written in canonical decimal. Errors wrap ErrKeyMismatch.
func ParseIdentityKey(key string) (cluster string, id uint32, err error) {
	var idStr string
	if rest, ok := strings.CutPrefix(key, IdentityIDPrefix); ok {
		idStr = rest
	} else if rest, ok := strings.CutPrefix(key, CachePrefix+string(KindIdentities)+"/v1/"); ok {
		var tail string
		cluster, tail, _ = strings.Cut(rest, "/")
		idStr, ok = strings.CutPrefix(tail, "id/")
		if !ok || cluster == "" {
			return "", 0, fmt.Errorf("%w: %q is not an identity key", ErrKeyMismatch, key)
		}
	} else {
		return "", 0, fmt.Errorf("%w: %q is not an identity key", ErrKeyMismatch, key)
	}
	n, perr := strconv.ParseUint(idStr, 10, 32)
	if perr != nil || strconv.FormatUint(n, 10) != idStr {
		return "", 0, fmt.Errorf("%w: %q has no canonical numeric identity", ErrKeyMismatch, key)
	}
	return cluster, uint32(n), nil
}

// ParseIPKey returns the IP (or "ip/bits" prefix) part of a state key
// (cluster == "") or of a cache key (cluster is the cached cluster). The
// returned string is not parsed. Errors wrap ErrKeyMismatch.
func ParseIPKey(key string) (cluster, ip string, err error) {
	if rest, ok := strings.CutPrefix(key, IPPrefix); ok && rest != "" {
		return "", rest, nil
	}
	if rest, ok := strings.CutPrefix(key, CachePrefix+string(KindIP)+"/v1/"); ok {
		cluster, ip, ok = strings.Cut(rest, "/")
		if ok && cluster != "" && ip != "" {
			return cluster, ip, nil
		}
	}
	return "", "", fmt.Errorf("%w: %q is not an ipcache key", ErrKeyMismatch, key)
}

// IPKeyPrefix returns the prefix an ipcache key (state or cache) names:
// "<ip>" is the host prefix (/32 or /128), "<ip>/<bits>" that prefix. Only
// the key is read: DecodeIPIdentityPair checks that the value agrees.
// Errors wrap ErrKeyMismatch.
func IPKeyPrefix(key string) (netip.Prefix, error) {
	_, ip, err := ParseIPKey(key)
	if err != nil {
		return netip.Prefix{}, err
	}
	if strings.IndexByte(ip, '/') >= 0 {
		p, err := netip.ParsePrefix(ip)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%w: %q: %v", ErrKeyMismatch, key, err)
		}
		return p, nil
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q: %v", ErrKeyMismatch, key, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func cutEither(s, prefixA, prefixB string) (string, bool) {
	if rest, ok := strings.CutPrefix(s, prefixA); ok {
		return rest, true
	}
	return strings.CutPrefix(s, prefixB)
}
