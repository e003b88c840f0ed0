package policysync_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policysync"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/hostload"
	"github.com/clustermesh/clustermesh/internal/ipproto"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/internal/testwait"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// latencySetup is the agent's policy plane (engine, policywatch, policysync)
// on a real eBPF datapath, with 25,000 remote identities (clients of c2
// and c3 in 200 teams) and 200 policies, policy i admitting the clients
// of team t<i> on TCP 8000+i to the local identity app=a<i>.
type latencySetup struct {
	engine *policy.Engine
	watch  *policywatch.Watcher
	sync   *policysync.Syncer
	dp     *bpf.Datapath // cm_policy read back
	// With a kube-apiserver: the policies as last written there.
	dc   dynamic.Interface
	objs []*unstructured.Unstructured
}

func labels(b testing.TB, kv ...string) wire.Labels {
	var ls []wire.Label
	for i := 0; i < len(kv); i += 2 {
		ls = append(ls, wire.Label{Source: "k8s", Key: kv[i], Value: kv[i+1]})
	}
	l, err := wire.NewLabels(ls...)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// teamPolicyJSON is policy p<i>: app=a<i> admits the clients of team t<i>
// of c2 and c3 on TCP port.
func teamPolicyJSON(i, port int) string {
	return clientPolicyJSON(i, port, fmt.Sprintf(`,"team":"t%d"`, i))
}

// clientPolicyJSON is policy p<i>: app=a<i> admits the clients of c2 and
// c3 with the extra labels team (JSON members) on TCP port.
func clientPolicyJSON(i, port int, team string) string {
	return fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p%d","namespace":"shop"},"spec":{"endpointSelector":{"matchLabels":{"app":"a%d"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client"%s},"matchExpressions":[{"key":"io.cilium.k8s.policy.cluster","operator":"In","values":["c2","c3"]}]}],"toPorts":[{"ports":[{"port":"%d","protocol":"TCP"}]}]}]}}`, i, i, team, port)
}

func teamPolicy(i, port int) rules.Policy { return decodePolicy(teamPolicyJSON(i, port)) }

func decodePolicy(obj string) rules.Policy {
	p, err := rules.Decode([]byte(obj), rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
	if err != nil {
		panic(err)
	}
	return p
}

// newLatencySetup builds the setup; with dc the policies are written to
// the kube-apiserver and reach the engine through policywatch's informers
// (its Run is stopped at the end of b), else they are handed to the engine
// and policysync directly.
func newLatencySetup(b *testing.B, dc dynamic.Interface) *latencySetup {
	quiet := slog.New(slog.DiscardHandler)
	dp := bpf.OpenForTest(b, bpf.Config{CTEntries: 65536})
	pw, err := bpf.NewPolicyWriter(dp, quiet)
	if err != nil {
		b.Fatal(err)
	}
	s := &latencySetup{engine: policy.New(policy.Config{ClusterName: "c1"}), dp: dp, dc: dc}
	s.sync = policysync.New(policysync.Config{Capacity: pw.Capacity(), Resolved: s.engine}, pw, nil)
	opts := rules.DefaultOptions()
	opts.ClusterName = "c1"
	s.watch = policywatch.New(policywatch.Config{Options: opts}, dc, s.engine, s.sync, quiet)
	for i := range 200 {
		s.watch.UpsertIdentity(uint32(1<<16|1000+i), labels(b, "app", fmt.Sprint("a", i),
			"io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c1"))
	}
	for j := range 25000 {
		cluster := []string{"c2", "c3"}[j%2]
		s.watch.UpsertIdentity(uint32((2+j%2)<<16|1000+j/2), labels(b, "app", "client", "team", fmt.Sprint("t", j%200),
			"io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", cluster))
	}
	if dc == nil {
		for i := range 200 {
			if err := s.sync.Apply(s.engine.UpsertPolicy(teamPolicy(i, 8000+i))); err != nil {
				b.Fatal(err)
			}
		}
		return s
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.watch.Run(ctx) }()
	b.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			b.Error(err)
		}
	})
	for i := range 200 {
		var obj map[string]any
		if err := json.Unmarshal([]byte(teamPolicyJSON(i, 8000+i)), &obj); err != nil {
			b.Fatal(err)
		}
		u, err := dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
		if err != nil {
			b.Fatal(err)
		}
		s.objs = append(s.objs, u)
	}
	testwait.Until(b, 2*time.Minute, "200 policies enforced", func() (bool, string) {
		for i := range 200 {
			if !s.present(uint32(1<<16|1000+i), uint32((2+i%2)<<16|1000+i/2), uint16(8000+i)) {
				return false, fmt.Sprint("p", i)
			}
		}
		return true, ""
	})
	return s
}

// setPort writes policy p<i> with port to the kube-apiserver.
func (s *latencySetup) setPort(b *testing.B, i, port int) {
	u := s.objs[i].DeepCopy()
	ports := u.Object["spec"].(map[string]any)["ingress"].([]any)[0].(map[string]any)["toPorts"].([]any)[0].(map[string]any)["ports"].([]any)
	ports[0].(map[string]any)["port"] = fmt.Sprint(port)
	u, err := s.dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").Update(context.Background(), u, metav1.UpdateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	s.objs[i] = u
}

// present reports whether cm_policy holds the allow key (subject, peer,
// TCP, port).
func (s *latencySetup) present(subject, peer uint32, port uint16) bool {
	ok, err := s.dp.PolicyKeyPresent(datapath.PolicyKey{Subject: subject, Peer: peer, Proto: ipproto.TCP, Port: port, EndPort: port}, false)
	if err != nil {
		panic(err)
	}
	return ok
}

func report(b *testing.B, name string, lat []time.Duration) {
	slices.Sort(lat)
	p50, p99 := lat[len(lat)/2], lat[len(lat)*99/100]
	b.ReportMetric(float64(p50.Microseconds()), name+"-p50-µs")
	b.ReportMetric(float64(p99.Microseconds()), name+"-p99-µs")
	b.Logf("%s: p50 %v p99 %v over %d events (load average %s)", name, p50, p99, len(lat), hostload.Average())
}

// BenchmarkPolicyPropagation measures, on the agent's policy plane over a
// real eBPF datapath (25,000 remote identities, 200 policies): a remote
// identity added (the call remotecluster makes on a watch event, through
// policywatch, the engine and policysync) until its allow key is in the
// pinned cm_policy; and a policy changed (decoded, as policywatch's
// reconcile does, into the engine and policysync) until the key of its new
// port is there. 200 events each; p50 and p99 with the load average.
func BenchmarkPolicyPropagation(b *testing.B) {
	s := newLatencySetup(b, nil)
	const events = 200
	var added, changed []time.Duration
	round := 0
	for b.Loop() {
		round++
		for n := range events {
			i := n % 200
			id := uint32(2<<16 | 30000 + n)
			ls := labels(b, "app", "client", "team", fmt.Sprint("t", i), "io.kubernetes.pod.namespace", "shop", "io.cilium.k8s.policy.cluster", "c2")
			start := time.Now()
			s.watch.UpsertIdentity(id, ls)
			for !s.present(uint32(1<<16|1000+i), id, uint16(8000+i)) {
				if time.Since(start) > 5*time.Second {
					b.Fatalf("identity %d never allowed", id)
				}
			}
			added = append(added, time.Since(start))
			s.watch.DeleteIdentity(id)
		}
		for n := range events {
			i, port := n%200, 9000+(round%200)*events+n
			start := time.Now()
			if err := s.sync.Apply(s.engine.UpsertPolicy(teamPolicy(i, port))); err != nil {
				b.Fatal(err)
			}
			for !s.present(uint32(1<<16|1000+i), uint32((2+i%2)<<16|1000+i/2), uint16(port)) {
				if time.Since(start) > 5*time.Second {
					b.Fatalf("policy p%d never enforced on port %d", i, port)
				}
			}
			changed = append(changed, time.Since(start))
		}
	}
	report(b, "identity-added", added)
	report(b, "policy-changed", changed)
}

// BenchmarkPolicyPropagationInformer measures a policy change through the
// whole agent path: a CiliumNetworkPolicy updated in a real kube-apiserver
// (the chart's CRDs; KUBE_BIN_DIR), policywatch's informer and reconcile,
// the engine, policysync, the eBPF writer, until the key of the new port
// is in the pinned cm_policy. Same 25,000 identities and 200 policies as
// BenchmarkPolicyPropagation; 200 updates, p50 and p99 with the load.
func BenchmarkPolicyPropagationInformer(b *testing.B) {
	testenv.RequireRoot(b)
	cp := kubetest.StartForTest(b, kubetest.Config{Name: "policybench"})
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dc, err := dynamic.NewForConfig(cp.REST)
	if err != nil {
		b.Fatal(err)
	}
	if err := kubetest.InstallCRDs(ctx, dc, deploy.ChartFS(), "crds/ciliumnetworkpolicies.yaml", "crds/ciliumclusterwidenetworkpolicies.yaml"); err != nil {
		b.Fatal(err)
	}
	if err := kubetest.EnsureNamespace(ctx, cp.Client, "shop"); err != nil {
		b.Fatal(err)
	}
	testwait.Until(b, time.Minute, "CRDs served", func() (bool, string) {
		_, err1 := dc.Resource(policywatch.GVRCiliumPolicy).Namespace("shop").List(ctx, metav1.ListOptions{})
		_, err2 := dc.Resource(policywatch.GVRClusterwide).List(ctx, metav1.ListOptions{})
		return err1 == nil && err2 == nil, ""
	})
	s := newLatencySetup(b, dc)
	const events = 200
	var changed, written []time.Duration
	round := 0
	for b.Loop() {
		round++
		for n := range events {
			i, port := n%200, 9000+(round%200)*events+n
			start := time.Now()
			s.setPort(b, i, port)
			written = append(written, time.Since(start))
			for !s.present(uint32(1<<16|1000+i), uint32((2+i%2)<<16|1000+i/2), uint16(port)) {
				if time.Since(start) > 10*time.Second {
					b.Fatalf("policy p%d never enforced on port %d", i, port)
				}
			}
			changed = append(changed, time.Since(start))
		}
	}
	if f := s.watch.Failures(); f != 0 {
		b.Errorf("%d datapath failures", f)
	}
	report(b, "policy-changed-informer", changed)
	report(b, "of-which-update-call", written)
}
