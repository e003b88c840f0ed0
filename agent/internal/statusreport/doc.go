// Package statusreport publishes the agent's view of the mesh into a
// ConfigMap of its own cluster (internal/meshstatus), where `clustermesh
// status` reads it without exec or port-forward: one report per node, with
// per remote cluster its ID, connectivity, readiness, synced kinds, entry
// counts, invalid entries, reconnects and last error. The publisher polls
// the remote-cluster manager, writes on every change and at least every
// resync interval, and retries a failed write on the next poll.
package statusreport
