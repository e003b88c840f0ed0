package kvstorebench

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
)

const (
	ipPrefix   = "cilium/state/ip/v1/default/"
	latPrefix  = "cilium/state/ip/v1/latency/"
	listKeys   = 250_000
	pageSize   = 10_000
	puts       = 5_000
	putsPerSec = 1_000
)

// ipEntry mirrors the JSON of an IPIdentityPair; the benchmark decodes it
// the way a reader does (JSON, then key/value agreement), without
// depending on the wire package's evolving API.
type ipEntry struct {
	IP           netip.Addr `json:"IP"`
	Mask         []byte     `json:"Mask"`
	HostIP       netip.Addr `json:"HostIP"`
	ID           uint32     `json:"ID"`
	Key          uint8      `json:"Key"`
	Metadata     string     `json:"Metadata"`
	K8sNamespace string     `json:"K8sNamespace,omitempty"`
	K8sPodName   string     `json:"K8sPodName,omitempty"`
}

func decodeIP(key string, value []byte) (ipEntry, error) {
	var e ipEntry
	if err := json.Unmarshal(value, &e); err != nil {
		return ipEntry{}, err
	}
	if i := strings.LastIndexByte(key, '/'); i < 0 || key[i+1:] != e.IP.String() {
		return ipEntry{}, fmt.Errorf("key %q does not match IP %s", key, e.IP)
	}
	return e, nil
}

func ipOf(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)})
}

func entryJSON(i int) string {
	b, _ := json.Marshal(ipEntry{
		IP: ipOf(i), HostIP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8 & 0x3f), byte(i)}),
		ID: 65536 + uint32(i%20000), Metadata: "cilium-global:default:node-1:1",
		K8sNamespace: "default", K8sPodName: fmt.Sprintf("pod-%d", i),
	})
	return string(b)
}

// fixture is one etcd on tmpfs holding listKeys keys.
type fixture struct {
	srv *etcdserver.Server
	cfg kvstore.Config
}

