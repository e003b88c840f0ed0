package server

import (
	"errors"
	"fmt"
	"time"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/clusterinfo"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/identity"
	"github.com/clustermesh/clustermesh/internal/httpserve"
	"github.com/clustermesh/clustermesh/kvstore/kvstoremesh"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// ErrFlag is wrapped by every configuration error; the message names the flag.
var ErrFlag = errors.New("invalid flag")

// Config is the whole configuration of the clustermesh-apiserver.
type Config struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters int
	Kubeconfig           string // empty: in-cluster

	KVStoreConfig     string // external etcd client config; empty: embedded etcd
	EtcdDataDir       string
	EtcdListenAddress string   // host:port of the embedded etcd's client URL
	EtcdAdvertise     string   // host:port remote clusters reach the embedded etcd at (default: the listen address)
	EtcdTLSDir        string   // CA (ca.crt, ca.key), admin (root.crt, root.key) and generated certificates of the embedded etcd
	EtcdServerTLSDir  string   // served certificate (tls.crt, tls.key), reloaded on change; empty: generated
	RemoteClusters    []string // deprecated: use RemoteUsersFile; the users are the union of both
	RemoteUsersFile   string   // users.yaml ("clusters: [c2, c3]"), watched for changes
	RemoteUsersResync time.Duration
	RemoteConfigDir   string // where remote users' client configs and certificates go

	StatusNamespace string // where the status ConfigMap is published; empty: not published
	StatusInterval  time.Duration

	HealthAddress  string
	MetricsAddress string
	// PprofAddress serves net/http/pprof ("": off, the default).
	PprofAddress string

	// KVStoreMesh mirrors remote clusters into this cluster's etcd when
	// its Dir is set (Own is filled from the cluster's settings).
	KVStoreMesh kvstoremesh.Config

	HeartbeatInterval   time.Duration
	IdentityGracePeriod time.Duration
	PodWorkers          int
	ServiceWorkers      int
	NodeWorkers         int
}

// DefaultConfig returns the defaults of every setting.
func DefaultConfig() Config {
	return Config{
		MaxConnectedClusters: wire.DefaultMaxConnectedClusters,
		EtcdDataDir:          "/var/lib/clustermesh-apiserver/etcd",
		EtcdListenAddress:    "0.0.0.0:2379",
		RemoteConfigDir:      "/var/lib/clustermesh-apiserver/remotes",
		RemoteUsersResync:    30 * time.Second,
		StatusInterval:       30 * time.Second,
		HealthAddress:        ":9880",
		MetricsAddress:       ":9962",
		KVStoreMesh:          kvstoremesh.DefaultConfig(),
		HeartbeatInterval:    clusterinfo.DefaultHeartbeatInterval,
		IdentityGracePeriod:  identity.DefaultGracePeriod,
		PodWorkers:           4,
		ServiceWorkers:       2,
		NodeWorkers:          2,
	}
}

