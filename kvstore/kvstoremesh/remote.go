package kvstoremesh

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// remote is the member of one mirrored remote cluster: for as long as the
// remote is configured, the syncstores writing its cache (Run), and per
// session the watchstores reading it (Connected).
type remote struct {
	m    *Mesh
	name string
	log  *slog.Logger

	// rem is the remote the current session validates entries against;
	// written by Connected before the readers run.
	rem wire.Remote

	config *syncstore.Store // the cluster config copy
	kinds  []*mirror        // one per wire.Kinds()
}

func newRemote(m *Mesh, name string, log *slog.Logger) *remote {
	r := &remote{m: m, name: name, log: log}
	key := wire.ClusterConfigKey(name)
	r.config = syncstore.New(m.local, syncstore.Config{Prefix: key, Name: "cache-config-" + name}, r.log, nil)
	for _, k := range wire.Kinds() {
		r.kinds = append(r.kinds, newMirror(r, k))
	}
	return r
}

// Run runs the remote's syncstores until ctx is done.
func (r *remote) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errs := make([]error, 1+len(r.kinds))
	for i, s := range append([]*syncstore.Store{r.config}, r.outs()...) {
		wg.Go(func() { errs[i] = s.Run(ctx) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (r *remote) outs() []*syncstore.Store {
	out := make([]*syncstore.Store, len(r.kinds))
	for i, k := range r.kinds {
		out[i] = k.out
	}
	return out
}

// Connected copies the remote's cluster config into the cache and returns
// one reader per kind.
func (r *remote) Connected(s remoteconn.Session) ([]remoteconn.Reader, error) {
	copied, err := wire.MarshalClusterConfig(cachedConfig(s.Config))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", remoteconn.ErrClusterConfig, err)
	}
	r.config.Upsert(wire.ClusterConfigKey(r.name), copied)
	r.config.MarkSynced()
	r.rem = s.Remote
	readers := make([]remoteconn.Reader, 0, len(r.kinds))
	for _, k := range r.kinds {
		st := k.store(s)
		readers = append(readers, func(ctx context.Context, c *kvstore.Client, listed func()) error {
			k.listed = listed
			if err := st.RunOn(ctx, c); err != nil {
				return fmt.Errorf("watch %s: %w", k.kind, err)
			}
			return nil
		})
	}
	return readers, nil
}

// Synced: the cache holds the remote's listing (each kind's canary follows
// once it is written).
func (r *remote) Synced(remoteconn.Session) { r.log.Info("remote cluster mirrored") }

// Removed deletes the remote's cache, canaries and cluster config copy.
func (r *remote) Removed(uint32) {
	if err := r.m.deleteCache(r.name); err != nil {
		r.log.Warn("cannot delete the cache of a removed remote cluster", "error", err)
	}
}

// cachedConfig is the cluster config of the cache of a remote whose own
// config is cc (kvstore/wire keys.go).
func cachedConfig(cc wire.ClusterConfig) wire.ClusterConfig {
	return wire.ClusterConfig{ID: cc.ID, Capabilities: wire.Capabilities{
		SyncedCanaries: true, Cached: true, MaxConnectedClusters: uint32(cc.MaxConnected()),
	}}
}

// Drain withdraws the whole cache of the remote (keys and the cluster
// config copy, not the canaries): agents reading the cache then see the
// remote not ready instead of ready and empty. No session runs.
func (r *remote) Drain() {
	for _, k := range r.kinds {
		k.drain()
	}
	r.config.Delete(wire.ClusterConfigKey(r.name))
}

// status is the mirror's status for the remote's connection state st.
func (r *remote) status(cs remoteconn.State) Status {
	st := Status{Name: cs.Name, ID: cs.ID, Health: cs.Health, Served: cs.Served, RefusedReason: cs.RefusedReason, LastHeartbeat: cs.LastHeartbeat}
	// The cache equals the remote now, and agents reading it find the
	// cluster config copy (its writer is not ordered with the kinds').
	st.Synced = cs.Ready && cs.Connected && r.config.Written(wire.ClusterConfigKey(r.name))
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

// store returns the watchstore of the remote's prefix for session s: the
// previous session's (its first listing then
// deletes what vanished meanwhile), or a new one if the prefix changed.
func (k *mirror) store(s remoteconn.Session) *watchstore.Store[[]byte] {
	cfg := s.ReaderConfig(k.kind, "mirror-"+string(k.kind), k.r.m.cfg.MaxEntries)
	if k.in != nil && k.inCfg == cfg {
		return k.in
	}
	if k.in != nil {
		k.in.Drain()
	}
	k.in, k.inCfg = watchstore.New(nil, cfg, k.decode, &mirrorObserver{k: k, from: cfg.Prefix}, k.r.log.With("kind", string(k.kind))), cfg
	k.mu.Lock()
	k.current = k.in
	k.mu.Unlock()
	return k.in
}

// decode validates a remote value as the agent does and keeps a copy of it
// as it is (a listed value is a slice of its whole list page).
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
	return bytes.Clone(v), nil
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
