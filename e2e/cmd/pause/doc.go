// Command pause is the pod sandbox ("pause") process of the install test's
// containerd (e2e/kubenode): it holds the pod's namespaces and exits on
// SIGTERM or SIGINT. It replaces registry.k8s.io/pause, which this machine
// cannot pull; `internal/ociimage` packs it as clustermesh-pause.
package main
