//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// TestDisconnectWithdrawsRoutesAndBackends: when the last cluster is
// disconnected from the others (its config removed from their agents'
// directories and theirs from its), its backends vanish from the global
// service of the first cluster and its pods become unreachable from every
// other cluster. The cluster is connected again at the end.
func TestDisconnectWithdrawsRoutesAndBackends(t *testing.T) {
	m := mesh(t)
	cl := clientPod(t, m)
	gone := m.Clusters[len(m.Clusters)-1]
	vip := globalService(t, m, "echo-disconnect", map[string]string{"service.cilium.io/global": "true"}, 6)
	addr := net.JoinHostPort(vip, strconv.Itoa(harness.ServiceHTTPPort))
	target := gone.Pods()[0]
	if _, err := cl.HTTP(target.HTTPAddr(), 2*time.Second); err != nil {
		t.Fatalf("before disconnect: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	t.Cleanup(func() {
		start := time.Now()
		reconnect(t, m, gone)
		t.Logf("reconnected %s: every agent ready after %v", gone.Name, time.Since(start).Round(time.Millisecond))
	})
	for _, c := range m.Clusters {
		if c != gone {
			if err := m.Disconnect(ctx, c, gone); err != nil {
				t.Fatal(err)
			}
		}
	}
	disconnected := time.Now()
	gonePrefix := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(gone.ID), 0, 0}), 16)
	for _, c := range m.Clusters[:len(m.Clusters)-1] {
		for _, n := range c.Nodes {
			err := eventually(30*time.Second, func() error {
				if c != m.Clusters[0] {
					return nil
				}
				bs, err := n.Backends(ctx, harness.PodNamespace, "echo-disconnect")
				if err != nil {
					return err
				}
				for _, byAddr := range bs {
					for a := range byAddr {
						if ap, err := netip.ParseAddrPort(a); err == nil && gonePrefix.Contains(ap.Addr()) {
							return fmt.Errorf("agent %s/%s still has backend %s", c.Name, n.Name, a)
						}
					}
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
		for _, from := range c.Pods() {
			err := eventually(30*time.Second, func() error {
				if s, err := from.HTTP(target.HTTPAddr(), 500*time.Millisecond); err == nil {
					return fmt.Errorf("%s/%s still reaches %s/%s (answered by %v)", c.Name, from.Name, gone.Name, target.Name, s)
				}
				if err := from.Ping(target.IP, time.Second); err == nil {
					return fmt.Errorf("%s/%s still pings %s/%s", c.Name, from.Name, gone.Name, target.Name)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
	}
	since := time.Since(disconnected)
	by := map[string]int{}
	for range 30 {
		if s, err := cl.HTTP(addr, 2*time.Second); err == nil {
			by[s.Cluster]++
		} else {
			t.Errorf("service after disconnect: %v", err)
		}
	}
	if by[gone.Name] != 0 {
		t.Errorf("after disconnect the service still reaches %s: %v", gone.Name, by)
	}
	t.Logf("after disconnecting %s (all checks passed %v after the disconnect): 30 connections by cluster %v", gone.Name, since.Round(time.Millisecond), by)
}

// reconnect connects gone with every other cluster again and waits until
// the mesh is ready; failures are test errors.
func reconnect(t *testing.T, m *harness.Mesh, gone *harness.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for _, c := range m.Clusters {
		if c != gone {
			if err := m.Connect(ctx, c, gone); err != nil {
				t.Errorf("reconnect: %v", err)
			}
		}
	}
	if err := m.WaitReady(ctx, 2*time.Minute); err != nil {
		t.Errorf("reconnect: %v", err)
	}
}
