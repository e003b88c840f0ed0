package bpf_test

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// TestPolicyServiceEgressCoexist: beside a primary CNI and kube-proxy
// (coexistence mode) the agent translates a pod's traffic to a ClusterIP
// Service that is not global, so the pod's egress policy decides it
// against the chosen backend's identity, not world. The second node runs
// the clients: c (egress default deny, allowed toEndpoints a's identity)
// and d (no egress policy). The backends: a and b, pods of the first node
// reached through the primary CNI's route, whose replies come back through
// the host stack and are reverse-translated on the pod's veth (cm_to_pod);
// d, on the clients' node; the clients' node itself (a hostNetwork
// backend, as a kube-apiserver: the node sends its replies into the pod).
// kube-proxy's DNAT rules for the same ClusterIPs and its drop of packets
// conntrack finds invalid are in place on both nodes: its DNAT never sees
// the pods' service traffic, and no packet of it is invalid.
func TestPolicyServiceEgressCoexist(t *testing.T) {
	const port = 7000
	topo, nodes := ownClusterCoexist(t, port)
	a, b, c, d := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1], topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1]
	idA, idB, idC, idD := podIdentity(0, 0), podIdentity(0, 1), podIdentity(1, 0), podIdentity(1, 1)
	pn := nodes[1]
	svcA := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.21"), 80)
	svcB := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.22"), 80)
	svcD := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.23"), 80)
	svcH := netip.AddrPortFrom(netip.MustParseAddr("10.96.0.24"), 80)
	// A hostNetwork backend on the clients' node (as a kube-apiserver):
	// the node's address, with the host identity, served in its namespace.
	n1 := topo.Nodes[1]
	host := &netnstest.Pod{Name: "host-" + n1.Name, NS: n1.NS, IP: n1.UnderlayIP}
	const hostPort = port + 1
	serve(t, host, hostPort)
	backend := map[netip.AddrPort]*netnstest.Pod{svcA: a, svcB: b, svcD: d, svcH: host}
	// The Services as the agent programs them beside kube-proxy: every
	// ClusterIP, TCP and UDP, one backend each.
	batch := datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: netip.PrefixFrom(n1.UnderlayIP, 32), Identity: hostIdentity, ClusterID: 1}}}
	backendPort := func(p *netnstest.Pod) int {
		if p == host {
			return hostPort
		}
		return port
	}
	for fe, p := range backend {
		for _, proto := range []ipproto.Proto{ipproto.TCP, ipproto.UDP} {
			batch.UpsertServices = append(batch.UpsertServices, datapath.Service{
				Frontend: datapath.Frontend{Addr: fe, Proto: proto},
				Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(p.IP, uint16(backendPort(p))), ClusterID: 1, Weight: 1}},
			})
		}
	}
	apply(t, pn.node, batch)
	dnat := map[netip.AddrPort]netip.AddrPort{}
	for fe, p := range backend {
		dnat[fe] = netip.AddrPortFrom(p.IP, uint16(backendPort(p)))
	}
	kubeProxy(t, topo, dnat)
	// c: egress only to a (toEndpoints selecting a's identity).
	pn.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{Subject: idC, Egress: true, Peer: idA}, Rule: 61}},
		Modes:   []datapath.PolicyMode{{Subject: idC, Egress: true}},
	})
	denied := func(to *netnstest.Pod, id uint32) *datapath.Drop {
		return &datapath.Drop{SrcIdentity: idC, DstIdentity: id, SrcCluster: 1, Src: c.IP, Dst: to.IP,
			DstPort: uint16(backendPort(to)), Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
	}
	for _, tc := range []struct {
		name string
		from *netnstest.Pod
		to   netip.AddrPort
		want bool           // TCP (replies included) and UDP pass
		drop *datapath.Drop // the event the denial must send
	}{
		{name: "allowed by the backend's identity, backend on the other node", from: c, to: svcA, want: true},
		{name: "denied by the backend's identity, backend on the other node", from: c, to: svcB, drop: denied(b, idB)},
		{name: "denied by the backend's identity, backend on the same node", from: c, to: svcD, drop: denied(d, idD)},
		{name: "denied by the backend's identity, a hostNetwork backend on the same node", from: c, to: svcH, drop: denied(host, hostIdentity)},
		{name: "no egress policy: first Service", from: d, to: svcA, want: true},
		{name: "no egress policy: second Service", from: d, to: svcB, want: true},
		{name: "no egress policy: hostNetwork backend, replies from the node itself", from: d, to: svcH, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kp := map[*netnstest.Node]uint64{}
			inv := map[*netnstest.Node]uint64{}
			for _, n := range topo.Nodes {
				kp[n] = nftCounterIn(t, n, "cmtkp", "kube_proxy")
				inv[n] = nftCounterIn(t, n, "cmtkp", "invalid_drop")
			}
			expectService(t, pn, tc.from, tc.to, backend[tc.to].Name, tc.want, tc.drop)
			for _, n := range topo.Nodes {
				if got := nftCounterIn(t, n, "cmtkp", "kube_proxy"); got != kp[n] {
					t.Errorf("%s: kube-proxy's DNAT saw %d packets: the datapath did not translate the Service first", n.Name, got-kp[n])
				}
				if got := nftCounterIn(t, n, "cmtkp", "invalid_drop"); got != inv[n] {
					t.Errorf("%s: conntrack found %d packets invalid in FORWARD", n.Name, got-inv[n])
				}
			}
		})
	}
	// No denial was decided against world: every drop of c's egress names
	// a backend's identity.
	pn.drops.mu.Lock()
	defer pn.drops.mu.Unlock()
	for _, e := range pn.drops.evs {
		if e.Egress && e.SrcIdentity == idC && e.DstIdentity == worldIdentity {
			t.Errorf("a drop of %s's egress names world: %+v", c.Name, e)
		}
	}
}

