package localidentity

import (
	"context"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Config names the own cluster, whose identity range the values must lie in.
type Config struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters int
	// OnChange is called, outside the watcher's lock, with a pod address
	// whose entry changed (appeared, went away, or its identity, node or
	// pod changed).
	OnChange func(netip.Addr)
	// OnIdentity is called with an identity's labels (nil: deleted).
	OnIdentity func(id uint32, labels wire.Labels)
	// OnSynced is called once, when the pod addresses of the first full
	// listing (after the sync canary) have been delivered.
	OnSynced func()
	// OnEndpointPorts is called when a pod's ipcache entry changes, with
	// its identity and named ports before and after (ID 0: no entry).
	OnEndpointPorts func(oldID uint32, old []wire.NamedPort, curID uint32, cur []wire.NamedPort)
}

// Watcher holds the own cluster's pod identities. Run it once.
type Watcher struct {
	cfg     Config
	connect func(context.Context) (*kvstore.Client, error)
	log     *slog.Logger

	synced sync.Once

	mu  sync.Mutex
	ips map[netip.Addr]Pod // guarded by mu
}

// Pod is what the own cluster's etcd says of a pod address.
type Pod struct {
	// Identity is the numeric security identity.
	Identity uint32
	// Host is the address of the pod's node (HostIP: the tunnel endpoint).
	Host netip.Addr
	// Namespace and Name name the pod ("" when the entry does not).
	Namespace, Name string
}

// New returns a Watcher that reads through the client connect returns
// (the own cluster's etcd, --kvstore-config).
func New(cfg Config, connect func(context.Context) (*kvstore.Client, error), log *slog.Logger) *Watcher {
	return &Watcher{cfg: cfg, connect: connect, log: log, ips: map[netip.Addr]Pod{}}
}

// Identity returns the identity of a pod address of the own cluster, 0 when
// it is not known (yet).
func (w *Watcher) Identity(ip netip.Addr) uint32 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.ips[ip].Identity
}

// Pod returns the entry of a pod address of the own cluster (false: none
// known).
func (w *Watcher) Pod(ip netip.Addr) (Pod, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	p, ok := w.ips[ip]
	return p, ok
}

// Addrs returns every pod address of the own cluster known now.
func (w *Watcher) Addrs() []netip.Addr {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Collect(maps.Keys(w.ips))
}

// connectBackoff spaces the attempts to reach the own cluster's etcd.
var connectBackoff = backoff.Policy{Min: 500 * time.Millisecond, Max: 30 * time.Second}

// Run connects (again after each failure, with backoff: the own etcd may
// be unreachable when the agent starts, as when its apiserver restarts)
// and watches until ctx is done. While it is not connected the own pods
// keep the identities last read (0 at start: unknown).
func (w *Watcher) Run(ctx context.Context) error {
	clk := clock.RealClock{}
	retry := backoff.New(connectBackoff, clk)
	for {
		c, err := w.connect(ctx)
		if err == nil {
			defer c.Close()
			return w.watch(ctx, c)
		}
		if ctx.Err() != nil {
			return nil
		}
		wait := retry.Failure()
		w.log.Warn("cannot reach the own cluster's etcd for the pods' identities, retrying", "error", err, "retry_in", wait)
		select {
		case <-ctx.Done():
			return nil
		case <-clk.After(wait):
		}
	}
}

// watch reads the identities through c until ctx is done; c's watches
// reconnect by themselves.
func (w *Watcher) watch(ctx context.Context, c *kvstore.Client) error {
	rem := wire.Remote{Name: w.cfg.ClusterName, ID: w.cfg.ClusterID, MaxConnectedClusters: w.cfg.MaxConnectedClusters}
	ips := watchstore.New(c, watchstore.Config{
		Prefix: wire.IPPrefix, SyncedKey: wire.SyncedKey(w.cfg.ClusterName, wire.KindIP),
		Name: "local-ipcache", Cluster: w.cfg.ClusterName,
	}, func(key string, v []byte) (wire.IPIdentityPair, error) {
		return wire.DecodeIPIdentityPair(rem, key, v)
	}, ipObserver{w}, w.log)
	ids := watchstore.New(c, watchstore.Config{
		Prefix: wire.IdentityIDPrefix, SyncedKey: wire.SyncedKey(w.cfg.ClusterName, wire.KindIdentities),
		Name: "local-identities", Cluster: w.cfg.ClusterName,
	}, func(key string, v []byte) (wire.Identity, error) {
		return wire.DecodeIdentity(rem, key, v)
	}, idObserver{w}, w.log)
	return runner.All(ctx, runner.Part{Name: "local ipcache", Run: ips.Run}, runner.Part{Name: "local identities", Run: ids.Run})
}

type ipObserver struct{ w *Watcher }

// OnUpsert records a host entry's identity (prefix entries name no pod).
func (o ipObserver) OnUpsert(_ string, p, prev wire.IPIdentityPair, hadPrev bool) {
	if !p.IsHost() {
		return
	}
	if f := o.w.cfg.OnEndpointPorts; f != nil {
		var oldID uint32
		if hadPrev && prev.IsHost() {
			oldID = prev.ID
		}
		f(oldID, prev.NamedPorts, p.ID, p.NamedPorts)
	}
	ip := p.Prefix().Addr()
	cur := Pod{Identity: p.ID, Host: p.HostIP.Unmap(), Namespace: p.K8sNamespace, Name: p.K8sPodName}
	o.w.mu.Lock()
	old, had := o.w.ips[ip]
	o.w.ips[ip] = cur
	o.w.mu.Unlock()
	if (!had || old != cur) && o.w.cfg.OnChange != nil {
		o.w.cfg.OnChange(ip)
	}
}

func (o ipObserver) OnDelete(_ string, p wire.IPIdentityPair) {
	if !p.IsHost() {
		return
	}
	if f := o.w.cfg.OnEndpointPorts; f != nil {
		f(p.ID, p.NamedPorts, 0, nil)
	}
	ip := p.Prefix().Addr()
	o.w.mu.Lock()
	_, had := o.w.ips[ip]
	delete(o.w.ips, ip)
	o.w.mu.Unlock()
	if had && o.w.cfg.OnChange != nil {
		o.w.cfg.OnChange(ip)
	}
}

func (o ipObserver) OnSync() {
	if f := o.w.cfg.OnSynced; f != nil {
		o.w.synced.Do(f)
	}
}

type idObserver struct{ w *Watcher }

func (o idObserver) OnUpsert(_ string, id, _ wire.Identity, _ bool) {
	if o.w.cfg.OnIdentity != nil {
		o.w.cfg.OnIdentity(id.ID, id.Labels)
	}
}

func (o idObserver) OnDelete(_ string, id wire.Identity) {
	if o.w.cfg.OnIdentity != nil {
		o.w.cfg.OnIdentity(id.ID, nil)
	}
}

func (idObserver) OnSync() {}
