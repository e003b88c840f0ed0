package bpf_test

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
)

var (
	tcpVIP = datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	udpVIP = datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:53"), Proto: ipproto.UDP}
)

const backendPort = 8080

func service(fe datapath.Frontend, pods []*netnstest.Pod, weights ...uint16) datapath.Service {
	s := datapath.Service{Frontend: fe}
	for i, p := range pods {
		w := uint16(1)
		if i < len(weights) {
			w = weights[i]
		}
		s.Backends = append(s.Backends, datapath.Backend{Addr: netip.AddrPortFrom(p.IP, backendPort), ClusterID: 1, Weight: w})
	}
	return s
}

// connectMany opens n connections from client to fe (4 at a time) and counts
// which backend answered; every backend must see the client's own address.
func connectMany(t *testing.T, client *netnstest.Pod, fe datapath.Frontend, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	counts := map[string]int{}
	var wg sync.WaitGroup
	work := make(chan int) // connection numbers to open
	for range 4 {
		wg.Go(func() {
			for range work {
				h, err := tcpRoundTrip(client, fe.Addr)
				mu.Lock()
				if err != nil {
					counts["error: "+err.Error()]++
				} else {
					counts[h.server]++
					if peer, _ := netip.ParseAddrPort(h.peer); peer.Addr() != client.IP {
						counts["wrong peer "+h.peer]++
					}
				}
				mu.Unlock()
			}
		})
	}
	for i := range n {
		work <- i
	}
	close(work)
	wg.Wait()
	return counts
}

