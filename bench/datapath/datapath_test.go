package datapath

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func openDatapath(b *testing.B, name string) (*bpf.Datapath, *bpf.Writer) {
	b.Helper()
	testenv.RequireRoot(b)
	dp, err := bpf.Open(bpf.Config{PinDir: "/run/clustermesh-test/bench-" + netnstest.RandomID() + "-" + name, CTEntries: 65536}, quiet)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			b.Error(err)
		}
	})
	w, err := bpf.NewWriter(dp, quiet)
	if err != nil {
		b.Fatal(err)
	}
	return dp, w
}

// openNode opens a datapath for node n and attaches it to n's tunnel
// device and its pods' veths.
func openNode(b *testing.B, n *netnstest.Node) (*bpf.Datapath, *bpf.Writer) {
	b.Helper()
	dp, w := openDatapath(b, n.Name)
	err := n.NS.Do(func() error {
		if err := dp.Attach(bpf.HookTunnel, n.TunnelIfIndex); err != nil {
			return err
		}
		for _, p := range n.Pods {
			if err := dp.Attach(bpf.HookEndpoint, p.HostIfIndex); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	return dp, w
}

func ipcacheEntries(n, gen int) []datapath.IPCacheEntry {
	out := make([]datapath.IPCacheEntry, n)
	for i := range out {
		ip := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
		out[i] = datapath.IPCacheEntry{
			Prefix: netip.PrefixFrom(ip, 32), Identity: uint32(3<<16 | 256 + gen),
			TunnelEndpoint: netip.AddrFrom4([4]byte{172, 30, byte(i >> 8), byte(i)}), ClusterID: 3,
		}
	}
	return out
}

// BenchmarkIPCacheUpdate programs 10,000 ipcache entries per iteration
// through the Writer: one Apply per entry (one syscall each) versus one Apply
// for all (one BPF_MAP_UPDATE_BATCH). Reported per entry.
func BenchmarkIPCacheUpdate(b *testing.B) {
	const n = 10000
	_, w := openDatapath(b, "ipc")
	ctx := context.Background()
	b.Run("single", func(b *testing.B) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cpu := cpuTime()
		gens := [][]datapath.IPCacheEntry{ipcacheEntries(n, 0), ipcacheEntries(n, 1)}
		for i := 0; b.Loop(); i++ {
			for _, e := range gens[i%2] {
				if err := w.Apply(ctx, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{e}}); err != nil {
					b.Fatal(err)
				}
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N*n), "cpu-ns/entry")
	})
	b.Run("batch", func(b *testing.B) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		cpu := cpuTime()
		gens := [][]datapath.IPCacheEntry{ipcacheEntries(n, 2), ipcacheEntries(n, 3)}
		for i := 0; b.Loop(); i++ {
			if err := w.Apply(ctx, datapath.Batch{UpsertIPCache: gens[i%2]}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N*n), "cpu-ns/entry")
	})
}

