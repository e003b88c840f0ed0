package datapath

import (
	"context"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// BenchmarkTCPPolicy measures, in one run, TCP throughput (one stream,
// 300 ms per round) and connect latency across clusters: a client pod of
// node 1 (cluster 2's identity, carried in the VNI and trusted from node 1)
// to two server pods of node 2 through the tunnel, one selected by a policy
// of 1,000 ingress rules (the client's among them, added once the pod is
// seen to be unreachable without it) and one without policy.
// Rounds interleave the two (alternating which goes first); the policy path is reported as a ratio to the
// other (target ≥ 0.95) with the load average.
func BenchmarkTCPPolicy(b *testing.B) {
	testenv.RequireRoot(b)
	topo := netnstest.New(b, netnstest.Config{Nodes: 2, PodsPerNode: 1})
	topo.Nodes[1].AddPod(b)
	client, guarded, open := topo.Nodes[0].Pods[0], topo.Nodes[1].Pods[0], topo.Nodes[1].Pods[1]
	clientID := uint32(2<<16 | 300)
	guardedID, openID := uint32(1<<16|300), uint32(1<<16|301)
	ids := map[netip.Addr]uint32{client.IP: clientID, guarded.IP: guardedID, open.IP: openID}
	var dps []*bpf.Datapath
	for i, n := range topo.Nodes {
		dp, w := openNode(b, n)
		dps = append(dps, dp)
		other := topo.Nodes[1-i]
		batch := datapath.Batch{UpsertTunnels: []datapath.TunnelEntry{{CIDR: other.PodCIDR, NodeIP: other.UnderlayIP}}}
		for _, node := range topo.Nodes {
			for _, p := range node.Pods {
				e := datapath.IPCacheEntry{Prefix: netip.PrefixFrom(p.IP, 32), Identity: ids[p.IP]}
				if node != n {
					e.TunnelEndpoint = node.UnderlayIP
				}
				batch.UpsertIPCache = append(batch.UpsertIPCache, e)
			}
		}
		for _, p := range n.Pods {
			batch.UpsertEndpoints = append(batch.UpsertEndpoints, datapath.Endpoint{IP: p.IP, IfIndex: p.HostIfIndex})
		}
		if err := w.Apply(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	pw, err := bpf.NewPolicyWriter(dps[1], quiet)
	if err != nil {
		b.Fatal(err)
	}
	pol := datapath.PolicyBatch{
		UpsertNodes: []datapath.TrustedNode{{IP: topo.Nodes[0].UnderlayIP, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}},
		Modes:       []datapath.PolicyMode{{Subject: guardedID, Ingress: true}},
	}
	for i := range 999 { // other clients, each on its own port
		pol.Upserts = append(pol.Upserts, datapath.PolicyEntry{Key: datapath.PolicyKey{
			Subject: guardedID, Peer: uint32(2<<16 | 1000 + i), Proto: ipproto.TCP, Port: uint16(6000 + i), EndPort: uint16(6000 + i)}, Rule: uint32(i + 2)})
	}
	if err := pw.Apply(pol); err != nil {
		b.Fatal(err)
	}
	paths := []path{
		{"no-policy", client.NS, open.NS, netip.AddrPortFrom(open.IP, 5001), 5001},
		{"policy", client.NS, guarded.NS, netip.AddrPortFrom(guarded.IP, 5001), 5001},
	}
	for _, p := range paths {
		srv := startSink(b, p.server, p.listen)
		defer srv.close()
	}
	// The guarded pod is reached only once the client's rule is in.
	if c, _, err := dial(client.NS, netip.AddrPortFrom(guarded.IP, 5001)); err == nil {
		c.Close()
		b.Fatal("the client reaches the guarded pod without its rule: the policy is not enforced")
	}
	if err := pw.Apply(datapath.PolicyBatch{Upserts: []datapath.PolicyEntry{{Key: datapath.PolicyKey{
		Subject: guardedID, Peer: clientID, Proto: ipproto.TCP, Port: 5001, EndPort: 5001}, Rule: 1}}}); err != nil {
		b.Fatal(err)
	}
	const rounds = 9
	mbps := map[string][]float64{}
	lat := map[string][]time.Duration{}
	for b.Loop() {
		for r := range rounds {
			for k := range paths {
				p := paths[(k+r)%len(paths)] // alternate which path goes first
				mbps[p.name] = append(mbps[p.name], throughput(b, p.client, p.dial, 300*time.Millisecond))
				lat[p.name] = append(lat[p.name], connectLatency(b, p.client, p.dial, 200)...)
			}
		}
	}
	med := func(xs []float64) float64 { slices.Sort(xs); return xs[len(xs)/2] }
	pct := func(l []time.Duration, q int) time.Duration { slices.Sort(l); return l[len(l)*q/100] }
	base, baseP50 := med(mbps["no-policy"]), pct(lat["no-policy"], 50)
	for _, p := range paths {
		m := med(mbps[p.name])
		p50, p99 := pct(lat[p.name], 50), pct(lat[p.name], 99)
		b.ReportMetric(m, p.name+"-MB/s")
		b.ReportMetric(float64(p50.Microseconds()), p.name+"-connect-p50-µs")
		b.ReportMetric(float64(p99.Microseconds()), p.name+"-connect-p99-µs")
		b.Logf("%-10s %7.0f MB/s (%.2f× no policy)  connect p50 %v (%.2f× no policy) p99 %v",
			p.name, m, m/base, p50, float64(p50)/float64(baseP50), p99)
	}
	b.ReportMetric(med(mbps["policy"])/base, "throughput-ratio")
	b.Logf("load average %s", hostload.Average())
}
