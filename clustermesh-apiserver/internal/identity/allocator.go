package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// ErrExhausted is returned when every local id of the cluster's range is in use.
var ErrExhausted = errors.New("identity range exhausted")

// ErrNotReferenced is returned by Release for a label set that holds no reference.
var ErrNotReferenced = errors.New("identity not referenced")

// KV is the part of the etcd client the allocator uses.
type KV interface {
	Get(ctx context.Context, key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error)
	Txn(ctx context.Context) clientv3.Txn
}

// Config tunes the allocator.
type Config struct {
	ClusterID            uint32
	MaxConnectedClusters int
	// GracePeriod is how long an id stays allocated after its last reference went away.
	GracePeriod time.Duration
	// GCInterval is how often unreferenced ids are looked for.
	GCInterval time.Duration
}

// requestTimeout bounds each etcd request: the allocator's lock is held
// across it, so an unreachable etcd must not hold every pod worker forever.
const requestTimeout = 10 * time.Second

// Defaults for Config.
const (
	DefaultGracePeriod = 10 * time.Minute
	DefaultGCInterval  = time.Minute
)

func (c Config) withDefaults() Config {
	if c.GracePeriod <= 0 {
		c.GracePeriod = DefaultGracePeriod
	}
	if c.GCInterval <= 0 {
		c.GCInterval = DefaultGCInterval
	}
	return c
}

type entry struct {
	id        uint32
	labels    string
	refs      int
	idleSince time.Time // when refs dropped to 0
}

// Allocator hands out ids for label sets and keeps them in etcd.
type Allocator struct {
	kv    KV
	cfg   Config
	log   *slog.Logger
	clock clock.WithTicker
	min   uint32 // first id of the cluster's range
	max   uint32 // last id of the cluster's range

	mu       sync.Mutex
	byLabels map[string]*entry
	byID     map[uint32]*entry
	next     uint32 // next id to try

	allocated prometheus.Gauge
	created   prometheus.Counter
	released  prometheus.Counter
}

// New restores the allocator's state from the identities stored in etcd.
func New(ctx context.Context, kv KV, cfg Config, log *slog.Logger, clk clock.WithTicker, reg prometheus.Registerer) (*Allocator, error) {
	cfg = cfg.withDefaults()
	if err := wire.ValidateMaxConnectedClusters(cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	if err := wire.ValidateClusterID(cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return nil, err
	}
	lo, hi := wire.IdentityRange(cfg.ClusterID, cfg.MaxConnectedClusters)
	a := &Allocator{
		kv: kv, cfg: cfg, log: log, clock: clk, min: lo, max: hi, next: lo,
		byLabels: map[string]*entry{},
		byID:     map[uint32]*entry{},
		allocated: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: "clustermesh_apiserver", Name: "identities",
			Help: "Identities currently allocated (stored in etcd).",
		}),
		created: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "clustermesh_apiserver", Name: "identities_allocated_total",
			Help: "Identities newly allocated.",
		}),
		released: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "clustermesh_apiserver", Name: "identities_released_total",
			Help: "Identities released after their grace period.",
		}),
	}
	if reg != nil {
		if err := registerAll(reg, a.allocated, a.created, a.released); err != nil {
			return nil, err
		}
	}
	if err := a.restore(ctx); err != nil {
		return nil, err
	}
	return a, nil
}

func registerAll(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register identity metrics: %w", err)
		}
	}
	return nil
}

func (a *Allocator) restore(ctx context.Context) error {
	resp, err := a.kv.Get(ctx, wire.IdentityIDPrefix, clientv3.WithPrefix())
	if err != nil {
		return fmt.Errorf("list identities: %w", err)
	}
	now := a.clock.Now()
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, kv := range resp.Kvs {
		_, id, err := wire.ParseIdentityKey(string(kv.Key))
		if err != nil || id < a.min || id > a.max {
			a.log.Warn("ignoring identity key outside this cluster's range", "key", string(kv.Key))
			continue
		}
		labels := string(kv.Value)
		e := &entry{id: id, labels: labels, idleSince: now}
		a.byID[id] = e
		if old, dup := a.byLabels[labels]; !dup || id < old.id {
			a.byLabels[labels] = e
		}
	}
	a.allocated.Set(float64(len(a.byID)))
	a.log.Info("restored identities", "count", len(a.byID))
	return nil
}

