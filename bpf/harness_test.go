package bpf_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestMain(m *testing.M) {
	if os.Getenv(agentEnv) != "" {
		os.Exit(agentMain())
	}
	goleak.VerifyTestMain(m)
}

const testPinRoot = "/run/clustermesh-test"

// testCTEntries keeps the preallocated LRU maps small in tests.
const testCTEntries = 16384

// node is a topology node with its datapath.
type node struct {
	*netnstest.Node
	cfg bpf.Config
	dp  *bpf.Datapath
	w   *bpf.Writer
}

// cluster builds nodes×pods, loads and attaches a datapath per node and
// programs full pod-to-pod connectivity. Everything is removed at cleanup,
// and a last cleanup checks that nothing is left.
func cluster(t *testing.T, nodes, pods int) (*netnstest.Topology, []*node) {
	t.Helper()
	return clusterWith(t, netnstest.Config{Nodes: nodes, PodsPerNode: pods})
}

func clusterWith(t *testing.T, cfg netnstest.Config) (*netnstest.Topology, []*node) {
	t.Helper()
	return clusterOpts(t, cfg, bpf.Config{})
}

// clusterOpts is clusterWith with the datapath options of opts (Attach,
// Coexist) on every node.
func clusterOpts(t *testing.T, cfg netnstest.Config, opts bpf.Config) (*netnstest.Topology, []*node) {
	t.Helper()
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	var topo *netnstest.Topology
	t.Cleanup(func() { checkNothingLeft(t, topo) })
	topo = netnstest.New(t, cfg)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	var out []*node
	for _, n := range topo.Nodes {
		nd := &node{Node: n, cfg: bpf.Config{
			PinDir: fmt.Sprintf("%s/%s-%s", testPinRoot, topo.ID, n.Name), CTEntries: testCTEntries,
			Attach: opts.Attach, Coexist: opts.Coexist,
		}}
		nd.open(t, log)
		t.Cleanup(func() {
			// In the node's namespace: tc filters are removed there.
			if err := n.NS.Do(nd.dp.Uninstall); err != nil {
				t.Errorf("uninstall %s: %v", n.Name, err)
			}
			checkDetached(t, n)
		})
		err := n.NS.Do(func() error {
			if err := nd.dp.Attach(bpf.HookTunnel, n.TunnelIfIndex); err != nil {
				return err
			}
			if err := nd.dp.Attach(bpf.HookTunnelEgress, n.TunnelIfIndex); err != nil {
				return err
			}
			for _, p := range n.Pods {
				if err := nd.dp.Attach(bpf.HookEndpoint, p.HostIfIndex); err != nil {
					return err
				}
			}
			return nil
		})
		if err == nil && opts.Coexist {
			err = n.NS.Do(func() error { return routeTunnels(topo, n) })
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, nd)
	}
	for _, nd := range out {
		apply(t, nd, connectivity(topo, nd.Node))
	}
	return topo, out
}

// routeTunnels does the agent's part of coexistence mode on node n (in its
// namespace): the tunnel device without ARP and the other nodes' pod CIDRs
// routed into it.
func routeTunnels(topo *netnstest.Topology, n *netnstest.Node) error {
	idx, err := bpf.EnsureTunnel(bpf.TunnelConfig{Device: netnstest.TunnelDev}, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	var cidrs []netip.Prefix
	for _, o := range topo.Nodes {
		if o != n {
			cidrs = append(cidrs, o.PodCIDR)
			if o.PodCIDR6.IsValid() {
				cidrs = append(cidrs, o.PodCIDR6)
			}
		}
	}
	return bpf.SyncTunnelRoutes(idx, cidrs)
}

// open loads (or reloads from the pins) the node's datapath.
func (nd *node) open(t *testing.T, log *slog.Logger) {
	t.Helper()
	dp, err := bpf.Open(nd.cfg, log)
	if err != nil {
		t.Fatalf("open datapath of %s: %v", nd.Name, err)
	}
	w, err := bpf.NewWriter(dp, log)
	if err != nil {
		dp.Close()
		t.Fatal(err)
	}
	nd.dp, nd.w = dp, w
}

// connectivity is the state a node needs to reach every pod: its pods as
// endpoints and ipcache entries, the other nodes' pod CIDRs as tunnels and
// their pods as ipcache entries with the node as tunnel endpoint.
func connectivity(topo *netnstest.Topology, self *netnstest.Node) datapath.Batch {
	var b datapath.Batch
	for i, n := range topo.Nodes {
		if n != self {
			b.UpsertTunnels = append(b.UpsertTunnels, datapath.TunnelEntry{CIDR: n.PodCIDR, NodeIP: n.UnderlayIP, ClusterID: 1})
			if n.PodCIDR6.IsValid() {
				b.UpsertTunnels = append(b.UpsertTunnels, datapath.TunnelEntry{CIDR: n.PodCIDR6, NodeIP: n.UnderlayIP, ClusterID: 1})
			}
		}
		for j, p := range n.Pods {
			for _, ip := range []netip.Addr{p.IP, p.IP6} {
				if !ip.IsValid() {
					continue
				}
				e := datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), Identity: uint32(1<<16 | 256 + i*16 + j), ClusterID: 1}
				if n != self {
					e.TunnelEndpoint = n.UnderlayIP
				} else {
					b.UpsertEndpoints = append(b.UpsertEndpoints, datapath.Endpoint{IP: ip, IfIndex: p.HostIfIndex})
				}
				b.UpsertIPCache = append(b.UpsertIPCache, e)
			}
		}
	}
	return b
}

