package kvstoremesh

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// fill writes state(i) for i in [from, to) into want.
func (s *source) fill(want map[string]string, from, to int) map[string]string {
	if want == nil {
		want = map[string]string{}
	}
	for i := from; i < to; i++ {
		maps.Copy(want, s.state(i))
	}
	return want
}

func TestMirror(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 5)
	// Invalid entries: what the agent would refuse is not mirrored.
	c2.put(wire.NodeKey("c2", "evil"), must(wire.MarshalNode(wire.Node{Name: "evil", Cluster: "c3", ClusterID: 3})))
	foreign := uint32(3<<16 | 300)
	c2.put(wire.IdentityKey(foreign), must(wire.MarshalIdentity(wire.Identity{ID: foreign, Labels: must(wire.NewLabels(
		wire.Label{Source: "k8s", Key: wire.ClusterLabelKey, Value: "c2"}))})))
	c2.put(wire.IPKey(netip.MustParseAddr("10.2.99.1")), []byte("{not json"))
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)

	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced && s.Connected && s.ID == 2 })
	if got := l.cache("c2"); !maps.Equal(got, want) {
		t.Fatalf("cache holds %d keys, want exactly the %d valid ones: %v", len(got), len(want), got)
	}
	st := l.status("c2")
	for k, n := range map[wire.Kind]uint64{wire.KindNodes: 1, wire.KindIdentities: 1, wire.KindIP: 1, wire.KindServices: 0} {
		if ks := st.kind(k); ks.Invalid != n || ks.Entries != 5 || !ks.CanaryWritten {
			t.Errorf("%s: %+v, want %d invalid, 5 entries, canary written", k, ks, n)
		}
	}

	// The cluster config copy says where the data is.
	cc, err := wire.DecodeClusterConfig([]byte(l.configCopy("c2")))
	if err != nil {
		t.Fatal(err)
	}
	if want := (wire.ClusterConfig{ID: 2, Capabilities: wire.Capabilities{SyncedCanaries: true, Cached: true, MaxConnectedClusters: 255}}); cc.ID != want.ID ||
		cc.Capabilities.Cached != true || !cc.Capabilities.SyncedCanaries || cc.Capabilities.MaxConnectedClusters != 255 || cc.Capabilities.ServiceExportsEnabled != nil {
		t.Fatalf("cluster config copy %+v, want %+v", cc, want)
	}

	// Each canary was written after every key of its kind: its revision is
	// above theirs.
	resp, err := l.admin.Etcd().Get(context.Background(), wire.CachePrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range wire.Kinds() {
		canary, err := l.admin.Etcd().Get(context.Background(), wire.CachedSyncedKey("c2", k))
		if err != nil || len(canary.Kvs) != 1 {
			t.Fatalf("canary of %s: %v %v", k, canary, err)
		}
		for _, kv := range resp.Kvs {
			if strings.HasPrefix(string(kv.Key), wire.KindCachePrefix(k, "c2")) && kv.ModRevision > canary.Kvs[0].ModRevision {
				t.Errorf("%s written at revision %d, after the canary (%d)", kv.Key, kv.ModRevision, canary.Kvs[0].ModRevision)
			}
		}
	}

	// Changes follow: puts, deletes, and an entry turning invalid.
	want = c2.fill(want, 5, 7)
	c2.deleteState(1, want)
	c2.put(wire.NodeKey("c2", "n2"), []byte("{broken"))
	delete(want, wire.CachedNodeKey("c2", "n2"))
	l.awaitCache("puts and deletes mirrored", "c2", want)
}

