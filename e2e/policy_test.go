//go:build e2e

package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// polNS is the Kubernetes namespace of the policy test's pods, in every
// cluster: the policies select nothing of the other tests.
const polNS = "pol"

// policyPods are the policy test's pods: a backend in c1 with clients of
// every cluster. The c1 clients share the backend's node: in full mode the
// cluster's own nodes reach each other through the agents' tunnel, whose
// VNI is believed only from remote clusters' nodes (docs/policy.md).
type policyPods struct {
	backend, c1Client, c2Client, c2Other, c3Client *harness.Pod
	c1Blue, c2Blue                                 *harness.Pod
}

func startPolicyPods(ctx context.Context, t *testing.T, m *harness.Mesh) policyPods {
	t.Helper()
	c1, c2, c3 := m.Clusters[0], m.Clusters[1], m.Clusters[2]
	for _, c := range m.Clusters {
		if err := c.EnsureNamespace(ctx, polNS, nil); err != nil {
			t.Fatal(err)
		}
		if err := c.EnsureNamespace(ctx, "pol-blue", map[string]string{"team": "blue"}); err != nil {
			t.Fatal(err)
		}
	}
	var pp policyPods
	for _, p := range []struct {
		pod    **harness.Pod
		node   *harness.Node
		ns     string
		name   string
		labels map[string]string
	}{
		{&pp.backend, c1.Nodes[0], polNS, "pol-backend", map[string]string{"app": "backend"}},
		{&pp.c1Client, c1.Nodes[0], polNS, "pol-client-c1", map[string]string{"app": "client"}},
		{&pp.c1Blue, c1.Nodes[0], "pol-blue", "pol-blue-c1", map[string]string{"app": "client"}},
		{&pp.c2Client, c2.Nodes[0], polNS, "pol-client-c2", map[string]string{"app": "client"}},
		{&pp.c2Other, c2.Nodes[0], polNS, "pol-other-c2", map[string]string{"app": "other"}},
		{&pp.c2Blue, c2.Nodes[0], "pol-blue", "pol-blue-c2", map[string]string{"app": "client"}},
		{&pp.c3Client, c3.Nodes[0], polNS, "pol-client-c3", map[string]string{"app": "client"}},
	} {
		pod, err := p.node.AddPodIn(ctx, p.ns, p.name, p.labels)
		if err != nil {
			t.Fatal(err)
		}
		*p.pod = pod
		t.Cleanup(func() {
			if err := pod.Delete(context.Background()); err != nil {
				t.Errorf("delete %s: %v", pod.Name, err)
			}
		})
	}
	// Without a policy every client reaches the backend.
	for _, c := range pp.clients() {
		expectHTTP(t, c, pp.backend, true)
	}
	return pp
}

func (pp policyPods) clients() []*harness.Pod {
	return []*harness.Pod{pp.c1Client, pp.c1Blue, pp.c2Client, pp.c2Other, pp.c2Blue, pp.c3Client}
}

// expectHTTP waits until a new HTTP connection from → to is answered by to
// (allowed) or fails (denied); a denial is then confirmed by one more
// failed attempt.
func expectHTTP(t *testing.T, from, to *harness.Pod, allowed bool) {
	t.Helper()
	name := fmt.Sprintf("%s/%s → %s/%s", from.Node.Cluster.Name, from.Name, to.Node.Cluster.Name, to.Name)
	expectVerdict(t, name, allowed, func() (string, error) {
		s, err := from.HTTP(to.HTTPAddr(), time.Second)
		if err == nil && s.Pod != to.Name {
			return fmt.Sprint(s), errWrongServer
		}
		return fmt.Sprint(s), err
	})
}

// errWrongServer is what an attempt of expectVerdict returns when a server
// other than the wanted one answered.
var errWrongServer = errors.New("answered by another server")

