package server

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestMainKVStoreMesh runs Main with --kvstoremesh-config: the remote in
// that directory is mirrored into the embedded etcd, the status report
// says so, and the agents' read-only local-reader user exists.
func TestMainKVStoreMesh(t *testing.T) {
	cp := controlPlane(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The remote cluster's etcd, as its apiserver fills it.
	remote := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "kvsm-c2"})
	radmin, err := kvstore.New(ctx, remote.AdminConfig(), etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer radmin.Close()
	node := must(wire.MarshalNode(wire.Node{Name: "n1", Cluster: "kvsm-c2", ClusterID: 12,
		IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr("192.168.12.1")}},
		IPv4AllocCIDR: wire.MustParseCIDR("10.12.1.0/24")}))
	puts := map[string]string{
		wire.ClusterConfigKey("kvsm-c2"): `{"id":12,"capabilities":{"syncedCanaries":true,"maxConnectedClusters":255}}`,
		wire.NodeKey("kvsm-c2", "n1"):    string(node),
	}
	for _, k := range wire.Kinds() {
		puts[wire.SyncedKey("kvsm-c2", k)] = string(wire.FormatTimestamp(time.Now()))
	}
	for k, v := range puts {
		if _, err := radmin.Etcd().Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	reader, err := remote.EnsureRemoteUser(ctx, "kvsm-c1")
	if err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = "kvsm-c1", 11
	cfg.Kubeconfig = cp.Kubeconfig()
	cfg.EtcdDataDir = filepath.Join(dir, "etcd")
	cfg.EtcdTLSDir = filepath.Join(dir, "tls")
	cfg.EtcdListenAddress = freeAddr(t)
	cfg.HealthAddress, cfg.MetricsAddress = freeAddr(t), ""
	cfg.StatusNamespace, cfg.StatusInterval = "kvsm-status", time.Second
	cfg.KVStoreMesh.Dir = filepath.Join(dir, "kvstoremesh")
	if err := os.MkdirAll(cfg.KVStoreMesh.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg.KVStoreMesh.Dir, "kvsm-c2"), must(json.Marshal(reader)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.EnsureNamespace(ctx, cp.Client, cfg.StatusNamespace); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- Main(ctx, cfg, etcdserver.TestLogger()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	}()

	waitFor(t, "the mirror of kvsm-c2 in the status report", func() bool {
		rs, err := meshstatus.List(ctx, cp.Client.CoreV1(), cfg.StatusNamespace)
		if err != nil || len(rs.APIServers) != 1 || len(rs.APIServers[0].KVStoreMesh) != 1 {
			return false
		}
		r := rs.APIServers[0].KVStoreMesh[0]
		return r.Name == "kvsm-c2" && r.ClusterID == 12 && r.Synced && r.Entries[meshstatus.KindNodes] == 1
	})
	local, err := kvstore.New(ctx, kvstore.Config{
		Endpoints:     []string{"https://" + cfg.EtcdListenAddress},
		TrustedCAFile: filepath.Join(cfg.EtcdTLSDir, "ca.crt"),
		CertFile:      filepath.Join(cfg.EtcdTLSDir, "root.crt"), KeyFile: filepath.Join(cfg.EtcdTLSDir, "root.key"),
	}, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	resp, err := local.Etcd().Get(ctx, wire.CachedNodeKey("kvsm-c2", "n1"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != string(node) {
		t.Fatalf("cached node: %v %v", resp, err)
	}
	canaries, err := local.Etcd().Get(ctx, wire.SyncedPrefix+"kvsm-c2/"+wire.CachePrefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil || canaries.Count != int64(len(wire.Kinds())) {
		t.Fatalf("cache canaries: %v %v", canaries, err)
	}
	if _, err := local.Etcd().UserGet(ctx, etcdserver.LocalReaderUser); err != nil {
		t.Fatalf("the agents' user: %v", err)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
