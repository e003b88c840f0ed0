package dpsync

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// The compact forms must give back exactly what was handed in.
func TestClaimCodecRoundTrip(t *testing.T) {
	tests := []struct {
		name string
		ip   datapath.IPCacheEntry
		tun  datapath.TunnelEntry
	}{
		{name: "ipv4", ip: datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.2.3.4/32"), Identity: 2<<16 | 300, TunnelEndpoint: netip.MustParseAddr("192.168.1.2"), ClusterID: 2},
			tun: datapath.TunnelEntry{CIDR: netip.MustParsePrefix("10.2.0.0/24"), NodeIP: netip.MustParseAddr("192.168.1.2"), ClusterID: 2}},
		{name: "ipv6", ip: datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("fd00::5/128"), Identity: 7, TunnelEndpoint: netip.MustParseAddr("fc00::1"), ClusterID: 255},
			tun: datapath.TunnelEntry{CIDR: netip.MustParsePrefix("fd00:2::/64"), NodeIP: netip.MustParseAddr("fc00::1"), ClusterID: 255}},
		{name: "ipv4-mapped ipv6 stays ipv6", ip: datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("::ffff:10.0.0.1/128"), TunnelEndpoint: netip.MustParseAddr("::ffff:1.2.3.4"), ClusterID: 3},
			tun: datapath.TunnelEntry{CIDR: netip.MustParsePrefix("::ffff:10.0.0.0/120"), NodeIP: netip.MustParseAddr("::ffff:1.2.3.4"), ClusterID: 3}},
		{name: "local entry without tunnel endpoint", ip: datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.1.0.0/16"), Identity: 1, ClusterID: 1},
			tun: datapath.TunnelEntry{CIDR: netip.MustParsePrefix("0.0.0.0/0"), ClusterID: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := decIPCache(tc.ip.Prefix, encIPCache(tc.ip)); got != tc.ip {
				t.Errorf("ipcache: got %+v, want %+v", got, tc.ip)
			}
			if got := decTunnel(tc.tun.CIDR, encTunnel(tc.tun)); got != tc.tun {
				t.Errorf("tunnel: got %+v, want %+v", got, tc.tun)
			}
		})
	}
}

// The own cluster's claim is first whatever the order; deleting the first
// claim promotes the own cluster's, else the oldest.
func TestTableClaimOrder(t *testing.T) {
	p := netip.MustParsePrefix("10.9.0.1/32")
	claim := func(id uint32) datapath.IPCacheEntry {
		return datapath.IPCacheEntry{Prefix: p, Identity: id<<16 | 256, ClusterID: id}
	}
	type op struct {
		del bool
		id  uint32
	}
	tests := []struct {
		name string
		ops  []op
		want []uint32 // cluster IDs of the claims, first first
	}{
		{name: "one remote", ops: []op{{id: 2}}, want: []uint32{2}},
		{name: "own after remote goes first", ops: []op{{id: 2}, {id: 1}}, want: []uint32{1, 2}},
		{name: "remotes keep their order", ops: []op{{id: 3}, {id: 2}}, want: []uint32{3, 2}},
		{name: "update keeps the place", ops: []op{{id: 3}, {id: 2}, {id: 3}}, want: []uint32{3, 2}},
		{name: "delete first promotes own", ops: []op{{id: 2}, {id: 3}, {id: 1}, {del: true, id: 1}, {id: 1}, {del: true, id: 2}}, want: []uint32{1, 3}},
		{name: "delete first promotes oldest", ops: []op{{id: 2}, {id: 3}, {id: 4}, {del: true, id: 2}}, want: []uint32{3, 4}},
		{name: "delete of a later claim", ops: []op{{id: 2}, {id: 3}, {del: true, id: 3}}, want: []uint32{2}},
		{name: "delete of an unknown claim", ops: []op{{id: 2}, {del: true, id: 5}}, want: []uint32{2}},
		{name: "delete of all", ops: []op{{id: 2}, {id: 3}, {del: true, id: 2}, {del: true, id: 3}}, want: nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tab := newTable(encIPCache, decIPCache, func(c ipClaim) uint32 { return c.cluster }, 1)
			for _, o := range tc.ops {
				if o.del {
					tab.delete(p, o.id)
				} else {
					tab.upsert(p, claim(o.id))
				}
			}
			var got []uint32
			tab.each(p, func(e datapath.IPCacheEntry) {
				if e != claim(e.ClusterID) {
					t.Errorf("claim %+v changed", e)
				}
				got = append(got, e.ClusterID)
			})
			if !slices.Equal(got, tc.want) {
				t.Errorf("claims %v, want %v", got, tc.want)
			}
			if tab.has(p) != (len(tc.want) > 0) || len(tab.more) > 0 && len(tc.want) < 2 {
				t.Errorf("has %v, more %v for %v", tab.has(p), tab.more, tc.want)
			}
		})
	}
}
