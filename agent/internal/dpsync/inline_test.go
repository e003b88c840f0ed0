package dpsync

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// stepWriter applies batches to a memory datapath and records who applied
// each, from the call stack: Run's worker or a source inline. It fails the
// test when two Apply calls overlap, and can hold the worker's next Apply
// until the test releases it.
type stepWriter struct {
	*memory.Datapath
	t    *testing.T
	busy atomic.Bool

	mu      sync.Mutex
	by      []string         // per Apply: "worker" or "inline"
	batches []datapath.Batch // per Apply
	hold    chan struct{}    // non-nil: the worker's next Apply waits until it is closed
	held    chan struct{}    // closed when that Apply has started
	failN   int              // the next failN Apply calls fail
}

func newStepWriter(t *testing.T) *stepWriter { return &stepWriter{Datapath: memory.New(), t: t} }

// holdWorker makes the worker's next Apply wait, and returns a channel
// closed once it waits and a release func.
func (w *stepWriter) holdWorker() (held <-chan struct{}, release func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.hold, w.held = make(chan struct{}), make(chan struct{})
	hold := w.hold
	return w.held, func() { close(hold) }
}

func (w *stepWriter) Apply(ctx context.Context, b datapath.Batch) error {
	if !w.busy.CompareAndSwap(false, true) {
		w.t.Error("two batches applied at once")
	}
	defer w.busy.Store(false)
	by := appliedBy()
	w.mu.Lock()
	var hold chan struct{}
	if by == "worker" && w.hold != nil {
		hold = w.hold
		close(w.held)
		w.hold = nil
	}
	fail := w.failN > 0
	w.failN--
	w.by = append(w.by, by)
	w.batches = append(w.batches, b)
	w.mu.Unlock()
	if hold != nil {
		<-hold
	}
	if fail {
		return fmt.Errorf("injected failure")
	}
	return w.Datapath.Apply(ctx, b)
}

// applied returns who applied each batch so far.
func (w *stepWriter) applied() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.by)
}

// appliedBy says from the call stack whether Run's worker or a source
// (inline, handOffUnlock) calls Apply.
func appliedBy() string {
	pc := make([]uintptr, 64)
	frames := runtime.CallersFrames(pc[:runtime.Callers(2, pc)])
	for {
		f, more := frames.Next()
		switch {
		case strings.HasSuffix(f.Function, ".(*Reconciler).Run"):
			return "worker"
		case strings.HasSuffix(f.Function, ".(*Reconciler).handOffUnlock"):
			return "inline"
		}
		if !more {
			return "other"
		}
	}
}

// startRun runs r until the test ends and returns once Run is running.
func startRun(t *testing.T, r *Reconciler) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	testwait.Until(t, 10*time.Second, "Run started", func() (bool, string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		return r.runCtx != nil, "no runCtx"
	})
}

// programmed waits until p is programmed as want (ok false: absent).
func programmed(t *testing.T, w *stepWriter, p netip.Prefix, want datapath.IPCacheEntry, ok bool) {
	t.Helper()
	testwait.Until(t, 10*time.Second, fmt.Sprintf("%v programmed as %v (%v)", p, want, ok), func() (bool, string) {
		e, has := w.IPCache(p)
		return has == ok && (!ok || e == want), fmt.Sprintf("%v %v, applied by %v", e, has, w.applied())
	})
}

