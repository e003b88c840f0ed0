package netnstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/netns"
)

// TunnelDev is the name of every node's `vxlan external` device, and
// TunnelPort its UDP port.
const (
	TunnelDev  = "cmt-vx"
	TunnelPort = 8472
)

// gateway is the pods' next hop: a link-local address answered by a static
// neighbor entry pointing at the host side of the pod's veth.
const gateway = "169.254.1.1"

// gateway6 is the pods' IPv6 next hop, answered the same way.
const gateway6 = "fe80::1"

// Config shapes a topology.
type Config struct {
	Nodes       int
	PodsPerNode int
	// PodCIDRs, if set, gives node i its pod CIDR; default 10.<i+1>.0.0/24.
	PodCIDRs []netip.Prefix
	// Underlay is the nodes' subnet; default 172.30.0.0/24 (node i is .i+1).
	Underlay netip.Prefix
	// IPv6 gives every pod an IPv6 address too: node i's pods are in
	// fd00:<i+1>::/64 (Node.PodCIDR6), with a default route via fe80::1.
	IPv6 bool
}

// Topology is a set of nodes on one underlay bridge.
type Topology struct {
	ID       string
	Underlay *NS // holds the bridge cmt-br
	Nodes    []*Node
}

// Node is a namespace with an underlay interface (cmt-ul), a vxlan external
// device (TunnelDev) and the host sides of its pods' veths.
type Node struct {
	Name          string
	NS            *NS
	UnderlayIP    netip.Addr
	PodCIDR       netip.Prefix
	PodCIDR6      netip.Prefix // only with Config.IPv6
	TunnelIfIndex int
	Pods          []*Pod
	topo          *Topology
	externals     int // hosts added by AddExternal
}

// Pod is a namespace with eth0 (IP/32, MTU 1450, default route to its node).
type Pod struct {
	Name        string
	NS          *NS
	Node        *Node
	IP          netip.Addr
	IP6         netip.Addr // only with Config.IPv6
	HostIf      string     // host side of the veth, in the node's namespace
	HostIfIndex int
}

// New builds the topology; all of it is removed when t ends.
func New(t testing.TB, cfg Config) *Topology {
	t.Helper()
	if !cfg.Underlay.IsValid() {
		cfg.Underlay = netip.MustParsePrefix("172.30.0.0/24")
	}
	topo := &Topology{ID: RandomID()}
	topo.Underlay = NewNS(t, topo.ID+"-ul")
	batch(t, topo.Underlay, netns.AddBridge("cmt-br"), "link set cmt-br up", "link set lo up")
	ulIP := cfg.Underlay.Addr()
	for i := range cfg.Nodes {
		ulIP = ulIP.Next()
		cidr := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i + 1), 0, 0}), 24)
		if i < len(cfg.PodCIDRs) {
			cidr = cfg.PodCIDRs[i]
		}
		n := &Node{Name: fmt.Sprintf("n%d", i+1), UnderlayIP: ulIP, PodCIDR: cidr, topo: topo}
		if cfg.IPv6 {
			n.PodCIDR6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, byte(i + 1)}), 64)
		}
		n.NS = NewNS(t, topo.ID+"-"+n.Name)
		port := "cmt-" + n.Name
		batch(t, topo.Underlay,
			fmt.Sprintf("link add %s mtu 9000 type veth peer name cmt-ul netns %s", port, n.NS.Name),
			fmt.Sprintf("link set %s master cmt-br up", port))
		batch(t, n.NS,
			"link set lo up",
			"link set cmt-ul mtu 9000 up",
			fmt.Sprintf("addr add %s/%d dev cmt-ul", ulIP, cfg.Underlay.Bits()),
			fmt.Sprintf("link add %s type vxlan external dstport %d", TunnelDev, TunnelPort),
			fmt.Sprintf("link set %s up", TunnelDev))
		n.TunnelIfIndex, _ = linkInfo(t, n.NS, TunnelDev)
		topo.Nodes = append(topo.Nodes, n)
		for range cfg.PodsPerNode {
			n.AddPod(t)
		}
	}
	return topo
}

// AddPod adds a pod to n with the next free address of n's pod CIDR.
func (n *Node) AddPod(t testing.TB) *Pod {
	t.Helper()
	j := len(n.Pods) + 1
	ip := n.PodCIDR.Addr()
	for range j + 9 { // pods start at .10
		ip = ip.Next()
	}
	p := &Pod{Name: fmt.Sprintf("%sp%d", n.Name, j), Node: n, IP: ip, HostIf: fmt.Sprintf("cmt-p%d", j)}
	p.NS = NewNS(t, n.topo.ID+"-"+p.Name)
	batch(t, n.NS,
		fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.HostIf, p.NS.Name),
		fmt.Sprintf("link set %s up", p.HostIf))
	var mac string
	p.HostIfIndex, mac = linkInfo(t, n.NS, p.HostIf)
	cmds := []string{
		"link set lo up",
		"link set eth0 mtu 1450 up",
		fmt.Sprintf("addr add %s/32 dev eth0", ip),
		fmt.Sprintf("route add %s dev eth0 scope link", gateway),
		fmt.Sprintf("route add default via %s dev eth0", gateway),
		fmt.Sprintf("neigh add %s lladdr %s dev eth0 nud permanent", gateway, mac),
	}
	if n.PodCIDR6.IsValid() {
		p.IP6 = n.PodCIDR6.Addr()
		for range j + 9 {
			p.IP6 = p.IP6.Next()
		}
		cmds = append(cmds,
			fmt.Sprintf("addr add %s/128 dev eth0 nodad", p.IP6),
			fmt.Sprintf("neigh add %s lladdr %s dev eth0 nud permanent", gateway6, mac),
			fmt.Sprintf("route add ::/0 via %s dev eth0", gateway6))
	}
	batch(t, p.NS, cmds...)
	n.Pods = append(n.Pods, p)
	return p
}

