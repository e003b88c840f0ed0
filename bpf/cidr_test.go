package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestPolicyCIDR sends real packets, IPv4 and IPv6, between a pod and hosts
// outside the cluster (namespaces behind the node, reached through the
// host stack) with the CIDR identities of a policy in the ipcache, as the
// agent programs "egress and ingress (TCP 7000) with <allowed> except
// <except>" (plus a prefix another rule names): the pod reaches an address
// of the allowed prefix and its replies come back; an address of the except
// prefix, one of the other prefix and one in no prefix are denied; the
// allowed host reaches the pod on TCP 7000 only (the host stack delivers
// it: cm_to_pod decides CIDR sources); the excepted host and the other
// prefix's host are denied; drop events carry the CIDR identities. A source
// in no CIDR prefix is world (full mode): denied, then allowed on TCP 7000
// once the policy allows world there. The node's own traffic, even from an
// address in a CIDR prefix, and a source the node translates to an address
// of its own (kube-proxy's masquerade) are the host's path.
func TestPolicyCIDR(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 1, PodsPerNode: 1, IPv6: true})
	n, pn := topo.Nodes[0], nodes[0]
	p := n.Pods[0]
	id := podIdentity(0, 0)
	const port = 7000
	// The primary CNI's routes to the pod.
	if err := n.NS.Batch(fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf), fmt.Sprintf("route add %s/128 dev %s", p.IP6, p.HostIf)); err != nil {
		t.Fatal(err)
	}
	serve(t, p, port)
	pn.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: id, Ingress: true, Egress: true}}})

	for i, fam := range []struct {
		name                                 string
		pod                                  netip.Addr
		allowed, except, other               string // prefixes
		inAllowed, inExcept, inOther, inNone string // host addresses
		nodeInOther                          string // an address of the node in the other prefix
		masqueraded, nodeOwn                 string // a host the node translates to nodeOwn, an address of its own in no prefix
	}{
		{"ipv4", p.IP, "192.0.2.0/24", "192.0.2.128/25", "198.51.100.0/24", "192.0.2.10", "192.0.2.200", "198.51.100.10", "203.0.113.10", "198.51.100.99", "203.0.113.20", "10.99.0.1"},
		{"ipv6", p.IP6, "2001:db8:a::/48", "2001:db8:a:8000::/49", "2001:db8:b::/48", "2001:db8:a::10", "2001:db8:a:8000::10", "2001:db8:b::10", "2001:db8:c::10", "2001:db8:b::99", "2001:db8:c::20", "fd00:99::1"},
	} {
		t.Run(fam.name, func(t *testing.T) {
			cidrAllowed, cidrExcept, cidrOther := uint32(1<<24|3*i+1), uint32(1<<24|3*i+2), uint32(1<<24|3*i+3)
			host := func(a string) *netnstest.Pod { return n.AddExternal(t, netip.MustParseAddr(a)) }
			allowed, excepted, other, unnamed, masq := host(fam.inAllowed), host(fam.inExcept), host(fam.inOther), host(fam.inNone), host(fam.masqueraded)
			for _, h := range []*netnstest.Pod{allowed, excepted, other, unnamed, masq} {
				serve(t, h, port)
			}
			apply(t, pn.node, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{
				{Prefix: netip.MustParsePrefix(fam.allowed), Identity: cidrAllowed},
				{Prefix: netip.MustParsePrefix(fam.except), Identity: cidrExcept},
				{Prefix: netip.MustParsePrefix(fam.other), Identity: cidrOther},
			}})
			pn.apply(t, datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{
				{Key: datapath.PolicyKey{Subject: id, Egress: true, Peer: cidrAllowed}, Rule: 1},
				{Key: datapath.PolicyKey{Subject: id, Peer: cidrAllowed, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 2},
			}})
			pod := &netnstest.Pod{Name: p.Name, NS: p.NS, IP: fam.pod}
			// The node reaches the pod from an address of its own in the
			// other prefix.
			// nodad: an IPv6 address is tentative until the kernel's DAD
			// work runs, even on lo, and a route cannot use it as source.
			bits, nodad := fam.pod.BitLen(), ""
			if bits == 128 {
				nodad = " nodad"
			}
			if err := n.NS.Batch(fmt.Sprintf("addr add %s/%d dev lo%s", fam.nodeInOther, bits, nodad),
				fmt.Sprintf("route replace %s/%d dev %s src %s", fam.pod, bits, p.HostIf, fam.nodeInOther)); err != nil {
				t.Fatal(err)
			}
			self := &netnstest.Pod{Name: n.Name, NS: n.NS, IP: netip.MustParseAddr(fam.nodeInOther)}
			// The node translates masq's packets to the pod to an address
			// of its own, as kube-proxy's masquerade does.
			nftFam, table := "ip", fmt.Sprintf("cmtmasq%d", i)
			if bits == 128 {
				nftFam = "ip6"
			}
			if err := n.NS.Batch(fmt.Sprintf("addr add %s/%d dev lo%s", fam.nodeOwn, bits, nodad)); err != nil {
				t.Fatal(err)
			}
			for _, r := range [][]string{
				{"add", "table", nftFam, table},
				{"add", "chain", nftFam, table, "post", "{ type nat hook postrouting priority 100 ; }"},
				{"add", "rule", nftFam, table, "post", nftFam, "saddr", fam.masqueraded, nftFam, "daddr", fam.pod.String(), "snat", "to", fam.nodeOwn},
			} {
				if out, err := n.NS.Exec(testenv.RequireCommand(t, "nft"), r...); err != nil {
					t.Fatalf("nft %v: %v: %s", r, err, out)
				}
			}
			world := datapath.PolicyEntry{Key: datapath.PolicyKey{Subject: id, Peer: 2, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 3}
			defer pn.apply(t, datapath.PolicyBatch{Deletes: []datapath.PolicyKey{world.Key}})

			cases := []struct {
				name     string
				from, to *netnstest.Pod
				want     reach
				drop     *datapath.Drop
				allow    *datapath.PolicyEntry // applied before the case
			}{
				{name: "egress to the allowed prefix, replies pass", from: pod, to: allowed, want: reach{true, true, true}},
				{name: "egress to the except prefix denied", from: pod, to: excepted,
					drop: &datapath.Drop{SrcIdentity: id, DstIdentity: cidrExcept, SrcCluster: 1, Src: pod.IP, Dst: excepted.IP,
						DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}},
				{name: "egress to another prefix denied", from: pod, to: other,
					drop: &datapath.Drop{SrcIdentity: id, DstIdentity: cidrOther, SrcCluster: 1, Src: pod.IP, Dst: other.IP,
						DstPort: port, Proto: ipproto.UDP, Egress: true, Reason: datapath.DropPolicyDefault}},
				{name: "egress to an address in no prefix (world) denied", from: pod, to: unnamed,
					drop: &datapath.Drop{SrcIdentity: id, DstIdentity: 2, SrcCluster: 1, Src: pod.IP, Dst: unnamed.IP,
						DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}},
				{name: "ingress from the allowed prefix on TCP 7000 only", from: allowed, to: pod, want: reach{tcp: true},
					drop: &datapath.Drop{SrcIdentity: cidrAllowed, DstIdentity: id, Src: allowed.IP, Dst: pod.IP,
						DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}},
				{name: "ingress from the except prefix denied", from: excepted, to: pod,
					drop: &datapath.Drop{SrcIdentity: cidrExcept, DstIdentity: id, Src: excepted.IP, Dst: pod.IP,
						DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
				{name: "ingress from another prefix denied", from: other, to: pod,
					drop: &datapath.Drop{SrcIdentity: cidrOther, DstIdentity: id, Src: other.IP, Dst: pod.IP,
						DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
				{name: "ingress from a source in no prefix (world) denied", from: unnamed, to: pod,
					drop: &datapath.Drop{SrcIdentity: 2, DstIdentity: id, Src: unnamed.IP, Dst: pod.IP,
						DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
				{name: "the node's own traffic is the host's, whatever its source", from: self, to: pod, want: reach{true, true, true}},
				{name: "a source the node translates to its own address is the host's", from: masq, to: pod, want: reach{true, true, true}},
				{name: "ingress from world on TCP 7000 once allowed", from: unnamed, to: pod, want: reach{tcp: true}, allow: &world,
					drop: &datapath.Drop{SrcIdentity: 2, DstIdentity: id, Src: unnamed.IP, Dst: pod.IP,
						DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}},
			}
			for _, tc := range cases {
				t.Run(tc.name, func(t *testing.T) {
					if tc.allow != nil {
						pn.apply(t, datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{*tc.allow}})
					}
					expectProbe(t, pn, tc.from, tc.to.IP, port, tc.want, tc.drop)
				})
			}
		})
	}
}

// TestPolicyWorldCoexist: beside a primary CNI (coexistence mode) a packet
// the node forwards to a pod in ingress default deny from an address without
// any ipcache entry is world only once the agent knows the cluster's ranges
// of its family (SetCoexistWorld, turned on by --cluster-cidrs after their
// world entries are programmed): before, it stays the host's path (the primary CNI's
// addresses would look the same); after, it is denied with a drop event for
// world and allowed by a world rule, while a source in a cluster range (a
// world entry: the own cluster's pod CIDRs and the primary CNI's ranges)
// stays the primary CNI's to decide. A source of a CIDR identity and
// another node of the own cluster (remote-node: denied with a drop event
// for identity 6, allowed by a rule for remote-node) are decided either way.
func TestPolicyWorldCoexist(t *testing.T) {
	topo, nodes := policyClusterOpts(t, netnstest.Config{Nodes: 1, PodsPerNode: 1}, bpf.Config{Coexist: true})
	n, pn := topo.Nodes[0], nodes[0]
	p := n.Pods[0]
	id, cidr := podIdentity(0, 0), uint32(1<<24|1)
	const port = 7000
	// The primary CNI's route to the pod.
	if err := n.NS.Batch(fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf)); err != nil {
		t.Fatal(err)
	}
	serve(t, p, port)
	host := func(a string) *netnstest.Pod { return n.AddExternal(t, netip.MustParseAddr(a)) }
	unnamed, named, otherNode, inRange := host("203.0.113.10"), host("192.0.2.10"), host("198.51.100.7"), host("10.250.0.9")
	// What the agent programs: a CIDR identity, another node of the own
	// cluster (remote-node), a cluster range (world entry, dpsync).
	apply(t, pn.node, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: cidr},
		{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Identity: 6, ClusterID: 1},
		{Prefix: netip.MustParsePrefix("10.250.0.0/16"), Identity: 2},
	}})
	pn.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: id, Ingress: true}}})
	all := reach{true, true, true}
	worldDrop := func(proto ipproto.Proto) *datapath.Drop {
		return &datapath.Drop{SrcIdentity: 2, DstIdentity: id, Src: unnamed.IP, Dst: p.IP, DstPort: port, Proto: proto, Reason: datapath.DropPolicyDefault}
	}
	world := datapath.PolicyEntry{Key: datapath.PolicyKey{Subject: id, Peer: 2, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 3}
	remoteNode := datapath.PolicyEntry{Key: datapath.PolicyKey{Subject: id, Peer: 6, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 4}
	nodeDrop := func(proto ipproto.Proto) *datapath.Drop {
		return &datapath.Drop{SrcIdentity: 6, DstIdentity: id, Src: otherNode.IP, Dst: p.IP, DstPort: port, Proto: proto, Reason: datapath.DropPolicyDefault}
	}

	for _, step := range []struct {
		name       string
		world      [2]bool               // SetCoexistWorld: IPv4, IPv6
		allow      *datapath.PolicyEntry // applied before the step
		from       *netnstest.Pod
		want       reach
		drop       *datapath.Drop
		noDropFrom uint32 // no drop event with this source identity so far
	}{
		{name: "ranges unknown: world is the host's path", from: unnamed, want: all, noDropFrom: 2},
		{name: "ranges unknown: a CIDR identity is decided", from: named,
			drop: &datapath.Drop{SrcIdentity: cidr, DstIdentity: id, Src: named.IP, Dst: p.IP, DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
		{name: "ranges known: world denied", world: [2]bool{true, false}, from: unnamed, drop: worldDrop(ipproto.TCP)},
		{name: "ranges unknown: another node of the own cluster (remote-node) is decided", from: otherNode, drop: nodeDrop(ipproto.TCP)},
		{name: "ranges known: remote-node allowed on TCP 7000 by a remote-node rule", world: [2]bool{true, false}, allow: &remoteNode, from: otherNode, want: reach{tcp: true}, drop: nodeDrop(ipproto.UDP)},
		{name: "ranges known: a source in a cluster range is the primary CNI's", world: [2]bool{true, false}, from: inRange, want: all},
		{name: "ranges known: a CIDR identity is still decided", world: [2]bool{true, false}, from: named,
			drop: &datapath.Drop{SrcIdentity: cidr, DstIdentity: id, Src: named.IP, Dst: p.IP, DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}},
		{name: "ranges known: world allowed on TCP 7000 by a world rule", world: [2]bool{true, false}, allow: &world, from: unnamed, want: reach{tcp: true}, drop: worldDrop(ipproto.UDP)},
		{name: "only IPv6 ranges known: IPv4 world is the host's path", world: [2]bool{false, true}, from: unnamed, want: all},
		{name: "turned off again: world is the host's path", from: unnamed, want: all},
	} {
		t.Run(step.name, func(t *testing.T) {
			if err := pn.dp.SetCoexistWorld(step.world[0], step.world[1]); err != nil {
				t.Fatal(err)
			}
			if step.allow != nil {
				pn.apply(t, datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{*step.allow}})
			}
			expectProbe(t, pn, step.from, p.IP, port, step.want, step.drop)
			if step.noDropFrom != 0 {
				pn.drops.mu.Lock()
				defer pn.drops.mu.Unlock()
				for _, d := range pn.drops.evs {
					if d.SrcIdentity == step.noDropFrom {
						t.Errorf("identity %d dropped beside a primary CNI: %+v", step.noDropFrom, d)
					}
				}
			}
		})
	}
}

// TestPolicyRemoteNode: in full mode a packet the node forwards to a pod
// from another node's address (its ipcache entry: remote-node, as the agent
// programs the own cluster's Node addresses) is decided as remote-node:
// denied in ingress default deny with a drop event for identity 6, allowed
// by a rule for remote-node (fromEntities: remote-node, or cluster); the
// pod's egress to it is decided as remote-node too (toEntities).
func TestPolicyRemoteNode(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 1, PodsPerNode: 1})
	n, pn := topo.Nodes[0], nodes[0]
	p := n.Pods[0]
	id := podIdentity(0, 0)
	const port = 7000
	if err := n.NS.Batch(fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf)); err != nil {
		t.Fatal(err)
	}
	serve(t, p, port)
	other := n.AddExternal(t, netip.MustParseAddr("198.51.100.7"))
	serve(t, other, port)
	apply(t, pn.node, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: netip.MustParsePrefix("198.51.100.7/32"), Identity: 6, ClusterID: 1}}})
	pn.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: id, Ingress: true, Egress: true}}})
	pod := &netnstest.Pod{Name: p.Name, NS: p.NS, IP: p.IP}
	remoteNode := []datapath.PolicyEntry{
		{Key: datapath.PolicyKey{Subject: id, Peer: 6, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 1},
		{Key: datapath.PolicyKey{Subject: id, Egress: true, Peer: 6}, Rule: 2},
	}
	for _, tc := range []struct {
		name     string
		allow    bool
		from, to *netnstest.Pod
		want     reach
		drop     *datapath.Drop
	}{
		{name: "ingress from another node denied", from: other, to: pod,
			drop: &datapath.Drop{SrcIdentity: 6, DstIdentity: id, Src: other.IP, Dst: p.IP, DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
		{name: "egress to another node denied", from: pod, to: other,
			drop: &datapath.Drop{SrcIdentity: id, DstIdentity: 6, SrcCluster: 1, Src: p.IP, Dst: other.IP, DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}},
		{name: "ingress from remote-node allowed on TCP 7000", allow: true, from: other, to: pod, want: reach{tcp: true},
			drop: &datapath.Drop{SrcIdentity: 6, DstIdentity: id, Src: other.IP, Dst: p.IP, DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}},
		{name: "egress to remote-node allowed", allow: true, from: pod, to: other, want: reach{true, true, true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.allow {
				pn.apply(t, datapath.PolicyBatch{Upserts: remoteNode})
			}
			expectProbe(t, pn, tc.from, tc.to.IP, port, tc.want, tc.drop)
		})
	}
}

// TestPolicyOwnClusterCoexist: beside a primary CNI (coexistence mode) the
// agent programs the own cluster's pods of other nodes with their identity
// and no tunnel endpoint (agent/internal/localcluster, reconcileIP): the
// host keeps routing them (here the primary CNI's route of the other node's
// pod CIDR over the underlay, no tunnel entry), and an egress rule selecting
// one of them allows it while a pod it does not select is denied with its
// own identity, not world. Full mode's entries (with the node as tunnel
// endpoint) are TestPolicyEnforcement's.
func TestPolicyOwnClusterCoexist(t *testing.T) {
	const port = 7000
	topo, nodes := ownClusterCoexist(t, port)
	a, c, d := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1]
	idA, idC, idD := podIdentity(0, 0), podIdentity(1, 0), podIdentity(1, 1)
	all := reach{true, true, true}
	testwait.Until(t, 10*time.Second, "a -> d through the primary CNI's route, no policy", func() (bool, string) {
		got := probe(a, d.IP, port)
		return got == all, fmt.Sprintf("%+v", got)
	})
	// a: egress only to c (toEndpoints selecting c's identity).
	nodes[0].apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{Subject: idA, Egress: true, Peer: idC}, Rule: 41}},
		Modes:   []datapath.PolicyMode{{Subject: idA, Egress: true}},
	})
	for _, tc := range []struct {
		name string
		to   *netnstest.Pod
		want reach
	}{
		{"selected pod of the other node", c, all},
		{"pod of the other node not selected", d, reach{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := probe(a, tc.to.IP, port); got != tc.want {
				t.Errorf("%s -> %s: tcp/udp/icmp passed = %+v, want %+v", a.Name, tc.to.Name, got, tc.want)
			}
		})
	}
	w := datapath.Drop{SrcIdentity: idA, DstIdentity: idD, SrcCluster: 1, Src: a.IP, Dst: d.IP,
		DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
	testwait.Until(t, 5*time.Second, "egress drop event naming d's identity", func() (bool, string) {
		return nodes[0].drops.find(w), nodes[0].drops.String()
	})
}

// expectProbe probes from → to:port over TCP, UDP and ICMP: with want set,
// until exactly want passes (a fresh veth may still be resolving its
// neighbors); else once, and nothing may pass. Then it waits for drop, if
// given, among pn's drop events.
func expectProbe(t *testing.T, pn *policyNode, from *netnstest.Pod, to netip.Addr, port uint16, want reach, drop *datapath.Drop) {
	t.Helper()
	if want != (reach{}) {
		testwait.Until(t, 10*time.Second, "the allowed protocols through", func() (bool, string) {
			got := probe(from, to, port)
			return got == want, fmt.Sprintf("%+v", got)
		})
	} else if got := probe(from, to, port); got != want {
		t.Errorf("%s -> %s: tcp/udp/icmp passed = %+v, want none", from.IP, to, got)
	}
	if drop != nil {
		testwait.Until(t, 5*time.Second, fmt.Sprintf("drop event %+v", *drop), func() (bool, string) {
			return pn.drops.find(*drop), pn.drops.String()
		})
	}
}
