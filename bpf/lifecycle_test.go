package bpf

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestCheckKernel(t *testing.T) {
	for _, tc := range []struct {
		name    string
		release string
		wantErr error
		anyErr  bool
	}{
		{name: "this machine's", release: "6.18.0-1-amd64"},
		{name: "minimum", release: "5.10.0-28-amd64"},
		{name: "rc of minimum", release: "5.10-rc1"},
		{name: "too old", release: "5.4.0-150-generic", wantErr: ErrKernelTooOld},
		{name: "old major", release: "4.19.0", wantErr: ErrKernelTooOld},
		{name: "unparsable", release: "linux", anyErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := CheckKernel(tc.release)
			switch {
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Errorf("CheckKernel(%q) = %v, want %v", tc.release, err, tc.wantErr)
			case tc.anyErr && err == nil:
				t.Errorf("CheckKernel(%q) = nil, want an error", tc.release)
			case tc.wantErr == nil && !tc.anyErr && err != nil:
				t.Errorf("CheckKernel(%q) = %v", tc.release, err)
			}
		})
	}
}

func TestResolveAttachMode(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    AttachMode
		release string
		want    AttachMode
		wantErr error
	}{
		{name: "auto with tcx", mode: AttachAuto, release: "6.6.0", want: AttachTCX},
		{name: "auto before tcx", mode: AttachAuto, release: "6.1.0", want: AttachTC},
		{name: "unset is auto", mode: "", release: "5.15.0", want: AttachTC},
		{name: "forced tc", mode: AttachTC, release: "6.18.0", want: AttachTC},
		{name: "tcx missing", mode: AttachTCX, release: "5.15.0", wantErr: ErrAttachUnsupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := resolveAttachMode(tc.mode, tc.release)
			if !errors.Is(err, tc.wantErr) || got != tc.want {
				t.Errorf("resolveAttachMode(%q, %q) = %q, %v; want %q, %v", tc.mode, tc.release, got, err, tc.want, tc.wantErr)
			}
		})
	}
}

// TestOpenRebuildsIncompatibleMaps pins maps whose layout or size differ
// from this version's (as an older agent would have left them) and checks
// that Open rebuilds them instead of failing with ErrMapIncompatible.
func TestOpenRebuildsIncompatibleMaps(t *testing.T) {
	testenv.RequireRoot(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := Config{PinDir: "/run/clustermesh-test/" + netnstest.RandomID() + "-m", CTEntries: 1024}
	dp, err := Open(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := Cleanup(cfg.PinDir); err != nil {
			t.Error(err)
		}
	})
	dp.Close()

	// An older cm_tunnel: a hash map with other key and value sizes.
	tunnelPin := filepath.Join(cfg.PinDir, "maps", cmMapCmTunnel)
	if err := os.Remove(tunnelPin); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Hash, KeySize: 4, ValueSize: 4, MaxEntries: 16})
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Pin(tunnelPin); err != nil {
		t.Fatal(err)
	}
	old.Close()

	// And a new CT size for the LRU maps.
	cfg.CTEntries = 2048
	dp, err = Open(cfg, log)
	if err != nil {
		t.Fatalf("Open over incompatible pins: %v", err)
	}
	defer dp.Close()
	for _, tc := range []struct {
		name       string
		m          *ebpf.Map
		typ        ebpf.MapType
		valueSize  uint32
		maxEntries uint32
	}{
		{name: "tunnel map rebuilt", m: dp.objs.CmTunnel, typ: ebpf.LPMTrie, valueSize: 8, maxEntries: 65536},
		{name: "ct map resized", m: dp.objs.CmLbCt, typ: ebpf.LRUHash, valueSize: 8, maxEntries: 2048},
	} {
		t.Run(tc.name, func(t *testing.T) {
			info, err := tc.m.Info()
			if err != nil {
				t.Fatal(err)
			}
			if info.Type != tc.typ || info.ValueSize != tc.valueSize || info.MaxEntries != tc.maxEntries {
				t.Errorf("map = %v value %d max %d, want %v value %d max %d", info.Type, info.ValueSize, info.MaxEntries, tc.typ, tc.valueSize, tc.maxEntries)
			}
		})
	}
	// The rebuilt map is the pinned one.
	pinned, err := ebpf.LoadPinnedMap(tunnelPin, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer pinned.Close()
	if info, _ := pinned.Info(); info.Type != ebpf.LPMTrie {
		t.Errorf("pinned cm_tunnel is %v, want the rebuilt LPM trie", info.Type)
	}
}

