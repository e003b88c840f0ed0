package remotecluster

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/spf13/pflag"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/restorehold"
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
	// Holding and Release: the restore hold (restorehold.Hold decides).
	restorehold.Datapath
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
// range, labelled with its cluster; the labels are the ones the identity
// store holds: kept, not copied), and the identity and named ports of
// every remote pod's ipcache entry as it changes (ID 0: no entry), for
// named ports in policy.
type IdentitySink interface {
	UpsertIdentityLabels(id uint32, labels selector.Labels)
	DeleteIdentity(id uint32)
	UpdateEndpointPorts(oldID uint32, old []wire.NamedPort, curID uint32, cur []wire.NamedPort)
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

// Manager runs one connection per remote cluster config file: a
// remoteconn.Set whose members program the datapath, the service merger
// and the policy engine from their remote.
type Manager struct {
	cfg   Config
	dp    DatapathSink
	svcs  ServiceSink
	log   *slog.Logger
	clock clock.WithTicker
	set   *remoteconn.Set[*remote]

	// newWatcher makes the config directory watcher (fsnotify.NewWatcher;
	// tests wrap it to close watchers under the manager).
	newWatcher func() (*fsnotify.Watcher, error)

	// hold decides when restored datapath entries may be deleted.
	hold *restorehold.Hold
}

// New returns a Manager.
func New(cfg Config, dp DatapathSink, svcs ServiceSink, log *slog.Logger, clk clock.WithTicker) *Manager {
	cfg.withDefaults()
	m := &Manager{cfg: cfg, dp: dp, svcs: svcs, log: log, clock: clk, newWatcher: fsnotify.NewWatcher}
	sc := remoteconn.SetConfig{
		Dir:       cfg.Dir,
		Own:       remoteconn.Own{Name: cfg.ClusterName, ID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters, Dial: cfg.Dial},
		StaleTTL:  cfg.StaleTTL,
		LimitFlag: "--remote-max-entries",
		Started:   func() { m.hold.Started(m.set.Configured) },
		Timing: remoteconn.Timing{
			BackoffMin: cfg.BackoffMin, BackoffMax: cfg.BackoffMax, DeniedBackoffMax: cfg.DeniedBackoffMax,
			ProbeInterval: cfg.ProbeInterval, ProbeTimeout: cfg.ProbeTimeout, RescanInterval: cfg.RescanInterval,
		},
		NewWatcher: func() (*fsnotify.Watcher, error) { return m.newWatcher() },
	}
	if cfg.CacheConfig != "" {
		sc.Files = func(files map[string][]byte) (map[string][]byte, error) {
			return remoteconn.ThroughCache(files, cfg.CacheConfig)
		}
	}
	m.set = remoteconn.NewSet(sc, func(name string, log *slog.Logger) *remote { return newRemote(m, name, log) }, log, clk)
	m.hold = restorehold.New(restorehold.Config{OwnID: cfg.ClusterID, PolicyID: dpsync.CIDRClusterID, StateDir: cfg.StateDir}, dp, m.set.IDs, log)
	return m
}

// Run watches the config directory and runs the remotes until ctx is done.
// On return every remote goroutine has exited; their datapath state stays.
func (m *Manager) Run(ctx context.Context) error {
	m.hold.Load()
	return m.set.Run(ctx)
}

// PoliciesSynced tells the restore hold that the agent's policies are
// synced: restored CIDR entries no policy names may go.
func (m *Manager) PoliciesSynced() { m.hold.PoliciesSynced() }

// OwnSynced tells the restore hold that the own cluster's sources have
// delivered their full state.
func (m *Manager) OwnSynced() { m.hold.OwnSynced() }

// Status returns the status of every configured remote, sorted by name.
func (m *Manager) Status() []Status {
	rs := m.set.Remotes()
	out := make([]Status, 0, len(rs))
	byID := map[uint32]int{}
	for _, r := range rs {
		st := r.Member.status(r.State)
		if st.ID != 0 {
			byID[st.ID] = len(out)
		}
		out = append(out, st)
	}
	m.addRefusals(out, byID)
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

// ClusterNames maps the reserved cluster IDs, and the own, to names.
func (m *Manager) ClusterNames() map[uint32]string {
	out := m.set.ClusterNames()
	out[m.cfg.ClusterID] = m.cfg.ClusterName
	return out
}
