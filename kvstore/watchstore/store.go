package watchstore

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/internal/flatmap"
	"github.com/clustermesh/clustermesh/kvstore"
)

var (
	// ErrConfig is returned by Run for an unusable Config.
	ErrConfig = errors.New("invalid watchstore config")
	// ErrTooManyEntries is returned by Run when the prefix holds more valid
	// entries than Config.MaxEntries: the writer is refused rather than
	// allowed to exhaust the reader's memory.
	ErrTooManyEntries = errors.New("too many entries")
)

// Observer is told about changes of the entries, from one goroutine at a
// time. It must not call back into the store.
type Observer[T any] interface {
	// OnUpsert reports the new value v of key and, when the key held one
	// (hadPrev), the value it replaces: an observer derives what to
	// withdraw from prev and keeps no copy of the entries.
	OnUpsert(key string, v, prev T, hadPrev bool)
	OnDelete(key string, v T)
	// OnSync is called once per run (Run or RunOn), when its initial
	// listing is complete (after the sync canary, if one is configured).
	OnSync()
}

// Peeker is implemented by an observer that looks up other entries of the
// store from within its callbacks: a datapath key that two store keys map to
// (an ipcache entry written under both "10.0.0.1" and "10.0.0.1/32") must
// stay while either holds it. New hands it peek, which is valid only
// during the observer's callbacks, and sees the entries as they are after
// the change being reported.
type Peeker[T any] interface {
	SetPeek(peek func(key string) (T, bool))
}

// Reserver is implemented by an observer that sizes its own tables: before
// the first entry of a run's initial listing it is told how many keys the
// listing holds (an upper bound of the entries to come).
type Reserver interface {
	Reserve(n int)
}

// Config configures a Store.
type Config struct {
	// Prefix is the watched key prefix. Required.
	Prefix string
	// SyncedKey is the canary that the writer sets once its initial set is
	// written; the store lists only after it exists. "" for none.
	SyncedKey string
	// Name and Cluster label the logs (Name defaults to Prefix).
	Name    string
	Cluster string
	// MaxEntries bounds the entries held; a run that would hold more stops
	// with ErrTooManyEntries, keeping the entries it holds (0: no bound).
	MaxEntries int
}

// Stats are counters of a store.
type Stats struct {
	Entries          int
	Invalid          uint64 // values skipped as invalid
	Events           uint64
	LastEvent        time.Time
	WaitingForCanary bool
	Synced           bool
}

// Store holds the valid entries of one prefix.
type Store[T any] struct {
	c      *kvstore.Client
	cfg    Config
	decode func(key string, value []byte) (T, error)
	obs    Observer[T]
	log    *slog.Logger

	mu sync.Mutex // guards entries, gen and sized and serialises observer calls
	// entries is keyed by the key without cfg.Prefix (see short): every
	// key of the prefix is the prefix and that rest, so nothing aliases,
	// and the store holds only the rest (a remote's ipcache keys are "<ns>/<ip>"
	// after "cilium/state/ip/v1/").
	entries *flatmap.Map[string, entry[T]]
	gen     uint32 // number of the current run
	sized   uint32 // the run whose listing sized the entries
	synced  atomic.Bool

	nEntries  atomic.Int64
	invalid   atomic.Uint64
	events    atomic.Uint64
	lastEvent atomic.Int64 // unix nanoseconds
	waiting   atomic.Bool
}

// entry is a valid value, the run that last delivered it and what the
// run's ListWatch remembers of its key (kvstore.KeyState, its fields laid
// out beside gen so that no padding is held per entry): the store's table is
// the ListWatch's key index (kvstore.Index), so a key is held once.
type entry[T any] struct {
	v     T
	gen   uint32
	lwGen uint32
	sum   uint64
}

func (e entry[T]) lw() kvstore.KeyState { return kvstore.KeyState{Sum: e.sum, Gen: e.lwGen} }

func newEntry[T any](v T, gen uint32, st kvstore.KeyState) entry[T] {
	return entry[T]{v: v, gen: gen, lwGen: st.Gen, sum: st.Sum}
}

