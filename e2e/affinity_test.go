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

// TestAffinitySharedAndLocalServices: affinity=remote sends new
// connections to the other clusters only; a cluster whose Service says
// shared=false serves nobody else but still uses the others' backends; a
// Service that is not global stays in its cluster.
func TestAffinitySharedAndLocalServices(t *testing.T) {
	m := mesh(t)
	cl := clientPod(t, m)
	c1, c2 := m.Clusters[0], m.Clusters[1]
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	global := map[string]string{"service.cilium.io/global": "true"}
	create := func(name string, ann func(*harness.Cluster) map[string]string) map[string]string {
		vips := map[string]string{}
		for _, c := range m.Clusters {
			ip, err := c.CreateService(ctx, name, ann(c))
			if err != nil {
				t.Fatal(err)
			}
			vips[c.Name] = net.JoinHostPort(ip, strconv.Itoa(harness.ServiceHTTPPort))
		}
		return vips
	}
	remote := create("echo-remote", func(*harness.Cluster) map[string]string {
		return map[string]string{"service.cilium.io/global": "true", "service.cilium.io/affinity": "remote"}
	})
	noshare := create("echo-noshare", func(c *harness.Cluster) map[string]string {
		if c == c2 {
			return map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}
		}
		return global
	})
	plain := create("echo-plain", func(*harness.Cluster) map[string]string { return nil })
	for _, w := range []struct {
		node          *harness.Node
		name          string
		all, weighted int
	}{
		{c1.Nodes[0], "echo-remote", 6, 4},
		{c1.Nodes[0], "echo-noshare", 4, 4},
		{c2.Nodes[0], "echo-noshare", 6, 6},
		{c1.Nodes[0], "echo-plain", 2, 2},
	} {
		if err := w.node.WaitBackends(ctx, harness.PodNamespace, w.name, w.all, w.weighted, 90*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	count := func(from *harness.Pod, addr string) map[string]int {
		by := map[string]int{}
		for range 40 {
			s, err := from.HTTP(addr, 2*time.Second)
			if err != nil {
				t.Errorf("%s → %s: %v", from.Name, addr, err)
				continue
			}
			by[s.Cluster]++
		}
		return by
	}
	if by := count(cl, remote[c1.Name]); by[c1.Name] != 0 || len(by) != 2 {
		t.Errorf("affinity=remote from %s: by cluster %v, want only the two others", c1.Name, by)
	} else {
		t.Logf("affinity=remote from %s: %v", c1.Name, by)
	}
	if by := count(cl, noshare[c1.Name]); by[c2.Name] != 0 || len(by) != 2 {
		t.Errorf("shared=false in %s, from %s: by cluster %v, want all but %s", c2.Name, c1.Name, by, c2.Name)
	} else {
		t.Logf("shared=false in %s, from %s: %v", c2.Name, c1.Name, by)
	}
	from2 := c2.Pods()[0]
	if by := count(from2, noshare[c2.Name]); len(by) != 3 {
		t.Errorf("shared=false in %s, from %s itself: by cluster %v, want all three", c2.Name, c2.Name, by)
	} else {
		t.Logf("shared=false in %s, from %s itself: %v", c2.Name, c2.Name, by)
	}
	if by := count(cl, plain[c1.Name]); by[c1.Name] != 40 {
		t.Errorf("non-global service from %s: by cluster %v, want all local", c1.Name, by)
	}
}