// expectVerdict waits until attempt succeeds (allowed) or fails with
// anything but errWrongServer (denied); a denial is then confirmed by one
// more failed attempt. attempt makes one new connection and returns who
// answered.
func expectVerdict(t *testing.T, name string, allowed bool, attempt func() (string, error)) {
	t.Helper()
	start := time.Now()
	err := eventually(30*time.Second, func() error {
		s, err := attempt()
		switch {
		case errors.Is(err, errWrongServer):
			return fmt.Errorf("answered by %s", s)
		case allowed:
			return err
		case err == nil:
			return fmt.Errorf("answered by %s, want denied", s)
		}
		return nil
	})
	if err == nil && !allowed {
		if s, err2 := attempt(); err2 == nil || errors.Is(err2, errWrongServer) {
			err = fmt.Errorf("denied once, then answered by %s", s)
		}
	}
	verdict := map[bool]string{true: "allowed", false: "denied"}[allowed]
	if err != nil {
		t.Errorf("%s: want %s: %v", name, verdict, err)
		return
	}
	t.Logf("%s: %s (after %v)", name, verdict, time.Since(start).Round(time.Millisecond))
}

// expectCountedDenial makes one more attempt from → to that must fail and
// waits until the agent of to's node counts at least one more ingress
// default-deny drop from from's cluster.
func expectCountedDenial(ctx context.Context, t *testing.T, from, to *harness.Pod) {
	t.Helper()
	n, src := to.Node, from.Node.Cluster.Name
	expectCounted(t, fmt.Sprintf("%s → %s", from.Name, to.Name), src, func() (string, error) {
		s, err := from.HTTP(to.HTTPAddr(), time.Second)
		return fmt.Sprint(s), err
	}, func() (harness.AgentStatus, error) { return n.Status(ctx) })
}

// expectCounted makes one more attempt that must fail and waits until the
// agent status (status, of the server's node) counts at least one more
// ingress default-deny drop from the cluster src.
func expectCounted(t *testing.T, name, src string, attempt func() (string, error), status func() (harness.AgentStatus, error)) {
	t.Helper()
	expectCountedIn(t, name, "ingress", src, attempt, status)
}

// expectCountedIn is expectCounted for drops in direction ("ingress", or
// "egress" at the client's node).
func expectCountedIn(t *testing.T, name, direction, src string, attempt func() (string, error), status func() (harness.AgentStatus, error)) {
	t.Helper()
	drops := func() (uint64, error) {
		st, err := status()
		return st.Policy.DropCount(policyDefaultDeny, direction, src), err
	}
	before, err := drops()
	if err != nil {
		t.Fatal(err)
	}
	if s, err := attempt(); err == nil {
		t.Errorf("%s: answered by %s, want denied", name, s)
		return
	}
	var after uint64
	err = eventually(10*time.Second, func() error {
		var err error
		if after, err = drops(); err == nil && after <= before {
			err = fmt.Errorf("%s drops from %s: %d, not more than before the attempt", direction, src, after)
		}
		return err
	})
	if err != nil {
		t.Errorf("%s: %v", name, err)
		return
	}
	t.Logf("%s denied and counted: %s %s drops from %s %d → %d", name, direction, policyDefaultDeny, src, before, after)
}

// policyDefaultDeny is what the agents count drops no deny rule decided as
// (policysync.DefaultDeny).
const policyDefaultDeny = "(default deny)"

// podLabels names a pod of any cluster for `policy trace` by its labels.
func podLabels(p *harness.Pod, app string) string {
	return fmt.Sprintf("app=%s,io.kubernetes.pod.namespace=%s,io.cilium.k8s.policy.cluster=%s", app, p.Namespace, p.Node.Cluster.Name)
}

// expectTrace checks `policy trace` on the backend's node: the verdict and
// the deciding ingress rule or reason (a substring).
func expectTrace(ctx context.Context, t *testing.T, n *harness.Node, src, dst string, allowed bool, want string) {
	t.Helper()
	expectTraced(t, src, dst, allowed, want, func() (harness.Trace, error) {
		tr, _, err := n.PolicyTrace(ctx, src, dst, "8080/TCP", "json")
		return tr, err
	})
}

