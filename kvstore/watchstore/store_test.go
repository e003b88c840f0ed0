package watchstore_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

const (
	prefix    = "cilium/state/nodes/v1/c1/"
	syncedKey = "cilium/synced/c1/cilium/state/nodes/v1"
)

// node is a stand-in for a wire type: its decoder checks the JSON, that
// the key names the node and that the node belongs to cluster c1.
type node struct {
	Name    string `json:"Name"`
	Cluster string `json:"Cluster"`
}

var errInvalid = errors.New("invalid node")

func decodeNode(key string, value []byte) (node, error) {
	var n node
	if err := json.Unmarshal(value, &n); err != nil {
		return node{}, fmt.Errorf("%w: %w", errInvalid, err)
	}
	if n.Cluster != "c1" {
		return node{}, fmt.Errorf("%w: cluster %q", errInvalid, n.Cluster)
	}
	if strings.TrimPrefix(key, prefix) != n.Name {
		return node{}, fmt.Errorf("%w: key %q does not match name %q", errInvalid, key, n.Name)
	}
	return n, nil
}

func nodeJSON(name string) string { return fmt.Sprintf(`{"Name":%q,"Cluster":"c1"}`, name) }

// recorder is an Observer that mirrors the entries.
type recorder struct {
	mu      sync.Mutex
	state   map[string]node
	log     []string
	synced  int
	changed chan struct{}
}

func newRecorder() *recorder {
	return &recorder{state: map[string]node{}, changed: make(chan struct{})}
}

func (r *recorder) note(s string) {
	r.log = append(r.log, s)
	close(r.changed)
	r.changed = make(chan struct{})
}

func (r *recorder) OnUpsert(key string, v, prev node, hadPrev bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if held, ok := r.state[key]; ok != hadPrev || held != prev {
		panic(fmt.Sprintf("OnUpsert(%s) with previous %v (%v), held %v (%v)", key, prev, hadPrev, held, ok))
	}
	r.state[key] = v
	r.note("upsert " + key)
}

func (r *recorder) OnDelete(key string, v node) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state[key] != v {
		panic(fmt.Sprintf("OnDelete(%s) with %v, held %v", key, v, r.state[key]))
	}
	delete(r.state, key)
	r.note("delete " + key)
}

func (r *recorder) OnSync() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.synced++
	r.note("sync")
}

func (r *recorder) waitFor(t *testing.T, what string, cond func(state map[string]node, synced int) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		r.mu.Lock()
		ok := cond(r.state, r.synced)
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			r.mu.Lock()
			defer r.mu.Unlock()
			t.Fatalf("timed out waiting for %s; state %v, log %v", what, r.state, r.log)
		}
	}
}

// names returns the node names of etcd under prefix, as a recorder would
// hold them.
func etcdNodes(t *testing.T, c *clientv3.Client) map[string]node {
	t.Helper()
	resp, err := c.Get(context.Background(), prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]node{}
	for _, kv := range resp.Kvs {
		if n, err := decodeNode(string(kv.Key), kv.Value); err == nil {
			m[string(kv.Key)] = n
		}
	}
	return m
}

type env struct {
	srv   *etcdserver.Server
	admin *clientv3.Client
}

func newEnv(t *testing.T) *env {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	return &env{srv: srv, admin: connect(t, srv.AdminConfig()).Etcd()}
}

