package remoteconn

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// SetConfig configures a Set.
type SetConfig struct {
	// Dir is the directory of remote-cluster config files, one per
	// cluster, named after it.
	Dir string
	// Own is the local cluster; its file in Dir is ignored.
	Own Own
	// StaleTTL withdraws (Member.Drain) the state of a remote unreachable
	// for that long; 0 keeps it until the remote returns or its file is
	// removed.
	StaleTTL time.Duration
	// LimitFlag names the entry-limit flag in the refusal reason of a
	// remote whose reader stopped with watchstore.ErrTooManyEntries.
	LimitFlag string
	// Files, if set, maps the config files read from Dir (by cluster name)
	// to those the remotes connect with (ThroughCache, for the agent in
	// connection mode kvstoremesh). An error keeps what runs.
	Files func(map[string][]byte) (map[string][]byte, error)
	// Started, if set, is called once after the first scan of Dir: every
	// remote configured at start is known.
	Started func()
	// NewWatcher makes the directory watcher (default fsnotify.NewWatcher).
	NewWatcher func() (*fsnotify.Watcher, error)
	// Timing of connection attempts, probes and rescans (zero fields:
	// DefaultTiming).
	Timing
}

// Session is one connection to a remote cluster, from its connect to its
// end; it does not change while the session runs.
type Session struct {
	Client *kvstore.Client
	// Config is the remote's cluster config as read at connect.
	Config wire.ClusterConfig
	// Remote is what the remote's entries are validated against: its
	// name, its reserved cluster ID and maxConnectedClusters.
	Remote wire.Remote
}

// ReaderConfig is the watchstore config of kind k of the session's
// remote: its own prefix, or the cache prefix when its cluster config says
// cached, with that prefix's sync canary when it advertises
// syncedCanaries, bounded by maxEntries. name names the store.
func (s Session) ReaderConfig(k wire.Kind, name string, maxEntries int) watchstore.Config {
	cached := s.Config.Capabilities.Cached
	cfg := watchstore.Config{Prefix: wire.WatchPrefix(k, s.Remote.Name, cached), Name: name, Cluster: s.Remote.Name, MaxEntries: maxEntries}
	if s.Config.Capabilities.SyncedCanaries {
		cfg.SyncedKey = wire.WatchSyncedKey(k, s.Remote.Name, cached)
	}
	return cfg
}

// A Reader reads one prefix of a connected remote until ctx is done (nil)
// or it fails, which ends the session (and stops the other readers). It
// calls listed once its first listing is handed over.
type Reader func(ctx context.Context, c *kvstore.Client, listed func()) error

// Member is what a user of a Set does with one configured remote cluster:
// the agent programs its datapath from it, the kvstoremesh mirrors it into
// the cache. The Set calls Connected, Synced and Drain from the remote's
// connection loop and Removed after that loop has stopped, so never two
// at once.
type Member interface {
	// Connected is called once a session has connected, checked the
	// cluster config and reserved s.Remote.ID; it returns the session's
	// readers. An error ends the session (and is retried).
	Connected(s Session) ([]Reader, error)
	// Synced is called once every reader of the session has listed.
	Synced(s Session)
	// Drain withdraws everything the remote contributed: its cluster ID
	// changed, it was unreachable for the stale TTL, or it went over the
	// entry limit.
	Drain()
	// Removed is called when the remote's config file is gone, after its
	// connection loop stopped and the remote left the set; id is the
	// cluster ID it held (0: none), already freed.
	Removed(id uint32)
}

// Runner is a Member that runs a part for as long as its remote is
// configured (the kvstoremesh's cache writers): from when the remote is
// added until before Removed, or until the Set's Run returns.
type Runner interface {
	Run(ctx context.Context) error
}

