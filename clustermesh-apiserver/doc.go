// Command clustermesh-apiserver publishes one Kubernetes cluster's nodes,
// identities, pod IPs and global services into an etcd that the other
// clusters of the mesh read, in Cilium ClusterMesh's wire format. The work is
// done by the packages under internal/; see internal/server.
package main
