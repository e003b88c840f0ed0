package syncstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/time/rate"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/kvstore"
)

// ErrConfig is returned by Run for an unusable Config.
var ErrConfig = errors.New("invalid syncstore config")

// Config configures a Store.
type Config struct {
	// Prefix is the key prefix the store owns: it watches it to repair
	// keys and deletes keys under it that it was not given (once synced).
	// Required; it should end with "/". A Prefix without the trailing
	// "/" is one key: keys that only begin with it (the config of cluster
	// "c20" beside that of "c2") are not the store's.
	Prefix string
	// SyncedKey is the canary written (RFC3339 timestamp, leased) once
	// every key handed in before MarkSynced is written; "" for none. It
	// must not lie under Prefix.
	SyncedKey string
	// Name labels the metrics (default Prefix).
	Name string
	// QPS limits the etcd transactions per second of this store, each
	// carrying up to BatchSize writes (0: unlimited; the client's own QPS
	// limit applies as well).
	QPS float64
	// Workers is the number of concurrent writers (default 4).
	Workers int
	// BatchSize is the most keys written in one etcd transaction (default
	// 100; etcd's default limit is 128 operations per transaction).
	BatchSize int
	// RetryMin and RetryMax bound the per-key exponential retry backoff
	// (defaults 50ms and 10s). Failed writes are retried until they work.
	RetryMin, RetryMax time.Duration
	// RequestTimeout bounds each etcd request (default 10s).
	RequestTimeout time.Duration
}

func (cfg Config) withDefaults() Config {
	if cfg.Name == "" {
		cfg.Name = cfg.Prefix
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 4
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 100
	}
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = 50 * time.Millisecond
	}
	if cfg.RetryMax <= 0 {
		cfg.RetryMax = 10 * time.Second
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	return cfg
}

func (cfg Config) validate() error {
	if cfg.Prefix == "" {
		return fmt.Errorf("%w: empty prefix", ErrConfig)
	}
	if cfg.SyncedKey != "" && strings.HasPrefix(cfg.SyncedKey, cfg.Prefix) {
		return fmt.Errorf("%w: synced key %q under prefix %q", ErrConfig, cfg.SyncedKey, cfg.Prefix)
	}
	return nil
}

// keyState is what the store knows about one key.
type keyState struct {
	want     bool   // the owner wants the key to exist with value desired
	explicit bool   // the owner deleted it (as opposed to a key we only saw in etcd)
	desired  []byte // value to write when want
	unsynced bool   // the latest Upsert/Delete is not yet in etcd

	written    bool   // written by this store on a live lease
	writtenRev int64  // revision of our last write
	writtenVal []byte // value of our last write

	obsKnown   bool  // the watch has reported on this key
	obsPresent bool  // per the watch, the key exists
	obsRev     int64 // revision of the last watch report
	// listed: the running ListWatch holds the key as present (it reported
	// an upsert and no delete since), so it reports the key's deletion.
	// It reports nothing of a key it never held: one this store wrote and
	// someone deleted before a (re)list saw it.
	listed bool
}

// Store publishes the desired keys of one prefix into etcd.
type Store struct {
	c       *kvstore.Client
	cfg     Config
	log     *slog.Logger
	m       *metrics
	leases  *kvstore.Leases
	limiter *rate.Limiter // nil: unlimited
	q       *queue

	mu         sync.Mutex
	keys       map[string]*keyState
	failures   map[string]int
	markSynced bool                // MarkSynced was called
	waitFor    map[string]struct{} // keys to write before the canary
	synced     bool                // canary handed to the queue
	syncedCh   chan struct{}       // closed once the canary is written
	lastErr    error
}

// New returns a store writing through c. Metrics are registered on reg
// (nil: not registered) with the label store=<cfg.Name>.
func New(c *kvstore.Client, cfg Config, log *slog.Logger, reg prometheus.Registerer) *Store {
	cfg = cfg.withDefaults()
	m, err := newMetrics(reg, cfg.Name)
	if err != nil {
		log.Error("register syncstore metrics", "store", cfg.Name, "err", err)
	}
	s := &Store{
		c:        c,
		cfg:      cfg,
		log:      log.With("store", cfg.Name),
		m:        m,
		keys:     make(map[string]*keyState),
		failures: make(map[string]int),
		syncedCh: make(chan struct{}),
	}
	s.q = newQueue(func(n int) { m.queueDepth.Set(float64(n)) })
	s.leases = c.NewLeases(s.leaseLost)
	if cfg.QPS > 0 {
		s.limiter = rate.NewLimiter(rate.Limit(cfg.QPS), max(int(cfg.QPS), 1))
	}
	return s
}

