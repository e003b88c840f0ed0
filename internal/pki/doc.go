// Package pki creates the certificate authorities and certificates that secure
// etcd connections in a mesh: an ECDSA P-256 CA per cluster, server
// certificates for etcd members (SANs 127.0.0.1, localhost and extra hosts),
// and client certificates whose common name is the etcd user they act as
// (root for the apiserver, remote-<cluster> for the readers of other clusters).
package pki
