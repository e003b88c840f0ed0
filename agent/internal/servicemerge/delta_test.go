package servicemerge

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// recSink is a sink that also records what one flush emitted.
type recSink struct {
	sink
	log []string
}

func (r *recSink) UpsertService(svc datapath.Service) {
	r.log = append(r.log, "upsert")
	r.sink.UpsertService(svc)
}

func (r *recSink) DeleteService(f datapath.Frontend) {
	r.log = append(r.log, "delete")
	r.sink.DeleteService(f)
}

func (r *recSink) PatchService(p datapath.ServicePatch) {
	r.log = append(r.log, fmt.Sprintf("patch +%d -%d", len(p.Upsert), len(p.Delete)))
	r.sink.PatchService(p)
}

func (r *recSink) take() string {
	s := strings.Join(r.log, ", ")
	r.log = r.log[:0]
	if s == "" {
		return "nothing"
	}
	return s
}

// checkAgainstFull fails when what the sink holds (built from patches)
// differs from the whole recomputation of every service (Snapshot).
func checkAgainstFull(t *testing.T, m *Merger, s sink, step string) {
	t.Helper()
	want := map[datapath.Frontend][]datapath.Backend{}
	for _, snap := range m.Snapshot() {
		for _, svc := range snap.Services {
			want[svc.Frontend] = svc.Backends
		}
	}
	if len(want) != len(s) {
		t.Fatalf("%s: %d frontends programmed, the full computation has %d", step, len(s), len(want))
	}
	for fe, svc := range s {
		got := slices.Clone(svc.Backends)
		w := slices.Clone(want[fe])
		byAddr := func(a, b datapath.Backend) int { return a.Addr.Compare(b.Addr) }
		slices.SortFunc(got, byAddr)
		slices.SortFunc(w, byAddr)
		if !slices.Equal(got, w) {
			t.Fatalf("%s: %v holds\n%v\nthe full computation\n%v", step, fe, got, w)
		}
	}
}

func withBackends(rs RemoteService, extra ...string) RemoteService {
	l := slices.Clone(rs.Backends[pkH])
	for _, e := range extra {
		l = append(l, netip.MustParseAddrPort(e))
	}
	return RemoteService{ClusterID: rs.ClusterID, Shared: rs.Shared, Backends: map[PortKey][]netip.AddrPort{pkH: l}}
}

