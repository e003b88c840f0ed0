package remotecluster

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

type nopSink struct{}

func (nopSink) UpsertService(datapath.Service)     {}
func (nopSink) DeleteService(datapath.Frontend)    {}
func (nopSink) PatchService(datapath.ServicePatch) {}

// BenchmarkRemoteServiceChange measures what one backend change of a remote
// cluster's export with N backends costs before the merger hands its patch
// on, step by step: decode (the kvstore value: the wire format carries
// every backend of the service in it), convert (remoteService), merge
// (Merger.SetRemote, which compares with the previous export, and Flush).
func BenchmarkRemoteServiceChange(b *testing.B) {
	rem := wire.Remote{Name: "c2", ID: 2, MaxConnectedClusters: 255}
	key := wire.ServiceKey("c2", "shop", "web")
	for _, n := range []int{100, 1000, 10000} {
		var values [2][]byte
		for g := range values {
			cs := wire.ClusterService{Cluster: "c2", Namespace: "shop", Name: "web", Shared: true, ClusterID: 2,
				Backends: map[string]wire.Ports{}}
			for i := range n {
				a := netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)})
				if g == 1 && i == n/2 {
					a = netip.MustParseAddr("10.3.0.1")
				}
				cs.Backends[a.String()] = wire.Ports{"http": {Protocol: "TCP", Port: 8080}}
			}
			v, err := wire.MarshalService(cs)
			if err != nil {
				b.Fatal(err)
			}
			values[g] = v
		}
		var decoded [2]wire.ClusterService
		for g, v := range values {
			cs, err := wire.DecodeService(rem, key, v)
			if err != nil {
				b.Fatal(err)
			}
			decoded[g] = cs
		}
		b.Run(fmt.Sprintf("decode/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if _, err := wire.DecodeService(rem, key, values[i%2]); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(fmt.Sprintf("convert/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				remoteService(decoded[i%2], 2)
			}
		})
		b.Run(fmt.Sprintf("merge/%d", n), func(b *testing.B) {
			m := servicemerge.New(servicemerge.Config{ClusterID: 1}, nopSink{})
			setLocalWeb(m)
			rs := [2]servicemerge.RemoteService{remoteService(decoded[0], 2), remoteService(decoded[1], 2)}
			m.SetRemote(web, "c2", rs[0])
			m.Flush()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				m.SetRemote(web, "c2", rs[(i+1)%2])
				m.Flush()
			}
		})
	}
}
