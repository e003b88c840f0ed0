// Package statusreport publishes the agent's view of the mesh into a
// ConfigMap of its own cluster (internal/meshstatus), where `clustermesh
// status` reads it without exec or port-forward: one report per node, with
// per remote cluster its ID, connectivity, readiness, synced kinds, entry
// counts, invalid entries, reconnects and last error. The publisher polls
// the remote-cluster manager every second and writes at the next poll when
// a remote's connectivity, readiness, sync, error or the set of remotes
// changed; when only counters changed, no sooner than nodes/10 seconds
// after its last write (1 s in a small cluster, 10 s at 100 nodes, capped
// at 30 s), so that churn in a large mesh adds at most about 10 writes per
// second per cluster; and at least every 30 s. A failed write is retried
// with backoff.
package statusreport
