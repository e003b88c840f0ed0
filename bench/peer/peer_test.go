package peer

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/agent/agenttest"
	"github.com/clustermesh/clustermesh/bench/internal/procmem"
	"github.com/clustermesh/clustermesh/bench/internal/remotedata"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The data set of issue 14 / DESIGN §7.
var full = remotedata.Set{Cluster: "c2", ID: 2, Nodes: 25000, IPs: 250000, Identities: 25000}

// empty is the baseline remote: connected and synced, no entries.
var empty = remotedata.Set{Cluster: "c3", ID: 3}

const (
	latencyPuts = 5000
	latencyRate = 1000
)

// BenchmarkVsCilium: cold sync, memory per remote entry and put → datapath
// latency of the agent, and of Cilium's watch path (cilium-watch, --opts
// etcd.limit=10000) on the same etcd and data, rounds interleaved. As root
// with KUBE_BIN_DIR, cold sync and memory are the agent binary's (eBPF
// datapath, its own kube-apiserver, read from outside the process:
// binary_test.go); the in-process control plane (agent/agenttest) runs in
// every round too and gives the latency, put → entry in the pinned map.
// BENCH_PEER_DATAPATH=memory forces the in-memory datapath and the
// in-process figures only. The Cilium side runs when its binary is found:
// CILIUM_WATCH_BIN, else bin/cilium-watch at the repository root.
// BENCH_PEER_ONLY=latency runs only the latency part: the in-process
// control plane's cold sync (untimed figures aside) and put → map, and
// cilium-watch's latency mode, interleaved as in a full run; no agent
// binary, no Cilium sync-mode runs, no heap profile.
// BENCH_PEER_ONLY=latency-concurrent is that latency part with both sides
// at the same time, each on an etcd of its own with the same data.
func BenchmarkVsCilium(b *testing.B) {
	ctx := context.Background()
	fullURL, etcdPID := startEtcd(b, "full")
	emptyURL, _ := startEtcd(b, "empty")
	admin := etcdClient(b, fullURL)
	start := time.Now()
	if err := full.Write(ctx, admin); err != nil {
		b.Fatal(err)
	}
	b.Logf("wrote %d entries of %s in %v", full.Entries(), full.Cluster, time.Since(start).Round(time.Millisecond))
	if err := empty.Write(ctx, etcdClient(b, emptyURL)); err != nil {
		b.Fatal(err)
	}
	cilium, ciliumWhy := ciliumBin()
	if cilium == "" {
		b.Logf("Cilium side skipped: %s", ciliumWhy)
	}
	useBPF := os.Geteuid() == 0 && os.Getenv("BENCH_PEER_DATAPATH") != "memory"
	rounds := 2
	if s := os.Getenv("BENCH_PEER_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	latencyOnly, concurrent := false, false
	switch only := os.Getenv("BENCH_PEER_ONLY"); only {
	case "":
	case "latency":
		latencyOnly = true
	case "latency-concurrent":
		latencyOnly, concurrent = true, true
		if cilium == "" {
			b.Fatalf("BENCH_PEER_ONLY=%s needs the Cilium side", only)
		}
	default:
		b.Fatalf("BENCH_PEER_ONLY=%q: want latency, latency-concurrent or nothing", only)
	}
	// Side by side at the same time, each side has an etcd of its own with
	// the same data: on one etcd each side's puts would wake the other's
	// watcher too (cilium-watch watches all of cilium/state).
	var peerURL string
	var peerAdmin *clientv3.Client
	if concurrent {
		peerURL, _ = startEtcd(b, "peer")
		peerAdmin = etcdClient(b, peerURL)
		if err := full.Write(ctx, peerAdmin); err != nil {
			b.Fatal(err)
		}
	}
	var bin binary
	binWhy := "BENCH_PEER_ONLY=latency"
	if !latencyOnly {
		bin, binWhy = setupBinary(b, useBPF)
	}
	side := "agent binary"
	if binWhy != "" {
		side = "in-process"
		b.Logf("agent binary side skipped (cold sync and memory of the in-process control plane only): %s", binWhy)
	}
	var ciliumBase ciliumSync
	if cilium != "" && !latencyOnly {
		ciliumBase = runCiliumSync(b, cilium, fullURL, "cilium/empty", etcdPID)
	}
	n := float64(full.Nodes + full.IPs + full.Identities)
	var p50s, p99s []float64 // the latency ratios of every round
	b.ResetTimer()
	for r := range rounds {
		var c ciliumSync
		var cl ciliumLatency
		ciliumSide := func() {
			if cilium == "" {
				return
			}
			if !latencyOnly {
				c = runCiliumSync(b, cilium, fullURL, "cilium/state", etcdPID)
			}
			cl = runCiliumLatency(b, cilium, fullURL)
			cleanPrefix(b, admin, "cilium/state/lat-")
		}
		if r%2 == 0 && !concurrent {
			ciliumSide()
		}
		var br binaryRun
		if binWhy == "" {
			br = runBinary(b, bin, fullURL, emptyURL, etcdPID, r == 0)
		}
		var alongside func() <-chan struct{}
		peer := ciliumBeside{bin: cilium, url: peerURL}
		if concurrent {
			alongside = peer.start
		}
		o := runOurs(b, fullURL, emptyURL, etcdPID, useBPF, r == 0 && !latencyOnly, alongside)
		if concurrent {
			cl = peer.result(b)
			cleanPrefix(b, peerAdmin, "cilium/state/lat-")
		}
		cleanPrefix(b, admin, wire.IPPrefix+"10.250.")
		if r%2 == 1 && !concurrent {
			ciliumSide()
		}
		if binWhy == "" {
			b.Logf("round %d, load %s | agent binary (ebpf): status synced %v, programmed %v (the agent's programmed_at; its own sync_duration %v; pinned maps counted complete afterwards in %v), trimmed %v; RSS %.0f B/entry, heap %.0f B/entry over the baseline (RSS %d MB, heap %d MB)",
				r+1, br.load, br.ready.Round(time.Millisecond), br.programmed.Round(time.Millisecond), br.agentSync.Round(time.Millisecond), br.check.Round(time.Millisecond),
				br.trimmed.Round(time.Millisecond), float64(br.rss)/n, float64(br.heap)/n, br.rss0>>20, br.heap0>>20)
			b.Logf("round %d | agent binary: CPU config write → programmed seen %v, etcd's %v; polling: %d status calls every %v, this process's CPU %v",
				r+1, br.cpu, br.etcdCPU, br.statusPolls, pollEvery, br.benchCPU)
			b.Logf("round %d | agent binary: of the RSS growth, freed heap not returned to the OS %.0f B/entry, runtime memory beside the heap %.0f B/entry (over the baseline's %d and %d MB)",
				r+1, float64(br.unreturned)/n, float64(br.runtimeSys)/n, br.unreturned0>>20, br.runtimeSys0>>20)
			if r == 0 {
				b.Logf("round 1 | one status call on the idle agent: %v of the agent's CPU, %v of this process's (%d calls)", br.statusAgentCPU, br.statusBenchCPU, statusCostCalls)
			}
		}
		b.Logf("round %d, load %s | in-process control plane (%s): sync %v, RSS %.0f B/entry, heap %.0f B/entry, put→map p50 %v p99 %v at %.0f puts/s (the put RPC itself p50 %v p99 %v; the Apply that wrote the entry p50 %v p99 %v; %d GC cycles, %d batches, %d steps inline meanwhile)",
			r+1, o.load, o.datapath, o.sync.Round(time.Millisecond), float64(o.rss)/n, float64(o.heap)/n, o.p50, o.p99, o.rate, o.rpc50, o.rpc99, o.write50, o.write99, o.gcs, o.batches, o.inline)
		b.Logf("round %d | in-process: CPU during the sync %v, etcd's %v", r+1, o.cpu, o.etcdCPU)
		// The figures of ours: the binary's cold sync and memory when it
		// ran, the in-process control plane's latency.
		sync, rss, heap := o.sync, float64(o.rss)/n, float64(o.heap)/n
		if binWhy == "" {
			sync, rss, heap = br.programmed, float64(br.rss)/n, float64(br.heap)/n
		}
		if cilium != "" {
			p50s = append(p50s, o.p50.Seconds()/cl.p50.Seconds())
			p99s = append(p99s, o.p99.Seconds()/cl.p99.Seconds())
		}
		if cilium != "" && latencyOnly {
			b.Logf("round %d | latency, put → map (ours) / put → observer (cilium): p50 %v / %v %.2f, p99 %v / %v %.2f at %.0f / ≈%.0f puts/s",
				r+1, o.p50, cl.p50, p50s[r], o.p99, cl.p99, p99s[r], o.rate, cl.rate)
			if concurrent {
				b.Logf("round %d | CPU of each process per put meanwhile (its writer, its watch, gRPC and the Go runtime): ours %v, cilium-watch's %v",
					r+1, o.putCPU/time.Duration(o.puts), cl.cpu/latencyPuts)
			}
			if r == rounds-1 {
				b.ReportMetric(p50s[r], "p50-ratio")
				b.ReportMetric(p99s[r], "p99-ratio")
			}
		}
		if cilium != "" && !latencyOnly {
			crss, cheap := float64(c.rss-ciliumBase.rss)/n, float64(c.heap-ciliumBase.heap)/n
			b.Logf("round %d | cilium: sync %v (%d entries), RSS %.0f B/entry, heap %.0f B/entry, put→observer p50 %v p99 %v at ≈%.0f puts/s",
				r+1, c.sync.Round(time.Millisecond), c.entries, crss, cheap, cl.p50, cl.p99, cl.rate)
			b.Logf("round %d | cilium: CPU of the process (start to exit) %v, etcd's during it %v", r+1, c.cpu, c.etcdCPU)
			b.Logf("round %d | ratios ours/cilium (sync, RSS, heap: %s; p50, p99: in-process): sync %.2f, RSS %.2f, heap %.2f, p50 %.2f, p99 %.2f; in-process sync %.2f",
				r+1, side, sync.Seconds()/c.sync.Seconds(), rss/crss, heap/cheap,
				o.p50.Seconds()/cl.p50.Seconds(), o.p99.Seconds()/cl.p99.Seconds(), o.sync.Seconds()/c.sync.Seconds())
			if r == rounds-1 {
				b.ReportMetric(sync.Seconds()/c.sync.Seconds(), "sync-ratio")
				b.ReportMetric(rss/crss, "rss-ratio")
				b.ReportMetric(o.p50.Seconds()/cl.p50.Seconds(), "p50-ratio")
				b.ReportMetric(o.p99.Seconds()/cl.p99.Seconds(), "p99-ratio")
			}
		}
		if r == rounds-1 {
			b.ReportMetric(sync.Seconds(), "s-sync")
			b.ReportMetric(rss, "rss-B/entry")
			b.ReportMetric(heap, "heap-B/entry")
		}
	}
	if len(p50s) > 0 {
		b.Logf("latency ratios ours/cilium over %d rounds: p50 median %.2f (%.2f–%.2f), p99 median %.2f (%.2f–%.2f)", len(p50s),
			median(p50s), slices.Min(p50s), slices.Max(p50s), median(p99s), slices.Min(p99s), slices.Max(p99s))
		b.ReportMetric(median(p50s), "p50-ratio-median")
		b.ReportMetric(median(p99s), "p99-ratio-median")
	}
}

// median returns the median of xs (the mean of the middle two for an even
// count); xs is sorted in place.
func median(xs []float64) float64 {
	slices.Sort(xs)
	m := len(xs) / 2
	if len(xs)%2 == 0 {
		return (xs[m-1] + xs[m]) / 2
	}
	return xs[m]
}

func etcdClient(tb testing.TB, url string) *clientv3.Client {
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{url}, DialTimeout: 5 * time.Second, MaxCallRecvMsgSize: 256 << 20})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { c.Close() })
	return c
}

