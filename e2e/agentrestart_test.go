//go:build e2e

package e2e

import (
	"context"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestAgentRestartUnderTraffic (scenario 7): while a pod of the first
// cluster sends new connections without pause to a pod of the second
// cluster and to a global service, the agents on the client's node and on
// the target pod's node are restarted, gracefully (SIGTERM) and then killed
// (SIGKILL). Their datapath stays pinned and keeps forwarding; the
// restarted agents restore it and resync. Not one request may fail.
func TestAgentRestartUnderTraffic(t *testing.T) {
	m := mesh(t)
	cl := clientPod(t, m)
	c2 := m.Clusters[1]
	target := c2.Nodes[0].Pods[0]
	vip := globalService(t, m, "echo-restart", map[string]string{"service.cilium.io/global": "true"}, 6)
	svcAddr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	var (
		sent, failed atomic.Int64
		mu           sync.Mutex
		failures     []string
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	// every runs f every d until stop is closed.
	every := func(d time.Duration, f func()) {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				f()
				time.Sleep(d)
			}
		})
	}
	for _, addr := range []string{target.HTTPAddr(), svcAddr} {
		every(10*time.Millisecond, func() {
			sent.Add(1)
			if _, err := cl.HTTP(addr, 2*time.Second); err != nil {
				failed.Add(1)
				mu.Lock()
				if len(failures) < 10 {
					failures = append(failures, time.Now().Format("15:04:05.000")+" "+addr+": "+err.Error())
				}
				mu.Unlock()
			}
		})
	}
	udpSent, udpFailed := 0, 0
	every(50*time.Millisecond, func() {
		udpSent++
		if _, err := cl.UDP(target.UDPAddr(), time.Second); err != nil {
			udpFailed++
		}
	})

	for _, n := range []*harness.Node{cl.Node, target.Node} {
		for _, kill := range []bool{false, true} {
			before := sent.Load()
			if kill {
				n.Agent.Kill()
			} else {
				n.StopAgent()
			}
			time.Sleep(time.Second) // traffic with no agent at all
			if err := n.StartAgent(); err != nil {
				t.Fatal(err)
			}
			if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
				t.Fatal(err)
			}
			time.Sleep(2 * time.Second) // and after the resync
			t.Logf("agent %s/%s restarted (kill %v): %d requests meanwhile", n.Cluster.Name, n.Name, kill, sent.Load()-before)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d HTTP requests (new connections), %d failed; %d UDP echoes, %d failed", sent.Load(), failed.Load(), udpSent, udpFailed)
	if failed.Load() > 0 || udpFailed > 0 {
		t.Errorf("requests failed during agent restarts: %d HTTP, %d UDP; first: %v", failed.Load(), udpFailed, failures)
	}
	if sent.Load() < 200 {
		t.Errorf("only %d requests sent: the traffic did not run", sent.Load())
	}
}
