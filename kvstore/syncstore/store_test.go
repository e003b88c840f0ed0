package syncstore_test

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/syncstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	prefix    = "cilium/state/nodes/v1/c1/"
	syncedKey = "cilium/synced/c1/cilium/state/nodes/v1"
)

type env struct {
	t      *testing.T
	srv    *etcdserver.Server
	admin  *clientv3.Client
	client *kvstore.Client
	reg    *prometheus.Registry
}

func newEnv(t *testing.T) *env {
	t.Helper()
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	e := &env{t: t, srv: srv, reg: prometheus.NewRegistry()}
	e.admin = e.connect(srv.AdminConfig()).Etcd()
	cfg := srv.AdminConfig()
	cfg.LeaseTTL = kvstore.Duration(5 * time.Second)
	cfg.MaxKeysPerLease = 10
	e.client = e.connect(cfg)
	return e
}

func (e *env) connect(cfg kvstore.Config) *kvstore.Client {
	cfg.DialTimeout = kvstore.Duration(2 * time.Second)
	cfg.KeepaliveInterval = kvstore.Duration(200 * time.Millisecond)
	c, err := kvstore.New(context.Background(), cfg, etcdserver.TestLogger())
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// run starts s and stops it at the end of the test.
func (e *env) run(s *syncstore.Store) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.Run(ctx); err != nil {
			e.t.Errorf("Run: %v", err)
		}
	})
	e.t.Cleanup(func() { cancel(); wg.Wait() })
}

func (e *env) store(mod func(*syncstore.Config)) *syncstore.Store {
	cfg := syncstore.Config{Prefix: prefix, SyncedKey: syncedKey, Name: "nodes", RetryMin: 10 * time.Millisecond, RetryMax: 200 * time.Millisecond}
	if mod != nil {
		mod(&cfg)
	}
	return syncstore.New(e.client, cfg, etcdserver.TestLogger(), e.reg)
}

// get returns key → value under p.
func (e *env) get(p string) (map[string]string, map[string]int64) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := e.admin.Get(ctx, p, clientv3.WithPrefix())
	if err != nil {
		e.t.Fatal(err)
	}
	vals, leases := map[string]string{}, map[string]int64{}
	for _, kv := range resp.Kvs {
		vals[string(kv.Key)] = string(kv.Value)
		leases[string(kv.Key)] = kv.Lease
	}
	return vals, leases
}

// eventually waits until cond holds.
func (e *env) eventually(what string, cond func() bool) {
	e.t.Helper()
	testwait.Until(e.t, 30*time.Second, what, func() (bool, string) { return cond(), "not yet" })
}

func (e *env) waitSynced(s *syncstore.Store) {
	e.t.Helper()
	select {
	case <-s.Synced():
	case <-time.After(30 * time.Second):
		e.t.Fatal("store not synced")
	}
}

func want(n int, tag string) map[string]string {
	m := map[string]string{}
	for i := range n {
		m[fmt.Sprintf("%snode-%d", prefix, i)] = fmt.Sprintf(`{"Name":"node-%d","v":%q}`, i, tag)
	}
	return m
}

func upsertAll(s *syncstore.Store, m map[string]string) {
	for k, v := range m {
		s.Upsert(k, []byte(v))
	}
}

func TestCanaryAfterInitialSet(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	// Record every write in revision order.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wch := e.admin.Watch(wctx, "cilium/", clientv3.WithPrefix())

	s := e.store(nil)
	initial := want(50, "v1")
	for range 5 { // coalesced: one write per key
		upsertAll(s, want(50, "v0"))
	}
	upsertAll(s, initial)
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)

	var maxKeyRev, canaryRev int64
	seen := map[string]string{}
	for canaryRev == 0 {
		wr := <-wch
		for _, ev := range wr.Events {
			if string(ev.Kv.Key) == syncedKey {
				canaryRev = ev.Kv.ModRevision
				if _, err := time.Parse(time.RFC3339, string(ev.Kv.Value)); err != nil {
					t.Fatalf("canary value %q: %v", ev.Kv.Value, err)
				}
				continue
			}
			seen[string(ev.Kv.Key)] = string(ev.Kv.Value)
			maxKeyRev = max(maxKeyRev, ev.Kv.ModRevision)
		}
	}
	if !maps.Equal(seen, initial) {
		t.Fatalf("written before canary: %d keys, want the %d of the initial set", len(seen), len(initial))
	}
	if canaryRev <= maxKeyRev {
		t.Fatalf("canary at revision %d, before the last key at %d", canaryRev, maxKeyRev)
	}
	if got := metricValue(t, e.reg, "clustermesh_kvstore_sync_writes_total", "upsert"); got != 50 {
		t.Fatalf("writes_total{op=upsert} = %v, want 50 (coalesced)", got)
	}
	_, leases := e.get(prefix)
	for k, l := range leases {
		if l == 0 {
			t.Fatalf("%s written without lease", k)
		}
	}
}

