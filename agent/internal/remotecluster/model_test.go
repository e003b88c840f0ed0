package remotecluster

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var (
	modelRuns = flag.Int("model.runs", 100, "TestModelRandomized: number of randomized fault runs (make soak: 1000)")
	modelSeed = flag.Uint64("model.seed", 1, "TestModelRandomized: seed of run 0; run i uses seed+i")
	modelOps  = flag.Int("model.ops", 8, "TestModelRandomized: operations per run")
	modelBPF  = flag.Bool("model.bpf", false, "TestModelRandomized: program the eBPF datapath (pinned maps; root, under the privileged lock) instead of the memory one")
)

// TestModelRandomized drives a real (embedded) etcd playing remote c2
// through random puts, deletes, invalid values, restarts, partitions,
// compactions, replacements by an empty etcd (new cluster ID, or the same
// one with its revisions refilled past the old ones) and agent restarts,
// against the agent's read path and datapath reconciler on the memory
// datapath. After each run, once c2 is synced, the agent's entries for c2
// must equal exactly what c2's etcd holds. Runs are seeded and
// reproducible: a failure names its seed; rerun it with
// -model.seed=<seed> -model.runs=1.
func TestModelRandomized(t *testing.T) {
	runs := *modelRuns
	if testing.Short() {
		runs = min(runs, 20)
	}
	dir, stateDir := t.TempDir(), t.TempDir()
	c2 := startRemote(t, "c2", 2)
	c2.canaries()
	cfg := testConfig(dir, stateDir)
	m := &model{t: t, r: c2, dir: dir, etcdDir: t.TempDir(), cfg: cfg}
	if *modelBPF {
		m.bpf = openModelBPF(t)
	}
	m.startAgent()
	c2.writeConfig(dir)
	m.converge("initial sync", *modelSeed)

	startG, startRSS := runtime.NumGoroutine(), rssBytes()
	var stale, missing int
	begin := time.Now()
	for i := range runs {
		seed := *modelSeed + uint64(i)
		m.rng = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
		var ops []string
		for range *modelOps {
			ops = append(ops, m.step())
		}
		t0 := time.Now()
		s, mi := m.converge(strings.Join(ops, ","), seed)
		if testing.Verbose() {
			t.Logf("run %d: %s converged in %s", i, strings.Join(ops, ","), time.Since(t0).Round(time.Millisecond))
		}
		stale += s
		missing += mi
	}
	// Goroutines and RSS after the last run, with the agent still running
	// (it holds one session to c2) and the test's etcd in the process.
	endG, endRSS := runtime.NumGoroutine(), rssBytes()
	t.Logf("model: %d runs x %d ops in %s (seed %d..%d): stale %d, missing %d; goroutines %d -> %d; RSS %.1f -> %.1f MiB",
		runs, *modelOps, time.Since(begin).Round(time.Second), *modelSeed, *modelSeed+uint64(runs)-1,
		stale, missing, startG, endG, float64(startRSS)/(1<<20), float64(endRSS)/(1<<20))
	if stale+missing > 0 {
		t.Fatalf("%d stale and %d missing entries over %d runs", stale, missing, runs)
	}
}

// model is the state of the randomized test: the remote etcd, the agent,
// and the random source of the current run.
type model struct {
	t   *testing.T
	r   *remoteEtcd
	dir string
	// etcdDir holds the data dirs of the etcds that replace c2's.
	etcdDir string
	cfg     Config
	dp      modelDatapath // what the agent programs
	bpf     *modelBPFDatapath
	a       *agent
	rng     *rand.Rand
	gen     int // etcd replacements so far, for data dir names
}

// Keys come from small pools so that runs hit shared pod CIDRs, both key
// forms of one IP, deletes of present keys and re-creations.
func (m *model) nodeKey() string { return wire.NodeKey("c2", fmt.Sprintf("n%d", m.rng.IntN(8))) }

func (m *model) ipKey() string {
	s := fmt.Sprintf("10.2.0.%d", 1+m.rng.IntN(24))
	if m.rng.IntN(4) == 0 {
		s += "/32"
	}
	return wire.IPPrefix + s
}

