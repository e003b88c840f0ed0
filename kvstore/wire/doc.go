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
// drop, so what is written is what is read. Readers use the Decode*
// functions, which take the Remote the connection is for and the full etcd
// key (under cilium/state/ or, for kvstoremesh copies, cilium/cache/), and
// return one of the exported sentinel errors (wrapped with context) for any
// value that must be dropped: ErrTooLarge, ErrMalformed, ErrKeyMismatch,
// ErrWrongCluster, ErrClusterIDMismatch, ErrIdentityOutOfRange, ErrInvalid.
// A decoder never panics on any input, and what it accepts re-encodes to an
// equal value; the fuzz targets in fuzz_test.go check both.
//
// The package imports the standard library only.
package wire
