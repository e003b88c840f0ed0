package bpf

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestSlotTable(t *testing.T) {
	for _, tc := range []struct {
		name    string
		weights []uint16
		want    []int
	}{
		{"none", nil, nil},
		{"all zero", []uint16{0, 0}, nil},
		{"equal", []uint16{5, 5, 5}, []int{0, 1, 2}},
		{"weighted", []uint16{1, 2, 0}, []int{0, 1, 1}},
		{"gcd", []uint16{100, 300}, []int{0, 1, 1, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := slotTable(tc.weights); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("slotTable(%v) = %v, want %v", tc.weights, got, tc.want)
			}
		})
	}
	big := make([]uint16, 3000)
	for i := range big {
		big[i] = uint16(1000 + i)
	}
	if n := len(slotTable(big)); n > maxSlots+len(big) || n < maxSlots/2 {
		t.Errorf("large table has %d slots", n)
	}
}

func TestByteOrder(t *testing.T) {
	a := netip.MustParseAddr("10.1.2.3")
	if got := addrFrom(be32(a)); got != a {
		t.Errorf("addr round trip: %v", got)
	}
	if got := portFrom(be16(8080)); got != 8080 {
		t.Errorf("port round trip: %v", got)
	}
	k := lpmKey(netip.MustParsePrefix("10.1.2.3/24"))
	if prefixFrom(k) != netip.MustParsePrefix("10.1.2.0/24") {
		t.Errorf("prefix round trip: %v", prefixFrom(k))
	}
}

func openTest(t *testing.T) (*Datapath, *Writer) {
	t.Helper()
	testenv.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	dp, err := Open(Config{PinDir: "/run/clustermesh-test/" + netnstest.RandomID() + "-w", CTEntries: 1024}, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			t.Error(err)
		}
	})
	w, err := NewWriter(dp, log)
	if err != nil {
		t.Fatal(err)
	}
	return dp, w
}

