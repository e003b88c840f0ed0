package identity

import (
	"context"
	"errors"
	"log/slog"
	"net/url"
	"strconv"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/goleak"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// startEtcd runs a plain single-member etcd on loopback for t.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "fatal"
	client, _ := url.Parse("http://127.0.0.1:0")
	peer, _ := url.Parse("http://127.0.0.1:0")
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*client}, []url.URL{*client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*peer}, []url.URL{*peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Clients[0].Addr().String()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func newAllocator(t *testing.T, c *clientv3.Client, clk *clocktesting.FakeClock, maxClusters int) *Allocator {
	t.Helper()
	a, err := New(context.Background(), c, Config{ClusterID: 3, MaxConnectedClusters: maxClusters, GracePeriod: time.Minute},
		slog.New(slog.DiscardHandler), clk, nil)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func stored(t *testing.T, c *clientv3.Client) map[string]string {
	t.Helper()
	resp, err := c.Get(context.Background(), wire.IdentityIDPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[string(kv.Key)] = string(kv.Value)
	}
	return out
}

const (
	web = "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=shop;"
	db  = "k8s:app=db;k8s:io.cilium.k8s.policy.cluster=c3;k8s:io.kubernetes.pod.namespace=shop;"
)

func TestAllocatorAcquireStoresInClusterRange(t *testing.T) {
	ctx := context.Background()
	c := startEtcd(t)
	for _, tc := range []struct {
		name        string
		maxClusters int
		first       uint32
	}{
		{"255 clusters", 255, 3<<16 | 256},
		{"511 clusters", 511, 3<<15 | 256},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := c.Delete(ctx, wire.IdentityIDPrefix, clientv3.WithPrefix()); err != nil {
				t.Fatal(err)
			}
			a := newAllocator(t, c, clocktesting.NewFakeClock(time.Unix(0, 0)), tc.maxClusters)
			id1, err := a.Acquire(ctx, web)
			if err != nil {
				t.Fatal(err)
			}
			id2, _ := a.Acquire(ctx, db)
			again, _ := a.Acquire(ctx, web)
			if id1 != tc.first || id2 != tc.first+1 || again != id1 {
				t.Fatalf("ids = %d, %d, %d; want %d, %d, %d", id1, id2, again, tc.first, tc.first+1, tc.first)
			}
			want := map[string]string{wire.IdentityKey(id1): web, wire.IdentityKey(id2): db}
			if got := stored(t, c); !equal(got, want) {
				t.Fatalf("etcd = %v, want %v", got, want)
			}
		})
	}
}

func TestAllocatorRestartKeepsIDs(t *testing.T) {
	ctx := context.Background()
	c := startEtcd(t)
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	a := newAllocator(t, c, clk, 255)
	webID, _ := a.Acquire(ctx, web)
	dbID, _ := a.Acquire(ctx, db)

	b := newAllocator(t, c, clk, 255)
	if id, ok := b.Lookup(db); !ok || id != dbID {
		t.Fatalf("after restart db = %d, %v; want %d", id, ok, dbID)
	}
	if id, _ := b.Acquire(ctx, web); id != webID {
		t.Fatalf("after restart web = %d, want %d", id, webID)
	}
	// Restored ids nobody references go after the grace period; referenced ones stay.
	clk.Step(2 * time.Minute)
	if err := b.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if got, want := stored(t, c), map[string]string{wire.IdentityKey(webID): web}; !equal(got, want) {
		t.Fatalf("etcd = %v, want %v", got, want)
	}
}

func TestAllocatorGracePeriod(t *testing.T) {
	ctx := context.Background()
	c := startEtcd(t)
	clk := clocktesting.NewFakeClock(time.Unix(0, 0))
	a := newAllocator(t, c, clk, 255)
	id, _ := a.Acquire(ctx, web)
	if err := a.Release(web); err != nil {
		t.Fatal(err)
	}
	if err := a.Release(web); !errors.Is(err, ErrNotReferenced) {
		t.Fatalf("second release: %v, want ErrNotReferenced", err)
	}
	clk.Step(30 * time.Second)
	_ = a.GC(ctx)
	// Re-acquired within the grace period: same id.
	if again, _ := a.Acquire(ctx, web); again != id {
		t.Fatalf("re-acquired %d, want %d", again, id)
	}
	_ = a.Release(web)
	clk.Step(59 * time.Second)
	_ = a.GC(ctx)
	if len(stored(t, c)) != 1 {
		t.Fatal("identity released before its grace period")
	}
	clk.Step(2 * time.Second)
	if err := a.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if got := stored(t, c); len(got) != 0 {
		t.Fatalf("etcd after grace = %v, want empty", got)
	}
	if _, ok := a.Lookup(web); ok {
		t.Fatal("released identity still known")
	}
}

func TestAllocatorSkipsIDsTakenInEtcd(t *testing.T) {
	ctx := context.Background()
	c := startEtcd(t)
	first := uint32(3<<16 | 256)
	// Written by someone else after our listing, and outside our range.
	a := newAllocator(t, c, clocktesting.NewFakeClock(time.Unix(0, 0)), 255)
	_, _ = c.Put(ctx, wire.IdentityKey(first), db)
	_, _ = c.Put(ctx, wire.IdentityKey(first+1), "k8s:other=1;")
	_, _ = c.Put(ctx, wire.IdentityKey(4<<16|256), "k8s:foreign=1;")
	id, err := a.Acquire(ctx, web)
	if err != nil || id != first+2 {
		t.Fatalf("web = %d, %v; want %d", id, err, first+2)
	}
	dbID, _ := a.Acquire(ctx, db)
	if dbID != first {
		t.Fatalf("db = %d, want the stored %d", dbID, first)
	}
	// A restart ignores the key outside the cluster's range.
	b := newAllocator(t, c, clocktesting.NewFakeClock(time.Unix(0, 0)), 255)
	if _, ok := b.Lookup("k8s:foreign=1;"); ok {
		t.Fatal("adopted an identity outside the cluster's range")
	}
}

func TestNewRejectsBadCluster(t *testing.T) {
	for _, tc := range []struct {
		id  uint32
		max int
	}{{0, 255}, {256, 255}, {3, 100}} {
		t.Run(strconv.Itoa(int(tc.id))+"/"+strconv.Itoa(tc.max), func(t *testing.T) {
			_, err := New(context.Background(), nil, Config{ClusterID: tc.id, MaxConnectedClusters: tc.max},
				slog.New(slog.DiscardHandler), clocktesting.NewFakeClock(time.Unix(0, 0)), nil)
			if err == nil {
				t.Fatal("accepted")
			}
		})
	}
}

func equal(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if bv, ok := b[k]; !ok || bv != v {
			return false
		}
	}
	return true
}