func (m *model) nodeValue(key string) []byte {
	name := strings.TrimPrefix(key, wire.NodesPrefix("c2"))
	return must(wire.MarshalNode(wire.Node{
		Name: name, Cluster: "c2", ClusterID: 2,
		IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.AddrFrom4([4]byte{192, 168, 2, byte(1 + m.rng.IntN(8))})}},
		IPv4AllocCIDR: wire.MustParseCIDR(fmt.Sprintf("10.2.%d.0/24", 1+m.rng.IntN(6))),
	}))
}

func (m *model) ipValue(key string) []byte {
	suffix := strings.TrimPrefix(key, wire.IPPrefix)
	p := wire.IPIdentityPair{HostIP: netip.AddrFrom4([4]byte{192, 168, 2, byte(1 + m.rng.IntN(8))}), ID: 2<<16 | uint32(256+m.rng.IntN(4))}
	if pfx, err := netip.ParsePrefix(suffix); err == nil {
		p.IP, p.Mask = pfx.Addr(), netCIDRMask(pfx)
	} else {
		p.IP = netip.MustParseAddr(suffix)
	}
	return must(wire.MarshalIPIdentityPair(p))
}

// write makes one random change of c2's content through c.
func (m *model) write(c *clientv3.Client) string {
	switch n := m.rng.IntN(10); {
	case n < 3:
		k := m.nodeKey()
		m.retry("put", func(ctx context.Context) error { _, err := c.Put(ctx, k, string(m.nodeValue(k))); return err })
		return "put-node"
	case n < 4:
		k := m.nodeKey()
		m.retry("delete", func(ctx context.Context) error { _, err := c.Delete(ctx, k); return err })
		return "del-node"
	case n < 7:
		k := m.ipKey()
		m.retry("put", func(ctx context.Context) error { _, err := c.Put(ctx, k, string(m.ipValue(k))); return err })
		return "put-ip"
	case n < 9:
		k := m.ipKey()
		m.retry("delete", func(ctx context.Context) error { _, err := c.Delete(ctx, k); return err })
		return "del-ip"
	default:
		k := m.ipKey()
		if m.rng.IntN(2) == 0 {
			k = m.nodeKey()
		}
		m.retry("put", func(ctx context.Context) error { _, err := c.Put(ctx, k, `{"IP":`); return err })
		return "put-invalid"
	}
}

// step runs one random operation and names it.
func (m *model) step() string {
	c := m.r.admin.Etcd()
	switch n := m.rng.IntN(100); {
	case n < 70:
		return m.write(c)
	case n < 77: // etcd killed and restarted on its data dir
		m.r.srv.Stop()
		if m.rng.IntN(3) == 0 {
			m.restartAgent()
		}
		if err := m.r.srv.Restart(context.Background()); err != nil {
			m.t.Fatal(err)
		}
		return "restart"
	case n < 85: // partition: the agent misses changes, maybe compacted
		m.r.proxy.setUp(false)
		for range 1 + m.rng.IntN(6) {
			m.write(c)
		}
		if m.rng.IntN(2) == 0 {
			m.compact()
		}
		m.r.proxy.setUp(true)
		return "partition"
	case n < 90:
		m.compact()
		return "compact"
	case n < 94:
		m.replace(false)
		return "replace"
	case n < 97:
		m.replace(true)
		return "replace-same-id"
	default:
		m.restartAgent()
		return "agent-restart"
	}
}

func (m *model) compact() {
	c := m.r.admin.Etcd()
	var rev int64
	m.retry("get", func(ctx context.Context) error {
		resp, err := c.Get(ctx, "compact")
		if err == nil {
			rev = resp.Header.Revision
		}
		return err
	})
	m.retry("compact", func(ctx context.Context) error {
		_, err := c.Compact(ctx, rev)
		if errors.Is(err, rpctypes.ErrCompacted) {
			return nil // compacted there already
		}
		return err
	})
}

