package kvstore_test

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestStatusDeadFirstEndpoint: a member that is gone (a listener that
// accepts and never answers, like a forwarder or load balancer in front
// of a stopped member) must not use up the time of the endpoints after it:
// the agents probe with a deadline equal to the dial timeout.
func TestStatusDeadFirstEndpoint(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // holds every connection open without a word
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	cfg := srv.AdminConfig()
	cfg.Endpoints = append([]string{"https://" + ln.Addr().String()}, cfg.Endpoints...)
	cfg.DialTimeout = kvstore.Duration(time.Second)
	c := connect(t, cfg)
	pctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	start := time.Now()
	st := c.Status(pctx)
	if !st.Healthy() || st.Endpoints[0].Reachable || !st.Endpoints[1].Reachable {
		t.Fatalf("status after %v: %+v, want the second endpoint reachable", time.Since(start), st.Endpoints)
	}
}

// TestStatusReusesConnection: with one endpoint, probes go through the
// client's own connection; a probe that dialled would cost the etcd a TLS
// handshake per remote and agent every probe interval. A client that was
// cut off still finds the endpoint down, and up again once it is back.
func TestStatusReusesConnection(t *testing.T) {
	ctx := testCtx(t)
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	proxy := etcdserver.NewProxy(t, srv.AdminConfig().Endpoints[0])
	cfg := srv.AdminConfig()
	cfg.Endpoints = []string{proxy.Endpoint()}
	cfg.DialTimeout = kvstore.Duration(time.Second)
	c := connect(t, cfg)
	if _, err := c.Etcd().Get(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	before := proxy.Accepted()
	for i := range 5 {
		if st := c.Status(ctx); !st.Healthy() {
			t.Fatalf("probe %d: %+v", i, st.Endpoints)
		}
	}
	if got := proxy.Accepted(); got != before {
		t.Fatalf("5 probes opened %d connections, want none", got-before)
	}
	proxy.Block()
	if st := c.Status(ctx); st.Healthy() {
		t.Fatalf("probe while cut off: %+v", st.Endpoints)
	}
	proxy.Unblock()
	testwait.Until(t, 30*time.Second, "probe healthy after the cut", func() (bool, string) {
		st := c.Status(ctx)
		return st.Healthy(), fmt.Sprint(st.Endpoints)
	})
}