// kubeProxy does kube-proxy's part on every node of topo: TCP and UDP DNAT
// of each frontend to its backend in prerouting (table cmtkp of family ip,
// or ip6 for IPv6 frontends, which dnat must not mix; counted by counter
// kube_proxy: the first packet of each connection it translates) and the
// drop of packets conntrack finds invalid in forward (counter
// invalid_drop). It returns the table's family.
func kubeProxy(t *testing.T, topo *netnstest.Topology, dnat map[netip.AddrPort]netip.AddrPort) string {
	t.Helper()
	nft := testenv.RequireCommand(t, "nft")
	family := "ip"
	for fe := range dnat {
		if fe.Addr().Is6() {
			family = "ip6"
		}
	}
	rules := [][]string{
		{"add", "table", family, "cmtkp"},
		{"add", "counter", family, "cmtkp", "kube_proxy"},
		{"add", "counter", family, "cmtkp", "invalid_drop"},
		{"add", "chain", family, "cmtkp", "cmfwd", "{ type filter hook forward priority 0 ; }"},
		{"add", "rule", family, "cmtkp", "cmfwd", "ct", "state", "invalid", "counter", "name", "invalid_drop", "drop"},
		{"add", "chain", family, "cmtkp", "cmpre", "{ type nat hook prerouting priority -100 ; }"},
	}
	for fe, be := range dnat {
		for _, proto := range []string{"tcp", "udp"} {
			rules = append(rules, []string{"add", "rule", family, "cmtkp", "cmpre", family, "daddr", fe.Addr().String(), proto, "dport", strconv.Itoa(int(fe.Port())),
				"counter", "name", "kube_proxy", "dnat", "to", be.String()})
		}
	}
	for _, n := range topo.Nodes {
		for _, r := range rules {
			if out, err := n.NS.Exec(nft, r...); err != nil {
				t.Fatalf("nft %v on %s: %v: %s", r, n.Name, err, out)
			}
		}
	}
	return family
}

// handover is the fixture of TestServiceHandoverCoexist: client's node
// (cn, its datapath pn) runs kube-proxy's stand-in, whose DNAT sends svc
// to kp; the agent's Service (programmed by the test) sends it to agent.
type handover struct {
	cn                *netnstest.Node
	pn                *policyNode
	client, kp, agent *netnstest.Pod
	ip                func(*netnstest.Pod) netip.Addr // the pods' address of svc's family
	svc               netip.AddrPort
	ctMap             string // the family's cm_lb_ct
	family            string // of kube-proxy's table
}

