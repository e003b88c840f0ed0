package kvstore_test

import (
	"context"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func TestLeases(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	admin := connect(t, srv.AdminConfig()).Etcd()
	cfg := srv.AdminConfig()
	cfg.LeaseTTL = kvstore.Duration(2 * time.Second)
	cfg.MaxKeysPerLease = 2
	c := connect(t, cfg)

	lost := make(chan []string, 4)
	l := c.NewLeases(func(keys []string) {
		slices.Sort(keys)
		lost <- keys
	})
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Run(rctx); err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	defer func() { cancel(); wg.Wait() }()

	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	ids := map[string]clientv3.LeaseID{}
	for _, k := range keys {
		id, err := l.Attach(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		ids[k] = id
		if _, err := c.Etcd().Put(ctx, k, "v", clientv3.WithLease(id)); err != nil {
			t.Fatal(err)
		}
	}
	t.Run("at most max keys per lease", func(t *testing.T) {
		if ids["k0"] != ids["k1"] || ids["k2"] != ids["k3"] || ids["k0"] == ids["k2"] || ids["k4"] == ids["k2"] {
			t.Fatalf("lease assignment %v", ids)
		}
		if n, k := l.Count(); n != 3 || k != 5 {
			t.Fatalf("Count = %d leases, %d keys", n, k)
		}
	})
	t.Run("attach is stable per key", func(t *testing.T) {
		id, err := l.Attach(ctx, "k3")
		if err != nil || id != ids["k3"] {
			t.Fatalf("Attach(k3) = %x, %v; want %x", id, err, ids["k3"])
		}
	})
	t.Run("leases are kept alive", func(t *testing.T) {
		// Longer than the TTL: without keepalives the keys would be gone.
		time.Sleep(3 * time.Second)
		resp, err := admin.Get(ctx, "k", clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil || resp.Count != 5 {
			t.Fatalf("count = %d, %v", resp.Count, err)
		}
	})
	t.Run("revoked lease reported with its keys", func(t *testing.T) {
		if _, err := admin.Revoke(ctx, ids["k0"]); err != nil {
			t.Fatal(err)
		}
		select {
		case got := <-lost:
			if !slices.Equal(got, []string{"k0", "k1"}) {
				t.Fatalf("lost keys %v", got)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("lost lease not reported")
		}
		id, err := l.Attach(ctx, "k0")
		if err != nil || id == ids["k0"] {
			t.Fatalf("Attach after loss = %x, %v", id, err)
		}
	})
	t.Run("expired reported by a writer", func(t *testing.T) {
		l.Expired(ids["k2"])
		got := <-lost
		if !slices.Equal(got, []string{"k2", "k3"}) {
			t.Fatalf("lost keys %v", got)
		}
		l.Expired(ids["k2"]) // twice: nothing more
		select {
		case got := <-lost:
			t.Fatalf("second Expired reported %v", got)
		default:
		}
	})
	t.Run("detach", func(t *testing.T) {
		l.Detach("k4")
		l.Detach("k4")
		if _, k := l.Count(); k != 1 { // k0 on its new lease
			t.Fatalf("keys = %d", k)
		}
	})
}

func TestStatus(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	port, err := etcdserver.FreePort("")
	if err != nil {
		t.Fatal(err)
	}
	dead := "https://127.0.0.1:" + itoa(port)
	cfg := srv.AdminConfig()
	cfg.Endpoints = append(cfg.Endpoints, dead)
	cfg.DialTimeout = kvstore.Duration(500 * time.Millisecond)
	c := connect(t, cfg)
	if st := c.Status(ctx); st.ClusterID != 0 {
		t.Fatalf("cluster ID pinned before any list: %x", st.ClusterID)
	}
	cs := startConsumer(t, c, prefix)
	cs.waitFor(t, "list", func(_ map[string]string, n int) bool { return n == 1 })
	st := c.Status(ctx)
	tests := []struct {
		name      string
		ep        int
		reachable bool
	}{
		{name: "live endpoint", ep: 0, reachable: true},
		{name: "dead endpoint", ep: 1, reachable: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			es := st.Endpoints[tc.ep]
			if es.Reachable != tc.reachable || (es.Err == nil) != tc.reachable {
				t.Fatalf("%+v", es)
			}
			if tc.reachable && (es.Latency <= 0 || es.ClusterID != srv.ClusterID()) {
				t.Fatalf("%+v", es)
			}
		})
	}
	if !st.Healthy() || st.ClusterID != srv.ClusterID() {
		t.Fatalf("status %+v, want healthy and cluster ID %x", st, srv.ClusterID())
	}
	srv.Stop()
	if st := c.Status(ctx); st.Healthy() {
		t.Fatalf("healthy with etcd stopped: %+v", st)
	}
}

func TestQPSLimit(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	cfg := srv.AdminConfig()
	cfg.QPS = 20
	c := connect(t, cfg)
	ctx := testCtx(t)
	start := time.Now()
	for range 30 {
		if _, err := c.Etcd().Get(ctx, "k"); err != nil {
			t.Fatal(err)
		}
	}
	// A burst of 20, then 10 more at 20/s: at least ~0.5 s.
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("30 requests at qps 20 took %s", d)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
