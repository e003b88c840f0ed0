package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// ErrTerminal marks a reconcile error that retrying cannot fix: the key is
// dropped (and counted) instead of requeued. Wrap it: fmt.Errorf("...: %w", ErrTerminal).
var ErrTerminal = errors.New("terminal reconcile error")

// ErrNotSynced is returned by Run when the informer caches never synced
// before the context ended.
var ErrNotSynced = errors.New("informer caches did not sync")

// Reconciler brings the published state of one object key (namespace/name or
// name) in line with the lister's current view of it.
type Reconciler interface {
	Reconcile(ctx context.Context, key string) error
}

// Config tunes a Controller.
type Config struct {
	// Name is the kind being published (nodes, pods, services); it labels metrics and logs.
	Name string
	// Workers is the number of concurrent reconcile workers.
	Workers int
	// RetryBase and RetryMax bound the per-key exponential retry delay.
	RetryBase, RetryMax time.Duration
}

func (c Config) withDefaults() Config {
	if c.Workers <= 0 {
		c.Workers = 2
	}
	if c.RetryBase <= 0 {
		c.RetryBase = 50 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	return c
}

// Controller owns a work queue and its workers for one kind.
type Controller struct {
	cfg      Config
	rec      Reconciler
	log      *slog.Logger
	queue    workqueue.TypedRateLimitingInterface[string]
	synced   []cache.InformerSynced
	initial  func() []string
	onSynced func()
	m        *Metrics

	mu      sync.Mutex
	pending map[string]struct{} // initial keys not yet reconciled; nil once synced
	done    chan struct{}       // closed when every initial key has been reconciled
}

// New returns a controller for rec. synced are the informers that must have
// synced before the initial listing is taken; initial lists the keys of that
// listing; onSynced (may be nil) runs once after all of them were reconciled.
func New(cfg Config, rec Reconciler, synced []cache.InformerSynced, initial func() []string, onSynced func(), log *slog.Logger, m *Metrics) *Controller {
	cfg = cfg.withDefaults()
	c := &Controller{
		cfg:      cfg,
		rec:      rec,
		log:      log.With("kind", cfg.Name),
		synced:   synced,
		initial:  initial,
		onSynced: onSynced,
		m:        m,
		done:     make(chan struct{}),
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(
			workqueue.NewTypedItemExponentialFailureRateLimiter[string](cfg.RetryBase, cfg.RetryMax),
			workqueue.TypedRateLimitingQueueConfig[string]{Name: cfg.Name}),
	}
	if m != nil {
		m.depth.WithLabelValues(cfg.Name).Set(0)
	}
	return c
}

// Enqueue schedules key for reconciliation.
func (c *Controller) Enqueue(key string) {
	c.queue.Add(key)
	if c.m != nil {
		c.m.depth.WithLabelValues(c.cfg.Name).Set(float64(c.queue.Len()))
	}
}

// EnqueueObject schedules the key of a Kubernetes object (or tombstone).
func (c *Controller) EnqueueObject(obj any) {
	key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	if err != nil {
		c.log.Warn("cannot compute object key", "error", err)
		return
	}
	c.Enqueue(key)
}

// Handler is an informer event handler that only enqueues the object's key.
func (c *Controller) Handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    c.EnqueueObject,
		UpdateFunc: func(_, obj any) { c.EnqueueObject(obj) },
		DeleteFunc: c.EnqueueObject,
	}
}

// Synced is closed once every key of the initial listing has been reconciled.
func (c *Controller) Synced() <-chan struct{} { return c.done }

// Run waits for the informers, takes the initial listing, runs the workers
// and returns when ctx is done and every worker has exited.
func (c *Controller) Run(ctx context.Context) error {
	defer c.queue.ShutDown()
	if !cache.WaitForCacheSync(ctx.Done(), c.synced...) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("%s: %w", c.cfg.Name, ErrNotSynced)
	}
	keys := c.initial()
	c.mu.Lock()
	c.pending = make(map[string]struct{}, len(keys))
	for _, k := range keys {
		c.pending[k] = struct{}{}
	}
	c.mu.Unlock()
	for _, k := range keys {
		c.Enqueue(k)
	}
	c.log.Info("initial listing taken", "objects", len(keys))
	c.maybeSynced()

	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() {
			for c.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

func (c *Controller) processNext(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	start := time.Now()
	err := c.rec.Reconcile(ctx, key)
	if c.m != nil {
		c.m.latency.WithLabelValues(c.cfg.Name).Observe(time.Since(start).Seconds())
		c.m.depth.WithLabelValues(c.cfg.Name).Set(float64(c.queue.Len()))
	}
	switch {
	case err == nil:
		c.queue.Forget(key)
		c.reconciled(key)
	case errors.Is(err, ErrTerminal):
		c.countError()
		c.log.Error("dropping object after terminal error", "key", key, "error", err)
		c.queue.Forget(key)
		c.reconciled(key)
	case ctx.Err() != nil:
		// Shutting down: the error is a consequence, not a failure.
	default:
		c.countError()
		c.log.Warn("reconcile failed, retrying", "key", key, "error", err, "retries", c.queue.NumRequeues(key))
		c.queue.AddRateLimited(key)
	}
	return true
}

func (c *Controller) countError() {
	if c.m != nil {
		c.m.errors.WithLabelValues(c.cfg.Name).Inc()
	}
}

func (c *Controller) reconciled(key string) {
	c.mu.Lock()
	if c.pending == nil {
		c.mu.Unlock()
		return
	}
	delete(c.pending, key)
	c.mu.Unlock()
	c.maybeSynced()
}

func (c *Controller) maybeSynced() {
	c.mu.Lock()
	fire := c.pending != nil && len(c.pending) == 0
	if fire {
		c.pending = nil
	}
	c.mu.Unlock()
	if !fire {
		return
	}
	c.log.Info("initial listing reconciled")
	if c.onSynced != nil {
		c.onSynced()
	}
	close(c.done)
}

// Metrics are the controllers' Prometheus collectors, labelled by kind.
type Metrics struct {
	depth   *prometheus.GaugeVec
	errors  *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

// NewMetrics registers the controller metrics with reg (nil: not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: "clustermesh_apiserver", Name: "queue_depth",
			Help: "Object keys waiting in a publisher's work queue.",
		}, []string{"kind"}),
		errors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "clustermesh_apiserver", Name: "reconcile_errors_total",
			Help: "Failed reconciliations of an object key (retried unless terminal).",
		}, []string{"kind"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "clustermesh_apiserver", Name: "reconcile_duration_seconds",
			Help:    "Time to reconcile one object key into the kvstore write queue.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 4, 10),
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.depth, m.errors, m.latency)
	}
	return m
}
