package servicemerge

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// countSink counts what the merger emits and keeps nothing.
type countSink struct{ upserts, deletes, patches int }

func (c *countSink) UpsertService(datapath.Service)  { c.upserts++ }
func (c *countSink) DeleteService(datapath.Frontend) { c.deletes++ }

func (c *countSink) PatchService(datapath.ServicePatch) { c.patches++ }

var benchSizes = []int{100, 1000, 10000}

// BenchmarkOneBackendChange measures one backend change in a global service
// of N backends, including the flush that hands the result to the sink:
// local (one endpoint of a 100-endpoint EndpointSlice flips readiness) and
// remote (one backend of a remote cluster's export is replaced; the export
// is one value, so SetRemote gets the whole list, as from the kvstore).
func BenchmarkOneBackendChange(b *testing.B) {
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("local/%d", n), func(b *testing.B) {
			m := New(Config{ClusterID: 1}, &countSink{})
			m.SetLocalService(web, localSvc(Annotations{Global: true, Shared: true}))
			ss := make([]EndpointSlice, n/100)
			names := make([]string, len(ss))
			for i := range ss {
				ss[i], names[i] = slice(100, 0, fmt.Sprintf("10.%d.%d", 1+i/200, i%200)), fmt.Sprint(i)
				m.SetEndpointSlice(web, names[i], ss[i])
			}
			m.Flush()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				j := i % len(ss) // the slice; its endpoint 0 flips every time
				ss[j].Endpoints[0].Usable = !ss[j].Endpoints[0].Usable
				m.SetEndpointSlice(web, names[j], ss[j])
				m.Flush()
			}
		})
	}
	for _, n := range benchSizes {
		b.Run(fmt.Sprintf("remote/%d", n), func(b *testing.B) {
			m := New(Config{ClusterID: 1}, &countSink{})
			m.SetLocalService(web, localSvc(Annotations{Global: true, Shared: true}))
			m.SetEndpointSlice(web, "a", slice(2, 0, "10.1.0"))
			gens := [2]RemoteService{remoteN(2, n), remoteN(2, n)}
			gens[1].Backends = map[PortKey][]netip.AddrPort{pkH: append([]netip.AddrPort(nil), gens[0].Backends[pkH]...)}
			gens[1].Backends[pkH][n/2] = netip.MustParseAddrPort("10.250.0.1:8080")
			m.SetRemote(web, "c2", gens[0])
			m.Flush()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				m.SetRemote(web, "c2", gens[(i+1)%2])
				m.Flush()
			}
		})
	}
}

// remoteN is a shared export of cluster id with n backends on port http.
func remoteN(id uint32, n int) RemoteService {
	rs := RemoteService{ClusterID: id, Shared: true, Backends: map[PortKey][]netip.AddrPort{}}
	for i := range n {
		a := netip.AddrFrom4([4]byte{10, byte(100 + id), byte(i >> 8), byte(i)})
		rs.Backends[pkH] = append(rs.Backends[pkH], netip.AddrPortFrom(a, 8080))
	}
	return rs
}
