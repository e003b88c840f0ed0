package kvstoremesh

import (
	"context"
	"fmt"
	"log/slog"
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

// Mesh mirrors every remote cluster of its config directory: a
// remoteconn.Set whose members mirror their remote into the cache.
type Mesh struct {
	cfg   Config
	local *kvstore.Client
	set   *remoteconn.Set[*remote]
	// newWatcher makes the config directory watcher (tests wrap it).
	newWatcher func() (*fsnotify.Watcher, error)
}

// New returns a Mesh writing into local.
func New(cfg Config, local *kvstore.Client, log *slog.Logger, clk clock.WithTicker) *Mesh {
	cfg.withDefaults()
	m := &Mesh{cfg: cfg, local: local, newWatcher: fsnotify.NewWatcher}
	sc := remoteconn.SetConfig{
		Dir: cfg.Dir, Own: cfg.Own, StaleTTL: cfg.StaleTTL, LimitFlag: "--kvstoremesh-max-entries", Timing: cfg.Timing,
		NewWatcher: func() (*fsnotify.Watcher, error) { return m.newWatcher() },
	}
	m.set = remoteconn.NewSet(sc, func(name string, log *slog.Logger) *remote { return newRemote(m, name, log) }, log, clk)
	return m
}

// Run watches the config directory and mirrors the remotes until ctx is
// done. On return every goroutine has exited; the cache stays.
func (m *Mesh) Run(ctx context.Context) error { return m.set.Run(ctx) }

// deleteCache deletes every cache key, canary and the cluster config copy
// of cluster name from the local etcd.
func (m *Mesh) deleteCache(name string) error {
	ops := []clientv3.Op{
		clientv3.OpDelete(wire.ClusterConfigKey(name)),
		clientv3.OpDelete(wire.SyncedPrefix+name+"/"+wire.CachePrefix, clientv3.WithPrefix()),
	}
	for _, k := range wire.Kinds() {
		ops = append(ops, clientv3.OpDelete(wire.KindCachePrefix(k, name), clientv3.WithPrefix()))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := m.local.Etcd().Txn(ctx).Then(ops...).Commit(); err != nil {
		return fmt.Errorf("delete cache of %q: %w", name, err)
	}
	return nil
}

// Status returns the status of every configured remote, sorted by name.
func (m *Mesh) Status() []Status {
	rs := m.set.Remotes()
	out := make([]Status, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.Member.status(r.State))
	}
	return out
}
