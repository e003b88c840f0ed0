// Package mesh implements what the clustermesh CLI does to clusters: enable
// (install or upgrade the embedded chart with the cluster's CA and
// certificates), connect and disconnect pairs of clusters (client
// certificates, read-only etcd users, the agents' remote-cluster Secret) and
// collect the mesh status that agents and apiservers publish through
// internal/meshstatus. It talks to clusters only through the Kubernetes API
// (client-go and the Helm SDK); the cobra commands live in package cli.
package mesh
