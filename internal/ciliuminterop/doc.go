// Package ciliuminterop runs the tools/ciliuminterop binary (Cilium 1.18's
// own ClusterMesh code, in a module of its own so that this module never
// imports Cilium) from tests: Read has Cilium's agent-side reader sync the
// clusters of a --clustermesh-config directory and returns what Cilium
// decoded and every warning it logged; Write stores a dump of a Cilium
// cluster's state, encoded with Cilium's types, into an etcd.
//
// The binary is $CILIUM_INTEROP_BIN when set (make builds it into bin/),
// else built once per test process from tools/ciliuminterop. Tests that
// need it skip in -short mode, and outside CI when it cannot be built.
package ciliuminterop
