package identity

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// gatedKV holds every transaction committed while armed until the test
// opens the gate: an etcd that has become slow.
type gatedKV struct {
	KV
	armed   bool          // set before the allocator's goroutines start
	entered chan struct{} // a held commit has started
	gate    chan struct{} // closed to let held commits through
}

type gatedTxn struct {
	clientv3.Txn
	kv *gatedKV
}

func (g *gatedKV) Txn(ctx context.Context) clientv3.Txn {
	return gatedTxn{Txn: g.KV.Txn(ctx), kv: g}
}

func (t gatedTxn) If(cs ...clientv3.Cmp) clientv3.Txn { t.Txn = t.Txn.If(cs...); return t }
func (t gatedTxn) Then(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Then(ops...)
	return t
}
func (t gatedTxn) Else(ops ...clientv3.Op) clientv3.Txn {
	t.Txn = t.Txn.Else(ops...)
	return t
}

func (t gatedTxn) Commit() (*clientv3.TxnResponse, error) {
	if t.kv.armed {
		t.kv.entered <- struct{}{}
		<-t.kv.gate
	}
	return t.Txn.Commit()
}

// TestSlowEtcdDoesNotBlockCachedAcquire: while one etcd transaction of the
// allocator hangs (storing a new label set's id, or deleting an expired
// id), Acquire of a label set that already has an id returns at once.
func TestSlowEtcdDoesNotBlockCachedAcquire(t *testing.T) {
	for _, tc := range []struct {
		name string
		slow func(ctx context.Context, a *Allocator) error
	}{
		{"Acquire of a new label set", func(ctx context.Context, a *Allocator) error {
			_, err := a.Acquire(ctx, "k8s:app=new")
			return err
		}},
		{"GC of an expired id", func(ctx context.Context, a *Allocator) error { return a.GC(ctx) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startEtcd(t)
			clk := clocktesting.NewFakeClock(time.Unix(1000, 0))
			kv := &gatedKV{KV: c, entered: make(chan struct{}, 1), gate: make(chan struct{})}
			a, err := New(context.Background(), kv, Config{ClusterID: 3, MaxConnectedClusters: 255, GracePeriod: time.Minute},
				slog.New(slog.DiscardHandler), clk, nil)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			cached, err := a.Acquire(ctx, "k8s:app=cached")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := a.Acquire(ctx, "k8s:app=expired"); err != nil {
				t.Fatal(err)
			}
			if err := a.Release("k8s:app=expired"); err != nil {
				t.Fatal(err)
			}
			clk.Step(2 * time.Minute)

			kv.armed = true
			slow := make(chan error, 1)
			go func() { slow <- tc.slow(ctx, a) }()
			<-kv.entered // the slow transaction is in flight

			got := make(chan uint32, 1)
			go func() {
				id, err := a.Acquire(ctx, "k8s:app=cached")
				if err != nil {
					t.Error(err)
				}
				got <- id
			}()
			var id uint32
			select {
			case id = <-got:
			case <-time.After(30 * time.Second): // a deadlock detector, not a speed bound
				t.Error("cached Acquire waited for an unrelated etcd transaction")
				close(kv.gate)
				id = <-got
			}
			if id != cached {
				t.Errorf("cached Acquire: id %d, want %d", id, cached)
			}
			select {
			case <-kv.gate:
			default:
				close(kv.gate)
			}
			if err := <-slow; err != nil {
				t.Fatalf("slow call after the gate opened: %v", err)
			}
		})
	}
}

// TestConcurrentAcquire: many workers acquiring overlapping label sets at
// once get one id per label set, and etcd holds exactly those.
func TestConcurrentAcquire(t *testing.T) {
	c := startEtcd(t)
	a := newAllocator(t, c, clocktesting.NewFakeClock(time.Unix(1000, 0)), 255)
	ctx := context.Background()
	const workers, sets = 8, 20
	ids := make([][]uint32, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range sets {
				id, err := a.Acquire(ctx, fmt.Sprintf("k8s:app=a%d", (i+w)%sets))
				if err != nil {
					t.Error(err)
					return
				}
				ids[w] = append(ids[w], id)
			}
		})
	}
	wg.Wait()
	byLabels := map[string]uint32{}
	for w := range workers {
		for i, id := range ids[w] {
			l := fmt.Sprintf("k8s:app=a%d", (i+w)%sets)
			if prev, ok := byLabels[l]; ok && prev != id {
				t.Errorf("%s: ids %d and %d", l, prev, id)
			}
			byLabels[l] = id
		}
	}
	resp, err := c.Get(ctx, wire.IdentityIDPrefix, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != sets || a.Len() != sets {
		t.Errorf("etcd holds %d ids, allocator %d, want %d", len(resp.Kvs), a.Len(), sets)
	}
	for l := range byLabels {
		for range workers {
			if err := a.Release(l); err != nil {
				t.Fatalf("release %s: %v", l, err)
			}
		}
		if err := a.Release(l); err == nil {
			t.Errorf("%s: one more Release than Acquire succeeded", l)
		}
	}
}
