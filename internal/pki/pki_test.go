package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"path/filepath"
	"testing"
)

func TestIssueAndVerify(t *testing.T) {
	ca, err := NewCA("test-ca")
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other-ca")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.IssueServer("etcd", "10.0.0.7", "etcd.example")
	if err != nil {
		t.Fatal(err)
	}
	client, err := ca.IssueClient("remote-c2")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		pair    KeyPair
		pool    *x509.CertPool
		host    string
		usage   x509.ExtKeyUsage
		wantErr bool
		wantCN  string
	}{
		{name: "server for 127.0.0.1", pair: server, pool: ca.Pool(), host: "127.0.0.1", usage: x509.ExtKeyUsageServerAuth, wantCN: "etcd"},
		{name: "server for localhost", pair: server, pool: ca.Pool(), host: "localhost", usage: x509.ExtKeyUsageServerAuth, wantCN: "etcd"},
		{name: "server for extra ip", pair: server, pool: ca.Pool(), host: "10.0.0.7", usage: x509.ExtKeyUsageServerAuth, wantCN: "etcd"},
		{name: "server for extra name", pair: server, pool: ca.Pool(), host: "etcd.example", usage: x509.ExtKeyUsageServerAuth, wantCN: "etcd"},
		{name: "server for unknown name", pair: server, pool: ca.Pool(), host: "evil.example", usage: x509.ExtKeyUsageServerAuth, wantErr: true},
		{name: "client cn is the user", pair: client, pool: ca.Pool(), usage: x509.ExtKeyUsageClientAuth, wantCN: "remote-c2"},
		{name: "client not valid as server", pair: client, pool: ca.Pool(), usage: x509.ExtKeyUsageServerAuth, wantErr: true},
		{name: "other ca rejects", pair: client, pool: other.Pool(), usage: x509.ExtKeyUsageClientAuth, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pair, err := tls.X509KeyPair(tc.pair.CertPEM, tc.pair.KeyPEM)
			if err != nil {
				t.Fatal(err)
			}
			cert, err := x509.ParseCertificate(pair.Certificate[0])
			if err != nil {
				t.Fatal(err)
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: tc.pool, DNSName: tc.host, KeyUsages: []x509.ExtKeyUsage{tc.usage}})
			if (err != nil) != tc.wantErr {
				t.Fatalf("verify: err = %v, want error %v", err, tc.wantErr)
			}
			if !tc.wantErr && cert.Subject.CommonName != tc.wantCN {
				t.Fatalf("CN = %q, want %q", cert.Subject.CommonName, tc.wantCN)
			}
		})
	}
}

func TestWriteAndLoadCA(t *testing.T) {
	dir := t.TempDir()
	ca, err := NewCA("ca")
	if err != nil {
		t.Fatal(err)
	}
	certFile, keyFile, err := ca.WriteCA(filepath.Join(dir, "pki"), "ca")
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := LoadCA(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Fatal("loaded CA differs from written CA")
	}
	leaf, err := ca.IssueClient("root")
	if err != nil {
		t.Fatal(err)
	}
	leafCert, leafKey, err := leaf.Write(dir, "root")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := LoadCA(leafCert, leafKey); !errors.Is(err, ErrInvalidPEM) {
		t.Fatalf("LoadCA(leaf) = %v, want ErrInvalidPEM", err)
	}
}
