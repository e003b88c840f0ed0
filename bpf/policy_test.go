package bpf_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// podIdentity is the identity connectivity gives pod j of node i.
func podIdentity(i, j int) uint32 { return uint32(1<<16 | 256 + i*16 + j) }

// drops collects a node's drop events.
type drops struct {
	mu  sync.Mutex
	evs []datapath.Drop
}

func (d *drops) add(e datapath.Drop) {
	d.mu.Lock()
	d.evs = append(d.evs, e)
	d.mu.Unlock()
}

// find reports whether an event matching want (ignoring the source port)
// was seen.
func (d *drops) find(want datapath.Drop) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, e := range d.evs {
		e.SrcPort = want.SrcPort
		if e == want {
			return true
		}
	}
	return false
}

func (d *drops) String() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return fmt.Sprintf("%+v", d.evs)
}

// policyNode is a node with its policy writer and its drop events.
type policyNode struct {
	*node
	pw    *bpf.PolicyWriter
	drops *drops
}

func policyCluster(t *testing.T, cfg netnstest.Config) (*netnstest.Topology, []*policyNode) {
	t.Helper()
	return policyClusterOpts(t, cfg, bpf.Config{})
}

// policyClusterOpts is policyCluster with the datapath options of opts.
func policyClusterOpts(t *testing.T, cfg netnstest.Config, opts bpf.Config) (*netnstest.Topology, []*policyNode) {
	t.Helper()
	topo, nodes := clusterOpts(t, cfg, opts)
	testenv.RequireCommand(t, "ping")
	var out []*policyNode
	for _, nd := range nodes {
		pw, err := bpf.NewPolicyWriter(nd.dp, slog.New(slog.NewTextHandler(io.Discard, nil)))
		if err != nil {
			t.Fatal(err)
		}
		pn := &policyNode{node: nd, pw: pw, drops: &drops{}}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- nd.dp.ReadDrops(ctx, pn.drops.add) }()
		t.Cleanup(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("read drops of %s: %v", nd.Name, err)
			}
		})
		// Every other node may claim the identities of cluster 1.
		var b datapath.PolicyBatch
		for _, o := range topo.Nodes {
			if o != nd.Node {
				b.UpsertNodes = append(b.UpsertNodes, datapath.TrustedNode{IP: o.UnderlayIP, ClusterID: 1, IdentityLo: 1 << 16, IdentityHi: 2 << 16})
			}
		}
		pn.apply(t, b)
		out = append(out, pn)
	}
	return topo, out
}

func (pn *policyNode) apply(t *testing.T, b datapath.PolicyBatch) {
	t.Helper()
	if err := pn.pw.Apply(b); err != nil {
		t.Fatalf("policy apply on %s: %v", pn.Name, err)
	}
}

// reach tries TCP, UDP and ICMP from p to ip and returns which passed.
type reach struct{ tcp, udp, icmp bool }

func probe(p *netnstest.Pod, ip netip.Addr, port uint16) reach {
	addr := netip.AddrPortFrom(ip, port)
	var r reach
	if c, rd, _, err := dialTCPTimeout(p, addr, 700*time.Millisecond); err == nil {
		r.tcp = echo(c, rd, "policy") == nil
		c.Close()
	}
	_, err := udpTry(p, addr, 2, 400*time.Millisecond)
	r.udp = err == nil
	r.icmp = pingOnce(p, ip) == nil
	return r
}