// metricValue returns the value of the counter or gauge name whose labels
// include the value label, 0 when there is no such series.
func metricValue(t *testing.T, reg *prometheus.Registry, name, label string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetValue() == label {
					if m.Counter != nil {
						return m.Counter.GetValue()
					}
					return m.Gauge.GetValue()
				}
			}
		}
	}
	return 0 // no series yet: a counter never incremented
}

func TestNoCanaryBeforeMarkSynced(t *testing.T) {
	e := newEnv(t)
	s := e.store(nil)
	initial := want(5, "v1")
	upsertAll(s, initial)
	e.run(s)
	e.eventually("keys written", func() bool { v, _ := e.get(prefix); return maps.Equal(v, initial) })
	if v, _ := e.get(syncedKey); len(v) != 0 {
		t.Fatal("canary written before MarkSynced")
	}
	s.MarkSynced()
	e.waitSynced(s)
	if v, _ := e.get(syncedKey); len(v) != 1 {
		t.Fatal("no canary after MarkSynced")
	}
}

func TestRepair(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(ctx context.Context, c *clientv3.Client, key string) error
	}{
		{"deleted by someone else", func(ctx context.Context, c *clientv3.Client, key string) error {
			_, err := c.Delete(ctx, key)
			return err
		}},
		{"modified by someone else", func(ctx context.Context, c *clientv3.Client, key string) error {
			_, err := c.Put(ctx, key, "garbage")
			return err
		}},
		{"prefix wiped", func(ctx context.Context, c *clientv3.Client, key string) error {
			_, err := c.Delete(ctx, prefix, clientv3.WithPrefix())
			return err
		}},
		{"stale key added", func(ctx context.Context, c *clientv3.Client, key string) error {
			_, err := c.Put(ctx, prefix+"stranger", "x")
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.store(nil)
			initial := want(10, "v1")
			upsertAll(s, initial)
			s.MarkSynced()
			e.run(s)
			e.waitSynced(s)
			e.eventually("initial keys", func() bool { v, _ := e.get(prefix); return maps.Equal(v, initial) })
			if err := tc.tamper(context.Background(), e.admin, prefix+"node-3"); err != nil {
				t.Fatal(err)
			}
			e.eventually("repair", func() bool {
				v, l := e.get(prefix)
				return maps.Equal(v, initial) && l[prefix+"node-3"] != 0
			})
		})
	}
}