// TestServiceHandoverCoexist: beside kube-proxy, a TCP connection a pod
// opened to a ClusterIP through kube-proxy's DNAT before the agent
// programmed the Service keeps its backend once the agent translates the
// Service (its mid-stream packets are left to the host's conntrack), while
// a connection opened after the switch is the agent's: translated in
// cm_from_pod, never seen by kube-proxy's DNAT, and kept by the agent when
// the LRU evicts its CT entry. kube-proxy's DNAT sends the frontend to one
// pod, the agent's Service to another only, so a connection moved from one
// translator to the other would reach a backend without its socket and be
// reset. IPv4: two nodes of one cluster, the backends on the other node
// (ownClusterCoexist); IPv6: one node, the backends beside the client.
func TestServiceHandoverCoexist(t *testing.T) {
	const port = 7000
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) handover
	}{
		{name: "IPv4, backends on another node", setup: func(t *testing.T) handover {
			topo, nodes := ownClusterCoexist(t, port)
			a, b := topo.Nodes[0].Pods[0], topo.Nodes[0].Pods[1]
			h := handover{cn: topo.Nodes[1], pn: nodes[1], client: topo.Nodes[1].Pods[0], kp: a, agent: b,
				ip: func(p *netnstest.Pod) netip.Addr { return p.IP }, svc: netip.MustParseAddrPort("10.96.0.31:80"), ctMap: "cm_lb_ct"}
			h.family = kubeProxy(t, topo, map[netip.AddrPort]netip.AddrPort{h.svc: netip.AddrPortFrom(a.IP, port)})
			return h
		}},
		{name: "IPv6, backends on the same node", setup: func(t *testing.T) handover {
			topo, pn := coexistIPv6Node(t, 3, port)
			n := topo.Nodes[0]
			h := handover{cn: n, pn: pn, client: n.Pods[0], kp: n.Pods[1], agent: n.Pods[2],
				ip: func(p *netnstest.Pod) netip.Addr { return p.IP6 }, svc: netip.MustParseAddrPort("[fd00:96::31]:80"), ctMap: "cm_lb_ct6"}
			h.family = kubeProxy(t, topo, map[netip.AddrPort]netip.AddrPort{h.svc: netip.AddrPortFrom(h.kp.IP6, port)})
			return h
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testHandover(t, tc.setup(t), port)
		})
	}
}

// coexistIPv6Node is one node in coexistence mode with pods IPv6 pods, each
// serving port, beside a primary CNI (its IPv6 routes to the pods, the
// extra ip commands, forwarding on).
func coexistIPv6Node(t *testing.T, pods, port int, extra ...string) (*netnstest.Topology, *policyNode) {
	t.Helper()
	topo, nodes := policyClusterOpts(t, netnstest.Config{Nodes: 1, PodsPerNode: pods, IPv6: true}, bpf.Config{Coexist: true})
	n := topo.Nodes[0]
	cmds := extra
	for _, p := range n.Pods {
		serve(t, p, port)
		cmds = append(cmds, fmt.Sprintf("route add %s/128 dev %s", p.IP6, p.HostIf))
	}
	primaryCNI(t, n, cmds...)
	if out, err := n.NS.Exec("sh", "-c", "echo 1 > /proc/sys/net/ipv6/conf/all/forwarding"); err != nil {
		t.Fatalf("IPv6 forwarding on %s: %v: %s", n.Name, err, out)
	}
	return topo, nodes[0]
}

