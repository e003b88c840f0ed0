// Package localidentity reads the security identities of the agent's own
// cluster from that cluster's etcd, where its clustermesh-apiserver (the one
// allocator) publishes them: pod IP → numeric identity
// (cilium/state/ip/v1/default/) and identity → labels
// (cilium/state/identities/v1/id/). The agent programs every pod of its
// cluster into the ipcache from it (package localcluster); it never
// allocates one.
package localidentity
