// Package kubetest runs a real Kubernetes control plane for tests and the demo:
// an embedded etcd, the upstream kube-apiserver and kube-controller-manager
// (built from the k8s.io/kubernetes module by hack/kube-bins.sh) as child
// processes on loopback, and the objects a kubelet would otherwise provide:
// Nodes with status and Pods marked Running and Ready with their IPs.
package kubetest
