// Package remotedata writes the benchmarks' remote-cluster data into an
// etcd with the project's own wire encoders (kvstore/wire owns the format):
// the cluster config, nodes, ipcache entries, identities and services of
// one cluster (Set), then its sync canaries, so that the agent accepts it
// as a synced remote; either as the remote's own etcd (cilium/state/...)
// or as a kvstoremesh copy in the local etcd (cilium/cache/..., Set.Cached).
// Mesh writes many clusters (CiliumScale: the 250-cluster data set of
// Cilium's scale test) and Churn changes their ipcache entries at a given
// rate.
package remotedata
