package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestBatchUnsupported(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"no batch API", fmt.Errorf("batch update: %w", ebpf.ErrNotSupported), true},
		{"ENOTSUPP", syscall.Errno(524), true},
		{"EOPNOTSUPP", fmt.Errorf("x: %w", unix.EOPNOTSUPP), true},
		{"EINVAL is about this call", fmt.Errorf("x: %w", unix.EINVAL), false},
		{"E2BIG", unix.E2BIG, false},
		{"key absent", ebpf.ErrKeyNotExist, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := batchUnsupported(tc.err); got != tc.want {
				t.Errorf("batchUnsupported(%v) = %v, want %v", tc.err, got, tc.want)
			}
		})
	}
}

// TestBatchAfterEINVAL: a batch the kernel refuses with EINVAL (a prefix
// length beyond 32 in an LPM trie) fails alone; the next batch of the map is
// still written with one batch syscall. The batches are larger than
// singleMax (smaller ones are written entry by entry).
func TestBatchAfterEINVAL(t *testing.T) {
	dp, w := openTest(t)
	m := dp.objs.CmTunnel
	v := cmTunnelValue{NodeIp: be32(netip.MustParseAddr("172.30.0.2")), ClusterId: 2}
	keys := func(third byte) []cmLpm4Key {
		out := make([]cmLpm4Key, singleMax+1)
		for i := range out {
			out[i] = lpmKey(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, third, byte(i), 0}), 24))
		}
		return out
	}
	vals := make([]cmTunnelValue, singleMax+1)
	for i := range vals {
		vals[i] = v
	}
	if _, err := m.BatchUpdate(keys(1), vals, nil); batchUnsupported(err) {
		t.Skipf("the kernel has no batch ops for LPM tries: %v", err)
	}
	bad := keys(2)
	bad[1].Prefixlen = 33
	err := batchUpdate(w, m, bad, vals)
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("batch with an invalid key: got %v, want EINVAL", err)
	}
	if w.noBatch[m] {
		t.Fatal("one EINVAL turned batching off for the map")
	}
	good := keys(3)
	if err := batchUpdate(w, m, good, vals); err != nil {
		t.Fatal(err)
	}
	if w.noBatch[m] {
		t.Error("batching off after a valid batch")
	}
	for _, k := range good {
		var got cmTunnelValue
		if err := m.Lookup(&k, &got); err != nil || got != v {
			t.Errorf("lookup of %v after the batch: %v %v", k, got, err)
		}
	}
}

// TestSmallBatches: batches of up to singleMax entries are written and
// deleted entry by entry, larger ones with batch syscalls; both leave the
// map as asked, absent keys are no error, and an invalid key fails the
// call without turning batching off.
func TestSmallBatches(t *testing.T) {
	dp, w := openTest(t)
	m := dp.objs.CmIpcache
	for _, tc := range []struct {
		name string
		n    int
	}{
		{"one", singleMax},
		{"two", singleMax + 1},
		{"a large batch", 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			keys := make([]cmLpm4Key, tc.n)
			vals := make([]cmIpcacheValue, tc.n)
			for i := range keys {
				keys[i] = lpmKey(netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(tc.n), byte(i)}), 32))
				vals[i] = cmIpcacheValue{Identity: uint32(1000 + i), ClusterId: 2}
			}
			if err := batchUpdate(w, m, keys, vals); err != nil {
				t.Fatal(err)
			}
			for i, k := range keys {
				var got cmIpcacheValue
				if err := m.Lookup(&k, &got); err != nil || got != vals[i] {
					t.Fatalf("entry %d: got %v %v, want %v", i, got, err, vals[i])
				}
			}
			// The first key twice: the second delete finds it absent.
			if err := batchDelete(w, m, append(slices.Clone(keys), keys[0])); err != nil {
				t.Fatal(err)
			}
			if err := batchDelete(w, m, keys); err != nil {
				t.Fatalf("deleting absent keys: %v", err)
			}
			for i, k := range keys {
				var got cmIpcacheValue
				if err := m.Lookup(&k, &got); !errors.Is(err, ebpf.ErrKeyNotExist) {
					t.Fatalf("entry %d after delete: %v %v, want absent", i, got, err)
				}
			}
			bad := slices.Clone(keys)
			bad[len(bad)-1].Prefixlen = 33
			if err := batchUpdate(w, m, bad, vals); !errors.Is(err, unix.EINVAL) {
				t.Fatalf("invalid key: got %v, want EINVAL", err)
			}
			if w.noBatch[m] {
				t.Fatal("an EINVAL turned batching off for the map")
			}
			if err := batchDelete(w, m, keys); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestPlanTypesAreWireLayout: single entries are written from the memory
// of a plan's keys and values as it is (update1, delete1), so every element
// type of a plan's slices must be its own wire form: no implicit padding
// (binary.Size, which packs the fields, equals the size in memory).
func TestPlanTypesAreWireLayout(t *testing.T) {
	pt := reflect.TypeFor[plan]()
	for i := range pt.NumField() {
		f := pt.Field(i)
		if f.Type.Kind() != reflect.Slice {
			continue
		}
		t.Run(f.Name, func(t *testing.T) {
			et := f.Type.Elem()
			if got := binary.Size(reflect.Zero(et).Interface()); got != int(et.Size()) {
				t.Errorf("%s: packed size %d, in memory %d", et, got, et.Size())
			}
		})
	}
}

// TestRawOK: the raw path is taken only where the map's key (and value)
// size is the Go type's, never for a per-CPU map.
func TestRawOK(t *testing.T) {
	testenv.RequireRoot(t)
	for _, tc := range []struct {
		name string
		spec ebpf.MapSpec
		ok   func(*ebpf.Map) bool
		want bool
	}{
		{"ipcache key and value", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 16, MaxEntries: 1}, rawOK[cmLpm4Key, cmIpcacheValue], true},
		{"key only (delete)", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 4, MaxEntries: 1}, rawOK[cmLpm4Key, struct{}], true},
		{"key size differs", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 16, MaxEntries: 1}, rawOK[cmLpm4Key, cmIpcacheValue], false},
		{"value size differs", ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 1}, rawOK[cmLpm4Key, cmIpcacheValue], false},
		{"per-CPU values", ebpf.MapSpec{Type: ebpf.PerCPUHash, KeySize: 4, ValueSize: 4, MaxEntries: 1}, rawOK[uint32, uint32], false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := ebpf.NewMap(&tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if got := tc.ok(m); got != tc.want {
				t.Errorf("rawOK = %v, want %v", got, tc.want)
			}
		})
	}
}
