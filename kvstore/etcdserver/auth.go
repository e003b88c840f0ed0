package etcdserver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Key prefixes a remote cluster (or, for the cache, the own agents) may read (DESIGN §2 and §6).
const (
	StatePrefix         = "cilium/state/"
	CachePrefix         = "cilium/cache/"
	SyncedPrefix        = "cilium/synced/"
	ClusterConfigPrefix = "cilium/cluster-config/"
	HeartbeatKey        = "cilium/.heartbeat"
)

// admin opens a client acting as the root user.
func (s *Server) admin(ctx context.Context) (*kvstore.Client, error) {
	c, err := kvstore.New(ctx, s.AdminConfig(), s.log)
	if err != nil {
		return nil, fmt.Errorf("admin client: %w", err)
	}
	return c, nil
}

// setupAuth creates the root user with the root role and enables auth; it
// does nothing when auth is already on (a restarted member).
func (s *Server) setupAuth(ctx context.Context) error {
	c, err := s.admin(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	e := c.Etcd()
	st, err := e.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	if _, err := e.UserAddWithOptions(ctx, AdminUser, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("add user %s: %w", AdminUser, err)
	}
	if _, err := e.RoleAdd(ctx, "root"); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role root: %w", err)
	}
	if _, err := e.UserGrantRole(ctx, AdminUser, "root"); err != nil {
		return fmt.Errorf("grant root role: %w", err)
	}
	if _, err := e.AuthEnable(ctx); err != nil {
		return fmt.Errorf("enable auth: %w", err)
	}
	return nil
}

// RemotePermissions returns the key ranges (key, range end; an empty range
// end is the single key) that a remote cluster may read from the etcd of
// cluster own: all of cilium/state/, own's canaries, own's cluster config
// and the heartbeat. The heartbeat is the range [cilium/.heartbeat,
// cilium/.heartbeau), as Cilium grants it: Cilium's clustermesh client
// lists it as a prefix to confirm its connection, and a single-key grant
// refuses that list.
func RemotePermissions(own string) [][2]string {
	return [][2]string{
		{StatePrefix, clientv3.GetPrefixRangeEnd(StatePrefix)},
		{SyncedPrefix + own + "/", clientv3.GetPrefixRangeEnd(SyncedPrefix + own + "/")},
		{ClusterConfigPrefix + own, ""},
		{HeartbeatKey, clientv3.GetPrefixRangeEnd(HeartbeatKey)},
	}
}

// LocalReaderUser is the etcd user the cluster's own agents read their
// cluster's etcd as: its pod identities (every mode) and the kvstoremesh
// cache (connection mode kvstoremesh).
const LocalReaderUser = "local-reader"

// LocalReaderPermissions returns the key ranges the own cluster's agents
// may read: the own cluster's ipcache entries and identities (the
// identities of their own pods, for network policy; nothing else of
// cilium/state/: nodes and services come from Kubernetes), the cache of
// every remote (cilium/cache/), every canary (cilium/synced/, which holds
// the own state's and the cache's canaries), every cluster config
// (cilium/cluster-config/, the copies with cached true) and the heartbeat.
func LocalReaderPermissions() [][2]string {
	return [][2]string{
		{wire.IPPrefix, clientv3.GetPrefixRangeEnd(wire.IPPrefix)},
		{wire.IdentityIDPrefix, clientv3.GetPrefixRangeEnd(wire.IdentityIDPrefix)},
		{CachePrefix, clientv3.GetPrefixRangeEnd(CachePrefix)},
		{SyncedPrefix, clientv3.GetPrefixRangeEnd(SyncedPrefix)},
		{ClusterConfigPrefix, clientv3.GetPrefixRangeEnd(ClusterConfigPrefix)},
		{HeartbeatKey, clientv3.GetPrefixRangeEnd(HeartbeatKey)},
	}
}

// EnsureLocalReaderUser creates (or completes) LocalReaderUser, issues its
// certificate if missing and returns its client config.
func (s *Server) EnsureLocalReaderUser(ctx context.Context) (kvstore.Config, error) {
	return s.ensureUser(ctx, LocalReaderUser, LocalReaderPermissions())
}

