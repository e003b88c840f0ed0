package dpsync

import (
	"context"
	"fmt"
	"net/netip"
	"testing"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// nopWriter takes every batch and programs nothing.
type nopWriter struct{}

func (nopWriter) Apply(context.Context, datapath.Batch) error { return nil }
func (nopWriter) Dump() (datapath.State, error)               { return datapath.NewState(), nil }

// BenchmarkServiceBackendChange measures the reconciler's part of one
// backend change in a service of N backends: the change handed in (a patch
// replacing one backend, or, as before the incremental contract, the whole
// service) and the flush that builds the batch.
func BenchmarkServiceBackendChange(b *testing.B) {
	fe := datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.1:80"), Proto: ipproto.TCP}
	for _, mode := range []string{"whole", "patch"} {
		for _, n := range []int{100, 1000, 10000} {
			b.Run(fmt.Sprintf("%s/%d", mode, n), func(b *testing.B) {
				r := New(Config{ClusterID: 1}, nopWriter{}, discard, clock.RealClock{})
				list := make([]datapath.Backend, n)
				for i := range list {
					list[i] = datapath.Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 50, byte(i >> 8), byte(i)}), 8080), Weight: 1}
				}
				r.UpsertService(datapath.Service{Frontend: fe, Backends: list})
				ctx := context.Background()
				if err := r.Flush(ctx); err != nil {
					b.Fatal(err)
				}
				b.ReportAllocs()
				for k := 0; b.Loop(); k++ {
					pos := k % n
					old := list[pos]
					nb := old
					nb.Addr = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 51 + byte(k>>16), byte(k >> 8), byte(k)}), 8080)
					list[pos] = nb
					if mode == "patch" {
						r.PatchService(datapath.ServicePatch{Frontend: fe, Delete: []netip.AddrPort{old.Addr}, Upsert: []datapath.Backend{nb}})
					} else {
						r.UpsertService(datapath.Service{Frontend: fe, Backends: append([]datapath.Backend(nil), list...)})
					}
					if err := r.Flush(ctx); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}