// Upsert sets the desired value of key; repeated updates of a key not yet
// written are coalesced into one write of the latest value.
func (s *Store) Upsert(key string, value []byte) {
	s.mu.Lock()
	st := s.state(key)
	st.want, st.explicit, st.desired, st.unsynced = true, false, value, true
	s.mu.Unlock()
	s.q.add(key)
}

// Delete removes key from the desired set and from etcd.
func (s *Store) Delete(key string) {
	s.mu.Lock()
	st := s.state(key)
	st.want, st.explicit, st.desired, st.unsynced = false, true, nil, true
	s.mu.Unlock()
	s.q.add(key)
}

// MarkSynced says that the initial set has been handed in: the canary is
// written once every key handed in so far is in etcd.
func (s *Store) MarkSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.markSynced {
		return
	}
	s.markSynced = true
	s.waitFor = make(map[string]struct{})
	for k, st := range s.keys {
		if st.unsynced {
			s.waitFor[k] = struct{}{}
		}
	}
	s.maybeSyncedLocked()
}

// Synced returns a channel closed once the canary has been written (or,
// without a SyncedKey, once the initial set is written).
func (s *Store) Synced() <-chan struct{} { return s.syncedCh }

// Written reports whether key is desired (upserted, not deleted since) and
// its latest value is committed: false for a key still queued, and for one
// whose lease was lost until it is written again. (A key someone else
// changed stays true until the watch reports the change.)
func (s *Store) Written(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.keys[key]
	return ok && st.want && st.written && !st.unsynced
}

// LastError returns the last failed write while some write is still
// failing (failed writes are retried until they succeed); nil once none is.
func (s *Store) LastError() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.lastErr
}

// Run writes until ctx is done: workers, lease keepalives and the watch of
// the own prefix. It returns after all of them stopped.
func (s *Store) Run(ctx context.Context) error {
	if err := s.cfg.validate(); err != nil {
		return err
	}
	s.mu.Lock()
	for _, st := range s.keys {
		st.listed = false // a new ListWatch holds nothing yet
	}
	s.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() { errs <- s.leases.Run(ctx) })
	wg.Go(func() { errs <- s.c.ListWatch(ctx, s.cfg.Prefix, s.observe) })
	for range s.cfg.Workers {
		wg.Go(func() { s.work(ctx) })
	}
	<-ctx.Done()
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

func (s *Store) state(key string) *keyState {
	st := s.keys[key]
	if st == nil {
		st = &keyState{}
		s.keys[key] = st
	}
	return st
}

// observe records what the watch of the own prefix reports and queues keys
// that etcd may have different from the desired state.
func (s *Store) observe(ev kvstore.Event) {
	if ev.Kind == kvstore.EventListDone {
		s.listDone(ev.Revision)
		return
	}
	if !s.owns(ev.Key) {
		return
	}
	s.mu.Lock()
	st := s.keys[ev.Key]
	if st == nil {
		if ev.Kind == kvstore.EventDelete {
			s.mu.Unlock()
			return
		}
		st = s.state(ev.Key) // a key we do not own: stale or foreign
	}
	st.listed = ev.Kind == kvstore.EventUpsert
	if ev.Revision >= st.obsRev {
		st.obsKnown, st.obsPresent, st.obsRev = true, ev.Kind == kvstore.EventUpsert, ev.Revision
	}
	ours := st.written && ev.Kind == kvstore.EventUpsert && ev.Revision == st.writtenRev
	s.mu.Unlock()
	if !ours {
		s.q.add(ev.Key)
	}
}

// listDone queues the keys under the prefix this store wrote before the
// (re)list at rev that the listing did not report: they were deleted before it, and the
// ListWatch, which never held them, reports no delete of them. (A store
// whose first list is slower than its first writes and someone's delete
// of them would otherwise never repair them.)
func (s *Store) listDone(rev int64) {
	var gone []string
	s.mu.Lock()
	for k, st := range s.keys {
		if st.written && !st.listed && st.writtenRev < rev && strings.HasPrefix(k, s.cfg.Prefix) && s.owns(k) {
			if st.obsRev < rev {
				st.obsKnown, st.obsPresent, st.obsRev = true, false, rev
			}
			gone = append(gone, k)
		}
	}
	s.mu.Unlock()
	for _, k := range gone {
		s.q.add(k)
	}
}

