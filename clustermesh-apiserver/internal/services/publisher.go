package services

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/controller"
	"github.com/clustermesh/clustermesh/internal/annotation"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// byService indexes EndpointSlices by the namespace/name of their Service.
const byService = "service"

func serviceIndex(obj any) ([]string, error) {
	es, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := es.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{es.Namespace + "/" + name}, nil
}

// Store is the write side of the services prefix.
type Store = controller.Writer

// Config configures the service publisher.
type Config struct {
	Cluster   string
	ClusterID uint32
	Workers   int
}

// Publisher writes the cluster's global, shared services.
type Publisher struct {
	cfg     Config
	svcs    corelisters.ServiceLister
	slices  cache.Indexer
	log     *slog.Logger
	ctrl    *controller.Controller
	entries *controller.Entries
	invalid prometheus.Counter // malformed annotation values seen
}

// New returns a publisher fed by Service and EndpointSlice informers (not yet
// started: an index is added to the EndpointSlice one). onSynced runs once
// every Service of the initial listing has been reconciled.
func New(cfg Config, svcInf, sliceInf cache.SharedIndexInformer, store Store, onSynced func(),
	log *slog.Logger, cm *controller.Metrics, reg prometheus.Registerer) (*Publisher, error) {
	if err := sliceInf.AddIndexers(cache.Indexers{byService: serviceIndex}); err != nil {
		return nil, fmt.Errorf("endpointslice index: %w", err)
	}
	p := &Publisher{
		cfg: cfg, svcs: corelisters.NewServiceLister(svcInf.GetIndexer()), slices: sliceInf.GetIndexer(),
		log: log.With("publisher", "services"),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "clustermesh_apiserver", Name: "invalid_service_annotations_total",
			Help: "Malformed mesh annotation values seen on Services (each read with its safe-side meaning).",
		}),
	}
	if reg != nil {
		if err := reg.Register(p.invalid); err != nil {
			return nil, fmt.Errorf("register service metrics: %w", err)
		}
	}
	var err error
	if p.entries, err = controller.NewEntries(string(wire.KindServices), store, reg); err != nil {
		return nil, err
	}
	p.ctrl = controller.New(controller.Config{Name: "services", Workers: cfg.Workers}, p,
		[]cache.InformerSynced{svcInf.HasSynced, sliceInf.HasSynced}, svcInf.GetIndexer().ListKeys, onSynced, log, cm)
	if _, err := svcInf.AddEventHandler(p.ctrl.Handler()); err != nil {
		return nil, fmt.Errorf("service handler: %w", err)
	}
	enqueueSlice := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		keys, _ := serviceIndex(obj)
		for _, k := range keys {
			p.ctrl.Enqueue(k)
		}
	}
	_, err = sliceInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueSlice,
		UpdateFunc: func(old, cur any) {
			enqueueSlice(old) // the service-name label may have changed
			enqueueSlice(cur)
		},
		DeleteFunc: enqueueSlice,
	})
	if err != nil {
		return nil, fmt.Errorf("endpointslice handler: %w", err)
	}
	return p, nil
}

// Run reconciles services until ctx is done.
func (p *Publisher) Run(ctx context.Context) error { return p.ctrl.Run(ctx) }

// Synced is closed once the initial listing has been reconciled.
func (p *Publisher) Synced() <-chan struct{} { return p.ctrl.Synced() }

// Reconcile writes or deletes the entry of one service.
func (p *Publisher) Reconcile(_ context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return fmt.Errorf("service key %q: %w", key, controller.ErrTerminal)
	}
	etcdKey := wire.ServiceKey(p.cfg.Cluster, ns, name)
	svc, err := p.svcs.Services(ns).Get(name)
	switch {
	case apierrors.IsNotFound(err):
		p.withdraw(key, etcdKey)
		return nil
	case err != nil:
		return err
	}
	ann, errs := annotation.Parse(svc.Annotations)
	for _, err := range errs {
		p.invalid.Inc()
		p.log.Warn("invalid service annotation", "service", key, "error", err)
	}
	if !Exported(svc, ann) {
		p.withdraw(key, etcdKey)
		return nil
	}
	objs, err := p.slices.ByIndex(byService, key)
	if err != nil {
		return err
	}
	slices := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if es, ok := o.(*discoveryv1.EndpointSlice); ok {
			slices = append(slices, es)
		}
	}
	v, err := wire.MarshalService(Value(svc, ann, slices, p.cfg.Cluster, p.cfg.ClusterID))
	if err != nil {
		p.withdraw(key, etcdKey)
		return fmt.Errorf("service %s: %w: %w", key, controller.ErrTerminal, err)
	}
	p.entries.Upsert(key, etcdKey, v)
	return nil
}

func (p *Publisher) withdraw(key, etcdKey string) { p.entries.Withdraw(key, etcdKey) }
