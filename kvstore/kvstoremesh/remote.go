package kvstoremesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// remote is one mirrored remote cluster: a connection loop (sessions) and,
// for as long as the remote is configured, the syncstores writing its
// cache.
type remote struct {
	m    *Mesh
	name string
	log  *slog.Logger
	data []byte // config file content; Run goroutine only

	cancel context.CancelFunc // of the connection loop; Run goroutine only
	done   chan struct{}      // closed when the connection loop exits

	storesCancel context.CancelFunc // of the syncstores; Run goroutine only
	storesDone   chan struct{}      // closed when the syncstores stopped

	id uint32 // reserved cluster ID; guarded by m.mu

	// rem is the remote the current session validates entries against;
	// written by the session goroutine before it runs the stores.
	rem   wire.Remote
	retry *backoff.Backoff // of the connection loop; its goroutine only

	config *syncstore.Store // the cluster config copy
	kinds  []*mirror        // one per wire.Kinds()

	mu sync.Mutex
	st Status // guarded by mu; Kinds are filled by status()
}

func newRemote(m *Mesh, name string) *remote {
	r := &remote{m: m, name: name, log: m.log.With("cluster", name)}
	r.st.Name = name
	key := wire.ClusterConfigKey(name)
	r.config = syncstore.New(m.local, syncstore.Config{Prefix: key, Name: "cache-config-" + name}, r.log, nil)
	for _, k := range wire.Kinds() {
		r.kinds = append(r.kinds, newMirror(r, k))
	}
	return r
}

// startStores runs the remote's syncstores until stopStores.
func (r *remote) startStores(ctx context.Context) {
	ctx, r.storesCancel = context.WithCancel(ctx)
	r.storesDone = make(chan struct{})
	stores := []*syncstore.Store{r.config}
	for _, k := range r.kinds {
		stores = append(stores, k.out)
	}
	var wg sync.WaitGroup
	for _, s := range stores {
		wg.Go(func() {
			if err := s.Run(ctx); err != nil && ctx.Err() == nil {
				r.log.Error("cache writer stopped", "error", err)
			}
		})
	}
	r.m.wg.Go(func() {
		wg.Wait()
		close(r.storesDone)
	})
}

func (r *remote) stopStores() {
	if r.storesCancel != nil {
		r.storesCancel()
		<-r.storesDone
		r.storesCancel = nil
	}
}

// start runs the connection loop for data. Call stop first if one runs.
func (r *remote) start(ctx context.Context, data []byte) {
	r.data = data
	r.setRefused(nil)
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.m.wg.Go(func() {
		defer close(r.done)
		r.retry = backoff.New(backoff.Policy{Min: r.m.cfg.BackoffMin, Max: r.m.cfg.BackoffMax}, r.m.clock)
		lc := remoteconn.LoopConfig{Retry: r.retry, DeniedBackoffMax: r.m.cfg.DeniedBackoffMax, Clock: r.m.clock, Log: r.log}
		remoteconn.Loop(ctx, lc, func(ctx context.Context) error { return r.session(ctx, data) }, func(err error) {
			r.mu.Lock()
			if err != nil {
				r.st.Failures++
				r.st.LastError = err.Error()
			}
			r.mu.Unlock()
			r.setRefused(remoteconn.Refusal(err))
		}, func() {
			r.mu.Lock()
			r.st.Reconnects++
			r.mu.Unlock()
		})
	})
}

// stop ends the connection loop and waits for it; the cache stays.
func (r *remote) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
	r.mu.Lock()
	r.st.Connected, r.st.Synced = false, false
	r.mu.Unlock()
}

