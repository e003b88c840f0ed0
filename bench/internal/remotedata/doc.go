// Package remotedata writes the benchmarks' remote-cluster data set into an
// etcd with the project's own wire encoders: the cluster config, nodes,
// ipcache entries, identities and services of one cluster, then its sync
// canaries, so that the agent accepts it as a synced remote.
package remotedata
