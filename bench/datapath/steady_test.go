package datapath

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// BenchmarkIPCacheSteady times the steady-state write of one remote
// ipcache change: 250,000 entries programmed first (the DESIGN §7 data
// set), then 2,000 new host entries, one Apply each, one per millisecond
// (the rate of bench/peer's latency part), so that each finds the code
// and the kernel's trie cache-cold as an agent's watch does. Reported:
// the wall time of one Apply, p50, p90 and p99 in µs.
func BenchmarkIPCacheSteady(b *testing.B) {
	const n, changes = 250000, 2000
	_, w := openDatapath(b, "steady")
	ctx := context.Background()
	if err := w.Apply(ctx, datapath.Batch{UpsertIPCache: ipcacheEntries(n, 0)}); err != nil {
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, changes)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for i := 0; b.Loop(); i++ {
		lat = lat[:0]
		for j := range changes {
			<-tick.C
			ip := netip.AddrFrom4([4]byte{10, 250 - byte(i%8), byte(j >> 8), byte(j)})
			e := datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ip, 32), Identity: 3<<16 | 300,
				TunnelEndpoint: netip.AddrFrom4([4]byte{172, 30, byte(j >> 8), byte(j)}), ClusterID: 3}
			start := time.Now()
			if err := w.Apply(ctx, datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{e}}); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(start))
		}
	}
	slices.Sort(lat)
	us := func(q int) float64 { return float64(lat[len(lat)*q/100].Nanoseconds()) / 1e3 }
	b.ReportMetric(us(50), "p50-µs")
	b.ReportMetric(us(90), "p90-µs")
	b.ReportMetric(us(99), "p99-µs")
}
