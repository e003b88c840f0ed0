package etcdserver_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func connect(t *testing.T, cfg kvstore.Config) *kvstore.Client {
	t.Helper()
	cfg.DialTimeout = kvstore.Duration(5 * time.Second)
	c, err := kvstore.New(testCtx(t), cfg, etcdserver.TestLogger())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestRestartKeepsDataPortsAndAuth(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	eps := srv.Endpoints()
	id := srv.ClusterID()
	admin := connect(t, srv.AdminConfig()).Etcd()
	if _, err := admin.Put(ctx, "cilium/state/k", "v"); err != nil {
		t.Fatal(err)
	}
	rcfg, err := srv.EnsureRemoteUser(ctx, "c2")
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	if srv.Running() {
		t.Fatal("running after Stop")
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if got := srv.Endpoints(); got[0] != eps[0] {
		t.Fatalf("endpoints changed: %v -> %v", eps, got)
	}
	if srv.ClusterID() != id {
		t.Fatal("cluster ID changed across restart")
	}
	resp, err := admin.Get(ctx, "cilium/state/k")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get after restart: %v", err)
	}
	remote := connect(t, rcfg).Etcd()
	if _, err := remote.Put(ctx, "cilium/state/k", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("remote put after restart: %v", err)
	}
}

func TestThreeMemberCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three etcd members")
	}
	ctx := testCtx(t)
	base := etcdserver.Config{
		ClusterName:   "c1",
		DataDir:       filepath.Join(t.TempDir(), "etcd"),
		UnsafeNoFsync: true,
	}
	servers, err := etcdserver.StartCluster(ctx, base, 3, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range servers {
		t.Cleanup(s.Stop)
	}
	cfg := servers[0].AdminConfig()
	cfg.Endpoints = etcdserver.JoinEndpoints(servers...)
	c := connect(t, cfg).Etcd()
	resp, err := c.MemberList(ctx)
	if err != nil || len(resp.Members) != 3 {
		t.Fatalf("member list: %v (%d members)", err, len(resp.Members))
	}
	if _, err := c.Put(ctx, "cilium/state/a", "1"); err != nil {
		t.Fatal(err)
	}
	servers[0].Stop()
	if _, err := c.Put(ctx, "cilium/state/b", "2"); err != nil {
		t.Fatalf("put with one member down: %v", err)
	}
	got, err := c.Get(ctx, "cilium/state/", clientv3.WithPrefix())
	if err != nil || got.Count != 2 {
		t.Fatalf("get with one member down: %v, count %d", err, got.Count)
	}
	rcfg, err := servers[1].EnsureRemoteUser(ctx, "c2")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := connect(t, rcfg).Etcd().Put(ctx, "cilium/state/c", "3"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("remote put: %v", err)
	}
}
