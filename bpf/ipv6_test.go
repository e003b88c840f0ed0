package bpf_test

import (
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestIPv6: pods with IPv6 addresses (over the IPv4 underlay) reach each
// other across nodes with TCP, UDP and ICMPv6, and through an IPv6 service
// frontend whose replies come from the frontend.
func TestIPv6(t *testing.T) {
	topo, nodes := clusterWith(t, netnstest.Config{Nodes: 2, PodsPerNode: 2, IPv6: true})
	testenv.RequireCommand(t, "ping")
	const port = 7000
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	src := topo.Nodes[0].Pods[0]
	for _, d := range topo.Pods()[1:] {
		addr := netip.AddrPortFrom(d.IP6, port)
		h, err := tcpRoundTrip(src, addr)
		if err != nil {
			t.Fatalf("tcp %s -> %s: %v", src.Name, addr, err)
		}
		if peer, _ := netip.ParseAddrPort(h.peer); h.server != d.Name || peer.Addr() != src.IP6 {
			t.Errorf("tcp hello = %+v, want server %s seeing %s", h, d.Name, src.IP6)
		}
		if h, err := udpRoundTrip(src, addr); err != nil || h.server != d.Name {
			t.Errorf("udp %s -> %s: %+v %v", src.Name, addr, h, err)
		}
		if err := ping(src, d.IP6); err != nil {
			t.Errorf("icmpv6 %s -> %s: %v", src.Name, d.IP6, err)
		}
	}

	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("[fd00:96::10]:80"), Proto: ipproto.TCP}
	feUDP := datapath.Frontend{Addr: netip.MustParseAddrPort("[fd00:96::10]:53"), Proto: ipproto.UDP}
	svc := func(f datapath.Frontend) datapath.Service {
		s := datapath.Service{Frontend: f}
		for _, p := range topo.Pods()[1:] {
			s.Backends = append(s.Backends, datapath.Backend{Addr: netip.AddrPortFrom(p.IP6, port), Weight: 1})
		}
		return s
	}
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{svc(fe), svc(feUDP)}})
	seen := map[string]int{}
	for range 150 {
		h, err := tcpRoundTrip(src, fe.Addr)
		if err != nil {
			t.Fatalf("tcp to %s: %v", fe, err)
		}
		if peer, _ := netip.ParseAddrPort(h.peer); peer.Addr() != src.IP6 {
			t.Errorf("backend saw %s, want %s", h.peer, src.IP6)
		}
		seen[h.server]++
	}
	if len(seen) != 3 {
		t.Errorf("150 connections to %s reached %v, want all 3 backends", fe, seen)
	}
	c, r, _, err := dialTCP(src, fe.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RemoteAddr().String(); got != fe.Addr.String() {
		t.Errorf("connected peer = %s, want %s", got, fe.Addr)
	}
	if err := echo(c, r, "v6"); err != nil {
		t.Error(err)
	}
	c.Close()
	if _, err := udpRoundTrip(src, feUDP.Addr); err != nil {
		t.Errorf("udp to %s: %v", feUDP, err)
	}
	st, err := nodes[0].w.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if got := st.Services[fe]; !equalService(got, svc(fe)) {
		t.Errorf("dump: %+v", got)
	}

	// Without its ipcache entry and tunnel route a remote pod is unreachable.
	dst := topo.Nodes[1].Pods[0]
	apply(t, nodes[0], datapath.Batch{
		DeleteIPCache: []netip.Prefix{netip.PrefixFrom(dst.IP6, 128)},
		DeleteTunnels: []netip.Prefix{topo.Nodes[1].PodCIDR6},
	})
	if err := pingOnce(src, dst.IP6); err == nil {
		t.Errorf("icmpv6 still works after deleting the tunnel and ipcache entries")
	}
}
