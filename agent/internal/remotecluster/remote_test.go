package remotecluster

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var (
	web   = servicemerge.Name{Namespace: "shop", Name: "web"}
	webFE = datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
)

func setLocalWeb(m *servicemerge.Merger) {
	m.SetLocalService(web, servicemerge.LocalService{
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.10")},
		Ports:       []servicemerge.ServicePort{{Name: "http", Proto: ipproto.TCP, Port: 80}},
		Annotations: servicemerge.Annotations{Global: true, Shared: true},
	})
}

func backendsOf(st datapath.State, f datapath.Frontend, id uint32) int {
	n := 0
	for _, b := range st.Services[f].Backends {
		if b.ClusterID == id {
			n++
		}
	}
	return n
}

func TestRemoteLifecycle(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	for i := range 3 {
		c2.node(i)
	}
	for i := range 5 {
		c2.ipcache(i)
	}
	c2.identityEntry(300)
	c2.service("shop", "web", true, "10.2.0.1", "10.2.0.2")
	c2.canaries()

	a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
	setLocalWeb(a.merger)
	writeFile(t, filepath.Join(dir, ownName), []byte("endpoints: [https://127.0.0.1:1]\n")) // own cluster: ignored
	c2.writeConfig(dir)

	await(t, a.dp, "c2 synced", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 3 && ipc == 5 && backendsOf(st, webFE, 2) == 2 && a.status("c2").Ready
	})
	st := a.status("c2")
	if st.ID != 2 || st.kind("nodes").Entries != 3 || st.kind("identities").Entries != 1 ||
		st.kind("ipcache").Entries != 5 || st.kind("services").Entries != 1 {
		t.Fatalf("status %+v", st)
	}
	if len(a.mgr.Status()) != 1 {
		t.Fatalf("own cluster's config file not ignored: %+v", a.mgr.Status())
	}

	t.Run("hostile entries are skipped and counted", func(t *testing.T) {
		other := func(ip string, id uint32) []byte {
			return must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: netip.MustParseAddr(ip), HostIP: netip.MustParseAddr("192.168.2.1"), ID: id}))
		}
		c2.put(wire.IPKey(netip.MustParseAddr("10.2.9.1")), other("10.2.9.1", 3<<16|300))                      // identity of cluster 3
		c2.put(wire.IPKey(netip.MustParseAddr("10.2.9.2")), []byte(`{"IP":"10.2.9.2","ID":`))                  // bad JSON
		c2.put(wire.IPKey(netip.MustParseAddr("10.2.9.3")), other("10.2.9.4", 2<<16|300))                      // key/value mismatch
		c2.put(wire.IPKey(netip.MustParseAddr("10.2.9.5")), []byte(`{"x":"`+strings.Repeat("a", 70<<10)+`"}`)) // oversize
		evil := wire.Node{Name: "evil", Cluster: "c3", ClusterID: 2, IPv4AllocCIDR: wire.MustParseCIDR("10.1.0.0/24"),
			IPAddresses: []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr("192.168.9.9")}}}
		c2.put(wire.NodeKey("c2", "evil"), must(wire.MarshalNode(evil))) // another cluster's name
		evil.Name, evil.Cluster, evil.ClusterID = "n9", "c2", 7
		c2.put(wire.NodeKey("c2", "n9"), must(wire.MarshalNode(evil)))                      // another cluster's ID
		c2.put(wire.IdentityKey(3<<16|300), []byte("k8s:io.cilium.k8s.policy.cluster=c3;")) // out of range
		c2.put(wire.ServiceKey("c2", "shop", "evil"), must(wire.MarshalService(wire.ClusterService{
			Cluster: "c3", Namespace: "shop", Name: "evil", ClusterID: 2}))) // another cluster's name
		c2.ipcache(5) // a valid entry after them still flows
		// Kinds are watched concurrently: wait for every counter.
		await(t, a.dp, "valid entry after hostile ones, each hostile one counted", func(st datapath.State) bool {
			_, ipc := countCluster(st, 2)
			s := a.status("c2")
			return ipc == 6 && s.kind("ipcache").Invalid == 4 && s.kind("nodes").Invalid == 2 &&
				s.kind("identities").Invalid == 1 && s.kind("services").Invalid == 1
		})
		if s := a.status("c2"); s.kind("ipcache").Entries != 6 || s.kind("nodes").Entries != 3 {
			t.Fatalf("entries %+v", s.Kinds)
		}
		dp, _ := a.dp.Dump()
		if _, ok := dp.Tunnels[netip.MustParsePrefix("10.1.0.0/24")]; ok {
			t.Fatal("hostile node's CIDR programmed")
		}
	})

	c3 := startRemote(t, "c3", 2) // claims c2's ID
	c3.node(0)
	c3.canaries()
	t.Run("cluster ID conflict is refused with the reason in status", func(t *testing.T) {
		c3.writeConfig(dir)
		await(t, a.dp, "c3 refused", func(datapath.State) bool {
			return strings.Contains(a.status("c3").RefusedReason, ErrClusterIDConflict.Error())
		})
		if a.status("c3").Ready {
			t.Fatal("refused remote is ready")
		}
		c3.id = 3
		c3.clusterConfig(3)
		c3.node(0)
		await(t, a.dp, "c3 accepted with its own ID", func(st datapath.State) bool {
			tun, _ := countCluster(st, 3)
			return tun == 1 && a.status("c3").Ready && a.status("c3").RefusedReason == ""
		})
	})

	t.Run("remote down, entries deleted meanwhile, back", func(t *testing.T) {
		c2.proxy.setUp(false)
		await(t, a.dp, "c2 disconnected, with the error", func(datapath.State) bool {
			return !a.status("c2").Connected && a.status("c2").LastError != ""
		})
		st, _ := a.dp.Dump()
		if tun, ipc := countCluster(st, 2); tun != 3 || ipc != 6 {
			t.Fatalf("state not kept while disconnected: %d tunnels %d ipcache", tun, ipc)
		}
		c2.del(wire.NodeKey("c2", "n1"))
		c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 0))))
		c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 1))))
		ctx := context.Background()
		resp, err := c2.admin.Etcd().Get(ctx, "compact")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c2.admin.Etcd().Compact(ctx, resp.Header.Revision); err != nil {
			t.Fatal(err)
		}
		c2.proxy.setUp(true)
		st = await(t, a.dp, "exactly the remaining entries", func(st datapath.State) bool {
			tun, ipc := countCluster(st, 2)
			return tun == 2 && ipc == 4
		})
		await(t, a.dp, "error cleared once back and synced", func(datapath.State) bool {
			s := a.status("c2")
			return s.Ready && s.Connected && s.LastError == "" && s.Failures > 0
		})
		for _, i := range []int{0, 2} {
			if _, ok := st.Tunnels[netip.MustParsePrefix(nodeCIDR(2, i))]; !ok {
				t.Fatalf("tunnel of n%d missing", i)
			}
		}
		for i := 2; i <= 5; i++ {
			if _, ok := st.IPCache[netip.PrefixFrom(netip.MustParseAddr(podIP(2, i)), 32)]; !ok {
				t.Fatalf("ipcache %s missing", podIP(2, i))
			}
		}
	})

	t.Run("config removed: drained", func(t *testing.T) {
		if err := os.Remove(filepath.Join(dir, "c3")); err != nil {
			t.Fatal(err)
		}
		await(t, a.dp, "c3 drained", func(st datapath.State) bool {
			tun, _ := countCluster(st, 3)
			tun2, _ := countCluster(st, 2)
			return tun == 0 && tun2 == 2 && len(a.mgr.Status()) == 1
		})
	})

	t.Run("shared=false withdraws remote backends", func(t *testing.T) {
		c2.service("shop", "web", false, "10.2.0.1", "10.2.0.2")
		await(t, a.dp, "no remote backends", func(st datapath.State) bool { return backendsOf(st, webFE, 2) == 0 })
	})
}

