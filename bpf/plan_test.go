package bpf

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// TestApplyRetriedAfterFailure: an Apply of a change (a whole service, or a
// patch planned slot by slot, which edits the index in place) fails after
// the backends were written (and, in one case, re-reading the maps fails
// too); applying the same batch again must leave the maps holding the
// change, exactly as the in-memory reference does.
func TestApplyRetriedAfterFailure(t *testing.T) {
	ap := netip.MustParseAddrPort
	fe := datapath.Frontend{Addr: ap("10.96.0.1:443"), Proto: ipproto.TCP}
	be := func(s string) datapath.Backend { return datapath.Backend{Addr: ap(s), ClusterID: 2, Weight: 1} }
	fill := datapath.Batch{UpsertServices: []datapath.Service{{Frontend: fe,
		Backends: []datapath.Backend{be("10.2.0.10:80"), be("10.2.0.11:80"), be("10.2.0.12:80")}}}}
	change := datapath.Batch{UpsertServices: []datapath.Service{{Frontend: fe,
		Backends: []datapath.Backend{be("10.2.0.10:80"), be("10.2.0.21:80"), be("10.2.0.12:80")}}}}
	patch := datapath.Batch{PatchServices: []datapath.ServicePatch{{Frontend: fe,
		Delete: []netip.AddrPort{ap("10.2.0.10:80")}, Upsert: []datapath.Backend{be("10.2.0.21:80")}}}}
	errInjected := errors.New("injected")
	for _, tc := range []struct {
		name        string
		change      datapath.Batch
		failRestore bool
	}{
		{"apply fails, restore works", change, false},
		{"apply and restore fail", change, true},
		{"patch: apply fails, restore works", patch, false},
		{"patch: apply and restore fail", patch, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dp, w := openTest(t)
			ctx := context.Background()
			if err := w.Apply(ctx, fill); err != nil {
				t.Fatal(err)
			}
			w.fault = func(step string) error {
				if step == "step 6" || tc.failRestore && step == "restore" { // after cm_backends
					return errInjected
				}
				return nil
			}
			if err := w.Apply(ctx, tc.change); !errors.Is(err, errInjected) {
				t.Fatalf("apply with an injected failure: %v", err)
			}
			w.fault = nil
			if err := w.Apply(ctx, tc.change); err != nil {
				t.Fatalf("retry: %v", err)
			}
			ref := memory.New()
			_ = ref.Apply(ctx, fill)
			_ = ref.Apply(ctx, tc.change)
			want, _ := ref.Dump()
			got, err := w.Dump()
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
				t.Errorf("after the retry\n got %s\nwant %s", g, w)
			}
			checkSlots(t, dp, w)
		})
	}
}