// testHandover is TestServiceHandoverCoexist on the fixture h.
func testHandover(t *testing.T, h handover, port int) {
	counters := func() (dnat, invalid uint64) {
		return nftCounterFamily(t, h.cn, h.family, "cmtkp", "kube_proxy"), nftCounterFamily(t, h.cn, h.family, "cmtkp", "invalid_drop")
	}
	dnat0, inv0 := counters()
	var old net.Conn
	var oldR *bufio.Reader
	testwait.Until(t, 10*time.Second, "a connection through kube-proxy's DNAT", func() (bool, string) {
		conn, r, hi, err := dialTCP(h.client, h.svc)
		if err != nil {
			return false, err.Error()
		}
		if hi.server != h.kp.Name {
			conn.Close()
			return false, fmt.Sprintf("answered by %+v", hi)
		}
		old, oldR = conn, r
		return true, ""
	})
	t.Cleanup(func() { old.Close() })
	if err := echo(old, oldR, "before the agent"); err != nil {
		t.Fatalf("echo through kube-proxy: %v", err)
	}
	if dnat, _ := counters(); dnat == dnat0 {
		t.Fatalf("kube-proxy's DNAT did not translate the first connection")
	}

	apply(t, h.pn.node, datapath.Batch{UpsertServices: []datapath.Service{{
		Frontend: datapath.Frontend{Addr: h.svc, Proto: ipproto.TCP},
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(h.ip(h.agent), uint16(port)), ClusterID: 1, Weight: 1}},
	}}})
	for i := range 3 {
		if err := echo(old, oldR, fmt.Sprintf("after the agent, %d", i)); err != nil {
			t.Fatalf("the connection opened through kube-proxy, after the agent programmed its Service: %v", err)
		}
	}

	dnat1, _ := counters()
	conn, r, hi, err := dialTCP(h.client, h.svc)
	if err != nil {
		t.Fatalf("a new connection after the switch: %v", err)
	}
	defer conn.Close()
	if peer, _ := netip.ParseAddrPort(hi.peer); hi.server != h.agent.Name || peer.Addr() != h.ip(h.client) {
		t.Errorf("a new connection after the switch: %+v, want answered by %s seeing %s", hi, h.agent.Name, h.ip(h.client))
	}
	if err := echo(conn, r, "the agent's"); err != nil {
		t.Errorf("a new connection after the switch: %v", err)
	}
	if dnat, _ := counters(); dnat != dnat1 {
		t.Errorf("kube-proxy's DNAT translated %d packets of the new connection: the agent did not", dnat-dnat1)
	}
	if err := echo(old, oldR, "after a new connection"); err != nil {
		t.Errorf("the connection opened through kube-proxy, after a new one: %v", err)
	}
	// The LRU evicts the agent's connection's CT entry: its reverse NAT
	// entry still shows the connection is the agent's, which keeps it.
	if n := clearMap(t, filepath.Join(h.pn.cfg.PinDir, "maps", h.ctMap)); n != 1 {
		t.Errorf("%s held %d entries, want the agent's connection's only", h.ctMap, n)
	}
	if err := echo(conn, r, "the agent's, its CT entry evicted"); err != nil {
		t.Errorf("the agent's connection after its CT entry was evicted: %v", err)
	}
	if err := echo(old, oldR, "after the eviction"); err != nil {
		t.Errorf("the connection opened through kube-proxy, after the eviction: %v", err)
	}
	if _, inv := counters(); inv != inv0 {
		t.Errorf("conntrack found %d packets invalid in FORWARD", inv-inv0)
	}
}

// noBackend is the fixture of TestServiceNoBackendCoexist: client, a pod
// of node cn (its datapath pn), and backend, served on port; svc routed by
// cn's host stack into kube-proxy's reject (kubeProxyReject).
type noBackend struct {
	cn              *netnstest.Node
	pn              *policyNode
	client, backend *netnstest.Pod
	ip              func(*netnstest.Pod) netip.Addr // the pods' address of svc's family
	svc             netip.AddrPort
	coexist         bool
}

