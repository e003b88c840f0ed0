package remotedata

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/agenttest"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var log = etcdserver.TestLogger()

// startEtcd returns an embedded etcd and a root client of it.
func startEtcd(t *testing.T) (*etcdserver.Server, *clientv3.Client) {
	t.Helper()
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	c, err := kvstore.New(context.Background(), srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return srv, c.Etcd()
}

// counts is what decode found per cluster.
type counts struct {
	nodes, ips, identities, services, canaries int
	config                                     wire.ClusterConfig
}

// decodeAll decodes every key under cilium/ through kvstore/wire, as the
// readers do, and counts the valid entries per cluster; any key that does
// not decode fails the test.
func decodeAll(t *testing.T, c *clientv3.Client, sets []Set) map[string]*counts {
	t.Helper()
	byName := map[string]Set{}
	out := map[string]*counts{}
	for _, s := range sets {
		byName[s.Cluster] = s
		out[s.Cluster] = &counts{}
	}
	resp, err := c.Get(context.Background(), wire.BasePrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	// With the state layout, identities and ipcache keys name no cluster:
	// one etcd holds one cluster.
	only := sets[0]
	remote := func(cluster string) (wire.Remote, *counts) {
		if cluster == "" {
			cluster = only.Cluster
		}
		s, ok := byName[cluster]
		if !ok {
			t.Fatalf("key of unknown cluster %q", cluster)
		}
		return wire.Remote{Name: s.Cluster, ID: s.ID, MaxConnectedClusters: 255}, out[cluster]
	}
	for _, kv := range resp.Kvs {
		key, val := string(kv.Key), kv.Value
		var derr error
		switch {
		case strings.HasPrefix(key, wire.ClusterConfigPrefix):
			_, n := remote(strings.TrimPrefix(key, wire.ClusterConfigPrefix))
			n.config, derr = wire.DecodeClusterConfig(val)
		case strings.HasPrefix(key, wire.SyncedPrefix):
			cluster, _, _ := strings.Cut(strings.TrimPrefix(key, wire.SyncedPrefix), "/")
			r, n := remote(cluster)
			found := false
			for _, k := range wire.Kinds() {
				found = found || key == wire.WatchSyncedKey(k, r.Name, byName[r.Name].Cached)
			}
			if !found {
				t.Fatalf("canary %q is not one a reader of the layout waits for", key)
			}
			_, derr = wire.ParseTimestamp(val)
			n.canaries++
		case strings.Contains(key, "/nodes/v1/"):
			cluster, _, err := wire.ParseNodeKey(key)
			if derr = err; err == nil {
				r, n := remote(cluster)
				_, derr = wire.DecodeNode(r, key, val)
				n.nodes++
			}
		case strings.Contains(key, "/services/v1/"):
			cluster, _, _, err := wire.ParseServiceKey(key)
			if derr = err; err == nil {
				r, n := remote(cluster)
				var svc wire.ClusterService
				if svc, derr = wire.DecodeService(r, key, val); derr == nil && len(svc.Backends) != 2 {
					derr = fmt.Errorf("%d backends, want 2", len(svc.Backends))
				}
				n.services++
			}
		case strings.Contains(key, "/identities/v1/"):
			cluster, _, err := wire.ParseIdentityKey(key)
			if derr = err; err == nil {
				r, n := remote(cluster)
				_, derr = wire.DecodeIdentity(r, key, val)
				n.identities++
			}
		case strings.Contains(key, "/ip/v1/"):
			cluster, _, err := wire.ParseIPKey(key)
			if derr = err; err == nil {
				r, n := remote(cluster)
				_, derr = wire.DecodeIPIdentityPair(r, key, val)
				n.ips++
			}
		default:
			derr = errors.New("unexpected key")
		}
		if derr != nil {
			t.Fatalf("key %q: %v", key, derr)
		}
	}
	return out
}

func TestWriteDecodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		mesh Mesh
	}{
		{name: "one cluster, state layout", mesh: Mesh{Clusters: 1, FirstID: 2, PerCluster: Set{Nodes: 30, IPs: 300, Identities: 20, Services: 5}}},
		{name: "one large cluster, state layout past 65,536 ipcache entries", mesh: Mesh{Clusters: 1, FirstID: 7, PerCluster: Set{Nodes: 2, IPs: 70000, Identities: 3, Services: 1}}},
		{name: "three clusters, cache layout", mesh: Mesh{Clusters: 3, FirstID: 2, PerCluster: Set{Nodes: 10, IPs: 100, Identities: 10, Services: 4, Cached: true}}},
		{name: "cluster ids up to 255, cache layout", mesh: Mesh{Clusters: 2, FirstID: 254, PerCluster: Set{Nodes: 1, IPs: 1, Identities: 1, Services: 1, Cached: true}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, c := startEtcd(t)
			if err := tc.mesh.Write(context.Background(), c); err != nil {
				t.Fatal(err)
			}
			got := decodeAll(t, c, tc.mesh.Sets())
			total := 0
			for _, s := range tc.mesh.Sets() {
				n := got[s.Cluster]
				p := tc.mesh.PerCluster
				if n.nodes != p.Nodes || n.ips != p.IPs || n.identities != p.Identities || n.services != p.Services || n.canaries != len(wire.Kinds()) {
					t.Errorf("%s: %+v, want %d nodes, %d ips, %d identities, %d services, %d canaries", s.Cluster, *n, p.Nodes, p.IPs, p.Identities, p.Services, len(wire.Kinds()))
				}
				if n.config.ID != s.ID || n.config.Capabilities.Cached != p.Cached || !n.config.Capabilities.SyncedCanaries {
					t.Errorf("%s: cluster config %+v", s.Cluster, n.config)
				}
				total += n.nodes + n.ips + n.identities + n.services
			}
			if total != tc.mesh.Entries() {
				t.Errorf("%d entries, Entries() says %d", total, tc.mesh.Entries())
			}
		})
	}
}

