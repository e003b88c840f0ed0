// Package kvstore is the etcd layer shared by the clustermesh-apiserver and
// the agent: the etcd client configuration in the YAML format Cilium uses for
// remote clusters, mutual TLS with errors that name what is wrong (CA file,
// client certificate, server certificate, rejected client certificate), a
// request rate limit, leases with a bounded number of keys each, a paged list
// followed by a watch that resumes from the list revision and relists with
// synthetic deletes after a compaction, a watch failure or a change of the
// etcd cluster ID, and a connection status probe.
//
// The write side (syncstore) and the read side (watchstore) build on it.
package kvstore