// TestPolicyEnforcement sends real packets between pods of two nodes (the
// remote one through the tunnel, its source identity in the VNI) and checks
// the verdicts, the replies, deny precedence, an established connection
// across an update, the trust of tunnel sources and the drop events.
func TestPolicyEnforcement(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 2, PodsPerNode: 2})
	const port = 7000
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	a, b := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1] // node 0
	c, d := topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1] // node 1
	idA, idB, idC, idD := podIdentity(0, 0), podIdentity(0, 1), podIdentity(1, 0), podIdentity(1, 1)
	n0, n1 := nodes[0], nodes[1]

	all := reach{true, true, true}
	check := func(t *testing.T, from *netnstest.Pod, to *netnstest.Pod, want reach) {
		t.Helper()
		if got := probe(from, to.IP, port); got != want {
			t.Errorf("%s -> %s: tcp/udp/icmp passed = %+v, want %+v", from.Name, to.Name, got, want)
		}
	}

	t.Run("no policy: default allow", func(t *testing.T) {
		check(t, a, c, all)
		check(t, c, a, all)
		check(t, d, c, all)
	})

	// c: ingress from a on TCP 7000 only; egress default deny with nothing
	// allowed (its replies still pass).
	allowAC := datapath.PolicyEntry{Key: datapath.PolicyKey{Subject: idC, Peer: idA, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 11}
	n1.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{allowAC},
		Modes:   []datapath.PolicyMode{{Subject: idC, Ingress: true, Egress: true}},
	})
	t.Run("ingress by identity and port, replies pass", func(t *testing.T) {
		check(t, a, c, reach{tcp: true}) // remote node, through the tunnel
		check(t, b, c, reach{})          // another identity
		check(t, d, c, reach{})          // same node as c
		check(t, c, a, reach{})          // c's egress: default deny
		check(t, a, d, all)              // d has no policy
		want := datapath.Drop{SrcIdentity: idA, DstIdentity: idC, SrcCluster: 1, Src: a.IP, Dst: c.IP,
			DstPort: port, Proto: ipproto.UDP, Reason: datapath.DropPolicyDefault}
		wantEg := datapath.Drop{SrcIdentity: idC, DstIdentity: idA, SrcCluster: 1, Src: c.IP, Dst: a.IP,
			DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
		wantB := datapath.Drop{SrcIdentity: idB, DstIdentity: idC, SrcCluster: 1, Src: b.IP, Dst: c.IP,
			DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}
		for _, w := range []datapath.Drop{want, wantEg, wantB} {
			testwait.Until(t, 5*time.Second, fmt.Sprintf("drop event %+v", w), func() (bool, string) {
				return n1.drops.find(w), n1.drops.String()
			})
		}
	})

	// a: egress only to c (any protocol); an ICMP/UDP rule for c from a.
	n0.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{Subject: idA, Egress: true, Peer: idC}, Rule: 21}},
		Modes:   []datapath.PolicyMode{{Subject: idA, Egress: true}},
	})
	n1.apply(t, datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{
		{Key: datapath.PolicyKey{Subject: idC, Peer: idA, Proto: ipproto.UDP, Port: 6990, EndPort: 7010}, Rule: 12},
		{Key: datapath.PolicyKey{Subject: idC, Peer: idA, Proto: ipproto.ICMP}, Rule: 13},
	}})
	t.Run("egress by identity, UDP range and ICMP", func(t *testing.T) {
		check(t, a, c, all)
		check(t, a, d, reach{}) // a's egress allows only c
		check(t, a, b, reach{}) // same node
		check(t, b, a, all)     // a's ingress is not enforced; replies pass its egress
		w := datapath.Drop{SrcIdentity: idA, DstIdentity: idD, SrcCluster: 1, Src: a.IP, Dst: d.IP,
			DstPort: port, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
		testwait.Until(t, 5*time.Second, "egress drop event", func() (bool, string) { return n0.drops.find(w), n0.drops.String() })
	})
	n0.apply(t, datapath.PolicyBatch{
		Deletes: []datapath.PolicyKey{{Subject: idA, Egress: true, Peer: idC}},
		Modes:   []datapath.PolicyMode{{Subject: idA}},
	})

	// Deny beats allow: d allows everything, but denies a on TCP 7000-7001.
	n1.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{
			{Key: datapath.PolicyKey{Subject: idD}, Rule: 31},
			{Key: datapath.PolicyKey{Subject: idD, Peer: idA, Proto: ipproto.TCP, Port: 7000, EndPort: 7001}, Deny: true, Rule: 32},
		},
		Modes: []datapath.PolicyMode{{Subject: idD, Ingress: true}},
	})
	t.Run("deny beats allow", func(t *testing.T) {
		check(t, a, d, reach{udp: true, icmp: true})
		check(t, b, d, all)
		w := datapath.Drop{SrcIdentity: idA, DstIdentity: idD, SrcCluster: 1, Rule: 32, Src: a.IP, Dst: d.IP,
			DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDeny}
		testwait.Until(t, 5*time.Second, "deny drop event", func() (bool, string) { return n1.drops.find(w), n1.drops.String() })
	})

	t.Run("established connection survives an update", func(t *testing.T) {
		conn, rd, _, err := dialTCP(a, netip.AddrPortFrom(c.IP, port))
		if err != nil {
			t.Fatalf("connect a -> c: %v", err)
		}
		defer conn.Close()
		// The allow rule goes away and a deny of a takes its place.
		n1.apply(t, datapath.PolicyBatch{
			Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{Subject: idC, Peer: idA}, Deny: true, Rule: 14}},
			Deletes: []datapath.PolicyKey{allowAC.Key},
		})
		for i := range 3 {
			if err := echo(conn, rd, fmt.Sprintf("still here %d", i)); err != nil {
				t.Fatalf("established connection after the update: %v", err)
			}
		}
		if got := probe(a, c.IP, port); got != (reach{}) {
			t.Errorf("new flows a -> c after the deny: %+v, want none", got)
		}
		n1.apply(t, datapath.PolicyBatch{
			Upserts: []datapath.PolicyEntry{allowAC},
			Deletes: []datapath.PolicyKey{{Subject: idC, Peer: idA}},
		})
		check(t, a, c, reach{tcp: true, udp: true, icmp: true})
	})

	t.Run("VNI identity only from trusted nodes", func(t *testing.T) {
		// Node 0 no longer vouches: its packets' identity is unknown (0),
		// which only rules for every peer match.
		n1.apply(t, datapath.PolicyBatch{DeleteNodes: []netip.Addr{topo.Nodes[0].UnderlayIP}})
		check(t, a, c, reach{})
		w := datapath.Drop{SrcIdentity: 0, DstIdentity: idC, SrcCluster: 0, Src: a.IP, Dst: c.IP,
			DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}
		testwait.Until(t, 5*time.Second, "unknown-source drop event", func() (bool, string) { return n1.drops.find(w), n1.drops.String() })
		// A trusted node claiming another cluster's range is not believed either.
		n1.apply(t, datapath.PolicyBatch{UpsertNodes: []datapath.TrustedNode{{IP: topo.Nodes[0].UnderlayIP, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}}})
		check(t, a, c, reach{})
		n1.apply(t, datapath.PolicyBatch{UpsertNodes: []datapath.TrustedNode{{IP: topo.Nodes[0].UnderlayIP, ClusterID: 1, IdentityLo: 1 << 16, IdentityHi: 2 << 16}}})
		check(t, a, c, reach{tcp: true, udp: true, icmp: true})
	})

	t.Run("removing the policy restores default allow", func(t *testing.T) {
		n1.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: idC}, {Subject: idD}}})
		check(t, b, c, all)
		check(t, c, a, all)
	})
	if lost, err := n1.dp.LostDrops(); err != nil || lost != 0 {
		t.Errorf("lost drop events: %d, %v", lost, err)
	}
}

