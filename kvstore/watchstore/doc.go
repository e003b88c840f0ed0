// Package watchstore is the read side of the kvstore: it follows one prefix
// of an etcd (typically a remote cluster's, read as a read-only user),
// waits for the prefix's sync canary, lists and watches it, decodes and
// validates every value as untrusted input (an invalid value is counted,
// logged and skipped, never stopping the stream; an invalid update of a key
// that held a valid entry withdraws that entry with OnDelete, because the
// writer no longer asserts it), keeps the typed entries,
// and tells an observer about upserts, deletes (including the synthetic
// deletes of entries that vanished while the watch was interrupted) and
// the completion of the initial listing. RunOn runs the same store through
// a new client (a reconnect): its entries survive, and the new run's first
// listing withdraws those it no longer sees. Drain removes every entry, for a
// cluster that leaves the mesh.
//
// Memory stays bounded whatever the writer does: Config.MaxEntries stops a
// run with ErrTooManyEntries instead of holding more, and keys whose value
// is invalid are held neither here nor in ListWatch's key index
// (kvstore.Rejected). An observer that implements Peeker may look up other
// entries from its callbacks (two keys that map to one datapath entry).
package watchstore