// TestInlineApply: a change of a steady cluster that finds the worker idle
// is applied by the caller before the call returns; every other change
// (a cluster not steady, or no longer, a batch window, something else
// dirty) is the worker's.
func TestInlineApply(t *testing.T) {
	p := pfx("10.2.0.5/32")
	for _, tc := range []struct {
		name   string
		cfg    Config
		steady []uint32 // steady clusters
		before func(r *Reconciler)
		change func(r *Reconciler)
		want   string
	}{
		{"steady upsert", Config{}, []uint32{2}, nil, func(r *Reconciler) { r.UpsertIPCache(ipc(p.String(), 100, 2)) }, "inline"},
		{"steady tunnel", Config{}, []uint32{2}, nil, func(r *Reconciler) {
			r.UpsertTunnel(datapath.TunnelEntry{CIDR: pfx("10.2.1.0/24"), NodeIP: netip.MustParseAddr("192.168.0.2"), ClusterID: 2})
		}, "inline"},
		{"not steady", Config{}, []uint32{3}, nil, func(r *Reconciler) { r.UpsertIPCache(ipc(p.String(), 100, 2)) }, "worker"},
		{"steady no longer", Config{}, []uint32{2}, func(r *Reconciler) { r.Steady(2, false) }, func(r *Reconciler) { r.UpsertIPCache(ipc(p.String(), 100, 2)) }, "worker"},
		{"batch window", Config{BatchWindow: time.Millisecond}, []uint32{2}, nil, func(r *Reconciler) { r.UpsertIPCache(ipc(p.String(), 100, 2)) }, "worker"},
		{"waiting for a flush", Config{}, []uint32{2}, func(r *Reconciler) {
			r.mu.Lock() // as AfterFlush, without its kick: the worker stays asleep
			r.waiters = append(r.waiters, flushWaiter{gen: r.built + 1, fn: func(time.Time) {}})
			r.mu.Unlock()
		}, func(r *Reconciler) { r.UpsertIPCache(ipc(p.String(), 100, 2)) }, "worker"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newStepWriter(t)
			r := New(tc.cfg, w, discard, clock.RealClock{})
			for _, id := range tc.steady {
				r.Steady(id, true)
			}
			startRun(t, r)
			if tc.before != nil {
				tc.before(r)
			}
			tc.change(r)
			if tc.want == "inline" {
				if got := w.applied(); !slices.Equal(got, []string{"inline"}) {
					t.Fatalf("applied by %v when the change returned, want [inline]", got)
				}
				return
			}
			r.mu.Lock()
			r.kickLocked() // the waiter's case: Run completes it now
			r.mu.Unlock()
			testwait.Until(t, 10*time.Second, "applied", func() (bool, string) { return len(w.applied()) > 0, "nothing" })
			if got := w.applied(); got[0] != tc.want {
				t.Fatalf("applied by %v, want %s first", got, tc.want)
			}
		})
	}
}

// TestInlineKeepsOrder: a change of one prefix that the worker is applying
// (its batch built, the write under way) and a later change of the same
// prefix by a now steady cluster: the later one must not be applied inline
// before the worker's write (it would then be overwritten by the older
// change), nor beside it; the datapath ends with the later change.
func TestInlineKeepsOrder(t *testing.T) {
	p := pfx("10.2.0.5/32")
	e1, e2 := ipc(p.String(), 100, 2), ipc(p.String(), 200, 2)
	for _, tc := range []struct {
		name          string
		first, second func(r *Reconciler)
		want          datapath.IPCacheEntry
		present       bool
	}{
		{"delete, then upsert", func(r *Reconciler) { r.DeleteIPCache(p, 2) }, func(r *Reconciler) { r.UpsertIPCache(e2) }, e2, true},
		{"upsert, then delete", func(r *Reconciler) { r.UpsertIPCache(e2) }, func(r *Reconciler) { r.DeleteIPCache(p, 2) }, datapath.IPCacheEntry{}, false},
		{"upsert, then another", func(r *Reconciler) { r.UpsertIPCache(e1) }, func(r *Reconciler) { r.UpsertIPCache(e2) }, e2, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newStepWriter(t)
			r := New(Config{}, w, discard, clock.RealClock{})
			r.Steady(2, true)
			startRun(t, r)
			r.UpsertIPCache(e1) // inline
			programmed(t, w, p, e1, true)
			// The first change goes to the worker (cluster 2 lists
			// again, as after a reconnect), which is held in its write.
			r.Steady(2, false)
			held, release := w.holdWorker()
			tc.first(r)
			<-held
			// Steady again: the second change finds the worker busy.
			r.Steady(2, true)
			tc.second(r)
			release()
			programmed(t, w, p, tc.want, tc.present)
			if got := w.applied(); slices.Contains(got[1:], "inline") {
				t.Errorf("a change applied inline while the worker had work: %v", got)
			}
		})
	}
}

