package etcdserver_test

import (
	"crypto/tls"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/clustermesh/clustermesh/internal/pki"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestServedCertificateFromFiles starts etcd with a given CA, admin
// certificate and served certificate: clients that trust the CA reach it by
// a name only the given certificate holds, the admin certificate is used as
// is, and replacing the files changes the certificate of new handshakes.
func TestServedCertificateFromFiles(t *testing.T) {
	dir := t.TempDir()
	certDir, serverDir := filepath.Join(dir, "tls"), filepath.Join(dir, "server-tls")
	ca, err := pki.NewCA("given-ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.WriteCA(certDir, "ca"); err != nil {
		t.Fatal(err)
	}
	root, err := ca.IssueClient(etcdserver.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	rootCert, _, err := root.Write(certDir, etcdserver.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	writeServer := func(host string) {
		kp, err := ca.IssueServer("clustermesh-apiserver", host)
		if err != nil {
			t.Fatal(err)
		}
		if _, _, err := kp.Write(serverDir, "tls"); err != nil {
			t.Fatal(err)
		}
	}
	writeServer("first.mesh.example")
	srv := etcdserver.StartTest(t, etcdserver.Config{
		ClientURL:      "https://0.0.0.0:0", // as in the chart: the admin dials loopback
		CertDir:        certDir,
		ServerCertFile: filepath.Join(serverDir, "tls.crt"),
		ServerKeyFile:  filepath.Join(serverDir, "tls.key"),
	})
	if srv.CAFile() != filepath.Join(certDir, "ca.crt") || !srv.CA().Cert.Equal(ca.Cert) {
		t.Fatalf("etcd uses CA %s, not the given one", srv.CAFile())
	}
	if got := srv.AdminConfig().CertFile; got != rootCert {
		t.Fatalf("admin certificate %s, want the given %s", got, rootCert)
	}
	before, err := os.ReadFile(rootCert)
	if err != nil {
		t.Fatal(err)
	}
	// The admin client works through the given certificate (127.0.0.1).
	ctx := testCtx(t)
	if _, err := connect(t, srv.AdminConfig()).Etcd().Put(ctx, "cilium/state/x", "1"); err != nil {
		t.Fatalf("admin put: %v", err)
	}
	if after, _ := os.ReadFile(rootCert); string(after) != string(before) {
		t.Fatal("the given admin certificate was replaced")
	}

	u, err := url.Parse(srv.Endpoints()[0])
	if err != nil {
		t.Fatal(err)
	}
	handshake := func(serverName string) error {
		cert, err := tls.LoadX509KeyPair(srv.AdminConfig().CertFile, srv.AdminConfig().KeyFile)
		if err != nil {
			t.Fatal(err)
		}
		c, err := tls.Dial("tcp", net.JoinHostPort("127.0.0.1", u.Port()), &tls.Config{
			RootCAs: ca.Pool(), ServerName: serverName, Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"},
		})
		if err != nil {
			return err
		}
		return c.Close()
	}
	if err := handshake("first.mesh.example"); err != nil {
		t.Fatalf("dial by the SAN of the given certificate: %v", err)
	}
	if err := handshake("second.mesh.example"); err == nil {
		t.Fatal("handshake for a name the certificate lacks succeeded")
	}
	writeServer("second.mesh.example") // rotation: the files are replaced
	if err := handshake("second.mesh.example"); err != nil {
		t.Fatalf("dial by the SAN of the rotated certificate: %v", err)
	}
	if err := handshake("first.mesh.example"); err == nil {
		t.Fatal("the old certificate is still served after rotation")
	}
}

func TestServedCertificateMustLoad(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := ca.WriteCA(filepath.Join(dir, "tls"), "ca"); err != nil {
		t.Fatal(err)
	}
	other, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	kp, err := other.IssueServer("etcd")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, err := kp.Write(filepath.Join(dir, "other"), "tls")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, cert, key string }{
		{"missing", filepath.Join(dir, "missing.crt"), filepath.Join(dir, "missing.key")},
		{"other CA", otherCert, otherKey},
		{"no key", otherCert, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := etcdserver.Start(testCtx(t), etcdserver.Config{
				ClusterName: "c1", DataDir: filepath.Join(t.TempDir(), "etcd"), CertDir: filepath.Join(dir, "tls"),
				ServerCertFile: tc.cert, ServerKeyFile: tc.key,
			}, etcdserver.TestLogger())
			if !errors.Is(err, etcdserver.ErrConfig) {
				t.Fatalf("start: %v, want ErrConfig", err)
			}
		})
	}
}