func TestCiliumScaleCounts(t *testing.T) {
	m := CiliumScale(true)
	sets := m.Sets()
	var nodes, ips, ids, svcs int
	names := map[string]bool{}
	for _, s := range sets {
		nodes, ips, ids, svcs = nodes+s.Nodes, ips+s.IPs, ids+s.Identities, svcs+s.Services
		if err := wire.ValidateCluster(s.Cluster, s.ID, 255); err != nil || s.ID == 1 || names[s.Cluster] {
			t.Errorf("cluster %q id %d: %v (duplicate: %v)", s.Cluster, s.ID, err, names[s.Cluster])
		}
		names[s.Cluster] = true
	}
	if len(sets) != 250 || nodes != 25000 || ips != 250000 || ids != 25000 || svcs != 2500 {
		t.Fatalf("%d clusters, %d nodes, %d ipcache, %d identities, %d services", len(sets), nodes, ips, ids, svcs)
	}
}

func TestWriteRefusesSharedState(t *testing.T) {
	_, c := startEtcd(t)
	err := Mesh{Clusters: 2, FirstID: 2, PerCluster: Set{IPs: 1}}.Write(context.Background(), c)
	if !errors.Is(err, ErrSharedState) {
		t.Fatalf("Write: %v, want ErrSharedState", err)
	}
}

// Every change of an entry gives it an identity other than its current one.
func TestChurnChangesEveryTime(t *testing.T) {
	for _, tc := range []struct {
		name string
		sets []Set
	}{
		{name: "scale mesh", sets: CiliumScale(true).Sets()[:5]},
		{name: "two identities", sets: Mesh{Clusters: 2, FirstID: 2, PerCluster: Set{IPs: 3, Identities: 2, Cached: true}}.Sets()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := Churn{Sets: tc.sets, Rate: 1}
			current := map[string]uint32{}
			for _, s := range tc.sets {
				for j := range s.IPs {
					current[s.IPKey(s.IP(j))] = s.Identity(j % max(1, min(1000, s.Identities)))
				}
			}
			perRound := 0
			for _, s := range tc.sets {
				perRound += s.IPs
			}
			for seq := range 3 * perRound {
				ch, err := c.At(seq)
				if err != nil {
					t.Fatal(err)
				}
				old, ok := current[ch.Key]
				if !ok || old == ch.Identity {
					t.Fatalf("change %d of %q: identity %d, current %d (known %v)", seq, ch.Key, ch.Identity, old, ok)
				}
				if s := tc.sets[ch.Set]; ch.Identity>>16 != s.ID {
					t.Fatalf("change %d: identity %d outside cluster %d's range", seq, ch.Identity, s.ID)
				}
				current[ch.Key] = ch.Identity
			}
		})
	}
}

