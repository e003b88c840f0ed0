package remotecluster

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/pflag"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Reasons a remote is refused, visible in Status.RefusedReason (the
// connection logic's, kvstore/remoteconn).
var (
	ErrClusterIDConflict = remoteconn.ErrClusterIDConflict
	ErrClusterConfig     = remoteconn.ErrClusterConfig
	ErrConfigFile        = remoteconn.ErrConfigFile
)

// ErrConfigWatchClosed: the watcher of the config directory stopped and a
// new one could not be made; Run returns it (wrapped).
var ErrConfigWatchClosed = remoteconn.ErrConfigWatchClosed

// DatapathSink is what the manager needs of the datapath reconciler.
type DatapathSink interface {
	UpsertTunnel(datapath.TunnelEntry)
	DeleteTunnel(netip.Prefix, uint32)
	UpsertIPCache(datapath.IPCacheEntry)
	DeleteIPCache(netip.Prefix, uint32)
	// Holding lists the cluster IDs whose restored entries are held.
	Holding() []uint32
	// Release ends the hold on restored entries of a cluster ID.
	Release(uint32)
	// Refusals lists the remote claims the trust rules refuse.
	Refusals() []dpsync.Refusal
}

// ServiceSink is what the manager needs of the service merger.
type ServiceSink interface {
	SetRemote(servicemerge.Name, string, servicemerge.RemoteService)
	DeleteRemote(servicemerge.Name, string)
}

// Config configures a Manager.
type Config struct {
	// Dir is the directory of remote-cluster config files.
	Dir string
	// ClusterName, ClusterID and MaxConnectedClusters describe the own cluster.
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters int
	// StateDir persists the reserved remote cluster IDs ("" disables).
	StateDir string
	// StaleTTL withdraws the state of a remote unreachable for that long;
	// 0 keeps it until the remote returns or its config is removed.
	StaleTTL time.Duration
	// BackoffMin and BackoffMax bound the delay between connection attempts.
	BackoffMin, BackoffMax time.Duration
	// DeniedBackoffMax bounds the delay after an attempt the remote's etcd
	// refused for want of a user or permission: that is how a remote looks
	// between `clustermesh connect` and its apiserver creating our user, so
	// the agent connects within this long of the user's creation.
	DeniedBackoffMax time.Duration
	// ProbeInterval is how often a connected remote's etcd is probed, and
	// ProbeTimeout how long a probe may take.
	ProbeInterval, ProbeTimeout time.Duration
	// RescanInterval rescans the directory even without fsnotify events.
	RescanInterval time.Duration
	// LocalPodCIDRs returns the local cluster's pod CIDRs (all its nodes');
	// a remote node pod CIDR overlapping one is refused (overlap.go). nil:
	// no check.
	LocalPodCIDRs func() []netip.Prefix
	// CacheConfig, when set, is the etcd client config file of the own
	// cluster's etcd, which holds a kvstoremesh cache of every remote
	// (connection mode kvstoremesh): each remote named in Dir is read
	// through it, from the cache prefix its copied cluster config points
	// to, instead of through its own file. "" (direct mode): each remote's
	// file.
	CacheConfig string
	// Dial, when set, dials the etcd endpoints of the remotes (or of the
	// cache): the agent resolves Kubernetes Service names with it.
	Dial kvstore.Dialer
	// MaxEntries bounds the valid entries of each kind (nodes, identities,
	// ipcache, services) the agent holds for one remote; a remote over it
	// is refused and its state withdrawn (0: no bound).
	MaxEntries int
	// Identities, if set, is told about every remote identity (for the
	// policy engine); a drained remote deletes its identities.
	Identities IdentitySink
}

// IdentitySink takes remote identities, already validated (in the remote's
// range, labelled with its cluster).
type IdentitySink interface {
	UpsertIdentity(id uint32, labels wire.Labels)
	DeleteIdentity(id uint32)
}

// DefaultMaxEntries is the default bound of Config.MaxEntries: four times
// Cilium's scale test's 250k endpoints, all in one remote.
const DefaultMaxEntries = 1_000_000

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	t := remoteconn.DefaultTiming()
	return Config{
		MaxConnectedClusters: wire.DefaultMaxConnectedClusters,
		BackoffMin:           t.BackoffMin,
		BackoffMax:           t.BackoffMax,
		DeniedBackoffMax:     t.DeniedBackoffMax,
		ProbeInterval:        t.ProbeInterval,
		ProbeTimeout:         t.ProbeTimeout,
		RescanInterval:       t.RescanInterval,
		MaxEntries:           DefaultMaxEntries,
	}
}

