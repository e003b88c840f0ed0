// Package daemon assembles the clustermesh-agent: the datapath writer
// (eBPF or in-memory), the datapath reconciler (dpsync), the service merger,
// the own-cluster watcher (localcluster), the remote-cluster manager, the
// status API, the status report in a ConfigMap of the own cluster
// (statusreport, with --status-namespace) and the metrics endpoint with the
// pod's /healthz and /readyz probes (see health), and runs them until the
// context ends.
// On shutdown the datapath is left as it is (pinned maps keep forwarding);
// the next start restores from it.
package daemon
