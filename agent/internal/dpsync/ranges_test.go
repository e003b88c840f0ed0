package dpsync

import (
	"context"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// TestClusterRanges: with cluster ranges (coexistence mode, --cluster-cidrs)
// every range and every local prefix gets a world entry below the claims,
// so that only an address outside the cluster has no entry; a node
// address's own claim (remote-node) and a pod's win; a CIDR prefix around a
// range keeps its identity outside the range; the local prefixes follow
// the nodes. Without ranges, nothing but claims and CIDR entries is
// programmed.
func TestClusterRanges(t *testing.T) {
	const lDoc = 1<<24 + 1
	dp := memory.New()
	r := New(Config{ClusterID: 1, ClusterCIDRs: []netip.Prefix{pfx("192.168.0.0/16"), pfx("10.244.7.1/16")}}, dp, discard, clock.RealClock{})
	if got, want := r.ClusterCIDRs(), []netip.Prefix{pfx("10.244.0.0/16"), pfx("192.168.0.0/16")}; !slices.Equal(got, want) {
		t.Fatalf("ClusterCIDRs() = %v, want %v (masked, sorted)", got, want)
	}
	steps := []struct {
		name   string
		change func()
		want   map[string]uint32
	}{
		{"the ranges alone", func() {}, map[string]uint32{"10.244.0.0/16": WorldIdentity, "192.168.0.0/16": WorldIdentity}},
		{"a node: its pod CIDR and addresses, the address claimed as remote-node", func() {
			r.SetLocalNode("other", []netip.Prefix{pfx("10.1.1.0/24"), pfx("172.18.0.3/32"), pfx("172.18.0.4/32")})
			r.UpsertIPCache(ipc("172.18.0.3/32", 6, 1))
			r.UpsertIPCache(ipc("10.1.1.9/32", 1<<16|300, 1))
		}, map[string]uint32{"10.244.0.0/16": WorldIdentity, "192.168.0.0/16": WorldIdentity,
			"10.1.1.0/24": WorldIdentity, "172.18.0.3/32": 6, "172.18.0.4/32": WorldIdentity, "10.1.1.9/32": 1<<16 | 300}},
		{"a CIDR prefix around a range", func() { r.UpsertCIDR(pfx("192.0.0.0/8"), lDoc) }, map[string]uint32{
			"10.244.0.0/16": WorldIdentity, "192.168.0.0/16": WorldIdentity, "192.0.0.0/8": lDoc,
			"10.1.1.0/24": WorldIdentity, "172.18.0.3/32": 6, "172.18.0.4/32": WorldIdentity, "10.1.1.9/32": 1<<16 | 300}},
		{"a CIDR prefix equal to a range: the range's world entry", func() { r.UpsertCIDR(pfx("10.244.0.0/16"), lDoc+1) }, map[string]uint32{
			"10.244.0.0/16": WorldIdentity, "192.168.0.0/16": WorldIdentity, "192.0.0.0/8": lDoc,
			"10.1.1.0/24": WorldIdentity, "172.18.0.3/32": 6, "172.18.0.4/32": WorldIdentity, "10.1.1.9/32": 1<<16 | 300}},
		{"the node leaves and its claims go", func() {
			r.SetLocalNode("other", nil)
			r.DeleteIPCache(pfx("172.18.0.3/32"), 1)
			r.DeleteIPCache(pfx("10.1.1.9/32"), 1)
			r.DeleteCIDR(pfx("192.0.0.0/8"))
			r.DeleteCIDR(pfx("10.244.0.0/16"))
		}, map[string]uint32{"10.244.0.0/16": WorldIdentity, "192.168.0.0/16": WorldIdentity}},
	}
	for _, s := range steps {
		s.change()
		if got := programmedIdentities(t, r, dp); !maps.Equal(got, s.want) {
			t.Fatalf("%s:\n got  %v\n want %v", s.name, sorted(got), sorted(s.want))
		}
	}

	// Without ranges (the default), a local prefix outside every CIDR
	// prefix has no entry.
	dp2 := memory.New()
	none := New(Config{ClusterID: 1}, dp2, discard, clock.RealClock{})
	none.SetLocalNode("other", []netip.Prefix{pfx("10.1.1.0/24"), pfx("172.18.0.4/32")})
	if got := programmedIdentities(t, none, dp2); len(got) != 0 {
		t.Fatalf("no ranges: programmed %v, want nothing", got)
	}
	if got := none.ClusterCIDRs(); len(got) != 0 {
		t.Fatalf("no ranges: ClusterCIDRs() = %v", got)
	}
}

// TestClusterRangesRestart: the range entries an earlier agent programmed
// are kept without a rewrite when the ranges stay, and a range no longer
// configured goes once CIDRClusterID is released.
func TestClusterRangesRestart(t *testing.T) {
	dp := memory.New()
	first := New(Config{ClusterID: 1, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16"), pfx("192.168.0.0/16")}}, dp, discard, clock.RealClock{})
	programmedIdentities(t, first, dp)

	r := New(Config{ClusterID: 1, ClusterCIDRs: []netip.Prefix{pfx("10.244.0.0/16")}}, dp, discard, clock.RealClock{})
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, _ := dp.Dump()
	if len(st.IPCache) != 2 {
		t.Fatalf("before the release: %v, want both restored entries", st.IPCache)
	}
	r.Release(CIDRClusterID)
	if got := programmedIdentities(t, r, dp); !maps.Equal(got, map[string]uint32{"10.244.0.0/16": WorldIdentity}) {
		t.Fatalf("after the release: %v", got)
	}
}

// TestParsePrefixes: lists of CIDRs, masked; a bad one is an error naming it.
func TestParsePrefixes(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []netip.Prefix
		err      bool
	}{
		{"empty", "", nil, false},
		{"two, spaces and a host part", " 10.244.1.1/16, fd00:10::/56 ", []netip.Prefix{pfx("10.244.0.0/16"), pfx("fd00:10::/56")}, false},
		{"trailing comma", "10.0.0.0/8,", []netip.Prefix{pfx("10.0.0.0/8")}, false},
		{"not a prefix", "10.0.0.0/8,10.1.2.3", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParsePrefixes(tc.in)
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if !tc.err && !slices.Equal(got, tc.want) {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}
