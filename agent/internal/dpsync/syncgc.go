package dpsync

import (
	"math"
	"runtime/debug"
	"runtime/metrics"
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
// only the peak during the sync is higher. So that the peak stays near the
// one of the default GC, a soft memory limit (debug.SetMemoryLimit) of the
// memory at the start plus syncGCBytes per entry of every listing reserved
// since (at least twice the memory at the start) holds while the GC is
// relaxed: the collector runs less often while the heap is small against
// what the listing will hold, and as often as needed near the limit. The GC percent and limit
// are the process's: the reconciler is the part that knows when a sync
// starts (Reserve) and ends (Release).

// syncGCMin is the smallest listing (tunnels and ipcache entries) for
// which the GC is relaxed: below it the collections cost little.
const syncGCMin = 10000

// syncGCBytes is the memory per listed entry the relaxed GC may use above
// the memory at the start. A cold sync of 300,000 entries at the default
// GC peaked at 257–320 MB of RSS; under this limit at 266–280 MB (1024
// bytes: 303–352 MB, 512: 228–248 MB with more collections; bench/README.md).
const syncGCBytes = 640

// syncGCMax bounds how long the GC stays relaxed when no sync ends (a
// listing that keeps failing): the first flush after it puts it back.
const syncGCMax = 30 * time.Second

// relaxGCLocked raises the GC percent for a listing of n entries, unless
// it is raised already, the listing is small, or the process runs with a
// GC percent at least as high (or GOGC=off). While it is raised, every
// listing's entries add to the memory limit: a remote's kinds are listed
// one after the other (its nodes' 25,000 entries may come before its
// ipcache's 250,000), and a limit sized for the first listing alone would
// make the collector run at the limit, again and again, through the rest
// of the sync.
func (r *Reconciler) relaxGCLocked(n int) {
	if r.cfg.SyncGCPercent <= 0 || (n < syncGCMin && !r.gcRelaxed) {
		return
	}
	if n >= syncGCMin {
		r.gcSince = r.clock.Now()
	}
	if !r.gcRelaxed {
		prev := debug.SetGCPercent(r.cfg.SyncGCPercent)
		if prev < 0 || prev >= r.cfg.SyncGCPercent {
			debug.SetGCPercent(prev)
			return
		}
		r.gcRelaxed, r.gcPrev = true, prev
		r.gcBase, r.gcEntries = memoryInUse(), 0
		r.gcPrevLimit = debug.SetMemoryLimit(-1)
	}
	r.gcEntries += n
	if limit := max(2*r.gcBase, r.gcBase+int64(r.gcEntries)*syncGCBytes); r.gcPrevLimit > limit {
		debug.SetMemoryLimit(limit)
	}
}

// memoryInUse is the memory the runtime's memory limit counts.
func memoryInUse() int64 {
	s := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 || s[1].Value.Kind() != metrics.KindUint64 {
		return math.MaxInt64 / 4 // unknown: no limit of its own
	}
	return int64(s[0].Value.Uint64() - s[1].Value.Uint64())
}

// restoreGCLocked puts the GC percent back (after a sync, or after
// syncGCMax without one when expired).
func (r *Reconciler) restoreGCLocked(expired bool) {
	if !r.gcRelaxed || (expired && r.clock.Since(r.gcSince) < syncGCMax) {
		return
	}
	debug.SetGCPercent(r.gcPrev)
	debug.SetMemoryLimit(r.gcPrevLimit)
	r.gcRelaxed = false
}
