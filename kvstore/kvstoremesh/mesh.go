package kvstoremesh

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Config configures a Mesh.
type Config struct {
	// Dir is the directory of remote-cluster config files (the agent's
	// --clustermesh-config format).
	Dir string
	// Own is the local cluster.
	Own remoteconn.Own
	// StaleTTL withdraws the cache of a remote unreachable for that long;
	// 0 keeps it until the remote returns or its config is removed.
	StaleTTL time.Duration
	// MaxEntries bounds the valid entries of one kind of one remote; a
	// remote over it is refused and its cache withdrawn (0: no bound).
	MaxEntries int
	// Timing of connection attempts, probes and rescans (zero fields:
	// remoteconn.DefaultTiming).
	remoteconn.Timing
}

// DefaultConfig returns the defaults (those of the agent's direct mode).
func DefaultConfig() Config {
	return Config{
		Own:        remoteconn.Own{MaxConnectedClusters: wire.DefaultMaxConnectedClusters},
		MaxEntries: 1_000_000,
		Timing:     remoteconn.DefaultTiming(),
	}
}

// RegisterFlags registers the flags of the settings an operator changes.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Dir, "kvstoremesh-config", c.Dir, "directory of remote-cluster etcd configs to mirror into the local etcd (kvstoremesh), one file per cluster, named after it (empty: kvstoremesh off)")
	fs.DurationVar(&c.StaleTTL, "kvstoremesh-stale-ttl", c.StaleTTL, "withdraw a remote cluster's cache after it has been unreachable this long (0: keep it)")
	fs.IntVar(&c.MaxEntries, "kvstoremesh-max-entries", c.MaxEntries, "most valid entries of one kind mirrored for one remote cluster; a remote over it is refused and its cache withdrawn (0: no bound)")
}

func (c *Config) withDefaults() {
	if c.Own.MaxConnectedClusters == 0 {
		c.Own.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	c.Timing = c.Timing.WithDefaults()
}

// Mesh mirrors every remote cluster of its config directory.
type Mesh struct {
	cfg   Config
	local *kvstore.Client
	log   *slog.Logger
	clock clock.WithTicker

	wg         sync.WaitGroup // remote goroutines
	newWatcher func() (*fsnotify.Watcher, error)

	mu      sync.Mutex
	remotes map[string]*remote // guarded by mu: by cluster name
	ids     map[uint32]string  // guarded by mu: reserved cluster IDs
}

// New returns a Mesh writing into local.
func New(cfg Config, local *kvstore.Client, log *slog.Logger, clk clock.WithTicker) *Mesh {
	cfg.withDefaults()
	return &Mesh{
		cfg: cfg, local: local, log: log, clock: clk,
		newWatcher: fsnotify.NewWatcher,
		remotes:    map[string]*remote{},
		ids:        map[uint32]string{},
	}
}

// Run watches the config directory and mirrors the remotes until ctx is
// done. On return every goroutine has exited; the cache stays.
func (m *Mesh) Run(ctx context.Context) error {
	defer func() {
		m.mu.Lock()
		rs := maps.Clone(m.remotes)
		m.mu.Unlock()
		for _, r := range rs {
			r.stop()
		}
		m.wg.Wait()
	}()
	dc := remoteconn.DirConfig{Dir: m.cfg.Dir, Rescan: m.cfg.RescanInterval, Clock: m.clock, NewWatcher: m.newWatcher, Log: m.log}
	scan := func() { m.scan(ctx) }
	return remoteconn.WatchDir(ctx, dc, scan, scan)
}

// scan reconciles the mirrored remotes with the directory's files; only
// the Run goroutine calls it.
func (m *Mesh) scan(ctx context.Context) {
	files, err := remoteconn.ReadDir(m.cfg.Dir)
	if err != nil {
		m.log.Warn("reading config directory", "dir", m.cfg.Dir, "error", err)
		return // keep what runs: a transient error must not empty the cache
	}
	delete(files, m.cfg.Own.Name)
	m.mu.Lock()
	existing := maps.Clone(m.remotes)
	m.mu.Unlock()
	for name, data := range files {
		if err := wire.ValidateClusterName(name); err != nil {
			m.log.Warn("ignoring config file not named after a valid cluster", "file", name, "error", err)
			delete(files, name)
			continue
		}
		r := existing[name]
		switch {
		case r == nil:
			r = newRemote(m, name)
			m.mu.Lock()
			m.remotes[name] = r
			m.mu.Unlock()
			m.log.Info("mirroring remote cluster", "cluster", name)
			r.startStores(ctx)
		case !bytes.Equal(r.data, data):
			m.log.Info("remote cluster config changed, reconnecting", "cluster", name)
			r.stop()
		default:
			continue
		}
		r.start(ctx, data)
	}
	for name, r := range existing {
		if _, ok := files[name]; ok {
			continue
		}
		m.log.Info("remote cluster removed, deleting its cache", "cluster", name)
		r.stop()
		r.stopStores()
		if err := m.deleteCache(ctx, name); err != nil {
			m.log.Warn("cannot delete the cache of a removed remote cluster", "cluster", name, "error", err)
		}
		m.mu.Lock()
		if r.id != 0 && m.ids[r.id] == name {
			delete(m.ids, r.id)
		}
		delete(m.remotes, name)
		m.mu.Unlock()
	}
}

// deleteCache deletes every cache key, canary and the cluster config copy
// of cluster name from the local etcd.
func (m *Mesh) deleteCache(ctx context.Context, name string) error {
	ops := []clientv3.Op{
		clientv3.OpDelete(wire.ClusterConfigKey(name)),
		clientv3.OpDelete(wire.SyncedPrefix+name+"/"+wire.CachePrefix, clientv3.WithPrefix()),
	}
	for _, k := range wire.Kinds() {
		ops = append(ops, clientv3.OpDelete(wire.KindCachePrefix(k, name), clientv3.WithPrefix()))
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := m.local.Etcd().Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("delete cache of %q: %w", name, err)
	}
	return nil
}

// reserve reserves id for r (freeing r's previous ID).
func (m *Mesh) reserve(r *remote, id uint32) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := remoteconn.CheckID(id, m.cfg.Own.ID, m.ids[id], r.name); err != nil {
		return err
	}
	if r.id != 0 && r.id != id && m.ids[r.id] == r.name {
		delete(m.ids, r.id)
	}
	m.ids[id] = r.name
	r.id = id
	return nil
}

// Status returns the status of every configured remote, sorted by name.
func (m *Mesh) Status() []Status {
	m.mu.Lock()
	rs := slices.Collect(maps.Values(m.remotes))
	m.mu.Unlock()
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.status())
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}
