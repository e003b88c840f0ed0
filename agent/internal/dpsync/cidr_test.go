package dpsync

import (
	"context"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// programmedIdentities returns the programmed ipcache as prefix → identity.
func programmedIdentities(t *testing.T, r *Reconciler, dp *memory.Datapath) map[string]uint32 {
	t.Helper()
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]uint32{}
	for p, e := range st.IPCache {
		out[p.String()] = e.Identity
	}
	// IPCache() (status, trace) lists what is programmed.
	listed := map[string]uint32{}
	for _, e := range r.IPCache() {
		listed[e.Prefix.String()] = e.Identity
	}
	if !maps.Equal(out, listed) {
		t.Errorf("IPCache() lists %v, programmed %v", listed, out)
	}
	return out
}

// TestCIDREntries: CIDR prefixes are programmed below every cluster claim
// and never over the local cluster: a prefix inside a local pod CIDR or
// node address is not programmed, local prefixes inside a programmed one
// get the world identity, own and remote claims on the same prefix win.
// Withdrawing a prefix, a claim or a local node re-decides what depended
// on it.
func TestCIDREntries(t *testing.T) {
	const (
		l8 = 1<<24 + iota + 1
		lNodes
		lLocalPodCIDR
		lInsideLocal
		lRemotePod
		lDoc
	)
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	r.SetLocalNode("self", []netip.Prefix{pfx("10.1.0.0/24"), pfx("192.168.1.1/32")})
	r.SetLocalNode("other", []netip.Prefix{pfx("10.1.1.0/24"), pfx("192.168.1.2/32")})
	r.UpsertIPCache(ipc("10.1.0.7/32", 1<<16|300, 1))
	r.UpsertTunnel(tun("10.2.0.0/24", "192.168.2.1", 2))
	r.UpsertIPCache(ipc("10.2.0.9/32", 2<<16|300, 2))
	for p, id := range map[string]uint32{"10.0.0.0/8": l8, "192.168.1.0/24": lNodes, "10.1.0.0/24": lLocalPodCIDR,
		"10.1.0.128/25": lInsideLocal, "10.2.0.9/32": lRemotePod, "203.0.113.0/24": lDoc} {
		r.UpsertCIDR(pfx(p), id)
	}

	steps := []struct {
		name   string
		change func()
		want   map[string]uint32
	}{
		{"every prefix in use", func() {}, map[string]uint32{
			"10.0.0.0/8": l8, "10.1.0.0/24": WorldIdentity, "10.1.1.0/24": WorldIdentity,
			"192.168.1.0/24": lNodes, "192.168.1.1/32": WorldIdentity, "192.168.1.2/32": WorldIdentity,
			"10.1.0.7/32": 1<<16 | 300, "10.2.0.9/32": 2<<16 | 300, "203.0.113.0/24": lDoc}},
		{"the remote withdraws its pod: the CIDR entry takes its place", func() { r.DeleteIPCache(pfx("10.2.0.9/32"), 2) }, map[string]uint32{
			"10.0.0.0/8": l8, "10.1.0.0/24": WorldIdentity, "10.1.1.0/24": WorldIdentity,
			"192.168.1.0/24": lNodes, "192.168.1.1/32": WorldIdentity, "192.168.1.2/32": WorldIdentity,
			"10.1.0.7/32": 1<<16 | 300, "10.2.0.9/32": lRemotePod, "203.0.113.0/24": lDoc}},
		{"10.0.0.0/8 released: the other node's pod CIDR needs no world entry", func() { r.DeleteCIDR(pfx("10.0.0.0/8")) }, map[string]uint32{
			"10.1.0.0/24":    WorldIdentity,
			"192.168.1.0/24": lNodes, "192.168.1.1/32": WorldIdentity, "192.168.1.2/32": WorldIdentity,
			"10.1.0.7/32": 1<<16 | 300, "10.2.0.9/32": lRemotePod, "203.0.113.0/24": lDoc}},
		{"a local node leaves", func() { r.SetLocalNode("other", nil) }, map[string]uint32{
			"10.1.0.0/24":    WorldIdentity,
			"192.168.1.0/24": lNodes, "192.168.1.1/32": WorldIdentity,
			"10.1.0.7/32": 1<<16 | 300, "10.2.0.9/32": lRemotePod, "203.0.113.0/24": lDoc}},
		{"a local node's pod CIDR no longer covers a CIDR prefix", func() { r.SetLocalNode("self", []netip.Prefix{pfx("192.168.1.1/32")}) }, map[string]uint32{
			"10.1.0.0/24": lLocalPodCIDR, "10.1.0.128/25": lInsideLocal,
			"192.168.1.0/24": lNodes, "192.168.1.1/32": WorldIdentity,
			"10.1.0.7/32": 1<<16 | 300, "10.2.0.9/32": lRemotePod, "203.0.113.0/24": lDoc}},
		{"every prefix released", func() {
			for _, p := range []string{"192.168.1.0/24", "10.1.0.0/24", "10.1.0.128/25", "10.2.0.9/32", "203.0.113.0/24"} {
				r.DeleteCIDR(pfx(p))
			}
		}, map[string]uint32{"10.1.0.7/32": 1<<16 | 300}},
	}
	for _, s := range steps {
		s.change()
		if got := programmedIdentities(t, r, dp); !maps.Equal(got, s.want) {
			t.Fatalf("%s:\n got  %v\n want %v", s.name, sorted(got), sorted(s.want))
		}
	}
}

func sorted(m map[string]uint32) []string {
	var out []string
	for k, v := range m {
		out = append(out, fmt.Sprintf("%s=%d", k, v))
	}
	slices.Sort(out)
	return out
}

// TestCIDRRestore: CIDR entries an earlier agent programmed stay until
// Release(CIDRClusterID) (the policies are synced); then those no policy
// names go and the others are kept without a rewrite.
func TestCIDRRestore(t *testing.T) {
	dp := memory.New()
	first := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	first.UpsertCIDR(pfx("192.0.2.0/24"), 1<<24|1)
	first.UpsertCIDR(pfx("198.51.100.0/24"), 1<<24|2)
	programmedIdentities(t, first, dp)

	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	r.UpsertCIDR(pfx("192.0.2.0/24"), 1<<24|1)
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	st, _ := dp.Dump()
	if len(st.IPCache) != 2 {
		t.Fatalf("before the release: %v, want both restored entries", st.IPCache)
	}
	r.Release(CIDRClusterID)
	if got := programmedIdentities(t, r, dp); !maps.Equal(got, map[string]uint32{"192.0.2.0/24": 1<<24 | 1}) {
		t.Fatalf("after the release: %v", got)
	}
}