func count(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	var n int
	it := m.Iterate()
	var k, v []byte
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestWriterMatchesMemory applies a sequence of batches to the eBPF writer
// and to the in-memory reference; the dumps must match after every step,
// including after a new Writer re-reads the maps.
func TestWriterMatchesMemory(t *testing.T) {
	dp, w := openTest(t)
	ctx := context.Background()
	pfx := netip.MustParsePrefix
	ap := netip.MustParseAddrPort
	fe := datapath.Frontend{Addr: ap("10.96.0.1:443"), Proto: ipproto.TCP}
	fe2 := datapath.Frontend{Addr: ap("10.96.0.1:443"), Proto: ipproto.UDP}
	fe6 := datapath.Frontend{Addr: ap("[fd00:96::1]:443"), Proto: ipproto.TCP}
	be := func(s string, w uint16) datapath.Backend {
		return datapath.Backend{Addr: ap(s), ClusterID: 2, Weight: w}
	}
	steps := []struct {
		name string
		b    datapath.Batch
	}{
		{"fill", datapath.Batch{
			UpsertTunnels: []datapath.TunnelEntry{
				{CIDR: pfx("10.2.0.0/24"), NodeIP: netip.MustParseAddr("172.30.0.2"), ClusterID: 2},
				{CIDR: pfx("fd00:2::/64"), NodeIP: netip.MustParseAddr("172.30.0.2"), ClusterID: 2},
			},
			UpsertIPCache: []datapath.IPCacheEntry{
				{Prefix: pfx("10.2.0.10/32"), Identity: 2<<16 | 300, TunnelEndpoint: netip.MustParseAddr("172.30.0.2"), ClusterID: 2},
				{Prefix: pfx("10.1.0.10/32"), Identity: 1<<16 | 300, ClusterID: 1},
				{Prefix: pfx("fd00::1/128"), Identity: 9},
				{Prefix: pfx("fd00:2::10/128"), Identity: 10, TunnelEndpoint: netip.MustParseAddr("172.30.0.2"), ClusterID: 2},
			},
			UpsertEndpoints: []datapath.Endpoint{{IP: netip.MustParseAddr("10.1.0.10"), IfIndex: 7}, {IP: netip.MustParseAddr("fd00:1::10"), IfIndex: 7}},
			UpsertServices: []datapath.Service{
				{Frontend: fe6, Backends: []datapath.Backend{be("[fd00:1::10]:8443", 1), be("[fd00:2::10]:8443", 1), be("10.1.0.10:1", 1)}},
				{Frontend: fe, Backends: []datapath.Backend{be("10.1.0.10:8443", 1), be("10.2.0.10:8443", 2), be("10.2.0.11:8443", 0)}},
				{Frontend: fe2, Backends: []datapath.Backend{be("10.1.0.10:53", 1)}},
			},
		}},
		{"idempotent", datapath.Batch{}}, // replaced below by "fill" again
		{"shrink and delete absent", datapath.Batch{
			UpsertServices:  []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{be("10.2.0.10:8443", 1)}}},
			DeleteIPCache:   []netip.Prefix{pfx("10.9.9.9/32"), pfx("10.1.0.10/32")},
			DeleteTunnels:   []netip.Prefix{pfx("10.7.0.0/24")},
			DeleteEndpoints: []netip.Addr{netip.MustParseAddr("10.9.9.9")},
			DeleteServices:  []datapath.Frontend{{Addr: ap("10.96.9.9:1"), Proto: ipproto.TCP}},
		}},
		{"upsert wins over delete", datapath.Batch{
			DeleteServices: []datapath.Frontend{fe2},
			UpsertServices: []datapath.Service{{Frontend: fe2, Backends: []datapath.Backend{be("10.1.0.11:53", 3)}}},
			DeleteTunnels:  []netip.Prefix{pfx("10.2.0.0/24")},
			UpsertTunnels:  []datapath.TunnelEntry{{CIDR: pfx("10.2.0.0/24"), NodeIP: netip.MustParseAddr("172.30.0.3")}},
		}},
		{"replace one backend", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{be("10.2.0.12:8443", 1)}}},
		}},
		{"grow", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{
				be("10.2.0.12:8443", 1), be("10.2.0.13:8443", 1), be("10.2.0.14:8443", 2), be("10.2.0.15:8443", 0)}}},
		}},
		{"rebuilt patch: mixed weights", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{be("10.2.0.23:8443", 1)},
				Delete: []netip.AddrPort{ap("10.2.0.13:8443")}}},
		}},
		{"swap", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{
				be("10.2.0.23:8443", 1), be("10.2.0.12:8443", 1), {Addr: ap("10.2.0.14:8443"), ClusterID: 7, Weight: 2}, be("10.2.0.25:8443", 0)}}},
		}},
		{"equal weights", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{
				be("10.2.0.1:8443", 1), be("10.2.0.2:8443", 1), be("10.2.0.3:8443", 1), be("10.2.0.4:8443", 1), be("10.2.0.5:8443", 0)}}},
		}},
		{"patch: remove the first backend", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Delete: []netip.AddrPort{ap("10.2.0.1:8443"), ap("10.2.0.99:1")}}},
		}},
		{"patch: add two, one of weight 0", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{be("10.2.0.6:8443", 1), be("10.2.0.7:8443", 0)}}},
		}},
		{"patch: weight to 0, weight to 1, cluster changed, unchanged", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{
				be("10.2.0.2:8443", 0), be("10.2.0.5:8443", 1), {Addr: ap("10.2.0.3:8443"), ClusterID: 9, Weight: 1}, be("10.2.0.4:8443", 1)}}},
		}},
		{"patch: delete and re-add one address, two patches of one frontend", datapath.Batch{
			PatchServices: []datapath.ServicePatch{
				{Frontend: fe, Delete: []netip.AddrPort{ap("10.2.0.4:8443")}, Upsert: []datapath.Backend{be("10.2.0.4:8443", 1)}},
				{Frontend: fe, Delete: []netip.AddrPort{ap("10.2.0.6:8443")}, Upsert: []datapath.Backend{be("10.2.0.8:8443", 1)}},
			},
		}},
		{"patch: no backend selectable", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{
				be("10.2.0.3:8443", 0), be("10.2.0.4:8443", 0), be("10.2.0.5:8443", 0), be("10.2.0.8:8443", 0)}}},
		}},
		{"patch: a new common weight", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{be("10.2.0.3:8443", 3), be("10.2.0.9:8443", 3)}}},
		}},
		{"rebuilt patch: another weight", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe, Upsert: []datapath.Backend{be("10.2.0.4:8443", 5)}}},
		}},
		{"folded patch: upsert and patch of one frontend", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe, Backends: []datapath.Backend{be("10.2.0.1:8443", 1), be("10.2.0.2:8443", 1)}}},
			PatchServices:  []datapath.ServicePatch{{Frontend: fe, Delete: []netip.AddrPort{ap("10.2.0.1:8443")}, Upsert: []datapath.Backend{be("10.2.0.3:8443", 1)}}},
		}},
		{"folded patch: delete and patch of one frontend", datapath.Batch{
			DeleteServices: []datapath.Frontend{fe2},
			PatchServices:  []datapath.ServicePatch{{Frontend: fe2, Upsert: []datapath.Backend{be("10.1.0.12:53", 1)}}},
		}},
		{"IPv6 without the IPv4 backend", datapath.Batch{
			UpsertServices: []datapath.Service{{Frontend: fe6, Backends: []datapath.Backend{be("[fd00:1::10]:8443", 1), be("[fd00:2::10]:8443", 1)}}},
		}},
		{"patch: replace an IPv6 backend (IPv6)", datapath.Batch{
			PatchServices: []datapath.ServicePatch{{Frontend: fe6, Delete: []netip.AddrPort{ap("[fd00:2::10]:8443")},
				Upsert: []datapath.Backend{be("[fd00:2::11]:8443", 1)}}},
		}},
		{"delete all", datapath.Batch{
			DeleteServices:  []datapath.Frontend{fe, fe2, fe6},
			DeleteTunnels:   []netip.Prefix{pfx("10.2.0.0/24"), pfx("fd00:2::/64")},
			DeleteIPCache:   []netip.Prefix{pfx("10.2.0.10/32"), pfx("fd00::1/128"), pfx("fd00:2::10/128")},
			DeleteEndpoints: []netip.Addr{netip.MustParseAddr("10.1.0.10"), netip.MustParseAddr("fd00:1::10")},
		}},
	}
	steps[1].b = steps[0].b
	ref := memory.New()
	for _, s := range steps {
		key := fe
		if strings.Contains(s.name, "IPv6") {
			key = fe6
		}
		before, patchedBefore := w.services[key], w.patched
		if err := w.Apply(ctx, s.b); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		_ = ref.Apply(ctx, s.b)
		want, _ := ref.Dump()
		if svc, ok := want.Services[fe6]; ok { // the IPv4 backend of an IPv6 frontend is skipped
			svc.Backends = slices.DeleteFunc(slices.Clone(svc.Backends), func(b datapath.Backend) bool { return b.Addr.Addr().Is4() })
			want.Services[fe6] = svc
		}
		got, err := w.Dump()
		if err != nil {
			t.Fatal(err)
		}
		if g, w := fmt.Sprint(got), fmt.Sprint(want); g != w {
			t.Errorf("%s: dump\n got %s\nwant %s", s.name, g, w)
		}
		pinned, err := DumpPinned(dp.cfg.PinDir)
		if err != nil {
			t.Fatal(err)
		}
		if p, g := fmt.Sprint(pinned), fmt.Sprint(got); p != g {
			t.Errorf("%s: read-only dump of the pinned maps\n got %s\nwant %s", s.name, p, g)
		}
		checkPinnedIPCache(t, s.name, dp.cfg.PinDir, got)
		w2, err := NewWriter(dp, w.log)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(withoutSlots(w2.services), withoutSlots(w.services)) {
			t.Errorf("%s: restored index differs", s.name)
		}
		checkSlots(t, dp, w)
		patched := before != nil && w.patched > patchedBefore
		if strings.HasPrefix(s.name, "patch:") != patched {
			t.Errorf("%s: patched slot by slot = %v", s.name, patched)
		}
		if s.name == "shrink and delete absent" {
			if n := count(t, dp.objs.CmLbSlots); n != 1+1+2 { // fe: 1 slot, fe2: 1, fe6: 2
				t.Errorf("%s: %d slots left", s.name, n)
			}
			if n := count(t, dp.objs.CmBackends); n != 2 {
				t.Errorf("%s: %d backends left", s.name, n)
			}
		}
	}
	for _, m := range []*ebpf.Map{dp.objs.CmLbSlots, dp.objs.CmBackends, dp.objs.CmServices,
		dp.objs.CmBackends6, dp.objs.CmServices6, dp.objs.CmIpcache6, dp.objs.CmTunnel6, dp.objs.CmEndpoints6} {
		if n := count(t, m); n != 0 {
			t.Errorf("%v: %d entries left after deleting everything", m, n)
		}
	}
}

