// Package svcresolver lets the agent reach an etcd endpoint named by a
// Kubernetes Service without cluster DNS: the agent runs with host
// networking, and on many nodes the host's resolver does not know
// <name>.<namespace>.svc names. A host of the form <name>.<namespace>.svc
// (optionally followed by the cluster domain, .svc.cluster.local) is
// looked up through the kube-apiserver and dialled at the Service's
// ClusterIP; every other host goes through normal DNS. The kvstore client
// keeps verifying the etcd server certificate for the Service name.
package svcresolver
