// Command clustermesh enables Clustermesh in Kubernetes clusters, connects
// and disconnects them, and shows the mesh's status. See `clustermesh --help`.
package main
