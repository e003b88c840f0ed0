package kvstore_test

import (
	"context"
	"maps"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// fastConfig shortens the timeouts of cfg for tests.
func fastConfig(cfg kvstore.Config) kvstore.Config {
	if cfg.DialTimeout == 0 {
		cfg.DialTimeout = kvstore.Duration(2 * time.Second)
	}
	cfg.KeepaliveInterval = kvstore.Duration(200 * time.Millisecond)
	cfg.KeepaliveTimeout = kvstore.Duration(time.Second)
	return cfg
}

func connect(t *testing.T, cfg kvstore.Config) *kvstore.Client {
	t.Helper()
	c, err := kvstore.New(testCtx(t), fastConfig(cfg), etcdserver.TestLogger())
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// etcdContents returns the keys and values under prefix.
func etcdContents(t *testing.T, c *clientv3.Client, prefix string) map[string]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := c.Get(ctx, prefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatalf("get %s: %v", prefix, err)
	}
	m := map[string]string{}
	for _, kv := range resp.Kvs {
		m[string(kv.Key)] = string(kv.Value)
	}
	return m
}

// consumer runs ListWatch and mirrors the events into a map.
type consumer struct {
	mu       sync.Mutex
	state    map[string]string
	events   []kvstore.Event
	listDone int
	changed  chan struct{} // closed and replaced on every event
	done     chan error
	cancel   context.CancelFunc
}

func startConsumer(t *testing.T, c *kvstore.Client, prefix string, opts ...kvstore.ListWatchOption) *consumer {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cs := &consumer{state: map[string]string{}, changed: make(chan struct{}), done: make(chan error, 1), cancel: cancel}
	go func() { cs.done <- c.ListWatch(ctx, prefix, cs.handle, opts...) }()
	t.Cleanup(cs.stop)
	return cs
}

func (cs *consumer) stop() {
	if cs.cancel != nil {
		cs.cancel()
		<-cs.done
		cs.cancel = nil
	}
}

func (cs *consumer) handle(ev kvstore.Event) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.events = append(cs.events, ev)
	switch ev.Kind {
	case kvstore.EventUpsert:
		cs.state[ev.Key] = string(ev.Value)
	case kvstore.EventDelete:
		delete(cs.state, ev.Key)
	case kvstore.EventListDone:
		cs.listDone++
	}
	close(cs.changed)
	cs.changed = make(chan struct{})
}

// waitFor waits until cond holds on the consumer's state.
func (cs *consumer) waitFor(t *testing.T, what string, cond func(state map[string]string, listDone int) bool) {
	t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		cs.mu.Lock()
		ok := cond(cs.state, cs.listDone)
		ch := cs.changed
		st := maps.Clone(cs.state)
		cs.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("timed out waiting for %s; consumer state %v", what, st)
		}
	}
}

// waitEqual waits until the consumer holds exactly want.
func (cs *consumer) waitEqual(t *testing.T, want map[string]string) {
	t.Helper()
	cs.waitFor(t, "consumer to match etcd", func(s map[string]string, _ int) bool { return maps.Equal(s, want) })
}

// lists returns how many (re)lists the consumer has seen complete.
func (cs *consumer) lists() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return cs.listDone
}

func (cs *consumer) snapshotEvents() []kvstore.Event {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return append([]kvstore.Event(nil), cs.events...)
}
