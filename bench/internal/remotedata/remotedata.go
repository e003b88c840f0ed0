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
type Set struct {
	Cluster                          string
	ID                               uint32
	Nodes, IPs, Identities, Services int
}

// Entries is the number of keys Write puts besides the config and canaries.
func (s Set) Entries() int { return s.Nodes + s.IPs + s.Identities + s.Services }

// IP is the address of ipcache entry i (i < 2^24).
func (s Set) IP(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(int(s.ID) + i>>16), byte(i >> 8), byte(i)})
}

// IPCacheValue is the value of an ipcache entry for ip (index i) with an
// identity of the cluster's range.
func (s Set) IPCacheValue(i int, ip netip.Addr) (string, error) {
	v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), ID: s.ID<<16 | 256 + uint32(i%1000)})
	return string(v), err
}

// Write puts the cluster config, every entry (transactions of 128 puts,
// etcd's default --max-txn-ops) and the sync canaries.
func (s Set) Write(ctx context.Context, etcd *clientv3.Client) error {
	var ops []clientv3.Op
	flush := func() error {
		for len(ops) > 0 {
			n := min(len(ops), 128)
			if _, err := etcd.Txn(ctx).Then(ops[:n]...).Commit(); err != nil {
				return fmt.Errorf("write %s: %w", s.Cluster, err)
			}
			ops = ops[n:]
		}
		return nil
	}
	put := func(k, v string) error {
		ops = append(ops, clientv3.OpPut(k, v))
		if len(ops) >= 1024 {
			return flush()
		}
		return nil
	}
	cc, err := json.Marshal(wire.ClusterConfig{ID: s.ID, Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})
	if err != nil {
		return err
	}
	if err := put(wire.ClusterConfigKey(s.Cluster), string(cc)); err != nil {
		return err
	}
	for i := range s.Nodes {
		name := fmt.Sprintf("node-%d", i)
		v, err := wire.MarshalNode(wire.Node{Name: name, Cluster: s.Cluster, ClusterID: s.ID,
			IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)})}},
			IPv4AllocCIDR: wire.CIDR{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)}), 32)}})
		if err != nil {
			return err
		}
		if err := put(wire.NodeKey(s.Cluster, name), string(v)); err != nil {
			return err
		}
	}
	for i := range s.IPs {
		ip := s.IP(i)
		v, err := s.IPCacheValue(i, ip)
		if err != nil {
			return err
		}
		if err := put(wire.IPKey(ip), v); err != nil {
			return err
		}
	}
	for i := range s.Identities {
		ls, err := wire.NewLabels(wire.Label{Source: "k8s", Key: "app", Value: fmt.Sprintf("app-%d", i)},
			wire.Label{Source: "k8s", Key: wire.ClusterLabelKey, Value: s.Cluster})
		if err != nil {
			return err
		}
		id := s.ID<<16 | 256 + uint32(i)
		v, err := wire.MarshalIdentity(wire.Identity{ID: id, Labels: ls})
		if err != nil {
			return err
		}
		if err := put(wire.IdentityKey(id), string(v)); err != nil {
			return err
		}
	}
	for i := range s.Services {
		name := fmt.Sprintf("svc-%d", i)
		v, err := wire.MarshalService(wire.ClusterService{Cluster: s.Cluster, Namespace: "ns", Name: name, ClusterID: s.ID, Shared: true,
			Frontends: map[string]wire.Ports{fmt.Sprintf("10.96.%d.%d", i>>8, i&255): {"http": {Protocol: wire.TCP, Port: 80}}},
			Backends: map[string]wire.Ports{
				s.IP(2 * i).String():   {"http": {Protocol: wire.TCP, Port: 8080}},
				s.IP(2*i + 1).String(): {"http": {Protocol: wire.TCP, Port: 8080}},
			}})
		if err != nil {
			return err
		}
		if err := put(wire.ServiceKey(s.Cluster, "ns", name), string(v)); err != nil {
			return err
		}
	}
	for _, k := range wire.Kinds() {
		if err := put(wire.SyncedKey(s.Cluster, k), string(wire.FormatTimestamp(time.Now()))); err != nil {
			return err
		}
	}
	return flush()
}
