// Package etcdserver runs an embedded etcd (go.etcd.io/etcd/server/v3/embed)
// for the clustermesh-apiserver's single-machine default and for tests: a
// data dir, client and peer URLs on chosen or free ports, mutual TLS with
// certificates generated when none are given, optional multi-member
// clusters, and authentication with the users and roles of DESIGN §6: root
// (the apiserver's admin user) and one read-only remote-<cluster> user per
// cluster allowed to read this cluster's state.
package etcdserver
