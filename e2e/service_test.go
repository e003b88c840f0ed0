//go:build e2e

package e2e

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

var (
	clientsMu sync.Mutex
	clients   = map[*harness.Mesh]*harness.Pod{} // guarded by clientsMu
)

// clientPod is a pod on the first node of the first cluster of m that is
// no service's backend, made by the first test that needs it.
func clientPod(t *testing.T, m *harness.Mesh) *harness.Pod {
	t.Helper()
	clientsMu.Lock()
	defer clientsMu.Unlock()
	if p := clients[m]; p != nil {
		return p
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	p, err := m.Clusters[0].Nodes[0].AddPod(ctx, "client", map[string]string{"app": "client"})
	if err != nil {
		t.Fatalf("client pod: %v", err)
	}
	clients[m] = p
	return p
}

// globalService creates Service e2e/name with annotations in every cluster
// and waits until the client's agent programs a weighted backend in each
// of them (want backends with non-zero weight in total). It returns the
// first cluster's ClusterIP. Every service has 6 backends (2 per cluster).
func globalService(t *testing.T, m *harness.Mesh, name string, annotations map[string]string, want int) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var vip string
	for i, c := range m.Clusters {
		ip, err := c.CreateService(ctx, name, annotations)
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			vip = ip
		}
	}
	if err := m.Clusters[0].Nodes[0].WaitBackends(ctx, harness.PodNamespace, name, 6, want, 90*time.Second); err != nil {
		t.Fatal(err)
	}
	return vip
}

// TestGlobalServiceSpreadsAcrossClusters: a Service annotated global in
// all three clusters, two ready backends in each; 300 new connections from
// a pod of the first cluster to its own ClusterIP reach backends in every
// cluster, each cluster within 20%..47% of them (expected 1/3: six
// backends of equal weight).
func TestGlobalServiceSpreadsAcrossClusters(t *testing.T) { globalServiceSpreads(t, mesh(t)) }

func globalServiceSpreads(t *testing.T, m *harness.Mesh) {
	cl := clientPod(t, m)
	vip := globalService(t, m, "echo-global", map[string]string{"service.cilium.io/global": "true"}, 6)
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	const total = 300
	byCluster := map[string]int{}
	byPod := map[string]int{}
	failed := 0
	for range total {
		s, err := cl.HTTP(addr, 3*time.Second)
		if err != nil {
			failed++
			t.Logf("connection failed: %v", err)
			continue
		}
		byCluster[s.Cluster]++
		byPod[s.Cluster+"/"+s.Pod]++
	}
	t.Logf("%d connections to %s: by cluster %v, by pod %v, failed %d", total, addr, byCluster, byPod, failed)
	if failed > 0 {
		t.Errorf("%d of %d connections failed", failed, total)
	}
	for _, c := range m.Clusters {
		share := float64(byCluster[c.Name]) / total
		if share < 0.20 || share > 0.47 {
			t.Errorf("cluster %s served %.0f%% of the connections, want 20%%..47%%", c.Name, 100*share)
		}
	}
	// UDP through the same frontend reaches a backend too.
	uaddr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceUDPPort))
	if s, err := cl.UDP(uaddr, 3*time.Second); err != nil {
		t.Errorf("udp via %s: %v", uaddr, err)
	} else {
		t.Logf("udp via %s answered by %s/%s", uaddr, s.Cluster, s.Pod)
	}
}
