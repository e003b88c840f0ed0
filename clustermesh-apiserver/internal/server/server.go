package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/clusterinfo"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/controller"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/identity"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/nodes"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/pods"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/services"
	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// ErrNotReady is returned by Ready until every kind has been published once.
var ErrNotReady = errors.New("initial sync not complete")

// Store is the write side of one kvstore prefix (kvstore/syncstore).
type Store interface {
	Upsert(key string, value []byte)
	Delete(key string)
	MarkSynced()
	// Synced is closed once the canary is written (without one: once the
	// initial set is written).
	Synced() <-chan struct{}
	Run(ctx context.Context) error
}

// StoreFactory makes the Store of one prefix; syncedKey is the prefix's sync
// canary, empty for stores without one (cluster config, heartbeat).
type StoreFactory func(name, prefix, syncedKey string) Store

// Deps are the server's collaborators.
type Deps struct {
	KV       *kvstore.Client
	Kube     kubernetes.Interface
	NewStore StoreFactory
	Clock    clock.WithTicker
	Registry prometheus.Registerer
	Log      *slog.Logger
}

// Server publishes one cluster's state into its kvstore.
type Server struct {
	cfg     Config
	d       Deps
	log     *slog.Logger
	factory informers.SharedInformerFactory
	alloc   *identity.Allocator
	stores  []Store
	kinds   map[string]*countingStore // status report kind → store
	runners []runner.Part             // stores, allocator, publishers
	synced  []<-chan struct{}
	idsDone chan struct{} // closed once the identities canary is written
}

// New builds the server; it restores the identity allocator from etcd.
func New(ctx context.Context, cfg Config, d Deps) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Clock == nil {
		d.Clock = clock.RealClock{}
	}
	s := &Server{cfg: cfg, d: d, log: d.Log, idsDone: make(chan struct{}), kinds: map[string]*countingStore{}}
	alloc, err := identity.New(ctx, d.KV.Etcd(), identity.Config{
		ClusterID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters, GracePeriod: cfg.IdentityGracePeriod,
	}, d.Log.With("component", "identity"), d.Clock, d.Registry)
	if err != nil {
		return nil, err
	}
	s.alloc = alloc
	s.runners = append(s.runners, runner.Part{Name: "identity allocator", Run: alloc.Run})

	// Informers keep only what the publishers read.
	s.factory = informers.NewSharedInformerFactoryWithOptions(d.Kube, 0, informers.WithTransform(trim))
	cm := controller.NewMetrics(d.Registry)
	c := cfg.ClusterName
	newStore := func(name, prefix, synced string) Store {
		st := d.NewStore(name, prefix, synced)
		s.stores = append(s.stores, st)
		s.runners = append(s.runners, runner.Part{Name: name + " store", Run: st.Run})
		return st
	}

	counted := func(kind string, st Store) Store {
		cs := newCountingStore(st)
		s.kinds[kind] = cs
		return cs
	}
	nodeStore := counted(meshstatus.KindNodes, newStore("nodes", wire.NodesPrefix(c), wire.SyncedKey(c, wire.KindNodes)))
	np, err := nodes.New(nodes.Config{Cluster: c, ClusterID: cfg.ClusterID, Workers: cfg.NodeWorkers},
		s.factory.Core().V1().Nodes().Informer(), nodeStore, nodeStore.MarkSynced, d.Log, cm, d.Registry)
	if err != nil {
		return nil, err
	}

	ipStore := counted(meshstatus.KindIPCache, newStore("ip", wire.IPPrefix, wire.SyncedKey(c, wire.KindIP)))
	pp, err := pods.New(pods.Config{Cluster: c, Workers: cfg.PodWorkers},
		s.factory.Core().V1().Pods().Informer(), s.factory.Core().V1().Namespaces().Informer(), ipStore, alloc, ipStore.MarkSynced, d.Log, cm, d.Registry)
	if err != nil {
		return nil, err
	}

	svcStore := counted(meshstatus.KindServices, newStore("services", wire.ServicesPrefix(c), wire.SyncedKey(c, wire.KindServices)))
	sp, err := services.New(services.Config{Cluster: c, ClusterID: cfg.ClusterID, Workers: cfg.ServiceWorkers},
		s.factory.Core().V1().Services().Informer(), s.factory.Discovery().V1().EndpointSlices().Informer(),
		svcStore, svcStore.MarkSynced, d.Log, cm, d.Registry)
	if err != nil {
		return nil, err
	}

	cfgStore := newStore("cluster-config", wire.ClusterConfigKey(c), "")
	ci, err := clusterinfo.New(clusterinfo.Config{
		Cluster: c, ClusterID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters, HeartbeatInterval: cfg.HeartbeatInterval,
	}, cfgStore, newStore("heartbeat", wire.HeartbeatKey, ""), d.Clock, d.Log)
	if err != nil {
		return nil, err
	}
	// The cluster config says serviceExportsEnabled: false; Cilium's
	// KVStoreMesh and MCS-API operator still wait for this prefix's canary
	// whenever the field is present, so the empty prefix gets one.
	expStore := newStore("serviceexports", wire.ServiceExportsPrefix(c), wire.ServiceExportsSyncedKey(c))
	expStore.MarkSynced()
	s.runners = append(s.runners, runner.Part{Name: "nodes", Run: np.Run}, runner.Part{Name: "pods", Run: pp.Run},
		runner.Part{Name: "services", Run: sp.Run}, runner.Part{Name: "cluster info", Run: ci.Run},
		runner.Part{Name: "identities canary", Run: s.markIdentitiesSynced(pp.Synced())})
	// Ready once every canary is written and the cluster config is in etcd.
	s.synced = []<-chan struct{}{nodeStore.Synced(), ipStore.Synced(), svcStore.Synced(), s.idsDone, cfgStore.Synced(), expStore.Synced()}
	return s, nil
}

