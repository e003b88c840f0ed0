package dpsync

import (
	"context"
	"net/netip"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// AfterFlush reports the flush that holds what was handed in before it:
// not a failed one, not one built before it, and once only.
func TestAfterFlush(t *testing.T) {
	now := time.Date(2026, 12, 6, 10, 0, 0, 0, time.UTC)
	clk := clocktesting.NewFakeClock(now)
	dp := &flaky{Datapath: memory.New(), n: 1}
	r := New(Config{ClusterID: 1}, dp, discard, clk)
	var calls []time.Time
	record := func(at time.Time) { calls = append(calls, at) }
	ctx := context.Background()
	e := datapath.IPCacheEntry{Prefix: netip.MustParsePrefix("10.2.0.5/32"), Identity: 2<<16 | 256, ClusterID: 2}

	r.UpsertIPCache(e)
	r.AfterFlush(record)
	if err := r.Flush(ctx); err == nil {
		t.Fatal("the flaky writer's first flush succeeded")
	}
	if len(calls) != 0 {
		t.Fatalf("called after a failed flush: %v", calls)
	}
	clk.Step(time.Second)
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := dp.IPCache(e.Prefix); !ok || len(calls) != 1 || !calls[0].Equal(now.Add(time.Second)) {
		t.Fatalf("after the retry: programmed %v, calls %v; want one call at %v", ok, calls, now.Add(time.Second))
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 {
		t.Fatalf("called again by a later flush: %v", calls)
	}
	// Nothing dirty: the next flush, empty, completes it, and AfterFlush
	// kicks Run so there is one.
	r.AfterFlush(record)
	select {
	case <-r.kick:
	default:
		t.Fatal("AfterFlush did not kick the worker")
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 2 {
		t.Fatalf("an empty flush did not complete the second AfterFlush: %v", calls)
	}
}
