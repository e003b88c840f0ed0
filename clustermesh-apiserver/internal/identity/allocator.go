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

// requestTimeout bounds each etcd request, so that an unreachable etcd
// does not hold the pod workers that wait for a new identity forever.
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
	// busy is non-nil while an etcd transaction for the entry is in flight
	// (storing a new id, or deleting an expired one) and is closed when it
	// ends; Acquire of the labels waits for it, then looks again.
	busy chan struct{}
}

// Allocator hands out ids for label sets and keeps them in etcd.
type Allocator struct {
	kv    KV
	cfg   Config
	log   *slog.Logger
	clock clock.WithTicker
	min   uint32 // first id of the cluster's range
	max   uint32 // last id of the cluster's range

	// mu guards the maps and next; it is never held across an etcd call,
	// so a slow etcd delays only the label sets that wait for it.
	mu       sync.Mutex
	byLabels map[string]*entry   // stored ids, and label sets being stored (busy, id 0)
	byID     map[uint32]*entry   // ids stored in etcd
	trying   map[uint32]struct{} // ids a store transaction is in flight for
	next     uint32              // next id to try

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
		trying:   map[uint32]struct{}{},
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
// takes a reference on it. A label set that has an id gets it without
// waiting for etcd, whatever other label sets wait for.
func (a *Allocator) Acquire(ctx context.Context, labels string) (uint32, error) {
	for {
		a.mu.Lock()
		e, ok := a.byLabels[labels]
		if ok && e.busy == nil {
			e.refs++
			a.mu.Unlock()
			return e.id, nil
		}
		if ok { // being stored or deleted: wait, then look again
			busy := e.busy
			a.mu.Unlock()
			select {
			case <-busy:
				continue
			case <-ctx.Done():
				return 0, fmt.Errorf("acquire %q: %w", labels, ctx.Err())
			}
		}
		e = &entry{labels: labels, busy: make(chan struct{})}
		a.byLabels[labels] = e
		a.mu.Unlock()
		return a.allocate(ctx, e)
	}
}

// allocate stores a new id for e, which Acquire placed busy in byLabels,
// and takes the first reference on it.
func (a *Allocator) allocate(ctx context.Context, e *entry) (uint32, error) {
	a.mu.Lock()
	defer func() {
		close(e.busy)
		e.busy = nil
		a.mu.Unlock()
	}()
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
		if _, used := a.trying[id]; used {
			continue
		}
		a.trying[id] = struct{}{}
		a.mu.Unlock()
		key := wire.IdentityKey(id)
		tctx, cancel := context.WithTimeout(ctx, requestTimeout)
		resp, err := a.kv.Txn(tctx).
			If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, e.labels)).
			Else(clientv3.OpGet(key)).
			Commit()
		cancel()
		a.mu.Lock()
		delete(a.trying, id)
		if err != nil {
			a.next = id // retry the same id next time
			delete(a.byLabels, e.labels)
			return 0, fmt.Errorf("store identity %d: %w", id, err)
		}
		if !resp.Succeeded {
			// Taken in etcd by someone else; adopt it if it is ours.
			got := resp.Responses[0].GetResponseRange().GetKvs()
			if len(got) == 1 && string(got[0].Value) == e.labels {
				a.store(e, id)
				return id, nil
			}
			if len(got) == 1 {
				a.add(id, string(got[0].Value))
			}
			continue
		}
		a.store(e, id)
		a.created.Inc()
		return id, nil
	}
	delete(a.byLabels, e.labels)
	return 0, fmt.Errorf("allocate %q: %w", e.labels, ErrExhausted)
}

// store records e as stored under id with one reference. Call with mu held.
func (a *Allocator) store(e *entry, id uint32) {
	e.id, e.refs, e.idleSince = id, 1, a.clock.Now()
	a.byID[id] = e
	a.allocated.Set(float64(len(a.byID)))
}

// add records an id found in etcd under other labels, unreferenced. Call
// with mu held.
func (a *Allocator) add(id uint32, labels string) {
	e := &entry{id: id, labels: labels, idleSince: a.clock.Now()}
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
	if !ok || e.refs == 0 { // a busy entry has no reference
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
	if !ok || e.id == 0 {
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

// GC deletes from etcd the ids unreferenced for longer than the grace
// period. Each one is marked busy while its delete is in flight, so that an
// Acquire of its labels waits for the outcome instead of taking an id that
// is going away; Acquire of other label sets does not wait.
func (a *Allocator) GC(ctx context.Context) error {
	a.mu.Lock()
	now := a.clock.Now()
	var expired []*entry
	for _, e := range a.byID {
		if e.refs > 0 || e.busy != nil || now.Sub(e.idleSince) < a.cfg.GracePeriod {
			continue
		}
		e.busy = make(chan struct{})
		expired = append(expired, e)
	}
	a.mu.Unlock()
	var errs []error
	for _, e := range expired {
		key := wire.IdentityKey(e.id)
		tctx, cancel := context.WithTimeout(ctx, requestTimeout)
		_, err := a.kv.Txn(tctx).
			If(clientv3.Compare(clientv3.Value(key), "=", e.labels)).
			Then(clientv3.OpDelete(key)).
			Commit()
		cancel()
		a.mu.Lock()
		if err != nil {
			errs = append(errs, fmt.Errorf("release identity %d: %w", e.id, err))
		} else {
			delete(a.byID, e.id)
			if a.byLabels[e.labels] == e {
				delete(a.byLabels, e.labels)
			}
			a.released.Inc()
			a.log.Debug("released identity", "id", e.id, "labels", e.labels)
		}
		close(e.busy)
		e.busy = nil
		a.allocated.Set(float64(len(a.byID)))
		a.mu.Unlock()
	}
	return errors.Join(errs...)
}

// Len returns the number of allocated identities (stored in etcd).
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byID)
}
