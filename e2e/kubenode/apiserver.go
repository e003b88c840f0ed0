package kubenode

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/kubetest"
)

// Namespaces get the kube-root-ca.crt ConfigMap that every pod's projected
// service account volume needs (kube-controller-manager's publisher would
// need a CA file kubetest does not give it).
var Namespaces = []string{"default", "kube-system", "clustermesh-system"}

// publishAPIServer makes the kube-apiserver reachable in-cluster: the
// `kubernetes` Service's EndpointSlice names the forwarder on the gateway,
// and the namespaces get its serving certificate as kube-root-ca.crt (the
// self-signed certificate lists the Service's IP).
func (c *Cluster) publishAPIServer(ctx context.Context) error {
	cs := c.CP.Client
	port := int32(c.apiPort())
	// kube-apiserver creates the Service itself (port 443 → its own port).
	err := harness.Eventually(30*time.Second, func() error {
		_, err := cs.CoreV1().Services("default").Get(ctx, "kubernetes", metav1.GetOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("kubernetes service: %w", err)
	}
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "kubernetes", Namespace: "default", Labels: map[string]string{
			discoveryv1.LabelServiceName: "kubernetes", discoveryv1.LabelManagedBy: "kubenode.e2e.clustermesh",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{gateway.String()}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr.To("https"), Port: ptr.To(port), Protocol: ptr.To(corev1.ProtocolTCP)}},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create kubernetes endpointslice: %w", err)
	}
	ca, err := os.ReadFile(filepath.Join(c.dir, "control-plane", "apiserver-certs", "apiserver.crt"))
	if err != nil {
		return fmt.Errorf("read kube-apiserver certificate: %w", err)
	}
	for _, ns := range Namespaces {
		if err := kubetest.EnsureNamespace(ctx, cs, ns); err != nil {
			return err
		}
		cm := &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "kube-root-ca.crt", Namespace: ns},
			Data:       map[string]string{"ca.crt": string(ca)},
		}
		if _, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, cm, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create %s/kube-root-ca.crt: %w", ns, err)
		}
	}
	return nil
}
