package kvstore_test

import (
	"context"
	"errors"
	"net"
	"net/url"
	"sync/atomic"
	"testing"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestConfigDial shows that Config.Dial carries every connection of a
// client (the TLS probe of New, the etcd client's gRPC connections and
// Diagnose) while TLS verifies the certificate for the endpoint's host:
// the endpoint names a host no resolver knows (.invalid), the etcd
// certificate names that host, and Dial sends it to the loopback address
// the etcd listens on.
func TestConfigDial(t *testing.T) {
	const name = "etcd.dial.invalid"
	srv := etcdserver.StartTest(t, etcdserver.Config{Hosts: []string{name}})
	base := srv.AdminConfig()
	u, err := url.Parse(base.Endpoints[0])
	if err != nil {
		t.Fatal(err)
	}
	named := base
	named.Endpoints = []string{"https://" + net.JoinHostPort(name, u.Port())}
	var dials atomic.Int64
	toServer := func(ctx context.Context, addr string) (net.Conn, error) {
		if addr != net.JoinHostPort(name, u.Port()) {
			return nil, errors.New("unexpected address " + addr)
		}
		dials.Add(1)
		return kvstore.DialTCP(ctx, u.Host)
	}

	t.Run("named endpoint through Dial", func(t *testing.T) {
		cfg := named
		cfg.Dial = toServer
		c := connect(t, cfg)
		ctx := testCtx(t)
		if _, err := c.Etcd().Put(ctx, "dial/k", "v"); err != nil {
			t.Fatalf("put: %v", err)
		}
		if err := c.Diagnose(ctx); err != nil {
			t.Fatalf("Diagnose: %v", err)
		}
		// The probe of New, at least one gRPC connection, Diagnose's probe.
		if n := dials.Load(); n < 3 {
			t.Fatalf("Dial called %d times, want at least 3", n)
		}
	})
	t.Run("named endpoint without Dial", func(t *testing.T) {
		_, err := kvstore.New(testCtx(t), fastConfig(named), etcdserver.TestLogger())
		if !errors.Is(err, kvstore.ErrUnreachable) {
			t.Fatalf("New: %v, want %v", err, kvstore.ErrUnreachable)
		}
	})
	t.Run("certificate checked for the endpoint host, not the dialled address", func(t *testing.T) {
		cfg := base
		cfg.Endpoints = []string{"https://" + net.JoinHostPort("other.dial.invalid", u.Port())}
		cfg.Dial = func(ctx context.Context, _ string) (net.Conn, error) { return kvstore.DialTCP(ctx, u.Host) }
		_, err := kvstore.New(testCtx(t), fastConfig(cfg), etcdserver.TestLogger())
		if !errors.Is(err, kvstore.ErrServerCertUntrusted) {
			t.Fatalf("New: %v, want %v", err, kvstore.ErrServerCertUntrusted)
		}
	})
}
