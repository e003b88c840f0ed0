package localcluster

import (
	"context"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/localidentity"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestOtherNodesPods: the own cluster's pods on other nodes get ipcache
// entries from what the cluster's clustermesh-apiserver writes into its
// etcd (identity, own cluster ID; their node as tunnel endpoint in full
// mode, none beside a primary CNI), which follow relabels, moves and
// deletes; this node's pods keep the one entry reconcilePod writes (zero
// tunnel endpoint), also while their kvstore entry outlives the pod. The
// nodes' InternalIPs are host (this node) and remote-node (the others),
// and follow an address change and a node's removal.
func TestOtherNodesPods(t *testing.T) {
	for _, tc := range []struct {
		name    string
		tunnels bool
	}{
		{"full mode", true},
		{"coexistence", false},
	} {
		t.Run(tc.name, func(t *testing.T) { testOtherNodesPods(t, tc.tunnels) })
	}
}

func testOtherNodesPods(t *testing.T, tunnels bool) {
	const web, api, db = 1<<16 | 300, 1<<16 | 301, 1<<16 | 302
	local, other := netip.MustParseAddr("10.1.1.5"), netip.MustParseAddr("10.1.2.7")
	n1, n2, n3 := netip.MustParseAddr("192.168.0.1"), netip.MustParseAddr("192.168.0.2"), netip.MustParseAddr("192.168.0.3")
	n3New := netip.MustParseAddr("192.168.0.33")
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	ctx, cancel := context.WithCancel(context.Background())
	admin, err := kvstore.New(ctx, srv.AdminConfig(), discard)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	put := func(ip netip.Addr, id uint32, host netip.Addr, name string) {
		t.Helper()
		v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, ID: id, HostIP: host, K8sNamespace: "shop", K8sPodName: name})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Etcd().Put(ctx, wire.IPKey(ip), string(v)); err != nil {
			t.Fatal(err)
		}
	}
	del := func(ip netip.Addr) {
		t.Helper()
		if _, err := admin.Etcd().Delete(ctx, wire.IPKey(ip)); err != nil {
			t.Fatal(err)
		}
	}
	put(local, web, n1, "web-1")
	put(other, api, n2, "api-1")
	if _, err := admin.Etcd().Put(ctx, wire.SyncedKey("c1", wire.KindIP), string(wire.FormatTimestamp(time.Now()))); err != nil {
		t.Fatal(err)
	}

	node := func(name string, ip netip.Addr, cidr string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:   corev1.NodeSpec{PodCIDRs: []string{cidr}},
			Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip.String()}}}}
	}
	pod := func(name, nodeName string, ip netip.Addr) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name},
			Spec:   corev1.PodSpec{NodeName: nodeName},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}}}
	}
	client := fake.NewClientset(node("n1", n1, "10.1.1.0/24"), node("n2", n2, "10.1.2.0/24"), node("n3", n3, "10.1.3.0/24"),
		pod("web-1", "n1", local), pod("api-1", "n2", other))

	ucfg, err := srv.EnsureLocalReaderUser(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var w *Watcher
	ids := localidentity.New(localidentity.Config{ClusterName: "c1", ClusterID: 1,
		OnChange: func(ip netip.Addr) { w.Reidentify(ip) }, OnSynced: func() { w.OwnPodsSynced() }},
		func(ctx context.Context) (*kvstore.Client, error) { return kvstore.New(ctx, ucfg, discard) }, discard)
	held := make(chan bool, 1)
	dp := memory.New()
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	merger := servicemerge.New(servicemerge.Config{ClusterID: 1}, rec)
	w = New(Config{NodeName: "n1", ClusterID: 1, NodeTunnels: tunnels, IfIndex: (&fakeRoutes{m: map[netip.Addr]int{local: 7}}).lookup,
		Identity: ids.Identity, OwnPods: ids,
		// The restore hold of the own ID ends here: both sources' entries
		// must be claimed by then.
		OnIPCacheSynced: func() {
			_, okLocal := rec.IPCacheClaim(netip.PrefixFrom(local, 32), 1)
			e, okOther := rec.IPCacheClaim(netip.PrefixFrom(other, 32), 1)
			held <- okLocal && okOther && e.Identity == api
		},
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, client, merger, rec, discard, nil)
	var wg sync.WaitGroup
	wg.Go(func() { _ = ids.Run(ctx) })
	wg.Go(func() { _ = w.Run(ctx) })
	wg.Go(func() { _ = rec.Run(ctx) })
	wg.Go(func() { _ = merger.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	tunnel := func(host netip.Addr) netip.Addr {
		if tunnels {
			return host
		}
		return netip.Addr{}
	}
	// want is the whole own-cluster ipcache: prefix → entry.
	type want map[netip.Addr]datapath.IPCacheEntry
	entry := func(ip netip.Addr, id uint32, tep netip.Addr) datapath.IPCacheEntry {
		return datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ip, 32), Identity: id, TunnelEndpoint: tep, ClusterID: 1}
	}
	// The nodes' InternalIPs: this node host, the others remote-node.
	nodes := want{n1: entry(n1, 1, netip.Addr{}), n2: entry(n2, 6, netip.Addr{}), n3: entry(n3, 6, netip.Addr{})}
	expect := func(step string, exp want) {
		t.Helper()
		exp = maps.Clone(exp)
		for ip, e := range nodes {
			exp[ip] = e
		}
		await(t, dp, step, func(st datapath.State) bool {
			if len(st.IPCache) != len(exp) {
				return false
			}
			for _, e := range exp {
				if got, ok := st.IPCache[e.Prefix]; !ok || got != e {
					return false
				}
			}
			return true
		})
	}
	select {
	case ok := <-held:
		if !ok {
			t.Fatal("own ipcache synced before both sources' entries were claimed")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("own ipcache never synced")
	}
	expect("initial", want{local: entry(local, web, netip.Addr{}), other: entry(other, api, tunnel(n2))})

	for _, step := range []struct {
		name string
		do   func()
		exp  want
	}{
		{"relabelled", func() { put(other, db, n2, "api-1") },
			want{local: entry(local, web, netip.Addr{}), other: entry(other, db, tunnel(n2))}},
		{"moved to n3", func() { put(other, db, n3, "api-2") },
			want{local: entry(local, web, netip.Addr{}), other: entry(other, db, tunnel(n3))}},
		{"this node's pod gone, its kvstore entry not yet", func() {
			if err := client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, want{other: entry(other, db, tunnel(n3))}},
		{"this node's pod's kvstore entry gone", func() { del(local) },
			want{other: entry(other, db, tunnel(n3))}},
		{"other node's pod gone", func() { del(other) }, want{}},
		{"a node's InternalIP changes", func() {
			delete(nodes, n3)
			nodes[n3New] = entry(n3New, 6, netip.Addr{})
			if _, err := client.CoreV1().Nodes().Update(ctx, node("n3", n3New, "10.1.3.0/24"), metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
		}, want{}},
		{"a node gone", func() {
			delete(nodes, n2)
			if err := client.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
		}, want{}},
	} {
		step.do()
		expect(step.name, step.exp)
	}
}