// owns reports whether key is the store's: under a Prefix ending in "/",
// else the Prefix key itself.
func (s *Store) owns(key string) bool {
	return strings.HasSuffix(s.cfg.Prefix, "/") || key == s.cfg.Prefix
}

// leaseLost re-queues the keys of a lost lease.
func (s *Store) leaseLost(keys []string) {
	s.mu.Lock()
	for _, k := range keys {
		if st := s.keys[k]; st != nil {
			st.written = false
		}
	}
	s.mu.Unlock()
	s.m.repairs.WithLabelValues("lease-lost").Add(float64(len(keys)))
	for _, k := range keys {
		s.q.add(k)
	}
}

func (s *Store) work(ctx context.Context) {
	for {
		keys, ok := s.q.getBatch(ctx, s.cfg.BatchSize)
		if !ok {
			return
		}
		errs := s.reconcile(ctx, keys)
		for _, key := range keys {
			err := errs[key]
			s.mu.Lock()
			if err != nil && ctx.Err() == nil {
				n := s.failures[key]
				s.failures[key] = n + 1
				s.lastErr = err
				s.mu.Unlock()
				s.m.errors.Inc()
				s.log.Warn("etcd write failed; retrying", "key", key, "attempt", n+1, "err", err)
				s.q.addAfter(key, backoff.Policy{Min: s.cfg.RetryMin, Max: s.cfg.RetryMax}.Delay(n))
			} else {
				delete(s.failures, key)
				if len(s.failures) == 0 {
					s.lastErr = nil
				}
				s.mu.Unlock()
			}
			s.q.done(key)
		}
	}
}

// maxTxnBytes bounds the values and keys of one transaction, well below
// etcd's default request limit (1.5 MiB).
const maxTxnBytes = 512 << 10

// op is one etcd write planned for a key.
type op struct {
	key   string
	st    *keyState
	del   bool
	stale bool   // deleting a key nobody handed in
	value []byte // value of a put
	lease clientv3.LeaseID
}

// reconcile makes etcd hold the desired state of keys, writing what is
// needed in transactions of at most BatchSize operations, and returns the
// errors by key.
func (s *Store) reconcile(ctx context.Context, keys []string) map[string]error {
	errs := make(map[string]error)
	var ops []*op
	s.mu.Lock()
	for _, k := range keys {
		if o := s.planLocked(k); o != nil {
			ops = append(ops, o)
		}
	}
	s.mu.Unlock()
	live := ops[:0]
	for _, o := range ops {
		if !o.del {
			id, err := s.leases.Attach(ctx, o.key)
			if err != nil {
				errs[o.key] = err
				continue
			}
			o.lease = id
		}
		live = append(live, o)
	}
	for len(live) > 0 {
		n, size := 0, 0
		for n < len(live) && n < s.cfg.BatchSize && (n == 0 || size+len(live[n].key)+len(live[n].value) <= maxTxnBytes) {
			size += len(live[n].key) + len(live[n].value)
			n++
		}
		s.commit(ctx, live[:n], errs)
		live = live[n:]
	}
	return errs
}

// planLocked decides what key needs; nil when nothing is to be written.
func (s *Store) planLocked(key string) *op {
	st := s.keys[key]
	if st == nil {
		return nil
	}
	if !st.want {
		stale := !st.explicit
		if stale && !s.synced {
			// Not handed in (yet): only remove it once the initial set
			// is complete; it is queued again then.
			return nil
		}
		if !st.written && !(st.obsKnown && st.obsPresent) {
			s.doneLocked(key, st, nil)
			return nil
		}
		return &op{key: key, st: st, del: true, stale: stale}
	}
	value := st.desired
	changedByOther := st.written && st.obsKnown && st.obsRev > st.writtenRev
	if st.written && bytes.Equal(st.writtenVal, value) && !changedByOther {
		s.doneLocked(key, st, value)
		return nil
	}
	if changedByOther {
		reason := "modified"
		if !st.obsPresent {
			reason = "deleted"
		}
		s.m.repairs.WithLabelValues(reason).Inc()
	}
	return &op{key: key, st: st, value: value}
}