// session connects once and mirrors until ctx is done or the connection
// must be rebuilt.
func (r *remote) session(ctx context.Context, data []byte) error {
	client, cc, err := remoteconn.Connect(ctx, r.name, r.m.cfg.Own, data, r.log)
	if err != nil {
		return err
	}
	defer client.Close()
	r.m.mu.Lock()
	prevID := r.id
	r.m.mu.Unlock()
	if prevID != 0 && prevID != cc.ID {
		r.log.Warn("remote cluster ID changed, withdrawing the cache of the old ID", "old", prevID, "new", cc.ID)
		r.drain()
	}
	if err := r.m.reserve(r, cc.ID); err != nil {
		return err
	}
	copied, err := wire.MarshalClusterConfig(cachedConfig(cc))
	if err != nil {
		return fmt.Errorf("%w: %w", remoteconn.ErrClusterConfig, err)
	}
	r.config.Upsert(wire.ClusterConfigKey(r.name), copied)
	r.config.MarkSynced()
	r.rem = wire.Remote{Name: r.name, ID: cc.ID, MaxConnectedClusters: cc.MaxConnected()}
	r.mu.Lock()
	r.st.ID, r.st.Connected, r.st.LastChange = cc.ID, true, r.m.clock.Now()
	r.mu.Unlock()
	r.retry.Success()
	r.log.Info("connected to remote cluster, mirroring", "id", cc.ID, "cached", cc.Capabilities.Cached)

	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	var listed sync.WaitGroup
	listed.Add(len(r.kinds))
	for _, k := range r.kinds {
		s := k.store(cc)
		var once sync.Once
		k.listed = func() { once.Do(listed.Done) }
		wg.Go(func() {
			if err := s.RunOn(sctx, client); err != nil {
				cancel(fmt.Errorf("watch %s: %w", k.kind, err))
			}
			k.listed()
		})
	}
	wg.Go(func() {
		listed.Wait()
		if sctx.Err() == nil {
			r.mu.Lock()
			r.st.Synced, r.st.Served, r.st.LastError, r.st.LastChange = true, true, "", r.m.clock.Now()
			r.mu.Unlock()
			r.log.Info("remote cluster mirrored")
		}
	})
	wg.Go(func() {
		remoteconn.WatchHeartbeat(sctx, client, func(t time.Time) {
			r.mu.Lock()
			r.st.LastHeartbeat = t
			r.mu.Unlock()
		})
	})
	wg.Go(func() { remoteconn.WatchClusterConfig(sctx, client, r.name, cc, cancel, nil) })
	wg.Go(func() {
		pc := remoteconn.ProbeConfig{Interval: r.m.cfg.ProbeInterval, Timeout: r.m.cfg.ProbeTimeout, StaleTTL: r.m.cfg.StaleTTL, Clock: r.m.clock}
		err := remoteconn.Probe(sctx, client, pc, func(up bool, downErr error, now time.Time) {
			r.mu.Lock()
			defer r.mu.Unlock()
			r.st.Probed(up, downErr, now)
		})
		if err != nil {
			cancel(err)
		}
	})
	<-sctx.Done()
	wg.Wait()
	r.mu.Lock()
	r.st.Connected, r.st.Synced = false, false
	r.mu.Unlock()
	cause := context.Cause(sctx)
	if errors.Is(cause, remoteconn.ErrStale) {
		r.log.Warn("withdrawing the cache of an unreachable remote cluster", "ttl", r.m.cfg.StaleTTL)
		r.drain()
	}
	if errors.Is(cause, watchstore.ErrTooManyEntries) {
		r.log.Warn("refusing a remote cluster over the entry limit and withdrawing its cache", "error", cause, "max_entries", r.m.cfg.MaxEntries)
		r.setRefused(cause)
		r.drain()
	}
	if ctx.Err() != nil {
		return nil
	}
	return cause
}

// cachedConfig is the cluster config of the cache of a remote whose own
// config is cc (kvstore/wire keys.go).
func cachedConfig(cc wire.ClusterConfig) wire.ClusterConfig {
	return wire.ClusterConfig{ID: cc.ID, Capabilities: wire.Capabilities{
		SyncedCanaries: true, Cached: true, MaxConnectedClusters: uint32(cc.MaxConnected()),
	}}
}

// drain withdraws the whole cache of the remote (keys, not canaries). No
// session may run.
func (r *remote) drain() {
	for _, k := range r.kinds {
		k.drain()
	}
	r.mu.Lock()
	r.st.Served = false
	r.mu.Unlock()
}

