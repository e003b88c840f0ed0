//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestAPIServerLossKeepsCachedState (scenario 6): the second cluster's
// clustermesh-apiserver is killed, and the etcd it embeds with it. The other
// clusters' agents keep the state they have: pods and a global service
// backed by that cluster stay reachable. While it is down one of the
// service's backend pods is deleted there. When the apiserver is back
// (same etcd data directory, which still holds the deleted pod's keys),
// every agent of the other clusters converges to exactly the new state: the
// deleted pod's IP is gone from their ipcache and from the service, the
// other backend stays.
func TestAPIServerLossKeepsCachedState(t *testing.T) {
	m := mesh(t)
	cl := clientPod(t, m)
	c2 := m.Clusters[1]
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// Two backends in c2 only, for a global service that also exists
	// (without local backends) in c1.
	var kept, doomed *harness.Pod
	for i, n := range c2.Nodes[:2] {
		p, err := n.AddPod(ctx, fmt.Sprintf("loss-%d", i), map[string]string{"app": "loss"})
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			kept = p
		} else {
			doomed = p
		}
	}
	t.Cleanup(func() {
		if slices.Contains(doomed.Node.Pods, doomed) {
			_ = doomed.Delete(context.Background())
		}
		_ = kept.Delete(context.Background())
	})
	ann := map[string]string{"service.cilium.io/global": "true"}
	var vip string
	for _, c := range []*harness.Cluster{m.Clusters[0], c2} {
		ip, err := c.CreateServiceFor(ctx, "loss", map[string]string{"app": "loss"}, ann)
		if err != nil {
			t.Fatal(err)
		}
		if c == m.Clusters[0] {
			vip = ip
		}
	}
	others := otherNodes(m, c2)
	for _, n := range others {
		if n.Cluster == m.Clusters[0] {
			if err := n.WaitBackends(ctx, harness.PodNamespace, "loss", 2, 2, 90*time.Second); err != nil {
				t.Fatal(err)
			}
		}
		if err := waitIPCache(ctx, n, map[string]bool{kept.IP.String() + "/32": true, doomed.IP.String() + "/32": true}); err != nil {
			t.Fatal(err)
		}
	}
	svcAddr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))

	killed := killAPIServer(t, c2)
	// The agents notice (the session breaks) but keep what they have; in
	// connection mode kvstoremesh the other clusters' kvstoremesh does and
	// keeps serving c2's last state to their agents.
	if err := waitRemoteDown(ctx, m, c2); err != nil {
		t.Fatal(err)
	}
	t.Logf("every other cluster saw %s's kvstore go away within %v (connection mode %s)", c2.Name, time.Since(killed).Round(time.Millisecond), m.Connection())
	reach := func(when string) {
		t.Helper()
		for _, p := range []*harness.Pod{kept, doomed} {
			if _, err := cl.HTTP(p.HTTPAddr(), 2*time.Second); err != nil {
				t.Errorf("%s: %s/%s → %s/%s: %v", when, cl.Node.Cluster.Name, cl.Name, c2.Name, p.Name, err)
			}
		}
		if err := m.Clusters[2].Pods()[0].Ping(kept.IP, 2*time.Second); err != nil {
			t.Errorf("%s: %s → %s/%s ping: %v", when, m.Clusters[2].Name, c2.Name, kept.Name, err)
		}
		by := map[string]int{}
		for range 20 {
			s, err := cl.HTTP(svcAddr, 2*time.Second)
			if err != nil {
				t.Errorf("%s: service %s: %v", when, svcAddr, err)
				continue
			}
			by[s.Pod]++
		}
		if by[kept.Name] == 0 || by[doomed.Name] == 0 {
			t.Errorf("%s: service answered by %v, want both %s and %s", when, by, kept.Name, doomed.Name)
		}
	}
	reach("kvstore down")

	// Delete a backend while nothing can publish it.
	if err := doomed.Delete(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // the EndpointSlice changes in c2, nothing else can
	for _, n := range others {
		if n.Cluster != m.Clusters[0] {
			continue
		}
		bs, err := n.Backends(ctx, harness.PodNamespace, "loss")
		if err != nil {
			t.Fatal(err)
		}
		if len(bs[c2.Name]) != 2 {
			t.Errorf("agent %s/%s changed %s's backends while its kvstore was down: %v", n.Cluster.Name, n.Name, c2.Name, bs)
		}
	}
	if _, err := cl.HTTP(kept.HTTPAddr(), 2*time.Second); err != nil {
		t.Errorf("kvstore down, after the delete: %s/%s unreachable: %v", c2.Name, kept.Name, err)
	}

	if err := c2.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Fatal(err)
	}
	keptKey, doomedKey := kept.IP.String()+"/32", doomed.IP.String()+"/32"
	for _, n := range others {
		err := eventually(60*time.Second, func() error {
			ipc, err := n.IPCache(ctx)
			if err != nil {
				return err
			}
			if _, ok := ipc[doomedKey]; ok {
				return fmt.Errorf("agent %s/%s: stale ipcache entry %s of the deleted pod", n.Cluster.Name, n.Name, doomedKey)
			}
			if id := ipc[keptKey]; id != c2.ID {
				return fmt.Errorf("agent %s/%s: ipcache %s has cluster %d, want %d", n.Cluster.Name, n.Name, keptKey, id, c2.ID)
			}
			if n.Cluster != m.Clusters[0] {
				return nil
			}
			bs, err := n.Backends(ctx, harness.PodNamespace, "loss")
			if err != nil {
				return err
			}
			want := map[string]uint32{kept.HTTPAddr(): 1}
			if len(bs) != 1 || !maps.Equal(bs[c2.Name], want) {
				return fmt.Errorf("agent %s/%s: backends %v, want only %s's %v", n.Cluster.Name, n.Name, bs, c2.Name, want)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	t.Logf("%s's apiserver back: every other agent ready and converged %v later", c2.Name, time.Since(back).Round(time.Millisecond))
	for range 20 {
		s, err := cl.HTTP(svcAddr, 2*time.Second)
		if err != nil || s.Pod != kept.Name {
			t.Errorf("after convergence: service answered by %v (%v), want only %s", s, err, kept.Name)
		}
	}
}

// waitRemoteDown waits until every other cluster sees gone's etcd
// unreachable: in connection mode direct every agent, in kvstoremesh mode
// every kvstoremesh, which serves its last state meanwhile.
func waitRemoteDown(ctx context.Context, m *harness.Mesh, gone *harness.Cluster) error {
	for _, c := range m.Clusters {
		if c == gone {
			continue
		}
		if m.Connection() == harness.ConnectionDirect {
			for _, n := range c.Nodes {
				if err := waitConnected(ctx, n, gone.Name, false); err != nil {
					return err
				}
			}
			continue
		}
		err := eventually(60*time.Second, func() error {
			r, err := cachedRemote(ctx, m, c, gone.Name)
			if err != nil {
				return err
			}
			if r.Connected || !r.Served {
				return fmt.Errorf("%s's kvstoremesh: %s connected %v, served %v", c.Name, gone.Name, r.Connected, r.Served)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// otherNodes returns the nodes of every cluster but c.
func otherNodes(m *harness.Mesh, c *harness.Cluster) []*harness.Node {
	var out []*harness.Node
	for _, o := range m.Clusters {
		if o != c {
			out = append(out, o.Nodes...)
		}
	}
	return out
}

// waitIPCache waits until n's agent has an ipcache entry for every prefix of want.
func waitIPCache(ctx context.Context, n *harness.Node, want map[string]bool) error {
	return eventually(60*time.Second, func() error {
		ipc, err := n.IPCache(ctx)
		if err != nil {
			return err
		}
		for p := range want {
			if _, ok := ipc[p]; !ok {
				return fmt.Errorf("agent %s/%s: no ipcache entry %s", n.Cluster.Name, n.Name, p)
			}
		}
		return nil
	})
}
