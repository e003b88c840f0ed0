package remotecluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// errStale ends a session whose remote was unreachable for the stale TTL.
var errStale = remoteconn.ErrStale

// remote is one configured remote cluster. Its kind stores survive sessions
// (so a new session's listing withdraws what vanished meanwhile) and run
// only within a session; the manager drains them when no session runs.
type remote struct {
	m    *Manager
	name string
	log  *slog.Logger
	data []byte // config file content; Run goroutine only

	cancel context.CancelFunc // of the running goroutine; Run goroutine only
	done   chan struct{}      // closed when the running goroutine exits

	id uint32 // reserved cluster ID; guarded by m.mu

	// rem is the remote as the current session validates its entries
	// against, and dpID the cluster ID the stores' entries are programmed
	// under; written by the session goroutine before it runs the stores.
	rem  wire.Remote
	dpID uint32

	storeCfg [numKinds]watchstore.Config // session goroutine only
	obs      [numKinds]*observerBase     // session goroutine only
	retry    *backoff.Backoff            // of the connection loop; its goroutine only

	mu     sync.Mutex
	st     Status              // guarded by mu; Kinds are filled from stores by status()
	stores [numKinds]kindStore // guarded by mu (the slots; the stores are safe)
}

func newRemote(m *Manager, name string) *remote {
	r := &remote{m: m, name: name, log: m.log.With("cluster", name)}
	r.st.Name = name
	return r
}

// start runs the connection loop for data. Call stop first if one runs.
func (r *remote) start(ctx context.Context, data []byte) {
	r.data = data
	r.refuse(nil) // the config file changed: so may have the reason
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.m.wg.Add(1)
	go func() {
		defer r.m.wg.Done()
		defer close(r.done)
		r.loop(ctx, data)
	}()
}

// stop ends the connection loop and waits for it; the state stays.
func (r *remote) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
	r.setConnected(false)
}

func (r *remote) loop(ctx context.Context, data []byte) {
	r.retry = backoff.New(backoff.Policy{Min: r.m.cfg.BackoffMin, Max: r.m.cfg.BackoffMax}, r.m.clock)
	lc := remoteconn.LoopConfig{Retry: r.retry, DeniedBackoffMax: r.m.cfg.DeniedBackoffMax, Clock: r.m.clock, Log: r.log}
	remoteconn.Loop(ctx, lc, func(ctx context.Context) error { return r.session(ctx, data) }, func(err error) {
		r.recordFailure(err)
		r.refuse(remoteconn.Refusal(err))
	}, r.countReconnect)
}

// session connects once and watches until ctx is done or the connection
// must be rebuilt.
func (r *remote) session(ctx context.Context, data []byte) error {
	own := remoteconn.Own{Name: r.m.cfg.ClusterName, ID: r.m.cfg.ClusterID, MaxConnectedClusters: r.m.cfg.MaxConnectedClusters, Dial: r.m.cfg.Dial}
	client, cc, err := remoteconn.Connect(ctx, r.name, own, data, r.log)
	if err != nil {
		return err
	}
	defer client.Close()
	r.m.mu.Lock()
	prevID := r.id
	r.m.mu.Unlock()
	if prevID != 0 && prevID != cc.ID {
		r.log.Warn("remote cluster ID changed, draining state of the old ID", "old", prevID, "new", cc.ID)
		r.drain()
	}
	oldPersisted, err := r.m.reserve(r, cc.ID)
	if err != nil {
		return err
	}
	if oldPersisted != 0 && oldPersisted != cc.ID {
		r.m.dp.Release(oldPersisted)
	}
	r.rem, r.dpID = wire.Remote{Name: r.name, ID: cc.ID, MaxConnectedClusters: cc.MaxConnected()}, cc.ID
	r.mu.Lock()
	r.st.ID, r.st.RefusedReason, r.st.Connected, r.st.LastChange = cc.ID, "", true, r.m.clock.Now()
	r.st.Cached = cc.Capabilities.Cached
	r.mu.Unlock()
	r.retry.Success()
	r.log.Info("connected to remote cluster", "id", cc.ID, "cached", cc.Capabilities.Cached)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var listed sync.WaitGroup
	listed.Add(int(numKinds))
	for k := range numKinds {
		s := r.kindStore(k, cc)
		var once sync.Once
		done := func() { once.Do(listed.Done) } // when listed, or on exit
		r.obs[k].synced = done
		wg.Go(func() {
			if err := s.RunOn(sctx, client); err != nil {
				cancel(fmt.Errorf("watch %s: %w", k, err))
			}
			done()
		})
	}
	wg.Go(func() {
		listed.Wait() // every watcher calls Done once: when listed, or on exit
		if sctx.Err() == nil {
			r.mu.Lock()
			r.st.Ready, r.st.Served, r.st.LastChange = true, true, r.m.clock.Now()
			r.st.LastError = "" // recovered; Failures keeps the count
			r.mu.Unlock()
			r.log.Info("remote cluster synced")
			r.m.dp.Release(cc.ID)
		}
	})
	wg.Go(func() { r.watchHeartbeat(sctx, client) })
	wg.Go(func() { r.watchClusterConfig(sctx, client, cc, cancel) })
	wg.Go(func() { r.probe(sctx, client, cancel) })
	<-sctx.Done()
	wg.Wait()
	r.mu.Lock()
	r.st.Ready, r.st.Connected = false, false
	r.mu.Unlock()
	cause := context.Cause(sctx)
	if errors.Is(cause, errStale) {
		r.log.Warn("withdrawing the state of an unreachable remote cluster", "ttl", r.m.cfg.StaleTTL)
		r.drain()
	}
	if errors.Is(cause, watchstore.ErrTooManyEntries) {
		r.log.Warn("refusing a remote cluster over the entry limit and withdrawing its state", "error", cause, "max_entries", r.m.cfg.MaxEntries)
		r.refuse(fmt.Errorf("%w (--remote-max-entries)", cause))
		r.drain()
	}
	if ctx.Err() != nil {
		return nil
	}
	return cause
}