// commit writes ops in one transaction and records the outcome.
func (s *Store) commit(ctx context.Context, ops []*op, errs map[string]error) {
	fail := func(err error) {
		for _, o := range ops {
			verb := "put"
			if o.del {
				verb = "delete"
			}
			errs[o.key] = fmt.Errorf("%s %s: %w", verb, o.key, err)
		}
	}
	if err := s.wait(ctx); err != nil {
		fail(err)
		return
	}
	etcdOps := make([]clientv3.Op, len(ops))
	for i, o := range ops {
		if o.del {
			etcdOps[i] = clientv3.OpDelete(o.key)
		} else {
			etcdOps[i] = clientv3.OpPut(o.key, string(o.value), clientv3.WithLease(o.lease))
		}
	}
	start := time.Now()
	rctx, cancel := context.WithTimeout(ctx, s.cfg.RequestTimeout)
	resp, err := s.c.Etcd().Txn(rctx).Then(etcdOps...).Commit()
	cancel()
	s.m.latency.Observe(time.Since(start).Seconds())
	if err != nil {
		if errors.Is(err, rpctypes.ErrLeaseNotFound) {
			if len(ops) > 1 {
				// Find the lost lease: write one by one.
				for _, o := range ops {
					s.commit(ctx, []*op{o}, errs)
				}
				return
			}
			s.leases.Expired(ops[0].lease)
		}
		fail(err)
		return
	}
	canary := false
	for _, o := range ops {
		switch {
		case o.del:
			s.leases.Detach(o.key)
			s.m.writes.WithLabelValues("delete").Inc()
			if o.stale {
				s.m.repairs.WithLabelValues("stale").Inc()
			}
		case o.key == s.cfg.SyncedKey:
			canary = true
			s.m.writes.WithLabelValues("canary").Inc()
		default:
			s.m.writes.WithLabelValues("upsert").Inc()
		}
	}
	rev := resp.Header.Revision
	s.mu.Lock()
	for _, o := range ops {
		st := o.st
		if o.del {
			// Gone at rev, also when an Upsert came in meanwhile: that
			// one is queued again and must be written, not taken for
			// written.
			st.written = false
			if st.obsRev < rev {
				st.obsKnown, st.obsPresent, st.obsRev = true, false, rev
			}
			s.doneLocked(o.key, st, nil)
			continue
		}
		st.written, st.writtenRev, st.writtenVal = true, rev, o.value
		if st.obsRev < rev {
			st.obsKnown, st.obsPresent, st.obsRev = true, true, rev
		}
		s.doneLocked(o.key, st, o.value)
	}
	s.mu.Unlock()
	if canary {
		s.closeSynced()
	}
}

// doneLocked records that key is reconciled with value (nil for a delete)
// if that is still the latest desired state.
func (s *Store) doneLocked(key string, st *keyState, value []byte) {
	if st.want != (value != nil) || (st.want && !bytes.Equal(st.desired, value)) {
		return // changed meanwhile: it is queued again
	}
	st.unsynced = false
	if !st.want && !st.written && !st.obsPresent {
		delete(s.keys, key)
	}
	if s.waitFor != nil {
		if _, ok := s.waitFor[key]; ok {
			delete(s.waitFor, key)
			s.maybeSyncedLocked()
		}
	}
}

// maybeSyncedLocked hands the canary to the queue once the initial set is
// written, and queues the keys under the prefix that nobody handed in.
func (s *Store) maybeSyncedLocked() {
	if !s.markSynced || s.synced || len(s.waitFor) > 0 {
		return
	}
	s.synced = true
	s.waitFor = nil
	for k, st := range s.keys {
		if !st.want && !st.explicit {
			s.q.add(k)
		}
	}
	if s.cfg.SyncedKey == "" {
		s.closeSyncedLocked()
		return
	}
	st := s.state(s.cfg.SyncedKey)
	st.want, st.desired = true, []byte(time.Now().UTC().Format(time.RFC3339))
	s.q.add(s.cfg.SyncedKey)
}

func (s *Store) closeSynced() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closeSyncedLocked()
}

func (s *Store) closeSyncedLocked() {
	select {
	case <-s.syncedCh:
	default:
		close(s.syncedCh)
	}
}

func (s *Store) wait(ctx context.Context) error {
	if s.limiter == nil {
		return nil
	}
	return s.limiter.Wait(ctx)
}
