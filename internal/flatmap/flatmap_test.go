package flatmap

import (
	"hash/maphash"
	"maps"
	"math/rand/v2"
	"runtime"
	"testing"
)

// TestModel applies random sets, refs, deletes and reserves to a Map and to a Go
// map and compares them after every step, with hashes that spread well and
// with hashes that collide (long probe runs, runs that wrap around the end
// of the table: backward-shift deletion's hard cases).
func TestModel(t *testing.T) {
	seed := maphash.MakeSeed()
	cases := []struct {
		name string
		hash func(int) uint64
		keys int // keys drawn from [0, keys)
		ops  int
	}{
		{name: "spread", hash: func(k int) uint64 { return maphash.Comparable(seed, k) }, keys: 2000, ops: 50000},
		{name: "few hashes", hash: func(k int) uint64 { return maphash.Comparable(seed, k%7) }, keys: 300, ops: 20000},
		{name: "all at the end", hash: func(int) uint64 { return ^uint64(0) }, keys: 60, ops: 5000},
		{name: "two homes", hash: func(k int) uint64 { return uint64(k&1) << 63 }, keys: 100, ops: 10000},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, uint64(len(tc.name))))
			m := New[int, int](tc.hash)
			want := map[int]int{}
			for op := range tc.ops {
				k := rng.IntN(tc.keys)
				switch r := rng.IntN(100); {
				case r < 40:
					m.Set(k, op)
					want[k] = op
				case r < 55: // Ref: read the old value, write a new one
					p, added := m.Ref(k)
					wv, had := want[k]
					if added == had || *p != wv {
						t.Fatalf("op %d: Ref(%d) = %d, added %v; want %d, added %v", op, k, *p, added, wv, !had)
					}
					*p = op
					want[k] = op
				case r < 98:
					v, ok := m.Delete(k)
					wv, wok := want[k]
					if ok != wok || v != wv {
						t.Fatalf("op %d: Delete(%d) = %d, %v; want %d, %v", op, k, v, ok, wv, wok)
					}
					delete(want, k)
				default:
					m.Reserve(rng.IntN(2 * tc.keys))
				}
				if m.Len() != len(want) {
					t.Fatalf("op %d: Len %d, want %d", op, m.Len(), len(want))
				}
				if op%97 == 0 || tc.keys <= 100 {
					check(t, m, want, tc.keys)
				}
			}
			check(t, m, want, tc.keys)
		})
	}
}

func check(t *testing.T, m *Map[int, int], want map[int]int, keys int) {
	t.Helper()
	for k := range keys {
		v, ok := m.Get(k)
		wv, wok := want[k]
		if ok != wok || v != wv {
			t.Fatalf("Get(%d) = %d, %v; want %d, %v", k, v, ok, wv, wok)
		}
	}
	got := maps.Collect(m.All())
	if !maps.Equal(got, want) {
		t.Fatalf("All yields %d entries, want %d", len(got), len(want))
	}
	n := 0
	for range m.Keys() {
		n++
	}
	if n != len(want) {
		t.Fatalf("Keys yields %d, want %d", n, len(want))
	}
}

func TestReserveHoldsWithoutGrowth(t *testing.T) {
	m := New[int, int](func(k int) uint64 { return uint64(k) * 0x9E3779B97F4A7C15 })
	m.Reserve(1000)
	c := len(m.ctrl)
	for i := range 1000 {
		m.Set(i, i)
	}
	if len(m.ctrl) != c || cap(m.slots) != 1062 {
		t.Fatalf("grew from %d to %d buckets, %d slots, while filling a reserved count of 1000 (want 1062 slots)", c, len(m.ctrl), cap(m.slots))
	}
	for i := 1000; i < 1050; i++ { // the first changes after the count
		m.Set(i, i)
	}
	if len(m.ctrl) != c || cap(m.slots) != 1062 {
		t.Fatalf("grew to %d buckets, %d slots, within the reserve's headroom", len(m.ctrl), cap(m.slots))
	}
	if load := float64(m.Len()) / float64(c); load < 0.7 {
		t.Fatalf("index load %.2f after filling a reserved count, want ≈ 0.75", load)
	}
	m.Clear()
	if m.Len() != 0 || len(m.ctrl) != 0 {
		t.Fatalf("Clear left %d entries in %d slots", m.Len(), len(m.ctrl))
	}
	if _, ok := m.Get(1); ok {
		t.Fatal("Get after Clear found a key")
	}
	m.Set(1, 1)
	if v, ok := m.Get(1); !ok || v != 1 {
		t.Fatalf("Set after Clear: Get = %d, %v", v, ok)
	}
}

func TestShrinksWhenMostAreDeleted(t *testing.T) {
	m := New[int, int](func(k int) uint64 { return uint64(k) * 0x9E3779B97F4A7C15 })
	const n = 100000
	m.Reserve(n)
	for i := range n {
		m.Set(i, i)
	}
	for i := range n - 100 {
		m.Delete(i)
	}
	if cap(m.slots) > 4*shrinkMin || len(m.ctrl) > 4*shrinkMin {
		t.Fatalf("%d entries left in %d slots, %d buckets: not shrunk", m.Len(), cap(m.slots), len(m.ctrl))
	}
	for i := n - 100; i < n; i++ {
		if v, ok := m.Get(i); !ok || v != i {
			t.Fatalf("after shrinking: Get(%d) = %d, %v", i, v, ok)
		}
	}
}

type ipSlot struct { // the shape of the reconciler's ipcache claims
	a    [16]byte
	kind uint8
	bits uint8
}

// BenchmarkHeap250k reports the bytes per entry of a table of 250,000
// 48-byte slots against a Go map holding the same.
func BenchmarkHeap250k(b *testing.B) {
	const n = 250000
	type val struct{ w [7]uint32 } // 28 bytes: the slot is 48, as the claims'

	seed := maphash.MakeSeed()
	hash := func(k ipSlot) uint64 { return maphash.Comparable(seed, k) }
	key := func(i int) ipSlot {
		var k ipSlot
		k.a[0], k.a[1], k.a[2], k.a[3], k.kind, k.bits = 10, byte(i>>16), byte(i>>8), byte(i), 4, 32
		return k
	}
	for range b.N {
		h0 := heapInuse()
		m := New[ipSlot, val](hash)
		m.Reserve(n)
		for i := range n {
			m.Set(key(i), val{w: [7]uint32{uint32(i)}})
		}
		h1 := heapInuse()
		g := make(map[ipSlot]val, n)
		for i := range n {
			g[key(i)] = val{w: [7]uint32{uint32(i)}}
		}
		h2 := heapInuse()
		b.ReportMetric(float64(h1-h0)/n, "flat-B/entry")
		b.ReportMetric(float64(h2-h1)/n, "gomap-B/entry")
		runtime.KeepAlive(m)
		runtime.KeepAlive(g)
	}
}

func heapInuse() uint64 {
	runtime.GC()
	var s runtime.MemStats
	runtime.ReadMemStats(&s)
	return s.HeapInuse
}