// replace replaces c2's etcd by an empty one on the same address, as an
// apiserver restarted with an ephemeral etcd: it writes its cluster config
// and its content (the old content with a few changes), then the canaries.
// With sameID the new etcd keeps the etcd cluster ID (same bootstrap
// token) and its revisions are refilled past the old ones, and the agent
// is cut off until the new etcd is compacted past them: it can only
// notice by relisting, and the relist must compare values.
func (m *model) replace(sameID bool) {
	old := m.r.admin.Etcd()
	var content []*kvPair
	var oldRev int64
	m.retry("list", func(ctx context.Context) error {
		resp, err := old.Get(ctx, wire.StatePrefix, clientv3.WithPrefix())
		if err != nil {
			return err
		}
		content, oldRev = nil, resp.Header.Revision
		for _, kv := range resp.Kvs {
			content = append(content, &kvPair{string(kv.Key), string(kv.Value)})
		}
		return nil
	})
	if sameID {
		m.r.proxy.setUp(false)
	}
	m.r.srv.Stop()
	cfg := m.r.srv.Config()
	// The replaced etcd's data dir goes now, not at the end of the test:
	// each holds a preallocated 64 MB WAL, and a 1,000-run soak replaces
	// hundreds of them.
	if err := os.RemoveAll(cfg.DataDir); err != nil {
		m.t.Fatalf("remove the replaced etcd's data dir: %v", err)
	}
	m.gen++
	cfg.DataDir, cfg.InitialCluster = filepath.Join(m.etcdDir, "etcd-"+strconv.Itoa(m.gen)), ""
	if !sameID {
		cfg.InitialClusterToken = "" // a new bootstrap token, as the default is
	}
	m.r.srv = etcdserver.StartTest(m.t, cfg)
	admin, err := kvstore.New(context.Background(), m.r.srv.AdminConfig(), log)
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { admin.Close() })
	m.r.admin.Close()
	m.r.admin = admin
	if _, err := m.r.srv.EnsureRemoteUser(context.Background(), ownName); err != nil {
		m.t.Fatal(err)
	}
	c := admin.Etcd()
	m.r.clusterConfig(2)
	for _, kv := range content {
		m.retry("put", func(ctx context.Context) error { _, err := c.Put(ctx, kv.k, kv.v); return err })
	}
	for range m.rng.IntN(5) {
		m.write(c)
	}
	if sameID {
		// Past the agent's watch revision (at most oldRev+1) before the
		// compaction, so that the agent's resumed watch is compacted and it
		// relists. Without a relist nothing in etcd's answers tells this
		// etcd from the old one (same cluster ID, revisions refilled): the
		// embedded etcd avoids that case with a cluster ID per data dir.
		for rev := int64(0); rev < oldRev+2+int64(m.rng.IntN(20)); {
			m.retry("fill", func(ctx context.Context) error {
				resp, err := c.Put(ctx, "filler", "x")
				if err == nil {
					rev = resp.Header.Revision
				}
				return err
			})
		}
		m.compact()
	}
	m.r.canaries()
	if sameID {
		m.r.proxy.setUp(true)
	}
}

type kvPair struct{ k, v string }

// modelDatapath is the datapath the model checks: a Writer that says when
// it changed.
type modelDatapath interface {
	datapath.Writer
	Changed() <-chan struct{}
}

// startAgent starts the agent on the model's datapath: the memory one
// (kept across agent restarts, as pinned maps are), or the eBPF one,
// reopened from its pinned maps.
func (m *model) startAgent() {
	if m.bpf == nil {
		if m.dp == nil {
			m.dp = memory.New()
		}
		m.a = startAgent(m.t, m.cfg, m.dp.(*memory.Datapath), nil)
		return
	}
	m.dp = m.bpf.open(m.t)
	m.a = startAgent(m.t, m.cfg, memory.New(), m.dp)
}

// restartAgent stops the agent and starts a new one on the same datapath
// and state dir.
func (m *model) restartAgent() {
	m.a.stop()
	if m.bpf != nil {
		m.bpf.close()
	}
	m.startAgent()
}

// retry runs f until it succeeds: writes right after an etcd restart may
// fail while the client reconnects.
func (m *model) retry(what string, f func(ctx context.Context) error) {
	m.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for d := 10 * time.Millisecond; ; d = min(2*d, time.Second) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := f(ctx)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			m.t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(d) // backoff between attempts, not a wait for a condition
	}
}

// want is what the agent must hold for c2, derived from c2's etcd with the
// wire decoders (the validation rules) and the claim rules: a CIDR shared
// by nodes routes to the node whose key sorts first; an IP written under
// "<ip>" and "<ip>/32" takes the value of "<ip>".
type want struct {
	tunnels      map[netip.Prefix]netip.Addr
	ipcache      map[netip.Prefix]datapath.IPCacheEntry
	nodes, ipKey int
}

