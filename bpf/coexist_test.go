package bpf_test

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"testing"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestCoexistence proves, with real packets, what the datapath leaves to a
// primary CNI and kube-proxy in coexistence mode, against full mode on the
// same topology. Node n1 stands for a node of a cluster with its own CNI:
// host routes to its pods and forwarding on (the CNI's part) and an nftables
// DNAT for a ClusterIP Service the agent does not program (kube-proxy's part,
// 10.96.0.99: one kube-proxy keeps, or with --coexist-services=global),
// with named counters. n2 is a node of a remote cluster reached through
// the tunnel.
func TestCoexistence(t *testing.T) {
	for _, tc := range []struct {
		name    string
		coexist bool
		// wantLocalForwarded: local pod-to-pod packets cross n1's FORWARD
		// chain (the host stack decides), rather than being redirected
		// into the pod by our program.
		wantLocalForwarded bool
		// wantKubeProxy: kube-proxy's Service works. In full mode the
		// backend's reply is redirected into the client past the host's
		// conntrack, which never reverses the DNAT: the flow breaks (there
		// the agent load-balances every Service itself).
		wantKubeProxy bool
		// wantRemoteForwarded: both directions of a flow to a remote pod
		// cross the FORWARD chain of both nodes (the host routes it into
		// and out of the tunnel device), so conntrack sees the whole flow.
		wantRemoteForwarded bool
	}{
		{name: "coexist", coexist: true, wantLocalForwarded: true, wantKubeProxy: true, wantRemoteForwarded: true},
		{name: "full", coexist: false, wantLocalForwarded: false, wantKubeProxy: false, wantRemoteForwarded: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			testCoexistence(t, tc.coexist, tc.wantLocalForwarded, tc.wantKubeProxy, tc.wantRemoteForwarded)
		})
	}
}

