// Package restorehold is the one owner of the agent's restore-hold
// protocol: it decides when the restored datapath entries of a cluster ID
// may be deleted.
//
// A restarted agent reads the programmed state back (dpsync.Reconciler's
// Restore) and keeps every entry it finds, per cluster ID, until Release
// of that ID: until then a restored entry that no source hands in again is
// held, not deleted, so that traffic flows on while the sources catch up.
// Only a Hold calls Release, on these events:
//
//   - the own cluster's sources synced (OwnSynced): the own ID;
//   - a remote synced in its session (Synced): its ID;
//   - a remote reserved an ID other than the one it held when the state
//     file was written (Reserved): the old ID;
//   - a remote's config file removed (Removed): its ID and its old one;
//   - the first scan of the config directory done (Started): every held ID
//     that is neither the own, nor held by a configured remote now, nor
//     recorded in the state file for a configured remote.
//
// The state file (StateDir/remote-clusters.json) records, by name, the
// cluster IDs the remotes held (those of the remote set, asked at each
// write, and those of the previous run's remotes that have not connected
// again yet), so that a restarted agent knows which restored entries
// belong to a configured remote (held until it syncs) and which to a
// remote whose config vanished while the agent was down (released at
// once). The remotes' current IDs are not kept here: the remote set holds
// them (kvstore/remoteconn.Set).
package restorehold