func cleanPrefix(tb testing.TB, c *clientv3.Client, prefix string) {
	if _, err := c.Delete(context.Background(), prefix, clientv3.WithPrefix()); err != nil {
		tb.Fatal(err)
	}
}

type ours struct {
	datapath  string
	sync      time.Duration
	rss, heap int64 // growth over the empty-remote baseline
	p50, p99  time.Duration
	// rpc50 and rpc99 are the latency of the puts' own RPCs (put →
	// etcd's answer): what etcd and the machine take, beside put → map.
	rpc50, rpc99 time.Duration
	// write50 and write99: of put → map, the Apply that wrote the entry.
	write50, write99 time.Duration
	gcs              uint32 // GC cycles of this process during the puts
	// puts and putCPU: how many puts were timed, and this process's CPU
	// time over them.
	puts   int
	putCPU time.Duration
	// batches and inline: the reconciler's batches during the puts, and
	// how many of those steps the watch goroutine took itself.
	batches, inline uint64
	rate            float64
	load            string
	// CPU time of this process and of the etcd child during the sync.
	cpu, etcdCPU time.Duration
}

// runOurs starts the agent's control plane with the empty remote, takes
// the baseline, adds the full remote and times it until every tunnel and
// ipcache entry is programmed; then times put → map.
//
// alongside, when set, is called once the sync and memory are measured: it
// starts the peer's puts and returns a channel closed when they are done;
// ours run beside them until then.
func runOurs(b *testing.B, fullURL, emptyURL string, etcdPID int, useBPF, profile bool, alongside func() <-chan struct{}) ours {
	o := ours{datapath: "memory", load: hostload.Average()}
	var w datapath.Writer = memory.New()
	if useBPF {
		o.datapath = "ebpf"
		dp, err := bpf.Open(bpf.Config{PinDir: "/run/clustermesh-test/bench-peer-" + netnstest.RandomID(), CTEntries: 65536}, quiet)
		if err != nil {
			b.Fatal(err)
		}
		defer func() {
			if err := dp.Uninstall(); err != nil {
				b.Error(err)
			}
		}()
		bw, err := bpf.NewWriter(dp, quiet)
		if err != nil {
			b.Fatal(err)
		}
		w = bw
	}
	rec := newRecorder(w)
	dir := b.TempDir()
	writeConfig(b, dir, empty.Cluster, emptyURL)
	cp := agenttest.Start(agenttest.Config{Dir: dir, ClusterName: "c1", ClusterID: 1, Writer: rec}, quiet)
	defer cp.Stop()
	waitFor(b, time.Minute, "empty remote ready", cp.Ready)
	// What earlier rounds freed goes back to the OS, else this round's
	// growth would reuse it unseen in RSS.
	debug.FreeOSMemory()
	heap0, rss0 := procmem.HeapInuse(), procmem.RSS()
	trims0 := cp.Trims()

	if path := os.Getenv("BENCH_CPUPROFILE"); path != "" && profile { // the cold sync only
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		defer pprof.StopCPUProfile() // stopped below; a second stop is a no-op
	}
	start, cpu0, etcd0 := time.Now(), procmem.CPU(0), procmem.CPU(etcdPID)
	writeConfig(b, dir, full.Cluster, fullURL)
	waitFor(b, 5*time.Minute, "cold sync", func() bool {
		t, ip, _ := rec.counts()
		return t >= full.Nodes && ip >= full.IPs && cp.Ready()
	})
	o.sync = time.Since(start)
	o.cpu, o.etcdCPU = procmem.CPU(0)-cpu0, procmem.CPU(etcdPID)-etcd0
	pprof.StopCPUProfile()
	// The reconciler returns the sync's freed memory to the OS after the
	// flush that follows the remote's sync (dpsync.Release): memory is
	// measured after that.
	waitFor(b, time.Minute, "memory returned after the sync", func() bool { return cp.Trims() > trims0 })
	o.heap, o.rss = int64(procmem.HeapInuse())-int64(heap0), int64(procmem.RSS())-int64(rss0)
	if profile {
		path := os.Getenv("BENCH_HEAPPROFILE")
		if path == "" {
			path = filepath.Join(b.TempDir(), "heap.pprof")
		}
		if err := procmem.WriteHeapProfile(path); err != nil {
			b.Fatal(err)
		}
		out, err := exec.Command("go", "tool", "pprof", "-top", "-nodecount=14", "-sample_index=inuse_space", os.Args[0], path).CombinedOutput()
		if err != nil {
			b.Logf("pprof: %v", err)
		}
		b.Logf("heap profile of the synced agent (%s):\n%s", path, out)
	}

	// put → map: one synchronous put after the other, paced like
	// cilium-watch's latency mode; beside a peer (alongside), until the
	// peer is done.
	c := etcdClient(b, fullURL)
	var sent []time.Time
	var rpc []time.Duration
	gc0 := numGC()
	batches0, inline0 := cp.Batches()
	var peerDone <-chan struct{}
	if alongside != nil {
		peerDone = alongside()
	}
	next := pacer(alongside != nil)
	begin, putCPU0 := time.Now(), procmem.CPU(0)
puts:
	for i := 0; ; i++ {
		select {
		case <-peerDone: // nil without a peer: never
			break puts
		default:
		}
		if alongside == nil && i == latencyPuts {
			break
		}
		if i == 1<<16 { // the addresses of latencyNet
			b.Fatal("the peer still putting after 65,536 puts of ours")
		}
		next()
		ip := netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)})
		v, err := full.IPCacheValue(i, ip)
		if err != nil {
			b.Fatal(err)
		}
		sent = append(sent, time.Now())
		if _, err := c.Put(context.Background(), wire.IPKey(ip), v); err != nil {
			b.Fatal(err)
		}
		rpc = append(rpc, time.Since(sent[i]))
	}
	puts := len(sent)
	o.puts, o.putCPU = puts, procmem.CPU(0)-putCPU0
	o.gcs = numGC() - gc0
	o.rate = float64(puts) / time.Since(begin).Seconds()
	waitFor(b, 30*time.Second, "latency puts programmed", func() bool { _, _, n := rec.counts(); return n >= puts })
	batches1, inline1 := cp.Batches()
	o.batches, o.inline = batches1-batches0, inline1-inline0
	lat := make([]time.Duration, puts)
	for i := range puts {
		t, _ := rec.appliedAt(netip.AddrFrom4([4]byte{10, 250, byte(i >> 8), byte(i)}))
		lat[i] = t.Sub(sent[i])
	}
	slices.Sort(lat)
	o.p50, o.p99 = lat[len(lat)/2], lat[len(lat)*99/100]
	slices.Sort(rpc)
	o.rpc50, o.rpc99 = rpc[len(rpc)/2], rpc[len(rpc)*99/100]
	wt := rec.writeTimes()
	o.write50, o.write99 = wt[len(wt)/2], wt[len(wt)*99/100]
	return o
}