// checkPinnedIPCache looks every IPv4 ipcache entry of st up through
// PinnedIPCache, and an address that is not in the map.
func checkPinnedIPCache(t *testing.T, step, pinDir string, st datapath.State) {
	t.Helper()
	c, err := OpenPinnedIPCache(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	n := 0
	for p, want := range st.IPCache {
		if !p.Addr().Is4() {
			continue
		}
		n++
		got, ok, err := c.Lookup(p)
		if err != nil || !ok || got != want {
			t.Errorf("%s: pinned lookup of %s: %+v %v %v, want %+v", step, p, got, ok, err, want)
		}
	}
	if got, err := c.Count(); err != nil || got != n {
		t.Errorf("%s: pinned count %d (%v), want %d", step, got, err, n)
	}
	want := PinnedCounts{IPCache: n}
	for p := range st.Tunnels {
		if p.Addr().Is4() {
			want.Tunnels++
		}
	}
	if got, err := CountPinned(pinDir); err != nil || got != want {
		t.Errorf("%s: pinned counts %+v (%v), want %+v", step, got, err, want)
	}
	if _, ok, err := c.Lookup(netip.MustParsePrefix("192.0.2.77/32")); ok || err != nil {
		t.Errorf("%s: pinned lookup of an absent address: %v %v", step, ok, err)
	}
}

func TestDumpPinnedWithoutPins(t *testing.T) {
	testenv.RequireRoot(t)
	_, err := DumpPinned(t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "open pinned map cm_") {
		t.Fatalf("dump of a directory without pins: %v", err)
	}
}

func withoutSlots(m map[datapath.Frontend]*svcState) map[datapath.Frontend]svcState {
	out := map[datapath.Frontend]svcState{}
	for k, v := range m {
		c := *v
		c.slots, c.slotOf, c.nextIndex = nil, nil, 0
		out[k] = c
	}
	return out
}

func TestStableSlots(t *testing.T) {
	ids := []uint32{11, 12, 13, 14}
	first := stableSlots(nil, ids, slotTable([]uint16{1, 1, 1, 1}))
	if !reflect.DeepEqual(first, []uint32{11, 12, 13, 14}) {
		t.Fatalf("fresh table %v", first)
	}
	// Removing 12: only its slot changes (taken by the last backend).
	second := stableSlots(first, []uint32{11, 13, 14}, slotTable([]uint16{1, 1, 1}))
	if !reflect.DeepEqual(second, []uint32{11, 14, 13}) {
		t.Errorf("after removing 12: %v", second)
	}
	// Adding 15 appends a slot.
	third := stableSlots(second, []uint32{11, 13, 14, 15}, slotTable([]uint16{1, 1, 1, 1}))
	if !reflect.DeepEqual(third, []uint32{11, 14, 13, 15}) {
		t.Errorf("after adding 15: %v", third)
	}
	// Weights are honoured.
	w := stableSlots(third, []uint32{11, 13}, slotTable([]uint16{1, 3}))
	n := map[uint32]int{}
	for _, id := range w {
		n[id]++
	}
	if n[11] != 1 || n[13] != 3 {
		t.Errorf("weighted: %v", w)
	}
}

// checkSlots verifies every service's slot table in the map: nslots entries,
// each naming a backend of the service, in proportion to the weights.
func checkSlots(t *testing.T, dp *Datapath, w *Writer) {
	t.Helper()
	total := 0
	for fe, st := range w.services {
		perID := map[uint32]int{}
		for i := uint32(0); i < st.nslots; i++ {
			var id uint32
			if err := dp.objs.CmLbSlots.Lookup(cmSlotKey{SvcId: st.id, Slot: i}, &id); err != nil {
				t.Fatalf("%v slot %d: %v", fe, i, err)
			}
			perID[id]++
		}
		total += int(st.nslots)
		var weights []uint16
		var ids []uint32
		for _, id := range st.backends {
			var v cmBackendValue
			var v6 cmBackend6Value
			var err error
			if st.v6 {
				err = dp.objs.CmBackends6.Lookup(id, &v6)
				v.SvcId, v.Weight = v6.SvcId, v6.Weight
			} else {
				err = dp.objs.CmBackends.Lookup(id, &v)
			}
			if err != nil || v.SvcId != st.id {
				t.Fatalf("%v backend %d: %v %+v", fe, id, err, v)
			}
			weights = append(weights, v.Weight)
			ids = append(ids, id)
		}
		want := map[uint32]int{}
		for _, bi := range slotTable(weights) {
			want[ids[bi]]++
		}
		if !reflect.DeepEqual(perID, want) {
			t.Errorf("%v: slots per backend %v, want %v", fe, perID, want)
		}
	}
	if n := count(t, dp.objs.CmLbSlots); n != total {
		t.Errorf("%d slots in the map, services own %d", n, total)
	}
}

func TestEnsureBPFFS(t *testing.T) {
	testenv.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	root := "/run/clustermesh-test/" + netnstest.RandomID() + "-fs"
	standard := root + "/std" // stands for /sys/fs/bpf
	if err := os.MkdirAll(standard, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, d := range []string{standard + "/a", standard, root + "/own"} {
			_ = unix.Unmount(d, 0)
		}
		if err := os.RemoveAll(root); err != nil {
			t.Error(err)
		}
	})
	// Below the standard place: the bpffs goes on the standard place.
	if err := ensureBPFFS(standard+"/a/b", standard, log); err != nil {
		t.Fatal(err)
	}
	if !isBPFFS(standard) || isMountPoint(standard+"/a/b") {
		t.Errorf("bpffs not mounted on the standard place")
	}
	// Already on bpffs: nothing mounted again.
	if err := ensureBPFFS(standard+"/c", standard, log); err != nil || !isBPFFS(standard+"/c") {
		t.Errorf("second dir: %v", err)
	}
	// Elsewhere: the bpffs goes on the directory itself.
	if err := ensureBPFFS(root+"/own", standard, log); err != nil {
		t.Fatal(err)
	}
	if !isMountPoint(root + "/own") {
		t.Errorf("bpffs not mounted on %s/own", root)
	}
}

func TestConfigFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want Config
		err  bool
	}{
		{"defaults", nil, Config{PinDir: DefaultPinDir, CTEntries: DefaultCTEntries, PolicyEntries: DefaultPolicyEntries, Attach: AttachAuto}, false},
		{"set", []string{"--bpf-pin-dir=/x", "--bpf-ct-entries=1024", "--bpf-policy-entries=2097152", "--bpf-attach=tc"},
			Config{PinDir: "/x", CTEntries: 1024, PolicyEntries: 2097152, Attach: AttachTC}, false},
		{"zero entries", []string{"--bpf-ct-entries=0"}, Config{}, true},
		{"zero policy entries", []string{"--bpf-policy-entries=0"}, Config{}, true},
		{"policy entries not a number", []string{"--bpf-policy-entries=2M"}, Config{}, true},
		{"unknown attach mode", []string{"--bpf-attach=xdp"}, Config{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var c Config
			fs := flag.NewFlagSet("test", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			c.RegisterFlags(fs)
			err := fs.Parse(tc.args)
			if (err != nil) != tc.err {
				t.Fatalf("parse: %v", err)
			}
			if !tc.err && c != tc.want {
				t.Errorf("config = %+v, want %+v", c, tc.want)
			}
		})
	}
}
