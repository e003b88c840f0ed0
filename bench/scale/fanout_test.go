package scale

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// decoder returns the readers' decoder of kind k for remote r.
func decoder(k wire.Kind, r wire.Remote) func(key string, v []byte) (any, error) {
	switch k {
	case wire.KindNodes:
		return func(key string, v []byte) (any, error) { return wire.DecodeNode(r, key, v) }
	case wire.KindServices:
		return func(key string, v []byte) (any, error) { return wire.DecodeService(r, key, v) }
	case wire.KindIdentities:
		return func(key string, v []byte) (any, error) { return wire.DecodeIdentity(r, key, v) }
	default:
		return func(key string, v []byte) (any, error) { return wire.DecodeIPIdentityPair(r, key, v) }
	}
}

// lagObserver records, for the ipcache store of one watcher, the time from
// the churn's put of a key to its delivery.
type lagObserver struct {
	sent     *sync.Map // key → time.Time of the last churn put
	churning *atomic.Bool
	lags     []time.Duration // only the store's goroutine appends
	mu       sync.Mutex      // guards lags against the final read
}

func (o *lagObserver) OnUpsert(key string, _, _ any, _ bool) {
	if !o.churning.Load() {
		return
	}
	if t, ok := o.sent.Load(key); ok {
		d := time.Since(t.(time.Time))
		o.mu.Lock()
		o.lags = append(o.lags, d)
		o.mu.Unlock()
	}
}
func (o *lagObserver) OnDelete(string, any) {}
func (o *lagObserver) OnSync()              {}

type nopObserver struct{}

func (nopObserver) OnUpsert(string, any, any, bool) {}
func (nopObserver) OnDelete(string, any)            {}
func (nopObserver) OnSync()                         {}

