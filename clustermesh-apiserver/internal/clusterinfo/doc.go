// Package clusterinfo publishes what describes the cluster itself rather than
// its objects: the cluster config at cilium/cluster-config/<cluster> (its ID
// and capabilities, which agents check before they connect) and the
// heartbeat at cilium/.heartbeat, an RFC 3339 timestamp rewritten every
// interval. Both go through write-side stores, which hold them on a lease and
// put them back if someone changes or deletes them.
package clusterinfo