// kindStore returns the store of kind k for a session with cluster config
// cc: the previous session's, or a new one if the prefix or canary changed
// (the cached capability was toggled), after draining the old one, whose
// entries the new prefix's listing could not withdraw.
func (r *remote) kindStore(k kind, cc wire.ClusterConfig) kindStore {
	cached := cc.Capabilities.Cached
	cfg := watchstore.Config{Prefix: wire.WatchPrefix(k.wire(), r.name, cached), Name: k.String(), Cluster: r.name, MaxEntries: r.m.cfg.MaxEntries}
	if cc.Capabilities.SyncedCanaries {
		cfg.SyncedKey = wire.WatchSyncedKey(k.wire(), r.name, cached)
	}
	r.mu.Lock()
	s := r.stores[k]
	r.mu.Unlock()
	if s != nil && r.storeCfg[k] == cfg {
		return s
	}
	if s != nil {
		s.Drain()
	}
	s, r.obs[k] = newKindStore(r, k, cfg)
	r.storeCfg[k] = cfg
	r.mu.Lock()
	r.stores[k] = s
	r.mu.Unlock()
	return s
}

func (r *remote) watchHeartbeat(ctx context.Context, c *kvstore.Client) {
	remoteconn.WatchHeartbeat(ctx, c, func(t time.Time) {
		r.mu.Lock()
		r.st.LastHeartbeat = t
		r.mu.Unlock()
	})
}

func (r *remote) watchClusterConfig(ctx context.Context, c *kvstore.Client, cc wire.ClusterConfig, cancel context.CancelCauseFunc) {
	remoteconn.WatchClusterConfig(ctx, c, r.name, cc, cancel, nil)
}

// probe tracks connectivity and withdraws the state after StaleTTL.
func (r *remote) probe(ctx context.Context, c *kvstore.Client, cancel context.CancelCauseFunc) {
	pc := remoteconn.ProbeConfig{Interval: r.m.cfg.ProbeInterval, Timeout: r.m.cfg.ProbeTimeout, StaleTTL: r.m.cfg.StaleTTL, Clock: r.m.clock}
	err := remoteconn.Probe(ctx, c, pc, func(up bool, downErr error, now time.Time) {
		r.mu.Lock()
		defer r.mu.Unlock()
		if up != r.st.Connected {
			r.st.LastChange = now
			if up {
				r.st.Reconnects++
				r.st.LastError = ""
			} else {
				r.st.Failures++
			}
		}
		r.st.Connected = up
		if downErr != nil {
			r.st.LastError = downErr.Error()
		}
	})
	if err != nil {
		cancel(err)
	}
}

// refuse sets the refusal reason to err's, or clears it when err is nil:
// each attempt's outcome replaces the previous attempt's reason, so a
// reason never outlives its cause.
func (r *remote) refuse(err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.RefusedReason != reason {
		r.st.RefusedReason = reason
		r.st.LastChange = r.m.clock.Now()
	}
}

func (r *remote) recordFailure(err error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Failures++
	r.st.LastError = err.Error()
}

func (r *remote) countReconnect() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.st.Reconnects++
}

func (r *remote) setConnected(up bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.Connected != up {
		r.st.LastChange = r.m.clock.Now()
	}
	r.st.Connected, r.st.Ready = up, up && r.st.Ready
}

// drain withdraws everything the remote contributed. No session may run.
func (r *remote) drain() {
	r.mu.Lock()
	stores := r.stores
	r.st.Served = false
	r.mu.Unlock()
	for _, s := range stores {
		if s != nil {
			s.Drain()
		}
	}
}

func (r *remote) status() Status {
	r.mu.Lock()
	st, stores := r.st, r.stores
	r.mu.Unlock()
	st.Kinds = make([]KindStatus, numKinds)
	for k := range numKinds {
		st.Kinds[k] = kindStatus(k, stores[k])
		if st.Kinds[k].WaitingForCanary {
			st.WaitingForCanary, st.Ready = true, false
		}
	}
	st.PodCIDROverlap = r.overlap()
	return st
}
