// Command clustermesh-agent is the per-node agent of the mesh: it watches the
// kvstores of every remote cluster and its own cluster's kube-apiserver,
// merges global services and programs the datapath. `clustermesh-agent
// status [-o json]` prints the status of the agent on the node.
//
// Own cluster: Services and EndpointSlices, other Nodes' pod CIDRs (tunnel
// entries via their InternalIP) and the pods of this node (endpoints on the
// interface of the host route to each pod IP) come from the own
// kube-apiserver; see agent/internal/localcluster.
package main