func connect(t *testing.T, cfg kvstore.Config) *kvstore.Client {
	t.Helper()
	cfg.DialTimeout = kvstore.Duration(2 * time.Second)
	cfg.KeepaliveInterval = kvstore.Duration(200 * time.Millisecond)
	c, err := kvstore.New(context.Background(), cfg, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) put(t *testing.T, key, value string) {
	t.Helper()
	if _, err := e.admin.Put(context.Background(), key, value); err != nil {
		t.Fatal(err)
	}
}

// remote connects as the read-only user of cluster c2, as an agent would.
func (e *env) remote(t *testing.T) *kvstore.Client {
	t.Helper()
	cfg, err := e.srv.EnsureRemoteUser(context.Background(), "c2")
	if err != nil {
		t.Fatal(err)
	}
	return connect(t, cfg)
}

// run starts s; the returned stop cancels it and waits for Run to return.
func run[T any](t *testing.T, s *watchstore.Store[T]) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := s.Run(ctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	return stop
}

func TestInvalidValuesSkippedAndCounted(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		e.put(t, prefix+n, nodeJSON(n))
	}
	e.put(t, syncedKey, time.Now().Format(time.RFC3339))
	rec := newRecorder()
	s := watchstore.New(e.remote(t), watchstore.Config{Prefix: prefix, SyncedKey: syncedKey, Name: "nodes", Cluster: "c1"}, decodeNode, rec, etcdserver.TestLogger())
	run(t, s)
	rec.waitFor(t, "sync", func(_ map[string]node, synced int) bool { return synced == 1 })

	tests := []struct {
		name        string
		key, value  string
		wantInvalid bool
	}{
		{name: "malformed json", key: "bad-json", value: `{"Name":`, wantInvalid: true},
		{name: "key does not match value", key: "d", value: nodeJSON("e"), wantInvalid: true},
		{name: "wrong cluster", key: "f", value: `{"Name":"f","Cluster":"c9"}`, wantInvalid: true},
		{name: "valid after invalid ones", key: "g", value: nodeJSON("g")},
		{name: "invalid update withdraws the old entry", key: "a", value: `not json`, wantInvalid: true},
		{name: "valid again", key: "a", value: nodeJSON("a")},
	}
	var invalid uint64
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.put(t, prefix+tc.key, tc.value)
			if tc.wantInvalid {
				invalid++
			}
			// A valid marker written after each case proves the stream
			// flows on.
			e.put(t, prefix+"marker", nodeJSON("marker"))
			want := etcdNodes(t, e.admin)
			rec.waitFor(t, "entries to match etcd's valid ones", func(st map[string]node, _ int) bool {
				return maps.Equal(st, want) && s.Stats().Invalid == invalid
			})
			if _, err := e.admin.Delete(context.Background(), prefix+"marker"); err != nil {
				t.Fatal(err)
			}
		})
	}
	final := etcdNodes(t, e.admin)
	rec.waitFor(t, "marker deleted", func(st map[string]node, _ int) bool { return maps.Equal(st, final) })
	st := s.Stats()
	if st.Invalid != 4 || !st.Synced || st.LastEvent.IsZero() || st.Entries != len(final) {
		t.Fatalf("stats %+v", st)
	}
}

