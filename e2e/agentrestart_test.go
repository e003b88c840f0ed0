//go:build e2e

package e2e

import (
	"context"
	"net"
	"strconv"
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

	l := startLoad(cl, target.HTTPAddr(), svcAddr)
	var udpSent, udpFailed int
	l.every(50*time.Millisecond, func() {
		udpSent++
		if _, err := cl.UDP(target.UDPAddr(), time.Second); err != nil {
			udpFailed++
		}
	})

	for _, n := range []*harness.Node{cl.Node, target.Node} {
		for _, kill := range []bool{false, true} {
			before := l.sent.Load()
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
			t.Logf("agent %s/%s restarted (kill %v): %d requests meanwhile", n.Cluster.Name, n.Name, kill, l.sent.Load()-before)
		}
	}
	sent, failed, failures := l.stop()
	t.Logf("%d HTTP requests (new connections), %d failed; %d UDP echoes, %d failed", sent, failed, udpSent, udpFailed)
	if failed > 0 || udpFailed > 0 {
		t.Errorf("requests failed during agent restarts: %d HTTP, %d UDP; first: %v", failed, udpFailed, failures)
	}
	if sent < 200 {
		t.Errorf("only %d requests sent: the traffic did not run", sent)
	}
}