// State is the connection state of one configured remote.
type State struct {
	Name string
	// ID is the cluster ID the remote holds (0: none yet): the one place
	// a remote's cluster ID is kept.
	ID uint32
	// Health: connected, failures, reconnects, last error and change.
	Health
	// Ready: every reader has listed in the current session.
	Ready bool
	// Served: the remote was ready at least once and its state has not
	// been withdrawn since: its last-known state is served, also while it
	// is unreachable.
	Served bool
	// Cached: the remote's cluster config says it is a kvstoremesh cache.
	Cached bool
	// RefusedReason says why the remote is refused, empty when it is not.
	RefusedReason string
	// LastHeartbeat is the remote's cilium/.heartbeat timestamp.
	LastHeartbeat time.Time
}

// Remote is one configured remote: its state now and its member.
type Remote[M Member] struct {
	State
	Member M
}

// Set is the set of remote clusters of a config directory: it adds,
// replaces and removes one connection loop per file, reserves the remotes'
// cluster IDs, runs each session (connect, cluster config and ID checks,
// readers, heartbeat, cluster config watch, probe and stale TTL) and keeps
// each remote's State. What a connected remote is read into is its
// Member's.
type Set[M Member] struct {
	cfg       SetConfig
	newMember func(name string, log *slog.Logger) M
	log       *slog.Logger
	clock     clock.WithTicker

	wg sync.WaitGroup // remote goroutines

	mu        sync.Mutex
	slots     map[string]*slot[M] // guarded by mu: by cluster name
	ownWarned bool                // guarded by mu
}

// slot is one configured remote of a Set.
type slot[M Member] struct {
	name string
	m    M
	log  *slog.Logger
	data []byte // config file content; Run goroutine only

	cancel context.CancelFunc // of the connection loop; Run goroutine only
	done   chan struct{}      // closed when the connection loop exits

	runCancel context.CancelFunc // of the member's Runner; Run goroutine only
	runDone   chan struct{}      // closed when the member's Runner returned

	retry *backoff.Backoff // of the connection loop; its goroutine only

	id uint32 // reserved cluster ID; guarded by the Set's mu

	mu sync.Mutex
	st State // guarded by mu; ID is filled from id by Remotes()
	// overLimit: st.RefusedReason is the entry limit's, kept until a
	// session lists within it; guarded by mu.
	overLimit bool
}

