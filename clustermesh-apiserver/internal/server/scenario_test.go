package server

import (
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/clustermesh/clustermesh/internal/kubetest"
)

func TestScenarioNodes(t *testing.T) {
	h := newHarness(t, "nodes", "Nodes created, given an external IP, deleted.")
	h.start()
	h.expect("empty")
	h.node("nodes-a", "192.168.1.1", "10.1.0.0/24", "fd00:1::/64")
	h.node("nodes-b", "192.168.1.2", "10.1.1.0/24")
	h.expect("created")
	n, err := h.cs.CoreV1().Nodes().Get(h.ctx, "nodes-a", metav1GetOptions)
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: "203.0.113.1"})
	if _, err := h.cs.CoreV1().Nodes().UpdateStatus(h.ctx, n, metav1UpdateOptions); err != nil {
		t.Fatal(err)
	}
	h.expect("external-ip-added")
	if err := h.cs.CoreV1().Nodes().Delete(h.ctx, "nodes-b", metav1DeleteOptions); err != nil {
		t.Fatal(err)
	}
	h.expect("deleted")
}

// TestScenarioPodChurn: pods created, relabelled, deleted and moved to
// another IP; identities shared by replicas and released after the grace
// period.
func TestScenarioPodChurn(t *testing.T) {
	h := newHarness(t, "pods", "Pod churn: create, replica with the same identity, host-network pod (not published),\nrelabel (new identity), IP change, delete, identity released after its grace period.")
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	h.clock, h.grace = clk, 10*time.Minute
	h.node("pods-n1", "192.168.2.1", "10.2.0.0/24")
	h.start()
	h.pod("web-1", "pods-n1", "192.168.2.1", map[string]string{"app": "web", "pod-template-hash": "5d8f"}, "10.2.0.11", "fd00:2::11")
	h.expect("one-pod")

	// A replica: same identity. A host-network pod and a pod without IP: nothing.
	h.pod("web-2", "pods-n1", "192.168.2.1", map[string]string{"app": "web", "pod-template-hash": "77aa"}, "10.2.0.12")
	if _, err := kubetest.CreateRunningPod(h.ctx, h.cs, kubetest.PodSpec{
		Namespace: h.ns, Name: "hostnet", NodeName: "pods-n1", HostIP: "192.168.2.1", HostNetwork: true,
		IPs: []string{"192.168.2.1"}, Labels: map[string]string{"app": "agent"},
	}); err != nil {
		t.Fatal(err)
	}
	h.expect("replica")

	h.updatePod("web-1", func(p *corev1.Pod) { p.Labels["app"] = "api" })
	h.expect("relabelled")

	p, err := h.cs.CoreV1().Pods(h.ns).Get(h.ctx, "web-2", metav1GetOptions)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kubetest.SetPodStatus(h.ctx, h.cs, p, []string{"10.2.0.99"}, "192.168.2.1", true); err != nil {
		t.Fatal(err)
	}
	h.expect("ip-changed")

	// web-1 goes: its entries at once, its identity (app=api) after the grace period.
	h.deletePod("web-1", true)
	h.expect("deleted")
	clk.Step(5 * time.Minute)
	h.expect("deleted") // within the grace period: kept
	clk.Step(6 * time.Minute)
	h.expect("identity-released")
}

