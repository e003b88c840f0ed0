package pods

import (
	"encoding/json"
	"net/netip"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestIsSecurityLabel checks the filter against Cilium 1.18's default
// label filter, key by key.
func TestIsSecurityLabel(t *testing.T) {
	for key, want := range map[string]bool{
		"app":                                      true,
		"tier":                                     true,
		"example.com/team":                         true,
		"app.kubernetes.io/name":                   true,
		"job-name":                                 true, // Cilium ignores only Jobs' controller-uid
		"batch.kubernetes.io/job-name":             true,
		"topology.kubernetes.io/zone":              true, // kubernetes.io is ignored only as the key's start
		"node.k8s.io/x":                            true,
		"notkubernetes.io/x":                       true,
		"io.kubernetes.pod.namespace":              true,
		"io.cilium.k8s.policy.cluster":             true,
		"io.cilium.k8s.policy.serviceaccount":      true,
		"io.cilium.k8s.namespace.labels.team":      true,
		"pod-template-hash":                        false,
		"controller-revision-hash":                 false,
		"pod-template-generation":                  false,
		"controller-uid":                           false,
		"etcd_node":                                false,
		"statefulset.kubernetes.io/pod-name":       false,
		"apps.kubernetes.io/pod-index":             false,
		"batch.kubernetes.io/controller-uid":       false,
		"batch.kubernetes.io/job-completion-index": false,
		"beta.kubernetes.io/arch":                  false,
		"failure-domain.beta.kubernetes.io/zone":   false,
		"kubernetes.io/hostname":                   false,
		"k8s.io/x":                                 false,
		"io.kubernetes.container.name":             false,
		"annotation.foo":                           false,
	} {
		if got := IsSecurityLabel(key); got != want {
			t.Errorf("IsSecurityLabel(%q) = %v, want %v", key, got, want)
		}
	}
}

func TestSecurityLabels(t *testing.T) {
	for _, tc := range []struct {
		name string
		id   Identity
		want string
	}{
		{
			name: "pod, namespace labels, service account",
			id: Identity{
				PodLabels: map[string]string{"app": "web", "pod-template-hash": "abc", "io.cilium.k8s.policy.cluster": "spoofed",
					"io.cilium.k8s.policy.serviceaccount": "spoofed", "a.b": "1", "a": "2"},
				Namespace: "shop", NamespaceLabels: map[string]string{"team": "blue", "kubernetes.io/metadata.name": "shop"},
				ServiceAccount: "web", Cluster: "c1",
			},
			want: "k8s:a=2;k8s:a.b=1;k8s:app=web;k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name=shop;" +
				"k8s:io.cilium.k8s.namespace.labels.team=blue;k8s:io.cilium.k8s.policy.cluster=c1;" +
				"k8s:io.cilium.k8s.policy.serviceaccount=web;k8s:io.kubernetes.pod.namespace=shop;",
		},
		{
			name: "no service account, no namespace labels",
			id:   Identity{PodLabels: map[string]string{"app": "web"}, Namespace: "shop", Cluster: "c1"},
			want: "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;",
		},
		{
			name: "a pod cannot set a namespace label",
			id: Identity{PodLabels: map[string]string{"io.cilium.k8s.namespace.labels.team": "red"}, Namespace: "shop",
				NamespaceLabels: map[string]string{"team": "blue"}, Cluster: "c1"},
			want: "k8s:io.cilium.k8s.namespace.labels.team=blue;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;",
		},
		{
			name: "labels a value cannot carry are dropped",
			id:   Identity{PodLabels: map[string]string{"x": "a;b"}, Namespace: "shop", NamespaceLabels: map[string]string{"y": "c;d"}, Cluster: "c1"},
			want: "k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ls, err := SecurityLabels(tc.id)
			if err != nil {
				t.Fatal(err)
			}
			if got := ls.Format(); got != tc.want {
				t.Fatalf("got  %s\nwant %s", got, tc.want)
			}
			if _, err := wire.ParseLabels(tc.want); err != nil {
				t.Fatalf("not a valid wire label string: %v", err)
			}
		})
	}
}

func pod(mut func(*corev1.Pod)) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web-1", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{
			ServiceAccountName: "web",
			Containers: []corev1.Container{
				{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}, {ContainerPort: 9000}, {Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP}}},
				{Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 9999}, {Name: "metrics", ContainerPort: 9090, Protocol: corev1.ProtocolTCP}}},
			},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, HostIP: "192.168.0.1", PodIP: "10.0.0.5",
			PodIPs: []corev1.PodIP{{IP: "10.0.0.5"}, {IP: "fd00::5"}},
		},
	}
	if mut != nil {
		mut(p)
	}
	return p
}

func TestPublished(t *testing.T) {
	for _, tc := range []struct {
		name string
		mut  func(*corev1.Pod)
		want bool
	}{
		{"running with IPs", nil, true},
		{"pending with IP", func(p *corev1.Pod) { p.Status.Phase = corev1.PodPending }, true},
		{"host network", func(p *corev1.Pod) { p.Spec.HostNetwork = true }, false},
		{"no IP yet", func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "", nil }, false},
		{"only podIP", func(p *corev1.Pod) { p.Status.PodIPs = nil }, true},
		{"garbage IP", func(p *corev1.Pod) { p.Status.PodIP, p.Status.PodIPs = "nope", []corev1.PodIP{{IP: "nope"}} }, false},
		{"succeeded", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, false},
		{"failed", func(p *corev1.Pod) { p.Status.Phase = corev1.PodFailed }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Published(pod(tc.mut)); got != tc.want {
				t.Fatalf("Published = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestEntries(t *testing.T) {
	got := Entries(pod(nil), 65792)
	if len(got) != 2 || got[0].IP != netip.MustParseAddr("10.0.0.5") || got[1].IP != netip.MustParseAddr("fd00::5") {
		t.Fatalf("entries = %+v", got)
	}
	b, err := wire.MarshalIPIdentityPair(got[0])
	if err != nil {
		t.Fatal(err)
	}
	want := `{"IP":"10.0.0.5","Mask":null,"HostIP":"192.168.0.1","ID":65792,"Key":0,"Metadata":"","K8sNamespace":"shop","K8sPodName":"web-1","K8sServiceAccount":"web","NamedPorts":[{"Name":"http","Port":8080,"Protocol":"TCP"},{"Name":"dns","Port":53,"Protocol":"UDP"},{"Name":"metrics","Port":9090,"Protocol":"TCP"}]}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	var back map[string]any
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
}