func TestRemoteDownKeepsCacheAndRelistReconciles(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 4)
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })
	l.awaitCache("mirrored", "c2", want)

	c2.proxy.Block()
	l.awaitStatus("seen down", "c2", func(s Status) bool { return !s.Connected && s.Served && !s.Synced && s.LastError != "" })
	if got := l.cache("c2"); !maps.Equal(got, want) {
		t.Fatalf("cache changed while the remote is down: %d keys, want %d", len(got), len(want))
	}
	// Changes the mirror cannot see while cut off.
	c2.deleteState(0, want)
	want = c2.fill(want, 4, 5)
	c2.proxy.Unblock()
	l.awaitCache("relist after reconnect reconciles", "c2", want)
	l.awaitStatus("synced again", "c2", func(s Status) bool { return s.Synced && s.Connected })
}

func TestRemoteEmptiedWithdrawsNothingUntilCanaries(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	before := c2.fill(nil, 0, 3)
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })
	l.awaitCache("mirrored", "c2", before)

	c2.replace() // empty, no canaries
	l.awaitStatus("waiting for the canaries of the new etcd", "c2", func(s Status) bool {
		return s.kind(wire.KindNodes).WaitingForCanary && !s.Synced
	})
	after := c2.fill(nil, 1, 2) // the apiserver refills, canaries not yet written
	after = c2.fill(after, 7, 8)
	// Give the mirror a chance to act on the partial state: it must not.
	testwait.Until(t, wait, "still waiting", func() (bool, string) {
		return l.status("c2").kind(wire.KindIP).WaitingForCanary, ""
	})
	if got := l.cache("c2"); !maps.Equal(got, before) {
		t.Fatalf("cache changed before the new etcd's canaries: %d keys, want the %d of before", len(got), len(before))
	}
	c2.canaries()
	l.awaitCache("the new etcd's state once its canaries are there", "c2", after)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })
}

func TestStaleTTLWithdrawsOnce(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 2)
	c2.canaries()
	l := startLocal(t, func(c *Config) { c.StaleTTL = 300 * time.Millisecond })
	c2.writeConfig(l.dir)
	l.awaitCache("mirrored", "c2", want)
	c2.proxy.Block()
	l.awaitCache("withdrawn after the stale TTL", "c2", map[string]string{})
	l.awaitStatus("not served", "c2", func(s Status) bool { return !s.Served })
	c2.proxy.Unblock()
	l.awaitCache("back", "c2", want)
}

func TestRemovedConfigDeletesCache(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	c2.fill(nil, 0, 2)
	c2.canaries()
	c20 := startSource(t, "c20", 20)
	want20 := c20.fill(nil, 0, 2)
	c20.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	c20.writeConfig(l.dir)
	l.awaitStatus("c2 synced", "c2", func(s Status) bool { return s.Synced })
	l.awaitStatus("c20 synced", "c20", func(s Status) bool { return s.Synced })
	l.configCopy("c20")

	if err := os.Remove(filepath.Join(l.dir, "c2")); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, wait, "c2's cache, canaries and config deleted", func() (bool, string) {
		n := len(l.cache("c2")) + len(l.dump(wire.SyncedPrefix+"c2/"))
		_, cfg := l.dump(wire.ClusterConfigKey("c2"))[wire.ClusterConfigKey("c2")]
		return n == 0 && !cfg, fmt.Sprintf("%d cache keys and canaries, config copy %v", n, cfg)
	})
	// c20, whose keys begin like c2's, keeps everything.
	if got := l.cache("c20"); !maps.Equal(got, want20) {
		t.Fatalf("c20's cache has %d keys, want %d", len(got), len(want20))
	}
	if _, ok := l.dump(wire.ClusterConfigKey("c20"))[wire.ClusterConfigKey("c20")]; !ok {
		t.Fatal("c20's cluster config copy deleted with c2's")
	}
	if n := len(l.dump(wire.SyncedPrefix + "c20/")); n != len(wire.Kinds()) {
		t.Fatalf("c20 has %d canaries, want %d", n, len(wire.Kinds()))
	}
}