func apply(t *testing.T, nd *node, b datapath.Batch) {
	t.Helper()
	if err := nd.w.Apply(context.Background(), b); err != nil {
		t.Fatalf("apply on %s: %v", nd.Name, err)
	}
}

// attached counts the tcx programs and the tc clsact bpf filters (ingress
// and egress) on ifindex in ns.
func attached(t *testing.T, ns *netnstest.NS, ifindex int) int {
	t.Helper()
	var n int
	err := ns.Do(func() error {
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: at})
			if err != nil {
				return err
			}
			n += len(res.Programs)
		}
		lk, err := netlink.LinkByIndex(ifindex)
		if err != nil {
			return err
		}
		for _, parent := range []uint32{netlink.HANDLE_MIN_INGRESS, netlink.HANDLE_MIN_EGRESS} {
			filters, err := netlink.FilterList(lk, parent)
			if err != nil {
				return nil // no clsact qdisc
			}
			for _, f := range filters {
				if _, ok := f.(*netlink.BpfFilter); ok {
					n++
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Errorf("query programs of ifindex %d in %s: %v", ifindex, ns.Name, err)
	}
	return n
}

// checkDetached fails t if a program is still attached to one of n's devices.
func checkDetached(t *testing.T, n *netnstest.Node) {
	t.Helper()
	if c := attached(t, n.NS, n.TunnelIfIndex); c != 0 {
		t.Errorf("%d programs left on %s of %s", c, netnstest.TunnelDev, n.Name)
	}
	for _, p := range n.Pods {
		if c := attached(t, n.NS, p.HostIfIndex); c != 0 {
			t.Errorf("%d programs left on %s of %s", c, p.HostIf, n.Name)
		}
	}
}

func checkNothingLeft(t *testing.T, topo *netnstest.Topology) {
	if topo == nil {
		return
	}
	out, _ := exec.Command("ip", "netns", "list").Output()
	if strings.Contains(string(out), "cmt-"+topo.ID) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
	for _, n := range topo.Nodes {
		dir := fmt.Sprintf("%s/%s-%s", testPinRoot, topo.ID, n.Name)
		if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin dir %s left behind (%v)", dir, err)
		}
	}
	mounts, _ := os.ReadFile("/proc/self/mounts")
	if strings.Contains(string(mounts), testPinRoot+"/"+topo.ID) {
		t.Errorf("bpffs mount left behind")
	}
}

// server answers on TCP and UDP port in a pod: TCP connections get a line
// "<pod> <peer address>" and then an echo; UDP datagrams are answered with
// the same line followed by the payload.
type server struct {
	name  string
	ln    net.Listener
	pc    net.PacketConn
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]bool
}

func serve(t *testing.T, p *netnstest.Pod, port int) *server {
	t.Helper()
	s := &server{name: p.Name, conns: map[net.Conn]bool{}}
	err := p.NS.Do(func() error {
		var err error
		if s.ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port)); err != nil {
			return err
		}
		s.pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("serve in %s: %v", p.Name, err)
	}
	s.wg.Add(2)
	go s.acceptLoop()
	go s.udpLoop()
	t.Cleanup(s.close)
	return s
}

func (s *server) acceptLoop() {
	defer s.wg.Done()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.mu.Lock()
		s.conns[c] = true
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() {
				s.mu.Lock()
				delete(s.conns, c)
				s.mu.Unlock()
				c.Close()
			}()
			if _, err := fmt.Fprintf(c, "%s %s\n", s.name, c.RemoteAddr()); err != nil {
				return
			}
			_, _ = io.Copy(c, c)
		}()
	}
}

func (s *server) udpLoop() {
	defer s.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := s.pc.ReadFrom(buf)
		if err != nil {
			return
		}
		reply := fmt.Sprintf("%s %s\n%s", s.name, from, buf[:n])
		_, _ = s.pc.WriteTo([]byte(reply), from)
	}
}