// NewSet returns a Set that makes the member of each added remote with
// newMember.
func NewSet[M Member](cfg SetConfig, newMember func(name string, log *slog.Logger) M, log *slog.Logger, clk clock.WithTicker) *Set[M] {
	if cfg.Own.MaxConnectedClusters == 0 {
		cfg.Own.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	if cfg.NewWatcher == nil {
		cfg.NewWatcher = fsnotify.NewWatcher
	}
	cfg.Timing = cfg.Timing.WithDefaults()
	return &Set[M]{cfg: cfg, newMember: newMember, log: log, clock: clk, slots: map[string]*slot[M]{}}
}

// Run watches the config directory and runs the remotes until ctx is
// done. On return every goroutine it started has exited; what the members
// hold stays.
func (s *Set[M]) Run(ctx context.Context) error {
	defer func() {
		s.mu.Lock()
		rs := maps.Clone(s.slots)
		s.mu.Unlock()
		for _, r := range rs {
			s.stop(r)
		}
		s.wg.Wait()
	}()
	dc := DirConfig{Dir: s.cfg.Dir, Rescan: s.cfg.RescanInterval, Clock: s.clock, NewWatcher: s.cfg.NewWatcher, Log: s.log}
	return WatchDir(ctx, dc, func() {
		s.scan(ctx)
		if s.cfg.Started != nil {
			s.cfg.Started()
		}
	}, func() { s.scan(ctx) })
}

// scan reconciles the running remotes with the directory's files. Only the
// Run goroutine calls it; remotes are stopped outside s.mu, since a
// stopping remote may wait for it.
func (s *Set[M]) scan(ctx context.Context) {
	files, err := ReadDir(s.cfg.Dir)
	if err != nil {
		s.log.Warn("reading config directory", "dir", s.cfg.Dir, "error", err)
		return // keep what runs: a transient error must not withdraw the mesh
	}
	if s.cfg.Files != nil {
		if files, err = s.cfg.Files(files); err != nil {
			s.log.Warn("reading the remote cluster configs", "error", err)
			return
		}
	}
	s.mu.Lock()
	if _, ok := files[s.cfg.Own.Name]; ok {
		if !s.ownWarned {
			s.log.Info("ignoring the config file of the own cluster", "cluster", s.cfg.Own.Name)
			s.ownWarned = true
		}
		delete(files, s.cfg.Own.Name)
	}
	existing := maps.Clone(s.slots)
	s.mu.Unlock()

	for name, data := range files {
		if err := wire.ValidateClusterName(name); err != nil {
			s.log.Warn("ignoring config file not named after a valid cluster", "file", name, "error", err)
			delete(files, name)
			continue
		}
		r := existing[name]
		switch {
		case r == nil:
			r = s.add(ctx, name)
			s.log.Info("remote cluster added", "cluster", name)
		case !bytes.Equal(r.data, data):
			s.log.Info("remote cluster config changed, reconnecting", "cluster", name)
			s.stop(r)
			r.update(func(st *State) { st.Reconnects++ })
		default:
			continue
		}
		s.start(ctx, r, data)
	}
	for name, r := range existing {
		if _, ok := files[name]; !ok {
			s.remove(r)
		}
	}
}

// add makes the remote name and starts its member's Runner, if any.
func (s *Set[M]) add(ctx context.Context, name string) *slot[M] {
	log := s.log.With("cluster", name)
	r := &slot[M]{name: name, log: log, m: s.newMember(name, log)}
	r.st.Name = name
	s.mu.Lock()
	s.slots[name] = r
	s.mu.Unlock()
	if run, ok := any(r.m).(Runner); ok {
		rctx, cancel := context.WithCancel(ctx)
		r.runCancel, r.runDone = cancel, make(chan struct{})
		s.wg.Go(func() {
			defer close(r.runDone)
			if err := run.Run(rctx); err != nil && rctx.Err() == nil {
				log.Error("remote cluster part stopped", "error", err)
			}
		})
	}
	return r
}

// remove stops r, tells its member and frees its cluster ID.
func (s *Set[M]) remove(r *slot[M]) {
	s.log.Info("remote cluster removed, withdrawing its state", "cluster", r.name)
	s.stop(r)
	if r.runCancel != nil {
		r.runCancel()
		<-r.runDone
	}
	s.mu.Lock()
	id := r.id
	delete(s.slots, r.name)
	s.mu.Unlock()
	r.m.Removed(id)
}

// start runs the connection loop of r for data. Call stop first if one runs.
func (s *Set[M]) start(ctx context.Context, r *slot[M], data []byte) {
	r.data = data
	s.refuse(r, nil) // the config file changed: so may have the reason
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	s.wg.Go(func() {
		defer close(r.done)
		r.retry = backoff.New(backoff.Policy{Min: s.cfg.BackoffMin, Max: s.cfg.BackoffMax}, s.clock)
		lc := LoopConfig{Retry: r.retry, DeniedBackoffMax: s.cfg.DeniedBackoffMax, Clock: s.clock, Log: r.log}
		Loop(ctx, lc, func(ctx context.Context) error { return s.session(ctx, r, data) }, func(err error) {
			if err != nil {
				r.update(func(st *State) { st.Failures++; st.LastError = err.Error() })
			}
			s.settle(r, Refusal(err))
		}, func() { r.update(func(st *State) { st.Reconnects++ }) })
	})
}

// stop ends the connection loop of r and waits for it; the state stays.
func (s *Set[M]) stop(r *slot[M]) {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
	now := s.clock.Now()
	r.update(func(st *State) {
		if st.Connected {
			st.LastChange = now
		}
		st.Connected, st.Ready = false, false
	})
}

// session connects once and runs the member's readers until ctx is done or
// the connection must be rebuilt.
func (s *Set[M]) session(ctx context.Context, r *slot[M], data []byte) error {
	client, cc, err := Connect(ctx, r.name, s.cfg.Own, data, r.log)
	if cc.ID != 0 {
		// Also when the new config is refused: what the old ID published
		// is no longer what the remote says it is.
		s.withdrawChangedID(r, cc.ID)
	}
	if err != nil {
		return err
	}
	defer client.Close()
	if err := s.reserve(r, cc.ID); err != nil {
		return err
	}
	ses := Session{Client: client, Config: cc, Remote: wire.Remote{Name: r.name, ID: cc.ID, MaxConnectedClusters: cc.MaxConnected()}}
	readers, err := r.m.Connected(ses)
	if err != nil {
		return err
	}
	now := s.clock.Now()
	r.update(func(st *State) {
		st.Connected, st.LastChange, st.Cached = true, now, cc.Capabilities.Cached
		r.passedLocked(false)
	})
	r.retry.Success()
	r.log.Info("connected to remote cluster", "id", cc.ID, "cached", cc.Capabilities.Cached)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var listed sync.WaitGroup
	listed.Add(len(readers))
	for _, read := range readers {
		var once sync.Once
		done := func() { once.Do(listed.Done) } // when listed, or on exit
		wg.Go(func() {
			if err := read(sctx, client, done); err != nil {
				cancel(err)
			}
			done()
		})
	}
	// withdrawn: read through a kvstoremesh cache whose cluster config copy
	// is gone, as when the kvstoremesh withdrew the remote. The readers run
	// on, so that its deletions arrive, but the remote is not ready.
	var withdrawn, listedAll atomic.Bool
	wg.Go(func() {
		listed.Wait()
		if sctx.Err() == nil {
			now := s.clock.Now()
			listedAll.Store(true)
			r.update(func(st *State) {
				st.Ready, st.Served, st.LastChange = !withdrawn.Load(), true, now
				st.LastError = "" // recovered; Failures keeps the count
				// Every reader listed within the entry limit (a reader
				// stopped over it never reports its listing complete).
				r.passedLocked(true)
			})
			r.log.Info("remote cluster synced")
			r.m.Synced(ses)
		}
	})
	wg.Go(func() {
		WatchHeartbeat(sctx, client, func(t time.Time) { r.update(func(st *State) { st.LastHeartbeat = t }) })
	})
	wg.Go(func() {
		WatchClusterConfig(sctx, client, r.name, cc, cancel, func(present bool) {
			if !cc.Capabilities.Cached {
				return // a remote's own apiserver re-asserts a deleted config
			}
			withdrawn.Store(!present)
			now := s.clock.Now()
			r.update(func(st *State) {
				ready := present && listedAll.Load()
				if st.Ready != ready {
					st.Ready, st.LastChange = ready, now
				}
				if !present {
					st.LastError = ErrCacheWithdrawn.Error()
				}
			})
		})
	})
	wg.Go(func() {
		pc := ProbeConfig{Interval: s.cfg.ProbeInterval, Timeout: s.cfg.ProbeTimeout, StaleTTL: s.cfg.StaleTTL, Clock: s.clock}
		err := Probe(sctx, client, pc, func(up bool, downErr error, now time.Time) {
			r.update(func(st *State) { st.Probed(up, downErr, now) })
		})
		if err != nil {
			cancel(err)
		}
	})
	<-sctx.Done()
	wg.Wait()
	r.update(func(st *State) { st.Ready, st.Connected = false, false })
	cause := context.Cause(sctx)
	if errors.Is(cause, ErrStale) {
		r.log.Warn("withdrawing the state of an unreachable remote cluster", "ttl", s.cfg.StaleTTL)
		s.drain(r)
	}
	if errors.Is(cause, watchstore.ErrTooManyEntries) {
		r.log.Warn("refusing a remote cluster over the entry limit and withdrawing its state", "error", cause, "limit", s.cfg.LimitFlag)
		s.refuse(r, fmt.Errorf("%w (%s)", cause, s.cfg.LimitFlag))
		s.drain(r)
	}
	if ctx.Err() != nil {
		return nil
	}
	return cause
}

// withdrawChangedID drains r when it served state under an ID other than
// id, the one its cluster config names now, and frees the old ID: nothing
// of it is left.
func (s *Set[M]) withdrawChangedID(r *slot[M], id uint32) {
	s.mu.Lock()
	prevID := r.id
	s.mu.Unlock()
	if prevID == 0 || prevID == id {
		return
	}
	r.log.Warn("remote cluster ID changed, withdrawing the state of the old ID", "old", prevID, "new", id)
	s.drain(r)
	s.mu.Lock()
	r.id = 0
	s.mu.Unlock()
}

// drain withdraws what r contributed. No session of r may run.
func (s *Set[M]) drain(r *slot[M]) {
	r.m.Drain()
	r.update(func(st *State) { st.Served = false })
}

// reserve reserves id for r, freeing r's previous ID: the rule is CheckID,
// the holder of an ID the remote that has it in its slot.
func (s *Set[M]) reserve(r *slot[M], id uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	holder := ""
	for _, o := range s.slots {
		if o.id == id {
			holder = o.name
		}
	}
	if err := CheckID(id, s.cfg.Own.ID, holder, r.name); err != nil {
		return err
	}
	r.id = id
	return nil
}

// refuse sets the refusal reason of r to err's, or clears it when err is
// nil (the config file changed).
func (s *Set[M]) refuse(r *slot[M], err error) { s.setRefusal(r, err, true) }

// settle records the refusal an attempt ended with (nil: none): each
// attempt's outcome replaces the previous attempt's reason, so a reason
// never outlives its cause. An entry-limit refusal is the exception: an
// attempt that ends before a complete listing (unreachable, a timeout)
// says nothing of the remote's entries, so it stays until a session lists
// within the limit.
func (s *Set[M]) settle(r *slot[M], err error) { s.setRefusal(r, err, false) }

func (s *Set[M]) setRefusal(r *slot[M], err error, force bool) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	now := s.clock.Now()
	r.update(func(st *State) {
		if err == nil && r.overLimit && !force {
			return
		}
		r.overLimit = errors.Is(err, watchstore.ErrTooManyEntries)
		if st.RefusedReason != reason {
			st.RefusedReason, st.LastChange = reason, now
		}
	})
}

