// Package peer measures the agent side by side with Cilium's own watch path
// (the cilium-watch tool of ../shared/tools, Cilium 1.18's kvstore client and
// WatchStore) in one run: the same etcd (its own process, data on tmpfs),
// the same remote data set written by bench/internal/remotedata, rounds
// interleaved. See bench/README.md.
package peer
