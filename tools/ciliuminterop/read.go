package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path"
	"slices"
	"sync"
	"time"

	"github.com/cilium/cilium/pkg/allocator"
	"github.com/cilium/cilium/pkg/clustermesh/common"
	serviceStore "github.com/cilium/cilium/pkg/clustermesh/store"
	cmtypes "github.com/cilium/cilium/pkg/clustermesh/types"
	"github.com/cilium/cilium/pkg/identity"
	identityCache "github.com/cilium/cilium/pkg/identity/cache"
	"github.com/cilium/cilium/pkg/identity/key"
	"github.com/cilium/cilium/pkg/idpool"
	"github.com/cilium/cilium/pkg/ipcache"
	k8sConst "github.com/cilium/cilium/pkg/k8s/apis/cilium.io"
	"github.com/cilium/cilium/pkg/kvstore"
	kvstoreallocator "github.com/cilium/cilium/pkg/kvstore/allocator"
	"github.com/cilium/cilium/pkg/kvstore/store"
	"github.com/cilium/cilium/pkg/labels"
	nodeStore "github.com/cilium/cilium/pkg/node/store"
	"github.com/cilium/cilium/pkg/source"
)

// serviceExportsPrefix is Cilium's MCS-API service exports prefix
// (pkg/clustermesh/mcsapi/types.ServiceExportStorePrefix; that package pulls
// in the MCS-API CRDs, so the value is restated here).
const serviceExportsPrefix = "cilium/state/serviceexports/v1"

type readConfig struct {
	Dir          string
	Name         string
	ID           uint
	MaxConnected uint
	WaitFor      []string
	Timeout      time.Duration
}

// Report is what Cilium's code made of each remote cluster, and every
// warning or error it logged (a validation failure is always logged).
type Report struct {
	Clusters map[string]*ClusterReport `json:"clusters"`
	Warnings []string                  `json:"warnings"`
}

// ClusterReport is one remote cluster as Cilium decoded it.
type ClusterReport struct {
	Config     cmtypes.CiliumClusterConfig `json:"config"`
	Synced     map[string]bool             `json:"synced"`
	Nodes      map[string]NodeSummary      `json:"nodes"`
	Services   map[string]ServiceSummary   `json:"services"`
	IPCache    map[string]IPSummary        `json:"ipcache"`
	Identities map[string]string           `json:"identities"`
}

// NodeSummary is what Cilium parsed of a node.
type NodeSummary struct {
	Cluster       string   `json:"cluster"`
	ClusterID     uint32   `json:"clusterID"`
	Source        string   `json:"source"`
	Addresses     []string `json:"addresses"` // Type=IP
	IPv4AllocCIDR string   `json:"ipv4AllocCIDR,omitempty"`
	IPv6AllocCIDR string   `json:"ipv6AllocCIDR,omitempty"`
	IPv4HealthIP  string   `json:"ipv4HealthIP,omitempty"`
	IPv6HealthIP  string   `json:"ipv6HealthIP,omitempty"`
}

// ServiceSummary is what Cilium parsed of a service: ip -> port name -> "TCP:80".
type ServiceSummary struct {
	Shared    bool                         `json:"shared"`
	ClusterID uint32                       `json:"clusterID"`
	Frontends map[string]map[string]string `json:"frontends"`
	Backends  map[string]map[string]string `json:"backends"`
}

// IPSummary is what Cilium's IPIdentityWatcher handed to its ipcache.
type IPSummary struct {
	ID         uint32   `json:"id"`
	HostIP     string   `json:"hostIP"`
	Namespace  string   `json:"namespace,omitempty"`
	Pod        string   `json:"pod,omitempty"`
	NamedPorts []string `json:"namedPorts,omitempty"`
}

// collector gathers the report; Cilium calls it from its own goroutines.
type collector struct {
	mu     sync.Mutex
	report Report
}

func (c *collector) cluster(name string) *ClusterReport {
	cr := c.report.Clusters[name]
	if cr == nil {
		cr = &ClusterReport{Synced: map[string]bool{}, Nodes: map[string]NodeSummary{}, Services: map[string]ServiceSummary{},
			IPCache: map[string]IPSummary{}, Identities: map[string]string{}}
		c.report.Clusters[name] = cr
	}
	return cr
}

func (c *collector) update(name string, f func(*ClusterReport)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f(c.cluster(name))
}

// kinds a reader must have synced before the report is complete.
var kinds = []string{"nodes", "services", "ipcache", "identities"}