func (m *model) want() want {
	rem := wire.Remote{Name: "c2", ID: 2, MaxConnectedClusters: 255}
	w := want{tunnels: map[netip.Prefix]netip.Addr{}, ipcache: map[netip.Prefix]datapath.IPCacheEntry{}}
	var kvs []*kvPair
	m.retry("list", func(ctx context.Context) error {
		resp, err := m.r.admin.Etcd().Get(ctx, wire.StatePrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
		if err != nil {
			return err
		}
		kvs = kvs[:0]
		for _, kv := range resp.Kvs {
			kvs = append(kvs, &kvPair{string(kv.Key), string(kv.Value)})
		}
		return nil
	})
	hostForm := map[netip.Prefix]bool{}
	for _, kv := range kvs { // sorted by key: the first claim wins
		switch {
		case strings.HasPrefix(kv.k, wire.NodesPrefix("c2")):
			n, err := wire.DecodeNode(rem, kv.k, []byte(kv.v))
			if err != nil {
				continue
			}
			w.nodes++
			if _, ok := w.tunnels[n.IPv4AllocCIDR.Prefix]; !ok {
				w.tunnels[n.IPv4AllocCIDR.Prefix] = n.IPAddresses[0].IP
			}
		case strings.HasPrefix(kv.k, wire.IPPrefix):
			p, err := wire.DecodeIPIdentityPair(rem, kv.k, []byte(kv.v))
			if err != nil {
				continue
			}
			w.ipKey++
			if hostForm[p.Prefix()] {
				continue
			}
			hostForm[p.Prefix()] = p.IsHost()
			w.ipcache[p.Prefix()] = datapath.IPCacheEntry{Prefix: p.Prefix(), Identity: p.ID, TunnelEndpoint: p.HostIP, ClusterID: 2}
		}
	}
	return w
}

// diff counts the agent's entries of c2 that etcd does not hold (stale: absent
// or another value) and those etcd holds that the agent lacks (missing).
func (w want) diff(st datapath.State) (stale, missing int, detail []string) {
	for p, e := range st.Tunnels {
		if e.ClusterID != 2 {
			continue
		}
		if ip, ok := w.tunnels[p]; !ok || ip != e.NodeIP {
			stale++
			detail = append(detail, fmt.Sprintf("stale tunnel %s via %s", p, e.NodeIP))
		}
	}
	for p, ip := range w.tunnels {
		if e, ok := st.Tunnels[p]; !ok || e.ClusterID != 2 {
			missing++
			detail = append(detail, fmt.Sprintf("missing tunnel %s via %s", p, ip))
		}
	}
	for p, e := range st.IPCache {
		if e.ClusterID != 2 {
			continue
		}
		if x, ok := w.ipcache[p]; !ok || x != e {
			stale++
			detail = append(detail, fmt.Sprintf("stale ipcache %+v", e))
		}
	}
	for p, x := range w.ipcache {
		if e, ok := st.IPCache[p]; !ok || e.ClusterID != 2 {
			missing++
			detail = append(detail, fmt.Sprintf("missing ipcache %+v", x))
		}
	}
	slices.Sort(detail)
	return stale, missing, detail
}

// converge waits until c2 is synced and the agent holds exactly what c2's
// etcd holds, and returns the stale and missing counts (non-zero only
// when that does not happen in time, which fails the test).
func (m *model) converge(ops string, seed uint64) (stale, missing int) {
	m.t.Helper()
	w := m.want()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ch := m.dp.Changed()
		st, _ := m.dp.Dump()
		s := m.a.status("c2")
		var detail []string
		stale, missing, detail = w.diff(st)
		counts := s.kind("nodes").Entries == uint64(w.nodes) && s.kind("ipcache").Entries == uint64(w.ipKey)
		if s.Ready && stale == 0 && missing == 0 && counts {
			return 0, 0
		}
		if time.Now().After(deadline) {
			m.t.Errorf("seed %d (ops %s): not converged: ready %v, entries nodes %d/%d ipcache %d/%d, %d stale, %d missing: %s",
				seed, ops, s.Ready, s.kind("nodes").Entries, w.nodes, s.kind("ipcache").Entries, w.ipKey, stale, missing, strings.Join(detail, "; "))
			return max(stale, 1), missing
		}
		select {
		case <-ch:
		case <-time.After(50 * time.Millisecond): // status-only changes come without an Apply
		}
	}
}

// rssBytes returns the process's resident set size (0 if unknown).
func rssBytes() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
