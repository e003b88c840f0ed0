package dpsync

import (
	"fmt"
	"maps"
	"net/netip"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// nodeCounts records what the reconciler counts: references per node and
// cluster, and how many Ref calls it took.
type nodeCounts struct {
	refs  map[nodeRef]int
	calls int
}

type nodeRef struct {
	node    netip.Addr
	cluster uint32
}

func (n *nodeCounts) Ref(node netip.Addr, cluster uint32, delta int) {
	n.calls++
	k := nodeRef{node, cluster}
	if n.refs[k] += delta; n.refs[k] == 0 {
		delete(n.refs, k)
	}
}

// The reconciler counts the node every remote tunnel and ipcache claim
// names, from the claim each change replaces; the own cluster's claims and
// changes that keep the node are not counted.
func TestCountNodes(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	pod, pod2, cidr := pfx("10.2.0.5/32"), pfx("10.2.0.6/32"), pfx("10.2.0.0/24")
	ip := func(p netip.Prefix, node netip.Addr, cluster uint32) datapath.IPCacheEntry {
		return datapath.IPCacheEntry{Prefix: p, Identity: cluster<<16 | 256, TunnelEndpoint: node, ClusterID: cluster}
	}
	n := &nodeCounts{refs: map[nodeRef]int{}}
	r := New(Config{ClusterID: 1}, memory.New(), discard, clock.RealClock{})
	r.CountNodes(n)
	for _, step := range []struct {
		name  string
		do    func()
		want  map[nodeRef]int
		calls int // Ref calls of the step
	}{
		{"ipcache entry names a", func() { r.UpsertIPCache(ip(pod, a, 2)) }, map[nodeRef]int{{a, 2}: 1}, 1},
		{"tunnel route names a too", func() { r.UpsertTunnel(datapath.TunnelEntry{CIDR: cidr, NodeIP: a, ClusterID: 2}) }, map[nodeRef]int{{a, 2}: 2}, 1},
		{"the entry's identity changes, its node does not", func() {
			e := ip(pod, a, 2)
			e.Identity++
			r.UpsertIPCache(e)
		}, map[nodeRef]int{{a, 2}: 2}, 0},
		{"the entry moves to b", func() { r.UpsertIPCache(ip(pod, b, 2)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 1}, 2},
		{"cluster 3 claims the same pod at c", func() { r.UpsertIPCache(ip(pod, c, 3)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 1, {c, 3}: 1}, 1},
		{"the own cluster claims it at c: not counted", func() { r.UpsertIPCache(ip(pod, c, 1)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 1, {c, 3}: 1}, 0},
		{"cluster 3's second claim, in the table's side list, moves to a", func() { r.UpsertIPCache(ip(pod, a, 3)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 1, {a, 3}: 1}, 2},
		{"an entry without tunnel endpoint names nothing", func() { r.UpsertIPCache(ip(pod2, netip.Addr{}, 2)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 1, {a, 3}: 1}, 0},
		{"it gets one", func() { r.UpsertIPCache(ip(pod2, b, 2)) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 2, {a, 3}: 1}, 1},
		{"the own claim goes: not counted", func() { r.DeleteIPCache(pod, 1) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 2, {a, 3}: 1}, 0},
		{"cluster 3's claim goes, cluster 2's stays", func() { r.DeleteIPCache(pod, 3) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 2}, 1},
		{"a withdrawal of no claim counts nothing", func() { r.DeleteIPCache(pod, 3) }, map[nodeRef]int{{a, 2}: 1, {b, 2}: 2}, 0},
		{"the route goes: a unnamed", func() { r.DeleteTunnel(cidr, 2) }, map[nodeRef]int{{b, 2}: 2}, 1},
		{"the entries go", func() { r.DeleteIPCache(pod, 2); r.DeleteIPCache(pod2, 2) }, map[nodeRef]int{}, 2},
	} {
		calls := n.calls
		step.do()
		if !maps.Equal(n.refs, step.want) || n.calls-calls != step.calls {
			t.Fatalf("%s: refs %v in %d calls, want %v in %d", step.name, fmt.Sprint(n.refs), n.calls-calls, step.want, step.calls)
		}
	}
}