func (c *collector) allSynced(names []string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, n := range names {
		cr := c.report.Clusters[n]
		if cr == nil {
			return false
		}
		for _, k := range kinds {
			if !cr.Synced[k] {
				return false
			}
		}
		if cr.Config.Capabilities.ServiceExportsEnabled != nil && !cr.Synced["serviceexports"] {
			return false
		}
	}
	return true
}

func read(ctx context.Context, cfg readConfig, out io.Writer) error {
	if cfg.Dir == "" || len(cfg.WaitFor) == 0 {
		return fmt.Errorf("--clustermesh-config and at least one --wait-for are required")
	}
	col := &collector{report: Report{Clusters: map[string]*ClusterReport{}, Warnings: []string{}}}
	log := slog.New(&warnCapture{col: col, next: slog.NewTextHandler(io.Discard, nil)})
	local := cmtypes.ClusterInfo{ID: uint32(cfg.ID), Name: cfg.Name, MaxConnectedClusters: uint32(cfg.MaxConnected)}
	if err := local.InitClusterIDMax(); err != nil {
		return err
	}
	factory := store.NewFactory(log, store.MetricsProvider())
	cm := common.NewClusterMesh(common.Configuration{
		Logger:              log,
		Config:              common.Config{ClusterMeshConfig: cfg.Dir},
		ClusterInfo:         local,
		RemoteClientFactory: common.DefaultRemoteClientFactory(kvstore.Config{}),
		NewRemoteCluster: func(name string, _ common.StatusFunc) common.RemoteCluster {
			return &remote{name: name, local: local, col: col, log: log.With("cluster", name), factory: factory}
		},
		NodeName: "ciliuminterop",
		Metrics:  common.MetricsProvider("ciliuminterop")(),
	})
	if err := cm.Start(ctx); err != nil {
		return err
	}
	deadline := time.After(cfg.Timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var err error
wait:
	for !col.allSynced(cfg.WaitFor) {
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-deadline:
			err = fmt.Errorf("not synced after %v", cfg.Timeout)
			break wait
		case <-tick.C:
		}
	}
	_ = cm.Stop(context.Background())
	col.mu.Lock()
	defer col.mu.Unlock()
	enc := json.NewEncoder(out)
	enc.SetIndent("", "  ")
	if werr := enc.Encode(col.report); werr != nil && err == nil {
		err = werr
	}
	return err
}

// remote is the business logic of one remote cluster, built from Cilium's
// parts as its agent's pkg/clustermesh remoteCluster and KVStoreMesh do.
type remote struct {
	name      string
	local     cmtypes.ClusterInfo
	col       *collector
	log       *slog.Logger
	factory   store.Factory
	clusterID uint32
}

func (r *remote) synced(kind string) func(context.Context) {
	return func(context.Context) { r.col.update(r.name, func(cr *ClusterReport) { cr.Synced[kind] = true }) }
}

