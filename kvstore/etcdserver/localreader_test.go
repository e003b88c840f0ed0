package etcdserver_test

import (
	"context"
	"errors"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestLocalReaderUserPaths: the user the own agents read as may read the
// own cluster's ipcache entries and identities (their pods' identities),
// the kvstoremesh cache, every canary, cluster config and the heartbeat;
// nothing else of cilium/state/ and nothing writable. Made by the
// embedded Server's method and by the client function an external etcd
// is managed with.
func TestLocalReaderUserPaths(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ensure func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) (kvstore.Config, error)
	}{
		{"server method", func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client) (kvstore.Config, error) {
			return srv.EnsureLocalReaderUser(ctx)
		}},
		{"client function", func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) (kvstore.Config, error) {
			if err := etcdserver.EnsureLocalReaderUserOn(ctx, admin); err != nil {
				return kvstore.Config{}, err
			}
			return srv.ClientConfig(etcdserver.LocalReaderUser)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
			admin := connect(t, srv.AdminConfig()).Etcd()
			ipKey := wire.IPPrefix + "10.1.1.10"
			idKey := wire.IdentityKey(65800)
			for _, k := range []string{
				ipKey, idKey,
				"cilium/state/nodes/v1/c1/n1",
				"cilium/state/services/v1/c1/shop/web",
				"cilium/state/identities/v1/value/k8s:app=web;",
				wire.SyncedKey("c1", wire.KindIP),
				"cilium/cache/ip/v1/c2/10.2.1.10",
				"cilium/cluster-config/c2",
				"cilium/.heartbeat",
			} {
				if _, err := admin.Put(ctx, k, "v"); err != nil {
					t.Fatalf("admin put %s: %v", k, err)
				}
			}
			cfg, err := tc.ensure(ctx, srv, admin)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tc.ensure(ctx, srv, admin); err != nil {
				t.Fatalf("ensuring again: %v", err)
			}
			reader := connect(t, cfg).Etcd()
			get := func(key string, opts ...clientv3.OpOption) func() error {
				return func() error { _, err := reader.Get(ctx, key, opts...); return err }
			}
			for _, c := range []struct {
				name    string
				op      func() error
				allowed bool
			}{
				{"read own ipcache entry", get(ipKey), true},
				{"list own ipcache", get(wire.IPPrefix, clientv3.WithPrefix()), true},
				{"read own identity", get(idKey), true},
				{"list own identities", get(wire.IdentityIDPrefix, clientv3.WithPrefix()), true},
				{"read own ipcache canary", get(wire.SyncedKey("c1", wire.KindIP)), true},
				{"read kvstoremesh cache", get("cilium/cache/ip/v1/c2/10.2.1.10"), true},
				{"read a cluster config", get("cilium/cluster-config/c2"), true},
				{"read heartbeat", get("cilium/.heartbeat"), true},
				{"read own node", get("cilium/state/nodes/v1/c1/n1"), false},
				{"read own service", get("cilium/state/services/v1/c1/shop/web"), false},
				{"read identity by value", get("cilium/state/identities/v1/value/k8s:app=web;"), false},
				{"list state prefix", get("cilium/state/", clientv3.WithPrefix()), false},
				{"write own ipcache", func() error { _, err := reader.Put(ctx, ipKey, "x"); return err }, false},
				{"delete own identity", func() error { _, err := reader.Delete(ctx, idKey); return err }, false},
				{"add user", func() error { _, err := reader.UserAdd(ctx, "x", "y"); return err }, false},
			} {
				err := c.op()
				if c.allowed && err != nil {
					t.Errorf("%s: want allowed, got %v", c.name, err)
				}
				if !c.allowed && !errors.Is(err, rpctypes.ErrPermissionDenied) {
					t.Errorf("%s: want permission denied, got %v", c.name, err)
				}
			}
			wctx, cancel := context.WithCancel(ctx)
			defer cancel()
			wch := reader.Watch(wctx, wire.IPPrefix, clientv3.WithPrefix())
			if _, err := admin.Put(ctx, wire.IPPrefix+"10.1.1.11", "v"); err != nil {
				t.Fatal(err)
			}
			if wr := <-wch; wr.Err() != nil || len(wr.Events) != 1 {
				t.Errorf("watch of the own ipcache: %v, %d events", wr.Err(), len(wr.Events))
			}
		})
	}
}