// RegisterFlags registers the manager's own flags on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.Dir, "clustermesh-config", c.Dir, "directory of remote-cluster etcd configs, one file per cluster, named after it")
	fs.StringVar(&c.CacheConfig, "clustermesh-cache-config", c.CacheConfig, "etcd client config of the own cluster's kvstoremesh cache (connection mode kvstoremesh): every remote of --clustermesh-config is read through it (empty: direct mode, each remote's own etcd)")
	fs.DurationVar(&c.StaleTTL, "remote-stale-ttl", c.StaleTTL, "withdraw a remote cluster's state after it has been unreachable this long (0: keep it)")
	fs.IntVar(&c.MaxEntries, "remote-max-entries", c.MaxEntries, "most valid entries of one kind (nodes, identities, ipcache, services) held for one remote cluster; a remote over it is refused and its state withdrawn (0: no bound)")
}

func (c *Config) withDefaults() {
	if c.MaxConnectedClusters == 0 {
		c.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	t := remoteconn.Timing{
		BackoffMin: c.BackoffMin, BackoffMax: c.BackoffMax, DeniedBackoffMax: c.DeniedBackoffMax,
		ProbeInterval: c.ProbeInterval, ProbeTimeout: c.ProbeTimeout, RescanInterval: c.RescanInterval,
	}.WithDefaults()
	c.BackoffMin, c.BackoffMax, c.DeniedBackoffMax = t.BackoffMin, t.BackoffMax, t.DeniedBackoffMax
	c.ProbeInterval, c.ProbeTimeout, c.RescanInterval = t.ProbeInterval, t.ProbeTimeout, t.RescanInterval
}

// Manager runs one connection per remote cluster config file.
type Manager struct {
	cfg   Config
	dp    DatapathSink
	svcs  ServiceSink
	log   *slog.Logger
	clock clock.WithTicker

	wg sync.WaitGroup // remote goroutines
	// newWatcher makes the config directory watcher (fsnotify.NewWatcher;
	// tests wrap it to close watchers under the manager).
	newWatcher func() (*fsnotify.Watcher, error)

	mu        sync.Mutex
	remotes   map[string]*remote // guarded by mu: by cluster name
	ids       map[uint32]string  // guarded by mu: reserved cluster IDs
	persisted map[string]uint32  // guarded by mu: name → ID as last persisted
	ownWarned bool               // guarded by mu
}

// New returns a Manager.
func New(cfg Config, dp DatapathSink, svcs ServiceSink, log *slog.Logger, clk clock.WithTicker) *Manager {
	cfg.withDefaults()
	return &Manager{
		cfg: cfg, dp: dp, svcs: svcs, log: log, clock: clk,
		newWatcher: fsnotify.NewWatcher,
		remotes:    map[string]*remote{},
		ids:        map[uint32]string{},
		persisted:  map[string]uint32{},
	}
}

// Run watches the config directory and runs the remotes until ctx is done.
// On return every remote goroutine has exited; their datapath state stays.
func (m *Manager) Run(ctx context.Context) error {
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
	return remoteconn.WatchDir(ctx, dc, func() {
		m.loadState()
		m.scan(ctx)
		m.releaseUnclaimed()
	}, func() { m.scan(ctx) })
}

// scan reconciles the running remotes with the directory's files. Only the
// Run goroutine calls it; remotes are stopped outside m.mu, since a stopping
// remote may wait for m.mu.
func (m *Manager) scan(ctx context.Context) {
	files, err := remoteconn.ReadDir(m.cfg.Dir)
	if err != nil {
		m.log.Warn("reading config directory", "dir", m.cfg.Dir, "error", err)
		return // keep what runs: a transient error must not drain the mesh
	}
	if m.cfg.CacheConfig != "" {
		if files, err = remoteconn.ThroughCache(files, m.cfg.CacheConfig); err != nil {
			m.log.Warn("reading the cache config", "file", m.cfg.CacheConfig, "error", err)
			return
		}
	}
	m.mu.Lock()
	if _, ok := files[m.cfg.ClusterName]; ok {
		if !m.ownWarned {
			m.log.Info("ignoring the config file of the agent's own cluster", "cluster", m.cfg.ClusterName)
			m.ownWarned = true
		}
		delete(files, m.cfg.ClusterName)
	}
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
			m.log.Info("remote cluster added", "cluster", name)
		case !bytes.Equal(r.data, data):
			m.log.Info("remote cluster config changed, reconnecting", "cluster", name)
			r.stop()
			r.countReconnect()
		default:
			continue
		}
		r.start(ctx, data)
	}
	for name, r := range existing {
		if _, ok := files[name]; ok {
			continue
		}
		m.log.Info("remote cluster removed, draining its state", "cluster", name)
		r.stop()
		r.drain()
		m.mu.Lock()
		release := []uint32{}
		if r.id != 0 {
			delete(m.ids, r.id)
			release = append(release, r.id)
		}
		if id, ok := m.persisted[name]; ok {
			release = append(release, id)
			delete(m.persisted, name)
		}
		delete(m.remotes, name)
		m.saveStateLocked()
		m.mu.Unlock()
		for _, id := range release {
			m.dp.Release(id)
		}
	}
}

