// Package syncstore is the write side of the kvstore: it holds the desired
// set of keys of one prefix that a component (the clustermesh-apiserver)
// publishes, coalesces repeated updates of a key, writes them with leases
// in transactions of up to BatchSize keys
// (at most a bounded number of keys per lease), re-writes keys whose lease
// was lost and keys that someone else modified or deleted (it watches its
// own prefix; a key it wrote that a (re)list does not hold counts as
// deleted, since the watch reports no delete of a key it never held),
// deletes stale keys it does not own once its initial set is
// written, and then writes the sync canary that tells readers the initial
// listing is complete. Writes are rate limited and retried with backoff,
// and Prometheus metrics report queue depth, writes, errors and latency.
package syncstore
