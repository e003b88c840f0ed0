package remoteconn

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Reasons a remote is refused.
var (
	// ErrClusterIDConflict: the remote's cluster ID is the own one or is
	// held by another connected remote.
	ErrClusterIDConflict = errors.New("cluster ID conflict")
	// ErrClusterConfig: the remote's cluster config is missing, invalid or
	// incompatible (ID 0, maxConnectedClusters mismatch).
	ErrClusterConfig = errors.New("unusable cluster config")
	// ErrConfigFile: the config file cannot be parsed.
	ErrConfigFile = errors.New("unusable config file")
)

// Own describes the local cluster a remote is checked against.
type Own struct {
	Name                 string
	ID                   uint32
	MaxConnectedClusters int
	// Dial, when set, is how this cluster dials a remote's etcd endpoints
	// (kvstore.Config.Dial); nil dials through system DNS.
	Dial kvstore.Dialer
}

// ParseConfigFile parses one config file: the name must be a valid cluster
// name other than own, the content an etcd client config.
func ParseConfigFile(name, own string, data []byte) (kvstore.Config, error) {
	if name == own {
		return kvstore.Config{}, fmt.Errorf("%w: %q is the agent's own cluster", ErrConfigFile, name)
	}
	if err := wire.ValidateClusterName(name); err != nil {
		return kvstore.Config{}, fmt.Errorf("%w: %w", ErrConfigFile, err)
	}
	cfg, err := kvstore.ParseConfig(data)
	if err != nil {
		return kvstore.Config{}, fmt.Errorf("%w: %w", ErrConfigFile, err)
	}
	return cfg, nil
}

// Connect parses the config file data of remote name, connects, reads its
// cluster config and checks it against own. On success the caller owns
// the client; the cluster ID is not reserved (CheckID). When the cluster
// config was read but fails the checks, it is returned with the error:
// the remote is reachable and says what it is now.
func Connect(ctx context.Context, name string, own Own, data []byte, log *slog.Logger) (*kvstore.Client, wire.ClusterConfig, error) {
	cfg, err := ParseConfigFile(name, own.Name, data)
	if err != nil {
		return nil, wire.ClusterConfig{}, err
	}
	cfg.Dial = own.Dial
	client, err := kvstore.New(ctx, cfg, log)
	if err != nil {
		return nil, wire.ClusterConfig{}, fmt.Errorf("connect: %w", err)
	}
	cc, err := ReadClusterConfig(ctx, client, name)
	if err != nil {
		err = Explain(ctx, client, err)
		client.Close()
		return nil, wire.ClusterConfig{}, err
	}
	if err := cc.Compatible(own.ID, own.MaxConnectedClusters); err != nil {
		err = fmt.Errorf("%w: %w", ErrClusterConfig, err)
		if errors.Is(err, wire.ErrInvalidClusterID) {
			err = fmt.Errorf("%w: %w", ErrClusterIDConflict, err)
		}
		client.Close()
		return nil, cc, err
	}
	return client, cc, nil
}

// ReadClusterConfig reads and validates cilium/cluster-config/<name>.
func ReadClusterConfig(ctx context.Context, c *kvstore.Client, name string) (wire.ClusterConfig, error) {
	gctx, cancel := context.WithTimeout(ctx, c.Config().DialTimeout.D())
	defer cancel()
	resp, err := c.Etcd().Get(gctx, wire.ClusterConfigKey(name))
	if err != nil {
		return wire.ClusterConfig{}, fmt.Errorf("read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return wire.ClusterConfig{}, fmt.Errorf("%w: %s is missing", ErrClusterConfig, wire.ClusterConfigKey(name))
	}
	cc, err := wire.DecodeClusterConfig(resp.Kvs[0].Value)
	if err != nil {
		return wire.ClusterConfig{}, fmt.Errorf("%w: %w", ErrClusterConfig, err)
	}
	return cc, nil
}

// CheckID says whether remote name may hold cluster ID id, given the own
// cluster's ID and holder, the remote that holds id now ("" for none).
func CheckID(id, own uint32, holder, name string) error {
	if id == 0 {
		return fmt.Errorf("%w: cluster ID 0 is reserved", ErrClusterConfig)
	}
	if id == own {
		return fmt.Errorf("%w: %d is the agent's own cluster ID", ErrClusterIDConflict, id)
	}
	if holder != "" && holder != name {
		return fmt.Errorf("%w: %d is used by connected cluster %q", ErrClusterIDConflict, id, holder)
	}
	return nil
}

// AccessDenied reports whether err is the remote etcd refusing our user:
// missing, without the role yet, or failing authentication.
func AccessDenied(err error) bool {
	for _, e := range []error{rpctypes.ErrPermissionDenied, rpctypes.ErrUserNotFound, rpctypes.ErrAuthFailed,
		rpctypes.ErrGRPCPermissionDenied, rpctypes.ErrGRPCUserNotFound, rpctypes.ErrGRPCAuthFailed} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Refusal returns err if it refuses the remote for good (until its config
// file or its cluster config changes): a cluster ID conflict, an unusable
// cluster config or config file. Anything else (unreachable, TLS, access
// denied, a timeout) is a failure that a retry may mend: nil.
func Refusal(err error) error {
	for _, e := range []error{ErrClusterIDConflict, ErrClusterConfig, ErrConfigFile} {
		if errors.Is(err, e) {
			return err
		}
	}
	return nil
}

// Explain replaces a bare timeout of a request to the remote's etcd by
// what a fresh connection to its endpoints finds (connection refused, a
// TLS failure), or says that they accept connections and etcd did not
// answer.
func Explain(ctx context.Context, c *kvstore.Client, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil {
		return err
	}
	if cause := c.Diagnose(ctx); cause != nil {
		return fmt.Errorf("%w (%w)", cause, err)
	}
	return fmt.Errorf("%w (the endpoints accept connections, but etcd did not answer within %v)", err, c.Config().DialTimeout.D())
}
