// Package remoteusers keeps the read-only etcd users of remote clusters
// (remote-<cluster>, DESIGN §6) in line with a users file, the
// clustermesh-remote-users ConfigMap that `clustermesh connect` and
// `disconnect` edit and Kubernetes mounts into the clustermesh-apiserver.
// It watches the file's directory (a ConfigMap mount swaps a ..data
// symlink), rescans it periodically, creates the users the file names and
// removes the others. A malformed file is reported (log, the
// clustermesh_apiserver_remote_users_errors_total metric, the status
// report's lastError) and changes nothing.
//
// The users live in the embedded etcd (kvstore/etcdserver.Server, which
// also issues their certificates) or, with --kvstore-config, in the
// external etcd through the apiserver's root client (External, users and
// roles only: `clustermesh connect` issues the certificates, signed by the
// cluster's CA, which that etcd must trust). Either way a user's role is
// read-only on kvstore/etcdserver.RemotePermissions (DESIGN §6).
package remoteusers