// TestInlineFailureRetried: a failed inline apply is the worker's to
// retry: the failure is counted, the change programmed in the end by the
// worker, and the cluster's next change, while the worker waits to retry,
// is not applied inline (nor before the retry).
func TestInlineFailureRetried(t *testing.T) {
	w := newStepWriter(t)
	w.failN = 2 // the inline apply and the worker's first retry
	clk := clocktesting.NewFakeClock(time.Now())
	r := New(Config{RetryMin: time.Second, RetryMax: time.Second}, w, discard, clk)
	r.Steady(2, true)
	startRun(t, r)
	e, next := ipc("10.2.0.5/32", 100, 2), ipc("10.2.0.6/32", 101, 2)
	r.UpsertIPCache(e)
	if got, st := w.applied(), r.Stats(); !slices.Equal(got, []string{"inline"}) || st.Failures != 1 {
		t.Fatalf("after the change: applied by %v, stats %+v; want one failed inline apply", got, st)
	}
	testwait.Until(t, 10*time.Second, "the worker's retry failed, the next one waits", func() (bool, string) {
		return len(w.applied()) == 2 && clk.HasWaiters(), fmt.Sprint(w.applied())
	})
	r.UpsertIPCache(next)
	if got := w.applied(); len(got) != 2 {
		t.Fatalf("a change applied while a retry was pending: %v", got)
	}
	clk.Step(time.Second)
	programmed(t, w, e.Prefix, e, true)
	programmed(t, w, next.Prefix, next, true)
	if got := w.applied(); !slices.Equal(got, []string{"inline", "worker", "worker"}) {
		t.Fatalf("applied by %v, want the inline failure and the worker's two tries", got)
	}
}

// TestInlineRaces: sources of steady and listing clusters hand in changes
// of overlapping prefixes concurrently (run with -race): no two batches
// are applied at once (stepWriter), and the datapath ends as the
// reconciler's desired state, whichever way each change went.
func TestInlineRaces(t *testing.T) {
	w := newStepWriter(t)
	r := New(Config{ClusterID: 1}, w, discard, clock.RealClock{})
	r.Steady(2, true)
	r.Steady(3, true)
	startRun(t, r)
	var wg sync.WaitGroup
	for g := range 4 {
		cluster := uint32(2 + g%3) // 2 and 3 steady, 4 listing
		wg.Go(func() {
			for i := range 300 {
				p := fmt.Sprintf("10.9.%d.%d/32", i%3, i%7)
				if i%4 == 3 {
					r.DeleteIPCache(pfx(p), cluster)
				} else {
					r.UpsertIPCache(ipc(p, uint32(1000*g+i), cluster))
				}
				if i%50 == 0 {
					r.Steady(cluster, i%100 == 0 && cluster != 4)
				}
			}
		})
	}
	wg.Wait()
	testwait.Until(t, 10*time.Second, "the datapath holds the desired state", func() (bool, string) {
		want := r.IPCache()
		st, _ := w.Dump()
		if len(st.IPCache) != len(want) {
			return false, fmt.Sprintf("%d entries, want %d", len(st.IPCache), len(want))
		}
		for _, e := range want {
			if st.IPCache[e.Prefix] != e {
				return false, fmt.Sprintf("%v is %v", e.Prefix, st.IPCache[e.Prefix])
			}
		}
		return true, ""
	})
	by := w.applied()
	if !slices.Contains(by, "inline") || !slices.Contains(by, "worker") {
		t.Logf("applied by only one side (%d batches): the race was not exercised this run", len(by))
	}
}