// TestBackendDeltas: a backend change is handed on as a patch of that
// backend; a change of the weights (failover, failback, affinity with no
// remote left) or of the service recomputes it whole.
func TestBackendDeltas(t *testing.T) {
	r2 := remote(2, true, 3)
	type step struct {
		name string
		do   func(m *Merger)
		emit string
		want string
	}
	tests := []struct {
		name     string
		affinity Affinity
		ready    int
		steps    []step
	}{
		{"affinity none", AffinityNone, 3, []step{
			{"local endpoint added", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(4, 0, "10.1.0")) }, "patch +1 -0", "1:1x4 2:1x3"},
			{"local endpoint removed", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(3, 0, "10.1.0")) }, "patch +0 -1", "1:1x3 2:1x3"},
			{"local endpoint not ready", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(2, 1, "10.1.0")) }, "patch +0 -1", "1:1x2 2:1x3"},
			{"not-ready endpoint gone: nothing to program", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(2, 0, "10.1.0")) }, "nothing", "1:1x2 2:1x3"},
			{"remote backend added", func(m *Merger) { m.SetRemote(web, "c2", withBackends(r2, "10.2.0.9:8080")) }, "patch +1 -0", "1:1x2 2:1x4"},
			{"remote backend replaced", func(m *Merger) { m.SetRemote(web, "c2", withBackends(r2, "10.2.0.8:8080")) }, "patch +1 -1", "1:1x2 2:1x4"},
			{"remote exports a local address: listed once, as local", func(m *Merger) {
				m.SetRemote(web, "c2", withBackends(r2, "10.2.0.8:8080", "10.1.0.1:8080"))
			}, "patch +1 -0", "1:1x2 2:1x4"},
			{"local endpoint at that address not ready: the remote's", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(0, 2, "10.1.0")) }, "patch +1 -1", "2:1x5"},
			{"second remote with the same address: the lower cluster ID", func(m *Merger) {
				m.SetRemote(web, "c3", RemoteService{ClusterID: 3, Shared: true, Backends: map[PortKey][]netip.AddrPort{pkH: {netip.MustParseAddrPort("10.1.0.1:8080")}}})
			}, "upsert", "2:1x5"},
			{"remote not shared any more", func(m *Merger) { m.SetRemote(web, "c2", RemoteService{ClusterID: 2, Backends: r2.Backends}) }, "upsert", "3:1x1"},
			{"service annotations changed", func(m *Merger) { m.SetLocalService(web, localSvc(Annotations{Global: false})) }, "upsert", "empty"},
		}},
		{"affinity local", AffinityLocal, 4, []step{
			{"one local not ready", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(3, 1, "10.1.0")) }, "patch +0 -1", "1:1x3 2:0x3"},
			{"last local gone: failover, whole", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(0, 4, "10.1.0")) }, "upsert", "2:1x3"},
			{"remote backend added while failed over", func(m *Merger) { m.SetRemote(web, "c2", withBackends(r2, "10.2.0.9:8080")) }, "patch +1 -0", "2:1x4"},
			{"first local back: mixed, a patch", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(1, 3, "10.1.0")) }, "patch +1 -0", "1:1x1 2:1x4"},
			{"second local back: failback, whole", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(2, 2, "10.1.0")) }, "upsert", "1:1x2 2:0x4"},
			{"remote backend removed while local", func(m *Merger) { m.SetRemote(web, "c2", r2) }, "patch +0 -1", "1:1x2 2:0x3"},
			{"remote cluster gone, whole", func(m *Merger) { m.DeleteRemote(web, "c2") }, "upsert", "1:1x2"},
			{"remote cluster back, whole", func(m *Merger) { m.SetRemote(web, "c2", r2) }, "upsert", "1:1x2 2:0x3"},
		}},
		{"affinity remote", AffinityRemote, 2, []step{
			{"remote backend removed", func(m *Merger) { m.SetRemote(web, "c2", remote(2, true, 1)) }, "patch +0 -2", "1:0x2 2:1x1"},
			{"last remote backend gone: local, whole", func(m *Merger) { m.SetRemote(web, "c2", remote(2, true, 0)) }, "upsert", "1:1x2"},
			{"remote backend back: remote, whole", func(m *Merger) { m.SetRemote(web, "c2", remote(2, true, 1)) }, "upsert", "1:0x2 2:1x1"},
			{"local endpoint added while remote", func(m *Merger) { m.SetEndpointSlice(web, "a", slice(3, 0, "10.1.0")) }, "patch +1 -0", "1:0x3 2:1x1"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &recSink{sink: sink{}}
			m := New(Config{ClusterID: 1, FailbackShare: 0.5}, s)
			m.SetLocalService(web, localSvc(Annotations{Global: true, Shared: true, Affinity: tt.affinity}))
			m.SetEndpointSlice(web, "a", slice(tt.ready, 0, "10.1.0"))
			m.SetRemote(web, "c2", r2)
			m.Flush()
			s.take()
			for _, st := range tt.steps {
				st.do(m)
				m.Flush()
				if got := s.take(); got != st.emit {
					t.Errorf("%s: emitted %q, want %q", st.name, got, st.emit)
				}
				if got := summary(s.sink, fe); got != st.want {
					t.Errorf("%s: got %s, want %s", st.name, got, st.want)
				}
				checkAgainstFull(t, m, s.sink, st.name)
			}
		})
	}
}