func writeConfig(tb testing.TB, dir, cluster, url string) {
	// BENCH_PEER_LIST_PAGE_SIZE: the agent's list page size (0: the default).
	page, _ := strconv.ParseInt(os.Getenv("BENCH_PEER_LIST_PAGE_SIZE"), 10, 64)
	data, err := json.Marshal(kvstore.Config{Endpoints: []string{url}, ListPageSize: page})
	if err != nil {
		tb.Fatal(err)
	}
	tmp := filepath.Join(dir, "."+cluster+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, cluster)); err != nil {
		tb.Fatal(err)
	}
}

// waitFor polls cond every 2 ms (the cold sync takes seconds; the error is
// below the noise of this shared machine).
func waitFor(tb testing.TB, limit time.Duration, what string, cond func() bool) {
	pollUntil(tb, limit, 2*time.Millisecond, what, cond)
}

// pollUntil calls cond every interval until it holds; it fails the
// benchmark after limit.
func pollUntil(tb testing.TB, limit, every time.Duration, what string, cond func() bool) {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not done after %v", what, limit)
		}
		time.Sleep(every)
	}
}

// ciliumBin finds cilium-watch, or says why not.
func ciliumBin() (string, string) {
	path := os.Getenv("CILIUM_WATCH_BIN")
	if path == "" {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			return "", fmt.Sprintf("go env GOMOD: %v", err)
		}
		path = filepath.Join(filepath.Dir(strings.TrimSpace(string(out))), "bin", "cilium-watch")
	}
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Sprintf("no cilium-watch binary (%v); build it as ../shared/tools/cilium-watch/README says, or set CILIUM_WATCH_BIN", err)
	}
	return path, ""
}