// releaseUnclaimed releases restored entries of cluster IDs that no
// configured remote will claim.
func (m *Manager) releaseUnclaimed() {
	m.mu.Lock()
	keep := map[uint32]bool{m.cfg.ClusterID: true}
	for name, id := range m.persisted {
		if _, ok := m.remotes[name]; ok {
			keep[id] = true
		}
	}
	m.mu.Unlock()
	for _, id := range m.dp.Holding() {
		if !keep[id] {
			m.log.Info("releasing restored datapath entries of an unconfigured cluster", "cluster_id", id)
			m.dp.Release(id)
		}
	}
}

// reserve reserves id for r (freeing r's previous ID if it differs) and
// returns the ID persisted for r before, 0 if none.
func (m *Manager) reserve(r *remote, id uint32) (uint32, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := remoteconn.CheckID(id, m.cfg.ClusterID, m.ids[id], r.name); err != nil {
		return 0, err
	}
	if r.id != 0 && r.id != id {
		delete(m.ids, r.id)
	}
	m.ids[id] = r.name
	r.id = id
	old := m.persisted[r.name]
	if old != id {
		m.persisted[r.name] = id
		m.saveStateLocked()
	}
	return old, nil
}

func (m *Manager) stateFile() string { return filepath.Join(m.cfg.StateDir, "remote-clusters.json") }

func (m *Manager) loadState() {
	if m.cfg.StateDir == "" {
		return
	}
	data, err := os.ReadFile(m.stateFile())
	if err != nil {
		if !errors.Is(err, os.ErrNotExist) {
			m.log.Warn("reading remote cluster state", "error", err)
		}
		return
	}
	var st map[string]uint32
	if err := json.Unmarshal(data, &st); err != nil {
		m.log.Warn("ignoring unreadable remote cluster state", "error", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, id := range st {
		m.persisted[name] = id
	}
}

func (m *Manager) saveStateLocked() {
	if m.cfg.StateDir == "" {
		return
	}
	data, _ := json.Marshal(m.persisted)
	tmp := m.stateFile() + ".tmp"
	if err := os.MkdirAll(m.cfg.StateDir, 0o700); err == nil {
		if err = os.WriteFile(tmp, data, 0o600); err == nil {
			err = os.Rename(tmp, m.stateFile())
		}
		if err == nil {
			return
		}
		m.log.Warn("persisting remote cluster state", "error", err)
	}
}

// Status returns the status of every configured remote, sorted by name.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	rs := make([]*remote, 0, len(m.remotes))
	for _, r := range m.remotes {
		rs = append(rs, r)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(rs))
	byID := map[uint32]int{}
	for _, r := range rs {
		st := r.status()
		if st.ID != 0 {
			byID[st.ID] = len(out)
		}
		out = append(out, st)
	}
	m.addRefusals(out, byID)
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// addRefusals fills Refused and Conflicts of the statuses out, indexed by
// cluster ID in byID, from the datapath's refusals.
func (m *Manager) addRefusals(out []Status, byID map[uint32]int) {
	if m.dp == nil || len(byID) == 0 {
		return
	}
	names := m.ClusterNames()
	name := func(id uint32) string {
		if n, ok := names[id]; ok {
			return n
		}
		return fmt.Sprint(id)
	}
	for _, rf := range m.dp.Refusals() {
		i, ok := byID[rf.ClusterID]
		if !ok {
			continue
		}
		st := &out[i]
		j := slices.IndexFunc(st.Refused, func(c RefusedClaims) bool { return c.Reason == string(rf.Reason) })
		if j < 0 {
			j = len(st.Refused)
			st.Refused = append(st.Refused, RefusedClaims{Reason: string(rf.Reason)})
		}
		rc := &st.Refused[j]
		rc.Count++
		if len(rc.Examples) < MaxConflictsShown {
			rc.Examples = append(rc.Examples, rf.Kind+" "+rf.Prefix.String())
		}
		if rf.Reason == dpsync.ReasonConflict && len(st.Conflicts) < MaxConflictsShown {
			c := Conflict{Kind: rf.Kind, Prefix: rf.Prefix.String()}
			for _, id := range rf.Claimants {
				c.Claimants = append(c.Claimants, name(id))
			}
			st.Conflicts = append(st.Conflicts, c)
		}
	}
}

// ClusterNames maps the reserved cluster IDs to names.
func (m *Manager) ClusterNames() map[uint32]string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[uint32]string, len(m.ids)+1)
	for id, n := range m.ids {
		out[id] = n
	}
	out[m.cfg.ClusterID] = m.cfg.ClusterName
	return out
}