func newFixture(b *testing.B) *fixture {
	b.Helper()
	base := "/dev/shm"
	if _, err := os.Stat(base); err != nil {
		base = b.TempDir()
		b.Logf("no /dev/shm: etcd data in %s", base)
	}
	dir, err := os.MkdirTemp(base, "clustermesh-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := etcdserver.Start(ctx, etcdserver.Config{ClusterName: "c1", DataDir: filepath.Join(dir, "etcd")}, etcdserver.TestLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(srv.Stop)
	f := &fixture{srv: srv, cfg: srv.AdminConfig()}
	f.cfg.ListPageSize = pageSize
	f.preload(b)
	return f
}

func (f *fixture) connect(b *testing.B) *kvstore.Client {
	b.Helper()
	c, err := kvstore.New(context.Background(), f.cfg, etcdserver.TestLogger())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

// preload writes listKeys keys in transactions of 128 puts.
func (f *fixture) preload(b *testing.B) {
	c := f.connect(b).Etcd()
	start := time.Now()
	const batch = 128
	work := make(chan int)
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 4 {
		wg.Go(func() {
			for first := range work {
				ops := make([]clientv3.Op, 0, batch)
				for i := first; i < min(first+batch, listKeys); i++ {
					ops = append(ops, clientv3.OpPut(ipPrefix+ipOf(i).String(), entryJSON(i)))
				}
				if _, err := c.Txn(context.Background()).Then(ops...).Commit(); err != nil {
					failed.Store(err)
				}
			}
		})
	}
	for i := 0; i < listKeys; i += batch {
		work <- i
	}
	close(work)
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatalf("preload: %v", err)
	}
	b.Logf("preloaded %d keys in %s", listKeys, time.Since(start).Round(time.Millisecond))
}

func BenchmarkKVStore(b *testing.B) {
	f := newFixture(b)
	b.Run("List250k", func(b *testing.B) { benchList(b, f) })
	b.Run("PutToObserver", func(b *testing.B) { benchLatency(b, f) })
	b.Run("SyncStore250k", func(b *testing.B) { benchSyncStore(b, f) })
}

// benchSyncStore hands 250k keys to a syncstore, marks it synced and
// measures the time until its canary is written.
func benchSyncStore(b *testing.B, f *fixture) {
	for it := range b.N {
		prefix := fmt.Sprintf("cilium/state/ip/v1/sync%d/", it)
		c := f.connect(b)
		s := syncstore.New(c, syncstore.Config{Prefix: prefix, SyncedKey: "cilium/synced/c1/" + prefix}, etcdserver.TestLogger(), nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		start := time.Now()
		for i := range listKeys {
			s.Upsert(prefix+ipOf(i).String(), []byte(entryJSON(i)))
		}
		s.MarkSynced()
		go func() { done <- s.Run(ctx) }()
		select {
		case <-s.Synced():
		case <-time.After(10 * time.Minute):
			b.Fatal("syncstore did not sync")
		}
		elapsed := time.Since(start)
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(listKeys)/elapsed.Seconds(), "syncstore-keys/s")
		b.ReportMetric(elapsed.Seconds(), "syncstore-sync-s")
	}
}

// benchList lists the 250k keys three ways, each on a fresh connection.
func benchList(b *testing.B, f *fixture) {
	for range b.N {
		// Raw paged list.
		c := f.connect(b).Etcd()
		start := time.Now()
		n := rawList(b, c)
		raw := time.Since(start)

		// kvstore.ListWatch until the list is done.
		kc := f.connect(b)
		ctx, cancel := context.WithCancel(context.Background())
		var lwKeys int
		start = time.Now()
		_ = kc.ListWatch(ctx, ipPrefix, func(ev kvstore.Event) {
			switch ev.Kind {
			case kvstore.EventUpsert:
				lwKeys++
			case kvstore.EventListDone:
				cancel()
			}
		})
		lw := time.Since(start)
		cancel()

		// A decoding watchstore until OnSync, with its heap cost.
		wc := f.connect(b)
		runtime.GC()
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		obs := &syncObserver{synced: make(chan struct{})}
		s := watchstore.New(wc, watchstore.Config{Prefix: ipPrefix, Name: "ipcache", Cluster: "c1"}, decodeIP, obs, etcdserver.TestLogger())
		ctx, cancel = context.WithCancel(context.Background())
		done := make(chan error, 1)
		start = time.Now()
		go func() { done <- s.Run(ctx) }()
		<-obs.synced
		ws := time.Since(start)
		runtime.GC()
		runtime.ReadMemStats(&after)
		entries := s.Len()
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		runtime.KeepAlive(s)
		if n != listKeys || lwKeys != listKeys || entries != listKeys {
			b.Fatalf("listed %d raw, %d list-watch, %d watchstore; want %d", n, lwKeys, entries, listKeys)
		}
		b.ReportMetric(float64(listKeys)/raw.Seconds(), "raw-keys/s")
		b.ReportMetric(float64(listKeys)/lw.Seconds(), "listwatch-keys/s")
		b.ReportMetric(float64(listKeys)/ws.Seconds(), "watchstore-keys/s")
		b.ReportMetric(ws.Seconds(), "watchstore-sync-s")
		b.ReportMetric(float64(int64(after.HeapAlloc)-int64(before.HeapAlloc))/listKeys, "watchstore-heap-B/entry")
		b.Logf("raw %s, list-watch %s, watchstore %s (%d invalid)", raw.Round(time.Millisecond), lw.Round(time.Millisecond), ws.Round(time.Millisecond), s.Stats().Invalid)
	}
}

func rawList(b *testing.B, c *clientv3.Client) int {
	ctx := context.Background()
	end := clientv3.GetPrefixRangeEnd(ipPrefix)
	key := ipPrefix
	var rev int64
	n := 0
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(pageSize)}
		if rev != 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		resp, err := c.Get(ctx, key, opts...)
		if err != nil {
			b.Fatal(err)
		}
		rev = resp.Header.Revision
		n += len(resp.Kvs)
		if !resp.More || len(resp.Kvs) == 0 {
			return n
		}
		key = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

type syncObserver struct {
	once   sync.Once
	synced chan struct{}
}

func (o *syncObserver) OnUpsert(string, ipEntry, ipEntry, bool) {}
func (o *syncObserver) OnDelete(string, ipEntry)                {}
func (o *syncObserver) OnSync()                                 { o.once.Do(func() { close(o.synced) }) }

// warmupIndex is the entry put before the measurement to know that both
// watches are up (outside the measured keys).
const warmupIndex = 1<<24 - 1

var warmupKey = ipOf(warmupIndex).String()

// latencies records put → event latencies by key index.
type latencies struct {
	sent []atomic.Int64 // unix ns before the put of key i
	mu   sync.Mutex
	got  []time.Duration
	warm chan struct{} // closed when the warm-up key was seen
	all  chan struct{} // closed when every put was seen
}

func newLatencies(sent []atomic.Int64) *latencies {
	return &latencies{sent: sent, warm: make(chan struct{}), all: make(chan struct{})}
}

func (l *latencies) seen(key string, index map[string]int) {
	now := time.Now().UnixNano()
	if strings.HasSuffix(key, "/"+warmupKey) {
		close(l.warm)
		return
	}
	d := time.Duration(now - l.sent[index[key]].Load())
	l.mu.Lock()
	l.got = append(l.got, d)
	if len(l.got) == puts {
		close(l.all)
	}
	l.mu.Unlock()
}

func (l *latencies) percentile(p float64) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := slices.Clone(l.got)
	slices.Sort(s)
	return s[min(int(p*float64(len(s))), len(s)-1)]
}