func testCoexistence(t *testing.T, coexist, wantLocalForwarded, wantKubeProxy, wantRemoteForwarded bool) {
	topo, nodes := clusterOpts(t, netnstest.Config{Nodes: 2, PodsPerNode: 2}, bpf.Config{Coexist: coexist})
	nft := testenv.RequireCommand(t, "nft")
	const port = 7000
	for _, p := range topo.Pods() {
		serve(t, p, port)
	}
	n1, n2 := topo.Nodes[0], topo.Nodes[1]
	client, local, remote := n1.Pods[0], n1.Pods[1], n2.Pods[0]
	// The primary CNI's part on both nodes.
	for _, n := range topo.Nodes {
		primaryCNI(t, n)
	}
	// kube-proxy's DNAT of a Service the agent leaves it and its drop of
	// packets conntrack finds invalid in FORWARD (kube-proxy's iptables
	// mode adds it unless nf_conntrack_tcp_be_liberal is set: a flow whose
	// one direction bypasses the host stack is cut by it), a DNAT of the
	// global frontend that must never be reached (our program translates
	// it first), and counters of local pod-to-pod forwarding, of remote
	// pod traffic forwarded each way and of tunnel packets received.
	kubeProxyVIP := netip.MustParseAddr("10.96.0.99")
	globalVIP := netip.MustParseAddr("10.96.0.50")
	rules := [][]string{
		{"add", "table", "ip", "cmt"},
		{"add", "counter", "ip", "cmt", "local_fwd"},
		{"add", "counter", "ip", "cmt", "kube_proxy"},
		{"add", "counter", "ip", "cmt", "global_dnat"},
		{"add", "counter", "ip", "cmt", "tunnel_rx"},
		{"add", "counter", "ip", "cmt", "invalid_drop"},
		{"add", "counter", "ip", "cmt", "remote_out"},
		{"add", "counter", "ip", "cmt", "remote_back"},
		{"add", "chain", "ip", "cmt", "cmfwd", "{ type filter hook forward priority 0 ; }"},
		{"add", "rule", "ip", "cmt", "cmfwd", "ct", "state", "invalid", "counter", "name", "invalid_drop", "drop"},
		{"add", "rule", "ip", "cmt", "cmfwd", "ip", "saddr", client.IP.String(), "ip", "daddr", local.IP.String(), "counter", "name", "local_fwd"},
		{"add", "rule", "ip", "cmt", "cmfwd", "ip", "saddr", client.IP.String(), "ip", "daddr", remote.IP.String(), "counter", "name", "remote_out"},
		{"add", "rule", "ip", "cmt", "cmfwd", "ip", "saddr", remote.IP.String(), "ip", "daddr", client.IP.String(), "counter", "name", "remote_back"},
		{"add", "chain", "ip", "cmt", "cmpre", "{ type nat hook prerouting priority -100 ; }"},
		{"add", "rule", "ip", "cmt", "cmpre", "ip", "daddr", kubeProxyVIP.String(), "tcp", "dport", "80", "counter", "name", "kube_proxy", "dnat", "to", local.IP.String() + ":" + strconv.Itoa(port)},
		{"add", "rule", "ip", "cmt", "cmpre", "ip", "daddr", globalVIP.String(), "tcp", "dport", "80", "counter", "name", "global_dnat", "dnat", "to", local.IP.String() + ":" + strconv.Itoa(port)},
		{"add", "chain", "ip", "cmt", "cmin", "{ type filter hook input priority 0 ; }"},
		{"add", "rule", "ip", "cmt", "cmin", "udp", "dport", strconv.Itoa(netnstest.TunnelPort), "counter", "name", "tunnel_rx"},
	}
	for _, n := range topo.Nodes {
		for _, r := range rules {
			if out, err := n.NS.Exec(nft, r...); err != nil {
				t.Fatalf("nft %v on %s: %v: %s", r, n.Name, err, out)
			}
		}
	}
	// The global service, as the agent programs it in both modes: its one
	// backend is the local pod.
	apply(t, nodes[0], datapath.Batch{UpsertServices: []datapath.Service{{
		Frontend: datapath.Frontend{Addr: netip.AddrPortFrom(globalVIP, 80), Proto: ipproto.TCP},
		Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(local.IP, port), ClusterID: 1, Weight: 1}},
	}}})

	t.Run("local pod to pod", func(t *testing.T) {
		before := nftCounter(t, n1, "local_fwd")
		if h, err := tcpRoundTrip(client, netip.AddrPortFrom(local.IP, port)); err != nil || h.server != local.Name {
			t.Fatalf("tcp %s -> %s: %+v %v", client.Name, local.Name, h, err)
		}
		if forwarded := nftCounter(t, n1, "local_fwd") > before; forwarded != wantLocalForwarded {
			t.Errorf("host FORWARD chain saw the local flow: %v, want %v", forwarded, wantLocalForwarded)
		}
	})
	t.Run("service the agent does not program left to kube-proxy", func(t *testing.T) {
		before := nftCounter(t, n1, "kube_proxy")
		h, err := tcpRoundTrip(client, netip.AddrPortFrom(kubeProxyVIP, 80))
		if works := err == nil && h.server == local.Name; works != wantKubeProxy {
			t.Fatalf("tcp %s -> %s:80 works = %v, want %v (%+v %v)", client.Name, kubeProxyVIP, works, wantKubeProxy, h, err)
		}
		if nftCounter(t, n1, "kube_proxy") <= before {
			t.Errorf("kube-proxy's DNAT rule did not see the flow to %s", kubeProxyVIP)
		}
	})
	t.Run("global service translated by the datapath", func(t *testing.T) {
		before := nftCounter(t, n1, "global_dnat")
		h, err := tcpRoundTrip(client, netip.AddrPortFrom(globalVIP, 80))
		if err != nil || h.server != local.Name {
			t.Fatalf("tcp %s -> %s:80: %+v %v", client.Name, globalVIP, h, err)
		}
		if n := nftCounter(t, n1, "global_dnat"); n != before {
			t.Errorf("the host's DNAT of the global frontend saw %d packets: the datapath did not translate it", n-before)
		}
	})
	t.Run("remote pod CIDR tunnelled", func(t *testing.T) {
		before := nftCounter(t, n2, "tunnel_rx")
		counters := []string{"remote_out", "remote_back", "invalid_drop"}
		fwd := map[*netnstest.Node]map[string]uint64{}
		for _, n := range topo.Nodes {
			fwd[n] = map[string]uint64{}
			for _, c := range counters {
				fwd[n][c] = nftCounter(t, n, c)
			}
		}
		if h, err := tcpRoundTrip(client, netip.AddrPortFrom(remote.IP, port)); err != nil || h.server != remote.Name {
			t.Fatalf("tcp %s -> %s: %+v %v", client.Name, remote.Name, h, err)
		}
		if nftCounter(t, n2, "tunnel_rx") <= before {
			t.Errorf("%s received no vxlan packet on UDP %d", n2.Name, netnstest.TunnelPort)
		}
		for _, n := range topo.Nodes {
			if d := nftCounter(t, n, "invalid_drop") - fwd[n]["invalid_drop"]; d != 0 {
				t.Errorf("%s: conntrack found %d packets invalid in FORWARD", n.Name, d)
			}
			for _, c := range counters[:2] {
				if got := nftCounter(t, n, c) > fwd[n][c]; got != wantRemoteForwarded {
					t.Errorf("%s: FORWARD saw %s packets of the remote flow: %v, want %v", n.Name, c, got, wantRemoteForwarded)
				}
			}
		}
	})
}

var nftPackets = regexp.MustCompile(`packets (\d+)`)

// nftCounter reads the packets of the named counter of table ip cmt on n.
func nftCounter(t *testing.T, n *netnstest.Node, name string) uint64 {
	t.Helper()
	return nftCounterIn(t, n, "cmt", name)
}

// nftCounterIn reads the packets of the named counter of table ip table on n.
func nftCounterIn(t *testing.T, n *netnstest.Node, table, name string) uint64 {
	t.Helper()
	return nftCounterFamily(t, n, "ip", table, name)
}

// nftCounterFamily reads the packets of the named counter of table family
// table on n.
func nftCounterFamily(t *testing.T, n *netnstest.Node, family, table, name string) uint64 {
	t.Helper()
	out, err := n.NS.Exec("nft", "list", "counter", family, table, name)
	if err != nil {
		t.Fatalf("nft list counter %s %s on %s: %v: %s", table, name, n.Name, err, out)
	}
	m := nftPackets.FindSubmatch(out)
	if m == nil {
		t.Fatalf("no packet count in %q", out)
	}
	v, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return v
}

// primaryCNI does a primary CNI's part on node n: host routes to its pods,
// the extra ip commands (routes to other nodes), forwarding on.
func primaryCNI(t *testing.T, n *netnstest.Node, extra ...string) {
	t.Helper()
	cmds := extra
	for _, p := range n.Pods {
		cmds = append(cmds, fmt.Sprintf("route add %s/32 dev %s", p.IP, p.HostIf))
	}
	if err := n.NS.Batch(cmds...); err != nil {
		t.Fatal(err)
	}
	if out, err := n.NS.Exec("sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"); err != nil {
		t.Fatalf("ip_forward on %s: %v: %s", n.Name, err, out)
	}
}
