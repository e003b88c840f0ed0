package remotecluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// stallProxy forwards the first pass connections to target and accepts
// the later ones without forwarding anything: an etcd behind a path that
// went silent after the agent's first connection.
type stallProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	pass   int
	conns  []net.Conn
	wg     sync.WaitGroup
}

func startStallProxy(t *testing.T, target string, pass int) *stallProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln, target: target, pass: pass}
	p.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			p.conns = append(p.conns, c)
			forward := p.pass > 0
			p.pass--
			p.mu.Unlock()
			if !forward {
				continue // held open, silent
			}
			p.wg.Go(func() {
				u, err := net.Dial("tcp", p.target)
				if err != nil {
					return
				}
				p.mu.Lock()
				p.conns = append(p.conns, u)
				p.mu.Unlock()
				splice(c, u)
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// writeConfigTo writes the config file of remote r for the own cluster,
// with endpoints eps.
func (r *remoteEtcd) writeConfigTo(dir string, eps ...string) {
	r.t.Helper()
	cfg, err := r.srv.EnsureRemoteUser(context.Background(), ownName)
	if err != nil {
		r.t.Fatal(err)
	}
	cfg.Endpoints = eps
	cfg.DialTimeout = kvstore.Duration(time.Second)
	writeFile(r.t, filepath.Join(dir, r.name), must(json.Marshal(cfg)))
}

// closedPort returns an endpoint on which nothing listens.
func closedPort(t *testing.T) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return "https://" + addr
}

// TestStatusTellsTheTruth checks, on real etcds, that the status and the
// readiness of a remote say what happens to it.
func TestStatusTellsTheTruth(t *testing.T) {
	for _, tc := range []struct {
		name string
		run  func(t *testing.T, dir string, c2 *remoteEtcd, a *agent)
	}{
		{"timeout reading the cluster config is no refusal", func(t *testing.T, dir string, c2 *remoteEtcd, a *agent) {
			// The agent's first connection (its TLS check) gets through;
			// etcd's client connection then hears nothing.
			p := startStallProxy(t, strings.TrimPrefix(c2.srv.Endpoints()[0], "https://"), 1)
			c2.writeConfigTo(dir, "https://"+p.ln.Addr().String())
			testwait.Until(t, 30*time.Second, "a failed attempt", func() (bool, string) {
				s := a.status("c2")
				return s.Failures > 0, fmt.Sprintf("%+v", s)
			})
			s := a.status("c2")
			if s.RefusedReason != "" || s.Settled() {
				t.Errorf("a remote never reached counts as settled: refused %q, settled %v", s.RefusedReason, s.Settled())
			}
			t.Logf("last error: %s", s.LastError)
			if s.LastError == "" || s.LastError == "read cluster config: context deadline exceeded" {
				t.Errorf("last error %q does not say what failed", s.LastError)
			}
		}},
		{"the cause is named: connection refused", func(t *testing.T, dir string, c2 *remoteEtcd, a *agent) {
			c2.writeConfigTo(dir, closedPort(t))
			testwait.Until(t, 30*time.Second, "connection refused reported", func() (bool, string) {
				s := a.status("c2")
				return strings.Contains(s.LastError, "connection refused"), fmt.Sprintf("%+v", s)
			})
			if s := a.status("c2"); s.Settled() {
				t.Errorf("unreachable remote settled: %+v", s)
			}
		}},
		{"the cause is named: untrusted server certificate", func(t *testing.T, dir string, c2 *remoteEtcd, a *agent) {
			other := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c9"})
			cfg, err := c2.srv.EnsureRemoteUser(context.Background(), ownName)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Endpoints, cfg.TrustedCAFile = []string{c2.proxy.endpoint()}, other.CAFile()
			writeFile(t, filepath.Join(dir, "c2"), must(json.Marshal(cfg)))
			testwait.Until(t, 30*time.Second, "untrusted certificate reported", func() (bool, string) {
				s := a.status("c2")
				return strings.Contains(s.LastError, kvstore.ErrServerCertUntrusted.Error()), fmt.Sprintf("%+v", s)
			})
			if s := a.status("c2"); s.Settled() || s.RefusedReason != "" {
				t.Errorf("a TLS failure settles the remote: %+v", s)
			}
		}},
		{"a refusal is cleared when its cause goes", func(t *testing.T, dir string, c2 *remoteEtcd, a *agent) {
			// Half written: the endpoints are not there yet.
			writeFile(t, filepath.Join(dir, "c2"), []byte(`{"trusted-ca-file": "/nonexistent"}`))
			testwait.Until(t, 30*time.Second, "refused for the config file", func() (bool, string) {
				s := a.status("c2")
				return s.RefusedReason != "", fmt.Sprintf("%+v", s)
			})
			// Complete, but the remote is down: a failure, not a refusal.
			c2.writeConfigTo(dir, closedPort(t))
			testwait.Until(t, 30*time.Second, "refusal cleared, failure named", func() (bool, string) {
				s := a.status("c2")
				return s.RefusedReason == "" && strings.Contains(s.LastError, "connection refused"), fmt.Sprintf("%+v", s)
			})
			// Reachable: connected and synced.
			c2.writeConfig(dir)
			testwait.Until(t, 30*time.Second, "ready", func() (bool, string) {
				s := a.status("c2")
				return s.Ready && s.RefusedReason == "" && s.Settled(), fmt.Sprintf("%+v", s)
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c2 := startRemote(t, "c2", 2)
			c2.canaries()
			a := startAgent(t, testConfig(dir, t.TempDir()), memory.New(), nil)
			tc.run(t, dir, c2, a)
		})
	}
}
