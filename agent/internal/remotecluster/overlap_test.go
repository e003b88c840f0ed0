package remotecluster

import (
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// localCIDRs is a settable LocalPodCIDRs.
type localCIDRs struct {
	mu sync.Mutex
	l  []netip.Prefix
}

func (c *localCIDRs) get() []netip.Prefix {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.l
}

func (c *localCIDRs) set(l ...string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.l = nil
	for _, s := range l {
		c.l = append(c.l, netip.MustParsePrefix(s))
	}
}

// TestPodCIDROverlapRefused: a remote node whose pod CIDR overlaps the local
// cluster's is not routed and the remote's status says why, whichever side
// was seen first; the other nodes of the remote still flow.
func TestPodCIDROverlapRefused(t *testing.T) {
	dir := t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.node(0) // 10.2.0.0/24: fine
	// n1 of c2 claims 10.1.4.0/24, inside the local cluster's 10.1.0.0/16.
	bad := wire.Node{Name: "n1", Cluster: "c2", ClusterID: 2, IPv4AllocCIDR: wire.MustParseCIDR("10.1.4.0/24"),
		IPAddresses: []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(nodeIP(2, 1))}}}
	c2.put(wire.NodeKey("c2", "n1"), must(wire.MarshalNode(bad)))
	c2.canaries()

	local := &localCIDRs{}
	local.set("10.1.0.0/16")
	cfg := testConfig(dir, t.TempDir())
	cfg.LocalPodCIDRs = local.get
	a := startAgent(t, cfg, memory.New(), nil)
	c2.writeConfig(dir)

	badCIDR := netip.MustParsePrefix("10.1.4.0/24")
	await(t, a.dp, "c2 synced with the overlap reported", func(st datapath.State) bool {
		tun, _ := countCluster(st, 2)
		return tun == 1 && a.status("c2").Ready && a.status("c2").PodCIDROverlap != ""
	})
	st, _ := a.dp.Dump()
	if _, ok := st.Tunnels[badCIDR]; ok {
		t.Fatalf("overlapping CIDR %s programmed", badCIDR)
	}
	msg := a.status("c2").PodCIDROverlap
	for _, want := range []string{ErrPodCIDROverlap.Error(), "10.1.4.0/24 of node n1 overlaps 10.1.0.0/16"} {
		if !strings.Contains(msg, want) {
			t.Errorf("status %q lacks %q", msg, want)
		}
	}

	t.Run("fixed on the remote", func(t *testing.T) {
		bad.IPv4AllocCIDR = wire.MustParseCIDR("10.2.1.0/24")
		c2.put(wire.NodeKey("c2", "n1"), must(wire.MarshalNode(bad)))
		await(t, a.dp, "n1 routed, no overlap", func(st datapath.State) bool {
			tun, _ := countCluster(st, 2)
			return tun == 2 && a.status("c2").PodCIDROverlap == ""
		})
	})
	t.Run("local CIDR learnt after the remote's", func(t *testing.T) {
		local.set("10.1.0.0/16", "10.2.1.0/24")
		if msg := a.status("c2").PodCIDROverlap; !strings.Contains(msg, "10.2.1.0/24 of node n1 overlaps 10.2.1.0/24") {
			t.Errorf("status %q does not report the overlap found later", msg)
		}
	})
}
