package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestPolicyOwnClusterIngressCoexist: beside a primary CNI (coexistence
// mode, the world switch off) the own cluster's pods of another node reach
// a pod through the primary CNI's route over the underlay, and the
// destination's ingress policy decides them by the identity of their
// ipcache entry, as full mode does through the tunnel: a pod not allowed is
// dropped with a drop event naming its identity and cluster; allowed by a
// rule for its identity (fromEndpoints) it passes, replies included; the
// destination's own connections to a pod it does not admit get their
// replies; a pod of this node reaching it through an address the host
// translates (as kube-proxy's ClusterIP), which cm_from_pod saw only as
// that address, is decided by its identity too; a pod of the other node
// without an ipcache entry yet stays the primary CNI's (it passes, not
// world).
func TestPolicyOwnClusterIngressCoexist(t *testing.T) {
	const port = 7000
	topo, nodes := ownClusterCoexist(t, port)
	a, b, c, d := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1], topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1]
	idA, idB, idC, idD := podIdentity(0, 0), podIdentity(0, 1), podIdentity(1, 0), podIdentity(1, 1)
	pn := nodes[1]
	// kube-proxy's part on d's node: a ClusterIP translated to d.
	vip := &netnstest.Pod{Name: "clusterip", IP: netip.MustParseAddr("10.96.0.10")}
	for _, r := range [][]string{
		{"add", "table", "ip", "cmtsvc"},
		{"add", "chain", "ip", "cmtsvc", "pre", "{ type nat hook prerouting priority -100 ; }"},
		{"add", "rule", "ip", "cmtsvc", "pre", "ip", "daddr", vip.IP.String(), "dnat", "to", d.IP.String()},
	} {
		if out, err := topo.Nodes[1].NS.Exec(testenv.RequireCommand(t, "nft"), r...); err != nil {
			t.Fatalf("nft %v: %v: %s", r, err, out)
		}
	}
	expectProbe(t, pn, c, vip.IP, port, reach{true, true, true}, nil)
	all := reach{true, true, true}
	expectProbe(t, pn, a, d.IP, port, all, nil)
	pn.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: idD, Ingress: true}}})
	allowA := datapath.PolicyEntry{Key: datapath.PolicyKey{Subject: idD, Peer: idA}, Rule: 51}
	denied := func(src *netnstest.Pod, id uint32, proto ipproto.Proto) *datapath.Drop {
		return &datapath.Drop{SrcIdentity: id, DstIdentity: idD, SrcCluster: 1, Src: src.IP, Dst: d.IP,
			DstPort: port, Proto: proto, Reason: datapath.DropPolicyDefault}
	}
	for _, tc := range []struct {
		name     string
		allow    *datapath.PolicyEntry // applied before the case
		unknownB bool                  // b's ipcache entry deleted before the case
		from, to *netnstest.Pod
		want     reach
		drop     *datapath.Drop
	}{
		{name: "a pod of the other node not allowed is dropped", from: a, to: d, drop: denied(a, idA, ipproto.TCP)},
		{name: "another pod of the other node not allowed is dropped", from: b, to: d, drop: denied(b, idB, ipproto.TCP)},
		{name: "replies to the destination's own connections pass", from: d, to: a, want: all},
		{name: "allowed by its identity (fromEndpoints), replies pass", allow: &allowA, from: a, to: d, want: all},
		{name: "the allow names a alone", from: b, to: d, drop: denied(b, idB, ipproto.UDP)},
		{name: "a pod of this node through a translated address is decided", from: c, to: vip, drop: denied(c, idC, ipproto.TCP)},
		{name: "a pod of the other node without an entry is the primary CNI's", unknownB: true, from: b, to: d, want: all},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.allow != nil {
				pn.apply(t, datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{*tc.allow}})
			}
			if tc.unknownB {
				apply(t, pn.node, datapath.Batch{DeleteIPCache: []netip.Prefix{netip.PrefixFrom(b.IP, 32)}})
			}
			expectProbe(t, pn, tc.from, tc.to.IP, port, tc.want, tc.drop)
		})
	}
}

// ownClusterCoexist builds two nodes of one cluster beside a primary CNI,
// two pods each serving port. The primary CNI's part: routes to each node's
// pods and, over the underlay, to the other node's pod CIDR; forwarding on.
// The agent's part: the own cluster's pods of the other node in the ipcache
// with their identity (podIdentity) and no tunnel endpoint, no tunnel
// entries (NodeTunnels is off beside a CNI).
func ownClusterCoexist(t *testing.T, port int) (*netnstest.Topology, []*policyNode) {
	t.Helper()
	topo, nodes := policyClusterOpts(t, netnstest.Config{Nodes: 2, PodsPerNode: 2}, bpf.Config{Coexist: true})
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	for i, n := range topo.Nodes {
		o := topo.Nodes[1-i]
		primaryCNI(t, n, fmt.Sprintf("route replace %s via %s", o.PodCIDR, o.UnderlayIP))
		b := datapath.Batch{DeleteTunnels: []netip.Prefix{o.PodCIDR}}
		for j, p := range o.Pods {
			b.UpsertIPCache = append(b.UpsertIPCache, datapath.IPCacheEntry{Prefix: netip.PrefixFrom(p.IP, 32), Identity: podIdentity(1-i, j), ClusterID: 1})
		}
		apply(t, nodes[i].node, b)
	}
	return topo, nodes
}
