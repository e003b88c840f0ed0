// Package server assembles the clustermesh-apiserver: its configuration and
// flags, the kvstore it writes to (an external etcd or, by default, an
// embedded one with generated TLS, auth and read-only remote users), the
// Kubernetes informers, the publishers of nodes, pods (ipcache and
// identities) and global services, the cluster config and heartbeat, and the
// health and metrics endpoints. main only parses flags and calls Main.
package server