func (r *remote) setRefused(err error) {
	reason := ""
	if err != nil {
		reason = err.Error()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.st.RefusedReason != reason {
		r.st.RefusedReason, r.st.LastChange = reason, r.m.clock.Now()
	}
}

func (r *remote) status() Status {
	r.mu.Lock()
	st := r.st
	r.mu.Unlock()
	st.Synced = st.Synced && st.Connected // the cache equals the remote now
	for _, k := range r.kinds {
		ks := k.status()
		if !ks.Synced {
			st.Synced = false
		}
		st.Kinds = append(st.Kinds, ks)
	}
	return st
}

// mirror copies one kind of the remote into the cache.
type mirror struct {
	r    *remote
	kind wire.Kind
	out  *syncstore.Store // the cache prefix of the local etcd

	in    *watchstore.Store[[]byte] // the remote's prefix; session goroutine only
	inCfg watchstore.Config         // session goroutine only
	// listed is called when the session's listing is complete; set by the
	// session before it runs the store.
	listed func()

	mu      sync.Mutex
	current *watchstore.Store[[]byte] // guarded by mu: in, for status()
}

func newMirror(r *remote, k wire.Kind) *mirror {
	cfg := syncstore.Config{
		Prefix:    wire.KindCachePrefix(k, r.name),
		SyncedKey: wire.CachedSyncedKey(r.name, k),
		Name:      "cache-" + string(k) + "-" + r.name,
	}
	return &mirror{r: r, kind: k, out: syncstore.New(r.m.local, cfg, r.log.With("kind", string(k)), nil)}
}

// store returns the watchstore of the remote's prefix for a session with
// cluster config cc: the previous session's (its first listing then
// deletes what vanished meanwhile), or a new one if the prefix changed.
func (k *mirror) store(cc wire.ClusterConfig) *watchstore.Store[[]byte] {
	cached := cc.Capabilities.Cached
	cfg := watchstore.Config{
		Prefix: wire.WatchPrefix(k.kind, k.r.name, cached), Name: "mirror-" + string(k.kind),
		Cluster: k.r.name, MaxEntries: k.r.m.cfg.MaxEntries,
	}
	if cc.Capabilities.SyncedCanaries {
		cfg.SyncedKey = wire.WatchSyncedKey(k.kind, k.r.name, cached)
	}
	if k.in != nil && k.inCfg == cfg {
		return k.in
	}
	if k.in != nil {
		k.in.Drain()
	}
	k.in, k.inCfg = watchstore.New(nil, cfg, k.decode, &mirrorObserver{k: k, from: cfg.Prefix}, k.r.log.With("kind", string(k.kind)), nil), cfg
	k.mu.Lock()
	k.current = k.in
	k.mu.Unlock()
	return k.in
}

// decode validates a remote value as the agent does and keeps it as it is.
func (k *mirror) decode(key string, v []byte) ([]byte, error) {
	rem := k.r.rem
	var err error
	switch k.kind {
	case wire.KindNodes:
		_, err = wire.DecodeNode(rem, key, v)
	case wire.KindServices:
		_, err = wire.DecodeService(rem, key, v)
	case wire.KindIdentities:
		_, err = wire.DecodeIdentity(rem, key, v)
	default:
		_, err = wire.DecodeIPIdentityPair(rem, key, v)
	}
	if err != nil {
		return nil, err
	}
	return v, nil
}

func (k *mirror) drain() {
	if k.in != nil {
		k.in.Drain()
	}
}

func (k *mirror) status() KindStatus {
	ks := KindStatus{Kind: string(k.kind)}
	select {
	case <-k.out.Synced():
		ks.CanaryWritten = true
	default:
	}
	k.mu.Lock()
	in := k.current
	k.mu.Unlock()
	if in == nil {
		return ks
	}
	st := in.Stats()
	ks.Synced = st.Synced && !st.WaitingForCanary && ks.CanaryWritten
	ks.WaitingForCanary = st.WaitingForCanary
	ks.Entries, ks.Invalid, ks.LastEvent = uint64(st.Entries), st.Invalid, st.LastEvent
	if err := k.out.LastError(); err != nil {
		ks.WriteError = err.Error()
	}
	return ks
}

// mirrorObserver writes the entries of one remote prefix to the cache.
type mirrorObserver struct {
	k    *mirror
	from string // the remote prefix
}

// cacheKey maps a key of the remote's prefix to its cache key.
func (o *mirrorObserver) cacheKey(key string) string {
	return wire.WatchPrefix(o.k.kind, o.k.r.name, true) + strings.TrimPrefix(key, o.from)
}

func (o *mirrorObserver) OnUpsert(key string, v, _ []byte, _ bool) {
	o.k.out.Upsert(o.cacheKey(key), v)
}
func (o *mirrorObserver) OnDelete(key string, _ []byte) { o.k.out.Delete(o.cacheKey(key)) }

// OnSync: the listing is handed to the cache writer; its canary follows
// once all of it is written.
func (o *mirrorObserver) OnSync() {
	o.k.out.MarkSynced()
	if o.k.listed != nil {
		o.k.listed()
	}
}