// dialTCPTimeout is dialTCP with a short connect timeout, for flows that a
// policy may drop.
func dialTCPTimeout(p *netnstest.Pod, addr netip.AddrPort, timeout time.Duration) (net.Conn, *bufio.Reader, hello, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), timeout)
		return err
	})
	if err != nil {
		return nil, nil, hello{}, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		c.Close()
		return nil, nil, hello{}, err
	}
	return c, r, hello{}, nil
}

// TestPolicyEnforcementIPv6: the same verdicts for IPv6 pods (over the IPv4
// underlay): by identity and port, ICMPv6 echo, replies through an egress
// default deny, neighbor discovery never dropped, drop events with IPv6
// addresses.
func TestPolicyEnforcementIPv6(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 2, PodsPerNode: 2, IPv6: true})
	const port = 7000
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	a, b := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1]
	c := topo.Nodes[1].Pods[0]
	idA, idB, idC := podIdentity(0, 0), podIdentity(0, 1), podIdentity(1, 0)
	n1 := nodes[1]
	n1.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{
			{Key: datapath.PolicyKey{Subject: idC, Peer: idA, Proto: ipproto.TCP, Port: port, EndPort: port}, Rule: 1},
			{Key: datapath.PolicyKey{Subject: idC, Peer: idA, Proto: ipproto.ICMPv6}, Rule: 2},
		},
		Modes: []datapath.PolicyMode{{Subject: idC, Ingress: true, Egress: true}},
	})
	for _, tc := range []struct {
		name     string
		from, to *netnstest.Pod
		want     reach
	}{
		{"allowed identity: TCP and ICMPv6, not UDP", a, c, reach{tcp: true, icmp: true}},
		{"other identity", b, c, reach{}},
		{"c's egress default deny", c, a, reach{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := probe(tc.from, tc.to.IP6, port); got != tc.want {
				t.Errorf("%s -> %s: %+v, want %+v", tc.from.Name, tc.to.Name, got, tc.want)
			}
		})
	}
	w := datapath.Drop{SrcIdentity: idB, DstIdentity: idC, SrcCluster: 1, Src: b.IP6, Dst: c.IP6,
		DstPort: port, Proto: ipproto.TCP, Reason: datapath.DropPolicyDefault}
	testwait.Until(t, 5*time.Second, "IPv6 drop event", func() (bool, string) { return n1.drops.find(w), n1.drops.String() })
}
