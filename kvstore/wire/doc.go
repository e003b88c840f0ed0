// Package wire is the stable wire API of the clustermesh kvstore: the etcd key
// schema (keys.go), the JSON value types that the clustermesh-apiserver writes
// and the agent reads (Node, ClusterService, IPIdentityPair, ClusterConfig,
// identity label strings), the identity and cluster-ID arithmetic, and the
// decoders that validate untrusted values read from a remote cluster.
//
// Keys and JSON are those of Cilium ClusterMesh 1.16 and later, so that a
// Cilium agent can read a clustermesh-apiserver and a clustermesh agent can
// read a Cilium cluster. Everything here is a contract between clusters that
// run different versions: change it only in backwards-compatible ways.
//
// Writers use the Marshal* functions, which refuse values a reader would
// drop. Readers use the Decode* functions, which take the Remote the
// connection is for and return one of the exported sentinel errors (wrapped
// with context) for any value that must be dropped. A decoder never panics on
// any input; fuzz targets in wire_fuzz_test.go check that.
//
// The package imports the standard library only.
package wire
