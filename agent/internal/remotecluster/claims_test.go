package remotecluster

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// nodeWith writes node name of r with pod CIDR cidr and InternalIP ip.
func (r *remoteEtcd) nodeWith(name, cidr, ip string) {
	r.put(wire.NodeKey(r.name, name), must(wire.MarshalNode(wire.Node{
		Name: name, Cluster: r.name, ClusterID: r.id,
		IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(ip)}},
		IPv4AllocCIDR: wire.MustParseCIDR(cidr),
	})))
}

// ipWith writes an ipcache entry of r under key suffix ("10.2.0.10" or
// "10.2.0.10/32") with host IP host and local identity local.
func (r *remoteEtcd) ipWith(suffix, host string, local uint32) {
	p := wire.IPIdentityPair{HostIP: netip.MustParseAddr(host), ID: r.identity(local)}
	if pfx, err := netip.ParsePrefix(suffix); err == nil {
		p.IP, p.Mask = pfx.Addr(), netCIDRMask(pfx)
	} else {
		p.IP = netip.MustParseAddr(suffix)
	}
	r.put(wire.IPPrefix+suffix, must(wire.MarshalIPIdentityPair(p)))
}

func netCIDRMask(p netip.Prefix) []byte {
	m := make([]byte, p.Addr().BitLen()/8)
	for i := range p.Bits() {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// TestClaimsHeldPerKey: a datapath entry that several keys of one remote
// map to stays while any of them holds it, and its value follows a
// deterministic rule (issue 13 §1 reproductions).
func TestClaimsHeldPerKey(t *testing.T) {
	cidr := netip.MustParsePrefix("10.2.7.0/24")
	host := netip.MustParsePrefix("10.2.0.10/32")
	tests := []struct {
		name string
		// steps run in order against c2; after each, the tunnel of cidr
		// must route to wantNode ("" absent) and the ipcache entry of
		// host must have tunnel endpoint wantHost ("" absent).
		steps []step
	}{
		{name: "two nodes with one pod CIDR, first deleted", steps: []step{
			{do: func(r *remoteEtcd) {
				r.nodeWith("a", cidr.String(), "192.168.2.1")
				r.nodeWith("b", cidr.String(), "192.168.2.2")
			}, wantNode: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.del(wire.NodeKey("c2", "a")) }, wantNode: "192.168.2.2"},
			{do: func(r *remoteEtcd) { r.del(wire.NodeKey("c2", "b")) }},
		}},
		{name: "two nodes with one pod CIDR, second deleted, first re-added", steps: []step{
			{do: func(r *remoteEtcd) {
				r.nodeWith("b", cidr.String(), "192.168.2.2")
				r.nodeWith("a", cidr.String(), "192.168.2.1")
			}, wantNode: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.del(wire.NodeKey("c2", "b")) }, wantNode: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.nodeWith("a", "10.2.8.0/24", "192.168.2.1") }},
		}},
		{name: "ipcache under <ip> and <ip>/32, <ip> deleted", steps: []step{
			{do: func(r *remoteEtcd) {
				r.ipWith("10.2.0.10", "192.168.2.1", 300)
				r.ipWith("10.2.0.10/32", "192.168.2.2", 300)
			}, wantHost: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.del(wire.IPPrefix + "10.2.0.10") }, wantHost: "192.168.2.2"},
			{do: func(r *remoteEtcd) { r.del(wire.IPPrefix + "10.2.0.10/32") }},
		}},
		{name: "ipcache under <ip>/32 then <ip>, /32 deleted", steps: []step{
			{do: func(r *remoteEtcd) {
				r.ipWith("10.2.0.10/32", "192.168.2.2", 300)
				r.ipWith("10.2.0.10", "192.168.2.1", 300)
			}, wantHost: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.del(wire.IPPrefix + "10.2.0.10/32") }, wantHost: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.ipWith("10.2.0.10/32", "192.168.2.3", 300) }, wantHost: "192.168.2.1"},
			{do: func(r *remoteEtcd) { r.del(wire.IPPrefix + "10.2.0.10") }, wantHost: "192.168.2.3"},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c2 := startRemote(t, "c2", 2)
			c2.canaries()
			a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
			c2.writeConfig(dir)
			await(t, a.dp, "c2 synced", func(datapath.State) bool { return a.status("c2").Ready })
			for i, s := range tc.steps {
				s.do(c2)
				// A marker written after the step in each kind: once both
				// are programmed, the step's events have been handled.
				marker := fmt.Sprintf("10.2.99.%d", i)
				c2.nodeWith(fmt.Sprintf("zz-marker-%d", i), marker+"/32", "192.168.2.99")
				c2.ipWith(marker, "192.168.2.99", 301)
				mp := netip.MustParsePrefix(marker + "/32")
				st := await(t, a.dp, fmt.Sprintf("step %d handled", i), func(st datapath.State) bool {
					_, tok := st.Tunnels[mp]
					_, iok := st.IPCache[mp]
					return tok && iok
				})
				tun, ok := st.Tunnels[cidr]
				if got := addrOr(ok, tun.NodeIP); got != s.wantNode {
					t.Fatalf("step %d: tunnel %s via %q, want %q", i, cidr, got, s.wantNode)
				}
				ipc, ok := st.IPCache[host]
				if got := addrOr(ok, ipc.TunnelEndpoint); got != s.wantHost {
					t.Fatalf("step %d: ipcache %s via %q, want %q", i, host, got, s.wantHost)
				}
			}
		})
	}
}

type step struct {
	do                 func(*remoteEtcd)
	wantNode, wantHost string
}

func addrOr(ok bool, a netip.Addr) string {
	if !ok {
		return ""
	}
	return a.String()
}

// TestEntryLimitRefusesRemote: a remote with more valid entries of a kind
// than --remote-max-entries is refused with the reason in status and its
// state withdrawn; once it is back under the limit it is accepted again.
func TestEntryLimitRefusesRemote(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	for i := range 5 {
		c2.ipcache(i)
	}
	c2.node(0)
	c2.canaries()
	cfg := testConfig(dir, t.TempDir())
	cfg.MaxEntries = 3
	a := startAgent(t, cfg, memory.New(), nil)
	c2.writeConfig(dir)
	await(t, a.dp, "c2 refused over the limit", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		s := a.status("c2")
		return strings.Contains(s.RefusedReason, watchstore.ErrTooManyEntries.Error()) &&
			strings.Contains(s.RefusedReason, "--remote-max-entries") && !s.Ready && tun == 0 && ipc == 0
	})
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 0))))
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 1))))
	await(t, a.dp, "c2 accepted under the limit", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		s := a.status("c2")
		return s.Ready && s.RefusedReason == "" && tun == 1 && ipc == 3
	})
}