// TestRepairOfKeysDeletedBeforeTheList: a listing that does not hold keys
// the store wrote (deleted before it: a first list slower than the first
// writes, a relist after a compaction) comes with no delete events for
// them, as its ListWatch never held them; the store rewrites them anyway.
// Here the store's watch starts again, with a new ListWatch, after the
// prefix was wiped.
func TestRepairOfKeysDeletedBeforeTheList(t *testing.T) {
	e := newEnv(t)
	s := e.store(nil)
	initial := want(10, "v1")
	upsertAll(s, initial)
	s.MarkSynced()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	e.waitSynced(s)
	e.eventually("initial keys", func() bool { v, _ := e.get(prefix); return maps.Equal(v, initial) })
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := e.admin.Delete(context.Background(), prefix, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	e.run(s)
	e.eventually("keys rewritten", func() bool {
		v, l := e.get(prefix)
		return maps.Equal(v, initial) && l[prefix+"node-3"] != 0
	})
	if got := metricValue(t, e.reg, "clustermesh_kvstore_sync_repairs_total", "deleted"); got != 10 {
		t.Fatalf("repairs_total{reason=deleted} = %v, want 10", got)
	}
}

// TestLeaseExpiryRewritesKeys cuts the store off from etcd for longer than
// the lease TTL: etcd expires the lease and deletes the keys; once the
// store is back, it learns that the lease is gone and rewrites every key.
func TestLeaseExpiryRewritesKeys(t *testing.T) {
	e := newEnv(t)
	px := etcdserver.NewProxy(t, e.srv.Endpoints()[0])
	cfg := e.srv.AdminConfig()
	cfg.Endpoints = []string{px.Endpoint()}
	cfg.LeaseTTL = kvstore.Duration(2 * time.Second)
	cfg.MaxKeysPerLease = 10
	e.client = e.connect(cfg)
	s := e.store(nil)
	initial := want(15, "v1")
	upsertAll(s, initial)
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	e.eventually("initial keys", func() bool { v, _ := e.get(prefix); return maps.Equal(v, initial) })

	px.Block()
	e.eventually("keys expired with their leases", func() bool {
		v, _ := e.get(prefix)
		c, _ := e.get(syncedKey)
		return len(v) == 0 && len(c) == 0
	})
	px.Unblock()
	e.eventually("keys and canary rewritten", func() bool {
		v, _ := e.get(prefix)
		c, _ := e.get(syncedKey)
		return maps.Equal(v, initial) && len(c) == 1
	})
	if got := metricValue(t, e.reg, "clustermesh_kvstore_sync_repairs_total", "lease-lost"); got < 15 {
		t.Fatalf("repairs_total{reason=lease-lost} = %v, want >= 15", got)
	}
}

func TestLeaseLossRewritesKeys(t *testing.T) {
	tests := []struct {
		name string
		lose func(e *env, lease int64)
	}{
		{"lease revoked", func(e *env, lease int64) {
			if _, err := e.admin.Revoke(context.Background(), clientv3.LeaseID(lease)); err != nil {
				e.t.Fatal(err)
			}
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			s := e.store(nil)
			initial := want(25, "v1") // 3 leases of at most 10 keys
			upsertAll(s, initial)
			s.MarkSynced()
			e.run(s)
			e.waitSynced(s)
			_, before := e.get(prefix)
			distinct := map[int64]bool{}
			for _, l := range before {
				distinct[l] = true
			}
			if len(distinct) != 3 {
				t.Fatalf("%d leases for 25 keys at 10 per lease", len(distinct))
			}
			lost := before[prefix+"node-0"]
			tc.lose(e, lost)
			e.eventually("keys rewritten on a new lease", func() bool {
				v, l := e.get(prefix)
				if !maps.Equal(v, initial) {
					return false
				}
				for _, id := range l {
					if id == lost || id == 0 {
						return false
					}
				}
				return true
			})
		})
	}
}

func TestDeleteAndUpdate(t *testing.T) {
	e := newEnv(t)
	s := e.store(nil)
	upsertAll(s, want(3, "v1"))
	s.Upsert(prefix+"gone-before-run", []byte("x"))
	s.Delete(prefix + "gone-before-run")
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	s.Delete(prefix + "node-1")
	s.Upsert(prefix+"node-2", []byte("v2"))
	expect := want(3, "v1")
	delete(expect, prefix+"node-1")
	expect[prefix+"node-2"] = "v2"
	e.eventually("delete and update", func() bool { v, _ := e.get(prefix); return maps.Equal(v, expect) })
	e.eventually("the update reported written", func() bool { return s.Written(prefix + "node-2") })
	for _, k := range []string{"node-1", "never-handed-in"} {
		if s.Written(prefix + k) {
			t.Errorf("%s reported written", k)
		}
	}
}

// A key upserted again while its delete is being committed is written
// again at once: the store knows it deleted it, so it neither takes the
// key for written nor waits for the watch to report the delete as a repair.
func TestUpsertDuringItsDelete(t *testing.T) {
	e := newEnv(t)
	// One worker, one key per transaction, one transaction per second: a
	// planned write waits ≈ 1 s for its turn, the window this test needs.
	s := e.store(func(c *syncstore.Config) { c.Workers, c.BatchSize, c.QPS = 1, 1, 1 })
	key := prefix + "node-0"
	s.Upsert(key, []byte("v"))
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	e.eventually("the key written", func() bool { return s.Written(key) })

	s.Delete(key)
	e.eventually("the delete taken by the worker", func() bool {
		return metricValue(t, e.reg, "clustermesh_kvstore_sync_queue_depth", "nodes") == 0
	})
	s.Upsert(key, []byte("v"))
	e.eventually("the key written again", func() bool { return s.Written(key) })
	if v, _ := e.get(key); v[key] != "v" {
		t.Fatalf("etcd holds %q after the store reported the key written, want %q", v, "v")
	}
	if got := metricValue(t, e.reg, "clustermesh_kvstore_sync_repairs_total", "deleted"); got != 0 {
		t.Fatalf("repairs_total{reason=deleted} = %v, want 0: the store's own delete taken for someone else's", got)
	}
}

func TestWritesRetriedWhileEtcdDown(t *testing.T) {
	e := newEnv(t)
	s := e.store(func(c *syncstore.Config) { c.RequestTimeout = 500 * time.Millisecond })
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	e.srv.Stop()
	key := prefix + "during-outage"
	s.Upsert(key, []byte("x"))
	e.eventually("a failed write", func() bool { return s.LastError() != nil })
	if s.Written(key) {
		t.Fatal("a key whose write failed is reported written")
	}
	if err := e.srv.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.eventually("write after restart", func() bool { v, _ := e.get(prefix); return v[key] == "x" })
	e.eventually("the key reported written", func() bool { return s.Written(key) })
	e.eventually("error cleared once every write succeeded", func() bool { return s.LastError() == nil })
}

func TestConfigErrors(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name string
		cfg  syncstore.Config
	}{
		{"empty prefix", syncstore.Config{}},
		{"canary under prefix", syncstore.Config{Prefix: prefix, SyncedKey: prefix + "synced"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := syncstore.New(e.client, tc.cfg, etcdserver.TestLogger(), nil)
			if err := s.Run(context.Background()); err == nil {
				t.Fatal("Run accepted a bad config")
			}
		})
	}
}