// Pods returns every pod of the topology, node by node.
func (t *Topology) Pods() []*Pod {
	var out []*Pod
	for _, n := range t.Nodes {
		out = append(out, n.Pods...)
	}
	return out
}

// NewVethPair joins a and b with a plain veth (eth1 on both sides) carrying
// aIP/24 and bIP/24: a path without any BPF, for comparisons.
func NewVethPair(t testing.TB, a, b *NS, aIP, bIP netip.Addr) {
	t.Helper()
	batch(t, a, fmt.Sprintf("link add eth1 type veth peer name eth1 netns %s", b.Name),
		fmt.Sprintf("addr add %s/24 dev eth1", aIP), "link set eth1 up", "link set lo up")
	batch(t, b, fmt.Sprintf("addr add %s/24 dev eth1", bIP), "link set eth1 up", "link set lo up")
}

// batch runs ip commands in ns in one process (ip -batch).
func batch(t testing.TB, ns *NS, cmds ...string) {
	t.Helper()
	cmd := exec.Command("ip", "-n", ns.Name, "-batch", "-")
	cmd.Stdin = strings.NewReader(strings.Join(cmds, "\n") + "\n")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("ip -n %s -batch: %v: %s\n%s", ns.Name, err, out, strings.Join(cmds, "\n"))
	}
}

func linkInfo(t testing.TB, ns *NS, dev string) (int, string) {
	t.Helper()
	out, err := ns.IP("-j", "link", "show", "dev", dev)
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		IfIndex int    `json:"ifindex"`
		Address string `json:"address"`
	}
	if err := json.NewDecoder(bytes.NewReader(out)).Decode(&links); err != nil || len(links) != 1 {
		t.Fatalf("parse ip link show %s: %v: %s", dev, err, out)
	}
	return links[0].IfIndex, links[0].Address
}

// AddExternal adds a host outside the cluster behind node n: a namespace
// joined to n by a veth (cmt-x<k> in n, eth0 in it) holding the address
// ip, which its default route through n uses as source; n forwards and
// routes ip to it. The link network is 169.254.3.4k/30 (IPv4 ip, with ip on
// the host's loopback) or fd00:ee:<k>::/64 (IPv6 ip, on eth0). It is
// returned as a Pod value (for the traffic helpers); no program of ours is
// attached to its veth.
func (n *Node) AddExternal(t testing.TB, ip netip.Addr) *Pod {
	t.Helper()
	k := n.externals
	n.externals++
	p := &Pod{Name: fmt.Sprintf("%sx%d", n.Name, k), Node: n, IP: ip, HostIf: fmt.Sprintf("cmt-x%d", k)}
	p.NS = NewNS(t, n.topo.ID+"-"+p.Name)
	batch(t, n.NS, fmt.Sprintf("link add %s type veth peer name eth0 netns %s", p.HostIf, p.NS.Name),
		fmt.Sprintf("link set %s up", p.HostIf))
	ext := []string{"link set lo up", "link set eth0 up"}
	sysctl := "net.ipv4.ip_forward=1"
	if ip.Is4() {
		nodeIP := netip.AddrFrom4([4]byte{169, 254, 3, byte(4*k + 1)})
		batch(t, n.NS, fmt.Sprintf("addr add %s/30 dev %s", nodeIP, p.HostIf),
			fmt.Sprintf("route add %s/32 via %s dev %s", ip, nodeIP.Next(), p.HostIf))
		ext = append(ext, fmt.Sprintf("addr add %s/32 dev lo", ip), fmt.Sprintf("addr add %s/30 dev eth0", nodeIP.Next()),
			fmt.Sprintf("route add default via %s dev eth0 src %s", nodeIP, ip))
	} else {
		nodeIP := netip.AddrFrom16([16]byte{0xfd, 0, 0, 0xee, 0, byte(k), 15: 1})
		batch(t, n.NS, fmt.Sprintf("addr add %s/64 dev %s nodad", nodeIP, p.HostIf),
			fmt.Sprintf("route add %s/128 via %s dev %s", ip, nodeIP.Next(), p.HostIf))
		ext = append(ext, fmt.Sprintf("addr add %s/64 dev eth0 nodad", nodeIP.Next()), fmt.Sprintf("addr add %s/128 dev eth0 nodad", ip),
			fmt.Sprintf("route add ::/0 via %s dev eth0 src %s", nodeIP, ip))
		sysctl = "net.ipv6.conf.all.forwarding=1"
	}
	batch(t, p.NS, ext...)
	p.HostIfIndex, _ = linkInfo(t, n.NS, p.HostIf)
	if out, err := n.NS.Exec("sysctl", "-qw", sysctl); err != nil {
		t.Fatalf("enable forwarding in %s: %v: %s", n.Name, err, out)
	}
	return p
}