type ciliumSync struct {
	sync      time.Duration
	entries   int
	rss, heap int64 // bytes
	// CPU time of the cilium-watch process (start to exit) and of the
	// etcd child while it ran.
	cpu, etcdCPU time.Duration
}

var (
	syncRE    = regexp.MustCompile(`synced (\d+) entries in (\S+); RSS (\d+) kB; heap in use (\d+) MiB`)
	latencyRE = regexp.MustCompile(`p50 (\S+) p99 (\S+) max`)
)

// runCilium runs cilium-watch and returns its output, wall time and CPU time.
func runCilium(tb testing.TB, bin string, args ...string) (string, time.Duration, time.Duration) {
	start := time.Now()
	cmd := exec.Command(bin, args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		tb.Fatalf("cilium-watch %v: %v\n%s", args, err, out)
	}
	return string(out), time.Since(start), cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
}

// runCiliumSync syncs prefix: "cilium/state" holds the data set, an
// empty prefix is the baseline (connected and synced, no entries).
// It also measures the CPU time of the process and of the etcd child
// (etcdPID) while it ran.
func runCiliumSync(tb testing.TB, bin, url, prefix string, etcdPID int) ciliumSync {
	etcd0 := procmem.CPU(etcdPID)
	out, _, cpu := runCilium(tb, bin, "--etcd", url, "--prefix", prefix, "--mode", "sync", "--opts", "etcd.limit=10000")
	c := parseCiliumSync(tb, out)
	c.cpu, c.etcdCPU = cpu, procmem.CPU(etcdPID)-etcd0
	return c
}

