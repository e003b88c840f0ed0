package remotedata

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Set is the data of one remote cluster.
//
// Addresses are only map keys (no traffic is sent to them), unique per
// cluster ID as long as each count stays below 65,536 when several sets
// share one etcd: ipcache entries 10.<ID>.x.y (a single set may have more:
// they continue into 10.<ID+1>...), node IPs 11.<ID>.x.y, node pod CIDRs
// 12.<ID>.x.y/32, service frontends 13.<ID>.x.y.
type Set struct {
	Cluster                          string
	ID                               uint32
	Nodes, IPs, Identities, Services int
	// Cached writes the set as a kvstoremesh copy in the local etcd
	// (cilium/cache/..., the cluster config with capabilities.cached and
	// the cache canaries) instead of as the remote's own etcd
	// (cilium/state/...).
	Cached bool
}

// Entries is the number of keys Write puts besides the config and canaries.
func (s Set) Entries() int { return s.Nodes + s.IPs + s.Identities + s.Services }

func (s Set) addr(first byte, i int) netip.Addr {
	return netip.AddrFrom4([4]byte{first, byte(int(s.ID) + i>>16), byte(i >> 8), byte(i)})
}

// IP is the address of ipcache entry i (i < 2^24).
func (s Set) IP(i int) netip.Addr { return s.addr(10, i) }

// NodeIP is the internal IP of node i, the tunnel endpoint of its pods.
func (s Set) NodeIP(i int) netip.Addr { return s.addr(11, i) }

// Identity is the numeric identity of identity i (i < 65,280) of the
// cluster's range.
func (s Set) Identity(i int) uint32 { return s.ID<<16 | 256 + uint32(i) }

// IPKey is the key of ipcache entry ip in the set's layout.
func (s Set) IPKey(ip netip.Addr) string {
	if s.Cached {
		return wire.CachedIPKey(s.Cluster, ip)
	}
	return wire.IPKey(ip)
}

// IPCacheValue is the value of an ipcache entry for ip (index i), hosted
// by node i mod Nodes, with identity number i mod 1,000 of the cluster's
// range (mod Identities when smaller).
func (s Set) IPCacheValue(i int, ip netip.Addr) (string, error) {
	return s.IPCacheValueWith(i, ip, s.Identity(i%max(1, min(1000, s.Identities))))
}

// IPCacheValueWith is IPCacheValue with the given identity.
func (s Set) IPCacheValueWith(i int, ip netip.Addr, id uint32) (string, error) {
	v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: s.NodeIP(i % max(1, s.Nodes)), ID: id})
	return string(v), err
}

func (s Set) key(k wire.Kind, name string) string {
	switch {
	case k == wire.KindNodes && s.Cached:
		return wire.CachedNodeKey(s.Cluster, name)
	case k == wire.KindNodes:
		return wire.NodeKey(s.Cluster, name)
	case s.Cached:
		return wire.CachedServiceKey(s.Cluster, "ns", name)
	default:
		return wire.ServiceKey(s.Cluster, "ns", name)
	}
}

func (s Set) identityKey(id uint32) string {
	if s.Cached {
		return wire.CachedIdentityKey(s.Cluster, id)
	}
	return wire.IdentityKey(id)
}

func (s Set) syncedKey(k wire.Kind) string { return wire.WatchSyncedKey(k, s.Cluster, s.Cached) }

// ClusterConfig is the value of the set's cilium/cluster-config key.
func (s Set) ClusterConfig() wire.ClusterConfig {
	return wire.ClusterConfig{ID: s.ID, Capabilities: wire.Capabilities{SyncedCanaries: true, Cached: s.Cached, MaxConnectedClusters: 255}}
}

// batch collects puts into transactions of 128 (etcd's default
// --max-txn-ops).
type batch struct {
	ctx  context.Context
	etcd *clientv3.Client
	what string
	ops  []clientv3.Op
}

func (b *batch) flush() error {
	for len(b.ops) > 0 {
		n := min(len(b.ops), 128)
		if _, err := b.etcd.Txn(b.ctx).Then(b.ops[:n]...).Commit(); err != nil {
			return fmt.Errorf("write %s: %w", b.what, err)
		}
		b.ops = b.ops[n:]
	}
	return nil
}

func (b *batch) put(k, v string) error {
	b.ops = append(b.ops, clientv3.OpPut(k, v))
	if len(b.ops) >= 1024 {
		return b.flush()
	}
	return nil
}

// Write puts the cluster config, every entry and the sync canaries.
func (s Set) Write(ctx context.Context, etcd *clientv3.Client) error {
	b := &batch{ctx: ctx, etcd: etcd, what: s.Cluster}
	if err := s.write(b); err != nil {
		return err
	}
	return b.flush()
}

func (s Set) write(b *batch) error {
	cc, err := json.Marshal(s.ClusterConfig())
	if err != nil {
		return err
	}
	if err := b.put(wire.ClusterConfigKey(s.Cluster), string(cc)); err != nil {
		return err
	}
	for i := range s.Nodes {
		name := fmt.Sprintf("node-%d", i)
		v, err := wire.MarshalNode(wire.Node{Name: name, Cluster: s.Cluster, ClusterID: s.ID,
			IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: s.NodeIP(i)}},
			IPv4AllocCIDR: wire.CIDR{Prefix: netip.PrefixFrom(s.addr(12, i), 32)}})
		if err != nil {
			return err
		}
		if err := b.put(s.key(wire.KindNodes, name), string(v)); err != nil {
			return err
		}
	}
	for i := range s.IPs {
		ip := s.IP(i)
		v, err := s.IPCacheValue(i, ip)
		if err != nil {
			return err
		}
		if err := b.put(s.IPKey(ip), v); err != nil {
			return err
		}
	}
	for i := range s.Identities {
		ls, err := wire.NewLabels(wire.Label{Source: "k8s", Key: "app", Value: fmt.Sprintf("app-%d", i)},
			wire.Label{Source: "k8s", Key: wire.ClusterLabelKey, Value: s.Cluster})
		if err != nil {
			return err
		}
		id := s.Identity(i)
		v, err := wire.MarshalIdentity(wire.Identity{ID: id, Labels: ls})
		if err != nil {
			return err
		}
		if err := b.put(s.identityKey(id), string(v)); err != nil {
			return err
		}
	}
	for i := range s.Services {
		name := fmt.Sprintf("svc-%d", i)
		v, err := wire.MarshalService(wire.ClusterService{Cluster: s.Cluster, Namespace: "ns", Name: name, ClusterID: s.ID, Shared: true,
			Frontends: map[string]wire.Ports{s.addr(13, i).String(): {"http": {Protocol: wire.TCP, Port: 80}}},
			Backends: map[string]wire.Ports{
				s.IP(2 * i).String():   {"http": {Protocol: wire.TCP, Port: 8080}},
				s.IP(2*i + 1).String(): {"http": {Protocol: wire.TCP, Port: 8080}},
			}})
		if err != nil {
			return err
		}
		if err := b.put(s.key(wire.KindServices, name), string(v)); err != nil {
			return err
		}
	}
	for _, k := range wire.Kinds() {
		if err := b.put(s.syncedKey(k), string(wire.FormatTimestamp(time.Now()))); err != nil {
			return err
		}
	}
	return nil
}
