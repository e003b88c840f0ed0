package dpsync

import (
	"runtime/debug"
	"time"
)

// A cold sync of a large remote grows the heap from a few megabytes to
// ≈ 250 bytes per entry, nearly all of it live: at the default GOGC the
// collector runs at every doubling and marks what is still being built
// (≈ 0.2 s of CPU for 300,000 entries, bench/README.md). While a large
// initial listing is synced the reconciler lets the heap grow further
// between collections (Config.SyncGCPercent) and puts the previous setting
// back before it returns the sync's memory to the operating system
// (trimAfterSync), so the resident memory after the sync is what it was;
// only the peak during the sync is higher (for 300,000 entries at 400:
// ≈ 0.2 s less CPU, a peak RSS higher by 70–190 MB; off by default, since
// the peak grows with the remote and the agent's pod has a memory limit).
// The GC percent is the process's:
// the reconciler is the part that knows when a sync starts (Reserve) and
// ends (Release).

// syncGCMin is the smallest listing (tunnels and ipcache entries) for
// which the GC is relaxed: below it the collections cost little.
const syncGCMin = 10000

// syncGCMax bounds how long the GC stays relaxed when no sync ends (a
// listing that keeps failing): the first flush after it puts it back.
const syncGCMax = 30 * time.Second

// relaxGCLocked raises the GC percent for a listing of n entries, unless
// it is raised already, the listing is small, or the process runs with a
// GC percent at least as high (or GOGC=off).
func (r *Reconciler) relaxGCLocked(n int) {
	if r.cfg.SyncGCPercent <= 0 || n < syncGCMin {
		return
	}
	r.gcSince = r.clock.Now()
	if r.gcRelaxed {
		return
	}
	prev := debug.SetGCPercent(r.cfg.SyncGCPercent)
	if prev < 0 || prev >= r.cfg.SyncGCPercent {
		debug.SetGCPercent(prev)
		return
	}
	r.gcRelaxed, r.gcPrev = true, prev
}

// restoreGCLocked puts the GC percent back (after a sync, or after
// syncGCMax without one when expired).
func (r *Reconciler) restoreGCLocked(expired bool) {
	if !r.gcRelaxed || (expired && r.clock.Since(r.gcSince) < syncGCMax) {
		return
	}
	debug.SetGCPercent(r.gcPrev)
	r.gcRelaxed = false
}