// BenchmarkIPCacheColdSync programs 250,000 ipcache entries (the DESIGN §7
// cold-sync size) with one Apply, as an agent does after its initial listing.
func BenchmarkIPCacheColdSync(b *testing.B) {
	const n = 250000
	_, w := openDatapath(b, "cold")
	entries := ipcacheEntries(n, 0)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	cpu := cpuTime()
	for b.Loop() {
		if err := w.Apply(context.Background(), datapath.Batch{UpsertIPCache: entries}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(b.Elapsed().Seconds()/float64(b.N), "s/sync")
	b.ReportMetric((cpuTime()-cpu).Seconds()/float64(b.N), "cpu-s/sync")
}

// BenchmarkMapUpdate measures the raw syscalls, Map.Update per entry versus
// one Map.BatchUpdate, on a hash map shaped like the endpoint map and on an
// LPM trie shaped like the ipcache (the trie's insert dominates its cost).
func BenchmarkMapUpdate(b *testing.B) {
	testenv.RequireRoot(b)
	const n = 10000
	type lpmKey struct{ Prefixlen, Addr uint32 }
	for _, spec := range []*ebpf.MapSpec{
		{Name: "hash", Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: n},
		{Name: "lpm", Type: ebpf.LPMTrie, KeySize: 8, ValueSize: 16, MaxEntries: n, Flags: 1 /* BPF_F_NO_PREALLOC */},
	} {
		m, err := ebpf.NewMap(spec)
		if err != nil {
			b.Fatal(err)
		}
		defer m.Close()
		keys := make([]lpmKey, n)
		vals := make([][16]byte, n)
		for i := range keys {
			keys[i] = lpmKey{32, uint32(i)}
		}
		b.Run(spec.Name+"/single", func(b *testing.B) {
			for b.Loop() {
				for i := range keys {
					if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		})
		b.Run(spec.Name+"/batch", func(b *testing.B) {
			for b.Loop() {
				if _, err := m.BatchUpdate(keys, vals, nil); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/entry")
		})
	}
}

// BenchmarkServiceBackendChange replaces one backend of a service with 100,
// 1,000 and 10,000 backends through the Writer, two ways in the same run:
// whole (the batch carries the whole service, as before issue 14's
// incremental contract: the Writer compares it with what it last wrote) and
// patch (a datapath.ServicePatch deleting the old backend and adding the
// new one, what the agent sends now). Both write the same few map entries.
func BenchmarkServiceBackendChange(b *testing.B) {
	for _, size := range []int{100, 1000, 10000} {
		for _, mode := range []string{"whole", "patch"} {
			b.Run(fmt.Sprintf("%s/%d", mode, size), func(b *testing.B) {
				_, w := openDatapath(b, fmt.Sprint("svc", mode, size))
				svc := datapath.Service{Frontend: datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.1:80"), Proto: ipproto.TCP}}
				for i := range size {
					svc.Backends = append(svc.Backends, datapath.Backend{
						Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)}), 8080), Weight: 1,
					})
				}
				ctx := context.Background()
				if err := w.Apply(ctx, datapath.Batch{UpsertServices: []datapath.Service{svc}}); err != nil {
					b.Fatal(err)
				}
				const changes = 200    // per iteration, so that -benchtime 1x still averages
				runtime.LockOSThread() // so that cpuTime counts this goroutine's thread
				defer runtime.UnlockOSThread()
				b.ReportAllocs()
				cpu := cpuTime()
				for i := 0; b.Loop(); i++ {
					for j := range changes {
						k := i*changes + j
						pos := k % size
						old := svc.Backends[pos]
						nb := old
						nb.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 51 + byte(k>>16), byte(k >> 8), byte(k)}), 8080)
						svc.Backends[pos] = nb
						batch := datapath.Batch{UpsertServices: []datapath.Service{svc}}
						if mode == "patch" {
							batch = datapath.Batch{PatchServices: []datapath.ServicePatch{{Frontend: svc.Frontend,
								Delete: []netip.AddrPort{old.Addr}, Upsert: []datapath.Backend{nb}}}}
						}
						if err := w.Apply(ctx, batch); err != nil {
							b.Fatal(err)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*changes), "ns/change")
				b.ReportMetric(float64((cpuTime()-cpu).Nanoseconds())/float64(b.N*changes), "cpu-ns/change")
			})
		}
	}
}

// path is one way from a client namespace to a server address.
type path struct {
	name   string
	client *netnstest.NS
	server *netnstest.NS
	dial   netip.AddrPort // what the client connects to
	listen int            // port the server listens on
}

