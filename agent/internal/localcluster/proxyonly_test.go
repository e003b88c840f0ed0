package localcluster

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// TestProxyOnly: the Services kube-proxy keeps beside the agent are those
// whose behaviour the datapath does not have, or that name another proxy.
func TestProxyOnly(t *testing.T) {
	for _, tc := range []struct {
		name string
		svc  corev1.Service
		want string
	}{
		{name: "plain ClusterIP", want: ""},
		{name: "sessionAffinity None", svc: corev1.Service{Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityNone}}, want: ""},
		{name: "sessionAffinity ClientIP", svc: corev1.Service{Spec: corev1.ServiceSpec{SessionAffinity: corev1.ServiceAffinityClientIP}}, want: "sessionAffinity ClientIP"},
		{name: "internalTrafficPolicy Cluster", svc: corev1.Service{Spec: corev1.ServiceSpec{InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyCluster)}}, want: ""},
		{name: "internalTrafficPolicy Local", svc: corev1.Service{Spec: corev1.ServiceSpec{InternalTrafficPolicy: ptr.To(corev1.ServiceInternalTrafficPolicyLocal)}}, want: "internalTrafficPolicy Local"},
		{name: "another service proxy", svc: corev1.Service{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{serviceProxyName: "other"}}}, want: serviceProxyName + " other"},
		{name: "externalTrafficPolicy Local is the NodePort's, kube-proxy's anyway", svc: corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal}}, want: ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := proxyOnly(&tc.svc); got != tc.want {
				t.Errorf("proxyOnly = %q, want %q", got, tc.want)
			}
		})
	}
}
