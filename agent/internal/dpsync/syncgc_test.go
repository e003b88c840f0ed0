package dpsync

import (
	"context"
	"math"
	"runtime/debug"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// gcPercent returns the process's GC percent.
func gcPercent() int {
	p := debug.SetGCPercent(100)
	debug.SetGCPercent(p)
	return p
}

// The GC percent is raised, under a memory limit, while a large listing
// syncs and both are put back by the flush after the sync's Release (or,
// without one, after syncGCMax); small listings, a disabled setting and a
// higher GOGC leave them alone, and a lower memory limit is kept.
func TestSyncGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	const low = 64 << 20 // a GOMEMLIMIT below the relaxed GC's
	for _, tc := range []struct {
		name        string
		setting     int // Config.SyncGCPercent
		gogc        int // the process's GC percent before
		listing     int
		release     bool          // a source synced before the flush
		wait        time.Duration // clock advance before the flush
		during, end int           // GC percent after Reserve, after the flush
		limit       int64         // the memory limit before (0: none)
		limited     bool          // a lower memory limit holds after Reserve
	}{
		{"large listing, synced", 400, 100, 275000, true, 0, 400, 100, 0, true},
		{"large listing, not synced yet", 400, 100, 275000, false, time.Second, 400, 400, 0, true},
		{"large listing that never syncs: put back after syncGCMax", 400, 100, 275000, false, syncGCMax + time.Second, 400, 100, 0, true},
		{"small listing", 400, 100, syncGCMin - 1, true, 0, 100, 100, 0, false},
		{"disabled", 0, 100, 275000, true, 0, 100, 100, 0, false},
		{"a higher GOGC is kept", 400, 800, 275000, true, 0, 800, 800, 0, false},
		{"GOGC=off is kept", 400, -1, 275000, true, 0, -1, -1, 0, false},
		{"a lower GOMEMLIMIT is kept", 400, 100, 275000, true, 0, 400, 100, low, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(tc.gogc)
			before := int64(math.MaxInt64)
			if tc.limit > 0 {
				before = tc.limit
			}
			debug.SetMemoryLimit(before)
			clk := clocktesting.NewFakeClock(time.Now())
			r := New(Config{ClusterID: 1, SyncGCPercent: tc.setting}, memory.New(), discard, clk)
			r.Reserve(tc.listing/10, tc.listing-tc.listing/10)
			if got := gcPercent(); got != tc.during {
				t.Fatalf("after Reserve: GC percent %d, want %d", got, tc.during)
			}
			if got := debug.SetMemoryLimit(-1); (got < before) != tc.limited {
				t.Fatalf("after Reserve: memory limit %d (before %d), want a lower one: %v", got, before, tc.limited)
			}
			if tc.release {
				r.Release(2)
			}
			clk.Step(tc.wait)
			if err := r.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			r.trimAfterSync()
			if got := gcPercent(); got != tc.end {
				t.Fatalf("after the flush: GC percent %d, want %d", got, tc.end)
			}
			if got, relaxed := debug.SetMemoryLimit(-1), tc.end != tc.gogc; (got < before) != (relaxed && tc.limited) {
				t.Fatalf("after the flush: memory limit %d (before %d)", got, before)
			}
		})
	}
}

// A remote's kinds are listed one after the other: each listing reserved
// while the GC is relaxed adds its entries to the memory limit, so the
// limit set for a first small listing (the nodes) does not hold the larger
// one that follows (the ipcache) to it; the GC percent stays relaxed once.
func TestSyncGCLimitGrowsWithEachListing(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(math.MaxInt64))
	r := New(Config{ClusterID: 1, SyncGCPercent: 400}, memory.New(), discard, clocktesting.NewFakeClock(time.Now()))
	var limits []int64
	for _, n := range []struct{ tunnels, ipcache int }{{25000, 0}, {0, 250000}, {0, syncGCMin - 1}} {
		r.Reserve(n.tunnels, n.ipcache)
		if got := gcPercent(); got != 400 {
			t.Fatalf("after Reserve(%d, %d): GC percent %d, want 400", n.tunnels, n.ipcache, got)
		}
		limits = append(limits, debug.SetMemoryLimit(-1))
	}
	base := r.gcBase
	for i, want := range []int64{max(2*base, base+25000*syncGCBytes), base + 275000*syncGCBytes, base + (275000+syncGCMin-1)*syncGCBytes} {
		if limits[i] != want {
			t.Errorf("memory limit after listing %d: %d, want %d (memory in use at the start %d)", i+1, limits[i], want, base)
		}
	}
	r.Release(2)
	if err := r.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	r.trimAfterSync()
	if got, limit := gcPercent(), debug.SetMemoryLimit(-1); got != 100 || limit != math.MaxInt64 {
		t.Fatalf("after the sync: GC percent %d and memory limit %d, want 100 and none", got, limit)
	}
}