// index is the store's entries as the kvstore.KeyIndex of run gen's
// ListWatch: entries that earlier runs delivered are not its keys (that
// run's listing delivers them again, or the store withdraws them).
type index[T any] struct {
	s   *Store[T]
	gen uint32
}

func (x index[T]) State(key string) (kvstore.KeyState, bool) {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	k, under := x.s.short(key)
	if !under {
		return kvstore.KeyState{}, false
	}
	e, ok := x.s.entries.Get(k)
	if !ok || e.gen != x.gen {
		return kvstore.KeyState{}, false
	}
	return e.lw(), true
}

func (x index[T]) Range(f func(key string, st kvstore.KeyState) bool) {
	x.s.mu.Lock()
	defer x.s.mu.Unlock()
	for k, e := range x.s.entries.All() {
		if e.gen == x.gen && !f(x.s.cfg.Prefix+k, e.lw()) {
			return
		}
	}
}

// New returns a store that follows cfg.Prefix through c. decode turns a
// key and its raw value into T and validates it; an error marks the value
// invalid. c may be nil for a store that only runs with
// RunOn.
func New[T any](c *kvstore.Client, cfg Config, decode func(key string, value []byte) (T, error), obs Observer[T], log *slog.Logger) *Store[T] {
	if cfg.Name == "" {
		cfg.Name = cfg.Prefix
	}
	s := &Store[T]{
		c:       c,
		cfg:     cfg,
		decode:  decode,
		obs:     obs,
		log:     log.With("store", cfg.Name, "cluster", cfg.Cluster),
		entries: newEntries[T](),
	}
	if p, ok := obs.(Peeker[T]); ok {
		p.SetPeek(s.peekLocked)
	}
	return s
}

// newEntries returns an empty table of entries: a flat table, since the
// store of a large remote's ipcache holds hundreds of thousands.
func newEntries[T any]() *flatmap.Map[string, entry[T]] {
	seed := maphash.MakeSeed()
	return flatmap.New[string, entry[T]](func(k string) uint64 { return maphash.String(seed, k) })
}

// short returns the key of key in entries (key without the prefix, not a
// copy) and whether key is under the prefix at all.
func (s *Store[T]) short(key string) (string, bool) {
	return strings.CutPrefix(key, s.cfg.Prefix)
}

// getLocked returns the entry of key.
func (s *Store[T]) getLocked(key string) (entry[T], bool) {
	k, under := s.short(key)
	if !under {
		return entry[T]{}, false
	}
	return s.entries.Get(k)
}

// peekLocked returns the entry of key; the caller holds s.mu (observer
// callbacks run with it held).
func (s *Store[T]) peekLocked(key string) (T, bool) {
	e, ok := s.getLocked(key)
	return e.v, ok
}

// Run waits for the sync canary, then lists and watches the prefix until
// ctx is done; before every relist it waits for the canary again, so that
// entries are never withdrawn on the word of an incomplete listing. It returns nil after ctx is done, an error for a bad
// config, or ErrTooManyEntries when the prefix holds more than MaxEntries. Invalid values never stop it; connection failures are retried
// (see kvstore.Client.ListWatch) and show in the client's Status.
func (s *Store[T]) Run(ctx context.Context) error { return s.RunOn(ctx, s.c) }

