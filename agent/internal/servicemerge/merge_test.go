package servicemerge

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"testing"

	"go.uber.org/goleak"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type sink map[datapath.Frontend]datapath.Service

func (s sink) UpsertService(svc datapath.Service) { s[svc.Frontend] = svc }
func (s sink) DeleteService(f datapath.Frontend)  { delete(s, f) }
func (s sink) PatchService(p datapath.ServicePatch) {
	svc := s[p.Frontend]
	svc.Frontend, svc.Backends = p.Frontend, p.Patch(slices.Clone(svc.Backends))
	s[p.Frontend] = svc
}

var (
	web  = Name{"shop", "web"}
	http = ServicePort{Name: "http", Proto: ipproto.TCP, Port: 80}
	fe   = datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.10:80"), Proto: ipproto.TCP}
	pkH  = PortKey{"http", ipproto.TCP}
)

func localSvc(a Annotations) LocalService {
	return LocalService{ClusterIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Ports: []ServicePort{http}, Annotations: a}
}

func slice(ready int, notReady int, base string) EndpointSlice {
	es := EndpointSlice{Ports: []ServicePort{{Name: "http", Proto: ipproto.TCP, Port: 8080}}}
	for i := range ready + notReady {
		es.Endpoints = append(es.Endpoints, Endpoint{Addr: netip.MustParseAddr(fmt.Sprintf("%s.%d", base, i+1)), Usable: i < ready})
	}
	return es
}

func remote(id uint32, shared bool, n int) RemoteService {
	rs := RemoteService{ClusterID: id, Shared: shared, Backends: map[PortKey][]netip.AddrPort{}}
	for i := range n {
		rs.Backends[pkH] = append(rs.Backends[pkH], netip.MustParseAddrPort(fmt.Sprintf("10.%d.0.%d:8080", id, i+1)))
	}
	return rs
}

// summary renders a service as "cluster:weight" counts, e.g. "1:1x2 2:0x3",
// in that order whatever the order of the backends.
func summary(s sink, f datapath.Frontend) string {
	svc, ok := s[f]
	if !ok {
		return "absent"
	}
	type cw struct {
		c uint32
		w uint16
	}
	counts := map[cw]int{}
	var keys []cw
	for _, b := range svc.Backends {
		k := cw{b.ClusterID, b.Weight}
		if counts[k] == 0 {
			keys = append(keys, k)
		}
		counts[k]++
	}
	slices.SortFunc(keys, func(a, b cw) int { return cmp.Or(cmp.Compare(a.c, b.c), cmp.Compare(a.w, b.w)) })
	out := ""
	for _, k := range keys {
		if out != "" {
			out += " "
		}
		out += fmt.Sprintf("%d:%dx%d", k.c, k.w, counts[k])
	}
	if out == "" {
		return "empty"
	}
	return out
}

