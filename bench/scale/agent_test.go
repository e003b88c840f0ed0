package scale

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/bench/internal/agentproc"
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var log = etcdserver.TestLogger()

// churnRate is the change rate of Cilium's scale test.
const churnRate = 325

// envInt returns the integer environment variable name, def when unset.
func envInt(b *testing.B, name string, def int) int {
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		b.Fatalf("%s=%q: %v", name, s, err)
	}
	return n
}

// quantiles sorts d in place and returns its p50, p99 and maximum (zero
// when d is empty).
func quantiles(d []time.Duration) (p50, p99, maxd time.Duration) {
	if len(d) == 0 {
		return 0, 0, 0
	}
	slices.Sort(d)
	at := func(p float64) time.Duration { return d[min(len(d)-1, int(p*float64(len(d))))] }
	return at(0.5), at(0.99), d[len(d)-1]
}

// localEtcd is the own cluster's etcd holding the kvstoremesh cache, with
// a root client and the agents' reader config file.
type localEtcd struct {
	srv         *etcdserver.Server
	admin       *kvstore.Client
	readerFile  string
	readerBytes []byte
}

func startLocal(b *testing.B) *localEtcd {
	srv := etcdserver.StartTest(b, etcdserver.Config{ClusterName: "c1"})
	admin, err := kvstore.New(context.Background(), srv.AdminConfig(), log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { admin.Close() })
	reader, err := srv.EnsureLocalReaderUser(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	data, err := json.Marshal(reader)
	if err != nil {
		b.Fatal(err)
	}
	l := &localEtcd{srv: srv, admin: admin, readerFile: filepath.Join(b.TempDir(), "cache"), readerBytes: data}
	if err := os.WriteFile(l.readerFile, data, 0o600); err != nil {
		b.Fatal(err)
	}
	return l
}

// remotesDir writes one config file per cluster (in kvstoremesh mode they
// only name the remotes).
func (l *localEtcd) remotesDir(b *testing.B, sets []remotedata.Set) string {
	dir := b.TempDir()
	for _, s := range sets {
		if err := os.WriteFile(filepath.Join(dir, s.Cluster), l.readerBytes, 0o600); err != nil {
			b.Fatal(err)
		}
	}
	return dir
}

// syncTimes are the moments of a cold sync, since the process start.
type syncTimes struct {
	ready      time.Duration // status: every remote ready with all entries
	programmed time.Duration // and the last ipcache entry of every cluster in the pinned map
	counted    time.Duration // and the pinned map counted complete (includes the count, ≈ 0.5 s)
}

// waitSynced polls the status API and the pinned map until the agent
// holds every set.
func waitSynced(b *testing.B, a *agentproc.Proc, sets []remotedata.Set) syncTimes {
	ctx := context.Background()
	var t syncTimes
	var why string
	deadline := time.Now().Add(15 * time.Minute)
	for t.ready == 0 {
		if err := a.Failed(); err != nil {
			b.Fatal(err)
		}
		if time.Now().After(deadline) {
			b.Fatalf("not synced after 15 minutes: %s", why)
		}
		st, err := a.Status(ctx)
		var ok bool
		if ok, why = agentproc.Synced(st, sets); err == nil && ok {
			t.ready = time.Since(a.Start)
			break
		}
		time.Sleep(50 * time.Millisecond) // polling interval of the measurement
	}
	want := 0
	for _, s := range sets {
		want += s.IPs
	}
	if want == 0 {
		t.programmed, t.counted = t.ready, t.ready
		return t
	}
	ipc, err := bpf.OpenPinnedIPCache(a.PinDir)
	if err != nil {
		b.Fatal(err)
	}
	defer ipc.Close()
	for t.programmed == 0 {
		all := true
		for _, s := range sets {
			if _, ok, err := ipc.Lookup(netip.PrefixFrom(s.IP(s.IPs-1), 32)); err != nil {
				b.Fatal(err)
			} else if !ok {
				all = false
				break
			}
		}
		if all {
			t.programmed = time.Since(a.Start)
		} else if time.Now().After(deadline) {
			b.Fatal("pinned ipcache incomplete after 15 minutes")
		} else {
			time.Sleep(time.Millisecond)
		}
	}
	for t.counted == 0 {
		n, err := ipc.Count()
		if err != nil {
			b.Fatal(err)
		}
		if n >= want {
			t.counted = time.Since(a.Start)
		} else if time.Now().After(deadline) {
			b.Fatalf("pinned ipcache holds %d of %d entries", n, want)
		}
	}
	return t
}

// BenchmarkScaleAgent: the agent binary (bpf datapath, kvstoremesh mode,
// GOMAXPROCS=1 and pinned to CPU 1 with taskset) against one local etcd
// holding the cache of Cilium's scale data set (BENCH_SCALE_CLUSTERS
// scales the cluster count). First a baseline agent with the same remotes,
// empty; then a cold start with the full cache: time to synced and
// programmed, RSS and heap per entry over the baseline; then churn at
// 325 changes/s for BENCH_SCALE_CHURN_SECONDS (default 60): put → entry
// in the pinned map (and → a raw etcd watch of the bench, for comparison),
// CPU per event. BENCH_SCALE_PROFILE_DIR keeps a CPU profile of the cold
// sync and heap profiles.
func BenchmarkScaleAgent(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root: the agent runs the eBPF datapath")
	}
	ctx := context.Background()
	mesh := remotedata.CiliumScale(true)
	mesh.Clusters = envInt(b, "BENCH_SCALE_CLUSTERS", mesh.Clusters)
	churnFor := time.Duration(envInt(b, "BENCH_SCALE_CHURN_SECONDS", 60)) * time.Second
	profDir := os.Getenv("BENCH_SCALE_PROFILE_DIR")
	sets := mesh.Sets()
	b.Logf("load average at start: %s", hostload.Average())

	local := startLocal(b)
	cp := kubetest.StartForTest(b, kubetest.Config{Name: "c1"})
	opts := agentproc.Options{Bin: agentproc.Bin(b, b.TempDir()), Kubeconfig: cp.Kubeconfig(), RemotesDir: local.remotesDir(b, sets),
		CacheConfig: local.readerFile, Name: "bench-scale", CPU: "1", GOMAXPROCS: 1}

	empty := mesh
	empty.PerCluster = remotedata.Set{Cached: true}
	if err := empty.Write(ctx, local.admin.Etcd()); err != nil {
		b.Fatal(err)
	}
	a0 := agentproc.Start(b, opts)
	t0 := waitSynced(b, a0, empty.Sets())
	rss0, heap0 := a0.Memory(b, "")
	a0.Stop(b)
	b.Logf("baseline (%d empty remotes): ready in %v; RSS %d MB, heap %d MB", mesh.Clusters, t0.ready.Round(time.Millisecond), rss0>>20, heap0>>20)

	start := time.Now()
	if err := mesh.Write(ctx, local.admin.Etcd()); err != nil {
		b.Fatal(err)
	}
	entries := mesh.Entries()
	b.Logf("wrote %d clusters, %d entries in %v; load average %s", mesh.Clusters, entries, time.Since(start).Round(time.Millisecond), hostload.Average())

	b.ResetTimer()
	a := agentproc.Start(b, opts)
	if profDir != "" {
		go a.CPUProfile(b, 8*time.Second, filepath.Join(profDir, "scale-agent-sync.cpu.pprof")) // ends before the churn profile starts
	}
	t1 := waitSynced(b, a, sets)
	b.StopTimer()
	syncCPU := a.CPU(b)
	heapPath := ""
	if profDir != "" {
		heapPath = filepath.Join(profDir, "scale-agent-synced.heap.pprof")
	}
	rss1, heap1 := a.Memory(b, heapPath)
	b.Logf("cold sync of %d clusters, %d entries: status ready %v, programmed %v (pinned map counted %v); agent CPU %v; load average %s",
		mesh.Clusters, entries, t1.ready.Round(time.Millisecond), t1.programmed.Round(time.Millisecond), t1.counted.Round(time.Millisecond), syncCPU, hostload.Average())
	b.Logf("memory: RSS %d MB (+%d MB, %d B/entry), heap %d MB (+%d MB, %d B/entry) over the baseline",
		rss1>>20, (rss1-rss0)>>20, (rss1-rss0)/int64(entries), heap1>>20, (heap1-heap0)>>20, (heap1-heap0)/int64(entries))
	b.ReportMetric(t1.programmed.Seconds(), "s-to-programmed")
	b.ReportMetric(float64(rss1-rss0)/float64(entries), "rss-B/entry")
	b.ReportMetric(float64(heap1-heap0)/float64(entries), "heap-B/entry")

	if profDir != "" { // the churn, after the idle window
		go func() {
			time.Sleep(idleWindow)
			a.CPUProfile(b, churnFor, filepath.Join(profDir, "scale-agent-churn.cpu.pprof"))
		}()
	}
	lag, watchLag, missing, cpuPerEvent, netPerEvent, idle, rate := churn(b, a, local, sets, churnFor)
	p50, p99, pmax := quantiles(lag)
	w50, w99, _ := quantiles(watchLag)
	b.ReportMetric(float64(p50.Microseconds())/1000, "churn-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "churn-p99-ms")
	b.ReportMetric(float64(cpuPerEvent.Microseconds()), "cpu-µs/event")
	b.ReportMetric(float64(netPerEvent.Microseconds()), "cpu-net-µs/event")
	b.Logf("churn %v at %d/s (reached %.0f/s): %d changes, %d not seen in the pinned map; put → pinned map p50 %v p99 %v max %v | put → raw watch p50 %v p99 %v; agent CPU %v per event (%v over its idle %.3f cores); load average %s",
		churnFor, churnRate, rate, len(lag)+missing, missing, p50, p99, pmax, w50, w99, cpuPerEvent, netPerEvent, idle, hostload.Average())
	churnedHeap := ""
	if profDir != "" {
		churnedHeap = filepath.Join(profDir, "scale-agent-churned.heap.pprof")
	}
	rss2, heap2 := a.Memory(b, churnedHeap)
	b.Logf("memory after the churn: RSS %d MB (+%d MB, %d B/entry), heap %d MB (+%d MB, %d B/entry) over the baseline",
		rss2>>20, (rss2-rss0)>>20, (rss2-rss0)/int64(entries), heap2>>20, (heap2-heap0)>>20, (heap2-heap0)/int64(entries))
}

// churn changes ipcache entries of sets at churnRate for d and returns the
// put → pinned map lags, the put → raw watch lags, the changes never seen
// in the map, the agent's CPU per change (all of it, and less its idle
// CPU rate over the same window), its idle CPU (cores) and the rate
// reached.
func churn(b *testing.B, a *agentproc.Proc, local *localEtcd, sets []remotedata.Set, d time.Duration) (lag, watchLag []time.Duration, missing int, cpuPerEvent, netPerEvent time.Duration, idle, rate float64) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ipc, err := bpf.OpenPinnedIPCache(a.PinDir)
	if err != nil {
		b.Fatal(err)
	}
	defer ipc.Close()
	var mu sync.Mutex
	pending := map[netip.Addr]remotedata.Change{} // guarded by mu
	sentAt := map[string]time.Time{}              // guarded by mu: by key, for the raw watch
	var wg sync.WaitGroup
	watch := local.admin.Etcd().Watch(ctx, wire.CachePrefix+string(wire.KindIP)+"/v1/", clientv3.WithPrefix())
	wg.Go(func() {
		for wr := range watch {
			now := time.Now()
			mu.Lock()
			for _, ev := range wr.Events {
				if t, ok := sentAt[string(ev.Kv.Key)]; ok {
					watchLag = append(watchLag, now.Sub(t))
					delete(sentAt, string(ev.Kv.Key))
				}
			}
			mu.Unlock()
		}
	})
	polling := make(chan struct{})
	wg.Go(func() {
		var batch []remotedata.Change
		for {
			select {
			case <-polling:
				return
			default:
			}
			mu.Lock()
			batch = batch[:0]
			for _, c := range pending {
				batch = append(batch, c)
			}
			mu.Unlock()
			for _, c := range batch {
				e, ok, err := ipc.Lookup(netip.PrefixFrom(c.IP, 32))
				if err != nil {
					b.Error(err)
					return
				}
				if ok && e.Identity == c.Identity {
					now := time.Now()
					mu.Lock()
					lag = append(lag, now.Sub(c.Sent))
					delete(pending, c.IP)
					mu.Unlock()
				}
			}
			time.Sleep(200 * time.Microsecond) // polling interval of the measurement
		}
	})
	// The agent's CPU without churn (probes, informers, the poller's map
	// reads cost the bench, not the agent), over a window of its own.
	idle0, idleStart := a.CPU(b), time.Now()
	time.Sleep(idleWindow) // measurement window
	idle = float64(a.CPU(b)-idle0) / float64(time.Since(idleStart))
	cpu0 := a.CPU(b)
	n := int(d.Seconds() * churnRate)
	start := time.Now()
	done, err := remotedata.Churn{Sets: sets, Rate: churnRate}.Run(ctx, local.admin.Etcd(), n, func(c remotedata.Change) {
		mu.Lock()
		pending[c.IP] = c
		sentAt[c.Key] = c.Sent
		mu.Unlock()
	})
	window := time.Since(start)
	rate = float64(done) / window.Seconds()
	if err != nil {
		b.Fatal(err)
	}
	for wait := time.Now(); time.Since(wait) < 10*time.Second; time.Sleep(10 * time.Millisecond) {
		mu.Lock()
		left := len(pending)
		mu.Unlock()
		if left == 0 {
			break
		}
	}
	cpu1 := a.CPU(b)
	window = time.Since(start)
	close(polling)
	cancel()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	cpuPerEvent = (cpu1 - cpu0) / time.Duration(max(1, done))
	netPerEvent = (cpu1 - cpu0 - time.Duration(idle*float64(window))) / time.Duration(max(1, done))
	return lag, watchLag, len(pending), cpuPerEvent, netPerEvent, idle, rate
}

// idleWindow is how long churn measures the agent's CPU without changes.
const idleWindow = 10 * time.Second