// TestServiceNoBackendCoexist: beside kube-proxy, a pod's connection to a
// ClusterIP whose frontend has no backend (a Service without ready
// endpoints; a global Service whose local and remote backends are all
// gone: the control plane keeps the frontend with zero backends) is left
// untranslated, so kube-proxy's reject for a Service without endpoints
// answers it at once: TCP connect and a connected UDP socket see
// "connection refused". Once a backend appears, a new connection is the
// agent's (kube-proxy's reject, still in place, never sees it); once it is
// gone again, connections are refused again. In full mode the datapath
// drops them: the reject never sees a packet.
func TestServiceNoBackendCoexist(t *testing.T) {
	const port = 7000
	v4 := func(p *netnstest.Pod) netip.Addr { return p.IP }
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T) noBackend
	}{
		{name: "IPv4, backend on another node", setup: func(t *testing.T) noBackend {
			topo, nodes := ownClusterCoexist(t, port)
			f := noBackend{cn: topo.Nodes[1], pn: nodes[1], client: topo.Nodes[1].Pods[0], backend: topo.Nodes[0].Pods[1],
				ip: v4, svc: netip.MustParseAddrPort("10.96.0.41:80"), coexist: true}
			// The node routes the service range (as a default route
			// would), so an untranslated packet reaches kube-proxy's
			// forward hook.
			if err := f.cn.NS.Batch(fmt.Sprintf("route replace 10.96.0.0/16 via %s", topo.Nodes[0].UnderlayIP)); err != nil {
				t.Fatal(err)
			}
			return f
		}},
		{name: "IPv6, backend on the same node", setup: func(t *testing.T) noBackend {
			// The node routes the service range into a device, with an
			// address of its own to send kube-proxy's ICMPv6 from.
			topo, pn := coexistIPv6Node(t, 2, port, "link set lo up", "addr add fd00:ff::1/128 dev lo",
				"link add cmsvc type veth peer name cmsvcp", "link set cmsvc up", "link set cmsvcp up", "route add fd00:96::/64 dev cmsvc")
			n := topo.Nodes[0]
			return noBackend{cn: n, pn: pn, client: n.Pods[0], backend: n.Pods[1],
				ip: func(p *netnstest.Pod) netip.Addr { return p.IP6 }, svc: netip.MustParseAddrPort("[fd00:96::41]:80"), coexist: true}
		}},
		{name: "full mode: dropped", setup: func(t *testing.T) noBackend {
			topo, nodes := policyClusterOpts(t, netnstest.Config{Nodes: 1, PodsPerNode: 2}, bpf.Config{})
			n := topo.Nodes[0]
			for _, p := range n.Pods {
				serve(t, p, port)
			}
			primaryCNI(t, n, "link add cmsvc type veth peer name cmsvcp", "link set cmsvc up", "link set cmsvcp up", "route add 10.96.0.0/16 dev cmsvc")
			return noBackend{cn: n, pn: nodes[0], client: n.Pods[0], backend: n.Pods[1], ip: v4, svc: netip.MustParseAddrPort("10.96.0.41:80")}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testNoBackend(t, tc.setup(t), port)
		})
	}
}

// testNoBackend is TestServiceNoBackendCoexist on the fixture f.
func testNoBackend(t *testing.T, f noBackend, port int) {
	family := kubeProxyReject(t, f.cn, f.svc)
	protos := []ipproto.Proto{ipproto.TCP, ipproto.UDP}
	var batch datapath.Batch
	for _, proto := range protos {
		batch.UpsertServices = append(batch.UpsertServices, datapath.Service{Frontend: datapath.Frontend{Addr: f.svc, Proto: proto}})
	}
	apply(t, f.pn.node, batch)
	rejected := func() uint64 { return nftCounterFamily(t, f.cn, family, "cmrej", "kube_proxy_reject") }
	noBackendCheck := func(stage string) {
		t.Helper()
		r0 := rejected()
		if !f.coexist {
			if _, _, _, err := dialTCPTimeout(f.client, f.svc, time.Second); err == nil || errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("%s: tcp connect to %s: %v, want dropped (a timeout)", stage, f.svc, err)
			}
			if err := udpRefused(f.client, f.svc); !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Errorf("%s: udp to %s: %v, want dropped (a timeout)", stage, f.svc, err)
			}
			if r := rejected(); r != r0 {
				t.Errorf("%s: kube-proxy's reject counted %d packets: full mode passed them on", stage, r-r0)
			}
			return
		}
		_, _, _, err := dialTCPTimeout(f.client, f.svc, 3*time.Second)
		if !errors.Is(err, syscall.ECONNREFUSED) {
			t.Errorf("%s: tcp connect to %s: %v, want connection refused", stage, f.svc, err)
		}
		testwait.Until(t, 10*time.Second, stage+": a connected UDP socket refused", func() (bool, string) {
			err := udpRefused(f.client, f.svc)
			return errors.Is(err, syscall.ECONNREFUSED), fmt.Sprint(err)
		})
		if r := rejected(); r < r0+2 {
			t.Errorf("%s: kube-proxy's reject counted %d packets, want one TCP and one UDP at least", stage, r-r0)
		}
	}
	noBackendCheck("no backend")

	be := []datapath.Backend{{Addr: netip.AddrPortFrom(f.ip(f.backend), uint16(port)), ClusterID: 1, Weight: 1}}
	var up, down datapath.Batch
	for _, proto := range protos {
		fe := datapath.Frontend{Addr: f.svc, Proto: proto}
		up.PatchServices = append(up.PatchServices, datapath.ServicePatch{Frontend: fe, Upsert: be})
		down.PatchServices = append(down.PatchServices, datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{be[0].Addr}})
	}
	apply(t, f.pn.node, up)
	r0 := rejected()
	expectService(t, f.pn, f.client, f.svc, f.backend.Name, true, nil)
	if r := rejected(); r != r0 {
		t.Errorf("kube-proxy's reject saw %d packets once the Service had a backend: the agent did not translate", r-r0)
	}

	apply(t, f.pn.node, down)
	noBackendCheck("backend gone")
}

