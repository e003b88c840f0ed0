package kvstore_test

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// countingConn counts the writes on a connection.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// TestWatchEventsCostNoClientWrites checks that a watched change costs the
// client nothing to send: with gRPC's dynamic flow-control windows the
// client answers nearly every data frame it receives with a ping (its
// bandwidth-delay estimate) and a window update, one write per event and
// one acknowledgement for etcd to send back, while a watch of small events
// never grows the windows to where the estimate stops.
func TestWatchEventsCostNoClientWrites(t *testing.T) {
	srv := etcdserver.StartTest(t, etcdserver.Config{})
	admin := connect(t, srv.AdminConfig()).Etcd()
	var writes atomic.Int64
	cfg := srv.AdminConfig() // default keepalive: nothing else is sent meanwhile
	cfg.Dial = func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := kvstore.DialTCP(ctx, addr)
		if err != nil {
			return nil, err
		}
		return countingConn{Conn: conn, writes: &writes}, nil
	}
	c, err := kvstore.New(testCtx(t), cfg, etcdserver.TestLogger())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	cs := startConsumer(t, c, prefix)
	cs.waitFor(t, "first list", func(_ map[string]string, n int) bool { return n == 1 })

	const events = 50
	before := writes.Load()
	for i := range events {
		key := fmt.Sprintf("%s10.1.0.%d", prefix, i)
		if _, err := admin.Put(testCtx(t), key, "v"); err != nil {
			t.Fatal(err)
		}
		// One event at a time, as in steady state: each arrives alone.
		cs.waitFor(t, key, func(s map[string]string, _ int) bool { _, ok := s[key]; return ok })
	}
	if n := writes.Load() - before; n > events/10 {
		t.Errorf("the client wrote %d times to etcd while it received %d watch events, want at most %d", n, events, events/10)
	}
}
