package dpsync

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

func tun(cidr, node string, cluster uint32) datapath.TunnelEntry {
	return datapath.TunnelEntry{CIDR: pfx(cidr), NodeIP: netip.MustParseAddr(node), ClusterID: cluster}
}

// TestTrustRules: each claim a remote may try (issue 13 §2 reproductions)
// against the rules of DESIGN §8. The local cluster (ID 1) has this node
// (pod CIDR 10.1.0.0/24, IP 192.168.1.1) and another node (10.1.1.0/24,
// 192.168.1.2).
func TestTrustRules(t *testing.T) {
	type claim struct {
		tunnel *datapath.TunnelEntry
		ipc    *datapath.IPCacheEntry
	}
	T := func(e datapath.TunnelEntry) claim { return claim{tunnel: &e} }
	I := func(e datapath.IPCacheEntry) claim { return claim{ipc: &e} }
	tests := []struct {
		name    string
		allow   []netip.Prefix
		claims  []claim
		prefix  string // the prefix checked
		tunnel  bool   // in the tunnel map (else the ipcache)
		want    uint32 // cluster whose entry is programmed, 0 none
		refused []Refusal
	}{
		{name: "remote default route tunnel", claims: []claim{T(tun("0.0.0.0/0", "192.168.2.1", 2))},
			prefix: "0.0.0.0/0", tunnel: true, refused: []Refusal{{Kind: "tunnel", ClusterID: 2, Reason: ReasonOverBroad}}},
		{name: "remote default route ipcache", claims: []claim{I(ipc("0.0.0.0/0", 2<<16|300, 2))},
			prefix: "0.0.0.0/0", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonOverBroad}}},
		{name: "remote over-broad tunnel", claims: []claim{T(tun("10.0.0.0/9", "192.168.2.1", 2))},
			prefix: "10.0.0.0/9", tunnel: true, refused: []Refusal{{Kind: "tunnel", ClusterID: 2, Reason: ReasonOverBroad}}},
		{name: "remote claims this node's pod CIDR", claims: []claim{T(tun("10.1.0.0/24", "192.168.2.1", 2))},
			prefix: "10.1.0.0/24", tunnel: true, refused: []Refusal{{Kind: "tunnel", ClusterID: 2, Reason: ReasonLocal}}},
		{name: "remote claims a CIDR around the cluster's pod CIDRs", claims: []claim{T(tun("10.1.0.0/16", "192.168.2.1", 2))},
			prefix: "10.1.0.0/16", tunnel: true, refused: []Refusal{{Kind: "tunnel", ClusterID: 2, Reason: ReasonLocal}}},
		{name: "remote claims another local node's pod CIDR, which the local cluster also routes",
			claims: []claim{T(tun("10.1.1.0/24", "192.168.1.2", 1)), T(tun("10.1.1.0/24", "192.168.2.1", 2))},
			prefix: "10.1.1.0/24", tunnel: true, want: 1, refused: []Refusal{{Kind: "tunnel", ClusterID: 2, Reason: ReasonLocal}}},
		{name: "remote claims a local pod IP", claims: []claim{I(ipc("10.1.0.7/32", 2<<16|300, 2))},
			prefix: "10.1.0.7/32", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonLocal}}},
		{name: "remote claims this cluster's node IP with the host identity", claims: []claim{I(ipc("192.168.1.2/32", ReservedHostIdentity, 2))},
			prefix: "192.168.1.2/32", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonLocal}}},
		{name: "remote entry with the host identity", claims: []claim{I(ipc("10.2.0.5/32", ReservedHostIdentity, 2))},
			prefix: "10.2.0.5/32", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonHostIdentity}}},
		{name: "remote host entry of its own: programmed", claims: []claim{I(ipc("10.2.0.5/32", 2<<16|300, 2))},
			prefix: "10.2.0.5/32", want: 2},
		{name: "remote ipcache CIDR outside its pod CIDRs", claims: []claim{I(ipc("10.9.0.0/24", 2<<16|300, 2))},
			prefix: "10.9.0.0/24", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonNotOwned}}},
		{name: "remote ipcache CIDR inside its node's pod CIDR",
			claims: []claim{I(ipc("10.2.0.128/25", 2<<16|300, 2)), T(tun("10.2.0.0/24", "192.168.2.1", 2))},
			prefix: "10.2.0.128/25", want: 2},
		{name: "remote ipcache CIDR inside another remote's pod CIDR",
			claims: []claim{I(ipc("10.3.0.128/25", 2<<16|300, 2)), T(tun("10.3.0.0/24", "192.168.3.1", 3))},
			prefix: "10.3.0.128/25", refused: []Refusal{{Kind: "ipcache", ClusterID: 2, Reason: ReasonNotOwned}}},
		{name: "remote ipcache CIDR in the allow-list", allow: []netip.Prefix{pfx("172.16.0.0/16")},
			claims: []claim{I(ipc("172.16.5.0/24", 2<<16|300, 2))}, prefix: "172.16.5.0/24", want: 2},
		{name: "two remotes claim one pod IP", claims: []claim{I(ipc("10.2.0.9/32", 2<<16|300, 2)), I(ipc("10.2.0.9/32", 3<<16|300, 3))},
			prefix: "10.2.0.9/32", refused: []Refusal{
				{Kind: "ipcache", ClusterID: 2, Reason: ReasonConflict, Claimants: []uint32{2, 3}},
				{Kind: "ipcache", ClusterID: 3, Reason: ReasonConflict, Claimants: []uint32{2, 3}}}},
		{name: "two remotes claim one pod CIDR", claims: []claim{T(tun("10.5.0.0/24", "192.168.3.1", 3)), T(tun("10.5.0.0/24", "192.168.2.1", 2))},
			prefix: "10.5.0.0/24", tunnel: true, refused: []Refusal{
				{Kind: "tunnel", ClusterID: 2, Reason: ReasonConflict, Claimants: []uint32{2, 3}},
				{Kind: "tunnel", ClusterID: 3, Reason: ReasonConflict, Claimants: []uint32{2, 3}}}},
	}
	for _, tc := range tests {
		for _, order := range []string{"in order", "reversed, local last"} {
			t.Run(tc.name+"/"+order, func(t *testing.T) {
				dp := memory.New()
				cfg := DefaultConfig()
				cfg.ClusterID, cfg.Trust.AllowedPrefixes = 1, tc.allow
				r := New(cfg, dp, discard, clock.RealClock{})
				local := func() {
					r.SetLocalNode("self", []netip.Prefix{pfx("10.1.0.0/24"), pfx("192.168.1.1/32")})
					r.SetLocalNode("other", []netip.Prefix{pfx("10.1.1.0/24"), pfx("192.168.1.2/32")})
				}
				claims := slices.Clone(tc.claims)
				if order != "in order" {
					slices.Reverse(claims)
				} else {
					local()
				}
				for i, c := range claims {
					if c.tunnel != nil {
						r.UpsertTunnel(*c.tunnel)
					} else {
						r.UpsertIPCache(*c.ipc)
					}
					if i == 0 { // a flush between claims: the outcome must not depend on it
						if err := r.Flush(context.Background()); err != nil {
							t.Fatal(err)
						}
					}
				}
				if order != "in order" {
					local()
				}
				if err := r.Flush(context.Background()); err != nil {
					t.Fatal(err)
				}
				st, _ := dp.Dump()
				var got uint32
				if tc.tunnel {
					got = st.Tunnels[pfx(tc.prefix)].ClusterID
				} else {
					got = st.IPCache[pfx(tc.prefix)].ClusterID
				}
				if got != tc.want {
					t.Errorf("programmed cluster %d, want %d", got, tc.want)
				}
				var refused []Refusal
				for _, rf := range r.Refusals() {
					if rf.Prefix == pfx(tc.prefix) {
						rf.Prefix = netip.Prefix{}
						refused = append(refused, rf)
					}
				}
				if !slices.EqualFunc(refused, tc.refused, func(a, b Refusal) bool {
					return a.Kind == b.Kind && a.ClusterID == b.ClusterID && a.Reason == b.Reason && slices.Equal(a.Claimants, b.Claimants)
				}) {
					t.Errorf("refused %+v, want %+v", refused, tc.refused)
				}
			})
		}
	}
}

// TestConflictWithdrawal: once one of two conflicting remotes withdraws
// its claim, the other's entry is programmed, and the refusals clear.
func TestConflictWithdrawal(t *testing.T) {
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	r.UpsertIPCache(ipc("10.2.0.9/32", 2<<16|300, 2))
	r.UpsertIPCache(ipc("10.2.0.9/32", 3<<16|300, 3))
	ctx := context.Background()
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp.IPCache(pfx("10.2.0.9/32")); ok || len(r.Refusals()) != 2 {
		t.Fatalf("conflict: programmed %v, refusals %+v", ok, r.Refusals())
	}
	r.DeleteIPCache(pfx("10.2.0.9/32"), 3)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if e, ok := dp.IPCache(pfx("10.2.0.9/32")); !ok || e.ClusterID != 2 || len(r.Refusals()) != 0 {
		t.Fatalf("after withdrawal: %+v %v, refusals %+v", e, ok, r.Refusals())
	}
}