// BenchmarkScaleFanout: BENCH_FANOUT_REMOTES (default 4) remote etcds, each
// with one cluster of the scale data set's size (100 nodes, 1,000 ipcache
// entries, 100 identities, 10 services), mirrored by a kvstoremesh into the
// local etcd, all in a server process of their own (startServer); BENCH_FANOUT_WATCHERS (default 500) in-process watchers, each
// with its own etcd client connection, read every remote's four cache
// prefixes through kvstore/watchstore with the agent's decoders. Then the
// churn (325 changes/s spread over the remotes, put into the remotes'
// etcds) runs for BENCH_FANOUT_CHURN_SECONDS (default 30): events delivered
// per second to all watchers, the put → watcher delivery lag and, for
// comparison, put → cache write (a raw watch of the local etcd).
// BENCH_SCALE_PROFILE_DIR keeps a CPU profile of the process over the
// churn.
func BenchmarkScaleFanout(b *testing.B) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nRemotes := envInt(b, "BENCH_FANOUT_REMOTES", 4)
	nWatchers := envInt(b, "BENCH_FANOUT_WATCHERS", 500)
	churnFor := time.Duration(envInt(b, "BENCH_FANOUT_CHURN_SECONDS", 30)) * time.Second
	b.Logf("load average at start: %s", hostload.Average())
	mesh := fanoutMesh(nRemotes)
	sets := mesh.Sets()
	start := time.Now()
	dir := startServer(b)
	b.Logf("server process: %d remote etcds written and mirrored by the kvstoremesh (%d entries) in %v",
		len(sets), mesh.Entries(), time.Since(start).Round(time.Millisecond))
	remotes := make([]*kvstore.Client, len(sets))
	for i, s := range sets {
		cfg, err := kvstore.LoadConfig(adminFile(dir, s.Cluster))
		if err != nil {
			b.Fatal(err)
		}
		if remotes[i], err = kvstore.New(ctx, cfg, log); err != nil {
			b.Fatal(err)
		}
		c := remotes[i]
		b.Cleanup(func() { c.Close() })
	}
	reader, err := kvstore.LoadConfig(readerFile(dir))
	if err != nil {
		b.Fatal(err)
	}
	localReader, err := kvstore.New(ctx, reader, log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { localReader.Close() })
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	var sent sync.Map
	var churning atomic.Bool
	var observers []*lagObserver
	var stores []*watchstore.Store[any]
	start = time.Now()
	for w := range nWatchers {
		c, err := kvstore.New(ctx, reader, log)
		if err != nil {
			b.Fatalf("watcher %d: %v", w, err)
		}
		b.Cleanup(func() { c.Close() })
		for _, s := range sets {
			r := wire.Remote{Name: s.Cluster, ID: s.ID, MaxConnectedClusters: 255}
			for _, k := range wire.Kinds() {
				var obs watchstore.Observer[any] = nopObserver{}
				if k == wire.KindIP {
					o := &lagObserver{sent: &sent, churning: &churning}
					observers = append(observers, o)
					obs = o
				}
				st := watchstore.New(c, watchstore.Config{Prefix: wire.WatchPrefix(k, s.Cluster, true), SyncedKey: wire.WatchSyncedKey(k, s.Cluster, true),
					Name: string(k), Cluster: s.Cluster}, decoder(k, r), obs, log)
				stores = append(stores, st)
				wg.Go(func() { _ = st.Run(ctx) })
			}
		}
	}
	testwait.Until(b, 10*time.Minute, "watcher stores synced", func() (bool, string) {
		synced := 0
		for _, st := range stores {
			if st.Stats().Synced {
				synced++
			}
		}
		return synced == len(stores), fmt.Sprintf("%d of %d stores synced", synced, len(stores))
	})
	b.Logf("%d watchers (%d stores, %d connections) synced %d entries each in %v; load average %s",
		nWatchers, len(stores), nWatchers, mesh.Entries(), time.Since(start).Round(time.Millisecond), hostload.Average())

	// The kvstoremesh's share: put on the remote → key written in the cache,
	// seen by a raw watch of the bench on the local etcd.
	var cacheLag []time.Duration // only the watch goroutine appends until wctx ends
	wctx, wcancel := context.WithCancel(ctx)
	wch := localReader.Etcd().Watch(wctx, wire.CachePrefix+string(wire.KindIP)+"/v1/", clientv3.WithPrefix())
	var watchDone sync.WaitGroup
	watchDone.Go(func() {
		for wr := range wch {
			now := time.Now()
			for _, ev := range wr.Events {
				if t, ok := sent.Load(string(ev.Kv.Key)); ok && churning.Load() {
					cacheLag = append(cacheLag, now.Sub(t.(time.Time)))
				}
			}
		}
	})
	if dir := os.Getenv("BENCH_SCALE_PROFILE_DIR"); dir != "" { // the whole process over the churn
		f, err := os.Create(filepath.Join(dir, "scale-fanout-churn.cpu.pprof"))
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer func() { pprof.StopCPUProfile(); f.Close() }()
	}
	b.ResetTimer()
	churning.Store(true)
	per := churnRate / float64(len(sets))
	n := int(churnFor.Seconds() * per)
	start = time.Now()
	var cwg sync.WaitGroup
	var puts atomic.Int64
	for i, s := range sets {
		cwg.Go(func() {
			done, err := remotedata.Churn{Sets: []remotedata.Set{s}, Rate: per}.Run(ctx, remotes[i].Etcd(), n, func(c remotedata.Change) {
				sent.Store(wire.CachedIPKey(s.Cluster, c.IP), c.Sent) // the watchers read the cache
			})
			puts.Add(int64(done))
			if err != nil {
				b.Error(err)
			}
		})
	}
	cwg.Wait()
	putWindow := time.Since(start)
	want := int(puts.Load()) * nWatchers
	delivered := func() int {
		n := 0
		for _, o := range observers {
			o.mu.Lock()
			n += len(o.lags)
			o.mu.Unlock()
		}
		return n
	}
	for deadline := time.Now().Add(30 * time.Second); delivered() < want && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond) // polling interval of the measurement
	}
	window := time.Since(start)
	b.StopTimer()
	pprof.StopCPUProfile()
	churning.Store(false)
	wcancel()
	watchDone.Wait()
	var all []time.Duration
	for _, o := range observers {
		o.mu.Lock()
		all = append(all, o.lags...)
		o.mu.Unlock()
	}
	p50, p99, pmax := quantiles(all)
	c50, c99, _ := quantiles(cacheLag)
	b.ReportMetric(float64(len(all))/window.Seconds(), "delivered-events/s")
	b.ReportMetric(float64(p50.Microseconds())/1000, "lag-p50-ms")
	b.ReportMetric(float64(p99.Microseconds())/1000, "lag-p99-ms")
	b.Logf("churn: %d puts in %v (%.0f/s) over %d remotes → %d of %d deliveries to %d watchers in %v: %.0f events/s; put → watcher p50 %v p99 %v max %v; load average %s",
		puts.Load(), putWindow.Round(time.Millisecond), float64(puts.Load())/putWindow.Seconds(), len(sets), len(all), want, nWatchers,
		window.Round(time.Millisecond), float64(len(all))/window.Seconds(), p50, p99, pmax, hostload.Average())
	b.Logf("put on the remote → in the cache (raw watch of the local etcd): p50 %v p99 %v of %d", c50, c99, len(cacheLag))
	if len(all) < want {
		b.Logf("%d deliveries missing after 30 s", want-len(all))
	}
}
