// Package daemon assembles the clustermesh-agent: the datapath writer
// (eBPF or in-memory), the datapath reconciler (dpsync), the service merger,
// the own-cluster watcher (localcluster), the remote-cluster manager, the
// status API and the metrics endpoint, and runs them until the context ends.
// On shutdown the datapath is left as it is (pinned maps keep forwarding);
// the next start restores from it.
package daemon