// recorder records the ipcache deletes applied to the datapath.
type recorder struct {
	*memory.Datapath
	mu      sync.Mutex
	deleted []netip.Prefix
}

func (r *recorder) Apply(ctx context.Context, b datapath.Batch) error {
	r.mu.Lock()
	r.deleted = append(r.deleted, b.DeleteIPCache...)
	r.mu.Unlock()
	return r.Datapath.Apply(ctx, b)
}

func TestRestartRestoresWithoutDropping(t *testing.T) {
	dir, stateDir := t.TempDir(), t.TempDir()
	c2 := startRemote(t, "c2", 2)
	for i := range 2 {
		c2.node(i)
	}
	for i := range 4 {
		c2.ipcache(i)
	}
	c2.canaries()
	c2.writeConfig(dir)
	dp := memory.New()
	a := startAgent(t, testConfig(dir, stateDir), dp, nil)
	await(t, dp, "first agent synced", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 2 && ipc == 4
	})
	a.stop()

	// While the agent is down: one entry goes away, the remote becomes
	// unreachable, and the datapath holds an entry of a cluster whose config
	// was removed meanwhile.
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 0))))
	c2.proxy.setUp(false)
	gone := netip.MustParsePrefix("10.9.0.1/32")
	if err := dp.Apply(context.Background(), datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: gone, Identity: 9 << 16, ClusterID: 9}}}); err != nil {
		t.Fatal(err)
	}

	rec := &recorder{Datapath: dp}
	a = startAgent(t, testConfig(dir, stateDir), dp, rec)
	await(t, dp, "unconfigured cluster's entry released", func(st datapath.State) bool {
		_, ok := st.IPCache[gone]
		return !ok
	})
	st, _ := dp.Dump()
	if tun, ipc := countCluster(st, 2); tun != 2 || ipc != 4 {
		t.Fatalf("restored entries of an unreachable remote dropped: %d tunnels, %d ipcache", tun, ipc)
	}
	if got := a.rec.Holding(); !slices.Contains(got, 2) {
		t.Fatalf("cluster 2 not held: %v", got)
	}

	c2.proxy.setUp(true)
	await(t, dp, "resynced", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 2 && ipc == 3 && a.status("c2").Ready
	})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	slices.SortFunc(rec.deleted, netip.Prefix.Compare)
	want := []netip.Prefix{netip.MustParsePrefix(podIP(2, 0) + "/32"), gone}
	slices.SortFunc(want, netip.Prefix.Compare)
	if !slices.Equal(rec.deleted, want) {
		t.Fatalf("deleted %v, want exactly %v", rec.deleted, want)
	}
}

func TestStaleTTL(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.node(0)
	c2.ipcache(0)
	c2.canaries()
	c2.writeConfig(dir)
	cfg := testConfig(dir, "")
	cfg.StaleTTL = 300 * time.Millisecond
	a := startAgent(t, cfg, memory.New(), nil)
	await(t, a.dp, "synced", func(st datapath.State) bool { tun, ipc := countCluster(st, 2); return tun == 1 && ipc == 1 })
	c2.proxy.setUp(false)
	await(t, a.dp, "withdrawn after the TTL", func(st datapath.State) bool { tun, ipc := countCluster(st, 2); return tun == 0 && ipc == 0 })
	c2.proxy.setUp(true)
	await(t, a.dp, "back", func(st datapath.State) bool { tun, ipc := countCluster(st, 2); return tun == 1 && ipc == 1 })
}