// TestTunnelDevice creates, adopts and removes the tunnel device in a
// namespace with an underlay of MTU 9000.
func TestTunnelDevice(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ns := netnstest.NewNS(t, netnstest.RandomID()+"-tun")
	if err := ns.Batch("link add ul0 mtu 9000 type veth peer name ul1", "link set ul0 up", "addr add 192.0.2.10/24 dev ul0",
		"link add other type bridge"); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := DefaultTunnelConfig()
	err := ns.Do(func() error {
		idx, err := EnsureTunnel(cfg, log)
		if err != nil {
			return err
		}
		lk, err := netlink.LinkByName(cfg.Device)
		if err != nil {
			return err
		}
		vx := lk.(*netlink.Vxlan)
		if !vx.FlowBased || vx.Port != DefaultTunnelPort || vx.MTU != 9000-50 || vx.Alias != OwnerAlias || vx.Index != idx {
			t.Errorf("created %+v (ifindex %d), want external, port %d, mtu 8950, alias %s", vx, idx, DefaultTunnelPort, OwnerAlias)
		}
		if again, err := EnsureTunnel(cfg, log); err != nil || again != idx {
			t.Errorf("second EnsureTunnel = %d, %v; want the same device %d", again, err, idx)
		}
		for _, tc := range []struct {
			name string
			cfg  TunnelConfig
		}{
			{name: "missing and not created", cfg: TunnelConfig{Device: "nosuchdev", Create: false}},
			{name: "not a vxlan", cfg: TunnelConfig{Device: "other", Create: true, Port: DefaultTunnelPort}},
			{name: "other port", cfg: TunnelConfig{Device: cfg.Device, Create: true, Port: 4789}},
		} {
			if _, err := EnsureTunnel(tc.cfg, log); !errors.Is(err, ErrTunnelDevice) {
				t.Errorf("%s: EnsureTunnel = %v, want ErrTunnelDevice", tc.name, err)
			}
		}
		if removed, err := CleanupTunnel(cfg.Device); err != nil || !removed {
			t.Errorf("CleanupTunnel = %v, %v; want removed", removed, err)
		}
		if _, err := netlink.LinkByName(cfg.Device); err == nil {
			t.Errorf("%s still exists after cleanup", cfg.Device)
		}
		// A device the agent did not create stays.
		if removed, err := CleanupTunnel("other"); err != nil || removed {
			t.Errorf("CleanupTunnel(other) = %v, %v; want left alone", removed, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestTunnelRoutes syncs the routes into a tunnel device the agent did not
// create: ARP goes off, only our routes (RouteProtocol) are added and
// removed, and cleanup leaves the device and the routes of others.
func TestTunnelRoutes(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	ns := netnstest.NewNS(t, netnstest.RandomID()+"-rt")
	if err := ns.Batch("link add ul0 type veth peer name ul1", "link set ul0 up", "addr add 192.0.2.10/24 dev ul0",
		"link add uservx type vxlan external dstport 8472", "link set uservx up",
		"route add 10.9.0.0/16 dev uservx proto static"); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	routes := func(t *testing.T, idx int) (ours, others []string) {
		t.Helper()
		rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{LinkIndex: idx}, netlink.RT_FILTER_OIF)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Dst == nil || r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast() {
				continue
			}
			if r.Protocol == RouteProtocol {
				ours = append(ours, r.Dst.String())
			} else {
				others = append(others, r.Dst.String())
			}
		}
		slices.Sort(ours)
		return ours, others
	}
	err := ns.Do(func() error {
		idx, err := EnsureTunnel(TunnelConfig{Device: "uservx"}, log)
		if err != nil {
			return err
		}
		lk, err := netlink.LinkByIndex(idx)
		if err != nil {
			return err
		}
		if lk.Attrs().RawFlags&unix.IFF_NOARP == 0 {
			t.Errorf("uservx still resolves neighbours (flags %#x)", lk.Attrs().RawFlags)
		}
		for _, step := range []struct {
			name string
			sync []netip.Prefix
			want []string
		}{
			{"add", []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24"), netip.MustParsePrefix("fd00:2::/64")}, []string{"10.2.1.0/24", "fd00:2::/64"}},
			{"same again", []netip.Prefix{netip.MustParsePrefix("10.2.1.0/24"), netip.MustParsePrefix("fd00:2::/64")}, []string{"10.2.1.0/24", "fd00:2::/64"}},
			{"replace", []netip.Prefix{netip.MustParsePrefix("10.3.1.0/24")}, []string{"10.3.1.0/24"}},
		} {
			if err := SyncTunnelRoutes(idx, step.sync); err != nil {
				t.Fatalf("%s: %v", step.name, err)
			}
			ours, others := routes(t, idx)
			if !slices.Equal(ours, step.want) || !slices.Equal(others, []string{"10.9.0.0/16"}) {
				t.Errorf("%s: our routes %v, others %v; want %v and [10.9.0.0/16]", step.name, ours, others, step.want)
			}
		}
		if removed, err := CleanupTunnel("uservx"); err != nil || removed {
			t.Errorf("CleanupTunnel(uservx) = %v, %v; want left in place", removed, err)
		}
		if ours, others := routes(t, idx); len(ours) != 0 || !slices.Equal(others, []string{"10.9.0.0/16"}) {
			t.Errorf("after cleanup: our routes %v, others %v; want none and [10.9.0.0/16]", ours, others)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
