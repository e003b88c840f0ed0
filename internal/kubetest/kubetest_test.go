package kubetest

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// TestEndpointSliceFromFakeKubelet checks the whole harness: the real
// endpointslice controller lists a pod whose status the harness set, and
// drops it when the harness marks it unready; the data survives a
// kube-apiserver restart.
func TestEndpointSliceFromFakeKubelet(t *testing.T) {
	cp := StartForTest(t, Config{Name: "c1"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cs := cp.Client

	if err := EnsureNamespace(ctx, cs, "shop"); err != nil {
		t.Fatal(err)
	}
	if _, err := CreateNode(ctx, cs, NodeSpec{Name: "n1", InternalIP: "192.168.50.1", PodCIDRs: []string{"10.1.1.0/24"}}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}},
		},
	}
	if _, err := cs.CoreV1().Services("shop").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err := CreateRunningPod(ctx, cs, PodSpec{
		Namespace: "shop", Name: "web-1", NodeName: "n1", Labels: map[string]string{"app": "web"},
		IPs: []string{"10.1.1.10"}, HostIP: "192.168.50.1",
		Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
	})
	if err != nil {
		t.Fatal(err)
	}
	waitSlice(ctx, t, cp, func(ready []string) bool { return len(ready) == 1 && ready[0] == "10.1.1.10" })

	cp.StopAPIServer()
	if err := cp.StartAPIServer(ctx); err != nil {
		t.Fatalf("restart kube-apiserver: %v", err)
	}
	if _, err := SetPodReady(ctx, cs, "shop", "web-1", false); err != nil {
		t.Fatal(err)
	}
	waitSlice(ctx, t, cp, func(ready []string) bool { return len(ready) == 0 })
}

// waitSlice polls the service's EndpointSlices until cond holds for the
// addresses of ready endpoints.
func waitSlice(ctx context.Context, t *testing.T, cp *ControlPlane, cond func(ready []string) bool) {
	t.Helper()
	var ready []string
	for ctx.Err() == nil {
		ready = nil
		list, err := cp.Client.DiscoveryV1().EndpointSlices("shop").List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=web"})
		if err == nil {
			for _, s := range list.Items {
				for _, ep := range s.Endpoints {
					if ep.Conditions.Ready != nil && *ep.Conditions.Ready {
						ready = append(ready, ep.Addresses...)
					}
				}
			}
			if len(list.Items) > 0 && cond(ready) {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("endpointslice never reached the expected state; last ready addresses %v\nkube-controller-manager log:\n%s", ready, cp.LogTail("kube-controller-manager", 3000))
}
