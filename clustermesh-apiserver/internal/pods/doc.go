// Package pods publishes the cluster's pod IPs: for every pod that has an IP
// and does not use the host network it takes an identity for the pod's
// security labels (see SecurityLabels) and writes one IPIdentityPair per pod
// IP at cilium/state/ip/v1/default/<ip>. Entries go when the pod goes, stops
// running, or changes its IPs; the identity reference goes with them.
package pods
