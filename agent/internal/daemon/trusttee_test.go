package daemon

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// trusted records the trusted nodes the node trust programs.
type trusted map[netip.Addr]uint32

func (t trusted) Apply(b datapath.PolicyBatch) error {
	for _, n := range b.UpsertNodes {
		t[n.IP] = n.ClusterID
	}
	for _, ip := range b.DeleteNodes {
		delete(t, ip)
	}
	return nil
}

// The tee trusts a node while a tunnel route or ipcache entry of its
// cluster names it, and forgets it once none does.
func TestTrustTee(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	pod, cidr := netip.MustParsePrefix("10.2.0.5/32"), netip.MustParsePrefix("10.2.0.0/24")
	tr := trusted{}
	trust := policysync.NewNodeTrust(tr, 255)
	tee := newTrustTee(dpsync.New(dpsync.Config{ClusterID: 1}, memory.New(), etcdserver.TestLogger(), clock.RealClock{}), trust)
	for _, step := range []struct {
		name string
		do   func()
		want trusted
	}{
		{"ipcache entry names a", func() {
			tee.UpsertIPCache(datapath.IPCacheEntry{Prefix: pod, Identity: 2<<16 | 256, TunnelEndpoint: a, ClusterID: 2})
		}, trusted{a: 2}},
		{"tunnel route names a too", func() { tee.UpsertTunnel(datapath.TunnelEntry{CIDR: cidr, NodeIP: a, ClusterID: 2}) }, trusted{a: 2}},
		{"the entry moves to b", func() {
			tee.UpsertIPCache(datapath.IPCacheEntry{Prefix: pod, Identity: 2<<16 | 256, TunnelEndpoint: b, ClusterID: 2})
		}, trusted{a: 2, b: 2}},
		{"cluster 3 claims the same pod at c", func() {
			tee.UpsertIPCache(datapath.IPCacheEntry{Prefix: pod, Identity: 3<<16 | 256, TunnelEndpoint: c, ClusterID: 3})
		}, trusted{a: 2, b: 2, c: 3}},
		{"cluster 3's claim goes, cluster 2's stays", func() { tee.DeleteIPCache(pod, 3) }, trusted{a: 2, b: 2}},
		{"the route goes: a unnamed", func() { tee.DeleteTunnel(cidr, 2) }, trusted{b: 2}},
		{"the entry goes", func() { tee.DeleteIPCache(pod, 2) }, trusted{}},
	} {
		step.do()
		if err := trust.Flush(); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if len(tr) != len(step.want) {
			t.Fatalf("%s: trusted %v, want %v", step.name, tr, step.want)
		}
		for ip, id := range step.want {
			if tr[ip] != id {
				t.Fatalf("%s: trusted %v, want %v", step.name, tr, step.want)
			}
		}
	}
}

// lockedTrusted is trusted, written by the reconciler's worker.
type lockedTrusted struct {
	mu sync.Mutex
	t  trusted
}

func (l *lockedTrusted) Apply(b datapath.PolicyBatch) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.t.Apply(b)
}

func (l *lockedTrusted) get(ip netip.Addr) (uint32, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c, ok := l.t[ip]
	return c, ok
}

// The reconciler's worker writes the node trust (trustFlush): a node is
// trusted once its entries are handed in, and untrusted once they go.
func TestTrustFlushByReconciler(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	tr := &lockedTrusted{t: trusted{}}
	trust := policysync.NewNodeTrust(tr, 255)
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, memory.New(), etcdserver.TestLogger(), clock.RealClock{})
	rec.Pull(trustFlush{Upstream: servicemerge.New(servicemerge.Config{}, rec), trust: trust, log: etcdserver.TestLogger()})
	tee := newTrustTee(rec, trust)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := range 20 {
		tee.UpsertIPCache(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), 32), Identity: 2<<16 | 256, TunnelEndpoint: a, ClusterID: 2})
	}
	testwait.Until(t, 10*time.Second, "node trusted", func() (bool, string) {
		c, ok := tr.get(a)
		return ok && c == 2, fmt.Sprintf("trusted for %d (%v)", c, ok)
	})
	for i := range 20 {
		tee.DeleteIPCache(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), 32), 2)
	}
	testwait.Until(t, 10*time.Second, "node untrusted", func() (bool, string) {
		c, ok := tr.get(a)
		return !ok, fmt.Sprintf("trusted for %d (%v)", c, ok)
	})
}