// kubeProxyReject does kube-proxy's part for fe, a Service without
// endpoints, on n, as its nftables mode does: new connections to the
// ClusterIP and port, TCP and UDP, rejected in forward (ICMP port
// unreachable), in table cmrej of fe's family (returned), counted by
// counter kube_proxy_reject.
func kubeProxyReject(t *testing.T, n *netnstest.Node, fe netip.AddrPort) string {
	t.Helper()
	nft := testenv.RequireCommand(t, "nft")
	family := "ip"
	if fe.Addr().Is6() {
		family = "ip6"
	}
	rules := [][]string{
		{"add", "table", family, "cmrej"},
		{"add", "counter", family, "cmrej", "kube_proxy_reject"},
		{"add", "chain", family, "cmrej", "cmfwd", "{ type filter hook forward priority -1 ; }"},
	}
	for _, proto := range []string{"tcp", "udp"} {
		rules = append(rules, []string{"add", "rule", family, "cmrej", "cmfwd", "ct", "state", "new", family, "daddr", fe.Addr().String(),
			proto, "dport", strconv.Itoa(int(fe.Port())), "counter", "name", "kube_proxy_reject", "reject"})
	}
	for _, r := range rules {
		if out, err := n.NS.Exec(nft, r...); err != nil {
			t.Fatalf("nft %v on %s: %v: %s", r, n.Name, err, out)
		}
	}
	return family
}

// udpRefused sends a datagram from p to addr on a connected UDP socket and
// returns the error of the read that follows (ECONNREFUSED once an ICMP
// port unreachable came back).
func udpRefused(p *netnstest.Pod, addr netip.AddrPort) error {
	c, err := dialUDP(p.NS, addr)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("payload")); err != nil {
		return err
	}
	_ = c.SetReadDeadline(time.Now().Add(time.Second))
	_, err = c.Read(make([]byte, 2048))
	return err
}

// clearMap deletes every entry of the pinned map at path (as LRU eviction
// would) and returns how many it held.
func clearMap(t *testing.T, path string) int {
	t.Helper()
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		t.Fatalf("load pinned map %q: %v", path, err)
	}
	defer m.Close()
	var keys [][]byte
	var k, v []byte
	for it := m.Iterate(); it.Next(&k, &v); {
		keys = append(keys, append([]byte(nil), k...))
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil {
			t.Fatalf("delete from %q: %v", path, err)
		}
	}
	return len(keys)
}

// Cilium's reserved identities host and world.
const (
	hostIdentity  = 1
	worldIdentity = 2
)

// expectService checks from's traffic to the Service frontend to: with want,
// TCP (replies included) and UDP reach the backend named server, which sees
// from's own address; else neither passes and drop, if given, is among
// pn's drop events.
func expectService(t *testing.T, pn *policyNode, from *netnstest.Pod, to netip.AddrPort, server string, want bool, drop *datapath.Drop) {
	t.Helper()
	src := from.IP
	if to.Addr().Is6() {
		src = from.IP6
	}
	if want {
		testwait.Until(t, 10*time.Second, fmt.Sprintf("%s -> %s over TCP and UDP", from.Name, to), func() (bool, string) {
			h, err := tcpRoundTrip(from, to)
			if peer, _ := netip.ParseAddrPort(h.peer); err != nil || h.server != server || peer.Addr() != src {
				return false, fmt.Sprintf("tcp: %+v %v", h, err)
			}
			h, err = udpTry(from, to, 2, 400*time.Millisecond)
			return err == nil && h.server == server, fmt.Sprintf("udp: %+v %v", h, err)
		})
	} else {
		if conn, _, _, err := dialTCPTimeout(from, to, 700*time.Millisecond); err == nil {
			conn.Close()
			t.Errorf("tcp %s -> %s passed", from.Name, to)
		}
		if h, err := udpTry(from, to, 2, 400*time.Millisecond); err == nil {
			t.Errorf("udp %s -> %s passed: %+v", from.Name, to, h)
		}
	}
	if drop != nil {
		testwait.Until(t, 5*time.Second, fmt.Sprintf("drop event %+v", *drop), func() (bool, string) {
			return pn.drops.find(*drop), pn.drops.String()
		})
	}
}