// TestScenarioServiceAnnotations: which services are exported, with which
// backends, as annotations and pods change. EndpointSlices come from the
// real endpointslice controller.
func TestScenarioServiceAnnotations(t *testing.T) {
	h := newHarness(t, "services", "Global service annotation matrix (global/shared/affinity, aliases, bad values),\nannotation changes, backends not ready or terminating, services deleted.")
	h.node("services-n1", "192.168.3.1", "10.3.0.0/24")
	web := map[string]string{"app": "web"}
	h.pod("web-1", "services-n1", "192.168.3.1", web, "10.3.0.11")
	h.pod("web-2", "services-n1", "192.168.3.1", web, "10.3.0.12")
	h.start()
	matrix := []struct {
		name        string
		annotations map[string]string
	}{
		{"plain", nil},
		{"global", map[string]string{"service.cilium.io/global": "true"}},
		{"global-alias", map[string]string{"io.cilium/global-service": "true"}},
		{"global-upper", map[string]string{"service.cilium.io/global": "True"}},
		{"global-bad", map[string]string{"service.cilium.io/global": "yes"}},
		{"global-false", map[string]string{"service.cilium.io/global": "false"}},
		{"unshared", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "false"}},
		{"unshared-alias", map[string]string{"io.cilium/global-service": "true", "io.cilium/shared-service": "false"}},
		{"shared-bad", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "maybe"}},
		{"shared-true", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/shared": "true"}},
		{"affinity-local", map[string]string{"service.cilium.io/global": "true", "service.cilium.io/affinity": "local"}},
		{"affinity-alias-bad", map[string]string{"service.cilium.io/global": "true", "io.cilium/service-affinity": "sideways"}},
	}
	for i, m := range matrix {
		h.service(m.name, fmt.Sprintf("10.96.3.%d", 10+i), m.annotations)
	}
	for _, m := range matrix {
		h.waitBackends(m.name, "10.3.0.11", "10.3.0.12")
	}
	h.expect("created")

	h.updateService("global", func(s *corev1.Service) { delete(s.Annotations, "service.cilium.io/global") })
	h.updateService("unshared", func(s *corev1.Service) { s.Annotations["service.cilium.io/shared"] = "true" })
	h.updateService("global-bad", func(s *corev1.Service) { s.Annotations["service.cilium.io/global"] = "true" })
	h.expect("annotations-changed")

	// web-2 not ready: no longer a backend. web-1 deleted (it stays
	// terminating: there is no kubelet): serving while terminating, kept.
	if _, err := kubetest.SetPodReady(h.ctx, h.cs, h.ns, "web-2", false); err != nil {
		t.Fatal(err)
	}
	h.deletePod("web-1", false)
	h.waitBackends("global-bad", "10.3.0.11")
	h.expect("backends-changed")

	for _, name := range []string{"global-alias", "unshared"} {
		if err := h.cs.CoreV1().Services(h.ns).Delete(h.ctx, name, metav1DeleteOptions); err != nil {
			t.Fatal(err)
		}
	}
	h.expect("deleted")
}

// TestScenarioRestarts: the clustermesh-apiserver, its etcd and the
// kube-apiserver restart; what is published converges again and identities
// keep their ids.
func TestScenarioRestarts(t *testing.T) {
	h := newHarness(t, "restarts", "Restarts of the clustermesh-apiserver, its etcd and the kube-apiserver, with changes\nwhile each was down; then keys deleted or overwritten by someone else are repaired.")
	h.node("restarts-n1", "192.168.4.1", "10.4.0.0/24")
	h.pod("web-1", "restarts-n1", "192.168.4.1", map[string]string{"app": "web"}, "10.4.0.11")
	h.service("web", "10.96.4.10", map[string]string{"service.cilium.io/global": "true"})
	h.waitBackends("web", "10.4.0.11")
	h.start()
	h.expect("initial")
	// One new label set per step, so that ids are allocated in a known order.
	h.pod("db-1", "restarts-n1", "192.168.4.1", map[string]string{"app": "db"}, "10.4.0.21")
	h.expect("second-identity")

	// apiserver restart, with a change while it was down.
	h.stop()
	h.pod("cache-1", "restarts-n1", "192.168.4.1", map[string]string{"app": "cache"}, "10.4.0.31")
	h.start()
	h.expect("after-apiserver-restart")

	// etcd restart, with a change while it was down.
	h.etcd.Stop()
	h.pod("cache-2", "restarts-n1", "192.168.4.1", map[string]string{"app": "cache"}, "10.4.0.32")
	if err := h.etcd.Restart(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.expect("after-etcd-restart")

	// kube-apiserver restart, then a change.
	h.cp.StopAPIServer()
	if err := h.cp.StartAPIServer(h.ctx); err != nil {
		t.Fatal(err)
	}
	h.pod("queue-1", "restarts-n1", "192.168.4.1", map[string]string{"app": "queue"}, "10.4.0.41")
	h.expect("after-kube-apiserver-restart")

	// Keys changed or deleted behind the apiserver's back are put back.
	etcd := h.kv.Etcd()
	if _, err := etcd.Delete(h.ctx, "cilium/cluster-config/c1"); err != nil {
		t.Fatal(err)
	}
	if _, err := etcd.Put(h.ctx, "cilium/state/nodes/v1/c1/restarts-n1", `{"Name":"evil"}`); err != nil {
		t.Fatal(err)
	}
	h.expect("after-kube-apiserver-restart")
}
