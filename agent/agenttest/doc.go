// Package agenttest runs the agent's control plane (datapath reconciler,
// service merger, remote-cluster manager) on an in-memory datapath (or a given datapath writer), without
// Kubernetes, for benchmarks and tests outside agent/ (bench/agent, e2e
// helpers). It exposes only what such harnesses need.
package agenttest
