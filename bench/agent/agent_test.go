package agent

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/agenttest"
	"github.com/clustermesh/clustermesh/bench/internal/procmem"
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

const (
	remoteName = "c2"
	remoteID   = 2
)

var log = etcdserver.TestLogger()

type env struct {
	srv   *etcdserver.Server
	admin *kvstore.Client
	dir   string
}

func setup(b *testing.B) *env {
	b.Helper()
	srv := etcdserver.StartTest(b, etcdserver.Config{ClusterName: remoteName})
	admin, err := kvstore.New(context.Background(), srv.AdminConfig(), log)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { admin.Close() })
	e := &env{srv: srv, admin: admin, dir: b.TempDir()}
	cc, _ := json.Marshal(wire.ClusterConfig{ID: remoteID, Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})
	e.put(b, []clientv3.Op{clientv3.OpPut(wire.ClusterConfigKey(remoteName), string(cc))})
	return e
}

func (e *env) put(b *testing.B, ops []clientv3.Op) {
	for len(ops) > 0 {
		n := min(len(ops), 128) // etcd's default --max-txn-ops
		if _, err := e.admin.Etcd().Txn(context.Background()).Then(ops[:n]...).Commit(); err != nil {
			b.Fatal(err)
		}
		ops = ops[n:]
	}
}

func (e *env) canaries(b *testing.B) {
	var ops []clientv3.Op
	for _, k := range wire.Kinds() {
		ops = append(ops, clientv3.OpPut(wire.SyncedKey(remoteName, k), string(wire.FormatTimestamp(time.Now()))))
	}
	e.put(b, ops)
}

func (e *env) writeConfig(b *testing.B) {
	cfg, err := e.srv.EnsureRemoteUser(context.Background(), "c1")
	if err != nil {
		b.Fatal(err)
	}
	data, _ := json.Marshal(cfg)
	if err := os.WriteFile(filepath.Join(e.dir, remoteName), data, 0o600); err != nil {
		b.Fatal(err)
	}
}

func startAgent(dir string) *agenttest.ControlPlane {
	return agenttest.Start(agenttest.Config{Dir: dir, ClusterName: "c1", ClusterID: 1}, log)
}

func ipOf(i int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(remoteID), byte(i >> 8), byte(i)})
}

func ipcacheValue(i int, ip netip.Addr) string {
	v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), ID: remoteID<<16 | 256 + uint32(i%1000)})
	if err != nil {
		panic(err)
	}
	return string(v)
}

func percentile(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(p*float64(len(s))))]
}

// BenchmarkPutToDatapath: remote ipcache puts at 1,000/s; latency from the
// put call to the entry being applied to the memory datapath, and, on the
// same etcd in the same run, to the event of a raw clientv3 watch.
func BenchmarkPutToDatapath(b *testing.B) {
	const puts, rate = 3000, 1000
	e := setup(b)
	e.canaries(b)
	e.writeConfig(b)
	a := startAgent(e.dir)
	defer a.Stop()
	for !a.Ready() {
		time.Sleep(5 * time.Millisecond)
	}

	watchCtx, cancelWatch := context.WithCancel(context.Background())
	defer cancelWatch()
	sent := make([]time.Time, puts)
	rawLat := make([]time.Duration, 0, puts)
	dpLat := make([]time.Duration, 0, puts)
	var mu sync.Mutex // guards sent
	var wg sync.WaitGroup
	wch := e.admin.Etcd().Watch(watchCtx, wire.IPPrefix, clientv3.WithPrefix())
	wg.Go(func() {
		for wr := range wch {
			now := time.Now()
			for _, ev := range wr.Events {
				ip, err := netip.ParseAddr(strings.TrimPrefix(string(ev.Kv.Key), wire.IPPrefix))
				if err != nil {
					continue
				}
				idx := int(ip.As4()[2])<<8 | int(ip.As4()[3])
				mu.Lock()
				rawLat = append(rawLat, now.Sub(sent[idx]))
				mu.Unlock()
			}
			if len(rawLat) >= puts {
				return
			}
		}
	})
	wg.Go(func() {
		next := 0
		for next < puts {
			ch := a.Datapath.Changed()
			now := time.Now()
			for next < puts {
				ip := ipOf(next)
				if _, ok := a.Datapath.IPCache(netip.PrefixFrom(ip, 32)); !ok {
					break
				}
				mu.Lock()
				dpLat = append(dpLat, now.Sub(sent[next]))
				mu.Unlock()
				next++
			}
			if next < puts {
				select {
				case <-ch:
				case <-time.After(30 * time.Second):
					return
				}
			}
		}
	})
	b.ResetTimer()
	tick := time.NewTicker(time.Second / rate)
	for i := range puts {
		<-tick.C
		ip := ipOf(i)
		mu.Lock()
		sent[i] = time.Now()
		mu.Unlock()
		if _, err := e.admin.Etcd().Put(context.Background(), wire.IPKey(ip), ipcacheValue(i, ip)); err != nil {
			b.Fatal(err)
		}
	}
	tick.Stop()
	wg.Wait()
	b.StopTimer()
	cancelWatch()
	if len(dpLat) != puts || len(rawLat) < puts {
		b.Fatalf("observed %d datapath and %d watch events of %d puts", len(dpLat), len(rawLat), puts)
	}
	b.ReportMetric(float64(percentile(dpLat, 0.5).Microseconds()), "dp-p50-µs")
	b.ReportMetric(float64(percentile(dpLat, 0.99).Microseconds()), "dp-p99-µs")
	b.ReportMetric(float64(percentile(rawLat, 0.5).Microseconds()), "watch-p50-µs")
	b.ReportMetric(float64(percentile(rawLat, 0.99).Microseconds()), "watch-p99-µs")
	b.Logf("%d puts at %d/s: datapath p50 %v p99 %v | raw watch p50 %v p99 %v", puts, rate,
		percentile(dpLat, 0.5), percentile(dpLat, 0.99), percentile(rawLat, 0.5), percentile(rawLat, 0.99))
}

