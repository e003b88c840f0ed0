package remotecluster

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// BenchmarkRemoteIdentityToPolicyMap measures issue 15's "remote identity
// added → allowed" from the remote's kvstore: an identity written to c2's
// etcd (as its clustermesh-apiserver does), the agent's watch of it
// (remotecluster), policywatch, the engine, policysync and the eBPF
// writer, until the identity's allow key is in cm_policy. c2 holds 25,000
// client identities in 200 teams; 200 local identities, policy p<i>
// admitting team t<i> of c2 on TCP 8000+i. 200 puts (each deleted after),
// p50 and p99 with the load average. Root and KUBE_BIN_DIR.
func BenchmarkRemoteIdentityToPolicyMap(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	dp := bpf.OpenForTest(b, bpf.Config{CTEntries: 1024})
	pw, err := bpf.NewPolicyWriter(dp, quiet)
	if err != nil {
		b.Fatal(err)
	}
	// The policy watcher runs on a real kube-apiserver as in the agent
	// (the policies below are handed to the engine directly, before the
	// remote is connected).
	cp := kubetest.StartForTest(b, kubetest.Config{Name: "identitybench"})
	dc, err := dynamic.NewForConfig(cp.REST)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := kubetest.InstallCRDs(ctx, dc, deploy.ChartFS(), "crds/ciliumnetworkpolicies.yaml", "crds/ciliumclusterwidenetworkpolicies.yaml"); err != nil {
		b.Fatal(err)
	}
	e := policy.New(policy.Config{ClusterName: ownName})
	s := policysync.New(policysync.Config{Capacity: pw.Capacity(), Resolved: e}, pw, nil)
	w := policywatch.New(policywatch.Config{}, dc, e, s, quiet)
	lbl := func(kv ...string) wire.Labels {
		var ls []wire.Label
		for i := 0; i < len(kv); i += 2 {
			ls = append(ls, wire.Label{Source: "k8s", Key: kv[i], Value: kv[i+1]})
		}
		return must(wire.NewLabels(ls...))
	}
	client := func(team int) wire.Labels {
		return lbl("app", "client", "team", fmt.Sprint("t", team), "io.kubernetes.pod.namespace", "shop", wire.ClusterLabelKey, "c2")
	}
	for i := range 200 {
		w.UpsertIdentity(ownID<<16|uint32(1000+i), lbl("app", fmt.Sprint("a", i), "io.kubernetes.pod.namespace", "shop", wire.ClusterLabelKey, ownName))
		p, err := rules.Decode([]byte(fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p%d","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"a%d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","team":"t%d","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}]}}`, i, i, i, 8000+i)),
			rules.Options{ClusterName: ownName, DefaultLocalCluster: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Apply(e.UpsertPolicy(p)); err != nil {
			b.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	c2 := startRemote(b, "c2", 2)
	put := func(local uint32, team int) uint32 {
		id := c2.identity(local)
		c2.put(wire.IdentityKey(id), must(wire.MarshalIdentity(wire.Identity{ID: id, Labels: client(team)})))
		return id
	}
	for j := range 25000 {
		put(uint32(1000+j), j%200)
	}
	c2.canaries()
	allowed := func(subject, peer uint32, port uint16) bool {
		ok, err := dp.PolicyKeyPresent(datapath.PolicyKey{Subject: subject, Peer: peer, Proto: ipproto.TCP, Port: port, EndPort: port}, false)
		if err != nil {
			b.Fatal(err)
		}
		return ok
	}
	cfg := testConfig(b.TempDir(), b.TempDir())
	cfg.Identities = w
	startAgent(b, cfg, memory.New(), nil)
	c2.writeConfig(cfg.Dir)
	testwait.Until(b, 3*time.Minute, "c2's 25,000 identities allowed", func() (bool, string) {
		return allowed(ownID<<16|1199, c2.identity(1000+24999), 8199), ""
	})

	const events = 200
	var lat []time.Duration
	round := 0
	for b.Loop() {
		round++
		for n := range events {
			i := n % 200
			local := uint32(30000 + (round%100)*events + n)
			start := time.Now()
			id := put(local, i)
			for !allowed(ownID<<16|uint32(1000+i), id, uint16(8000+i)) {
				if time.Since(start) > 10*time.Second {
					b.Fatalf("identity %d never allowed", id)
				}
			}
			lat = append(lat, time.Since(start))
			c2.del(wire.IdentityKey(id))
		}
	}
	if f := w.Failures(); f != 0 {
		b.Errorf("%d datapath failures", f)
	}
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(float64(p50.Microseconds()), "p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), "p99-µs")
	b.Logf("remote identity put in etcd → allowed in cm_policy: p50 %v p99 %v over %d puts (load average %s)", p50, p99, len(lat), hostload.Average())
}
