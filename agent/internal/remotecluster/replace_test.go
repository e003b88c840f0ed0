package remotecluster

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestReplacedEtcdKeepsStateUntilCanary replaces a remote's etcd by an
// empty one on the same address (its apiserver restarted with an ephemeral
// etcd): the agent keeps that cluster's entries while the new etcd fills
// up, and converges to exactly its content once the canaries are back.
func TestReplacedEtcdKeepsStateUntilCanary(t *testing.T) {
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
	c2.writeConfig(dir)
	before := await(t, a.dp, "c2 synced", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 3 && ipc == 5 && backendsOf(st, webFE, 2) == 2 && a.status("c2").Ready
	})

	// Same address and certificates, new data dir and etcd cluster.
	c2.srv.Stop()
	cfg := c2.srv.Config()
	cfg.DataDir = filepath.Join(t.TempDir(), "replacement")
	cfg.InitialCluster, cfg.InitialClusterToken = "", "replacement"
	c2.srv = etcdserver.StartTest(t, cfg)
	admin, err := kvstore.New(context.Background(), c2.srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	c2.admin = admin
	if _, err := c2.srv.EnsureRemoteUser(context.Background(), ownName); err != nil {
		t.Fatal(err)
	}
	// The new apiserver writes its cluster config, then its entries (a
	// different set), the canaries last.
	c2.clusterConfig(2)
	testwait.Until(t, 30*time.Second, "the agent waiting for the replaced etcd's canaries", func() (bool, string) {
		st := a.status("c2")
		return st.kind("nodes").WaitingForCanary && st.kind("ipcache").WaitingForCanary && st.kind("services").WaitingForCanary, fmt.Sprintf("%+v", st)
	})
	if st := a.status("c2"); st.Ready || !st.WaitingForCanary || st.kind("nodes").Synced || !st.Settled() {
		t.Errorf("while waiting for the canaries the status says ready %v, waiting %v, nodes synced %v, settled %v",
			st.Ready, st.WaitingForCanary, st.kind("nodes").Synced, st.Settled())
	}
	c2.node(1)
	c2.node(5)
	c2.ipcache(1)
	c2.ipcache(7)
	c2.ipcache(8)
	time.Sleep(300 * time.Millisecond) // a withdrawal would show by now
	if st, _ := a.dp.Dump(); !sameCluster(st, before, 2) || backendsOf(st, webFE, 2) != 2 {
		tun, ipc := countCluster(st, 2)
		t.Fatalf("entries changed before the canaries: %d tunnels, %d ipcache", tun, ipc)
	}

	c2.canaries()
	after := await(t, a.dp, "c2 converged to the new etcd", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 2 && ipc == 3 && backendsOf(st, webFE, 2) == 0
	})
	for _, i := range []int{1, 5} {
		if !hasTunnel(after, nodeCIDR(2, i)) {
			t.Errorf("tunnel of node %d missing", i)
		}
	}
	// Every kind relists after its own canary: the identities (no
	// datapath state) may follow the others.
	testwait.Until(t, 20*time.Second, "c2's status after the new canaries", func() (bool, string) {
		st := a.status("c2")
		return st.Ready && st.kind("nodes").Entries == 2 && st.kind("ipcache").Entries == 3 &&
			st.kind("services").Entries == 0 && st.kind("identities").Entries == 0, fmt.Sprintf("%+v", st)
	})
}

// sameCluster reports whether a and b hold the same tunnel and ipcache
// entries of cluster id.
func sameCluster(a, b datapath.State, id uint32) bool {
	pick := func(st datapath.State) (map[string]bool, map[string]bool) {
		tun, ipc := map[string]bool{}, map[string]bool{}
		for _, e := range st.Tunnels {
			if e.ClusterID == id {
				tun[e.CIDR.String()+"@"+e.NodeIP.String()] = true
			}
		}
		for _, e := range st.IPCache {
			if e.ClusterID == id {
				ipc[e.Prefix.String()] = true
			}
		}
		return tun, ipc
	}
	at, ai := pick(a)
	bt, bi := pick(b)
	return equalSet(at, bt) && equalSet(ai, bi)
}

func equalSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func hasTunnel(st datapath.State, cidr string) bool {
	for _, e := range st.Tunnels {
		if e.CIDR.String() == cidr {
			return true
		}
	}
	return false
}