// RunOn is Run through c instead of the client given to New, for a reader
// that reconnects with a new client (new credentials, a replaced etcd).
// The entries survive between runs: a run is not synced until its own
// first listing is complete, and that listing withdraws (OnDelete) the
// entries that earlier runs delivered and it did not see again. Runs of one
// store must not overlap.
func (s *Store[T]) RunOn(ctx context.Context, c *kvstore.Client) error {
	if s.cfg.Prefix == "" {
		return fmt.Errorf("%w: empty prefix", ErrConfig)
	}
	if c == nil {
		return fmt.Errorf("%w: no client", ErrConfig)
	}
	s.mu.Lock()
	s.gen++
	gen := s.gen
	s.mu.Unlock()
	s.synced.Store(false)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	rs := &runState{gen: gen, first: true, stop: cancel}
	handle := func(ev kvstore.Event) { s.handle(ev, rs) }
	opts := []kvstore.ListWatchOption{kvstore.Index(index[T]{s: s, gen: gen})}
	if s.cfg.SyncedKey != "" {
		if !s.waitForCanary(ctx, c) {
			return s.stopCause(ctx)
		}
		// A relist deletes every entry it does not see again: against a
		// replaced (empty) etcd that must wait until the writer has filled
		// it and set the canary again. Against the same etcd the canary is
		// there and the wait is one request.
		opts = append(opts, kvstore.BeforeRelist(func(ctx context.Context, reason error) error {
			if !s.waitForCanary(ctx, c) {
				return ctx.Err()
			}
			return nil
		}))
	}
	if err := c.ListWatch(ctx, s.cfg.Prefix, handle, opts...); err != nil {
		return err
	}
	return s.stopCause(ctx)
}

// stopCause is nil when the run ended because its caller's context is
// done, else why the store stopped itself (ErrTooManyEntries).
func (s *Store[T]) stopCause(ctx context.Context) error {
	if err := context.Cause(ctx); errors.Is(err, ErrTooManyEntries) {
		return err
	}
	return nil
}

// waitForCanary blocks until the canary exists; false when ctx is done.
func (s *Store[T]) waitForCanary(ctx context.Context, c *kvstore.Client) bool {
	s.waiting.Store(true)
	defer s.waiting.Store(false)
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var found atomic.Bool
	err := c.ListWatch(cctx, s.cfg.SyncedKey, func(ev kvstore.Event) {
		if ev.Kind == kvstore.EventUpsert && ev.Key == s.cfg.SyncedKey {
			found.Store(true)
			cancel()
		}
		if ev.Kind == kvstore.EventListDone && !found.Load() {
			s.log.Info("waiting for sync canary", "key", s.cfg.SyncedKey)
		}
	})
	return err == nil && found.Load()
}

// runState is what handle keeps of one run; ListWatch's goroutine only.
type runState struct {
	gen   uint32
	first bool // until the run's first listing is complete
	// stopped: the run refused an entry over MaxEntries. ListWatch hands
	// over the rest of its page and the end of the listing before it sees
	// the run's context done; none of it is applied, and above all the
	// listing is not reported complete (OnSync): entries were refused.
	stopped bool
	stop    context.CancelCauseFunc // ends the run with its reason
}

// handle applies ev of the run rs.
func (s *Store[T]) handle(ev kvstore.Event, rs *runState) {
	if rs.stopped {
		return
	}
	gen := rs.gen
	s.events.Add(1)
	s.lastEvent.Store(time.Now().UnixNano())
	switch ev.Kind {
	case kvstore.EventUpsert:
		s.mu.Lock()
		if ev.Total > 0 && s.sized != gen {
			s.reserveLocked(gen, int(ev.Total))
		}
		k, under := s.short(ev.Key)
		if !under {
			// etcd returns only keys of the watched prefix: a key outside
			// it would alias another in entries, so it is refused.
			s.mu.Unlock()
			s.countInvalid(ev, fmt.Errorf("key %q is not under prefix %q", ev.Key, s.cfg.Prefix))
			return
		}
		prev, ok := s.entries.Get(k)
		if ok && ev.Total > 0 && prev.gen == gen && prev.sum == ev.State.Sum {
			// A relist of this run found the value it holds: nothing changed.
			s.entries.Set(k, newEntry(prev.v, gen, ev.State))
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		// Decoded without the lock; only this goroutine changes entries,
		// so prev stays what the key holds.
		v, err := s.decode(ev.Key, ev.Value)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.countInvalid(ev, err)
			// The writer no longer asserts a valid value for the key:
			// the previous one is withdrawn rather than kept stale.
			s.removeLocked(ev.Key)
			return
		}
		if !ok {
			if s.cfg.MaxEntries > 0 && s.entries.Len() >= s.cfg.MaxEntries {
				rs.stopped = true
				rs.stop(fmt.Errorf("%w: %s holds more than %d valid entries", ErrTooManyEntries, s.cfg.Prefix, s.cfg.MaxEntries))
				return
			}
			s.nEntries.Add(1)
		}
		if !ok {
			// A copy: the listed key's allocation (prefix included) is
			// not kept.
			k = strings.Clone(k)
		}
		s.entries.Set(k, newEntry(v, gen, ev.State))
		s.obs.OnUpsert(ev.Key, v, prev.v, ok)
	case kvstore.EventDelete:
		s.mu.Lock()
		defer s.mu.Unlock()
		s.removeLocked(ev.Key)
	case kvstore.EventListDone:
		s.mu.Lock()
		defer s.mu.Unlock()
		if rs.first {
			rs.first = false
			var gone []string // delivered by an earlier run, gone now
			for k, e := range s.entries.All() {
				if e.gen < gen {
					gone = append(gone, s.cfg.Prefix+k)
				}
			}
			for _, k := range gone {
				s.removeLocked(k)
			}
			s.synced.Store(true)
			s.obs.OnSync()
		}
	}
}