func (r *remote) Run(ctx context.Context, backend kvstore.BackendOperations, config cmtypes.CiliumClusterConfig, ready chan<- error) {
	if err := r.local.ValidateRemoteConfig(config); err != nil {
		r.log.Error("invalid remote cluster config", "error", err)
		ready <- err
		close(ready)
		return
	}
	r.clusterID = config.ID
	r.col.update(r.name, func(cr *ClusterReport) { cr.Config = config })

	nodes := r.factory.NewWatchStore(r.name,
		nodeStore.ValidatingKeyCreator(nodeStore.ClusterNameValidator(r.name), nodeStore.NameValidator(), nodeStore.ClusterIDValidator(&r.clusterID)),
		&nodeObserver{r}, store.RWSWithOnSyncCallback(r.synced("nodes")))
	services := r.factory.NewWatchStore(r.name,
		serviceStore.KeyCreator(serviceStore.ClusterNameValidator(r.name), serviceStore.NamespacedNameValidator(), serviceStore.ClusterIDValidator(&r.clusterID)),
		&serviceObserver{r}, store.RWSWithOnSyncCallback(r.synced("services")))
	exports := r.factory.NewWatchStore(r.name, store.KVPairCreator, nopObserver{}, store.RWSWithOnSyncCallback(r.synced("serviceexports")))
	ipw := ipcache.NewIPIdentityWatcher(r.log, r.name, &ipObserver{r}, r.factory, source.ClusterMesh, store.RWSWithOnSyncCallback(r.synced("ipcache")))

	idPrefix := identityCache.IdentitiesPath
	if config.Capabilities.Cached {
		idPrefix = path.Join(kvstore.StateToCachePrefix(idPrefix), r.name)
	}
	be, err := kvstoreallocator.NewKVStoreBackend(r.log, kvstoreallocator.KVStoreBackendConfiguration{
		BasePath: idPrefix, Suffix: "ciliuminterop", Typ: &key.GlobalIdentity{}, Backend: backend})
	var remoteAlloc, localAlloc *allocator.Allocator
	if err == nil {
		remoteAlloc, err = allocator.NewAllocator(r.log, &key.GlobalIdentity{}, be, allocator.WithoutGC(), allocator.WithoutAutostart(),
			allocator.WithCacheValidator(identityRangeValidator(config.ID)), allocator.WithCacheValidator(clusterLabelValidator(r.name)))
	}
	if err == nil {
		localAlloc, err = allocator.NewAllocator(r.log, &key.GlobalIdentity{}, be, allocator.WithoutGC(), allocator.WithoutAutostart())
	}
	if err != nil {
		ready <- err
		close(ready)
		return
	}
	ids := localAlloc.NewRemoteCache(r.name, remoteAlloc)

	var mgr store.WatchStoreManager
	if config.Capabilities.SyncedCanaries {
		mgr = r.factory.NewWatchStoreManager(backend, r.name)
	} else {
		mgr = store.NewWatchStoreManagerImmediate(r.log)
	}
	adapter := func(prefix string) string { return prefix }
	if config.Capabilities.Cached {
		adapter = kvstore.StateToCachePrefix
	}
	mgr.Register(adapter(nodeStore.NodeStorePrefix), func(ctx context.Context) {
		nodes.Watch(ctx, backend, path.Join(adapter(nodeStore.NodeStorePrefix), r.name))
	})
	mgr.Register(adapter(serviceStore.ServiceStorePrefix), func(ctx context.Context) {
		services.Watch(ctx, backend, path.Join(adapter(serviceStore.ServiceStorePrefix), r.name))
	})
	// KVStoreMesh (and an operator with MCS-API) waits for the service
	// exports canary whenever the remote's config has the field at all.
	if config.Capabilities.ServiceExportsEnabled != nil {
		mgr.Register(adapter(serviceExportsPrefix), func(ctx context.Context) {
			exports.Watch(ctx, backend, path.Join(adapter(serviceExportsPrefix), r.name))
		})
	}
	mgr.Register(adapter(ipcache.IPIdentitiesPath), func(ctx context.Context) {
		ipw.Watch(ctx, backend, ipcache.WithCachedPrefix(config.Capabilities.Cached), ipcache.WithIdentityValidator(config.ID), ipcache.WithClusterID(config.ID))
	})
	mgr.Register(adapter(identityCache.IdentitiesPath), func(ctx context.Context) {
		ids.Watch(ctx, func(context.Context) {
			got := map[string]string{}
			remoteAlloc.ForeachCache(func(id idpool.ID, k allocator.AllocatorKey) {
				if k != nil {
					got[id.String()] = k.GetKey()
				}
			})
			r.col.update(r.name, func(cr *ClusterReport) { cr.Identities = got; cr.Synced["identities"] = true })
		})
	})
	close(ready)
	mgr.Run(ctx)
}

func (r *remote) Stop()                  {}
func (r *remote) Remove(context.Context) {}

// identityRangeValidator and clusterLabelValidator restate the two checks
// Cilium's agent puts on remote identities (pkg/identity/cache, where they
// are unexported): the ID lies in the cluster's range and the labels carry
// k8s:io.cilium.k8s.policy.cluster=<cluster>.
func identityRangeValidator(clusterID uint32) allocator.CacheValidator {
	lo, hi := idpool.ID(identity.GetMinimalAllocationIdentity(clusterID)), idpool.ID(identity.GetMaximumAllocationIdentity(clusterID))
	return func(_ allocator.AllocatorChangeKind, id idpool.ID, _ allocator.AllocatorKey) error {
		if id < lo || id > hi {
			return fmt.Errorf("ID %d is outside %d..%d of cluster ID %d", id, lo, hi, clusterID)
		}
		return nil
	}
}

func clusterLabelValidator(cluster string) allocator.CacheValidator {
	return func(kind allocator.AllocatorChangeKind, _ idpool.ID, ak allocator.AllocatorKey) error {
		if kind != allocator.AllocatorChangeUpsert {
			return nil
		}
		gi, ok := ak.(*key.GlobalIdentity)
		if !ok {
			return fmt.Errorf("unsupported key type %T", ak)
		}
		for _, l := range gi.LabelArray {
			if l.Key == k8sConst.PolicyLabelCluster {
				if l.Source != labels.LabelSourceK8s || l.Value != cluster {
					return fmt.Errorf("cluster label %s:%s, want %s:%s", l.Source, l.Value, labels.LabelSourceK8s, cluster)
				}
				return nil
			}
		}
		return fmt.Errorf("no %s label", k8sConst.PolicyLabelCluster)
	}
}

