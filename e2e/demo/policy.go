package demo

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/clustermesh/clustermesh/e2e/harness"
)

// webPolicy admits, to c1's app=web pods, only c2's app=client pods on TCP
// 8080.
const webPolicy = `apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web-from-c2, namespace: e2e}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints:
        - matchLabels: {app: client, io.cilium.k8s.policy.cluster: c2}
      toPorts:
        - ports: [{port: "8080", protocol: TCP}]`

// policyStory shows one allowed and one denied cross-cluster request under
// a CiliumNetworkPolicy of c1, each with `policy trace` on the web pod's
// node. The policy stays (the agent status that follows counts its drops).
func policyStory(ctx context.Context, m *harness.Mesh, say func(string, ...any)) error {
	c1, c2, c3 := m.Clusters[0], m.Clusters[1], m.Clusters[2]
	web, err := c1.Nodes[0].AddPod(ctx, "web", map[string]string{"app": "web"})
	if err != nil {
		return err
	}
	allowed, err := c2.Nodes[0].AddPod(ctx, "client", map[string]string{"app": "client"})
	if err != nil {
		return err
	}
	denied, err := c3.Nodes[0].AddPod(ctx, "client", map[string]string{"app": "client"})
	if err != nil {
		return err
	}
	say("\n==> Network policy: pods %s/web (app=web), %s/client and %s/client (app=client)", c1.Name, c2.Name, c3.Name)
	if err := harness.Eventually(30*time.Second, func() error {
		_, err := denied.HTTP(web.HTTPAddr(), time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("before the policy: %w", err)
	}
	say("    without a policy both clients reach %s/web; CiliumNetworkPolicy applied in %s:", c1.Name, c1.Name)
	for _, l := range strings.Split(webPolicy, "\n") {
		say("      %s", l)
	}
	if _, err := c1.ApplyPolicy(ctx, webPolicy); err != nil {
		return err
	}
	applied := time.Now()
	// The datapath enforces it once c3's request stops getting through.
	if err := harness.Eventually(30*time.Second, func() error {
		if _, err := denied.HTTP(web.HTTPAddr(), time.Second); err == nil {
			return errors.New("c3's client still reaches web")
		}
		return nil
	}); err != nil {
		return err
	}
	say("    enforced %v after the API write", time.Since(applied).Round(time.Millisecond))
	node := web.Node
	for _, r := range []struct {
		from  *harness.Pod
		src   string
		allow bool
	}{
		{allowed, "app=client,io.cilium.k8s.policy.cluster=" + c2.Name, true},
		{denied, "app=client,io.cilium.k8s.policy.cluster=" + c3.Name, false},
	} {
		from := r.from.Node.Cluster.Name + "/" + r.from.Name
		s, err := r.from.HTTP(web.HTTPAddr(), 2*time.Second)
		switch {
		case err == nil && r.allow:
			say("\n    %s → %s/web:8080: answered by %s/%s", from, c1.Name, s.Cluster, s.Pod)
		case err != nil && !r.allow:
			say("\n    %s → %s/web:8080: no answer (dropped at %s/%s: %v)", from, c1.Name, node.Cluster.Name, node.Name, err)
		default:
			return fmt.Errorf("%s → web: want allowed %v, got %v %v", from, r.allow, s, err)
		}
		dst := web.Namespace + "/" + web.Name
		_, out, err := node.PolicyTrace(ctx, r.src, dst, "8080/TCP", "table")
		if err != nil {
			return err
		}
		say("    $ clustermesh-agent policy trace --src %s --dst %s --dport 8080/TCP   (on %s/%s)", r.src, dst, node.Cluster.Name, node.Name)
		for _, l := range strings.Split(strings.TrimRight(out, "\n"), "\n") {
			say("    %s", l)
		}
	}
	return nil
}
