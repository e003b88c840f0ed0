package bpf_test

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestPolicyHostStackReplies: a client in the node's own namespace (a
// host-network client, such as the kubelet's probe) reaches a pod through
// the host stack, which none of our programs decides. The pod is in egress
// default deny with nothing allowed: its replies must pass as replies of a
// tracked flow (cm_to_pod on the host veth's egress), while a flow the pod
// opens towards the node is still denied.
func TestPolicyHostStackReplies(t *testing.T) {
	topo, nodes := policyCluster(t, netnstest.Config{Nodes: 1, PodsPerNode: 1, IPv6: true})
	n, pn := topo.Nodes[0], nodes[0]
	p := n.Pods[0]
	const port, nodePort = 7000, 7001
	serve(t, p, port)
	nodeIP6 := netip.MustParseAddr("fd00:ff::1")
	// The primary CNI's routes to the pod, and an IPv6 address of the node.
	if err := n.NS.Batch(
		fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf),
		fmt.Sprintf("addr add %s/128 dev lo", nodeIP6),
		fmt.Sprintf("route add %s/128 dev %s", p.IP6, p.HostIf),
	); err != nil {
		t.Fatal(err)
	}
	id := podIdentity(0, 0)
	pn.apply(t, datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: id, Egress: true}}})

	for _, ip := range []netip.Addr{p.IP, p.IP6} {
		t.Run("tcp from the node to "+ip.String(), func(t *testing.T) {
			// A fresh veth may still be resolving its IPv6 neighbors.
			testwait.Until(t, 10*time.Second, "connection through the host stack", func() (bool, string) {
				err := nodeTCP(n, netip.AddrPortFrom(ip, port))
				return err == nil, fmt.Sprint(err)
			})
		})
	}
	t.Run("udp from the node", func(t *testing.T) {
		if err := nodeUDP(n, netip.AddrPortFrom(p.IP, port)); err != nil {
			t.Fatalf("udp exchange through the host stack: %v", err)
		}
	})
	t.Run("ping from the node", func(t *testing.T) {
		if out, err := n.NS.Exec("ping", "-c", "1", "-W", "2", "-q", p.IP.String()); err != nil {
			t.Fatalf("ping through the host stack: %v: %s", err, out)
		}
	})
	t.Run("a new flow from the pod to the node is still denied", func(t *testing.T) {
		var ln net.Listener
		if err := n.NS.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", netip.AddrPortFrom(n.UnderlayIP, nodePort).String())
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		if c, _, _, err := dialTCPTimeout(p, netip.AddrPortFrom(n.UnderlayIP, nodePort), 700*time.Millisecond); err == nil {
			c.Close()
			t.Fatal("the pod opened a connection its egress default deny forbids")
		}
		w := datapath.Drop{SrcIdentity: id, DstIdentity: 2, SrcCluster: 1, Src: p.IP, Dst: n.UnderlayIP,
			DstPort: nodePort, Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
		testwait.Until(t, 5*time.Second, "egress drop event", func() (bool, string) { return pn.drops.find(w), pn.drops.String() })
	})
	// The only egress drops are of the pod's own flow to the node: none of
	// its replies (TCP, UDP, ICMP, both families).
	pn.drops.mu.Lock()
	defer pn.drops.mu.Unlock()
	for _, e := range pn.drops.evs {
		if e.Egress && e.DstPort != nodePort {
			t.Errorf("a reply of the pod was dropped: %+v", e)
		}
	}
}

// nodeTCP connects from the node's namespace, reads the server's hello and
// checks one echo.
func nodeTCP(n *netnstest.Node, addr netip.AddrPort) error {
	var c net.Conn
	if err := n.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 2*time.Second)
		return err
	}); err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	r := bufio.NewReader(c)
	if _, err := r.ReadString('\n'); err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	return echo(c, r, "from the node")
}

// nodeUDP sends datagrams from the node's namespace until one is answered.
func nodeUDP(n *netnstest.Node, addr netip.AddrPort) error {
	c, err := dialUDP(n.NS, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for range 3 {
		if _, err = c.Write([]byte("payload")); err != nil {
			return err
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		if _, err = c.Read(buf); err == nil {
			return nil
		}
	}
	return err
}