// A kvstoremesh restart deletes from the cache only what the remote
// deleted meanwhile: agents reading the cache withdraw nothing else.
func TestRestartDeletesOnlyWhatTheRemoteDeleted(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 4)
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })
	l.awaitCache("mirrored", "c2", want)
	l.stopMesh()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rev := must(l.admin.Etcd().Get(ctx, "x")).Header.Revision
	wch := l.admin.Etcd().Watch(ctx, wire.CachePrefix, clientv3.WithPrefix(), clientv3.WithRev(rev+1))

	gone := maps.Clone(want)
	c2.deleteState(0, want)
	for k := range want {
		delete(gone, k)
	}
	l.startMesh(nil)
	l.awaitStatus("synced after restart", "c2", func(s Status) bool { return s.Synced })
	l.awaitCache("reconciled", "c2", want)
	// A key under the watched range but no cache store's: every event
	// before it has been delivered once it arrives.
	const sentinel = wire.CachePrefix + "zz-sentinel"
	if _, err := l.admin.Etcd().Put(ctx, sentinel, "x"); err != nil {
		t.Fatal(err)
	}
	deleted := map[string]bool{}
	for seen := false; !seen; {
		wr, ok := <-wch
		if !ok {
			t.Fatal("watch of the cache ended")
		}
		for _, ev := range wr.Events {
			switch {
			case string(ev.Kv.Key) == sentinel:
				seen = true
			case ev.Type == clientv3.EventTypeDelete:
				deleted[string(ev.Kv.Key)] = true
			}
		}
	}
	for k := range deleted {
		if _, ok := gone[k]; !ok {
			t.Errorf("restart deleted %s, which the remote still holds", k)
		}
	}
	if len(deleted) != len(gone) {
		t.Errorf("deleted %d keys, want the %d the remote deleted", len(deleted), len(gone))
	}
}

func TestClusterIDChecks(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	c2.canaries()
	c3 := startSource(t, "c3", 2) // c2's ID
	c3.canaries()
	c4 := startSource(t, "c4", ownID)
	c4.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("c2 synced", "c2", func(s Status) bool { return s.Synced })
	c3.writeConfig(l.dir)
	c4.writeConfig(l.dir)
	for name, reason := range map[string]string{"c3": `used by connected cluster "c2"`, "c4": "local cluster ID"} {
		l.awaitStatus(name+" refused", name, func(s Status) bool { return strings.Contains(s.RefusedReason, reason) })
		if _, ok := l.dump(wire.ClusterConfigKey(name))[wire.ClusterConfigKey(name)]; ok {
			t.Errorf("%s refused, but its cluster config was copied", name)
		}
	}
}

// A mirrored remote that comes back under a cluster ID it may not have
// (here the own) is refused, and what its old ID published is withdrawn
// with the cluster config copy: agents reading the cache see it not ready
// instead of ready and empty. Back on its ID, it is mirrored again.
func TestIDChangedToRefusedWithdraws(t *testing.T) {
	c2 := startSource(t, "c2", 2)
	want := c2.fill(nil, 0, 2)
	c2.canaries()
	l := startLocal(t, nil)
	c2.writeConfig(l.dir)
	l.awaitStatus("synced", "c2", func(s Status) bool { return s.Synced })
	l.awaitCache("mirrored", "c2", want)

	cfgKey := wire.ClusterConfigKey("c2")
	setID := func(id uint32) {
		c2.put(cfgKey, must(json.Marshal(wire.ClusterConfig{ID: id,
			Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})))
	}
	setID(ownID)
	l.awaitStatus("refused", "c2", func(s Status) bool { return strings.Contains(s.RefusedReason, "local cluster ID") })
	l.awaitCache("withdrawn", "c2", map[string]string{})
	testwait.Until(t, wait, "the cluster config copy deleted", func() (bool, string) {
		_, ok := l.dump(cfgKey)[cfgKey]
		return !ok, "still there"
	})
	if s := l.status("c2"); s.Served {
		t.Errorf("refused c2 still served: %+v", s)
	}

	setID(2)
	l.awaitStatus("synced again", "c2", func(s Status) bool { return s.Synced && s.RefusedReason == "" })
	l.awaitCache("mirrored again", "c2", want)
	l.configCopy("c2")
}
