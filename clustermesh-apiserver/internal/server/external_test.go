package server

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// externalMain runs Main with --kvstore-config naming the root client
// config of srv (standing for an external etcd), --remote-users-file
// holding users and a status report in namespace ns, until the test ends.
// It returns the config and the root client of srv.
func externalMain(t *testing.T, srv *etcdserver.Server, cluster string, id uint32, ns, users string) (Config, *clientv3.Client) {
	t.Helper()
	cp := controlPlane(t)
	dir := t.TempDir()
	data, err := yaml.Marshal(srv.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = cluster, id
	cfg.Kubeconfig = cp.Kubeconfig()
	cfg.KVStoreConfig = filepath.Join(dir, "kvstore.yaml")
	if err := os.WriteFile(cfg.KVStoreConfig, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg.EtcdDataDir = ""
	cfg.RemoteUsersFile = filepath.Join(dir, "remote-users", "users.yaml")
	if err := os.MkdirAll(filepath.Dir(cfg.RemoteUsersFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.RemoteUsersFile, []byte(users), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RemoteConfigDir = filepath.Join(dir, "remotes")
	cfg.HealthAddress, cfg.MetricsAddress = freeAddr(t), freeAddr(t)
	cfg.StatusNamespace, cfg.StatusInterval = ns, time.Second
	if err := kubetest.EnsureNamespace(context.Background(), cp.Client, ns); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Main(ctx, cfg, etcdserver.TestLogger()) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	})
	admin, err := kvstore.New(context.Background(), srv.AdminConfig(), etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Close() })
	return cfg, admin.Etcd()
}

// statusReport returns the apiserver's published status report, if any.
func statusReport(ctx context.Context, t *testing.T, ns string) (meshstatus.APIServerReport, bool) {
	t.Helper()
	rs, err := meshstatus.List(ctx, controlPlane(t).Client.CoreV1(), ns)
	if err != nil || len(rs.APIServers) != 1 {
		return meshstatus.APIServerReport{}, false
	}
	return rs.APIServers[0], true
}

// TestMainExternalEtcdRemoteUsers runs Main against an external etcd
// (--kvstore-config with a root certificate): the users file's cluster
// gets the read-only user remote-<cluster> in that etcd, which a
// certificate of the etcd's CA for that user (what `clustermesh connect`
// issues) can read with and not write; emptying the file removes it. No
// client config is written into --remote-config-dir.
func TestMainExternalEtcdRemoteUsers(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "ext-c1"})
	cfg, admin := externalMain(t, srv, "ext-c1", 10, "ext-status", "clusters: [ext-c2]\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	waitFor(t, "the user remote-ext-c2 in the external etcd", func() bool {
		users, err := etcdserver.RemoteUsersOn(ctx, admin)
		return err == nil && slices.Equal(users, []string{"ext-c2"})
	})
	rc, err := srv.ClientConfig(etcdserver.RemoteUser("ext-c2"))
	if err != nil {
		t.Fatal(err)
	}
	remote, err := kvstore.New(ctx, rc, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	rctx, rcancel := context.WithTimeout(ctx, 2*time.Minute)
	defer rcancel()
	waitFor(t, "remote-ext-c2 reading the published cluster config", func() bool {
		resp, err := remote.Etcd().Get(rctx, "cilium/cluster-config/ext-c1")
		return err == nil && len(resp.Kvs) == 1
	})
	if _, err := remote.Etcd().Get(rctx, "cilium/state/", clientv3.WithPrefix(), clientv3.WithKeysOnly()); err != nil {
		t.Errorf("remote list of cilium/state/: %v", err)
	}
	for _, key := range []string{"cilium/state/nodes/v1/ext-c1/x", "cilium/cluster-config/ext-c1", "cilium/synced/ext-c1/x", "cilium/.heartbeat"} {
		if _, err := remote.Etcd().Put(rctx, key, "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("remote put %s: %v, want permission denied", key, err)
		}
	}
	if _, err := remote.Etcd().Get(rctx, "cilium/cluster-config/ext-c3"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("remote read of another cluster's config: %v, want permission denied", err)
	}
	waitFor(t, "a ready status report without error", func() bool {
		r, ok := statusReport(ctx, t, cfg.StatusNamespace)
		return ok && r.Ready && r.LastError == ""
	})
	if entries, err := os.ReadDir(cfg.RemoteConfigDir); err == nil && len(entries) > 0 {
		t.Errorf("client configs written into %s with an external etcd: %v", cfg.RemoteConfigDir, entries)
	}

	if err := os.WriteFile(cfg.RemoteUsersFile, []byte("clusters: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the user remote-ext-c2 removed", func() bool {
		users, err := etcdserver.RemoteUsersOn(ctx, admin)
		return err == nil && len(users) == 0
	})
	waitFor(t, "remote-ext-c2 denied", func() bool {
		_, err := remote.Etcd().Get(rctx, "cilium/cluster-config/ext-c1")
		return err != nil
	})
	if resp, err := admin.RoleList(ctx); err != nil || slices.Contains(resp.Roles, etcdserver.RemoteUser("ext-c2")) {
		t.Errorf("roles after removal: %v, %v", resp, err)
	}
}

// TestMainExternalEtcdAuthDisabled runs Main against an external etcd
// whose authentication is off: the remote user is refused, counted and
// reported in the status, and the apiserver keeps publishing.
func TestMainExternalEtcdAuthDisabled(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "ext-c4", DisableAuth: true})
	cfg, admin := externalMain(t, srv, "ext-c4", 11, "ext-noauth-status", "clusters: [ext-c2]\n")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	waitFor(t, "a ready status report naming the disabled auth", func() bool {
		r, ok := statusReport(ctx, t, cfg.StatusNamespace)
		return ok && r.Ready && strings.Contains(r.LastError, etcdserver.ErrAuthDisabled.Error())
	})
	resp, err := admin.Get(ctx, "cilium/cluster-config/ext-c4")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("cluster config published: %v, %v", resp, err)
	}
	if users, err := etcdserver.RemoteUsersOn(ctx, admin); err != nil || len(users) != 0 {
		t.Errorf("remote users with auth off: %v, %v; want none", users, err)
	}
	waitFor(t, "the error counted", func() bool {
		r, err := http.Get("http://" + cfg.MetricsAddress + "/metrics")
		if err != nil {
			return false
		}
		defer r.Body.Close()
		b, _ := io.ReadAll(r.Body)
		return strings.Contains(string(b), `clustermesh_apiserver_remote_users_errors_total{reason="etcd"}`)
	})
}
