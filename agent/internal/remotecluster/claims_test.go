package remotecluster

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
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
	// The refusal stays across the retries, each of which connects and
	// finds the remote over the limit again: no moment without the reason,
	// and no refused session counts as synced (ready, or programmed).
	refusedAt := a.status("c2").Failures
	testwait.Until(t, 20*time.Second, "c2 retried", func() (bool, string) {
		s := a.status("c2")
		if !strings.Contains(s.RefusedReason, watchstore.ErrTooManyEntries.Error()) || s.Ready || !s.ProgrammedAt.IsZero() {
			t.Fatalf("after %d failed sessions: reason %q, ready %v, programmed at %v; want the entry limit's reason, not ready, never programmed",
				s.Failures, s.RefusedReason, s.Ready, s.ProgrammedAt)
		}
		return s.Failures >= refusedAt+3, fmt.Sprintf("%d failures", s.Failures)
	})
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 0))))
	c2.del(wire.IPKey(netip.MustParseAddr(podIP(2, 1))))
	await(t, a.dp, "c2 accepted under the limit", func(st datapath.State) bool {
		tun, ipc := countCluster(st, 2)
		s := a.status("c2")
		return s.Ready && s.RefusedReason == "" && tun == 1 && ipc == 3
	})
}

// TestConflictingRemotes: two remotes claim the same pod CIDR and pod IP
// (issue 13 §2: first claim won, so the outcome depended on start order).
// Whatever the order, both claims are withdrawn, counted for each remote
// and shown with both claimants; a remote's default route is refused.
func TestConflictingRemotes(t *testing.T) {
	for _, first := range []string{"c2", "c3"} {
		t.Run(first+" first", func(t *testing.T) {
			dir := t.TempDir()
			rs := map[string]*remoteEtcd{"c2": startRemote(t, "c2", 2), "c3": startRemote(t, "c3", 3)}
			for _, r := range rs {
				r.nodeWith("n1", "10.9.0.0/24", fmt.Sprintf("192.168.%d.1", r.id))
				r.ipWith("10.9.0.5", fmt.Sprintf("192.168.%d.1", r.id), 300)
				r.node(2) // a pod CIDR of its own
				r.canaries()
			}
			rs["c2"].nodeWith("n0", "0.0.0.0/0", "192.168.2.9")
			a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
			second := map[string]string{"c2": "c3", "c3": "c2"}[first]
			rs[first].writeConfig(dir)
			await(t, a.dp, first+" programmed", func(st datapath.State) bool {
				_, ok := st.IPCache[netip.MustParsePrefix("10.9.0.5/32")]
				return ok && a.status(first).Ready
			})
			rs[second].writeConfig(dir)
			st := await(t, a.dp, "both withdrawn", func(st datapath.State) bool {
				_, tok := st.Tunnels[netip.MustParsePrefix("10.9.0.0/24")]
				_, iok := st.IPCache[netip.MustParsePrefix("10.9.0.5/32")]
				t2, _ := countCluster(st, 2)
				t3, _ := countCluster(st, 3)
				return !tok && !iok && t2 == 1 && t3 == 1 && a.status("c2").Ready && a.status("c3").Ready
			})
			if _, ok := st.Tunnels[netip.MustParsePrefix("0.0.0.0/0")]; ok {
				t.Fatal("a remote's default route is programmed")
			}
			for _, name := range []string{"c2", "c3"} {
				s := a.status(name)
				want := []Conflict{
					{Kind: "ipcache", Prefix: "10.9.0.5/32", Claimants: []string{"c2", "c3"}},
					{Kind: "tunnel", Prefix: "10.9.0.0/24", Claimants: []string{"c2", "c3"}},
				}
				if !slices.EqualFunc(s.Conflicts, want, func(a, b Conflict) bool {
					return a.Kind == b.Kind && a.Prefix == b.Prefix && slices.Equal(a.Claimants, b.Claimants)
				}) {
					t.Errorf("%s conflicts %+v, want %+v", name, s.Conflicts, want)
				}
				counts := map[string]uint64{}
				for _, c := range s.Refused {
					counts[c.Reason] = c.Count
				}
				wantCounts := map[string]uint64{string(dpsync.ReasonConflict): 2}
				if name == "c2" {
					wantCounts[string(dpsync.ReasonOverBroad)] = 1
				}
				if !maps.Equal(counts, wantCounts) {
					t.Errorf("%s refused %v, want %v", name, counts, wantCounts)
				}
			}
		})
	}
}
