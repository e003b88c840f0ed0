package daemon

import (
	"context"
	"log/slog"
	"net/netip"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// TestResolveAddress: `policy trace` names an address by the identity the
// datapath gives it: the longest programmed ipcache prefix's (a pod, a CIDR
// identity, an except prefix inside another), a local pod whose entry has
// no identity yet by the own cluster's identity, anything else world.
func TestResolveAddress(t *testing.T) {
	rec := dpsync.New(dpsync.Config{ClusterID: 1}, memory.New(), slog.New(slog.DiscardHandler), clock.RealClock{})
	rec.SetLocalNode("self", []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")})
	rec.UpsertIPCache(datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.1.0.7/32"), Identity: 1<<16 | 300, ClusterID: 1})
	rec.UpsertIPCache(datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.1.0.8/32"), ClusterID: 1})
	rec.UpsertCIDR(netip.MustParsePrefix("10.0.0.0/8"), 1<<24|1)
	rec.UpsertCIDR(netip.MustParsePrefix("10.9.0.0/16"), 1<<24|2)
	rec.UpsertCIDR(netip.MustParsePrefix("2001:db8::/32"), 1<<24|3)
	if err := rec.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	p := &policyPlane{ipc: rec, identityOf: func(a netip.Addr) uint32 {
		if a == netip.MustParseAddr("10.1.0.8") {
			return 1<<16 | 301
		}
		return 0
	}}
	for _, tc := range []struct {
		addr string
		want policy.ID
	}{
		{"10.1.0.7", 1<<16 | 300},
		{"10.1.0.8", 1<<16 | 301},
		{"10.1.0.9", 2}, // a local pod CIDR inside a CIDR prefix: world
		{"10.2.3.4", 1<<24 | 1},
		{"10.9.3.4", 1<<24 | 2},
		{"2001:db8::1", 1<<24 | 3},
		{"192.0.2.1", 2},
	} {
		t.Run(tc.addr, func(t *testing.T) {
			ids, err := p.Resolve(tc.addr)
			if err != nil || len(ids) != 1 || ids[0] != tc.want {
				t.Errorf("Resolve(%s) = %v, %v; want [%d]", tc.addr, ids, err, tc.want)
			}
		})
	}
}

// TestRestoredCIDRs: of the restored ipcache, only the entries of CIDR
// identities are handed to the policy plane.
func TestRestoredCIDRs(t *testing.T) {
	st := datapath.NewState()
	for p, id := range map[string]uint32{"10.1.0.7/32": 1<<16 | 300, "192.0.2.0/24": 1<<24 | 5, "10.1.0.0/24": 2} {
		st.IPCache[netip.MustParsePrefix(p)] = datapath.IPCacheEntry{Prefix: netip.MustParsePrefix(p), Identity: id}
	}
	got := restoredCIDRs(st)
	if len(got) != 1 || got[netip.MustParsePrefix("192.0.2.0/24")] != 1<<24|5 {
		t.Errorf("restored CIDRs %v, want 192.0.2.0/24 only", got)
	}
}