func (s *server) close() {
	s.ln.Close()
	s.pc.Close()
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.wg.Wait()
}

// hello is the first line a server sends: who answered, and whom it saw.
type hello struct {
	server string
	peer   string
}

// dialTCP connects from pod to addr and reads the server's hello line.
func dialTCP(p *netnstest.Pod, addr netip.AddrPort) (net.Conn, *bufio.Reader, hello, error) {
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr.String(), 5*time.Second)
		return err
	})
	if err != nil {
		return nil, nil, hello{}, err
	}
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, nil, hello{}, fmt.Errorf("read hello: %w", err)
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		c.Close()
		return nil, nil, hello{}, fmt.Errorf("bad hello %q", line)
	}
	return c, r, hello{server: f[0], peer: f[1]}, nil
}

// echo sends msg on c and expects it back.
func echo(c net.Conn, r *bufio.Reader, msg string) error {
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg+"\n"); err != nil {
		return err
	}
	got, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if got != msg+"\n" {
		return fmt.Errorf("echo: got %q, want %q", got, msg)
	}
	return nil
}

// tcpRoundTrip connects, checks an echo and closes.
func tcpRoundTrip(p *netnstest.Pod, addr netip.AddrPort) (hello, error) {
	c, r, h, err := dialTCP(p, addr)
	if err != nil {
		return h, err
	}
	defer c.Close()
	return h, echo(c, r, "ping from "+p.Name)
}

// udpRoundTrip sends one datagram from a connected UDP socket (so the kernel
// accepts only replies whose source is addr) and returns the reply's hello.
func udpRoundTrip(p *netnstest.Pod, addr netip.AddrPort) (hello, error) {
	return udpTry(p, addr, 4, time.Second)
}

// udpTry sends up to attempts datagrams, waiting wait for a reply to each.
func udpTry(p *netnstest.Pod, addr netip.AddrPort, attempts int, wait time.Duration) (hello, error) {
	c, err := dialUDP(p.NS, addr)
	if err != nil {
		return hello{}, err
	}
	defer c.Close()
	buf := make([]byte, 2048)
	for range attempts { // UDP may lose a first datagram while neighbors resolve
		if _, err := c.Write([]byte("payload")); err != nil {
			return hello{}, err
		}
		_ = c.SetReadDeadline(time.Now().Add(wait))
		n, err := c.Read(buf)
		if err != nil {
			continue
		}
		head, body, _ := strings.Cut(string(buf[:n]), "\n")
		f := strings.Fields(head)
		if len(f) != 2 || body != "payload" {
			return hello{}, fmt.Errorf("bad udp reply %q", buf[:n])
		}
		return hello{server: f[0], peer: f[1]}, nil
	}
	return hello{}, errors.New("udp: no reply")
}

// pingOnce sends one echo request and waits a second for the reply.
func pingOnce(p *netnstest.Pod, ip netip.Addr) error {
	_, err := p.NS.Exec("ping", "-c", "1", "-W", "1", "-q", ip.String()) // ping picks -4/-6 from the address
	return err
}

// ping sends ICMP echo requests from p to ip.
func ping(p *netnstest.Pod, ip netip.Addr) error {
	_, err := p.NS.Exec("ping", "-c", "2", "-i", "0.2", "-W", "2", "-q", ip.String())
	return err
}

// roundTripFromPort does one TCP echo or UDP exchange from a fixed local
// port (SO_REUSEADDR, so a port in TIME_WAIT can connect elsewhere).
func roundTripFromPort(p *netnstest.Pod, network string, port int, addr netip.AddrPort) (hello, error) {
	d := net.Dialer{
		Timeout: 5 * time.Second,
		Control: func(_, _ string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1)
			})
			return errors.Join(err, serr)
		},
	}
	var c net.Conn
	err := p.NS.Do(func() error {
		var err error
		if network == "udp4" {
			d.LocalAddr = &net.UDPAddr{Port: port}
		} else {
			d.LocalAddr = &net.TCPAddr{Port: port}
		}
		c, err = d.Dial(network, addr.String())
		return err
	})
	if err != nil {
		return hello{}, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	r := bufio.NewReader(c)
	if network == "udp4" {
		if _, err := c.Write([]byte("payload")); err != nil {
			return hello{}, err
		}
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return hello{}, err
	}
	f := strings.Fields(line)
	if len(f) != 2 {
		return hello{}, fmt.Errorf("bad hello %q", line)
	}
	return hello{server: f[0], peer: f[1]}, nil
}

// dialUDP opens a UDP socket in ns connected to addr.
func dialUDP(ns *netnstest.NS, addr netip.AddrPort) (*net.UDPConn, error) {
	var c *net.UDPConn
	err := ns.Do(func() error {
		var err error
		c, err = net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(addr))
		return err
	})
	return c, err
}
