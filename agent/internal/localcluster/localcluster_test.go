package localcluster

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/annotation"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestRouteIfIndex(t *testing.T) {
	idx, err := RouteIfIndex(netip.MustParseAddr("127.0.0.1"))
	if err != nil || idx != 1 {
		t.Fatalf("127.0.0.1: ifindex %d, %v; want lo (1)", idx, err)
	}
	if _, err := RouteIfIndex(netip.MustParseAddr("203.0.113.77")); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("want ErrNoRoute, got %v", err)
	}
}

// fakeRoutes answers IfIndex lookups from a map the test can change.
type fakeRoutes struct {
	mu sync.Mutex
	m  map[netip.Addr]int
}

func (f *fakeRoutes) lookup(ip netip.Addr) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if i, ok := f.m[ip]; ok {
		return i, nil
	}
	return 0, ErrNoRoute
}

func TestWatcher(t *testing.T) {
	client := fake.NewClientset(
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Annotations: map[string]string{annotation.Global: "maybe"}},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
				Ports: []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}}},
		},
		&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "headless"},
			Spec:       corev1.ServiceSpec{ClusterIP: "None"},
		},
		&discoveryv1.EndpointSlice{
			ObjectMeta:  metav1.ObjectMeta{Namespace: "shop", Name: "web-abc", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(corev1.ProtocolTCP)}},
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.1.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
				{Addresses: []string{"10.1.1.6"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(true), Terminating: ptr.To(true)}},
				{Addresses: []string{"10.1.1.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
			},
		},
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n1"},
			Spec:       corev1.NodeSpec{PodCIDR: "10.1.1.0/24", PodCIDRs: []string{"10.1.1.0/24"}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}}},
		},
		&corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: "n2"},
			Spec:       corev1.NodeSpec{PodCIDRs: []string{"10.1.2.0/24"}},
			Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.2"}}},
		},
		&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1"},
			Spec:       corev1.PodSpec{NodeName: "n1"},
			Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.1.1.5", PodIPs: []corev1.PodIP{{IP: "10.1.1.5"}}},
		},
	)
	dp := memory.New()
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	merger := servicemerge.New(servicemerge.Config{ClusterID: 1}, rec)
	routes := &fakeRoutes{m: map[netip.Addr]int{netip.MustParseAddr("10.1.1.5"): 7}}
	synced := make(chan struct{})
	w := New(Config{NodeName: "n1", ClusterID: 1, NodeTunnels: true, IfIndex: routes.lookup, OnSynced: func() { close(synced) },
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, client, merger, rec, discard, nil)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	wg.Go(func() { _ = rec.Run(ctx) })
	wg.Go(func() { _ = merger.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	await(t, dp, "initial state", func(st datapath.State) bool {
		return len(st.Services[fe].Backends) == 2 && len(st.Tunnels) == 1 && len(st.Endpoints) == 1
	})
	<-synced
	if n := w.NodeCount(); n != 2 {
		t.Fatalf("node count %d after sync, want 2", n)
	}
	st, _ := dp.Dump()
	if tun := st.Tunnels[netip.MustParsePrefix("10.1.2.0/24")]; tun.NodeIP != netip.MustParseAddr("192.168.0.2") || tun.ClusterID != 1 {
		t.Fatalf("tunnel of n2: %+v (own node must have none: %v)", tun, st.Tunnels)
	}
	if ep := st.Endpoints[netip.MustParseAddr("10.1.1.5")]; ep.IfIndex != 7 {
		t.Fatalf("endpoint %+v", ep)
	}
	if got := testutilCount(w); got < 1 { // once per reconcile of the Service
		t.Fatalf("annotation warnings %v, want at least 1", got)
	}

	// A pod whose route appears later is retried until it is there.
	_, err := client.CoreV1().Pods("shop").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-2"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: "10.1.1.8"}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	routes.mu.Lock()
	routes.m[netip.MustParseAddr("10.1.1.8")] = 9
	routes.mu.Unlock()
	await(t, dp, "second endpoint", func(st datapath.State) bool { return st.Endpoints[netip.MustParseAddr("10.1.1.8")].IfIndex == 9 })

	// Deletes flow through.
	if err := client.CoreV1().Nodes().Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.DiscoveryV1().EndpointSlices("shop").Delete(ctx, "web-abc", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, dp, "deletes", func(st datapath.State) bool {
		_, svc := st.Services[fe]
		return len(st.Tunnels) == 0 && len(st.Endpoints) == 1 && svc && len(st.Services[fe].Backends) == 0
	})
	if n := w.NodeCount(); n != 1 {
		t.Fatalf("node count %d after deleting n2, want 1", n)
	}
	if err := client.CoreV1().Services("shop").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	await(t, dp, "service delete", func(st datapath.State) bool { return len(st.Services) == 0 })
}

// await waits, on the datapath's change notifications, until cond holds.
func await(t *testing.T, dp *memory.Datapath, what string, cond func(datapath.State) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		ch := dp.Changed()
		st, _ := dp.Dump()
		if cond(st) {
			return
		}
		select {
		case <-ch:
		case <-timeout:
			t.Fatalf("%s: timed out; datapath state %+v", what, st)
		}
	}
}

// TestLocalNodesWinOverRemotes: the watcher hands every node's pod CIDRs
// and addresses, this node's included, to the trust rules: remote claims on
// them are refused, and allowed again once the node is gone.
func TestLocalNodesWinOverRemotes(t *testing.T) {
	client := fake.NewClientset(&corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1"},
		Spec:       corev1.NodeSpec{PodCIDRs: []string{"10.1.1.0/24"}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.0.1"},
			{Type: corev1.NodeExternalIP, Address: "203.0.113.1"}}},
	})
	dp := memory.New()
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	merger := servicemerge.New(servicemerge.Config{ClusterID: 1}, rec)
	synced := make(chan struct{})
	w := New(Config{NodeName: "n1", ClusterID: 1, IfIndex: (&fakeRoutes{}).lookup, OnSynced: func() { close(synced) }}, client, merger, rec, discard, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	<-synced

	claims := []struct {
		name   string
		tunnel *datapath.TunnelEntry
		ipc    *datapath.IPCacheEntry
	}{
		{name: "this node's pod CIDR", tunnel: &datapath.TunnelEntry{CIDR: netip.MustParsePrefix("10.1.1.0/24"), NodeIP: netip.MustParseAddr("192.168.2.1"), ClusterID: 2}},
		{name: "a pod IP of this node", ipc: &datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.1.1.9/32"), Identity: 2<<16 | 300, ClusterID: 2}},
		{name: "this node's InternalIP", ipc: &datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("192.168.0.1/32"), Identity: 6, ClusterID: 2}},
		{name: "this node's ExternalIP", ipc: &datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("203.0.113.1/32"), Identity: 6, ClusterID: 2}},
	}
	for _, c := range claims {
		if c.tunnel != nil {
			rec.UpsertTunnel(*c.tunnel)
		} else {
			rec.UpsertIPCache(*c.ipc)
		}
	}
	if err := rec.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := dp.Dump()
	// Only this node's own entries: its addresses as host.
	own := map[netip.Prefix]datapath.IPCacheEntry{}
	for _, a := range []string{"192.168.0.1/32", "203.0.113.1/32"} {
		own[netip.MustParsePrefix(a)] = datapath.IPCacheEntry{Prefix: netip.MustParsePrefix(a), Identity: 1, ClusterID: 1}
	}
	if len(st.Tunnels) != 0 || !maps.Equal(st.IPCache, own) {
		t.Fatalf("remote claims on the local node programmed: %+v %+v, want only the node's own host entries", st.Tunnels, st.IPCache)
	}
	refused := map[string]dpsync.Reason{}
	for _, r := range rec.Refusals() {
		refused[r.Prefix.String()] = r.Reason
	}
	for _, c := range claims {
		p := ""
		if c.tunnel != nil {
			p = c.tunnel.CIDR.String()
		} else {
			p = c.ipc.Prefix.String()
		}
		if refused[p] != dpsync.ReasonLocal {
			t.Errorf("%s (%s): refused %q, want %q", c.name, p, refused[p], dpsync.ReasonLocal)
		}
	}

	if err := client.CoreV1().Nodes().Delete(ctx, "n1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	wg.Go(func() { _ = rec.Run(ctx) })
	await(t, dp, "remote claims programmed once the node is gone", func(st datapath.State) bool {
		for _, e := range st.IPCache {
			if e.ClusterID != 2 {
				return false
			}
		}
		return len(st.Tunnels) == 1 && len(st.IPCache) == 3
	})
}