type latencyObserver struct {
	index map[string]int
	lat   *latencies
}

func (o *latencyObserver) OnUpsert(key string, _, _ ipEntry, _ bool) { o.lat.seen(key, o.index) }
func (o *latencyObserver) OnDelete(string, ipEntry)                  {}
func (o *latencyObserver) OnSync()                                   {}

// benchLatency puts keys at putsPerSec and measures, per put, the time
// until a raw etcd watch and a watchstore observer (both on their own
// connection, running at the same time) see it.
func benchLatency(b *testing.B, f *fixture) {
	for it := range b.N {
		prefix := fmt.Sprintf("%s%d/", latPrefix, it)
		keys := make([]string, puts)
		values := make([]string, puts)
		index := make(map[string]int, puts)
		for i := range puts {
			keys[i] = prefix + ipOf(i).String()
			values[i] = entryJSON(i)
			index[keys[i]] = i
		}
		sent := make([]atomic.Int64, puts) // one send time per put, shared
		raw, ws := newLatencies(sent), newLatencies(sent)

		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup

		// Raw watch.
		rc := f.connect(b).Etcd()
		wch := rc.Watch(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCreatedNotify())
		<-wch // created
		wg.Go(func() {
			for wr := range wch {
				for _, ev := range wr.Events {
					raw.seen(string(ev.Kv.Key), index)
				}
			}
		})
		// Watchstore.
		obs := &latencyObserver{index: index, lat: ws}
		s := watchstore.New(f.connect(b), watchstore.Config{Prefix: prefix, Name: "latency"}, decodeIP, obs, etcdserver.TestLogger())
		wg.Go(func() { _ = s.Run(ctx) })
		// Both watches are up once both saw a first put.
		wc := f.connect(b).Etcd()
		if _, err := wc.Put(ctx, prefix+warmupKey, entryJSON(warmupIndex)); err != nil {
			b.Fatal(err)
		}
		<-raw.warm
		<-ws.warm

		// Writers: puts paced at putsPerSec, issued by 4 goroutines so a
		// slow put does not delay the next one.
		work := make(chan int, puts)
		var writers sync.WaitGroup
		for range 4 {
			writers.Go(func() {
				for i := range work {
					sent[i].Store(time.Now().UnixNano())
					if _, err := wc.Put(ctx, keys[i], values[i]); err != nil && ctx.Err() == nil {
						b.Error(err)
					}
				}
			})
		}
		start := time.Now()
		for i := range puts {
			time.Sleep(time.Until(start.Add(time.Duration(i) * time.Second / putsPerSec)))
			work <- i
		}
		close(work)
		writers.Wait()
		for _, l := range []*latencies{raw, ws} {
			select {
			case <-l.all:
			case <-time.After(time.Minute):
				b.Fatal("not every put was observed")
			}
		}
		elapsed := time.Since(start)
		cancel()
		wg.Wait()

		rp50, rp99 := raw.percentile(0.50), raw.percentile(0.99)
		wp50, wp99 := ws.percentile(0.50), ws.percentile(0.99)
		ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
		b.ReportMetric(ms(rp50), "raw-p50-ms")
		b.ReportMetric(ms(rp99), "raw-p99-ms")
		b.ReportMetric(ms(wp50), "watchstore-p50-ms")
		b.ReportMetric(ms(wp99), "watchstore-p99-ms")
		b.ReportMetric(float64(wp50)/float64(rp50), "p50-ratio")
		b.ReportMetric(float64(wp99)/float64(rp99), "p99-ratio")
		b.ReportMetric(float64(puts)/elapsed.Seconds(), "puts/s")
	}
}
