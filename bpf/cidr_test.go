package bpf_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestPolicyCIDR sends real packets between a pod and hosts outside the
// cluster (namespaces behind the node, reached through the host stack) with
// the CIDR identities of a policy in the ipcache, as the agent programs
// "egress and ingress (TCP 7000) with 192.0.2.0/24 except
// 192.0.2.128/25": the pod reaches an address of the allowed prefix and
// its replies come back; an address of the except prefix and one of
// another prefix are denied; the allowed host reaches the pod on TCP 7000
// only (the host stack delivers it: cm_to_pod decides CIDR sources); the
// excepted host and the other prefix's host are denied; drop events carry
// the CIDR identities. A source in no CIDR prefix is the host's path, as
// before.
func TestPolicyCIDR(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 1, PodsPerNode: 1})
	n, pn := topo.Nodes[0], nodes[0]
	p := n.Pods[0]
	id := podIdentity(0, 0)
	const port = 7000
	const (
		cidrAllowed = 1<<24 | 1 // 192.0.2.0/24
		cidrExcept  = 1<<24 | 2 // 192.0.2.128/25
		cidrOther   = 1<<24 | 3 // 198.51.100.0/24
	)
	allowed := n.AddExternal(t, netip.MustParseAddr("192.0.2.10"))
	excepted := n.AddExternal(t, netip.MustParseAddr("192.0.2.200"))
	other := n.AddExternal(t, netip.MustParseAddr("198.51.100.10"))
	unnamed := n.AddExternal(t, netip.MustParseAddr("203.0.113.10"))
	// The primary CNI's route to the pod.
	if err := n.NS.Batch(fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf)); err != nil {
		t.Fatal(err)
	}
	for _, h := range []*netnstest.Pod{p, allowed, excepted, other, unnamed} {
		serve(t, h, port)
	}
	apply(t, pn.node, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{
		{Prefix: netip.MustParsePrefix("192.0.2.0/24"), Identity: cidrAllowed},
		{Prefix: netip.MustParsePrefix("192.0.2.128/25"), Identity: cidrExcept},
		{Prefix: netip.MustParsePrefix("198.51.100.0/24"), Identity: cidrOther},
	}})
	pn.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{
			{Key: datapath.PolicyKey{Subject: id, Egress: true, Peer: cidrAllowed}, Rule: 1},
			{Key: datapath.PolicyKey{Subject: id, Peer: cidrAllowed, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 2},
		},
		Modes: []datapath.PolicyMode{{Subject: id, Ingress: true, Egress: true}},
	})

	cases := []struct {
		name     string
		from, to *netnstest.Pod
		want     reach
		drop     *datapath.Drop
	}{
		{name: "egress to the allowed prefix, replies pass", from: p, to: allowed, want: reach{true, true, true}},
		{name: "egress to the except prefix denied", from: p, to: excepted,
			drop: &datapath.Drop{SrcIdentity: id, DstIdentity: cidrExcept, SrcCluster: 1, Src: p.IP, Dst: excepted.IP,
				DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}},
		{name: "egress to another prefix denied", from: p, to: other,
			drop: &datapath.Drop{SrcIdentity: id, DstIdentity: cidrOther, SrcCluster: 1, Src: p.IP, Dst: other.IP,
				DstPort: port, Proto: ipproto.UDP, Egress: true, Reason: datapath.DropPolicyDefault}},
		{name: "egress to an address in no prefix (world) denied", from: p, to: unnamed},
		{name: "ingress from the allowed prefix on TCP 7000 only", from: allowed, to: p, want: reach{tcp: true},
			drop: &datapath.Drop{SrcIdentity: cidrAllowed, DstIdentity: id, Src: allowed.IP, Dst: p.IP,
				DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}},
		{name: "ingress from the except prefix denied", from: excepted, to: p,
			drop: &datapath.Drop{SrcIdentity: cidrExcept, DstIdentity: id, Src: excepted.IP, Dst: p.IP,
				DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}},
		{name: "ingress from another prefix denied", from: other, to: p},
		{name: "a source in no CIDR prefix is the host's path", from: unnamed, to: p, want: reach{true, true, true}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := probe(tc.from, tc.to.IP, port); got != tc.want {
				t.Errorf("%s -> %s: tcp/udp/icmp passed = %+v, want %+v", tc.from.IP, tc.to.IP, got, tc.want)
			}
			if tc.drop != nil {
				testwait.Until(t, 5*time.Second, fmt.Sprintf("drop event %+v", *tc.drop), func() (bool, string) {
					return pn.drops.find(*tc.drop), pn.drops.String()
				})
			}
		})
	}
}
