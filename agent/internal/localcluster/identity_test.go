package localcluster

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// TestPodIdentity: a local pod's ipcache entry carries the identity the
// lookup knows, 0 before it is known, and follows it when Reidentify says
// it changed.
func TestPodIdentity(t *testing.T) {
	ip := netip.MustParseAddr("10.1.1.5")
	client := fake.NewClientset(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIPs: []corev1.PodIP{{IP: ip.String()}}},
	})
	var mu sync.Mutex
	ids := map[netip.Addr]uint32{}
	dp := memory.New()
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	merger := servicemerge.New(servicemerge.Config{ClusterID: 1}, rec)
	w := New(Config{NodeName: "n1", ClusterID: 1, IfIndex: (&fakeRoutes{m: map[netip.Addr]int{ip: 7}}).lookup,
		Identity: func(a netip.Addr) uint32 { mu.Lock(); defer mu.Unlock(); return ids[a] },
		RetryMin: time.Millisecond, RetryMax: 5 * time.Millisecond}, client, merger, rec, discard, nil)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { _ = w.Run(ctx) })
	wg.Go(func() { _ = rec.Run(ctx) })
	wg.Go(func() { _ = merger.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()

	pfx := netip.PrefixFrom(ip, 32)
	await(t, dp, "unknown identity", func(st datapath.State) bool {
		e, ok := st.IPCache[pfx]
		return ok && e.Identity == 0 && e.ClusterID == 1
	})
	for _, step := range []struct {
		name string
		id   uint32
	}{
		{"allocated", 1<<16 | 300},
		{"relabelled", 1<<16 | 301},
		{"gone from the kvstore", 0},
	} {
		mu.Lock()
		if step.id == 0 {
			delete(ids, ip)
		} else {
			ids[ip] = step.id
		}
		mu.Unlock()
		w.Reidentify(ip)
		await(t, dp, step.name, func(st datapath.State) bool { return st.IPCache[pfx].Identity == step.id })
	}
}