// EnsureLocalReaderUserOn is EnsureLocalReaderUser through e acting as the
// root user, on any etcd; it issues no certificate.
func EnsureLocalReaderUserOn(ctx context.Context, e *clientv3.Client) error {
	return ensureReadOnlyUser(ctx, e, LocalReaderUser, LocalReaderPermissions())
}

// ErrAuthDisabled is returned when remote users are to be created in an
// etcd whose authentication is off: they would not restrict anything.
var ErrAuthDisabled = errors.New("etcd authentication is disabled")

// EnsureRemoteUser creates (or completes) the read-only user and role
// remote-<cluster>, issues its client certificate into the cert dir if
// missing, and returns the client config the remote cluster connects with.
func (s *Server) EnsureRemoteUser(ctx context.Context, cluster string) (kvstore.Config, error) {
	if err := ValidClusterName(cluster); err != nil {
		return kvstore.Config{}, err
	}
	return s.ensureUser(ctx, RemoteUser(cluster), RemotePermissions(s.cfg.ClusterName))
}

// RemoveRemoteUser deletes the user and role of cluster and its
// certificate files; a missing user is not an error. New requests with the
// certificate fail at once; etcd does not end watches opened before.
func (s *Server) RemoveRemoteUser(ctx context.Context, cluster string) error {
	if err := ValidClusterName(cluster); err != nil {
		return err
	}
	return s.removeUser(ctx, RemoteUser(cluster))
}

// EnsureLegacyRemoteUser creates (or completes) LegacyRemoteUser, issues
// its certificate (CN=remote) if missing and returns its client config.
func (s *Server) EnsureLegacyRemoteUser(ctx context.Context) (kvstore.Config, error) {
	return s.ensureUser(ctx, LegacyRemoteUser, RemotePermissions(s.cfg.ClusterName))
}

// RemoveLegacyRemoteUser deletes LegacyRemoteUser and its certificate.
func (s *Server) RemoveLegacyRemoteUser(ctx context.Context) error {
	return s.removeUser(ctx, LegacyRemoteUser)
}

// HasLegacyRemoteUser reports whether LegacyRemoteUser exists.
func (s *Server) HasLegacyRemoteUser(ctx context.Context) (bool, error) {
	c, err := s.admin(ctx)
	if err != nil {
		return false, err
	}
	defer c.Close()
	return HasLegacyRemoteUserOn(ctx, c.Etcd())
}

// ensureUser creates or completes the read-only user (a valid remote user
// name) and returns its client config, issuing its certificate if missing.
func (s *Server) ensureUser(ctx context.Context, user string, perms [][2]string) (kvstore.Config, error) {
	if s.cfg.DisableAuth {
		return kvstore.Config{}, fmt.Errorf("%w: auth is disabled", ErrConfig)
	}
	c, err := s.admin(ctx)
	if err != nil {
		return kvstore.Config{}, err
	}
	defer c.Close()
	if err := ensureReadOnlyUser(ctx, c.Etcd(), user, perms); err != nil {
		return kvstore.Config{}, err
	}
	return s.ClientConfig(user)
}