// reserveLocked sizes the entries for a listing of n keys (once per run,
// and only when they would otherwise grow through it) and tells a
// Reserver observer.
func (s *Store[T]) reserveLocked(gen uint32, n int) {
	s.sized = gen
	if s.cfg.MaxEntries > 0 {
		n = min(n, s.cfg.MaxEntries)
	}
	if n <= s.entries.Len() {
		return
	}
	s.entries.Reserve(n)
	if r, ok := s.obs.(Reserver); ok {
		r.Reserve(n - s.entries.Len())
	}
}

// countInvalid counts and logs an invalid upsert.
func (s *Store[T]) countInvalid(ev kvstore.Event, err error) {
	n := s.invalid.Add(1)
	// The first ones, then every 1000th: a hostile writer must not flood
	// the log.
	if n <= 10 || n%1000 == 0 {
		s.log.Warn("skipping invalid entry", "key", ev.Key, "revision", ev.Revision, "err", err, "invalid_total", n)
	}
}

// removeLocked withdraws the entry of key (the full key).
func (s *Store[T]) removeLocked(key string) {
	k, under := s.short(key)
	if !under {
		return
	}
	old, ok := s.entries.Delete(k)
	if !ok {
		return
	}
	s.nEntries.Add(-1)
	s.obs.OnDelete(key, old.v)
}

// Drain calls OnDelete for every entry and forgets them all; call it after
// Run has returned (a cluster left the mesh). A later Run starts afresh.
func (s *Store[T]) Drain() {
	s.mu.Lock()
	defer s.mu.Unlock()
	keys := make([]string, 0, s.entries.Len())
	for k := range s.entries.Keys() {
		keys = append(keys, s.cfg.Prefix+k)
	}
	for _, k := range keys {
		s.removeLocked(k)
	}
	s.entries.Clear()
	s.synced.Store(false)
}

// Len returns the number of entries.
func (s *Store[T]) Len() int { return int(s.nEntries.Load()) }

// Get returns the entry of key.
func (s *Store[T]) Get(key string) (T, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.getLocked(key)
	return e.v, ok
}

// Range calls f with every entry until f returns false. Observers must not
// call it (their callbacks run under the store's lock); f must not call
// into the store.
func (s *Store[T]) Range(f func(key string, v T) bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.entries.All() {
		if !f(s.cfg.Prefix+k, e.v) {
			return
		}
	}
}

// Stats returns the counters of the store; observers may call it.
func (s *Store[T]) Stats() Stats {
	st := Stats{
		Entries:          s.Len(),
		Invalid:          s.invalid.Load(),
		Events:           s.events.Load(),
		WaitingForCanary: s.waiting.Load(),
	}
	if ns := s.lastEvent.Load(); ns != 0 {
		st.LastEvent = time.Unix(0, ns)
	}
	st.Synced = s.synced.Load()
	return st
}