// BenchmarkTCP measures, in one run, TCP throughput (one stream, 1 s) and
// connect latency (1,000 sequential connects) over a plain veth between two
// namespaces, between pods of one node (bpf_redirect_peer), between pods of
// two nodes (vxlan) and through a service frontend to a backend on the other
// node (DNAT + reverse NAT + vxlan), and reports each as a ratio to veth.
func BenchmarkTCP(b *testing.B) {
	testenv.RequireRoot(b)
	topo := netnstest.New(b, netnstest.Config{Nodes: 2, PodsPerNode: 1})
	topo.Nodes[0].AddPod(b)
	var dps []*bpf.Datapath
	for i, n := range topo.Nodes {
		dp, w := openNode(b, n)
		dps = append(dps, dp)
		var batch datapath.Batch
		other := topo.Nodes[1-i]
		batch.UpsertTunnels = []datapath.TunnelEntry{{CIDR: other.PodCIDR, NodeIP: other.UnderlayIP}}
		for _, p := range n.Pods {
			batch.UpsertEndpoints = append(batch.UpsertEndpoints, datapath.Endpoint{IP: p.IP, IfIndex: p.HostIfIndex})
		}
		if i == 0 {
			batch.UpsertServices = []datapath.Service{{
				Frontend: datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP},
				Backends: []datapath.Backend{{Addr: netip.AddrPortFrom(topo.Nodes[1].Pods[0].IP, 5001), Weight: 1}},
			}}
		}
		if err := w.Apply(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	va := netnstest.NewNS(b, topo.ID+"-va")
	vb := netnstest.NewNS(b, topo.ID+"-vb")
	netnstest.NewVethPair(b, va, vb, netip.MustParseAddr("192.168.99.1"), netip.MustParseAddr("192.168.99.2"))

	client := topo.Nodes[0].Pods[0]
	paths := []path{
		{"veth", va, vb, netip.MustParseAddrPort("192.168.99.2:5001"), 5001},
		{"same-node", client.NS, topo.Nodes[0].Pods[1].NS, netip.AddrPortFrom(topo.Nodes[0].Pods[1].IP, 5001), 5001},
		{"tunnel", client.NS, topo.Nodes[1].Pods[0].NS, netip.AddrPortFrom(topo.Nodes[1].Pods[0].IP, 5001), 5001},
		{"service", client.NS, topo.Nodes[1].Pods[0].NS, netip.MustParseAddrPort("10.96.0.10:80"), 5001},
	}
	// Paths are measured in interleaved rounds (the machine is shared, so
	// load shifts during a run); medians of throughput, pooled latencies.
	const rounds = 5
	mbps := map[string][]float64{}
	lat := map[string][]time.Duration{}
	started := map[*netnstest.NS]bool{}
	for _, p := range paths {
		if !started[p.server] {
			started[p.server] = true
			srv := startSink(b, p.server, p.listen)
			defer srv.close()
		}
	}
	for b.Loop() {
		for range rounds {
			for _, p := range paths {
				mbps[p.name] = append(mbps[p.name], throughput(b, p.client, p.dial, 300*time.Millisecond))
				lat[p.name] = append(lat[p.name], connectLatency(b, p.client, p.dial, 200)...)
			}
		}
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	base := med(mbps["veth"])
	slices.Sort(lat["veth"])
	baseP50 := lat["veth"][len(lat["veth"])/2]
	for _, p := range paths {
		m := med(mbps[p.name])
		l := lat[p.name]
		slices.Sort(l)
		p50, p99 := l[len(l)/2], l[len(l)*99/100]
		b.ReportMetric(m, p.name+"-MB/s")
		b.ReportMetric(float64(p50.Microseconds()), p.name+"-connect-p50-µs")
		b.Logf("%-10s %7.0f MB/s (%.2f× veth)  connect p50 %v (%.2f× veth) p99 %v",
			p.name, m, m/base, p50, float64(p50)/float64(baseP50), p99)
	}
	_ = dps
}

// sink accepts connections and discards what it reads; after EOF it writes
// the byte count (8 bytes) back.
type sink struct {
	ln net.Listener
	wg sync.WaitGroup
}

func startSink(b *testing.B, ns *netnstest.NS, port int) *sink {
	s := &sink{}
	err := ns.Do(func() error {
		var err error
		s.ln, err = net.Listen("tcp4", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	s.wg.Go(func() {
		for {
			c, err := s.ln.Accept()
			if err != nil {
				return
			}
			s.wg.Go(func() {
				defer c.Close()
				n, _ := io.Copy(io.Discard, c)
				_ = binary.Write(c, binary.BigEndian, n)
			})
		}
	})
	return s
}

func (s *sink) close() {
	s.ln.Close()
	s.wg.Wait()
}

func dial(ns *netnstest.NS, addr netip.AddrPort) (*net.TCPConn, time.Duration, error) {
	var c net.Conn
	var d time.Duration
	err := ns.Do(func() error {
		var err error
		start := time.Now()
		c, err = net.DialTimeout("tcp4", addr.String(), 2*time.Second)
		d = time.Since(start)
		return err
	})
	if err != nil {
		return nil, 0, err
	}
	return c.(*net.TCPConn), d, nil
}

// throughput streams for d and returns MB/s as counted by the receiver.
func throughput(b *testing.B, ns *netnstest.NS, addr netip.AddrPort, d time.Duration) float64 {
	c, _, err := dial(ns, addr)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 256<<10)
	start := time.Now()
	for time.Since(start) < d {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	_ = c.CloseWrite()
	var n int64
	if err := binary.Read(c, binary.BigEndian, &n); err != nil {
		b.Fatal(err)
	}
	return float64(n) / 1e6 / time.Since(start).Seconds()
}

// connectLatency times n sequential connects (SYN to established).
func connectLatency(b *testing.B, ns *netnstest.NS, addr netip.AddrPort, n int) []time.Duration {
	lat := make([]time.Duration, 0, n)
	for range n {
		c, d, err := dial(ns, addr)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, d)
		_ = c.CloseWrite()
		var cnt int64
		_ = binary.Read(c, binary.BigEndian, &cnt)
		c.Close()
	}
	return lat
}

// cpuTime is the calling thread's user+system CPU time (the caller locks
// its goroutine to the thread): on a shared machine it is a steadier measure
// of cost than wall time. The Go runtime's own threads (GC) are not counted.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
