package policy

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/hostload"
)

// benchEngine builds the engine of issue 15's memory figure: 25,000 remote
// identities (c2, c3) and 200 policies, policy i selecting the local
// identity app=a<i> and admitting the remote clients on port 8000+i.
func benchEngine(b *testing.B) *Engine {
	b.Helper()
	e := New(Config{ClusterName: "c1"})
	for id, l := range selector.Reserved() {
		e.UpsertIdentity(Identity{ID: id, Labels: l})
	}
	for i := range 25000 {
		e.UpsertIdentity(pod(ID(100000+i), []string{"c2", "c3"}[i%2], "shop", []string{"web", "client", "other"}[i%3]))
	}
	for i := range 200 {
		e.UpsertIdentity(pod(ID(1000+i), "c1", "shop", fmt.Sprint("a", i)))
		obj := cnp(fmt.Sprint("p", i), fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"a%d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client"},"matchExpressions":[{"key":"io.cilium.k8s.policy.cluster","operator":"In","values":["c2","c3"]}]}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}]}`, i, 8000+i))
		p, err := rules.Decode([]byte(obj), rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
		if err != nil {
			b.Fatal(err)
		}
		e.UpsertPolicy(p)
	}
	return e
}

// BenchmarkRemoteIdentityChurn measures one remote client identity added
// and removed: 200 endpoints gain and lose one key each.
func BenchmarkRemoteIdentityChurn(b *testing.B) {
	e := benchEngine(b)
	id := pod(999999, "c2", "shop", "client")
	b.ResetTimer()
	for b.Loop() {
		if d := e.UpsertIdentity(id); len(d) != 200 {
			b.Fatalf("%d changes, want 200", len(d))
		}
		e.DeleteIdentity(id.ID)
	}
}

// BenchmarkPolicyUpdate measures replacing one policy (its endpoint is
// recomputed: about 8,300 keys).
func BenchmarkPolicyUpdate(b *testing.B) {
	e := benchEngine(b)
	ports := []int{80, 81}
	i := 0
	b.ResetTimer()
	for b.Loop() {
		obj := cnp("p0", fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"a0"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"%d"}]}]}]}`, ports[i%2]))
		p, err := rules.Decode([]byte(obj), rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
		if err != nil {
			b.Fatal(err)
		}
		e.UpsertPolicy(p)
		i++
	}
}

// BenchmarkResolvedMemory measures the heap the engine holds for issue 15's
// memory figure (25,000 remote identities, 200 policies, 200 local
// endpoints with their resolved keys): live heap after a GC, before and
// after building it. The load average is logged with the figure.
func BenchmarkResolvedMemory(b *testing.B) {
	var e *Engine
	var delta float64
	for b.Loop() {
		e = nil
		before := liveHeap()
		e = benchEngine(b)
		delta = float64(liveHeap()-before) / (1 << 20)
	}
	keys := 0
	for _, ep := range e.Snapshot() {
		keys += len(ep[0].Entries) + len(ep[1].Entries)
	}
	b.ReportMetric(delta, "heap-MB")
	b.ReportMetric(float64(keys), "keys")
	b.Logf("resolved policy: %.1f MB of heap for %d keys of %d endpoints (load average %s)", delta, keys, len(e.Snapshot()), hostload.Average())
	runtime.KeepAlive(e)
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
