package remoteusers

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestExternal reconciles the users of a real etcd through its root client
// alone, as with an external etcd: with auth on the user is created and
// removed; with auth off the pass fails with ErrAuthDisabled, counted as
// an etcd error, and creates nothing.
func TestExternal(t *testing.T) {
	for _, tc := range []struct {
		name        string
		disableAuth bool
	}{
		{"auth on", false},
		{"auth off", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c1", DisableAuth: tc.disableAuth})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			admin, err := kvstore.New(ctx, srv.AdminConfig(), etcdserver.TestLogger())
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			ext := External{Client: admin.Etcd(), Cluster: "c1"}
			cm := newConfigMapDir(t, "clusters: [c2]\n")
			r, err := New(Config{Cluster: "c1", File: cm.file()}, ext, clock.RealClock{}, etcdserver.TestLogger(), nil)
			if err != nil {
				t.Fatal(err)
			}
			err = r.Reconcile(ctx)
			if tc.disableAuth {
				if !errors.Is(err, etcdserver.ErrAuthDisabled) || !errors.Is(r.LastError(), etcdserver.ErrAuthDisabled) {
					t.Fatalf("Reconcile with auth off: %v (last %v), want ErrAuthDisabled", err, r.LastError())
				}
				if got := value(t, r.errors.WithLabelValues("etcd")); got != 1 {
					t.Errorf("etcd errors metric %v, want 1", got)
				}
				if len(r.Current()) != 0 {
					t.Errorf("users with auth off: %v", r.Current())
				}
				return
			}
			if err != nil || !slices.Equal(r.Current(), []string{"c2"}) {
				t.Fatalf("Reconcile: %v, users %v", err, r.Current())
			}
			checkHeartbeatList(ctx, t, srv, etcdserver.RemoteUser("c2"))
			cm.write("clusters: [c2]\nlegacyClusters: [c3]\n")
			if err := r.Reconcile(ctx); err != nil {
				t.Fatalf("Reconcile with a legacy cluster: %v", err)
			}
			if has, err := ext.HasLegacyRemoteUser(ctx); err != nil || !has {
				t.Fatalf("legacy user in the external etcd: %v, %v", has, err)
			}
			checkHeartbeatList(ctx, t, srv, etcdserver.LegacyRemoteUser)
			cm.write("clusters: []\n")
			if err := r.Reconcile(ctx); err != nil || len(r.Current()) != 0 {
				t.Fatalf("Reconcile after emptying the file: %v, users %v", err, r.Current())
			}
			if has, err := ext.HasLegacyRemoteUser(ctx); err != nil || has {
				t.Fatalf("legacy user left in the external etcd: %v, %v", has, err)
			}
		})
	}
}

// checkHeartbeatList lists the heartbeat as a prefix, as Cilium's
// clustermesh client does to confirm a connection, with a certificate for
// user (issued by srv's CA, as `clustermesh connect` would).
func checkHeartbeatList(ctx context.Context, t *testing.T, srv *etcdserver.Server, user string) {
	t.Helper()
	rc, err := srv.ClientConfig(user)
	if err != nil {
		t.Fatal(err)
	}
	c, err := kvstore.New(ctx, rc, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Etcd().Get(ctx, "cilium/.heartbeat", clientv3.WithPrefix()); err != nil {
		t.Fatalf("%s lists the heartbeat as a prefix: %v", user, err)
	}
}
