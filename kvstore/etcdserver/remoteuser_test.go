package etcdserver_test

import (
	"context"
	"errors"
	"slices"
	"testing"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// remoteUserCases are what a remote user of cluster c1's etcd may and may
// not do, on the keys putRemoteUserKeys writes.
func remoteUserCases(ctx context.Context, remote *clientv3.Client) []struct {
	name    string
	op      func() error
	allowed bool
} {
	get := func(key string, opts ...clientv3.OpOption) func() error {
		return func() error { _, err := remote.Get(ctx, key, opts...); return err }
	}
	put := func(key string) func() error {
		return func() error { _, err := remote.Put(ctx, key, "x"); return err }
	}
	return []struct {
		name    string
		op      func() error
		allowed bool
	}{
		{"read node", get("cilium/state/nodes/v1/c1/n1"), true},
		{"list state prefix", get("cilium/state/", clientv3.WithPrefix()), true},
		{"read own canary", get("cilium/synced/c1/cilium/state/nodes/v1"), true},
		{"list own canaries", get("cilium/synced/c1/", clientv3.WithPrefix()), true},
		{"read own cluster config", get("cilium/cluster-config/c1"), true},
		{"read heartbeat", get("cilium/.heartbeat"), true},
		{"list heartbeat as a prefix (Cilium's connection check)", get("cilium/.heartbeat", clientv3.WithPrefix()), true},
		{"read past the heartbeat range", get("cilium/.heartbeau"), false},
		{"read other cluster canary", get("cilium/synced/c3/cilium/cache/nodes/v1"), false},
		{"list all canaries", get("cilium/synced/", clientv3.WithPrefix()), false},
		{"read other cluster config", get("cilium/cluster-config/c3"), false},
		{"read cluster config by prefix", get("cilium/cluster-config/c1", clientv3.WithPrefix()), false},
		{"read kvstoremesh cache", get("cilium/cache/nodes/v1/c3/n1"), false},
		{"write state", put("cilium/state/nodes/v1/c1/n2"), false},
		{"delete state", func() error { _, err := remote.Delete(ctx, "cilium/state/nodes/v1/c1/n1"); return err }, false},
		{"write own canary", put("cilium/synced/c1/x"), false},
		{"write own cluster config", put("cilium/cluster-config/c1"), false},
		{"write heartbeat", put("cilium/.heartbeat"), false},
		{"grant lease", func() error { _, err := remote.Grant(ctx, 10); return err }, true},
		{"add user", func() error { _, err := remote.UserAdd(ctx, "x", "y"); return err }, false},
	}
}

// checkRemoteUserCases runs remoteUserCases as remote.
func checkRemoteUserCases(ctx context.Context, t *testing.T, remote *clientv3.Client) {
	t.Helper()
	for _, c := range remoteUserCases(ctx, remote) {
		err := c.op()
		if c.allowed && err != nil {
			t.Errorf("%s: want allowed, got %v", c.name, err)
		}
		if !c.allowed && !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("%s: want permission denied, got %v", c.name, err)
		}
	}
}

func putRemoteUserKeys(ctx context.Context, t *testing.T, admin *clientv3.Client) {
	t.Helper()
	for _, k := range []string{
		"cilium/state/nodes/v1/c1/n1",
		"cilium/synced/c1/cilium/state/nodes/v1",
		"cilium/synced/c3/cilium/cache/nodes/v1",
		"cilium/cluster-config/c1",
		"cilium/cluster-config/c3",
		"cilium/cluster-config/c10", // under the prefix cilium/cluster-config/c1
		"cilium/.heartbeat",
		"cilium/.heartbeau",
		"cilium/cache/nodes/v1/c3/n1",
	} {
		if _, err := admin.Put(ctx, k, "v"); err != nil {
			t.Fatalf("admin put %s: %v", k, err)
		}
	}
}

