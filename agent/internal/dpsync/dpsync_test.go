package dpsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var discard = slog.New(slog.NewTextHandler(io.Discard, nil))

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }

func ipc(p string, id, cluster uint32) datapath.IPCacheEntry {
	return datapath.IPCacheEntry{Prefix: pfx(p), Identity: id, TunnelEndpoint: netip.MustParseAddr("192.168.0.1"), ClusterID: cluster}
}

func TestClaims(t *testing.T) {
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	ctx := context.Background()
	p := "10.2.0.5/32"
	steps := []struct {
		name string
		do   func()
		want uint32 // cluster of the programmed entry, 0: absent
	}{
		{"remote 2 claims", func() { r.UpsertIPCache(ipc(p, 100, 2)) }, 2},
		{"remote 3 claims too: conflict, both withdrawn", func() { r.UpsertIPCache(ipc(p, 200, 3)) }, 0},
		{"own cluster claims: own wins", func() { r.UpsertIPCache(ipc(p, 300, 1)) }, 1},
		{"own withdraws: the remotes conflict again", func() { r.DeleteIPCache(pfx(p), 1) }, 0},
		{"2 withdraws: 3", func() { r.DeleteIPCache(pfx(p), 2) }, 3},
		{"withdraw of a non-claimant is a no-op", func() { r.DeleteIPCache(pfx(p), 7) }, 3},
		{"3 withdraws: gone", func() { r.DeleteIPCache(pfx(p), 3) }, 0},
	}
	for _, st := range steps {
		st.do()
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		e, ok := dp.IPCache(pfx(p))
		if got := map[bool]uint32{true: e.ClusterID}[ok]; got != st.want {
			t.Fatalf("%s: programmed cluster %d, want %d", st.name, got, st.want)
		}
	}
}

// flaky fails the first n Apply calls.
type flaky struct {
	*memory.Datapath
	mu sync.Mutex
	n  int
}

func (f *flaky) Apply(ctx context.Context, b datapath.Batch) error {
	f.mu.Lock()
	fail := f.n > 0
	f.n--
	f.mu.Unlock()
	if fail {
		return errors.New("map full")
	}
	return f.Datapath.Apply(ctx, b)
}

func TestRunCoalescesAndRetries(t *testing.T) {
	dp := &flaky{Datapath: memory.New(), n: 3}
	r := New(Config{ClusterID: 1, RetryMin: time.Millisecond, RetryMax: 4 * time.Millisecond}, dp, discard, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	for i := range 1000 {
		r.UpsertTunnel(datapath.TunnelEntry{CIDR: pfx(fmt.Sprintf("10.%d.%d.0/24", 2+i/256, i%256)), NodeIP: netip.MustParseAddr("192.168.1.1"), ClusterID: 2})
	}
	for {
		ch := dp.Changed()
		st, _ := dp.Dump()
		if len(st.Tunnels) == 1000 {
			break
		}
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d tunnels programmed", len(st.Tunnels))
		}
	}
	s := r.Stats()
	if s.Failures != 3 || s.Batches > 50 {
		t.Fatalf("stats %+v: want 3 failures and coalesced batches", s)
	}
}