// TestAffinitySharedMatrix: 2 local ready backends (cluster 1), remote cluster
// 2 with 3 backends; which backends are selected for each combination.
func TestAffinitySharedMatrix(t *testing.T) {
	tests := []struct {
		name         string
		global       bool
		affinity     Affinity
		remoteShared bool
		localReady   int
		want         string
	}{
		{"local not global", false, AffinityNone, true, 2, "1:1x2"},
		{"remote not shared", true, AffinityNone, false, 2, "1:1x2"},
		{"none", true, AffinityNone, true, 2, "1:1x2 2:1x3"},
		{"local affinity", true, AffinityLocal, true, 2, "1:1x2 2:0x3"},
		{"local affinity no local", true, AffinityLocal, true, 0, "2:1x3"},
		{"local affinity, remote not shared, no local", true, AffinityLocal, false, 0, "empty"},
		{"remote affinity", true, AffinityRemote, true, 2, "1:0x2 2:1x3"},
		{"remote affinity, remote not shared", true, AffinityRemote, false, 2, "1:1x2"},
		{"not global ignores affinity", false, AffinityLocal, true, 0, "empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sink{}
			m := New(Config{ClusterID: 1, FailbackShare: 0.5}, s)
			m.SetLocalService(web, localSvc(Annotations{Global: tt.global, Shared: true, Affinity: tt.affinity}))
			m.SetEndpointSlice(web, "a", slice(tt.localReady, 1, "10.1.0"))
			m.SetRemote(web, "c2", remote(2, tt.remoteShared, 3))
			m.Flush()
			if got := summary(s, fe); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
}

// TestBesideKubeProxy checks what is emitted in coexistence mode (Proxy)
// against full mode: beside kube-proxy every Service with a ClusterIP is
// emitted unless it is not global and kube-proxy keeps it (ProxyOnly), or
// only global ones with GlobalOnly; a Service that changes is withdrawn or
// emitted at the next flush.
func TestBesideKubeProxy(t *testing.T) {
	type step struct {
		global    bool
		proxyOnly string
	}
	var (
		plain    = step{}
		affinity = step{proxyOnly: "sessionAffinity ClientIP"}
		global   = step{global: true}
		globalCA = step{global: true, proxyOnly: "sessionAffinity ClientIP"}
	)
	const (
		coexist       = "coexist"
		coexistGlobal = "coexist, global only"
		full          = "full"
	)
	configs := map[string]Config{
		coexist:       {ClusterID: 1, FailbackShare: 0.5, Proxy: true},
		coexistGlobal: {ClusterID: 1, FailbackShare: 0.5, Proxy: true, GlobalOnly: true},
		full:          {ClusterID: 1, FailbackShare: 0.5},
	}
	tests := []struct {
		name   string
		config string
		steps  []step // the Service over time
		want   string
	}{
		{"not global", coexist, []step{plain}, "1:1x2"},
		{"not global, kept by kube-proxy", coexist, []step{affinity}, "absent"},
		{"global, kube-proxy's reason ignored", coexist, []step{globalCA}, "1:1x2 2:1x3"},
		{"not global, then kept by kube-proxy", coexist, []step{plain, affinity}, "absent"},
		{"kept by kube-proxy, then not", coexist, []step{affinity, plain}, "1:1x2"},
		{"global then not: local backends only", coexist, []step{global, plain}, "1:1x2"},
		{"global only: not global", coexistGlobal, []step{plain}, "absent"},
		{"global only: global", coexistGlobal, []step{global}, "1:1x2 2:1x3"},
		{"global only: global then not", coexistGlobal, []step{global, plain}, "absent"},
		{"global only: not global then global", coexistGlobal, []step{plain, global}, "1:1x2 2:1x3"},
		{"full: no kube-proxy to keep it", full, []step{affinity}, "1:1x2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := sink{}
			m := New(configs[tt.config], s)
			m.SetEndpointSlice(web, "a", slice(2, 0, "10.1.0"))
			m.SetRemote(web, "c2", remote(2, true, 3))
			for _, st := range tt.steps {
				ls := localSvc(Annotations{Global: st.global, Shared: true})
				ls.ProxyOnly = st.proxyOnly
				m.SetLocalService(web, ls)
				m.Flush()
			}
			if got := summary(s, fe); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
			if n := len(m.Snapshot()); n != min(len(s), 1) {
				t.Errorf("snapshot holds %d services, the sink %d frontends", n, len(s))
			}
			kept := m.ProxyOnly()
			last := tt.steps[len(tt.steps)-1]
			wantKept := tt.config == coexist && !last.global && last.proxyOnly != ""
			if wantKept != (len(kept) == 1) || wantKept && (kept[0].Name != web || kept[0].Reason != last.proxyOnly) {
				t.Errorf("ProxyOnly = %+v, want kept %v", kept, wantKept)
			}
		})
	}
}

// TestFailoverFailback walks an affinity=local service through scale to zero
// and back, checking the anti-flood rule.
func TestFailoverFailback(t *testing.T) {
	s := sink{}
	m := New(Config{ClusterID: 1, FailbackShare: 0.5}, s)
	m.SetLocalService(web, localSvc(Annotations{Global: true, Shared: true, Affinity: AffinityLocal}))
	m.SetRemote(web, "c2", remote(2, true, 4))
	steps := []struct {
		name            string
		ready, notReady int
		want            string
	}{
		{"ten local", 10, 0, "1:1x10 2:0x4"},
		{"scaled down to three", 3, 0, "1:1x3 2:0x4"},
		{"zero: failover", 0, 0, "2:1x4"},
		{"scale up, nothing ready", 0, 10, "2:1x4"},
		{"first back: mixed, not flooded", 1, 9, "1:1x1 2:1x4"},
		{"four back: still mixed (target ceil(0.5*10)=5)", 4, 6, "1:1x4 2:1x4"},
		{"five back: failback", 5, 5, "1:1x5 2:0x4"},
		{"drop to two: stays local", 2, 8, "1:1x2 2:0x4"},
		{"zero again", 0, 10, "2:1x4"},
		{"one back: mixed (peak of last episode 5, target 3)", 1, 9, "1:1x1 2:1x4"},
		{"three back: failback", 3, 7, "1:1x3 2:0x4"},
		{"zero, scaled down for good", 0, 0, "2:1x4"},
		{"only two exist: target capped by known local", 2, 0, "1:1x2 2:0x4"},
	}
	for _, st := range steps {
		m.SetEndpointSlice(web, "a", slice(st.ready, st.notReady, "10.1.0"))
		m.Flush()
		if got := summary(s, fe); got != st.want {
			t.Fatalf("%s: got %s, want %s", st.name, got, st.want)
		}
	}
	// The remote goes away while failed over: local-only again.
	m.SetEndpointSlice(web, "a", slice(0, 4, "10.1.0"))
	m.Flush()
	m.DeleteRemote(web, "c2")
	m.SetEndpointSlice(web, "a", slice(1, 3, "10.1.0"))
	m.Flush()
	if got := summary(s, fe); got != "1:1x1" {
		t.Fatalf("remote gone: got %s", got)
	}
}

func TestFrontendsAndPorts(t *testing.T) {
	s := sink{}
	m := New(Config{ClusterID: 1}, s)
	dns := []ServicePort{{Name: "dns", Proto: ipproto.UDP, Port: 53}, {Name: "dns-tcp", Proto: ipproto.TCP, Port: 53}}
	ls := LocalService{
		ClusterIPs:  []netip.Addr{netip.MustParseAddr("10.96.0.53"), netip.MustParseAddr("fd00::53")},
		Ports:       dns,
		Annotations: Annotations{Global: true, Shared: true},
	}
	m.SetLocalService(Name{"kube-system", "dns"}, ls)
	m.SetEndpointSlice(Name{"kube-system", "dns"}, "v4", EndpointSlice{
		Ports:     []ServicePort{{Name: "dns", Proto: ipproto.UDP, Port: 5353}, {Name: "dns-tcp", Proto: ipproto.TCP, Port: 5353}},
		Endpoints: []Endpoint{{netip.MustParseAddr("10.1.0.5"), true}, {netip.MustParseAddr("10.1.0.6"), false}},
	})
	m.SetEndpointSlice(Name{"kube-system", "dns"}, "v6", EndpointSlice{
		Ports:     []ServicePort{{Name: "dns", Proto: ipproto.UDP, Port: 5353}},
		Endpoints: []Endpoint{{netip.MustParseAddr("fd01::5"), true}},
	})
	m.SetRemote(Name{"kube-system", "dns"}, "c2", RemoteService{ClusterID: 2, Shared: true, Backends: map[PortKey][]netip.AddrPort{
		{"dns", ipproto.UDP}:   {netip.MustParseAddrPort("10.2.0.9:53"), netip.MustParseAddrPort("10.2.0.8:53")},
		{"other", ipproto.UDP}: {netip.MustParseAddrPort("10.2.0.7:53")},
	}})
	m.Flush()
	if len(s) != 4 {
		t.Fatalf("want 4 frontends (2 IPs x 2 ports), got %d: %v", len(s), s)
	}
	udp4 := s[datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.53:53"), Proto: ipproto.UDP}]
	want := []datapath.Backend{
		{Addr: netip.MustParseAddrPort("10.1.0.5:5353"), ClusterID: 1, Weight: 1},
		{Addr: netip.MustParseAddrPort("10.2.0.8:53"), ClusterID: 2, Weight: 1},
		{Addr: netip.MustParseAddrPort("10.2.0.9:53"), ClusterID: 2, Weight: 1},
	}
	if !slices.Equal(udp4.Backends, want) {
		t.Fatalf("udp4 backends %v, want %v", udp4.Backends, want)
	}
	udp6 := s[datapath.Frontend{Addr: netip.MustParseAddrPort("[fd00::53]:53"), Proto: ipproto.UDP}]
	if len(udp6.Backends) != 1 || udp6.Backends[0].Addr != netip.MustParseAddrPort("[fd01::5]:5353") {
		t.Fatalf("udp6 backends %v", udp6.Backends)
	}
	tcp4 := s[datapath.Frontend{Addr: netip.MustParseAddrPort("10.96.0.53:53"), Proto: ipproto.TCP}]
	if len(tcp4.Backends) != 1 {
		t.Fatalf("tcp4 backends %v", tcp4.Backends)
	}
	if snap := m.Snapshot(); len(snap) != 1 || len(snap[0].Services) != 4 {
		t.Fatalf("snapshot %+v", snap)
	}

	// Drop a port and the IPv6 address: those frontends are deleted.
	ls.Ports = dns[:1]
	ls.ClusterIPs = ls.ClusterIPs[:1]
	m.SetLocalService(Name{"kube-system", "dns"}, ls)
	m.Flush()
	if len(s) != 1 {
		t.Fatalf("want 1 frontend, got %v", s)
	}
	m.DeleteLocalService(Name{"kube-system", "dns"})
	m.Flush()
	if len(s) != 0 {
		t.Fatalf("want no frontend, got %v", s)
	}
	// The remote export alone programs nothing.
	m.SetRemote(Name{"kube-system", "dns"}, "c2", remote(2, true, 1))
	m.Flush()
	if len(s) != 0 {
		t.Fatalf("remote-only service programmed: %v", s)
	}
}

// TestEndpointMovesBetweenSlices: an endpoint present in two slices during a
// move stays a backend until it is gone from both.
func TestEndpointMovesBetweenSlices(t *testing.T) {
	s := sink{}
	m := New(Config{ClusterID: 1}, s)
	m.SetLocalService(web, localSvc(Annotations{Shared: true}))
	m.SetEndpointSlice(web, "a", slice(2, 0, "10.1.0"))
	m.SetEndpointSlice(web, "b", slice(1, 0, "10.1.0")) // 10.1.0.1 in both
	m.Flush()
	if got := summary(s, fe); got != "1:1x2" {
		t.Fatalf("got %s", got)
	}
	m.DeleteEndpointSlice(web, "a")
	m.Flush()
	if got := summary(s, fe); got != "1:1x1" {
		t.Fatalf("after delete of a: got %s", got)
	}
	m.SetEndpointSlice(web, "b", slice(0, 1, "10.1.0"))
	m.Flush()
	if got := summary(s, fe); got != "empty" {
		t.Fatalf("after not-ready: got %s", got)
	}
}
