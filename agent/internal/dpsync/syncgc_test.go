package dpsync

import (
	"context"
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

// The GC percent is raised while a large listing syncs and put back by the
// flush after the sync's Release (or, without one, after syncGCMax); small
// listings, a disabled setting and a higher GOGC leave it alone.
func TestSyncGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		name        string
		setting     int // Config.SyncGCPercent
		gogc        int // the process's GC percent before
		listing     int
		release     bool          // a source synced before the flush
		wait        time.Duration // clock advance before the flush
		during, end int           // GC percent after Reserve, after the flush
	}{
		{"large listing, synced", 400, 100, 275000, true, 0, 400, 100},
		{"large listing, not synced yet", 400, 100, 275000, false, time.Second, 400, 400},
		{"large listing that never syncs: put back after syncGCMax", 400, 100, 275000, false, syncGCMax + time.Second, 400, 100},
		{"small listing", 400, 100, syncGCMin - 1, true, 0, 100, 100},
		{"disabled", 0, 100, 275000, true, 0, 100, 100},
		{"a higher GOGC is kept", 400, 800, 275000, true, 0, 800, 800},
		{"GOGC=off is kept", 400, -1, 275000, true, 0, -1, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(tc.gogc)
			clk := clocktesting.NewFakeClock(time.Now())
			r := New(Config{ClusterID: 1, SyncGCPercent: tc.setting}, memory.New(), discard, clk)
			r.Reserve(tc.listing/10, tc.listing-tc.listing/10)
			if got := gcPercent(); got != tc.during {
				t.Fatalf("after Reserve: GC percent %d, want %d", got, tc.during)
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
		})
	}
}
