package pods

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/controller"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Store is the write side of the ipcache prefix.
type Store interface {
	Upsert(key string, value []byte)
	Delete(key string)
}

// Identities hands out and takes back references on identities.
type Identities interface {
	Acquire(ctx context.Context, labels string) (uint32, error)
	Release(labels string) error
}

// Config configures the pod publisher.
type Config struct {
	Cluster string
	Workers int
}

// published is what the publisher wrote for one pod.
type published struct {
	labels string                // identity label string the pod holds a reference on
	id     uint32                // its identity
	values map[netip.Addr][]byte // ipcache values written (or claimed) per pod IP
}

// Publisher writes the ipcache entries of the cluster's pods.
type Publisher struct {
	cfg    Config
	lister corelisters.PodLister
	nsList corelisters.NamespaceLister
	store  Store
	ids    Identities
	log    *slog.Logger
	ctrl   *controller.Controller
	gauge  prometheus.Gauge

	mu     sync.Mutex
	pods   map[string]*published          // pod key → what it published
	owners map[netip.Addr]string          // IP → pod key whose entry is in the store
	claims map[netip.Addr]map[string]bool // IP → pod keys that have it (more than one while an IP moves)
}

// New returns a publisher fed by a pod informer and a namespace informer
// (namespace labels are part of a pod's identity). onSynced runs once every
// pod of the initial listing has its identity stored and its entries
// handed to store.
func New(cfg Config, inf, nsInf cache.SharedIndexInformer, store Store, ids Identities, onSynced func(),
	log *slog.Logger, cm *controller.Metrics, reg prometheus.Registerer) (*Publisher, error) {
	p := &Publisher{
		cfg: cfg, lister: corelisters.NewPodLister(inf.GetIndexer()), nsList: corelisters.NewNamespaceLister(nsInf.GetIndexer()),
		store: store, ids: ids,
		log:    log.With("publisher", "pods"),
		pods:   map[string]*published{},
		owners: map[netip.Addr]string{},
		claims: map[netip.Addr]map[string]bool{},
	}
	var err error
	if p.gauge, err = controller.NewEntriesGauge(string(wire.KindIP), reg); err != nil {
		return nil, err
	}
	p.ctrl = controller.New(controller.Config{Name: "pods", Workers: cfg.Workers}, p,
		[]cache.InformerSynced{inf.HasSynced, nsInf.HasSynced}, inf.GetIndexer().ListKeys, onSynced, log, cm)
	if _, err := inf.AddEventHandler(p.ctrl.Handler()); err != nil {
		return nil, fmt.Errorf("pod handler: %w", err)
	}
	if _, err := nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: p.namespaceChanged,
		UpdateFunc: func(old, obj any) {
			o, ok1 := old.(*corev1.Namespace)
			n, ok2 := obj.(*corev1.Namespace)
			if !ok1 || !ok2 || !maps.Equal(o.Labels, n.Labels) {
				p.namespaceChanged(obj)
			}
		},
	}); err != nil {
		return nil, fmt.Errorf("namespace handler: %w", err)
	}
	return p, nil
}

// namespaceChanged enqueues the pods of a namespace whose labels may have
// changed: they are part of the pods' identities.
func (p *Publisher) namespaceChanged(obj any) {
	ns, ok := obj.(*corev1.Namespace)
	if !ok {
		return
	}
	pods, err := p.lister.Pods(ns.Name).List(labels.Everything())
	if err != nil {
		return
	}
	for _, pod := range pods {
		p.ctrl.Enqueue(ns.Name + "/" + pod.Name)
	}
}

// Run reconciles pods until ctx is done.
func (p *Publisher) Run(ctx context.Context) error { return p.ctrl.Run(ctx) }

// Synced is closed once the initial listing has been reconciled.
func (p *Publisher) Synced() <-chan struct{} { return p.ctrl.Synced() }

// Reconcile publishes, updates or withdraws the entries of one pod.
func (p *Publisher) Reconcile(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("pod key %q: %w", key, controller.ErrTerminal)
	}
	pod, err := p.lister.Pods(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		pod = nil
	case err != nil:
		return err
	}
	p.mu.Lock()
	cur := p.pods[key]
	p.mu.Unlock()

	if pod == nil || !Published(pod) {
		p.withdraw(key, cur)
		return nil
	}
	var nsLabels map[string]string
	if ns, err := p.nsList.Get(pod.Namespace); err == nil {
		nsLabels = ns.Labels
	}
	ls, err := SecurityLabels(Identity{PodLabels: pod.Labels, Namespace: pod.Namespace, NamespaceLabels: nsLabels,
		ServiceAccount: pod.Spec.ServiceAccountName, Cluster: p.cfg.Cluster})
	if err != nil {
		p.withdraw(key, cur)
		return fmt.Errorf("pod %s: %w: %w", key, controller.ErrTerminal, err)
	}
	labels := ls.Format()
	var id uint32
	if cur == nil || cur.labels != labels {
		if id, err = p.ids.Acquire(ctx, labels); err != nil {
			return fmt.Errorf("pod %s: identity: %w", key, err)
		}
	} else {
		id = cur.id
	}
	want := &published{labels: labels, id: id, values: map[netip.Addr][]byte{}}
	for _, e := range Entries(pod, id) {
		v, err := wire.MarshalIPIdentityPair(e)
		if err != nil {
			p.log.Warn("pod has an entry that cannot be published", "pod", key, "error", err)
			continue
		}
		want.values[e.IP] = v
	}
	p.apply(key, cur, want)
	if cur != nil && cur.labels != labels {
		p.release(key, cur.labels)
	}
	return nil
}

func (p *Publisher) withdraw(key string, cur *published) {
	if cur == nil {
		return
	}
	p.apply(key, cur, nil)
	p.release(key, cur.labels)
}

func (p *Publisher) release(key, labels string) {
	if err := p.ids.Release(labels); err != nil {
		p.log.Warn("identity release failed", "pod", key, "error", err)
	}
}

// apply moves the store from what pod key published (cur) to want (nil: nothing).
func (p *Publisher) apply(key string, cur, want *published) {
	var requeue []string
	p.mu.Lock()
	if want != nil {
		for ip, v := range want.values {
			if p.claims[ip] == nil {
				p.claims[ip] = map[string]bool{}
			}
			p.claims[ip][key] = true
			if p.owners[ip] == key && cur != nil && bytes.Equal(cur.values[ip], v) {
				continue
			}
			p.owners[ip] = key
			p.store.Upsert(wire.IPKey(ip), v)
		}
	}
	if cur != nil {
		for ip := range cur.values {
			if want != nil {
				if _, keep := want.values[ip]; keep {
					continue
				}
			}
			delete(p.claims[ip], key)
			if p.owners[ip] != key {
				continue
			}
			delete(p.owners, ip)
			if len(p.claims[ip]) == 0 {
				delete(p.claims, ip)
				p.store.Delete(wire.IPKey(ip))
				continue
			}
			// Another pod still has this IP (it moved while the old pod was
			// terminating): let that pod write its entry again.
			for other := range p.claims[ip] {
				requeue = append(requeue, other)
			}
		}
	}
	if want == nil {
		delete(p.pods, key)
	} else {
		p.pods[key] = want
	}
	p.gauge.Set(float64(len(p.owners)))
	p.mu.Unlock()
	for _, k := range requeue {
		p.ctrl.Enqueue(k)
	}
}