// TestPolicyServiceEgressCoexistIPv6: the IPv6 half of
// TestPolicyServiceEgressCoexist on one node beside a primary CNI (its
// IPv6 routes to the pods): c, in egress default deny and allowed d's
// identity, reaches a Service of d and not one whose backend is the node
// itself (host identity, drop event naming it); d, without egress policy,
// reaches the node's Service, whose replies the node sends into the pod
// and cm_to_pod translates back.
func TestPolicyServiceEgressCoexistIPv6(t *testing.T) {
	const port, hostPort = 7000, 7001
	topo, nodes := policyClusterOpts(t, netnstest.Config{Nodes: 1, PodsPerNode: 2, IPv6: true}, bpf.Config{Coexist: true})
	n, pn := topo.Nodes[0], nodes[0]
	c, d := n.Pods[0], n.Pods[1]
	idC, idD := podIdentity(0, 0), podIdentity(0, 1)
	nodeIP := netip.MustParseAddr("fd00:ff::1")
	primaryCNI(t, n, "link set lo up", "addr add "+nodeIP.String()+"/128 dev lo",
		fmt.Sprintf("route add %s/128 dev %s", c.IP6, c.HostIf), fmt.Sprintf("route add %s/128 dev %s", d.IP6, d.HostIf))
	for _, p := range n.Pods {
		serve(t, p, port)
	}
	host := &netnstest.Pod{Name: "host-" + n.Name, NS: n.NS, IP6: nodeIP}
	serve(t, host, hostPort)
	svcD := netip.MustParseAddrPort("[fd00:96::23]:80")
	svcH := netip.MustParseAddrPort("[fd00:96::24]:80")
	batch := datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: netip.PrefixFrom(nodeIP, 128), Identity: hostIdentity, ClusterID: 1}}}
	for fe, be := range map[netip.AddrPort]netip.AddrPort{svcD: netip.AddrPortFrom(d.IP6, port), svcH: netip.AddrPortFrom(nodeIP, hostPort)} {
		for _, proto := range []ipproto.Proto{ipproto.TCP, ipproto.UDP} {
			batch.UpsertServices = append(batch.UpsertServices, datapath.Service{Frontend: datapath.Frontend{Addr: fe, Proto: proto},
				Backends: []datapath.Backend{{Addr: be, ClusterID: 1, Weight: 1}}})
		}
	}
	apply(t, pn.node, batch)
	pn.apply(t, datapath.PolicyBatch{
		Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{Subject: idC, Egress: true, Peer: idD}, Rule: 62}},
		Modes:   []datapath.PolicyMode{{Subject: idC, Egress: true}},
	})
	for _, tc := range []struct {
		name     string
		from     *netnstest.Pod
		to       netip.AddrPort
		server   string
		want     bool
		dropDst  netip.AddrPort
		dropPeer uint32
	}{
		{name: "allowed by the backend's identity", from: c, to: svcD, server: d.Name, want: true},
		{name: "denied by the backend's identity, the node itself", from: c, to: svcH, dropDst: netip.AddrPortFrom(nodeIP, hostPort), dropPeer: hostIdentity},
		{name: "no egress policy: the node's replies translated back", from: d, to: svcH, server: host.Name, want: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var drop *datapath.Drop
			if !tc.want {
				drop = &datapath.Drop{SrcIdentity: idC, DstIdentity: tc.dropPeer, SrcCluster: 1, Src: c.IP6, Dst: tc.dropDst.Addr(),
					DstPort: tc.dropDst.Port(), Proto: ipproto.TCP, Egress: true, Reason: datapath.DropPolicyDefault}
			}
			expectService(t, pn, tc.from, tc.to, tc.server, tc.want, drop)
		})
	}
}