func parseCiliumSync(tb testing.TB, out string) ciliumSync {
	m := syncRE.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("cilium-watch sync output not understood:\n%s", out)
	}
	var c ciliumSync
	c.entries, _ = strconv.Atoi(m[1])
	c.sync, _ = time.ParseDuration(m[2])
	kb, _ := strconv.ParseInt(m[3], 10, 64)
	mib, _ := strconv.ParseInt(m[4], 10, 64)
	c.rss, c.heap = kb<<10, mib<<20
	return c
}

type ciliumLatency struct {
	p50, p99 time.Duration
	rate     float64 // puts/s reached (wall time of the put phase)
	// cpu: the process's CPU time over its put phase, from its sync line
	// to its result line (latency-concurrent only).
	cpu time.Duration
}

func runCiliumLatency(tb testing.TB, bin, url string) ciliumLatency {
	out, total, _ := runCilium(tb, bin, ciliumLatencyArgs(url)...)
	s := parseCiliumSync(tb, out)
	l := parseCiliumLatency(tb, out)
	// The tool does not print its put rate: the time after its sync,
	// less the last event's wait (at most its p99), bounds it from below.
	l.rate = latencyPuts / (total - s.sync).Seconds()
	return l
}

// ciliumLatencyArgs: cilium-watch's latency mode on the data set at url.
func ciliumLatencyArgs(url string) []string {
	return []string{"--etcd", url, "--prefix", "cilium/state", "--mode", "latency",
		"--n", strconv.Itoa(latencyPuts), "--rate", strconv.Itoa(latencyRate), "--opts", "etcd.limit=10000"}
}

