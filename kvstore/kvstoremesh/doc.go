// Package kvstoremesh mirrors remote clusters into the local etcd under
// Cilium's KVStoreMesh cache layout (kvstore/wire keys.go), so that the
// agents of this cluster hold one connection, to their own etcd, instead
// of one per remote cluster and node.
//
// The clustermesh-apiserver runs one Mesh. It is a remoteconn.Set, the
// same remote set as the agent's in direct mode (kvstore/remoteconn:
// config directory, TLS, cluster config and ID checks, backoff, probe,
// stale TTL, entry limit), whose member per remote runs the cache writers
// while the remote is configured and, per session and kind (nodes,
// services, identities, ipcache), a kvstore/watchstore.Store on the
// remote's prefix whose observer hands every entry to a
// kvstore/syncstore.Store on the cache prefix of the local etcd:
//
//   - values are validated by the same decoders as the agent's (a node of
//     another cluster, an identity outside the remote's range, malformed
//     JSON...) and the invalid ones are counted and not mirrored, so that
//     a Cilium agent reading the cache gets what our agent would accept;
//     valid values are copied byte for byte;
//   - the remote's cluster config is copied to cilium/cluster-config/<name>
//     with capabilities.cached and syncedCanaries true;
//   - the cache canary of a kind (cilium/synced/<name>/cilium/cache/<kind>/v1)
//     is written once the first complete listing of the remote's kind is
//     in the cache (syncstore.MarkSynced);
//   - keys the remote deletes are deleted; after a reconnect the relist
//     deletes what vanished meanwhile (watchstore's synthetic deletes);
//   - a remote that becomes unreachable keeps its last state in the cache
//     (Status: not connected, Serving); with StaleTTL > 0 it is withdrawn
//     once unreachable for that long: the stale TTL of a mesh in
//     kvstoremesh mode applies here, once, not in every agent;
//   - a remote that comes back with an emptied etcd withdraws nothing until
//     its canaries say that its apiserver has refilled it (the watchstore
//     waits for the canary before every relist);
//   - a removed config file deletes the remote's cache, canaries and
//     cluster config copy.
//
// The cache keys and canary are leased by the syncstore (Config.LeaseTTL of
// the local client, 15 minutes by default): a kvstoremesh restart keeps them
// (the new process takes them over when it has listed the remote again and
// deletes those the remote no longer holds), but a kvstoremesh that stays
// down, or restarts while its remote is unreachable, longer than the lease
// TTL lets them expire, as Cilium's do.
package kvstoremesh
