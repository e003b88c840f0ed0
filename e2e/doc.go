// Package e2e holds the multi-cluster end-to-end tests (build tag e2e, run
// by `make test` as root): three meshed clusters brought up by package
// e2e/harness, and scenarios that assert on real traffic between pods in
// network namespaces through the eBPF datapath. The shared mesh is started
// once per test binary; scenarios that change it restore it before they end.
package e2e