func TestRestore(t *testing.T) {
	ctx := context.Background()
	dp := memory.New()
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	b := func(ip string, c uint32) datapath.Backend {
		return datapath.Backend{Addr: netip.MustParseAddrPort(ip + ":8080"), ClusterID: c, Weight: 1}
	}
	gone := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.11:80"), Proto: ipproto.TCP}
	// What a previous agent programmed: own cluster 1, remotes 2 and 3.
	err := dp.Apply(ctx, datapath.Batch{
		UpsertIPCache: []datapath.IPCacheEntry{ipc("10.1.0.1/32", 5, 1), ipc("10.2.0.1/32", 6, 2), ipc("10.2.0.2/32", 7, 2), ipc("10.3.0.1/32", 8, 3)},
		UpsertServices: []datapath.Service{
			{Frontend: fe, Backends: []datapath.Backend{b("10.1.0.1", 1), b("10.2.0.1", 2), b("10.3.0.1", 3)}},
			{Frontend: gone, Backends: []datapath.Backend{b("10.1.0.9", 1)}},
		},
		UpsertEndpoints: []datapath.Endpoint{{IP: netip.MustParseAddr("10.1.0.1"), IfIndex: 4}, {IP: netip.MustParseAddr("10.1.0.2"), IfIndex: 5}},
	})
	if err != nil {
		t.Fatal(err)
	}
	counting := &countingWriter{Datapath: dp}
	r := New(Config{ClusterID: 1}, counting, discard, clock.RealClock{})
	if _, err := r.Restore(); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(r.Holding()); got != "[1 2 3]" {
		t.Fatalf("holding %s", got)
	}
	// Own cluster comes back with the same ipcache entry and endpoint, one
	// endpoint fewer, and the service with its local backend only.
	r.UpsertIPCache(ipc("10.1.0.1/32", 5, 1))
	r.UpsertEndpoint(datapath.Endpoint{IP: netip.MustParseAddr("10.1.0.1"), IfIndex: 4})
	r.UpsertService(datapath.Service{Frontend: fe, Backends: []datapath.Backend{b("10.1.0.1", 1)}})
	// Remote 2 comes back with one of its two entries, changed.
	r.UpsertIPCache(ipc("10.2.0.1/32", 66, 2))
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if counting.ipcache != 1 || counting.endpoints != 0 {
		t.Fatalf("re-applied unchanged restored entries: %+v", counting)
	}
	st, _ := dp.Dump()
	if len(st.IPCache) != 4 || len(st.Services[fe].Backends) != 3 || len(st.Endpoints) != 2 || len(st.Services) != 2 {
		t.Fatalf("restored entries dropped before release: %+v", st)
	}
	r.Release(1)
	r.Release(2)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ = dp.Dump()
	if _, ok := st.IPCache[pfx("10.2.0.2/32")]; ok || len(st.IPCache) != 3 {
		t.Fatalf("cluster 2's unclaimed entry not deleted after release: %v", st.IPCache)
	}
	if len(st.Endpoints) != 1 || len(st.Services) != 1 {
		t.Fatalf("own stale endpoint or frontend not deleted: %+v", st)
	}
	if got := st.Services[fe].Backends; len(got) != 2 || got[1].ClusterID != 3 {
		t.Fatalf("service backends after releasing 1 and 2: %v", got)
	}
	r.Release(3)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ = dp.Dump()
	if len(st.IPCache) != 2 || len(st.Services[fe].Backends) != 1 {
		t.Fatalf("after releasing 3: %+v", st)
	}
	if len(r.Holding()) != 0 {
		t.Fatal("still holding")
	}
}

type countingWriter struct {
	*memory.Datapath
	ipcache, endpoints int
}

func (c *countingWriter) Apply(ctx context.Context, b datapath.Batch) error {
	c.ipcache += len(b.UpsertIPCache)
	c.endpoints += len(b.UpsertEndpoints)
	return c.Datapath.Apply(ctx, b)
}

// TestTrimAfterSync checks that a Release (a source delivered its initial
// state) returns freed memory once, after the flush that follows it, and
// that later flushes do not.
func TestTrimAfterSync(t *testing.T) {
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	trims := func(want uint64) func() (bool, string) {
		return func() (bool, string) {
			s := r.Stats()
			return s.Trims == want, fmt.Sprintf("%+v", s)
		}
	}
	steps := []struct {
		name    string
		do      func()
		batches uint64 // wait for at least this many batches
		trims   uint64
	}{
		{"a source synced", func() {
			r.UpsertIPCache(ipc("10.2.0.1/32", 100, 2))
			r.Release(2)
		}, 1, 1},
		{"steady-state changes do not trim", func() {
			for i := range 10 {
				r.UpsertIPCache(ipc(fmt.Sprintf("10.2.1.%d/32", i), 100, 2))
			}
		}, 2, 1},
		{"another source synced", func() {
			r.UpsertIPCache(ipc("10.3.0.1/32", 100, 3))
			r.Release(3)
		}, 3, 2},
	}
	for _, st := range steps {
		st.do()
		testwait.Until(t, 10*time.Second, st.name+": batches", func() (bool, string) {
			s := r.Stats()
			return s.Batches >= st.batches, fmt.Sprintf("%+v", s)
		})
		testwait.Until(t, 10*time.Second, st.name+": trims", trims(st.trims))
	}
	// Nothing is pending: no further trim comes.
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.Trims != 2 {
		t.Fatalf("stats %+v: want 2 trims", s)
	}
}