// removeUser deletes the user, its role and its certificate files.
func (s *Server) removeUser(ctx context.Context, user string) error {
	c, err := s.admin(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := removeUser(ctx, c.Etcd(), user); err != nil {
		return err
	}
	for _, ext := range []string{".crt", ".key"} {
		if err := os.Remove(filepath.Join(s.cfg.CertDir, user+ext)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove certificate of %s: %w", user, err)
		}
	}
	return nil
}

// RemoteUsers lists the clusters that have a remote user.
func (s *Server) RemoteUsers(ctx context.Context) ([]string, error) {
	c, err := s.admin(ctx)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return RemoteUsersOn(ctx, c.Etcd())
}

// EnsureRemoteUserOn creates (or completes), through e acting as the root
// user, the user and role remote-<cluster> with read access to exactly
// RemotePermissions(own). It works on any etcd, embedded or not, and
// issues no certificate: the remote cluster authenticates with a client
// certificate whose common name is the user, signed by a CA the etcd
// trusts. It fails with ErrAuthDisabled when the etcd's authentication is
// off.
func EnsureRemoteUserOn(ctx context.Context, e *clientv3.Client, own, cluster string) error {
	if err := ValidClusterName(cluster); err != nil {
		return err
	}
	return ensureReadOnlyUser(ctx, e, RemoteUser(cluster), RemotePermissions(own))
}

// EnsureLegacyRemoteUserOn is EnsureRemoteUserOn for LegacyRemoteUser, the
// user (and role) "remote" that all remote clusters share in Cilium's
// legacy auth mode.
func EnsureLegacyRemoteUserOn(ctx context.Context, e *clientv3.Client, own string) error {
	return ensureReadOnlyUser(ctx, e, LegacyRemoteUser, RemotePermissions(own))
}

func ensureReadOnlyUser(ctx context.Context, e *clientv3.Client, user string, perms [][2]string) error {
	st, err := e.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("auth status: %w", err)
	}
	if !st.Enabled {
		return fmt.Errorf("add user %s: %w; enable it (etcdctl auth enable) so that the user restricts what the remote cluster reads", user, ErrAuthDisabled)
	}
	if _, err := e.RoleAdd(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("add role %s: %w", user, err)
	}
	for _, p := range perms {
		if _, err := e.RoleGrantPermission(ctx, user, p[0], p[1], clientv3.PermissionType(clientv3.PermRead)); err != nil {
			return fmt.Errorf("grant %s read on %q: %w", user, p[0], err)
		}
	}
	if _, err := e.UserAddWithOptions(ctx, user, "", &clientv3.UserAddOptions{NoPassword: true}); err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("add user %s: %w", user, err)
	}
	if _, err := e.UserGrantRole(ctx, user, user); err != nil {
		return fmt.Errorf("grant role %s: %w", user, err)
	}
	return nil
}

// RemoveRemoteUserOn deletes, through e acting as the root user, the user
// and role remote-<cluster>; a missing user or role is not an error.
func RemoveRemoteUserOn(ctx context.Context, e *clientv3.Client, cluster string) error {
	if err := ValidClusterName(cluster); err != nil {
		return err
	}
	return removeUser(ctx, e, RemoteUser(cluster))
}

// RemoveLegacyRemoteUserOn deletes LegacyRemoteUser and its role; a
// missing user or role is not an error.
func RemoveLegacyRemoteUserOn(ctx context.Context, e *clientv3.Client) error {
	return removeUser(ctx, e, LegacyRemoteUser)
}

// HasLegacyRemoteUserOn reports whether LegacyRemoteUser exists.
func HasLegacyRemoteUserOn(ctx context.Context, e *clientv3.Client) (bool, error) {
	resp, err := e.UserList(ctx)
	if err != nil {
		return false, fmt.Errorf("list users: %w", err)
	}
	return slices.Contains(resp.Users, LegacyRemoteUser), nil
}

func removeUser(ctx context.Context, e *clientv3.Client, user string) error {
	if _, err := e.UserDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrUserNotFound) {
		return fmt.Errorf("delete user %s: %w", user, err)
	}
	if _, err := e.RoleDelete(ctx, user); err != nil && !errors.Is(err, rpctypes.ErrRoleNotFound) {
		return fmt.Errorf("delete role %s: %w", user, err)
	}
	return nil
}

// RemoteUsersOn lists, through e acting as the root user, the clusters
// that have a remote user or its role: a role left behind by a removal cut
// short between the two deletes still counts, so the next reconcile
// removes it.
func RemoteUsersOn(ctx context.Context, e *clientv3.Client) ([]string, error) {
	users, err := e.UserList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list users: %w", err)
	}
	roles, err := e.RoleList(ctx)
	if err != nil {
		return nil, fmt.Errorf("list roles: %w", err)
	}
	var clusters []string
	for _, u := range append(users.Users, roles.Roles...) {
		if name, ok := strings.CutPrefix(u, RemoteUser("")); ok && !slices.Contains(clusters, name) {
			clusters = append(clusters, name)
		}
	}
	slices.Sort(clusters)
	return clusters, nil
}
