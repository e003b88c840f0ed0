package remotecluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/kvstoremesh"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// clients counts the client connections the proxy holds open.
func (p *proxy) clients() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for c := range p.conns {
		if c.LocalAddr().String() == p.ln.Addr().String() {
			n++
		}
	}
	return n
}

// startMesh runs a kvstoremesh of the own cluster that mirrors the remotes
// into a new local etcd, and returns that etcd.
func startMesh(t *testing.T, remotes ...*remoteEtcd) *etcdserver.Server {
	t.Helper()
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: ownName})
	admin, err := kvstore.New(context.Background(), srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	dir := t.TempDir()
	for _, r := range remotes {
		r.writeConfig(dir)
	}
	m := kvstoremesh.New(kvstoremesh.Config{
		Dir: dir, Own: remoteconn.Own{Name: ownName, ID: ownID, MaxConnectedClusters: 255},
		Timing: remoteconn.Timing{BackoffMin: 20 * time.Millisecond, BackoffMax: 200 * time.Millisecond, ProbeInterval: 50 * time.Millisecond, ProbeTimeout: 2 * time.Second},
	}, admin, log, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := m.Run(ctx); err != nil {
			t.Errorf("kvstoremesh: %v", err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait() })
	return srv
}

// Agents in kvstoremesh mode read every remote through the cache of their
// own cluster's etcd, with the same code as in direct mode; each remote
// etcd then serves one connection, the kvstoremesh's, whatever the number
// of agents. In direct mode it serves one per agent besides.
func TestAgentsThroughKVStoreMesh(t *testing.T) {
	const agents = 3
	for _, tc := range []struct {
		name  string
		cache bool
		conns int // client connections on each remote etcd
	}{
		{name: "kvstoremesh", cache: true, conns: 1},
		{name: "direct", cache: false, conns: 1 + agents}, // and the kvstoremesh
	} {
		t.Run(tc.name, func(t *testing.T) {
			c2, c3 := startRemote(t, "c2", 2), startRemote(t, "c3", 3)
			for _, r := range []*remoteEtcd{c2, c3} {
				r.node(0)
				r.node(1)
				r.ipcache(0)
				r.identityEntry(256)
				r.service("shop", "web", true, podIP(r.id, 0))
				r.canaries()
			}
			local := startMesh(t, c2, c3)
			reader, err := local.EnsureLocalReaderUser(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			cacheFile := filepath.Join(t.TempDir(), "cache")
			writeFile(t, cacheFile, must(json.Marshal(reader)))
			var as []*agent
			for range agents {
				// The same remote-clusters directory in both modes; in
				// kvstoremesh mode it only names the remotes.
				dir := t.TempDir()
				for _, r := range []*remoteEtcd{c2, c3} {
					r.writeConfig(dir)
				}
				cfg := testConfig(dir, t.TempDir())
				if tc.cache {
					cfg.CacheConfig = cacheFile
				}
				as = append(as, startAgent(t, cfg, memory.New(), nil))
			}
			for i, a := range as {
				await(t, a.dp, fmt.Sprintf("agent %d programs both remotes", i), func(st datapath.State) bool {
					t2, i2 := countCluster(st, 2)
					t3, i3 := countCluster(st, 3)
					return t2 == 2 && i2 == 1 && t3 == 2 && i3 == 1 && len(st.Services) == 0 &&
						a.status("c2").Ready && a.status("c3").Ready
				})
				if s := a.status("c2"); s.ID != 2 || s.Cached != tc.cache || s.kind("services").Entries != 1 || s.kind("identities").Entries != 1 {
					t.Fatalf("agent %d: c2 %+v", i, s)
				}
			}
			for _, r := range []*remoteEtcd{c2, c3} {
				testwait.Until(t, 20*time.Second, r.name+" connection count", func() (bool, string) {
					n := r.proxy.clients()
					return n == tc.conns, fmt.Sprintf("%d client connections, want %d", n, tc.conns)
				})
			}
			if !tc.cache {
				return
			}
			// The reader sees the cache, not the cluster's own state.
			c, err := kvstore.New(context.Background(), reader, log)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Etcd().Get(context.Background(), wire.StatePrefix+"x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Fatalf("local reader reads cilium/state/: %v", err)
			}
			// A remote down: the cache keeps its last state, and so do
			// the agents.
			c2.proxy.setUp(false)
			c2.node(2)
			for i, a := range as {
				st := await(t, a.dp, "agent keeps c2 while it is down", func(datapath.State) bool { return a.status("c2").Ready })
				if tun, ip := countCluster(st, 2); tun != 2 || ip != 1 {
					t.Fatalf("agent %d holds %d tunnels and %d ipcache entries of c2 while it is down, want 2 and 1", i, tun, ip)
				}
			}
			c2.proxy.setUp(true)
			for i, a := range as {
				await(t, a.dp, fmt.Sprintf("agent %d sees c2's change after it returns", i), func(st datapath.State) bool {
					tun, _ := countCluster(st, 2)
					return tun == 3
				})
			}
			// c3 comes back under the own cluster's ID: the kvstoremesh
			// refuses it and withdraws its cache with the cluster config
			// copy; the agents drop its entries and report it not ready
			// (not ready and empty), c2 untouched.
			c3.clusterConfig(ownID)
			for i, a := range as {
				await(t, a.dp, fmt.Sprintf("agent %d withdraws c3", i), func(st datapath.State) bool {
					t3, i3 := countCluster(st, 3)
					s := a.status("c3")
					return t3 == 0 && i3 == 0 && !s.Ready && strings.Contains(s.LastError, "withdrawn by the kvstoremesh")
				})
				if !a.status("c2").Ready {
					t.Fatalf("agent %d: c2 not ready after c3's withdrawal", i)
				}
			}
			c3.clusterConfig(3)
			for i, a := range as {
				await(t, a.dp, fmt.Sprintf("agent %d programs c3 again", i), func(st datapath.State) bool {
					t3, i3 := countCluster(st, 3)
					return t3 == 2 && i3 == 1 && a.status("c3").Ready
				})
			}
		})
	}
}