// passedLocked clears the refusal reason once a session got past its
// cause: connected (the config and ID checks passed) clears any but an
// entry-limit refusal, listed (every reader listed within the limit) that
// one too. The caller holds r.mu.
func (r *slot[M]) passedLocked(listed bool) {
	if listed || !r.overLimit {
		r.st.RefusedReason, r.overLimit = "", false
	}
}

func (r *slot[M]) update(f func(*State)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(&r.st)
}

// Remotes returns every configured remote, sorted by name.
func (s *Set[M]) Remotes() []Remote[M] {
	s.mu.Lock()
	out := make([]Remote[M], 0, len(s.slots))
	for _, r := range s.slots {
		r.mu.Lock()
		st := r.st
		r.mu.Unlock()
		st.ID = r.id
		out = append(out, Remote[M]{State: st, Member: r.m})
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b Remote[M]) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// ClusterNames maps the reserved cluster IDs to the remotes' names.
func (s *Set[M]) ClusterNames() map[uint32]string {
	ids := s.IDs()
	out := make(map[uint32]string, len(ids))
	for name, id := range ids {
		out[id] = name
	}
	return out
}

// IDs maps the configured remotes' names to their reserved cluster IDs
// (those that hold none yet are left out).
func (s *Set[M]) IDs() map[string]uint32 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]uint32, len(s.slots))
	for _, r := range s.slots {
		if r.id != 0 {
			out[r.name] = r.id
		}
	}
	return out
}

// Configured reports whether a remote of that name is configured.
func (s *Set[M]) Configured(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.slots[name]
	return ok
}
