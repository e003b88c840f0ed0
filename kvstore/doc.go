// Package kvstore is the etcd layer shared by the clustermesh-apiserver and
// the agent: the etcd client configuration in the YAML format Cilium uses for
// remote clusters, mutual TLS with errors that name what is wrong (CA file,
// client certificate, server certificate, rejected client certificate), a
// request rate limit, leases with a bounded number of keys each, a paged list
// followed by a watch (etcd's Watch RPC, read on the caller's goroutine) that
// starts from the list revision, resumes from the last revision seen after
// its stream broke, and relists with synthetic deletes after a compaction, a
// watch canceled by etcd or a change of the etcd cluster ID, and a
// connection status probe.
//
// The write side (syncstore) and the read side (watchstore) build on it.
package kvstore
