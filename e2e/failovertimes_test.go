//go:build e2e

package e2e

import (
	"context"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestFailoverTimes measures, E2E_FAILOVER_RUNS times (skipped when unset),
// the failover time (last local backend of an affinity=local service made
// unready → first new connection served remotely) and the failback time
// (local backends ready again → first new connection served locally), and
// logs p50/p99. A figure for bench/, not an assertion.
func TestFailoverTimes(t *testing.T) {
	runs := measureRuns(t, "E2E_FAILOVER_RUNS")
	m := mesh(t)
	cl := clientPod(t, m)
	c1 := m.Clusters[0]
	vip := globalService(t, m, "echo-times", map[string]string{
		"service.cilium.io/global": "true", "service.cilium.io/affinity": "local",
	}, 2)
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	var backends []*harness.Pod
	for _, p := range c1.Pods() {
		if p != cl {
			backends = append(backends, p)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		for _, p := range backends {
			_ = p.SetReady(context.Background(), true)
		}
	})
	// until sends new connections until one is served (remote or not) and
	// returns the time since start.
	until := func(start time.Time, remote bool) time.Duration {
		for time.Since(start) < time.Minute {
			s, err := cl.HTTP(addr, time.Second)
			if err == nil && (s.Cluster != c1.Name) == remote {
				return time.Since(start)
			}
			time.Sleep(5 * time.Millisecond)
		}
		t.Fatalf("no %v-served connection within a minute", remote)
		return 0
	}
	var over, back []time.Duration
	for range runs {
		for _, p := range backends {
			if err := p.SetReady(ctx, false); err != nil {
				t.Fatal(err)
			}
		}
		over = append(over, until(time.Now(), true))
		for _, p := range backends {
			if err := p.SetReady(ctx, true); err != nil {
				t.Fatal(err)
			}
		}
		back = append(back, until(time.Now(), false))
		time.Sleep(500 * time.Millisecond)
	}
	pct := func(d []time.Duration, p float64) time.Duration {
		s := slices.Clone(d)
		slices.Sort(s)
		i := int(p*float64(len(s)-1) + 0.5)
		return s[i].Round(time.Millisecond)
	}
	t.Logf("%d runs: failover p50 %v p99 %v max %v; failback p50 %v p99 %v max %v",
		runs, pct(over, 0.5), pct(over, 0.99), pct(over, 1), pct(back, 0.5), pct(back, 0.99), pct(back, 1))
}
