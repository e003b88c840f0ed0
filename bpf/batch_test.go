package bpf

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
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
// still written with one batch syscall.
func TestBatchAfterEINVAL(t *testing.T) {
	dp, w := openTest(t)
	m := dp.objs.CmTunnel
	good := lpmKey(netip.MustParsePrefix("10.2.0.0/24"))
	bad := good
	bad.Prefixlen = 33
	v := cmTunnelValue{NodeIp: be32(netip.MustParseAddr("172.30.0.2")), ClusterId: 2}
	if _, err := m.BatchUpdate([]cmLpm4Key{good}, []cmTunnelValue{v}, nil); batchUnsupported(err) {
		t.Skipf("the kernel has no batch ops for LPM tries: %v", err)
	}
	err := batchUpdate(w, m, []cmLpm4Key{good, bad}, []cmTunnelValue{v, v})
	if !errors.Is(err, unix.EINVAL) {
		t.Fatalf("batch with an invalid key: got %v, want EINVAL", err)
	}
	if w.noBatch[m] {
		t.Fatal("one EINVAL turned batching off for the map")
	}
	good2 := lpmKey(netip.MustParsePrefix("10.3.0.0/24"))
	if err := batchUpdate(w, m, []cmLpm4Key{good2}, []cmTunnelValue{v}); err != nil {
		t.Fatal(err)
	}
	if w.noBatch[m] {
		t.Error("batching off after a valid batch")
	}
	var got cmTunnelValue
	if err := m.Lookup(&good2, &got); err != nil || got != v {
		t.Errorf("lookup after the batch: %v %v", got, err)
	}
}
