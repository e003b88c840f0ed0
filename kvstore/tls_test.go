package kvstore_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/pki"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func TestNewTLSErrors(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	good := srv.AdminConfig()
	dir := t.TempDir()

	other, err := pki.NewCA("other")
	if err != nil {
		t.Fatal(err)
	}
	otherCA, _, err := other.WriteCA(dir, "other-ca")
	if err != nil {
		t.Fatal(err)
	}
	otherPair, err := other.IssueClient("root")
	if err != nil {
		t.Fatal(err)
	}
	otherCert, otherKey, err := otherPair.Write(dir, "other-root")
	if err != nil {
		t.Fatal(err)
	}
	garbage := filepath.Join(dir, "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := etcdserver.FreePort("")
	if err != nil {
		t.Fatal(err)
	}

	sentinels := []error{kvstore.ErrConfig, kvstore.ErrCAFile, kvstore.ErrClientCert, kvstore.ErrServerCertUntrusted,
		kvstore.ErrClientCertRejected, kvstore.ErrTLSHandshake, kvstore.ErrUnreachable}
	tests := []struct {
		name    string
		mod     func(c *kvstore.Config)
		want    error
		mention string // the error names the culprit
	}{
		{name: "valid", mod: func(*kvstore.Config) {}},
		{name: "no endpoints", mod: func(c *kvstore.Config) { c.Endpoints = nil }, want: kvstore.ErrConfig},
		{name: "unreadable ca file", mod: func(c *kvstore.Config) { c.TrustedCAFile = filepath.Join(dir, "nope.crt") }, want: kvstore.ErrCAFile, mention: "nope.crt"},
		{name: "ca file not pem", mod: func(c *kvstore.Config) { c.TrustedCAFile = garbage }, want: kvstore.ErrCAFile, mention: "garbage.crt"},
		{name: "wrong ca", mod: func(c *kvstore.Config) { c.TrustedCAFile = otherCA }, want: kvstore.ErrServerCertUntrusted},
		{name: "cert without key", mod: func(c *kvstore.Config) { c.KeyFile = "" }, want: kvstore.ErrClientCert, mention: "key-file"},
		{name: "key without cert", mod: func(c *kvstore.Config) { c.CertFile = "" }, want: kvstore.ErrClientCert, mention: "cert-file"},
		{name: "missing cert file", mod: func(c *kvstore.Config) { c.CertFile = filepath.Join(dir, "gone.crt") }, want: kvstore.ErrClientCert, mention: "gone.crt"},
		{name: "cert and key mismatch", mod: func(c *kvstore.Config) { c.KeyFile = otherKey }, want: kvstore.ErrClientCert},
		{name: "no client certificate", mod: func(c *kvstore.Config) { c.CertFile, c.KeyFile = "", "" }, want: kvstore.ErrClientCertRejected, mention: "no cert-file"},
		{name: "client certificate from another ca", mod: func(c *kvstore.Config) { c.CertFile, c.KeyFile = otherCert, otherKey }, want: kvstore.ErrClientCertRejected},
		{name: "unreachable", mod: func(c *kvstore.Config) { c.Endpoints = []string{fmt.Sprintf("https://127.0.0.1:%d", port)} }, want: kvstore.ErrUnreachable},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := good
			tc.mod(&cfg)
			cfg.DialTimeout = kvstore.Duration(2 * time.Second)
			c, err := kvstore.New(context.Background(), cfg, etcdserver.TestLogger())
			if tc.want == nil {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				defer c.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				if _, err := c.Etcd().Get(ctx, "cilium/.heartbeat"); err != nil {
					t.Fatalf("get: %v", err)
				}
				return
			}
			if err == nil {
				c.Close()
				t.Fatalf("New succeeded, want %v", tc.want)
			}
			for _, s := range sentinels {
				if errors.Is(err, s) != (s == tc.want) {
					t.Fatalf("err = %v: errors.Is(%v) = %v", err, s, errors.Is(err, s))
				}
			}
			if tc.mention != "" && !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.mention)
			}
		})
	}
}