// Acquire returns the id of labels, allocating and storing one if needed, and
// takes a reference on it.
func (a *Allocator) Acquire(ctx context.Context, labels string) (uint32, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if e, ok := a.byLabels[labels]; ok {
		e.refs++
		return e.id, nil
	}
	size := a.max - a.min + 1
	for range size {
		id := a.next
		a.next++
		if a.next > a.max {
			a.next = a.min
		}
		if _, used := a.byID[id]; used {
			continue
		}
		key := wire.IdentityKey(id)
		tctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := a.kv.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, labels)).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		if err != nil {
			a.next = id // retry the same id next time
			return 0, fmt.Errorf("store identity %d: %w", id, err)
		}
		if !resp.Succeeded {
			// Taken in etcd by someone else; adopt it if it is ours.
			got := resp.Responses[0].GetResponseRange().GetKvs()
			if len(got) == 1 && string(got[0].Value) == labels {
				a.add(id, labels, 1)
				return id, nil
			}
			if len(got) == 1 {
				a.add(id, string(got[0].Value), 0)
			}
			continue
		}
		a.add(id, labels, 1)
		a.created.Inc()
		return id, nil
	}
	return 0, fmt.Errorf("allocate %q: %w", labels, ErrExhausted)
}

func (a *Allocator) add(id uint32, labels string, refs int) {
	e := &entry{id: id, labels: labels, refs: refs, idleSince: a.clock.Now()}
	a.byID[id] = e
	if _, ok := a.byLabels[labels]; !ok {
		a.byLabels[labels] = e
	}
	a.allocated.Set(float64(len(a.byID)))
}

// Release drops a reference taken by Acquire. The id stays allocated for the
// grace period after its last reference went.
func (a *Allocator) Release(labels string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byLabels[labels]
	if !ok || e.refs == 0 {
		return fmt.Errorf("release %q: %w", labels, ErrNotReferenced)
	}
	e.refs--
	if e.refs == 0 {
		e.idleSince = a.clock.Now()
	}
	return nil
}

// Lookup returns the id of labels if it is allocated.
func (a *Allocator) Lookup(labels string) (uint32, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.byLabels[labels]
	if !ok {
		return 0, false
	}
	return e.id, true
}

// Run releases unreferenced ids every GCInterval until ctx is done.
func (a *Allocator) Run(ctx context.Context) error {
	t := a.clock.NewTicker(a.cfg.GCInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C():
			if err := a.GC(ctx); err != nil && ctx.Err() == nil {
				a.log.Warn("identity garbage collection failed; retrying next interval", "error", err)
			}
		}
	}
}

// GC deletes from etcd the ids unreferenced for longer than the grace period.
func (a *Allocator) GC(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	now := a.clock.Now()
	var errs []error
	for id, e := range a.byID {
		if e.refs > 0 || now.Sub(e.idleSince) < a.cfg.GracePeriod {
			continue
		}
		key := wire.IdentityKey(id)
		tctx, cancel := context.WithTimeout(ctx, requestTimeout)
		_, err := a.kv.Txn(tctx).
			If(clientv3.Compare(clientv3.Value(key), "=", e.labels)).
			Then(clientv3.OpDelete(key)).
			Commit()
		cancel()
		if err != nil {
			errs = append(errs, fmt.Errorf("release identity %d: %w", id, err))
			continue
		}
		delete(a.byID, id)
		if a.byLabels[e.labels] == e {
			delete(a.byLabels, e.labels)
		}
		a.released.Inc()
		a.log.Debug("released identity", "id", id, "labels", e.labels)
	}
	a.allocated.Set(float64(len(a.byID)))
	return errors.Join(errs...)
}

// Len returns the number of allocated identities (stored in etcd).
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}
