package server

import (
	"context"
	"crypto/tls"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/pki"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestMainGivenTLS runs Main with the chart's layout: etcd listens on all
// addresses, the cluster CA and the root certificate are given in
// --etcd-tls-dir, the served certificate in --etcd-server-tls-dir. A client
// certificate signed by the CA outside the apiserver (as `clustermesh
// connect` does) for a cluster of the users file reads through a name only
// the served certificate holds.
func TestMainGivenTLS(t *testing.T) {
	cp := controlPlane(t)
	dir := t.TempDir()
	tlsDir, serverDir := filepath.Join(dir, "tls"), filepath.Join(dir, "server-tls")
	ca, err := pki.NewCA("clustermesh-ca-tls-c1")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(kp pki.KeyPair, err error) pki.KeyPair {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return kp
	}
	caFile, _, err := ca.WriteCA(tlsDir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := issue(ca.IssueClient("root")).Write(tlsDir, "root"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := issue(ca.IssueServer("clustermesh-apiserver", "tls-c1.mesh.example")).Write(serverDir, "tls"); err != nil {
		t.Fatal(err)
	}
	remoteCert, remoteKey, err := issue(ca.IssueClient("remote-tls-c2")).Write(filepath.Join(dir, "remote"), "tls")
	if err != nil {
		t.Fatal(err)
	}

	cfg := DefaultConfig()
	cfg.ClusterName, cfg.ClusterID = "tls-c1", 11
	cfg.Kubeconfig = cp.Kubeconfig()
	cfg.EtcdDataDir = filepath.Join(dir, "etcd")
	_, port, _ := net.SplitHostPort(freeAddr(t))
	cfg.EtcdListenAddress = net.JoinHostPort("0.0.0.0", port)
	cfg.EtcdTLSDir, cfg.EtcdServerTLSDir = tlsDir, serverDir
	cfg.RemoteUsersFile = filepath.Join(dir, "users.yaml")
	cfg.RemoteConfigDir = filepath.Join(dir, "remotes")
	if err := os.WriteFile(cfg.RemoteUsersFile, []byte("clusters: [tls-c2]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.HealthAddress, cfg.MetricsAddress = freeAddr(t), ""

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Main(ctx, cfg, etcdserver.TestLogger()) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Main: %v", err)
		}
	}()
	waitFor(t, "readyz", func() bool {
		resp, err := http.Get("http://" + cfg.HealthAddress + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	// The served certificate is the given one.
	cert, err := tls.LoadX509KeyPair(remoteCert, remoteKey)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", port), &tls.Config{
		RootCAs: ca.Pool(), ServerName: "tls-c1.mesh.example", Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
	})
	if err != nil {
		t.Fatalf("handshake by the SAN of the given certificate: %v", err)
	}
	conn.Close()

	// The remote user exists and accepts the externally signed certificate.
	remote, err := kvstore.New(ctx, kvstore.Config{
		Endpoints: []string{"https://" + net.JoinHostPort("127.0.0.1", port)}, TrustedCAFile: caFile, CertFile: remoteCert, KeyFile: remoteKey,
	}, etcdserver.TestLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer remote.Close()
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	waitFor(t, "the remote user reads the cluster config", func() bool {
		resp, err := remote.Etcd().Get(rctx, "cilium/cluster-config/tls-c1")
		return err == nil && len(resp.Kvs) == 1
	})
}