// TestRemoteUserPaths runs the same permission cases (and a watch of the
// state prefix) against a user made
// by the embedded Server's methods and one made by the client functions an
// external etcd is managed with (certificate issued separately, as
// `clustermesh connect` does), then removes each the matching way.
func TestRemoteUserPaths(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ensure func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client, cluster string) (kvstore.Config, error)
		remove func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client, cluster string) error
		list   func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) ([]string, error)
	}{
		{
			name: "server methods",
			ensure: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client, c string) (kvstore.Config, error) {
				return srv.EnsureRemoteUser(ctx, c)
			},
			remove: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client, c string) error {
				return srv.RemoveRemoteUser(ctx, c)
			},
			list: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client) ([]string, error) {
				return srv.RemoteUsers(ctx)
			},
		},
		{
			name: "client functions",
			ensure: func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client, c string) (kvstore.Config, error) {
				if err := etcdserver.EnsureRemoteUserOn(ctx, admin, "c1", c); err != nil {
					return kvstore.Config{}, err
				}
				return srv.ClientConfig(etcdserver.RemoteUser(c))
			},
			remove: func(ctx context.Context, _ *etcdserver.Server, admin *clientv3.Client, c string) error {
				return etcdserver.RemoveRemoteUserOn(ctx, admin, c)
			},
			list: func(ctx context.Context, _ *etcdserver.Server, admin *clientv3.Client) ([]string, error) {
				return etcdserver.RemoteUsersOn(ctx, admin)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
			admin := connect(t, srv.AdminConfig()).Etcd()
			putRemoteUserKeys(ctx, t, admin)
			rcfg, err := tc.ensure(ctx, srv, admin, "c2")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tc.ensure(ctx, srv, admin, "c2"); err != nil {
				t.Fatalf("ensuring again: %v", err)
			}
			remote := connect(t, rcfg).Etcd()
			checkRemoteUserCases(ctx, t, remote)
			wctx, cancel := context.WithCancel(ctx)
			wch := remote.Watch(wctx, "cilium/state/", clientv3.WithPrefix())
			if _, err := admin.Put(ctx, "cilium/state/nodes/v1/c1/n3", "v"); err != nil {
				t.Fatal(err)
			}
			if wr := <-wch; wr.Err() != nil || len(wr.Events) != 1 {
				t.Errorf("watch of the state prefix: %v, %d events", wr.Err(), len(wr.Events))
			}
			cancel()
			users, err := tc.list(ctx, srv, admin)
			if err != nil || !slices.Equal(users, []string{"c2"}) {
				t.Fatalf("remote users = %v, %v; want [c2]", users, err)
			}
			if err := tc.remove(ctx, srv, admin, "c2"); err != nil {
				t.Fatal(err)
			}
			if _, err := remote.Get(ctx, "cilium/state/nodes/v1/c1/n1"); err == nil {
				t.Fatal("the removed user can still read")
			}
			if err := tc.remove(ctx, srv, admin, "c2"); err != nil {
				t.Fatalf("removing a missing user: %v", err)
			}
			if users, err := tc.list(ctx, srv, admin); err != nil || len(users) != 0 {
				t.Fatalf("remote users after removal = %v, %v", users, err)
			}
			if _, err := tc.ensure(ctx, srv, admin, "../evil"); !errors.Is(err, etcdserver.ErrClusterName) {
				t.Fatalf("bad cluster name: %v", err)
			}
		})
	}
}

// TestRemoteUsersListsDanglingRole: a role remote-<cluster> left without
// its user (a removal cut short between the two deletes) is listed, so the
// reconciler removes it, and removing it leaves neither.
func TestRemoteUsersListsDanglingRole(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
	admin := connect(t, srv.AdminConfig()).Etcd()
	if err := etcdserver.EnsureRemoteUserOn(ctx, admin, "c1", "c2"); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RoleAdd(ctx, etcdserver.RemoteUser("c3")); err != nil {
		t.Fatal(err)
	}
	if users, err := etcdserver.RemoteUsersOn(ctx, admin); err != nil || !slices.Equal(users, []string{"c2", "c3"}) {
		t.Fatalf("remote users = %v, %v; want [c2 c3]", users, err)
	}
	if err := etcdserver.RemoveRemoteUserOn(ctx, admin, "c3"); err != nil {
		t.Fatal(err)
	}
	if users, err := etcdserver.RemoteUsersOn(ctx, admin); err != nil || !slices.Equal(users, []string{"c2"}) {
		t.Fatalf("remote users after removing c3 = %v, %v; want [c2]", users, err)
	}
	roles, err := admin.RoleList(ctx)
	if err != nil || slices.Contains(roles.Roles, etcdserver.RemoteUser("c3")) {
		t.Fatalf("roles after removal: %v, %v", roles, err)
	}
}

