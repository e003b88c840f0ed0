package etcdserver

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestLogger returns a logger for tests: silent unless CLUSTERMESH_TEST_LOG
// is set (then debug output on stderr). Background goroutines of etcd may
// log after a test ended, so it never writes to testing.T.
func TestLogger() *slog.Logger {
	if os.Getenv("CLUSTERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

// StartTest starts a single-member etcd for a test, in tb.TempDir() on free
// ports, with fsync off, and stops it when the test ends. Unset fields of
// cfg take test defaults (cluster name "c1").
func StartTest(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	if cfg.ClusterName == "" {
		cfg.ClusterName = "c1"
	}
	if cfg.DataDir == "" {
		cfg.DataDir = filepath.Join(tb.TempDir(), "etcd")
	}
	cfg.UnsafeNoFsync = true
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Start(ctx, cfg, TestLogger())
	if err != nil {
		tb.Fatalf("start etcd: %v", err)
	}
	tb.Cleanup(s.Stop)
	return s
}

// Proxy is a TCP proxy in front of an etcd endpoint whose path can be cut,
// so that a test can partition a client from etcd while etcd keeps
// running (and keeps changing).
type Proxy struct {
	ln     net.Listener
	target string

	mu       sync.Mutex
	blocked  bool
	conns    map[net.Conn]struct{}
	accepted int            // guarded by mu: client connections accepted so far
	wg       sync.WaitGroup // accept loop and connection copiers
}

// Accepted returns how many client connections the proxy has accepted.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// NewProxy proxies to the host:port of endpoint (a URL or host:port) and
// closes when the test ends.
func NewProxy(tb testing.TB, endpoint string) *Proxy {
	tb.Helper()
	target := endpoint
	if _, h, ok := strings.Cut(endpoint, "://"); ok {
		target = h
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	tb.Cleanup(p.Close)
	return p
}

// Endpoint returns the proxy's address as an https URL.
func (p *Proxy) Endpoint() string { return "https://" + p.ln.Addr().String() }

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.accepted++
		p.mu.Unlock()
		p.wg.Go(func() { p.serve(c) })
	}
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.blocked {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) serve(c net.Conn) {
	defer p.forget(c)
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	if !p.track(up) {
		up.Close()
		return
	}
	defer p.forget(up)
	var wg sync.WaitGroup
	wg.Go(func() { _, _ = io.Copy(up, c); up.Close(); c.Close() })
	_, _ = io.Copy(c, up)
	c.Close()
	up.Close()
	wg.Wait()
}

func (p *Proxy) forget(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

// Block cuts every connection and refuses new ones.
func (p *Proxy) Block() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.blocked = true
	for c := range p.conns {
		c.Close()
	}
}

// Unblock lets connections through again.
func (p *Proxy) Unblock() {
	p.mu.Lock()
	p.blocked = false
	p.mu.Unlock()
}

// Close stops the proxy and waits for its goroutines.
func (p *Proxy) Close() {
	p.ln.Close()
	p.Block()
	p.wg.Wait()
}
