// Package nodes publishes the cluster's Kubernetes Nodes as wire.Node entries
// at cilium/state/nodes/v1/<cluster>/<node>: name, cluster and cluster ID,
// the InternalIP and ExternalIP addresses of status.addresses and the pod
// CIDRs of spec.podCIDRs. An entry goes when its Node goes.
package nodes
