package remotecluster

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestRemoteReservedIdentities programs a remote's ipcache entries with
// identity 0 (not resolved yet) and the reserved identities as Cilium's
// IPIdentityWatcher does: the remote's host (1) becomes remote-node (6),
// every other ID is kept, and each entry routes to its HostIP.
func TestRemoteReservedIdentities(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	host := netip.MustParseAddr(nodeIP(2, 0))
	cases := []struct {
		name string
		ip   string
		id   uint32
		want uint32
	}{
		{"unknown identity is kept as 0", "10.2.0.11", wire.IdentityUnknown, wire.IdentityUnknown},
		{"host becomes remote-node", "10.2.0.1", wire.IdentityHost, wire.IdentityRemoteNode},
		{"host on IPv6 becomes remote-node", "fd02::1", wire.IdentityHost, wire.IdentityRemoteNode},
		{"world is kept", "10.2.0.12", 2, 2},
		{"health is kept", "10.2.0.2", 4, 4},
		{"remote-node is kept", "10.2.0.3", wire.IdentityRemoteNode, wire.IdentityRemoteNode},
		{"ingress is kept", "10.2.0.4", 8, 8},
		{"cluster identity is kept", "10.2.0.10", c2.identity(256), c2.identity(256)},
	}
	for _, c := range cases {
		ip := netip.MustParseAddr(c.ip)
		c2.put(wire.IPKey(ip), must(wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: host, ID: c.id})))
	}
	c2.canaries()
	a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
	c2.writeConfig(dir)
	st := await(t, a.dp, "c2 ipcache programmed", func(st datapath.State) bool {
		_, ipc := countCluster(st, 2)
		return ipc == len(cases)
	})
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ip := netip.MustParseAddr(c.ip)
			e, ok := st.IPCache[netip.PrefixFrom(ip, ip.BitLen())]
			if !ok {
				t.Fatalf("%s not programmed", c.ip)
			}
			if e.Identity != c.want || e.TunnelEndpoint != host || e.ClusterID != 2 {
				t.Errorf("%s programmed as identity %d via %s (cluster %d), want %d via %s (cluster 2)", c.ip, e.Identity, e.TunnelEndpoint, e.ClusterID, c.want, host)
			}
		})
	}
	if inv := a.status("c2").kind("ipcache").Invalid; inv != 0 {
		t.Errorf("%d ipcache entries refused", inv)
	}
}
