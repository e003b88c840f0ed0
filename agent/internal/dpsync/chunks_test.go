package dpsync

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/testwait"
)

// A flush builds its batch in chunks, the lock released between them:
// what is handed in meanwhile is in this batch or the next, and an
// AfterFlush made meanwhile waits for the next one.
func TestFlushInChunks(t *testing.T) {
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	r.chunk = 2
	ctx := context.Background()
	keys := make([]string, 7)
	for i := range keys {
		keys[i] = fmt.Sprintf("10.2.0.%d/32", i)
		r.UpsertIPCache(ipc(keys[i], 100, 2))
	}
	var before, during []time.Time
	r.AfterFlush(func(at time.Time) { before = append(before, at) })
	pauses := 0
	r.pause = func() {
		pauses++
		if pauses > 1 {
			return
		}
		// Between the first and second chunk: change every key (some
		// are taken already, some not), add one, withdraw one.
		for _, k := range keys[:6] {
			r.UpsertIPCache(ipc(k, 200, 2))
		}
		r.UpsertIPCache(ipc("10.2.1.1/32", 200, 2))
		r.DeleteIPCache(pfx(keys[6]), 2)
		r.AfterFlush(func(at time.Time) { during = append(during, at) })
	}

	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if pauses != 3 { // 7 keys in chunks of 2
		t.Fatalf("%d pauses between chunks, want 3", pauses)
	}
	if len(before) != 1 || len(during) != 0 {
		t.Fatalf("after the first flush: %d calls of the AfterFlush before it, %d of the one during it; want 1, 0", len(before), len(during))
	}
	for _, k := range keys[:6] {
		// Taken before the change: the old identity, else the new one.
		if e, ok := dp.IPCache(pfx(k)); !ok || (e.Identity != 100 && e.Identity != 200) {
			t.Fatalf("after the first flush %s: %+v, %v", k, e, ok)
		}
	}

	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(before) != 1 || len(during) != 1 {
		t.Fatalf("after the second flush: %d, %d calls; want 1, 1", len(before), len(during))
	}
	for _, k := range append(keys[:6:6], "10.2.1.1/32") {
		if e, ok := dp.IPCache(pfx(k)); !ok || e.Identity != 200 {
			t.Errorf("after the second flush %s: %+v, %v; want identity 200", k, e, ok)
		}
	}
	if e, ok := dp.IPCache(pfx(keys[6])); ok {
		t.Errorf("withdrawn %s still programmed: %+v", keys[6], e)
	}
}

// Sources claiming and withdrawing concurrently with Run's chunked
// flushes: once they stop, the datapath holds exactly the desired state.
func TestChunkedFlushConverges(t *testing.T) {
	dp := memory.New()
	r := New(Config{ClusterID: 1}, dp, discard, clock.RealClock{})
	r.chunk = 3
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- r.Run(ctx) }()
	defer func() { cancel(); <-done }()

	var wg sync.WaitGroup
	for src := range 3 {
		cluster := uint32(2 + src%2) // two sources share cluster 2's claims; cluster 3 conflicts
		wg.Go(func() {
			rnd := rand.New(rand.NewPCG(uint64(src), 1))
			for range 5000 {
				p := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 2, byte(rnd.IntN(4)), byte(rnd.IntN(64))}), 32)
				if rnd.IntN(3) == 0 {
					r.DeleteIPCache(p, cluster)
					continue
				}
				r.UpsertIPCache(datapath.IPCacheEntry{Prefix: p, Identity: uint32(100 + rnd.IntN(5)), ClusterID: cluster})
			}
		})
	}
	wg.Wait()
	flushed := make(chan struct{})
	r.AfterFlush(func(time.Time) { close(flushed) })
	testwait.Until(t, 10*time.Second, "the last flush", func() (bool, string) {
		select {
		case <-flushed:
			return true, ""
		default:
			return false, fmt.Sprintf("%+v", r.Stats())
		}
	})
	want := map[netip.Prefix]datapath.IPCacheEntry{}
	for _, e := range r.IPCache() {
		want[e.Prefix] = e
	}
	st, err := dp.Dump()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.Equal(st.IPCache, want) {
		t.Fatalf("programmed %d entries, desired %d; differ", len(st.IPCache), len(want))
	}
	if len(want) == 0 {
		t.Fatal("nothing desired: the test claims nothing")
	}
}