// parseCiliumLatency reads p50 and p99 from cilium-watch's latency mode.
func parseCiliumLatency(tb testing.TB, out string) ciliumLatency {
	m := latencyRE.FindStringSubmatch(out)
	if m == nil {
		tb.Fatalf("cilium-watch latency output not understood:\n%s", out)
	}
	var l ciliumLatency
	l.p50, _ = time.ParseDuration(m[1])
	l.p99, _ = time.ParseDuration(m[2])
	return l
}

// ciliumBeside runs cilium-watch's latency mode at the same time as our
// puts, on its own etcd (url) of the same data: both sides' puts meet the
// same load of the machine at the same moment, which the interleaved
// rounds, seconds apart, do not (bench/README.md, "Session 10: the latency
// timed at the same time").
type ciliumBeside struct {
	bin, url string

	// Written by the goroutine that reads the output, read after done.
	out, stderr      strings.Builder
	synced, exited   time.Time
	waitErr, scanErr error
	done             chan struct{}
	cpu0, cpu1       time.Duration // the process's CPU at its sync and its result lines
}

// start runs cilium-watch, waits for its sync (its puts follow at once)
// and returns a channel closed when it has exited.
func (c *ciliumBeside) start() <-chan struct{} {
	c.done = make(chan struct{})
	cmd := exec.Command(c.bin, ciliumLatencyArgs(c.url)...)
	cmd.Stderr = &c.stderr // complete once Wait has returned
	pipe, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		c.waitErr = err
		close(c.done)
		return c.done
	}
	synced := make(chan struct{})
	pid := cmd.Process.Pid
	go func() {
		defer close(c.done)
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			c.out.WriteString(sc.Text() + "\n")
			if latencyRE.MatchString(sc.Text()) {
				c.cpu1 = procmem.CPU(pid)
			}
			if c.synced.IsZero() && syncRE.MatchString(sc.Text()) {
				c.cpu0 = procmem.CPU(pid)
				c.synced = time.Now()
				close(synced)
			}
		}
		c.scanErr = sc.Err()
		c.waitErr = cmd.Wait()
		c.exited = time.Now()
	}()
	select {
	case <-synced:
	case <-c.done: // failed: result says how
	case <-time.After(2 * time.Minute):
		_ = cmd.Process.Kill() // result says it never synced
		<-c.done
	}
	return c.done
}

