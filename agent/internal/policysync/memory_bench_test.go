package policysync_test

import (
	"fmt"
	"log/slog"
	"runtime"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/hostload"
)

// discard is the memory datapath's policy writer: nothing is kept.
type discard struct{}

func (discard) Apply(datapath.PolicyBatch) error { return nil }

// BenchmarkPolicyPlaneMemory measures issue 15's memory figure on the
// agent's whole policy plane (policywatch, engine, policysync and, but for
// the first case, the eBPF PolicyWriter): 25,000 remote identities of c2
// and c3 (a third of them app=client) and 200 local identities, then 200
// policies, policy i admitting every client of c2 and c3 (≈ 8,333
// identities) on TCP 8000+i to app=a<i>: ≈ 1.67 million resolved keys.
// Live heap after a GC: the identities over the empty plane, the resolved
// policy over the identities (per resolved key); the kernel's memory of
// cm_policy as it reports it (memlock); the keys programmed and the local
// identities refused for want of room. Root for the eBPF cases.
func BenchmarkPolicyPlaneMemory(b *testing.B) {
	for _, tc := range []struct {
		name    string
		entries uint32 // cm_policy capacity; 0: no datapath
	}{
		{"engine+syncer", 0},
		{"eBPF-capacity-1048576", bpf.DefaultPolicyEntries},
		{"eBPF-capacity-2097152", 1 << 21},
	} {
		b.Run(tc.name, func(b *testing.B) {
			for b.Loop() {
				memoryCase(b, tc.entries)
			}
		})
	}
}

func memoryCase(b *testing.B, entries uint32) {
	quiet := slog.New(slog.DiscardHandler)
	var w policysync.Writer = discard{}
	var capacity int
	var dp *bpf.Datapath
	if entries > 0 {
		dp = bpf.OpenForTest(b, bpf.Config{CTEntries: 1024, PolicyEntries: entries})
		pw, err := bpf.NewPolicyWriter(dp, quiet)
		if err != nil {
			b.Fatal(err)
		}
		w, capacity = pw, pw.Capacity()
	}
	base := heapInuse()
	e := policy.New(policy.Config{ClusterName: "c1"})
	s := policysync.New(policysync.Config{Capacity: capacity, Resolved: e}, w, nil)
	watch := policywatch.New(policywatch.Config{}, nil, e, s, quiet)
	for i := range 200 {
		watch.UpsertIdentity(uint32(1<<16|1000+i), labels(b, "app", fmt.Sprint("a", i),
			"io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c1"))
	}
	for j := range 25000 {
		watch.UpsertIdentity(uint32((2+j%2)<<16|1000+j/2), labels(b, "app", []string{"web", "client", "other"}[j%3],
			"io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", []string{"c2", "c3"}[j%2]))
	}
	idents := heapInuse()
	start := time.Now()
	for i := range 200 {
		if err := s.Apply(e.UpsertPolicy(decodePolicy(clientPolicyJSON(i, 8000+i, "")))); err != nil {
			b.Fatal(err)
		}
	}
	took := time.Since(start)
	resolved := heapInuse()
	keys := 0
	for _, ep := range e.Snapshot() {
		keys += len(ep[0].Entries) + len(ep[1].Entries)
	}
	u := s.MapUse()
	mb := func(v uint64) float64 { return float64(v) / (1 << 20) }
	b.ReportMetric(float64(keys), "resolved-keys")
	b.ReportMetric(float64(u.Used), "map-keys")
	b.ReportMetric(float64(len(u.Refused)), "refused-identities")
	b.ReportMetric(mb(resolved-idents), "policy-heap-MB")
	b.ReportMetric(float64(resolved-idents)/float64(keys), "heap-B/key")
	kernel := ""
	if dp != nil {
		memlock, err := dp.PolicyMapMemlock()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(mb(memlock), "cm_policy-memlock-MB")
		kernel = fmt.Sprintf("; cm_policy memlock %.1f MB (%.0f B per map key)", mb(memlock), float64(memlock)/float64(max(u.Used, 1)))
	}
	b.Logf("identities %.1f MB over the empty plane; resolved policy %.1f MB for %d keys (%.0f B/key), %d programmed map keys of capacity %d, %d local identities refused (%d refusals), applied in %v%s (load average %s)",
		mb(idents-base), mb(resolved-idents), keys, float64(resolved-idents)/float64(keys), u.Used, u.Capacity, len(u.Refused), u.Refusals, took.Round(time.Millisecond), kernel, hostload.Average())
	runtime.KeepAlive(s)
	runtime.KeepAlive(w)
}

func heapInuse() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}
