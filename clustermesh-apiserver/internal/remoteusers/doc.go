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
// Only the embedded etcd is managed. With an external etcd
// (--kvstore-config) the apiserver logs a warning and leaves the file
// alone: whoever runs that etcd creates the users remote-<cluster> with
// the read-only role of DESIGN §6 (see kvstore/etcdserver.RemotePermissions).
package remoteusers
