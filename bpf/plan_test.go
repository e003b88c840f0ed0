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

// TestSingleRouteChanges: a batch of one tunnel or ipcache upsert or
// delete is written without a plan (applyRoute); after each such change
// the maps hold what a writer that plans the same change holds (its batch
// also deletes an absent endpoint, so it is not a single change), for both
// address families, a prefix with host bits set, an entry the datapath
// cannot hold (skipped) and the delete of an absent key. A failure of the
// write is Apply's error, and the same batch applied again takes.
func TestSingleRouteChanges(t *testing.T) {
	pfx, addr := netip.MustParsePrefix, netip.MustParseAddr
	fill := datapath.Batch{
		UpsertTunnels: []datapath.TunnelEntry{{CIDR: pfx("10.2.0.0/24"), NodeIP: addr("172.30.0.2"), ClusterID: 2}},
		UpsertIPCache: []datapath.IPCacheEntry{
			{Prefix: pfx("10.2.0.5/32"), Identity: 2<<16 | 300, TunnelEndpoint: addr("172.30.0.2"), ClusterID: 2},
			{Prefix: pfx("fd00:2::5/128"), Identity: 2<<16 | 300, ClusterID: 2}},
		UpsertServices: []datapath.Service{{Frontend: datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.1:443"), Proto: ipproto.TCP},
			Backends: []datapath.Backend{{Addr: netip.MustParseAddrPort("10.2.0.5:443"), ClusterID: 2, Weight: 1}}}},
	}
	changes := []struct {
		name string
		b    datapath.Batch
	}{
		{"ipcache upsert", datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: pfx("10.2.0.6/32"), Identity: 2<<16 | 301, TunnelEndpoint: addr("172.30.0.2"), ClusterID: 2}}}},
		{"ipcache update", datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: pfx("10.2.0.5/32"), Identity: 2<<16 | 302, TunnelEndpoint: addr("172.30.0.3"), ClusterID: 2}}}},
		{"ipcache upsert, host bits set", datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: pfx("10.2.1.7/24"), Identity: 2<<16 | 303, ClusterID: 2}}}},
		{"ipcache6 upsert", datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: pfx("fd00:2::6/128"), Identity: 2<<16 | 304, ClusterID: 2}}}},
		{"ipcache skipped (IPv6 tunnel endpoint)", datapath.Batch{UpsertIPCache: []datapath.IPCacheEntry{{Prefix: pfx("10.2.0.8/32"), Identity: 2<<16 | 305, TunnelEndpoint: addr("fd00::1"), ClusterID: 2}}}},
		{"ipcache delete", datapath.Batch{DeleteIPCache: []netip.Prefix{pfx("10.2.0.5/32")}}},
		{"ipcache delete, absent", datapath.Batch{DeleteIPCache: []netip.Prefix{pfx("10.2.0.99/32")}}},
		{"ipcache delete, host bits set", datapath.Batch{DeleteIPCache: []netip.Prefix{pfx("10.2.1.9/24")}}},
		{"ipcache6 delete", datapath.Batch{DeleteIPCache: []netip.Prefix{pfx("fd00:2::5/128")}}},
		{"tunnel upsert", datapath.Batch{UpsertTunnels: []datapath.TunnelEntry{{CIDR: pfx("10.3.0.0/24"), NodeIP: addr("172.30.0.3"), ClusterID: 3}}}},
		{"tunnel6 upsert", datapath.Batch{UpsertTunnels: []datapath.TunnelEntry{{CIDR: pfx("fd00:3::/64"), NodeIP: addr("172.30.0.3"), ClusterID: 3}}}},
		{"tunnel skipped (IPv6 node)", datapath.Batch{UpsertTunnels: []datapath.TunnelEntry{{CIDR: pfx("10.4.0.0/24"), NodeIP: addr("fd00::4"), ClusterID: 4}}}},
		{"tunnel delete", datapath.Batch{DeleteTunnels: []netip.Prefix{pfx("10.2.0.0/24")}}},
		{"tunnel6 delete", datapath.Batch{DeleteTunnels: []netip.Prefix{pfx("fd00:3::/64")}}},
		{"tunnel delete, absent", datapath.Batch{DeleteTunnels: []netip.Prefix{pfx("10.9.0.0/24")}}},
	}
	_, w := openTest(t)
	_, ref := openTest(t)
	planned := func(b datapath.Batch) datapath.Batch {
		b.DeleteEndpoints = []netip.Addr{addr("10.255.255.254")}
		return b
	}
	ctx := context.Background()
	for _, w := range []*Writer{w, ref} {
		if err := w.Apply(ctx, fill); err != nil {
			t.Fatal(err)
		}
	}
	errInjected := errors.New("injected")
	for _, tc := range changes {
		t.Run(tc.name, func(t *testing.T) {
			w.fault = func(step string) error {
				if step == "route" {
					return errInjected
				}
				return nil
			}
			if err := w.Apply(ctx, tc.b); !errors.Is(err, errInjected) {
				t.Fatalf("a single change is not written by applyRoute: Apply with a failing write returned %v", err)
			}
			w.fault = nil
			if err := w.Apply(ctx, tc.b); err != nil {
				t.Fatal(err)
			}
			if err := ref.Apply(ctx, planned(tc.b)); err != nil {
				t.Fatal(err)
			}
			want, err := ref.Dump()
			if err != nil {
				t.Fatal(err)
			}
			got, err := w.Dump()
			if err != nil {
				t.Fatal(err)
			}
			if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
				t.Errorf("after %s\n got %s\nwant %s", tc.name, g, w)
			}
		})
	}
}
