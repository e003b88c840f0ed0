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

// The reconciler counts the nodes remote claims name into the node trust
// (CountNodes) and its worker writes it (trustFlush): a node is trusted
// once its entries are handed in, and untrusted once they go.
func TestTrustFlushByReconciler(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	tr := &lockedTrusted{t: trusted{}}
	trust := policysync.NewNodeTrust(tr, 255)
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, memory.New(), etcdserver.TestLogger(), clock.RealClock{})
	rec.Pull(trustFlush{Upstream: servicemerge.New(servicemerge.Config{}, rec), trust: trust, log: etcdserver.TestLogger()})
	rec.CountNodes(trust)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- rec.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := range 20 {
		rec.UpsertIPCache(datapath.IPCacheEntry{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), 32), Identity: 2<<16 | 256, TunnelEndpoint: a, ClusterID: 2})
	}
	testwait.Until(t, 10*time.Second, "node trusted", func() (bool, string) {
		c, ok := tr.get(a)
		return ok && c == 2, fmt.Sprintf("trusted for %d (%v)", c, ok)
	})
	for i := range 20 {
		rec.DeleteIPCache(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, 0, byte(i)}), 32), 2)
	}
	testwait.Until(t, 10*time.Second, "node untrusted", func() (bool, string) {
		c, ok := tr.get(a)
		return !ok, fmt.Sprintf("trusted for %d (%v)", c, ok)
	})
}