// markIdentitiesSynced writes the identities canary once every pod of the
// initial listing has its identity in etcd (allocation is synchronous, so
// that is when the pod publisher has reconciled its initial listing). The
// identities are not leased and neither is their canary.
func (s *Server) markIdentitiesSynced(podsSynced <-chan struct{}) func(context.Context) error {
	return func(ctx context.Context) error {
		select {
		case <-ctx.Done():
			return nil
		case <-podsSynced:
		}
		key := wire.SyncedKey(s.cfg.ClusterName, wire.KindIdentities)
		retry := backoff.New(backoff.Policy{Min: 200 * time.Millisecond, Max: 5 * time.Second}, s.d.Clock)
		for {
			_, err := s.d.KV.Etcd().Put(ctx, key, string(wire.FormatTimestamp(s.d.Clock.Now())))
			if err == nil {
				close(s.idsDone)
				<-ctx.Done() // done; a part returns only when asked to stop
				return nil
			}
			if ctx.Err() != nil {
				return nil
			}
			wait := retry.Failure()
			s.log.Warn("cannot write identities sync canary; retrying", "error", err, "retry_in", wait)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(wait):
			}
		}
	}
}

// trim drops what no publisher reads from cached objects: managed fields and
// (except on Services, whose annotations say global/shared) annotations.
func trim(obj any) (any, error) {
	if m, err := meta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
		switch obj.(type) {
		case *corev1.Service:
		case *corev1.Pod, *corev1.Node, *discoveryv1.EndpointSlice:
			m.SetAnnotations(nil)
		}
	}
	return obj, nil
}

// Ready reports whether every kind has been published once.
func (s *Server) Ready(context.Context) error {
	for _, ch := range s.synced {
		select {
		case <-ch:
		default:
			return ErrNotReady
		}
	}
	return nil
}

// Live reports whether the kvstore connection works.
func (s *Server) Live(ctx context.Context) error {
	if st := s.d.KV.Status(ctx); !st.Healthy() {
		return fmt.Errorf("kvstore: %v", st)
	}
	return nil
}

// Run starts the informers, stores and publishers and returns when ctx is
// done and all of them have stopped, or when one of them fails or stops
// before it was asked to (runner.ErrStopped).
func (s *Server) Run(ctx context.Context) error {
	parts := append(slices.Clip(s.runners), runner.Part{Name: "informers", Run: func(ctx context.Context) error {
		s.factory.Start(ctx.Done())
		<-ctx.Done()
		return nil
	}})
	defer s.factory.Shutdown()
	return runner.All(ctx, parts...)
}
