// Package remoteconn is the one implementation of how a clustermesh
// process connects to remote clusters' etcds (DESIGN §5): the agent in
// direct mode (agent/internal/remotecluster) and the kvstoremesh of the
// clustermesh-apiserver (kvstore/kvstoremesh) both use it.
//
//   - the config directory: one etcd client config file per remote
//     cluster, named after it (ReadDir skips every name with a dot:
//     certificates, "..data", editor files), watched with fsnotify and
//     rescanned periodically (WatchDir); a closed watcher is rebuilt;
//   - Connect: parses the file (ParseConfigFile), connects with TLS and
//     client certificates (kvstore.New), reads and validates
//     cilium/cluster-config/<name> (a missing or invalid config is
//     ErrClusterConfig; ID 0, the own ID and a maxConnectedClusters
//     different from the own are refused), and explains bare timeouts
//     with a fresh dial (Explain);
//   - CheckID: the rule for reserving a remote cluster ID (0, the own ID
//     and an ID held by another remote are refused: ErrClusterIDConflict);
//   - Loop: the connection loop, one capped exponential backoff with
//     jitter between attempts, at most DeniedBackoffMax while the remote
//     etcd refuses the user (how a remote looks until its apiserver has
//     created it), no retry for an unusable config file;
//   - during a session: WatchKey (one key, never a range: a remote user may
//     read only that key), WatchClusterConfig (a changed ID,
//     maxConnectedClusters or cached capability ends the session:
//     ErrConfigChanged), WatchHeartbeat and Probe (connectivity, and
//     ErrStale once the remote has been unreachable for the stale TTL).
//
// Set puts these together: the remote set of a config directory, used by
// both processes. It adds, replaces (changed file) and removes one
// connection loop per file, reserves each remote's cluster ID (the one
// place it is held: State.ID, Set.ClusterNames), and runs each session:
// Connect, a changed ID withdraws the old state, the reservation, the
// member's readers, heartbeat, cluster config watch and probe; a remote
// unreachable for StaleTTL or over its entry limit
// (watchstore.ErrTooManyEntries, refused with SetConfig.LimitFlag in the
// reason) is withdrawn. It keeps each remote's State (connected, ready,
// served, refused reason, failures, reconnects, heartbeat).
//
// What a connected remote is read into is the Member's: its readers (one
// kvstore/watchstore per kind, whose prefix and canary, the remote's own or
// the cache's, Session.ReaderConfig gives) program the agent's
// datapath (agent/internal/remotecluster) or mirror into the cache
// (kvstore/kvstoremesh); Drain withdraws it, Removed cleans up after a
// removed file.
package remoteconn
