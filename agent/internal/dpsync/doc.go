// Package dpsync reconciles the desired datapath state of the agent with the
// datapath.Writer.
//
// Sources (the remote-cluster watchers, the own-cluster watchers and the
// service merger) hand in desired tunnel, ipcache, service and endpoint
// entries. Every call only records the entry and marks its key dirty; Run
// applies dirty keys in batches: a flush takes every key dirtied so far, so
// changes that arrive while a batch is applied coalesce into the next one
// (with an optional BatchWindow to wait for more). A failed Apply puts the
// keys back and is retried with capped exponential backoff and jitter; since a
// batch is built from the desired state at flush time, a retry never applies
// stale values.
//
// Tunnel and ipcache entries are claimed per cluster ID, and the trust rules
// of DESIGN §8 (trust.go) decide, from the set of claims alone and so
// whatever their order, which one is programmed: the own cluster's claim
// wins; a remote claim is refused when it is a default route or shorter
// than --remote-min-prefix-length-v4/-v6, overlaps the local cluster's pod
// CIDRs or node addresses (SetLocalNode) or own entries, carries the
// reserved host identity, or (ipcache CIDR) lies outside that remote's pod
// CIDRs and --remote-allowed-prefixes; two or more remaining remote claims
// conflict and are all withdrawn, so no remote can take over another's
// address. Refusals lists every refused claim with its reason and, for a
// conflict, all claimants.
//
// # Steady state: the caller applies
//
// A batch is built and applied under one lock (the step), by Run's worker
// or, in steady state, by the source itself: once a cluster is steady
// (Steady: a remote whose session has listed every kind), its tunnel or
// ipcache change that finds the reconciler idle (no batch being built or
// applied, nothing dirty, so no retry pending, no AfterFlush waiting, no
// batch window) is applied on the caller's goroutine as the worker would
// apply it, without the goroutine hand-off (inline.go). Batches are thus
// applied one at a time and in the order they are built, from the same
// desired state and by the same rules; a failed inline apply leaves its
// keys dirty for the worker's retry. A listing is never applied inline.
//
// # Restore
//
// Restore reads the programmed state back with Dump before the sources start.
// Restored entries are not re-applied when a source hands in the same value,
// and they are held per cluster ID: a restored entry of cluster C that no
// source wants is deleted only after Release(C). When that is (C's sources
// have delivered their full state, or its config is gone) is decided in
// one place, agent/internal/restorehold, the only caller of Release. A restored service frontend
// keeps its restored backends of clusters that are still held, merged into
// the freshly computed backend set, so a restart drops no backend of a remote
// that reconnects slowly.
package dpsync