// Churn.Run puts what At says, decodable by the readers.
func TestChurnRun(t *testing.T) {
	_, c := startEtcd(t)
	m := Mesh{Clusters: 3, FirstID: 2, PerCluster: Set{Nodes: 2, IPs: 10, Identities: 5, Cached: true}}
	if err := m.Write(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	ch := Churn{Sets: m.Sets(), Rate: 2000}
	var sent []Change
	n, err := ch.Run(context.Background(), c, 45, func(c Change) { sent = append(sent, c) })
	if err != nil || n != 45 || len(sent) != 45 {
		t.Fatalf("Run: %d puts, %d sent, %v", n, len(sent), err)
	}
	last := map[string]Change{}
	for _, s := range sent {
		last[s.Key] = s
	}
	for key, want := range last {
		resp, err := c.Get(context.Background(), key)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("get %q: %v", key, err)
		}
		s := m.Sets()[want.Set]
		p, err := wire.DecodeIPIdentityPair(wire.Remote{Name: s.Cluster, ID: s.ID}, key, resp.Kvs[0].Value)
		if err != nil || p.ID != want.Identity || p.IP != want.IP {
			t.Fatalf("%q: %+v, %v; want identity %d", key, p, err, want.Identity)
		}
	}
}

// The agent's own read path in kvstoremesh mode (agenttest with a cache
// config: remote-cluster manager, watchstores on the cache prefixes,
// dpsync) accepts a cached mesh as synced remotes and programs every
// node and ipcache entry.
func TestCachedMeshReadByAgent(t *testing.T) {
	srv, c := startEtcd(t)
	m := Mesh{Clusters: 4, FirstID: 2, PerCluster: Set{Nodes: 5, IPs: 50, Identities: 5, Services: 2, Cached: true}}
	if err := m.Write(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	reader, err := srv.EnsureLocalReaderUser(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(reader)
	if err != nil {
		t.Fatal(err)
	}
	dir, cache := t.TempDir(), filepath.Join(t.TempDir(), "cache")
	if err := os.WriteFile(cache, data, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, s := range m.Sets() {
		if err := os.WriteFile(filepath.Join(dir, s.Cluster), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	a := agenttest.Start(agenttest.Config{Dir: dir, CacheConfig: cache, ClusterName: "c1", ClusterID: 1}, log)
	defer a.Stop()
	testwait.Until(t, 30*time.Second, "every cached remote programmed", func() (bool, string) {
		st, err := a.Datapath.Dump()
		if err != nil {
			return false, err.Error()
		}
		want := m.Clusters * m.PerCluster.Nodes
		wantIP := m.Clusters * m.PerCluster.IPs
		return a.Ready() && len(st.Tunnels) == want && len(st.IPCache) == wantIP,
			fmt.Sprintf("ready %v, %d tunnels (want %d), %d ipcache (want %d)", a.Ready(), len(st.Tunnels), want, len(st.IPCache), wantIP)
	})
	st, _ := a.Datapath.Dump()
	for _, s := range m.Sets() {
		for j := range s.IPs {
			e, ok := st.IPCache[netip.PrefixFrom(s.IP(j), 32)]
			if !ok || e.ClusterID != s.ID || e.TunnelEndpoint != s.NodeIP(j%s.Nodes) {
				t.Fatalf("%s entry %d: %+v %v", s.Cluster, j, e, ok)
			}
		}
	}
}
