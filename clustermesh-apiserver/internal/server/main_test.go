package server

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	p, err := etcdserver.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(p))
}

// TestMainEmbeddedEtcd runs the binary's Main against the shared control
// plane with the embedded etcd: it becomes ready, serves metrics, and the
// read-only user it creates for a remote cluster can read but not write.
func TestMainEmbeddedEtcd(t *testing.T) {
	cp := controlPlane(t)
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = "main-c1", 9
	cfg.Kubeconfig = cp.Kubeconfig()
	cfg.EtcdDataDir = filepath.Join(dir, "etcd")
	cfg.EtcdListenAddress = freeAddr(t)
	cfg.RemoteClusters = []string{"main-c2"}
	cfg.RemoteUsersFile = filepath.Join(dir, "remote-users", "users.yaml")
	if err := os.MkdirAll(filepath.Dir(cfg.RemoteUsersFile), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg.RemoteUsersFile, []byte("clusters: [main-c3]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.RemoteConfigDir = filepath.Join(dir, "remotes")
	cfg.HealthAddress, cfg.MetricsAddress = freeAddr(t), freeAddr(t)
	cfg.StatusNamespace = "main-status"
	if err := kubetest.EnsureNamespace(context.Background(), cp.Client, cfg.StatusNamespace); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Main(ctx, cfg, etcdserver.TestLogger()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	}()

	get := func(url string) (int, string) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitFor(t, "readyz", func() bool {
		code, _ := get("http://" + cfg.HealthAddress + "/readyz")
		return code == http.StatusOK
	})
	waitFor(t, "a ready status report", func() bool {
		rs, err := meshstatus.List(ctx, cp.Client.CoreV1(), cfg.StatusNamespace)
		return err == nil && len(rs.APIServers) == 1 && rs.APIServers[0].Ready && rs.APIServers[0].Cluster == "main-c1"
	})
	if code, body := get("http://" + cfg.HealthAddress + "/healthz"); code != http.StatusOK {
		t.Errorf("healthz: %d %s", code, body)
	}
	_, metrics := get("http://" + cfg.MetricsAddress + "/metrics")
	for _, m := range []string{
		`clustermesh_apiserver_entries{kind="nodes"}`, `clustermesh_apiserver_queue_depth{kind="pods"}`,
		"clustermesh_apiserver_identities ", "clustermesh_kvstore_sync_write_duration_seconds",
	} {
		if !strings.Contains(metrics, m) {
			t.Errorf("metrics lack %s", m)
		}
	}

	// The remote user's config file is named after this cluster.
	rc, err := kvstore.LoadConfig(filepath.Join(cfg.RemoteConfigDir, "main-c2", "main-c1"))
	if err != nil {
		t.Fatal(err)
	}
	remote, err := kvstore.New(ctx, rc, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	resp, err := remote.Etcd().Get(rctx, "cilium/cluster-config/main-c1")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("remote read of the cluster config: %v, %v", resp, err)
	}
	for _, key := range []string{"cilium/state/nodes/v1/main-c1/x", "cilium/cluster-config/main-c1", "cilium/synced/main-c1/x"} {
		if _, err := remote.Etcd().Put(rctx, key, "{}"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
			t.Errorf("remote put %s: %v, want permission denied", key, err)
		}
	}
	if _, err := remote.Etcd().Delete(rctx, "cilium/cluster-config/main-c1"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("remote delete: %v, want permission denied", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RemoteConfigDir, "main-c2", "main-c1.etcd-client.key")); err != nil {
		t.Error(err)
	}

	// The user the own agents read their pods' identities as exists
	// without kvstoremesh, and reads the own ipcache but not the nodes.
	pki := filepath.Clean(cfg.EtcdDataDir) + "-pki"
	local, err := kvstore.New(ctx, kvstore.Config{
		Endpoints: []string{"https://" + cfg.EtcdListenAddress}, TrustedCAFile: filepath.Join(pki, "ca.crt"),
		CertFile: filepath.Join(pki, etcdserver.LocalReaderUser+".crt"), KeyFile: filepath.Join(pki, etcdserver.LocalReaderUser+".key"),
	}, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	if _, err := local.Etcd().Get(rctx, wire.IPPrefix, clientv3.WithPrefix()); err != nil {
		t.Errorf("the agents' user lists the own ipcache: %v", err)
	}
	if _, err := local.Etcd().Get(rctx, "cilium/state/nodes/v1/", clientv3.WithPrefix()); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Errorf("the agents' user lists the own nodes: %v, want permission denied", err)
	}

	// The user of the file's cluster exists until the file drops it; the
	// user of --remote-clusters stays.
	rc3, err := kvstore.LoadConfig(filepath.Join(cfg.RemoteConfigDir, "main-c3", "main-c1"))
	if err != nil {
		t.Fatal(err)
	}
	remote3, err := kvstore.New(ctx, rc3, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer remote3.Close()
	if _, err := remote3.Etcd().Get(rctx, "cilium/cluster-config/main-c1"); err != nil {
		t.Fatalf("read as the file's user: %v", err)
	}
	if err := os.WriteFile(cfg.RemoteUsersFile, []byte("clusters: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the file's user removed", func() bool {
		_, err := remote3.Etcd().Get(rctx, "cilium/cluster-config/main-c1")
		return err != nil
	})
	if _, err := remote.Etcd().Get(rctx, "cilium/cluster-config/main-c1"); err != nil {
		t.Errorf("the --remote-clusters user lost access: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	testwait.Until(t, 60*time.Second, what, func() (bool, string) { return cond(), "" })
}