// result waits for cilium-watch to exit and parses its latency; its put
// rate is over the time from its sync to its exit.
func (c *ciliumBeside) result(tb testing.TB) ciliumLatency {
	<-c.done
	if c.waitErr != nil || c.scanErr != nil || c.synced.IsZero() {
		tb.Fatalf("cilium-watch latency beside ours (synced: %v): %v %v\n%s%s", !c.synced.IsZero(), c.waitErr, c.scanErr, c.out.String(), c.stderr.String())
	}
	l := parseCiliumLatency(tb, c.out.String())
	l.cpu = c.cpu1 - c.cpu0
	l.rate = latencyPuts / c.exited.Sub(c.synced).Seconds()
	return l
}

// pacer returns a function that waits for the next put: a ticker of
// 1/latencyRate as cilium-watch's; beside its ticker (drift), one slower
// by 1/latencyPuts of that, so that over the run our puts meet its puts at
// every phase, not at one fixed offset, and like its puts never follow
// each other back to back.
func pacer(drift bool) func() {
	gap := time.Second / latencyRate
	if drift {
		gap += gap / latencyPuts
	}
	tick := time.NewTicker(gap)
	return func() { <-tick.C }
}

// numGC is the number of completed GC cycles of this process.
func numGC() uint32 {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.NumGC
}
