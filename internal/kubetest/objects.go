package kubetest

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// There is no kubelet: these helpers create what it would report.

// EnsureNamespace creates namespace ns and its default ServiceAccount (which
// Pod admission requires) unless they exist.
func EnsureNamespace(ctx context.Context, cs kubernetes.Interface, ns string) error {
	_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: ns}}
	_, err = cs.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create default service account in %s: %w", ns, err)
	}
	return nil
}

// NodeSpec describes a node as a kubelet and a CIDR allocator would report it.
type NodeSpec struct {
	Name       string
	InternalIP string
	ExternalIP string
	PodCIDRs   []string
	Labels     map[string]string
}

// CreateNode creates a Node with spec.podCIDRs and sets its status addresses
// and Ready condition through the status subresource.
func CreateNode(ctx context.Context, cs kubernetes.Interface, s NodeSpec) (*corev1.Node, error) {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: s.Name, Labels: s.Labels},
		Spec:       corev1.NodeSpec{PodCIDRs: s.PodCIDRs},
	}
	if len(s.PodCIDRs) > 0 {
		n.Spec.PodCIDR = s.PodCIDRs[0]
	}
	n, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", s.Name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: s.InternalIP}}
	if s.ExternalIP != "" {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeExternalIP, Address: s.ExternalIP})
	}
	n.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	n, err = cs.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of node %s: %w", s.Name, err)
	}
	return n, nil
}

// PodSpec describes a pod placed on a node and running with the given IPs.
type PodSpec struct {
	Namespace, Name, NodeName string
	Labels                    map[string]string
	IPs                       []string // first is status.podIP
	HostIP                    string
	Ports                     []corev1.ContainerPort
	ServiceAccount            string
	HostNetwork               bool
}

// CreateRunningPod creates a Pod bound to its node and sets its status to
// Running and Ready with its IPs, as a kubelet would.
func CreateRunningPod(ctx context.Context, cs kubernetes.Interface, s PodSpec) (*corev1.Pod, error) {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.Namespace, Name: s.Name, Labels: s.Labels},
		Spec: corev1.PodSpec{
			NodeName:           s.NodeName,
			HostNetwork:        s.HostNetwork,
			ServiceAccountName: s.ServiceAccount,
			Containers:         []corev1.Container{{Name: "app", Image: "clustermesh.test/echo:1", Ports: s.Ports}},
		},
	}
	p, err := cs.CoreV1().Pods(s.Namespace).Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", s.Namespace, s.Name, err)
	}
	return SetPodStatus(ctx, cs, p, s.IPs, s.HostIP, true)
}

// SetPodStatus sets a pod Running with the given IPs and its Ready condition.
func SetPodStatus(ctx context.Context, cs kubernetes.Interface, p *corev1.Pod, ips []string, hostIP string, ready bool) (*corev1.Pod, error) {
	cond := corev1.ConditionFalse
	if ready {
		cond = corev1.ConditionTrue
	}
	now := metav1.Now()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = hostIP
	p.Status.HostIPs = nil
	if hostIP != "" {
		p.Status.HostIPs = []corev1.HostIP{{IP: hostIP}}
	}
	p.Status.PodIP = ""
	p.Status.PodIPs = nil
	for i, ip := range ips {
		if i == 0 {
			p.Status.PodIP = ip
		}
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	p.Status.StartTime = &now
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.ContainersReady, Status: cond, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: cond, LastTransitionTime: now},
	}
	p.Status.ContainerStatuses = []corev1.ContainerStatus{{
		Name: "app", Image: "clustermesh.test/echo:1", Ready: ready, Started: &ready,
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}
	out, err := cs.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return out, nil
}

// SetPodReady flips the Ready condition of an existing pod, keeping its IPs.
func SetPodReady(ctx context.Context, cs kubernetes.Interface, ns, name string, ready bool) (*corev1.Pod, error) {
	p, err := cs.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	return SetPodStatus(ctx, cs, p, ips, p.Status.HostIP, ready)
}
