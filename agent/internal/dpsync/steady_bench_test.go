package dpsync

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// signalWriter passes batches to a datapath.Writer and says on applied when
// one has been applied.
type signalWriter struct {
	datapath.Writer
	applied chan struct{} // buffered(1)
}

func (w *signalWriter) Apply(ctx context.Context, b datapath.Batch) error {
	err := w.Writer.Apply(ctx, b)
	select {
	case w.applied <- struct{}{}:
	default:
	}
	return err
}

// BenchmarkSteadyIPCacheChange is the agent's own part of a steady-state
// remote ipcache change on the eBPF datapath (pinned maps, as root): one
// claim handed in as the remote-cluster observer does, and the batch of one
// entry built and written. "flush": on the calling goroutine (the CPU and
// allocations of dpsync and the eBPF writer); "run": through the reconciler's
// worker (Run), timed until the write returned (the goroutine hand-off
// included); "inline": the same with the cluster steady, so that the caller
// applies the change itself (inline.go); p50 and p99 of those are reported.
func BenchmarkSteadyIPCacheChange(b *testing.B) {
	testenv.RequireRoot(b)
	dp := bpf.OpenForTest(b, bpf.Config{CTEntries: 16384})
	bw, err := bpf.NewWriter(dp, discard)
	if err != nil {
		b.Fatal(err)
	}
	entry := func(i int) datapath.IPCacheEntry {
		ip := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
		return datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ip, 32), Identity: 2<<16 | 256 + uint32(i%1000),
			TunnelEndpoint: netip.AddrFrom4([4]byte{192, 168, byte(i >> 8), byte(i)}), ClusterID: 2}
	}
	ctx := context.Background()
	b.Run("flush", func(b *testing.B) {
		r := New(Config{ClusterID: 1}, bw, discard, clock.RealClock{})
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			r.UpsertIPCache(entry(i % 4096))
			if err := r.Flush(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
	for _, mode := range []string{"run", "inline"} {
		b.Run(mode, func(b *testing.B) { benchThroughRun(b, bw, entry, mode == "inline") })
	}
}

// benchThroughRun is BenchmarkSteadyIPCacheChange through Run; steady:
// the entries' cluster is steady.
func benchThroughRun(b *testing.B, bw datapath.Writer, entry func(int) datapath.IPCacheEntry, steady bool) {
	w := &signalWriter{Writer: bw, applied: make(chan struct{}, 1)}
	r := New(Config{ClusterID: 1}, w, discard, clock.RealClock{})
	r.Steady(2, steady)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()
	lat := make([]time.Duration, 0, 4096)
	for i := 0; b.Loop(); i++ {
		start := time.Now()
		r.UpsertIPCache(entry(i % 4096))
		<-w.applied
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
	b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
}