// RegisterFlags binds c's fields to flags of fs, with c's values as defaults.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName, "name of this cluster in the mesh (required)")
	fs.Uint32Var(&c.ClusterID, "cluster-id", c.ClusterID, "ID of this cluster in the mesh, 1..max-connected-clusters (required)")
	fs.IntVar(&c.MaxConnectedClusters, "max-connected-clusters", c.MaxConnectedClusters, "255 or 511; must be the same in every cluster of the mesh")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig file (default: in-cluster configuration)")
	fs.StringVar(&c.KVStoreConfig, "kvstore-config", c.KVStoreConfig, "etcd client config file of an external etcd (default: run an embedded etcd)")
	fs.StringVar(&c.EtcdDataDir, "etcd-data-dir", c.EtcdDataDir, "data directory of the embedded etcd")
	fs.StringVar(&c.EtcdListenAddress, "etcd-listen-address", c.EtcdListenAddress, "host:port the embedded etcd serves clients on (TLS)")
	fs.StringVar(&c.EtcdAdvertise, "etcd-advertise-address", c.EtcdAdvertise, "host:port remote clusters reach the embedded etcd at, written in their client configs and the server certificate (default: --etcd-listen-address)")
	fs.StringVar(&c.EtcdTLSDir, "etcd-tls-dir", c.EtcdTLSDir, "CA and certificates of the embedded etcd, generated if missing (default: <etcd-data-dir>-pki)")
	fs.StringVar(&c.EtcdServerTLSDir, "etcd-server-tls-dir", c.EtcdServerTLSDir, "directory with the server certificate the embedded etcd serves to clients (tls.crt, tls.key, signed by the CA of --etcd-tls-dir, covering 127.0.0.1 and every address remote clusters dial); re-read on every handshake, so a rotated certificate is served without restart (default: a certificate generated into --etcd-tls-dir)")
	fs.StringSliceVar(&c.RemoteClusters, "remote-clusters", c.RemoteClusters, "deprecated, use --remote-users-file: clusters to create read-only etcd users remote-<name> for, with their client configs in --remote-config-dir (embedded etcd only); added to those of the file")
	_ = fs.MarkDeprecated("remote-clusters", "use --remote-users-file (both are applied: the users are their union)")
	fs.StringVar(&c.RemoteUsersFile, "remote-users-file", c.RemoteUsersFile, `YAML file "clusters: [c2, c3]" naming the clusters that get a read-only etcd user remote-<name>, in the embedded etcd or, with --kvstore-config, in the external one (whose auth must be on); changes apply without restart`)
	fs.DurationVar(&c.RemoteUsersResync, "remote-users-resync", c.RemoteUsersResync, "how often the remote users are reconciled with --remote-users-file even without a file change")
	fs.StringVar(&c.StatusNamespace, "status-namespace", c.StatusNamespace, "namespace of the status ConfigMap read by `clustermesh status` (empty: not published)")
	fs.DurationVar(&c.StatusInterval, "status-interval", c.StatusInterval, "how often the status ConfigMap is refreshed even without a change")
	fs.StringVar(&c.RemoteConfigDir, "remote-config-dir", c.RemoteConfigDir, "where the client config and certificates of each remote user of the embedded etcd are written (unused with --kvstore-config)")
	fs.StringVar(&c.HealthAddress, "health-address", c.HealthAddress, "address of /healthz and /readyz")
	fs.StringVar(&c.MetricsAddress, "metrics-address", c.MetricsAddress, "address of Prometheus /metrics (empty: disabled)")
	fs.StringVar(&c.PprofAddress, "pprof-address", c.PprofAddress, httpserve.PprofFlagUsage)
	c.KVStoreMesh.RegisterFlags(fs)
	fs.DurationVar(&c.HeartbeatInterval, "heartbeat-interval", c.HeartbeatInterval, "how often cilium/.heartbeat is rewritten")
	fs.DurationVar(&c.IdentityGracePeriod, "identity-grace-period", c.IdentityGracePeriod, "how long an identity no pod uses stays allocated")
	fs.IntVar(&c.PodWorkers, "pod-workers", c.PodWorkers, "concurrent pod reconcilers")
	fs.IntVar(&c.ServiceWorkers, "service-workers", c.ServiceWorkers, "concurrent service reconcilers")
	fs.IntVar(&c.NodeWorkers, "node-workers", c.NodeWorkers, "concurrent node reconcilers")
}

// Validate checks c; every error wraps ErrFlag and names the flag at fault.
func (c *Config) Validate() error {
	bad := func(flag string, err error) error { return fmt.Errorf("%w --%s: %w", ErrFlag, flag, err) }
	if err := wire.ValidateMaxConnectedClusters(c.MaxConnectedClusters); err != nil {
		return bad("max-connected-clusters", err)
	}
	if err := wire.ValidateClusterName(c.ClusterName); err != nil {
		return bad("cluster-name", err)
	}
	if err := wire.ValidateClusterID(c.ClusterID, c.MaxConnectedClusters); err != nil {
		return bad("cluster-id", err)
	}
	if err := wire.ValidateCluster(c.ClusterName, c.ClusterID, c.MaxConnectedClusters); err != nil {
		return bad("cluster-name", err)
	}
	for _, r := range c.RemoteClusters {
		if err := wire.ValidateClusterName(r); err != nil {
			return bad("remote-clusters", err)
		}
		if r == c.ClusterName {
			return bad("remote-clusters", fmt.Errorf("%q is this cluster", r))
		}
	}
	if len(c.RemoteClusters) > 0 && c.KVStoreConfig != "" {
		// The flag's contract includes the client configs it writes into
		// --remote-config-dir, whose certificates only the embedded etcd's
		// CA can issue; an external etcd's users come from the users file.
		return bad("remote-clusters", errors.New("writes client certificates of the embedded etcd only; with --kvstore-config use --remote-users-file"))
	}
	if c.KVStoreConfig != "" && c.EtcdServerTLSDir != "" {
		return bad("etcd-server-tls-dir", errors.New("applies to the embedded etcd only, not with --kvstore-config"))
	}
	if c.RemoteUsersResync <= 0 {
		return bad("remote-users-resync", errors.New("must be positive"))
	}
	if c.StatusInterval <= 0 {
		return bad("status-interval", errors.New("must be positive"))
	}
	if c.KVStoreConfig == "" && c.EtcdDataDir == "" {
		return bad("etcd-data-dir", errors.New("required for the embedded etcd"))
	}
	if c.KVStoreMesh.StaleTTL < 0 {
		return bad("kvstoremesh-stale-ttl", errors.New("must not be negative"))
	}
	if c.HeartbeatInterval <= 0 {
		return bad("heartbeat-interval", errors.New("must be positive"))
	}
	if c.IdentityGracePeriod <= 0 {
		return bad("identity-grace-period", errors.New("must be positive"))
	}
	for flag, n := range map[string]int{"pod-workers": c.PodWorkers, "service-workers": c.ServiceWorkers, "node-workers": c.NodeWorkers} {
		if n <= 0 {
			return bad(flag, errors.New("must be positive"))
		}
	}
	return nil
}
