//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/e2e/kubenode"
	"github.com/clustermesh/clustermesh/internal/netns"
)

// installPolicies let only c1's pod echo-a (by its labels) reach c2's
// echo-a, each policy kind the chart lets the agent watch once: c1's echo-b
// has another `pod` label, c2's echo-b another cluster.
var installPolicies = []struct {
	kind, manifest, rule string
}{
	{"CiliumNetworkPolicy", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-c1-echo-a, namespace: default}
spec:
  endpointSelector: {matchLabels: {pod: echo-a}}
  ingress:
    - fromEndpoints:
        - matchLabels: {pod: echo-a, io.cilium.k8s.policy.cluster: c1}
`, "cnp/default/allow-c1-echo-a ingress[0]"},
	{"NetworkPolicy", `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-c1-echo-a, namespace: default}
spec:
  podSelector: {matchLabels: {pod: echo-a}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - podSelector: {matchLabels: {pod: echo-a, io.cilium.k8s.policy.cluster: c1}}
      ports: [{port: 8080, protocol: TCP}]
`, "knp/default/allow-c1-echo-a ingress[0]"},
}

// agentCLI runs the agent image's own CLI against the agent of node,
// in its pod, as `kubectl exec ds/clustermesh-agent -- clustermesh-agent`
// would (the chart's agent.stateDir holds its status socket).
type agentCLI struct {
	node *kubenode.Node
	pod  *corev1.Pod
}

func (a agentCLI) run(args ...string) ([]byte, error) {
	return a.node.Exec(a.pod, append([]string{"/usr/local/bin/clustermesh-agent"}, append(args,
		"--status-socket="+filepath.Join(a.node.AgentState, "agent.sock"), "-o", "json")...)...)
}

func (a agentCLI) status() (harness.AgentStatus, error) {
	var st harness.AgentStatus
	out, err := a.run("status")
	if err == nil {
		err = json.Unmarshal(out, &st)
	}
	return st, err
}

func (a agentCLI) trace(src, dst string) (harness.Trace, error) {
	var tr harness.Trace
	out, err := a.run("policy", "trace", "--src="+src, "--dst="+dst, fmt.Sprintf("--dport=%d/TCP", harness.HTTPPort))
	if err == nil {
		err = json.Unmarshal(out, &tr)
	}
	return tr, err
}

// installPolicyStep is step 11 of TestInstallOnKubelets, once per policy
// kind: a policy of c2 (the CiliumNetworkPolicy's CRD installed by the
// chart) lets only c1's echo-a reach c2's echo-a; c1's echo-b and c2's own
// echo-b are denied at c2's agent, which counts the drop from c1, and
// `policy trace` in the agent's pod names the rule; with the policy deleted
// c1's echo-b passes again.
func installPolicyStep(ctx context.Context, t *testing.T, c1, c2 *kubenode.Cluster, server *corev1.Pod) {
	t.Helper()
	addr := podAddr(server)
	reach := func(from *netns.NS) func() (string, error) {
		return func() (string, error) {
			got, err := httpGetErr(from, addr)
			if err == nil && got != "c2 echo-a" {
				return got, errWrongServer
			}
			return got, err
		}
	}
	allowed, denied, local := podNS(t, c1, "echo-a"), podNS(t, c1, "echo-b"), podNS(t, c2, "echo-b")
	agent := agentCLI{node: c2.Nodes[0], pod: waitAppReady(t, ctx, c2, "clustermesh-agent")}
	dst := "default/" + server.Name
	for _, pol := range installPolicies {
		u, err := harness.ApplyPolicy(ctx, c2.CP.REST, c2.Name, pol.manifest)
		if err != nil {
			t.Fatal(err)
		}
		expectVerdict(t, pol.kind+": c1/echo-b → c2/echo-a", false, reach(denied))
		expectVerdict(t, pol.kind+": c1/echo-a → c2/echo-a", true, reach(allowed))
		expectVerdict(t, pol.kind+": c2/echo-b → c2/echo-a", false, reach(local))
		expectCounted(t, pol.kind+": c1/echo-b → c2/echo-a", "c1", reach(denied), agent.status)
		for _, tc := range []struct {
			name    string
			src     string
			allowed bool
			want    string
		}{
			{"c1 echo-a", "app=echo,pod=echo-a,io.kubernetes.pod.namespace=default,io.cilium.k8s.policy.cluster=c1", true, pol.rule},
			{"c1 echo-b", "app=echo,pod=echo-b,io.kubernetes.pod.namespace=default,io.cilium.k8s.policy.cluster=c1", false, "default deny"},
			{"c2 echo-b", "default/echo-b", false, "default deny"},
		} {
			expectTraced(t, tc.name, dst, tc.allowed, tc.want, func() (harness.Trace, error) { return agent.trace(tc.src, dst) })
		}
		if t.Failed() {
			out, _ := agent.run("policy", "get", dst)
			t.Fatalf("%s on kubelets failed; c2's agent resolves %s as:\n%s", pol.kind, dst, out)
		}
		if err := harness.DeletePolicy(ctx, c2.CP.REST, c2.Name, u); err != nil {
			t.Fatal(err)
		}
		expectVerdict(t, pol.kind+" deleted: c1/echo-b → c2/echo-a", true, reach(denied))
		if t.Failed() {
			t.FailNow()
		}
	}
}

// installWorldPolicy lets c1's echo-a and, on TCP, the world into c2's
// echo-a.
const installWorldPolicy = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-c1-echo-a-and-world, namespace: default}
spec:
  endpointSelector: {matchLabels: {pod: echo-a}}
  ingress:
    - fromEndpoints:
        - matchLabels: {pod: echo-a, io.cilium.k8s.policy.cluster: c1}
    - fromEntities: [world]
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
`

// installWorldStep is step 11b of TestInstallOnKubelets: beside the primary
// CNI, with the cluster's range given (`agent.clusterCIDRs`), a pod in
// ingress default deny is denied to an address outside the cluster (the
// datacenter's gateway, routed to the pod through c2's node) and counted
// as a drop from no cluster; a policy allowing the world entity lets it
// in; c2's agent says the world decision is enforced.
func installWorldStep(ctx context.Context, t *testing.T, dc *netns.NS, c2 *kubenode.Cluster, server *corev1.Pod) {
	t.Helper()
	n := c2.Nodes[0]
	route := fmt.Sprintf("%s/32 via %s", server.Status.PodIP, n.IP)
	if err := dc.Batch("route replace " + route); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := dc.Batch("route del " + route); err != nil {
			t.Errorf("remove the datacenter's route to the pod: %v", err)
		}
	}()
	addr := podAddr(server)
	outside := func() (string, error) {
		got, err := httpGetErr(dc, addr)
		if err == nil && got != "c2 echo-a" {
			return got, errWrongServer
		}
		return got, err
	}
	agent := agentCLI{node: n, pod: waitAppReady(t, ctx, c2, "clustermesh-agent")}
	st, err := agent.status()
	if err != nil {
		t.Fatal(err)
	}
	if w := st.Policy.WorldIngress; !w.Enforced {
		t.Fatalf("c2's agent does not decide world beside the primary CNI: %+v", w)
	}
	expectVerdict(t, "no policy: the datacenter → c2/echo-a", true, outside)
	u, err := harness.ApplyPolicy(ctx, c2.CP.REST, c2.Name, installPolicies[0].manifest)
	if err != nil {
		t.Fatal(err)
	}
	expectVerdict(t, "ingress default deny: the datacenter (world) → c2/echo-a", false, outside)
	expectCounted(t, "the datacenter (world) → c2/echo-a", "", outside, agent.status)
	if err := harness.DeletePolicy(ctx, c2.CP.REST, c2.Name, u); err != nil {
		t.Fatal(err)
	}
	if u, err = harness.ApplyPolicy(ctx, c2.CP.REST, c2.Name, installWorldPolicy); err != nil {
		t.Fatal(err)
	}
	expectVerdict(t, "fromEntities world: the datacenter → c2/echo-a", true, outside)
	if err := harness.DeletePolicy(ctx, c2.CP.REST, c2.Name, u); err != nil {
		t.Fatal(err)
	}
}
