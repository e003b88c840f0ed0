package remotecluster

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestWrittenBySyncstore: the remote is written by the real write-side store,
// one per kind with its sync canary, as the clustermesh-apiserver does.
func TestWrittenBySyncstore(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { cancel(); wg.Wait() }()
	stores := map[wire.Kind]*syncstore.Store{}
	for _, k := range wire.Kinds() {
		prefix := wire.WatchPrefix(k, "c2", false)
		s := syncstore.New(c2.admin, syncstore.Config{Prefix: prefix, SyncedKey: wire.SyncedKey("c2", k), Name: string(k)}, log, nil)
		stores[k] = s
		wg.Go(func() { _ = s.Run(ctx) })
	}
	for i := range 3 {
		n := wire.Node{Name: fmt.Sprintf("n%d", i), Cluster: "c2", ClusterID: 2,
			IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(nodeIP(2, i))}},
			IPv4AllocCIDR: wire.MustParseCIDR(nodeCIDR(2, i))}
		stores[wire.KindNodes].Upsert(wire.NodeKey("c2", n.Name), must(wire.MarshalNode(n)))
	}
	for i := range 10 {
		ip := netip.MustParseAddr(podIP(2, i))
		stores[wire.KindIP].Upsert(wire.IPKey(ip), must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: netip.MustParseAddr(nodeIP(2, 0)), ID: 2<<16 | 300})))
	}
	c2.writeConfig(dir)
	a := startAgent(t, testConfig(dir, ""), memory.New(), nil)
	// The canaries follow MarkSynced once every key handed in is written.
	for _, s := range stores {
		s.MarkSynced()
	}
	await(t, a.dp, "synced from syncstore", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 3 && ipc == 10 && a.status("c2").Ready
	})
	stores[wire.KindIP].Delete(wire.IPKey(netip.MustParseAddr(podIP(2, 3))))
	stores[wire.KindNodes].Delete(wire.NodeKey("c2", "n2"))
	await(t, a.dp, "deletes through syncstore", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		return tun == 2 && ipc == 9
	})
}