// expectTraced waits until trace (`policy trace` from src to dst on the
// destination's node) gives the verdict allowed, decided by the ingress
// rule or reason want (a substring).
func expectTraced(t *testing.T, src, dst string, allowed bool, want string, trace func() (harness.Trace, error)) {
	t.Helper()
	var tr harness.Trace
	err := eventually(30*time.Second, func() error {
		var err error
		if tr, err = trace(); err != nil {
			return err
		}
		if tr.Allowed != allowed || !strings.Contains(tr.Ingress.Rule+" "+tr.Ingress.Reason, want) {
			return fmt.Errorf("trace %s → %s: allowed %v, ingress %+v; want allowed %v by %q", src, dst, tr.Allowed, tr.Ingress, allowed, want)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
		return
	}
	t.Logf("trace %s → %s: allowed %v, ingress %+v", src, dst, tr.Allowed, tr.Ingress)
}

func applyPolicy(ctx context.Context, t *testing.T, c *harness.Cluster, manifest string) *unstructured.Unstructured {
	t.Helper()
	u, err := c.ApplyPolicy(ctx, manifest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.DeletePolicy(context.Background(), u); err != nil {
			t.Errorf("delete policy: %v", err)
		}
	})
	return u
}

const cnpAllowC2Clients = `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-c2-clients, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client, io.cilium.k8s.policy.cluster: c2}
`

// httpRule ends an ingress entry of the manifests above with an L7 rule on
// TCP 8080, which the datapath cannot enforce.
const httpRule = `      toPorts:
        - ports: [{port: "8080", protocol: TCP}]
          rules:
            http: [{method: GET}]
`

// TestNetworkPolicyAcrossClusters: policies of c1 on real traffic from
// clients of three clusters (issue 15, §6 e2e).
func TestNetworkPolicyAcrossClusters(t *testing.T) {
	m := mesh(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	c1 := m.Clusters[0]
	pp := startPolicyPods(ctx, t, m)
	backendNode := pp.backend.Node
	backend := polNS + "/" + pp.backend.Name

	t.Run("only c2 clients", func(t *testing.T) {
		applyPolicy(ctx, t, c1, cnpAllowC2Clients)
		expectHTTP(t, pp.c2Client, pp.backend, true)
		for _, p := range []*harness.Pod{pp.c3Client, pp.c2Other, pp.c1Client} {
			expectHTTP(t, p, pp.backend, false)
		}
		expectCountedDenial(ctx, t, pp.c3Client, pp.backend)
		expectCountedDenial(ctx, t, pp.c2Other, pp.backend)
		expectTrace(ctx, t, backendNode, podLabels(pp.c2Client, "client"), backend, true, "cnp/pol/allow-c2-clients ingress[0]")
		expectTrace(ctx, t, backendNode, podLabels(pp.c3Client, "client"), backend, false, "default deny")
		expectTrace(ctx, t, backendNode, podLabels(pp.c2Other, "other"), backend, false, "default deny")
	})

	t.Run("default local cluster both ways", func(t *testing.T) {
		applyPolicy(ctx, t, c1, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: allow-clients, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client}
`)
		// --policy-default-local-cluster=true (the default): the selector
		// without a cluster term selects c1's clients only.
		expectHTTP(t, pp.c1Client, pp.backend, true)
		expectHTTP(t, pp.c2Client, pp.backend, false)
		expectHTTP(t, pp.c3Client, pp.backend, false)
		expectTrace(ctx, t, backendNode, podLabels(pp.c2Client, "client"), backend, false, "default deny")
		// false: clients of every cluster; app=other still denied.
		restartAgent(ctx, t, m, backendNode, "--policy-default-local-cluster=false")
		defer restartAgent(ctx, t, m, backendNode)
		for _, p := range []*harness.Pod{pp.c1Client, pp.c2Client, pp.c3Client} {
			expectHTTP(t, p, pp.backend, true)
		}
		expectHTTP(t, pp.c2Other, pp.backend, false)
		expectTrace(ctx, t, backendNode, podLabels(pp.c3Client, "client"), backend, true, "cnp/pol/allow-clients ingress[0]")
	})

	t.Run("NetworkPolicy namespaceSelector", func(t *testing.T) {
		applyPolicy(ctx, t, c1, `
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-blue, namespace: pol}
spec:
  podSelector: {matchLabels: {app: backend}}
  policyTypes: [Ingress]
  ingress:
    - from:
        - namespaceSelector: {matchLabels: {team: blue}}
      ports:
        - {port: 8080, protocol: TCP}
`)
		expectHTTP(t, pp.c1Blue, pp.backend, true)
		// Another namespace of c1, and the blue namespace of c2 (a
		// selector without a cluster term: the local cluster only).
		expectHTTP(t, pp.c1Client, pp.backend, false)
		expectHTTP(t, pp.c2Blue, pp.backend, false)
		// Only TCP 8080 is allowed, even from blue.
		if s, err := pp.c1Blue.UDP(pp.backend.UDPAddr(), time.Second); err == nil {
			t.Errorf("UDP from blue answered by %v, want denied", s)
		}
		expectTrace(ctx, t, backendNode, "pol-blue/"+pp.c1Blue.Name, backend, true, "knp/pol/from-blue ingress[0]")
	})

	t.Run("relabelled remote pod loses access", func(t *testing.T) {
		applyPolicy(ctx, t, c1, cnpAllowC2Clients)
		expectHTTP(t, pp.c2Client, pp.backend, true)
		start := time.Now()
		if err := pp.c2Client.SetLabels(ctx, map[string]string{"app": "former"}); err != nil {
			t.Fatal(err)
		}
		expectHTTP(t, pp.c2Client, pp.backend, false)
		t.Logf("c2 client relabelled: denied %v after the label change", time.Since(start).Round(time.Millisecond))
		expectCountedDenial(ctx, t, pp.c2Client, pp.backend)
		expectTrace(ctx, t, backendNode, podLabels(pp.c2Client, "former"), backend, false, "default deny")
		if err := pp.c2Client.SetLabels(ctx, map[string]string{"app": "client"}); err != nil {
			t.Fatal(err)
		}
		expectHTTP(t, pp.c2Client, pp.backend, true)
	})

	t.Run("L7 rule refused and changes nothing", func(t *testing.T) {
		applyPolicy(ctx, t, c1, cnpAllowC2Clients)
		expectHTTP(t, pp.c2Client, pp.backend, true)
		expectHTTP(t, pp.c2Other, pp.backend, false)
		// A new policy with an L7 rule that would admit c2's app=other, and
		// an update of the accepted policy that adds one: both refused.
		l7 := applyPolicy(ctx, t, c1, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: l7-other, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: other, io.cilium.k8s.policy.cluster: c2}
`+httpRule)
		if _, err := c1.ApplyPolicy(ctx, cnpAllowC2Clients+httpRule); err != nil {
			t.Fatal(err)
		}
		var refused []string
		err := eventually(30*time.Second, func() error {
			st, err := backendNode.Status(ctx)
			if err != nil {
				return err
			}
			refused = refused[:0]
			for _, r := range st.Policy.Refused {
				refused = append(refused, r.Policy+": "+r.Reason)
			}
			for _, want := range []string{"cnp/pol/l7-other", "cnp/pol/allow-c2-clients"} {
				if !strings.Contains(strings.Join(refused, "\n"), want+":") {
					return fmt.Errorf("agent status refuses %q, want %s", refused, want)
				}
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		t.Logf("refused in the agent status: %q", refused)
		err = eventually(30*time.Second, func() error {
			evs, err := c1.CP.Client.CoreV1().Events(polNS).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + l7.GetName()})
			if err != nil {
				return err
			}
			for _, e := range evs.Items {
				if e.Reason == "PolicyRefused" && e.Type == corev1.EventTypeWarning {
					t.Logf("event on %s: %s", l7.GetName(), e.Message)
					return nil
				}
			}
			return fmt.Errorf("no PolicyRefused event on %s (%d events)", l7.GetName(), len(evs.Items))
		})
		if err != nil {
			t.Error(err)
		}
		err = eventually(60*time.Second, func() error {
			out, err := m.CLIStatus(ctx, "--context="+c1.Name)
			if err != nil {
				return err
			}
			if !strings.Contains(string(out), "policy cnp/pol/l7-other refused by") {
				return fmt.Errorf("clustermesh status does not show the refused policy:\n%s", out)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
		// Nothing changed: the accepted version of allow-c2-clients stays,
		// l7-other admits nobody.
		expectHTTP(t, pp.c2Client, pp.backend, true)
		expectHTTP(t, pp.c2Other, pp.backend, false)
		expectHTTP(t, pp.c3Client, pp.backend, false)
		expectTrace(ctx, t, backendNode, podLabels(pp.c2Client, "client"), backend, true, "cnp/pol/allow-c2-clients ingress[0]")
	})

	t.Run("CIDR egress with except, traced by address", func(t *testing.T) {
		applyPolicy(ctx, t, c1, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: egress-cidr, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: backend}}
  egress:
    - toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]
`)
		for _, tc := range []struct {
			dst     string
			allowed bool
			cidr    bool // the destination has a CIDR identity (else world)
			want    string
		}{
			{"192.0.2.10", true, true, "cnp/pol/egress-cidr egress[0]"},
			{"192.0.2.200", false, true, "default deny"},
			{"198.51.100.10", false, false, "default deny"},
		} {
			err := eventually(30*time.Second, func() error {
				tr, _, err := backendNode.PolicyTrace(ctx, backend, tc.dst, "443/TCP", "json")
				if err != nil {
					return err
				}
				if tr.Allowed != tc.allowed || (tr.DstIdentity>>24 == 1) != tc.cidr || !strings.Contains(tr.Egress.Rule+" "+tr.Egress.Reason, tc.want) {
					return fmt.Errorf("trace → %s: allowed %v, identity %d, egress %+v; want allowed %v by %q", tc.dst, tr.Allowed, tr.DstIdentity, tr.Egress, tc.allowed, tc.want)
				}
				return nil
			})
			if err != nil {
				t.Error(err)
			}
		}
		expectHTTP(t, pp.c2Client, pp.backend, true) // replies pass the backend's egress
	})

	t.Run("egress to the own cluster's pods on another node", func(t *testing.T) {
		// A pod of c1's other node: the backend's node knows it, and it the
		// backend, from the own cluster's ipcache entries (issue #15 §1),
		// not as world.
		peer, err := c1.Nodes[1].AddPodIn(ctx, polNS, "pol-peer-c1", map[string]string{"app": "peer"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if err := peer.Delete(context.Background()); err != nil {
				t.Errorf("delete %s: %v", peer.Name, err)
			}
		})
		expectHTTP(t, peer, pp.backend, true)
		u := applyPolicy(ctx, t, c1, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: peer-egress, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: peer}}
  egress:
    - toEndpoints:
        - matchLabels: {app: backend}
`)
		// The denial first: the policy is in force once it is seen.
		expectHTTP(t, peer, pp.c1Client, false) // same cluster, other node, not selected
		expectHTTP(t, peer, pp.backend, true)
		if err := c1.DeletePolicy(ctx, u); err != nil {
			t.Fatal(err)
		}
		applyPolicy(ctx, t, c1, `
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: peer-egress-world, namespace: pol}
spec:
  endpointSelector: {matchLabels: {app: peer}}
  egress:
    - toEntities: [world]
`)
		expectHTTP(t, peer, pp.backend, false) // a pod of the cluster is not world
	})

	t.Run("no policy, all allowed again", func(t *testing.T) {
		for _, c := range pp.clients() {
			expectHTTP(t, c, pp.backend, true)
		}
		st, err := backendNode.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("drops counted by %s/%s since its last start: %+v", backendNode.Cluster.Name, backendNode.Name, st.Policy.Drops)
	})
}

// restartAgent restarts n's agent with extra flags (none: as the mesh
// started it) and waits until it is ready again and knows the identities
// of its pods in polNS (read from the own cluster's etcd).
func restartAgent(ctx context.Context, t *testing.T, m *harness.Mesh, n *harness.Node, extra ...string) {
	t.Helper()
	n.StopAgent()
	n.ExtraAgentArgs = extra
	if err := n.StartAgent(); err != nil {
		t.Fatal(err)
	}
	if err := m.WaitReady(ctx, time.Minute); err != nil {
		t.Fatal(err)
	}
	var pods []string
	for _, p := range n.Pods {
		if p.Namespace == polNS {
			pods = append(pods, p.Namespace+"/"+p.Name)
		}
	}
	start := time.Now()
	err := eventually(2*time.Minute, func() error {
		for _, p := range pods {
			if _, _, err := n.PolicyTrace(ctx, p, pods[0], "8080/TCP", "json"); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("agent %s/%s restarted %v: knows its pods' identities after %v", n.Cluster.Name, n.Name, extra, time.Since(start).Round(time.Millisecond))
}
