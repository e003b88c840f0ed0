// Package remotecluster connects the agent to every remote cluster of the mesh
// (DESIGN §5) and turns their kvstore contents into datapath state.
//
// The Manager watches the --clustermesh-config directory with fsnotify: one
// file per remote cluster, named after it, holding an etcd client config
// (kvstore.ParseConfig). Added, changed and removed files take effect without
// a restart. Kubernetes Secret volumes update by swapping the "..data" symlink;
// any event in the directory triggers a rescan that follows symlinks and
// ignores every name holding a dot (no cluster name does): "..data", editor
// files, and the certificates stored beside each config by `clustermesh
// connect` (<cluster>.etcd-client-ca.crt, .etcd-client.crt, .etcd-client.key),
// so the swap is seen as a change of the files' contents. A file named after
// the agent's own cluster, or otherwise unusable, is refused with the reason
// in Status and a log line.
//
// The remote set is kvstore/remoteconn.Set, shared with the kvstoremesh:
// it runs per remote a connection loop (capped exponential backoff with
// jitter between attempts) and keeps the remote's cluster ID; a remote's
// member here (remote.go) turns its kinds into datapath state:
//
//  1. connects (kvstore.New: TLS checked, endpoints probed);
//  2. reads and validates cilium/cluster-config/<name> (wire.DecodeClusterConfig,
//     Compatible: same maxConnectedClusters, not the own ID) and reserves the
//     cluster ID: 0, the own ID and an ID held by another remote are refused
//     (ErrClusterIDConflict), with the reason in Status;
//  3. per kind (nodes, identities, ipcache, services) runs a
//     kvstore/watchstore.Store, the one read path of the kvstore: it waits
//     for the kind's sync canary when the remote advertises syncedCanaries,
//     then list-watches the prefix (kvstore.ListWatch: paged list, watch
//     with revision resume, relist and synthetic deletes on compaction,
//     reconnect and etcd cluster-ID change), and waits for the canary again
//     before every relist, so that a remote etcd emptied or replaced (an
//     apiserver restarted with an ephemeral etcd) withdraws nothing until
//     its apiserver has refilled it;
//  4. the store decodes every value with the validating wire decoders
//     against the remote's name and ID; an invalid value is dropped and
//     counted (and withdraws what the key held before), the rest flows to
//     the kind's observer, which programs the datapath;
//  5. once every kind has listed, the remote is ready and the restore hold
//     lets the datapath reconciler delete restored entries of that cluster
//     ID that were not seen again.
//
// What flows where: nodes → tunnel entries (each pod CIDR of the node →
// its InternalIP of the same family); ipcache → ipcache entries (IP →
// identity, HostIP as tunnel endpoint, cluster ID); services →
// servicemerge; identities are validated and counted (the datapath has no
// policy yet). A datapath key that several keys of one remote map to is
// held while any of them holds it, with a value chosen by a fixed rule: a
// pod CIDR of two nodes routes to the node whose key sorts first, an IP
// written under "<ip>" and "<ip>/32" takes the value of "<ip>". Whether a
// claim reaches the datapath at all is decided by dpsync's trust rules.
//
// A remote with more valid entries of one kind than MaxEntries
// (--remote-max-entries) is refused with the reason in Status and its state
// withdrawn; the connection loop tries again with backoff.
//
// The stores outlive sessions: a new session (after a failed connect) runs
// them through its new client (watchstore.Store.RunOn), and their first
// listing withdraws the keys earlier sessions had delivered but the new
// listing lacks, so entries deleted while the remote was away are removed
// on return.
//
// A removed config file drains that cluster's state from the datapath and
// frees its cluster ID. Agent shutdown and loss of connectivity keep the
// state (the datapath keeps forwarding on last-known state); with StaleTTL >
// 0, a remote unreachable for that long is withdrawn, and relisted when it
// returns.
//
// Restored datapath entries are held per cluster ID until the restore
// hold (agent/internal/restorehold, run by the Manager) releases them: it
// is told the first scan, each remote's reserved ID, sync and removal, and
// the own cluster's sync (OwnSynced), and persists the remotes' names and
// IDs in StateDir, so that a restarted agent knows which restored entries
// belong to a configured remote (held until it syncs) and which belong to
// a remote whose config vanished while the agent was down (released at
// once).
package remotecluster