func TestWaitsForCanary(t *testing.T) {
	e := newEnv(t)
	e.put(t, prefix+"a", nodeJSON("a"))
	rec := newRecorder()
	s := watchstore.New(e.remote(t), watchstore.Config{Prefix: prefix, SyncedKey: syncedKey}, decodeNode, rec, etcdserver.TestLogger())
	run(t, s)
	deadline := time.Now().Add(30 * time.Second)
	for !s.Stats().WaitingForCanary {
		if time.Now().After(deadline) {
			t.Fatal("store never waited for the canary")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Another cluster's canary does not count.
	e.put(t, "cilium/synced/c1/cilium/state/nodes/v1x", "x")
	rec.mu.Lock()
	if len(rec.log) != 0 {
		t.Fatalf("events before the canary: %v", rec.log)
	}
	rec.mu.Unlock()
	e.put(t, syncedKey, time.Now().Format(time.RFC3339))
	rec.waitFor(t, "sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 1 })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if strings.Join(rec.log, ",") != "upsert "+prefix+"a,sync" {
		t.Fatalf("log %v", rec.log)
	}
}

// TestResyncAfterOutage: etcd restarted under the watch, keys changed and
// compacted while the agent was cut off: the observer ends with exactly
// what etcd holds, through synthetic deletes.
func TestResyncAfterOutage(t *testing.T) {
	e := newEnv(t)
	for i := range 10 {
		e.put(t, fmt.Sprintf("%sn%d", prefix, i), nodeJSON(fmt.Sprintf("n%d", i)))
	}
	e.put(t, syncedKey, "now")
	rcfg, err := e.srv.EnsureRemoteUser(context.Background(), "c2")
	if err != nil {
		t.Fatal(err)
	}
	px := etcdserver.NewProxy(t, e.srv.Endpoints()[0])
	rcfg.Endpoints = []string{px.Endpoint()}
	rec := newRecorder()
	s := watchstore.New(connect(t, rcfg), watchstore.Config{Prefix: prefix, SyncedKey: syncedKey}, decodeNode, rec, etcdserver.TestLogger())
	run(t, s)
	rec.waitFor(t, "sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 10 })

	px.Block()
	e.srv.Stop()
	if err := e.srv.Restart(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, k := range []string{"n1", "n4", "n7"} {
		if _, err := e.admin.Delete(ctx, prefix+k); err != nil {
			t.Fatal(err)
		}
	}
	e.put(t, prefix+"n20", nodeJSON("n20"))
	resp, err := e.admin.Get(ctx, "x")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.admin.Compact(ctx, resp.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}
	want := etcdNodes(t, e.admin)
	px.Unblock()
	rec.waitFor(t, "entries to match etcd", func(st map[string]node, _ int) bool { return maps.Equal(st, want) })
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if rec.synced != 1 {
		t.Fatalf("OnSync called %d times", rec.synced)
	}
}

func TestDrain(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		e.put(t, prefix+n, nodeJSON(n))
	}
	rec := newRecorder()
	s := watchstore.New(e.remote(t), watchstore.Config{Prefix: prefix}, decodeNode, rec, etcdserver.TestLogger())
	stop := run(t, s)
	rec.waitFor(t, "sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 3 })
	// The store holds keys without its prefix; readers see the full keys.
	var keys []string
	s.Range(func(k string, _ node) bool { keys = append(keys, k); return true })
	slices.Sort(keys)
	if want := []string{prefix + "a", prefix + "b", prefix + "c"}; !slices.Equal(keys, want) {
		t.Fatalf("Range keys %q, want %q", keys, want)
	}
	if n, ok := s.Get(prefix + "b"); !ok || n.Name != "b" {
		t.Fatalf("Get(%q) = %v, %v", prefix+"b", n, ok)
	}
	if _, ok := s.Get("b"); ok {
		t.Fatal(`Get("b") found the entry of a key under the prefix`)
	}
	stop()
	s.Drain()
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.state) != 0 || s.Len() != 0 || s.Stats().Synced {
		t.Fatalf("after Drain: observer %v, store %d entries", rec.state, s.Len())
	}
	deletes := 0
	for _, l := range rec.log {
		if strings.HasPrefix(l, "delete ") {
			deletes++
		}
	}
	if deletes != 3 {
		t.Fatalf("%d deletes, want 3", deletes)
	}
}

func TestRunRejectsEmptyPrefix(t *testing.T) {
	e := newEnv(t)
	s := watchstore.New(e.remote(t), watchstore.Config{}, decodeNode, newRecorder(), etcdserver.TestLogger())
	if err := s.Run(context.Background()); !errors.Is(err, watchstore.ErrConfig) {
		t.Fatalf("Run = %v", err)
	}
}

// TestReplacedEtcdWaitsForCanary replaces the remote etcd by an empty one
// (a restarted apiserver with an ephemeral etcd): the entries must stay
// until the new etcd has its canary again, then converge to its contents.
func TestReplacedEtcdWaitsForCanary(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		e.put(t, prefix+n, nodeJSON(n))
	}
	e.put(t, syncedKey, "then")
	rec := newRecorder()
	c := e.remote(t)
	s := watchstore.New(c, watchstore.Config{Prefix: prefix, SyncedKey: syncedKey}, decodeNode, rec, etcdserver.TestLogger())
	run(t, s)
	rec.waitFor(t, "sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 3 })
	before := etcdNodes(t, e.admin)

	e.srv.Stop()
	cfg := e.srv.Config()
	cfg.DataDir = t.TempDir() + "/replacement"
	cfg.InitialCluster = ""
	cfg.InitialClusterToken = "replacement"
	repl := etcdserver.StartTest(t, cfg)
	admin := connect(t, repl.AdminConfig()).Etcd()
	if _, err := repl.EnsureRemoteUser(context.Background(), "c2"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !s.Stats().WaitingForCanary {
		if time.Now().After(deadline) {
			t.Fatal("store did not wait for the canary of the replaced etcd")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The writer refills the new etcd; nothing is withdrawn meanwhile.
	ctx := context.Background()
	for _, n := range []string{"b", "d"} {
		if _, err := admin.Put(ctx, prefix+n, nodeJSON(n)); err != nil {
			t.Fatal(err)
		}
	}
	rec.mu.Lock()
	if !maps.Equal(rec.state, before) {
		t.Fatalf("entries changed before the canary: %v", rec.state)
	}
	rec.mu.Unlock()
	if _, err := admin.Put(ctx, syncedKey, "now"); err != nil {
		t.Fatal(err)
	}
	want := etcdNodes(t, admin)
	rec.waitFor(t, "entries of the new etcd", func(st map[string]node, _ int) bool { return maps.Equal(st, want) })
}

// TestRunOnNewClientSweeps runs a store again through a new client after
// changes it missed: the entries stay until the new run has listed, which
// then withdraws exactly what vanished.
func TestRunOnNewClientSweeps(t *testing.T) {
	e := newEnv(t)
	for _, n := range []string{"a", "b", "c"} {
		e.put(t, prefix+n, nodeJSON(n))
	}
	e.put(t, syncedKey, "then")
	rec := newRecorder()
	s := watchstore.New(nil, watchstore.Config{Prefix: prefix, SyncedKey: syncedKey}, decodeNode, rec, etcdserver.TestLogger())
	runOn := func(c *kvstore.Client) (stop func()) {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			if err := s.RunOn(ctx, c); err != nil {
				t.Errorf("RunOn: %v", err)
			}
		}()
		return func() { cancel(); <-done }
	}
	stop := runOn(e.remote(t))
	rec.waitFor(t, "first sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 3 })
	stop()

	if _, err := e.admin.Delete(context.Background(), prefix+"b"); err != nil {
		t.Fatal(err)
	}
	e.put(t, prefix+"c", "{bad")
	e.put(t, prefix+"d", nodeJSON("d"))
	if !s.Stats().Synced || s.Len() != 3 {
		t.Fatalf("between runs: %+v", s.Stats())
	}
	stop = runOn(e.remote(t))
	defer stop()
	want := etcdNodes(t, e.admin)
	rec.waitFor(t, "second sync", func(st map[string]node, synced int) bool { return synced == 2 && maps.Equal(st, want) })
	if st := s.Stats(); !st.Synced || st.Entries != 2 || st.Invalid != 1 {
		t.Fatalf("after the second run: %+v", st)
	}
	if s.Run(context.Background()) == nil {
		t.Fatal("Run without a client succeeded")
	}
}

// TestMaxEntries: a prefix with more valid entries than MaxEntries stops
// the run with ErrTooManyEntries, holding at most MaxEntries; invalid
// values do not count.
func TestMaxEntries(t *testing.T) {
	tests := []struct {
		name    string
		valid   int
		invalid int
		wantErr bool
	}{
		{name: "at the limit, invalid ones aside", valid: 3, invalid: 5},
		{name: "over the limit", valid: 5, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			for i := range tc.valid {
				n := fmt.Sprintf("n%d", i)
				e.put(t, prefix+n, nodeJSON(n))
			}
			for i := range tc.invalid {
				e.put(t, prefix+fmt.Sprintf("bad%d", i), `{"Name":`)
			}
			e.put(t, syncedKey, time.Now().Format(time.RFC3339))
			rec := newRecorder()
			s := watchstore.New(e.remote(t), watchstore.Config{Prefix: prefix, SyncedKey: syncedKey, MaxEntries: 3}, decodeNode, rec, etcdserver.TestLogger())
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			if tc.wantErr {
				err := <-done
				if !errors.Is(err, watchstore.ErrTooManyEntries) {
					t.Fatalf("Run = %v, want ErrTooManyEntries", err)
				}
				if s.Len() > 3 {
					t.Fatalf("holds %d entries, limit 3", s.Len())
				}
				// The listing went on past the refused entry: it is not
				// complete, and must not be reported as such.
				rec.mu.Lock()
				synced := rec.synced
				rec.mu.Unlock()
				if synced != 0 || s.Stats().Synced {
					t.Fatalf("a run stopped over the limit reported its listing synced (OnSync %d times, Synced %v)", synced, s.Stats().Synced)
				}
				return
			}
			rec.waitFor(t, "sync", func(st map[string]node, synced int) bool { return synced == 1 && len(st) == 3 })
			if st := s.Stats(); st.Invalid != uint64(tc.invalid) {
				t.Fatalf("invalid %d, want %d", st.Invalid, tc.invalid)
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run = %v after cancel", err)
			}
		})
	}
}

// reservingRecorder also records the Reserve calls.
type reservingRecorder struct {
	*recorder
	reserved []int
}

func (r *reservingRecorder) Reserve(n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.state) != 0 {
		panic(fmt.Sprintf("Reserve(%d) after %d entries", n, len(r.state)))
	}
	r.reserved = append(r.reserved, n)
}

// The initial listing sizes the observer's tables once, with the listing's
// key count; watch events do not.
func TestReserveFromListing(t *testing.T) {
	e := newEnv(t)
	for i := range 40 {
		e.put(t, fmt.Sprintf("%snode-%d", prefix, i), nodeJSON(fmt.Sprintf("node-%d", i)))
	}
	e.put(t, prefix+"bad", "not json")
	r := &reservingRecorder{recorder: newRecorder()}
	s := watchstore.New(e.remote(t), watchstore.Config{Prefix: prefix}, decodeNode, r, etcdserver.TestLogger())
	run(t, s)
	r.waitFor(t, "initial listing", func(state map[string]node, synced int) bool { return synced == 1 })
	e.put(t, prefix+"node-40", nodeJSON("node-40"))
	r.waitFor(t, "watched upsert", func(state map[string]node, _ int) bool { return len(state) == 41 })
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.reserved) != 1 || r.reserved[0] != 41 {
		t.Errorf("Reserve calls %v, want one of 41 (the listed keys, the invalid one included)", r.reserved)
	}
}