func TestStaleKeysOfPreviousRunDeletedAfterSync(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	for _, k := range []string{"node-0", "node-old"} {
		if _, err := e.admin.Put(ctx, prefix+k, "previous run"); err != nil {
			t.Fatal(err)
		}
	}
	s := e.store(nil)
	initial := want(2, "v1")
	upsertAll(s, initial)
	e.run(s)
	// Not synced yet: the unknown key stays.
	e.eventually("initial keys", func() bool {
		v, _ := e.get(prefix)
		return v[prefix+"node-1"] == initial[prefix+"node-1"] && v[prefix+"node-0"] == initial[prefix+"node-0"]
	})
	if v, _ := e.get(prefix); v[prefix+"node-old"] == "" {
		t.Fatal("unknown key deleted before the initial set was complete")
	}
	s.MarkSynced()
	e.waitSynced(s)
	e.eventually("stale key deleted", func() bool { v, _ := e.get(prefix); return maps.Equal(v, initial) })
	if got := metricValue(t, e.reg, "clustermesh_kvstore_sync_repairs_total", "stale"); got != 1 {
		t.Fatalf("repairs_total{reason=stale} = %v", got)
	}
}

func TestLargeValuesSplitAcrossTransactions(t *testing.T) {
	e := newEnv(t)
	s := e.store(nil)
	big := strings.Repeat("x", 300<<10) // two of these exceed one transaction's budget
	expect := map[string]string{}
	for i := range 6 {
		k := fmt.Sprintf("%sbig-%d", prefix, i)
		expect[k] = big
		s.Upsert(k, []byte(big))
	}
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	e.eventually("large values written", func() bool { v, _ := e.get(prefix); return maps.Equal(v, expect) })
	if s.LastError() != nil {
		t.Fatalf("write error: %v", s.LastError())
	}
}

// A store of one key (a Prefix without "/", as the cluster config of c2)
// neither deletes nor repairs the keys that merely begin with it (the
// config of c20, which a kvstoremesh copies into the same etcd).
func TestSingleKeyPrefixLeavesLongerKeys(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	const key, other = "cilium/cluster-config/c2", "cilium/cluster-config/c20"
	if _, err := e.admin.Put(ctx, other, "c20's"); err != nil {
		t.Fatal(err)
	}
	s := e.store(func(c *syncstore.Config) { c.Prefix, c.SyncedKey = key, "" })
	s.Upsert(key, []byte("c2's"))
	s.MarkSynced()
	e.run(s)
	e.waitSynced(s)
	if _, err := e.admin.Put(ctx, other, "c20's, changed"); err != nil {
		t.Fatal(err)
	}
	s.Upsert(key, []byte("c2's, changed")) // a later write: the watch has seen c20's change by then
	e.eventually("c2's change written", func() bool { v, _ := e.get(key); return v[key] == "c2's, changed" })
	if v, _ := e.get(other); v[other] != "c20's, changed" {
		t.Fatalf("the key of c20 is %q, want it untouched", v[other])
	}
}
