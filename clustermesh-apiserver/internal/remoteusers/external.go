package remoteusers

import (
	"context"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// External manages the remote users of an etcd the apiserver does not run
// (--kvstore-config) through its root client. It creates users and roles
// only: the remote clusters' client certificates are issued by
// `clustermesh connect`, signed by the cluster's CA, which that etcd must
// trust for client authentication.
type External struct {
	// Client acts as etcd's root user.
	Client *clientv3.Client
	// Cluster is this cluster's name, whose canaries and cluster config
	// the users may read.
	Cluster string
}

var _ Users = External{}

// EnsureRemoteUser creates or completes the user remote-<cluster> and its
// read-only role; it returns an empty config (no certificate is issued)
// and fails with etcdserver.ErrAuthDisabled when that etcd's auth is off.
func (e External) EnsureRemoteUser(ctx context.Context, cluster string) (kvstore.Config, error) {
	return kvstore.Config{}, etcdserver.EnsureRemoteUserOn(ctx, e.Client, e.Cluster, cluster)
}

// RemoveRemoteUser deletes the user and role remote-<cluster>.
func (e External) RemoveRemoteUser(ctx context.Context, cluster string) error {
	return etcdserver.RemoveRemoteUserOn(ctx, e.Client, cluster)
}

// RemoteUsers lists the clusters that have a remote user.
func (e External) RemoteUsers(ctx context.Context) ([]string, error) {
	return etcdserver.RemoteUsersOn(ctx, e.Client)
}

// EnsureLegacyRemoteUser creates or completes the shared user "remote" of
// Cilium's legacy auth mode and its read-only role.
func (e External) EnsureLegacyRemoteUser(ctx context.Context) (kvstore.Config, error) {
	return kvstore.Config{}, etcdserver.EnsureLegacyRemoteUserOn(ctx, e.Client, e.Cluster)
}

// RemoveLegacyRemoteUser deletes the user and role "remote".
func (e External) RemoveLegacyRemoteUser(ctx context.Context) error {
	return etcdserver.RemoveLegacyRemoteUserOn(ctx, e.Client)
}

// HasLegacyRemoteUser reports whether the user "remote" exists.
func (e External) HasLegacyRemoteUser(ctx context.Context) (bool, error) {
	return etcdserver.HasLegacyRemoteUserOn(ctx, e.Client)
}
