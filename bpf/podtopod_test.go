package bpf_test

import (
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestPodToPod runs with each attach mode: this kernel has tcx, and forcing
// tc clsact proves the legacy path older kernels take.
func TestPodToPod(t *testing.T) {
	for _, mode := range []bpf.AttachMode{bpf.AttachTCX, bpf.AttachTC} {
		t.Run(string(mode), func(t *testing.T) { testPodToPod(t, mode) })
	}
}

func testPodToPod(t *testing.T, mode bpf.AttachMode) {
	topo, nodes := clusterOpts(t, netnstest.Config{Nodes: 2, PodsPerNode: 2}, bpf.Config{Attach: mode})
	testenv.RequireCommand(t, "ping")
	for _, nd := range nodes {
		if got := nd.dp.AttachMode(); got != mode {
			t.Fatalf("attach mode %s, want %s", got, mode)
		}
	}
	const port = 7000
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	src := topo.Nodes[0].Pods[0]
	for _, dst := range []struct {
		name string
		pod  int // index in topo.Pods()
	}{
		{"same node", 1},
		{"other node", 2},
		{"other node 2", 3},
	} {
		d := topo.Pods()[dst.pod]
		addr := netip.AddrPortFrom(d.IP, port)
		t.Run(dst.name, func(t *testing.T) {
			h, err := tcpRoundTrip(src, addr)
			if err != nil {
				t.Fatalf("tcp %s -> %s: %v", src.Name, d.Name, err)
			}
			if peer, _ := netip.ParseAddrPort(h.peer); h.server != d.Name || peer.Addr() != src.IP {
				t.Errorf("tcp hello = %+v, want server %s seeing %s", h, d.Name, src.IP)
			}
			if h, err := udpRoundTrip(src, addr); err != nil || h.server != d.Name {
				t.Errorf("udp %s -> %s: %+v %v", src.Name, d.Name, h, err)
			}
			if err := ping(src, d.IP); err != nil {
				t.Errorf("icmp %s -> %s: %v", src.Name, d.Name, err)
			}
		})
	}

	// The reverse direction works as well (pod on node 2 to node 1).
	if _, err := tcpRoundTrip(topo.Nodes[1].Pods[1], netip.AddrPortFrom(src.IP, port)); err != nil {
		t.Fatalf("tcp n2p2 -> n1p1: %v", err)
	}

	// Without an ipcache entry or tunnel route for the destination, node 1
	// no longer forwards to it.
	dst := topo.Nodes[1].Pods[0]
	apply(t, nodes[0], datapath.Batch{
		DeleteIPCache: []netip.Prefix{netip.PrefixFrom(dst.IP, 32)},
		DeleteTunnels: []netip.Prefix{topo.Nodes[1].PodCIDR},
	})
	if err := pingOnce(src, dst.IP); err == nil {
		t.Errorf("icmp still works after deleting the tunnel and ipcache entries")
	}
	if _, err := udpTry(src, netip.AddrPortFrom(dst.IP, port), 1, 300*time.Millisecond); err == nil {
		t.Errorf("udp still works after deleting the tunnel and ipcache entries")
	}
	// The tunnel route alone (no ipcache entry) is enough again.
	apply(t, nodes[0], datapath.Batch{UpsertTunnels: []datapath.TunnelEntry{{CIDR: topo.Nodes[1].PodCIDR, NodeIP: topo.Nodes[1].UnderlayIP}}})
	if _, err := tcpRoundTrip(src, netip.AddrPortFrom(dst.IP, port)); err != nil {
		t.Errorf("tcp via tunnel route: %v", err)
	}

	// Attaching again replaces the programs (one per direction of the
	// host veth: from the pod, and to it for tracking);
	// detaching stops forwarding from the pod; attaching restores it.
	far := netip.AddrPortFrom(topo.Nodes[1].Pods[1].IP, port)
	n1 := nodes[0]
	if err := n1.NS.Do(func() error { return n1.dp.Attach(bpf.HookEndpoint, src.HostIfIndex) }); err != nil {
		t.Fatal(err)
	}
	if c := attached(t, n1.NS, src.HostIfIndex); c != 2 {
		t.Errorf("%d programs after attaching twice, want 2 (ingress and egress)", c)
	}
	if err := n1.NS.Do(func() error { return n1.dp.Detach(bpf.HookEndpoint, src.HostIfIndex) }); err != nil {
		t.Fatal(err)
	}
	if c := attached(t, n1.NS, src.HostIfIndex); c != 0 {
		t.Errorf("%d programs after detach, want 0", c)
	}
	if _, err := udpTry(src, far, 1, 300*time.Millisecond); err == nil {
		t.Errorf("udp still forwarded after detach")
	}
	if err := n1.NS.Do(func() error { return n1.dp.Detach(bpf.HookEndpoint, src.HostIfIndex) }); !errors.Is(err, bpf.ErrNotAttached) {
		t.Errorf("second detach: %v, want ErrNotAttached", err)
	}
	if err := n1.NS.Do(func() error { return n1.dp.Attach(bpf.HookEndpoint, src.HostIfIndex) }); err != nil {
		t.Fatal(err)
	}
	if _, err := udpRoundTrip(src, far); err != nil {
		t.Errorf("udp after re-attach: %v", err)
	}
}