// TestDeltasMatchFullRandomized drives a dual-stack service with random
// endpoint, remote and annotation changes and checks after every flush
// that the patched frontends equal the whole recomputation.
func TestDeltasMatchFullRandomized(t *testing.T) {
	ports := []ServicePort{http, {Name: "dns", Proto: ipproto.UDP, Port: 53}}
	ls := func(a Affinity, global bool) LocalService {
		return LocalService{ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10"), netip.MustParseAddr("fd00::10")},
			Ports: ports, Annotations: Annotations{Global: global, Shared: true, Affinity: a}}
	}
	addr := func(rng *rand.Rand) netip.Addr {
		if rng.IntN(4) == 0 {
			return netip.AddrFrom16([16]byte{0xfd, 0, 15: byte(rng.IntN(12))})
		}
		return netip.AddrFrom4([4]byte{10, 9, 0, byte(rng.IntN(12))})
	}
	for seed := range uint64(30) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 14))
			s := sink{}
			m := New(Config{ClusterID: 1, FailbackShare: 0.5}, s)
			m.SetLocalService(web, ls(AffinityLocal, true))
			held := map[string]EndpointSlice{} // what the merger was last given
			for i := range 300 {
				var what string
				switch op := rng.IntN(25); {
				case op < 10:
					es := EndpointSlice{Ports: []ServicePort{{Name: "http", Proto: ipproto.TCP, Port: 8080}, {Name: "dns", Proto: ipproto.UDP, Port: 5353}}}
					for range rng.IntN(5) {
						es.Endpoints = append(es.Endpoints, Endpoint{Addr: addr(rng), Usable: rng.IntN(3) > 0})
					}
					sl := fmt.Sprint("s", rng.IntN(3))
					what = "slice " + sl
					m.SetEndpointSlice(web, sl, es)
					held[sl] = es
				case op >= 20: // readiness flips, addresses kept (the in-place path)
					sl := fmt.Sprint("s", rng.IntN(3))
					es, ok := held[sl]
					if !ok || len(es.Endpoints) == 0 {
						continue
					}
					es.Endpoints = slices.Clone(es.Endpoints)
					for range 1 + rng.IntN(2) {
						j := rng.IntN(len(es.Endpoints))
						es.Endpoints[j].Usable = !es.Endpoints[j].Usable
					}
					what = "readiness in slice " + sl
					m.SetEndpointSlice(web, sl, es)
					held[sl] = es
				case op < 17:
					c := 2 + rng.IntN(3)
					rs := RemoteService{ClusterID: uint32(c), Shared: rng.IntN(8) > 0, Backends: map[PortKey][]netip.AddrPort{}}
					for range rng.IntN(6) {
						pk := []PortKey{pkH, {"dns", ipproto.UDP}}[rng.IntN(2)]
						rs.Backends[pk] = append(rs.Backends[pk], netip.AddrPortFrom(addr(rng), 8080))
					}
					what = fmt.Sprint("remote c", c)
					m.SetRemote(web, fmt.Sprint("c", c), rs)
				case op < 18:
					c := 2 + rng.IntN(3)
					what = fmt.Sprint("remote c", c, " deleted")
					m.DeleteRemote(web, fmt.Sprint("c", c))
				case op < 19:
					m.DeleteEndpointSlice(web, "s0")
					delete(held, "s0")
					what = "slice s0 deleted"
				default:
					a := []Affinity{AffinityNone, AffinityLocal, AffinityRemote}[rng.IntN(3)]
					what = "service " + string(a)
					m.SetLocalService(web, ls(a, rng.IntN(6) > 0))
				}
				m.Flush()
				checkAgainstFull(t, m, s, fmt.Sprintf("op %d (%s)", i, what))
			}
		})
	}
}

// TestReadinessFlipOfRepeatedAddress: a slice that lists an address twice
// counts its last entry (as when the slice is expanded whole), so flipping
// the first entry changes nothing, also where another slice has the address.
func TestReadinessFlipOfRepeatedAddress(t *testing.T) {
	s := sink{}
	m := New(Config{ClusterID: 1}, s)
	m.SetLocalService(web, localSvc(Annotations{Shared: true}))
	x := netip.MustParseAddr("10.1.0.1")
	port := []ServicePort{{Name: "http", Proto: ipproto.TCP, Port: 8080}}
	m.SetEndpointSlice(web, "b", EndpointSlice{Ports: port, Endpoints: []Endpoint{{x, true}}})
	m.SetEndpointSlice(web, "a", EndpointSlice{Ports: port, Endpoints: []Endpoint{{x, true}, {x, false}}})
	m.Flush()
	for _, usable := range []bool{false, true, false} {
		m.SetEndpointSlice(web, "a", EndpointSlice{Ports: port, Endpoints: []Endpoint{{x, usable}, {x, false}}})
		m.Flush()
		if got := summary(s, fe); got != "1:1x1" {
			t.Fatalf("first entry usable=%v: got %s, want 1:1x1", usable, got)
		}
	}
	m.DeleteEndpointSlice(web, "b")
	m.Flush()
	if got := summary(s, fe); got != "empty" {
		t.Fatalf("after b is gone: got %s, want empty", got)
	}
	checkAgainstFull(t, m, s, "end")
}