type nodeObserver struct{ r *remote }

func (o *nodeObserver) OnUpdate(k store.Key) {
	n := &k.(*nodeStore.ValidatingNode).Node
	s := NodeSummary{Cluster: n.Cluster, ClusterID: n.ClusterID, Source: string(n.Source),
		IPv4HealthIP: ipString(n.IPv4HealthIP), IPv6HealthIP: ipString(n.IPv6HealthIP)}
	for _, a := range n.IPAddresses {
		s.Addresses = append(s.Addresses, string(a.Type)+"="+a.IP.String())
	}
	if n.IPv4AllocCIDR != nil {
		s.IPv4AllocCIDR = n.IPv4AllocCIDR.String()
	}
	if n.IPv6AllocCIDR != nil {
		s.IPv6AllocCIDR = n.IPv6AllocCIDR.String()
	}
	o.r.col.update(o.r.name, func(cr *ClusterReport) { cr.Nodes[n.GetKeyName()] = s })
}

func (o *nodeObserver) OnDelete(k store.NamedKey) {
	o.r.col.update(o.r.name, func(cr *ClusterReport) { delete(cr.Nodes, k.GetKeyName()) })
}

func ipString(ip net.IP) string {
	if ip == nil {
		return ""
	}
	return ip.String()
}

type serviceObserver struct{ r *remote }

func (o *serviceObserver) OnUpdate(k store.Key) {
	svc := &k.(*serviceStore.ValidatingClusterService).ClusterService
	ports := func(m map[string]serviceStore.PortConfiguration) map[string]map[string]string {
		out := map[string]map[string]string{}
		for ip, pc := range m {
			out[ip] = map[string]string{}
			for name, p := range pc {
				out[ip][name] = fmt.Sprintf("%s:%d", p.Protocol, p.Port)
			}
		}
		return out
	}
	s := ServiceSummary{Shared: svc.Shared, ClusterID: svc.ClusterID, Frontends: ports(svc.Frontends), Backends: ports(svc.Backends)}
	o.r.col.update(o.r.name, func(cr *ClusterReport) { cr.Services[svc.GetKeyName()] = s })
}

func (o *serviceObserver) OnDelete(k store.NamedKey) {
	o.r.col.update(o.r.name, func(cr *ClusterReport) { delete(cr.Services, k.GetKeyName()) })
}

// ipObserver is the ipcache Cilium's IPIdentityWatcher writes to.
type ipObserver struct{ r *remote }

func (o *ipObserver) Upsert(ip string, hostIP net.IP, _ uint8, meta *ipcache.K8sMetadata, id ipcache.Identity) (bool, error) {
	s := IPSummary{ID: uint32(id.ID), HostIP: ipString(hostIP)}
	if meta != nil {
		s.Namespace, s.Pod = meta.Namespace, meta.PodName
		for name, pp := range meta.NamedPorts {
			s.NamedPorts = append(s.NamedPorts, fmt.Sprintf("%s=%d/%d", name, pp.Port, pp.Proto))
		}
		slices.Sort(s.NamedPorts)
	}
	o.r.col.update(o.r.name, func(cr *ClusterReport) { cr.IPCache[ip] = s })
	return false, nil
}

func (o *ipObserver) Delete(ip string, _ source.Source) bool {
	o.r.col.update(o.r.name, func(cr *ClusterReport) { delete(cr.IPCache, ip) })
	return false
}

type nopObserver struct{}

func (nopObserver) OnUpdate(store.Key)      {}
func (nopObserver) OnDelete(store.NamedKey) {}

// warnCapture records every log record at warning level or above.
type warnCapture struct {
	col   *collector
	attrs []slog.Attr
	next  slog.Handler
}

func (h *warnCapture) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (h *warnCapture) Handle(_ context.Context, r slog.Record) error {
	msg := r.Level.String() + " " + r.Message
	for _, a := range h.attrs {
		msg += " " + a.String()
	}
	r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
	h.col.mu.Lock()
	h.col.report.Warnings = append(h.col.report.Warnings, msg)
	h.col.mu.Unlock()
	return nil
}

func (h *warnCapture) WithAttrs(as []slog.Attr) slog.Handler {
	return &warnCapture{col: h.col, attrs: append(slices.Clone(h.attrs), as...), next: h.next}
}

func (h *warnCapture) WithGroup(string) slog.Handler { return h }
