//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestFailoverAndFailback: an affinity=local global service. While the
// first cluster has ready backends every new connection stays local; when
// both become unready new connections go to the other clusters (the time
// from the change to the first remote-served connection is logged); when
// one of the two returns it shares new connections with the remote
// backends instead of taking all of them (--failback-share=1); when both
// are back every new connection is local again.
func TestFailoverAndFailback(t *testing.T) { failoverAndFailback(t, mesh(t)) }

func failoverAndFailback(t *testing.T, m *harness.Mesh) {
	cl := clientPod(t, m)
	c1 := m.Clusters[0]
	vip := globalService(t, m, "echo-local", map[string]string{
		"service.cilium.io/global": "true", "service.cilium.io/affinity": "local",
	}, 2)
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	local := c1.Pods()
	var backends []*harness.Pod
	for _, p := range local {
		if p.Name != "client" {
			backends = append(backends, p)
		}
	}
	t.Cleanup(func() {
		for _, p := range backends {
			_ = p.SetReady(context.Background(), true)
		}
	})

	count := func(n int) (map[string]int, int) {
		by, failed := map[string]int{}, 0
		for range n {
			s, err := cl.HTTP(addr, 2*time.Second)
			if err != nil {
				failed++
				continue
			}
			by[s.Cluster]++
		}
		return by, failed
	}
	if by, failed := count(20); by[c1.Name] != 20 {
		t.Fatalf("before failover: by cluster %v, failed %d; want all 20 in %s", by, failed, c1.Name)
	}

	for _, p := range backends {
		if err := p.SetReady(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	changed := time.Now()
	var failover time.Duration
	tries, failedDuring := 0, 0
	for failover == 0 {
		if time.Since(changed) > 60*time.Second {
			t.Fatalf("no connection served remotely 60s after %s's backends became unready (%d tries)", c1.Name, tries)
		}
		tries++
		s, err := cl.HTTP(addr, time.Second)
		switch {
		case err != nil:
			failedDuring++
		case s.Cluster != c1.Name:
			failover = time.Since(changed)
		default:
			time.Sleep(10 * time.Millisecond)
		}
	}
	t.Logf("failover: first remote-served connection %v after the last local backend became unready (%d connections tried, %d failed)", failover.Round(time.Millisecond), tries, failedDuring)
	if by, failed := count(30); by[c1.Name] != 0 || failed != 0 {
		t.Errorf("failed over: by cluster %v, failed %d; want all 30 remote", by, failed)
	}

	// One of two local backends returns: mixed set, no flood.
	if err := backends[0].SetReady(ctx, true); err != nil {
		t.Fatal(err)
	}
	err := eventually(30*time.Second, func() error {
		by, failed := count(60)
		if failed > 0 || by[c1.Name] == 0 || by[c1.Name] > 30 {
			return fmt.Errorf("one local backend back: by cluster %v, failed %d; want 1..30 of 60 local", by, failed)
		}
		t.Logf("one local backend back: by cluster %v", by)
		return nil
	})
	if err != nil {
		t.Error(err)
	}

	for _, p := range backends[1:] {
		if err := p.SetReady(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	changed = time.Now()
	err = eventually(30*time.Second, func() error {
		if by, failed := count(20); by[c1.Name] != 20 {
			return fmt.Errorf("after failback: by cluster %v, failed %d; want all 20 local", by, failed)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("failback: all new connections local within %v of the second backend's return", time.Since(changed).Round(time.Millisecond))
	}
}