// TestEnsureRemoteUserOnAuthDisabled refuses to create a user that would
// restrict nothing, and creates none.
func TestEnsureRemoteUserOnAuthDisabled(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1", DisableAuth: true})
	admin := connect(t, srv.AdminConfig()).Etcd()
	if err := etcdserver.EnsureRemoteUserOn(ctx, admin, "c1", "c2"); !errors.Is(err, etcdserver.ErrAuthDisabled) {
		t.Fatalf("EnsureRemoteUserOn with auth off: %v, want ErrAuthDisabled", err)
	}
	if users, err := etcdserver.RemoteUsersOn(ctx, admin); err != nil || len(users) != 0 {
		t.Fatalf("remote users = %v, %v; want none", users, err)
	}
}

// TestLegacyRemoteUser runs the permission cases against the shared user
// "remote" of Cilium's legacy auth mode, made by the Server's methods and
// by the client functions: same reads as a per-cluster user, not listed as
// a cluster's user, removed as a whole.
func TestLegacyRemoteUser(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ensure func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) (kvstore.Config, error)
		remove func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) error
		has    func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) (bool, error)
	}{
		{
			name: "server methods",
			ensure: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client) (kvstore.Config, error) {
				return srv.EnsureLegacyRemoteUser(ctx)
			},
			remove: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client) error {
				return srv.RemoveLegacyRemoteUser(ctx)
			},
			has: func(ctx context.Context, srv *etcdserver.Server, _ *clientv3.Client) (bool, error) {
				return srv.HasLegacyRemoteUser(ctx)
			},
		},
		{
			name: "client functions",
			ensure: func(ctx context.Context, srv *etcdserver.Server, admin *clientv3.Client) (kvstore.Config, error) {
				if err := etcdserver.EnsureLegacyRemoteUserOn(ctx, admin, "c1"); err != nil {
					return kvstore.Config{}, err
				}
				return srv.ClientConfig(etcdserver.LegacyRemoteUser)
			},
			remove: func(ctx context.Context, _ *etcdserver.Server, admin *clientv3.Client) error {
				return etcdserver.RemoveLegacyRemoteUserOn(ctx, admin)
			},
			has: func(ctx context.Context, _ *etcdserver.Server, admin *clientv3.Client) (bool, error) {
				return etcdserver.HasLegacyRemoteUserOn(ctx, admin)
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1"})
			admin := connect(t, srv.AdminConfig()).Etcd()
			putRemoteUserKeys(ctx, t, admin)
			rcfg, err := tc.ensure(ctx, srv, admin)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tc.ensure(ctx, srv, admin); err != nil {
				t.Fatalf("ensuring again: %v", err)
			}
			remote := connect(t, rcfg).Etcd()
			checkRemoteUserCases(ctx, t, remote)
			if has, err := tc.has(ctx, srv, admin); err != nil || !has {
				t.Fatalf("has legacy user = %v, %v", has, err)
			}
			if users, err := etcdserver.RemoteUsersOn(ctx, admin); err != nil || len(users) != 0 {
				t.Fatalf("the legacy user is listed as a cluster's: %v, %v", users, err)
			}
			if err := tc.remove(ctx, srv, admin); err != nil {
				t.Fatal(err)
			}
			if _, err := remote.Get(ctx, "cilium/state/nodes/v1/c1/n1"); err == nil {
				t.Fatal("the removed legacy user can still read")
			}
			if has, err := tc.has(ctx, srv, admin); err != nil || has {
				t.Fatalf("has legacy user after removal = %v, %v", has, err)
			}
			if err := tc.remove(ctx, srv, admin); err != nil {
				t.Fatalf("removing a missing legacy user: %v", err)
			}
		})
	}
}
