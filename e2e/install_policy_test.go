//go:build e2e

package e2e

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

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

// installServiceEgress are the egress policies of c2's echo-b in step 11c:
// to echo-a by its labels, then to the world entity only.
var installServiceEgress = []struct {
	name, manifest string
	allowed        bool
	want           string // in the backend's egress verdict
}{
	{"toEndpoints echo-a", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-b-to-echo-a, namespace: default}
spec:
  endpointSelector: {matchLabels: {pod: echo-b}}
  egress:
    - toEndpoints:
        - matchLabels: {pod: echo-a}
`, true, "cnp/default/echo-b-to-echo-a egress[0]"},
	{"toEntities world", `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: echo-b-to-world, namespace: default}
spec:
  endpointSelector: {matchLabels: {pod: echo-b}}
  egress:
    - toEntities: [world]
`, false, "default deny"},
}

// installServiceEgressStep is step 11c of TestInstallOnKubelets: beside
// kube-proxy, a pod's egress to a ClusterIP Service that is not global is
// decided against the backend's identity. c2's echo-b reaches a Service of
// c2's echo-a through its ClusterIP without a policy, with a policy
// allowing toEndpoints echo-a, and not with one allowing only world (which
// let it through while kube-proxy translated the address after the pod's
// program had decided it as world); the denial is counted at c2's agent
// and `policy trace` to the ClusterIP names echo-a's identity and the rule.
func installServiceEgressStep(ctx context.Context, t *testing.T, c2 *kubenode.Cluster, backend *corev1.Pod) {
	t.Helper()
	ip := createServiceFor(t, ctx, c2, "echo-a-only", nil, map[string]string{"pod": "echo-a"})
	addr := net.JoinHostPort(ip, "80")
	client := podNS(t, c2, "echo-b")
	reach := func() (string, error) {
		got, err := httpGetErr(client, addr)
		if err == nil && got != "c2 echo-a" {
			return got, errWrongServer
		}
		return got, err
	}
	agent := agentCLI{node: c2.Nodes[0], pod: waitAppReady(t, ctx, c2, "clustermesh-agent")}
	backendID, err := ownPodIdentity(ctx, filepath.Join(c2.Nodes[0].AgentState, "agent.sock"), "default/"+backend.Name, uint32(c2.ID))
	if err != nil {
		t.Fatal(err)
	}
	expectVerdict(t, "no policy: c2/echo-b → ClusterIP of echo-a", true, reach)
	for _, pol := range installServiceEgress {
		u, err := harness.ApplyPolicy(ctx, c2.CP.REST, c2.Name, pol.manifest)
		if err != nil {
			t.Fatal(err)
		}
		name := pol.name + ": c2/echo-b → ClusterIP " + ip + " of echo-a"
		expectVerdict(t, name, pol.allowed, reach)
		if !pol.allowed {
			expectCountedIn(t, name, "egress", c2.Name, reach, agent.status)
		}
		var tr harness.Trace
		err = eventually(30*time.Second, func() error {
			out, err := agent.run("policy", "trace", "--src=default/echo-b", "--dst="+ip, "--dport=80/TCP")
			if err != nil {
				return fmt.Errorf("%w: %s", err, out)
			}
			tr = harness.Trace{}
			if err := json.Unmarshal(out, &tr); err != nil {
				return err
			}
			if tr.Service != "default/echo-a-only" || len(tr.Backends) != 1 || tr.Allowed != pol.allowed {
				return fmt.Errorf("trace %+v: want service default/echo-a-only, one backend, allowed %v", tr, pol.allowed)
			}
			b := tr.Backends[0]
			if b.Identity != backendID || b.Address != net.JoinHostPort(backend.Status.PodIP, strconv.Itoa(harness.HTTPPort)) ||
				!strings.Contains(b.Egress.Rule+" "+b.Egress.Reason, pol.want) {
				return fmt.Errorf("backend %+v: want %s:%d, identity %d, egress by %q", b, backend.Status.PodIP, harness.HTTPPort, backendID, pol.want)
			}
			return nil
		})
		if err != nil {
			t.Errorf("%s: %v", name, err)
		} else {
			b := tr.Backends[0]
			t.Logf("%s: trace names the backend %s (identity %d), egress: %s", name, b.Address, b.Identity, cmp.Or(b.Egress.Rule, b.Egress.Reason))
		}
		if err := harness.DeletePolicy(ctx, c2.CP.REST, c2.Name, u); err != nil {
			t.Fatal(err)
		}
		if t.Failed() {
			out, _ := agent.run("policy", "get", "default/echo-b")
			t.Fatalf("service egress on kubelets failed; c2's agent resolves default/echo-b as:\n%s", out)
		}
	}
}