func TestServiceLoadBalancing(t *testing.T) {
	topo, nodes := cluster(t, 2, 2)
	client := topo.Nodes[0].Pods[0]
	// Backends on both nodes: the other pod of the client's node and both
	// pods of the other node.
	backends := []*netnstest.Pod{topo.Nodes[0].Pods[1], topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1]}
	for _, p := range backends {
		serve(t, p, backendPort)
	}
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{
		service(tcpVIP, backends), service(udpVIP, backends),
	}})

	// 1,000 new connections: each backend gets its fair share ±30%
	// (binomial σ ≈ 15 for 333 expected: ±100 is > 6σ).
	const conns = 1000
	const tolerance = 0.30
	counts := connectMany(t, client, tcpVIP, conns)
	t.Logf("1,000 connections to %s: %v", tcpVIP, counts)
	want := float64(conns) / float64(len(backends))
	for k, c := range counts {
		if !isPod(k, backends) {
			t.Errorf("%d connections: %s", c, k)
		}
	}
	for _, b := range backends {
		if c := float64(counts[b.Name]); c < want*(1-tolerance) || c > want*(1+tolerance) {
			t.Errorf("backend %s got %v of %d connections, want %.0f ±%.0f%%", b.Name, c, conns, want, tolerance*100)
		}
	}

	// UDP through the frontend: the connected socket accepts only replies
	// whose source is the VIP, so an answer proves the reverse NAT.
	seen := map[string]bool{}
	for range 30 {
		h, err := udpRoundTrip(client, udpVIP.Addr)
		if err != nil {
			t.Fatalf("udp to %s: %v", udpVIP, err)
		}
		if peer, _ := netip.ParseAddrPort(h.peer); peer.Addr() != client.IP {
			t.Errorf("udp backend saw peer %s, want %s", h.peer, client.IP)
		}
		seen[h.server] = true
	}
	if len(seen) < 2 {
		t.Errorf("30 UDP flows reached only %v", seen)
	}
	// One UDP flow (one connected socket) stays on one backend.
	for range 5 {
		h1, err1 := roundTripFromPort(client, "udp4", 61100, udpVIP.Addr)
		h2, err2 := roundTripFromPort(client, "udp4", 61100, udpVIP.Addr)
		if err1 != nil || err2 != nil || h1.server != h2.server {
			t.Errorf("same UDP flow answered by %q (%v) then %q (%v)", h1.server, err1, h2.server, err2)
		}
	}

	// An established connection's peer is the VIP (replies are reverse-NATed).
	c, r, _, err := dialTCP(client, tcpVIP.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if got := c.RemoteAddr().String(); got != tcpVIP.Addr.String() {
		t.Errorf("connected peer = %s, want %s", got, tcpVIP.Addr)
	}
	if err := echo(c, r, "x"); err != nil {
		t.Error(err)
	}
	c.Close()

	// A direct connection that reuses the tuple of an earlier service flow
	// (same client port, same backend) is not reverse-NATed. Fixed ports are
	// above the ephemeral range (32768-60999), so no other flow holds them.
	for _, proto := range []string{"tcp4", "udp4"} {
		fe := tcpVIP
		if proto == "udp4" {
			fe = udpVIP
		}
		h, err := roundTripFromPort(client, proto, 61000, fe.Addr)
		if err != nil {
			t.Fatalf("%s to %s from port 61000: %v", proto, fe, err)
		}
		be := podByName(topo, h.server)
		if _, err := roundTripFromPort(client, proto, 61000, netip.AddrPortFrom(be.IP, backendPort)); err != nil {
			t.Errorf("%s direct to %s from the port of an earlier service flow: %v", proto, be.Name, err)
		}
	}

	// Hairpin: a client that is one of the backends reaches itself through
	// the frontend; it sees the connection come from 169.254.42.1.
	hairVIP := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.11:80"), Proto: ipproto.TCP}
	hairUDP := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.11:53"), Proto: ipproto.UDP}
	serve(t, client, backendPort)
	hairBackends := []*netnstest.Pod{client, backends[1]}
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{
		service(hairVIP, hairBackends), service(hairUDP, hairBackends),
	}})
	self := 0
	for range 40 {
		h, err := tcpRoundTrip(client, hairVIP.Addr)
		if err != nil {
			t.Fatalf("hairpin tcp: %v", err)
		}
		if h.server == client.Name {
			self++
			if peer, _ := netip.ParseAddrPort(h.peer); peer.Addr() != netip.MustParseAddr("169.254.42.1") {
				t.Errorf("hairpinned connection seen from %s", h.peer)
			}
		}
		if _, err := udpRoundTrip(client, hairUDP.Addr); err != nil {
			t.Fatalf("hairpin udp: %v", err)
		}
	}
	if self == 0 || self == 40 {
		t.Errorf("%d of 40 connections hairpinned, want some", self)
	}

	// Removing a backend removes it from new connections.
	removed := backends[2]
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{service(tcpVIP, backends[:2])}})
	counts = connectMany(t, client, tcpVIP, 200)
	t.Logf("200 connections after removing %s: %v", removed.Name, counts)
	if counts[removed.Name] != 0 || counts[backends[0].Name] == 0 || counts[backends[1].Name] == 0 || len(counts) != 2 {
		t.Errorf("after removing %s: %v", removed.Name, counts)
	}

	// Weight 0 keeps a backend known but out of new connections.
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{service(tcpVIP, backends[:2], 0, 1)}})
	counts = connectMany(t, client, tcpVIP, 50)
	if counts[backends[1].Name] != 50 {
		t.Errorf("with %s at weight 0: %v", backends[0].Name, counts)
	}

	// Dump reads the services back as applied.
	st, err := nodes[0].w.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := st.Services[tcpVIP], service(tcpVIP, backends[:2], 0, 1); !equalService(got, want) {
		t.Errorf("dump: %+v, want %+v", got, want)
	}

	// Deleting the service stops the translation.
	apply(t, nodes[0], datapath.Batch{DeleteServices: []datapath.Frontend{tcpVIP, udpVIP, hairVIP, hairUDP}})
	if _, err := udpTry(client, udpVIP.Addr, 1, 300*time.Millisecond); err == nil {
		t.Errorf("udp to a deleted service still answered")
	}
	if st, _ := nodes[0].w.Dump(); len(st.Services) != 0 {
		t.Errorf("services left after delete: %v", st.Services)
	}
}

func isPod(name string, pods []*netnstest.Pod) bool {
	for _, p := range pods {
		if p.Name == name {
			return true
		}
	}
	return false
}

func equalService(a, b datapath.Service) bool {
	if a.Frontend != b.Frontend || len(a.Backends) != len(b.Backends) {
		return false
	}
	for i := range a.Backends {
		if a.Backends[i] != b.Backends[i] {
			return false
		}
	}
	return true
}

func podByName(topo *netnstest.Topology, name string) *netnstest.Pod {
	for _, p := range topo.Pods() {
		if p.Name == name {
			return p
		}
	}
	return nil
}
