package dpsync

import "context"

// Steady says whether cluster id is in steady state: its sources have
// delivered their full state and hand in one change at a time (a remote
// whose session has listed every kind), or not (the default; a session
// that lists again, a remote being drained). A steady cluster's tunnel or
// ipcache change that finds the reconciler idle is applied by the caller
// itself, as Run's worker would apply it, without the hand-off to the
// worker (a wakeup of another goroutine, and often of another thread, per
// change; bench/README.md, "The steady-state event path"). A listing's
// changes are left to the worker, which coalesces them into large batches.
func (r *Reconciler) Steady(id uint32, steady bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if steady {
		r.steady[id] = true
	} else {
		delete(r.steady, id)
	}
}

// inlineLocked reports whether the caller, about to hand in a change of
// cluster id, applies it itself: id is steady, Run runs without a batch
// window, the worker is idle (not kicked, no batch being built or applied)
// and has nothing left to do (nothing dirty, so no retry pending; no
// AfterFlush waiting; no trim). It then returns Run's context, and the
// caller holds r.step: no other batch is built until the caller's is
// applied (handOffUnlock).
func (r *Reconciler) inlineLocked(id uint32) (context.Context, bool) {
	if !r.steady[id] || r.runCtx == nil || r.cfg.BatchWindow > 0 || len(r.kick) > 0 ||
		r.dirtyLocked() || len(r.waiters) > 0 || r.trim {
		return nil, false
	}
	// Never waits (r.step is taken before r.mu elsewhere): false while
	// the worker or another caller builds or applies a batch.
	if !r.step.TryLock() {
		return nil, false
	}
	return r.runCtx, true
}

// handOffUnlock ends a change handed in under r.mu and unlocks it: the
// worker is kicked, or, inline (inlineLocked), the caller takes the
// worker's step itself: the upstream's changes (the node trust of a node
// the change names first) and then everything dirty, as one batch. A kick
// that arrives meanwhile is left to the worker (at worst it finds nothing
// to do). A failed inline apply leaves its keys dirty (flushLocked) and
// kicks the worker, which retries them with backoff.
func (r *Reconciler) handOffUnlock(ctx context.Context, inline bool) {
	if !inline {
		r.kickLocked()
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	if r.up != nil {
		r.up.Flush()
	}
	err := r.flushLocked(ctx)
	r.step.Unlock()
	r.mu.Lock()
	r.stats.Inline++
	if err != nil {
		r.log.Debug("inline datapath apply failed, the worker retries", "error", err)
		r.kickLocked()
	}
	r.mu.Unlock()
}
