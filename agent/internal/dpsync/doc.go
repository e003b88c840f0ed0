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
// Tunnel and ipcache entries are claimed per cluster ID: two clusters may claim
// the same prefix (a hostile or misconfigured remote), the own cluster's claim
// wins, otherwise the first claim; deleting one claim reveals the other.
//
// # Restore
//
// Restore reads the programmed state back with Dump before the sources start.
// Restored entries are not re-applied when a source hands in the same value,
// and they are held per cluster ID: a restored entry of cluster C that no
// source wants is deleted only when Release(C) says that C's sources have
// delivered their full state (remote: every watch synced; own cluster:
// informers synced), or when its config is gone. A restored service frontend
// keeps its restored backends of clusters that are still held, merged into
// the freshly computed backend set, so a restart drops no backend of a remote
// that reconnects slowly.
package dpsync