// BenchmarkColdSync: one remote with 25,000 nodes, 250,000 ipcache entries,
// 25,000 identities and 5,000 services; time from the config file appearing
// to every tunnel and ipcache entry applied and the remote ready, and the
// memory it costs.
func BenchmarkColdSync(b *testing.B) {
	const nodes, ips, ids, svcs = 25000, 250000, 25000, 5000
	e := setup(b)
	data := remotedata.Set{Cluster: remoteName, ID: remoteID, Nodes: nodes, IPs: ips, Identities: ids, Services: svcs}
	if err := data.Write(context.Background(), e.admin.Etcd()); err != nil {
		b.Fatal(err)
	}
	entries := nodes + ips + ids + svcs

	heap0, rss0 := procmem.HeapInuse(), procmem.RSS()
	b.ResetTimer()
	start := time.Now()
	e.writeConfig(b)
	a := startAgent(e.dir)
	defer a.Stop()
	for {
		ch := a.Datapath.Changed()
		if a.Ready() {
			st, _ := a.Datapath.Dump()
			if len(st.Tunnels) == nodes && len(st.IPCache) == ips {
				break
			}
		}
		select {
		case <-ch:
		case <-time.After(100 * time.Millisecond):
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatal("cold sync did not finish in 5 minutes")
		}
	}
	elapsed := time.Since(start)
	b.StopTimer()
	heap1, rss1 := procmem.HeapInuse(), procmem.RSS()
	dheap, drss := int64(heap1)-int64(heap0), int64(rss1)-int64(rss0)
	if path := os.Getenv("BENCH_HEAPPROFILE"); path != "" { // what the synced agent holds
		if err := procmem.WriteHeapProfile(path); err != nil {
			b.Fatal(err)
		}
	}
	// The in-memory datapath's maps stand in for kernel maps: measure a copy
	// of them to tell the agent's own share.
	st, _ := a.Datapath.Dump()
	dpCopy := int64(procmem.HeapInuse()) - int64(heap1)
	runtime.KeepAlive(st)
	b.ReportMetric(float64(dheap-dpCopy)/float64(entries), "heap-B/entry-excl-memdp")
	b.ReportMetric(elapsed.Seconds(), "s-to-ready")
	b.ReportMetric(float64(drss)/(1<<20), "rss-growth-MB")
	b.ReportMetric(float64(drss)/float64(entries), "rss-B/entry")
	b.ReportMetric(float64(dheap)/float64(entries), "heap-B/entry")
	b.Logf("cold sync of %d entries: %v to ready; RSS +%d MB (%d B/entry), live heap +%d MB (%d B/entry), of which the in-memory datapath ≈ %d MB",
		entries, elapsed, drss>>20, drss/int64(entries), dheap>>20, dheap/int64(entries), dpCopy>>20)
}
