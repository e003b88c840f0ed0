// Package apiserver benchmarks the clustermesh-apiserver binary end to end,
// against a real kube-apiserver and kube-controller-manager
// (internal/kubetest) and an embedded etcd: the latency from a Kubernetes
// change to its commit in etcd, and the time to publish a large cluster from
// scratch. See bench/README.md for the method and the numbers.
package apiserver
