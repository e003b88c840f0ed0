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

func TestRemoteUserPermissions(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	admin := connect(t, srv.AdminConfig()).Etcd()
	for _, k := range []string{
		"cilium/state/nodes/v1/c1/n1",
		"cilium/synced/c1/cilium/state/nodes/v1",
		"cilium/synced/c3/cilium/cache/nodes/v1",
		"cilium/cluster-config/c1",
		"cilium/cluster-config/c3",
		"cilium/cluster-config/c10",
		"cilium/.heartbeat",
		"cilium/cache/nodes/v1/c3/n1",
	} {
		if _, err := admin.Put(ctx, k, "v"); err != nil {
			t.Fatalf("admin put %s: %v", k, err)
		}
	}
	rcfg, err := srv.EnsureRemoteUser(ctx, "c2")
	if err != nil {
		t.Fatal(err)
	}
	// Idempotent.
	if _, err := srv.EnsureRemoteUser(ctx, "c2"); err != nil {
		t.Fatalf("second EnsureRemoteUser: %v", err)
	}
	remote := connect(t, rcfg).Etcd()

	tests := []struct {
		name    string
		op      func() error
		allowed bool
	}{
		{"read node", func() error { _, err := remote.Get(ctx, "cilium/state/nodes/v1/c1/n1"); return err }, true},
		{"list state prefix", func() error {
			_, err := remote.Get(ctx, "cilium/state/nodes/v1/c1/", clientv3.WithPrefix())
			return err
		}, true},
		{"read own canary", func() error { _, err := remote.Get(ctx, "cilium/synced/c1/cilium/state/nodes/v1"); return err }, true},
		{"list own canaries", func() error { _, err := remote.Get(ctx, "cilium/synced/c1/", clientv3.WithPrefix()); return err }, true},
		{"read own cluster config", func() error { _, err := remote.Get(ctx, "cilium/cluster-config/c1"); return err }, true},
		{"read heartbeat", func() error { _, err := remote.Get(ctx, "cilium/.heartbeat"); return err }, true},
		{"read other cluster canary", func() error { _, err := remote.Get(ctx, "cilium/synced/c3/cilium/cache/nodes/v1"); return err }, false},
		{"list all canaries", func() error { _, err := remote.Get(ctx, "cilium/synced/", clientv3.WithPrefix()); return err }, false},
		{"read other cluster config", func() error { _, err := remote.Get(ctx, "cilium/cluster-config/c3"); return err }, false},
		{"read cluster config by prefix", func() error {
			_, err := remote.Get(ctx, "cilium/cluster-config/c1", clientv3.WithPrefix())
			return err
		}, false},
		{"read kvstoremesh cache", func() error { _, err := remote.Get(ctx, "cilium/cache/nodes/v1/c3/n1"); return err }, false},
		{"write state", func() error { _, err := remote.Put(ctx, "cilium/state/nodes/v1/c1/n2", "x"); return err }, false},
		{"delete state", func() error { _, err := remote.Delete(ctx, "cilium/state/nodes/v1/c1/n1"); return err }, false},
		{"write own canary", func() error { _, err := remote.Put(ctx, "cilium/synced/c1/x", "x"); return err }, false},
		{"write heartbeat", func() error { _, err := remote.Put(ctx, "cilium/.heartbeat", "x"); return err }, false},
		{"grant lease", func() error { _, err := remote.Grant(ctx, 10); return err }, true},
		{"add user", func() error { _, err := remote.UserAdd(ctx, "x", "y"); return err }, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.op()
			if tc.allowed && err != nil {
				t.Fatalf("want allowed, got %v", err)
			}
			if !tc.allowed && !errors.Is(err, rpctypes.ErrPermissionDenied) {
				t.Fatalf("want permission denied, got %v", err)
			}
		})
	}

	t.Run("watch state prefix", func(t *testing.T) {
		wctx, cancel := context.WithCancel(ctx)
		defer cancel()
		wch := remote.Watch(wctx, "cilium/state/", clientv3.WithPrefix())
		if _, err := admin.Put(ctx, "cilium/state/nodes/v1/c1/n3", "v"); err != nil {
			t.Fatal(err)
		}
		wr := <-wch
		if err := wr.Err(); err != nil || len(wr.Events) != 1 {
			t.Fatalf("watch: %v, %d events", err, len(wr.Events))
		}
	})

	users, err := srv.RemoteUsers(ctx)
	if err != nil || len(users) != 1 || users[0] != "c2" {
		t.Fatalf("RemoteUsers = %v, %v", users, err)
	}
	if err := srv.RemoveRemoteUser(ctx, "c2"); err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Get(ctx, "cilium/state/nodes/v1/c1/n1"); err == nil {
		t.Fatal("removed remote user can still read")
	}
	if err := srv.RemoveRemoteUser(ctx, "c2"); err != nil {
		t.Fatalf("removing a missing user: %v", err)
	}
	if _, err := srv.EnsureRemoteUser(ctx, "../evil"); !errors.Is(err, etcdserver.ErrClusterName) {
		t.Fatalf("bad cluster name: %v", err)
	}
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
