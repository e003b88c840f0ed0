package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"helm.sh/helm/v3/pkg/action"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/release"
	"helm.sh/helm/v3/pkg/storage/driver"
	"helm.sh/helm/v3/pkg/strvals"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Connection modes of the agents (chart value agent.connectionMode).
const (
	// ConnectionDirect: every agent connects to every remote cluster's etcd.
	ConnectionDirect = "direct"
	// ConnectionKVStoreMesh: every agent reads the kvstoremesh cache of its
	// own cluster's etcd; the apiserver holds one connection per remote.
	ConnectionKVStoreMesh = "kvstoremesh"
)

// EnableConfig is what enable installs.
type EnableConfig struct {
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters int
	// ServiceType is LoadBalancer, NodePort or ClusterIP; empty keeps the
	// chart's default (NodePort).
	ServiceType string
	// ServerSANs are extra hosts of the etcd server certificate.
	ServerSANs []string
	// ConnectionMode is how the agents read remote clusters:
	// ConnectionDirect or ConnectionKVStoreMesh; empty keeps the chart's
	// value (direct).
	ConnectionMode string
	// Set holds extra chart values in Helm's --set syntax (key=value,...).
	Set []string
	// Wait waits for the workloads to become ready (needs nodes that run pods).
	Wait    bool
	Timeout time.Duration
}

// EnableResult says what enable did.
type EnableResult struct {
	Release  string
	Revision int
	Upgraded bool
	// CreatedCA is true when the cluster's CA was created by this run.
	CreatedCA bool
}

// Enable installs or upgrades the embedded chart in c, creating the cluster's
// CA, etcd server certificate and root client certificate as Secrets (kept
// and reused on later runs).
func Enable(ctx context.Context, c *Cluster, cfg EnableConfig, log *slog.Logger) (EnableResult, error) {
	if cfg.MaxConnectedClusters == 0 {
		cfg.MaxConnectedClusters = wire.DefaultMaxConnectedClusters
	}
	if err := wire.ValidateCluster(cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters); err != nil {
		return EnableResult{}, fmt.Errorf("enable %s: %w", c.Context, err)
	}
	if cfg.ClusterID == 0 {
		return EnableResult{}, fmt.Errorf("enable %s: %w: 0 is reserved", c.Context, ErrInvalidClusterID)
	}
	vals := map[string]any{}
	for _, s := range cfg.Set {
		if err := strvals.ParseInto(s, vals); err != nil {
			return EnableResult{}, fmt.Errorf("enable %s: --set %q: %w", c.Context, s, err)
		}
	}
	setPath(vals, "cluster.name", cfg.ClusterName)
	setPath(vals, "cluster.id", int64(cfg.ClusterID))
	setPath(vals, "maxConnectedClusters", int64(cfg.MaxConnectedClusters))
	setPath(vals, "tls.source", "existing")
	if cfg.ServiceType != "" {
		setPath(vals, "apiserver.service.type", cfg.ServiceType)
	}
	switch cfg.ConnectionMode {
	case "":
	case ConnectionDirect, ConnectionKVStoreMesh:
		setPath(vals, "agent.connectionMode", cfg.ConnectionMode)
		if cfg.ConnectionMode == ConnectionKVStoreMesh {
			setPath(vals, "kvstoremesh.enabled", true)
		}
	default:
		return EnableResult{}, fmt.Errorf("%w: connection mode %q (want %s or %s)", ErrUsage, cfg.ConnectionMode, ConnectionDirect, ConnectionKVStoreMesh)
	}

	if err := c.checkIdentity(ctx, cfg); err != nil {
		return EnableResult{}, err
	}
	log.Info("preparing certificates", "context", c.Context, "namespace", c.Namespace)
	if err := c.ensureNamespace(ctx); err != nil {
		return EnableResult{}, err
	}
	chrt, err := deploy.LoadChart()
	if err != nil {
		return EnableResult{}, err
	}
	ca, created, err := c.ensureCA(ctx, cfg.ClusterName)
	if err != nil {
		return EnableResult{}, err
	}
	sans := append(slices.Clone(cfg.ServerSANs), c.expectedEndpointHosts(ctx, chrt, vals, log)...)
	if _, err := c.ensureServerCert(ctx, ca, cfg.ClusterName, sans); err != nil {
		return EnableResult{}, err
	}
	if _, err := c.ensureClientSecret(ctx, ca, secretAdmin, "root"); err != nil {
		return EnableResult{}, err
	}
	if _, err := c.ensureClientSecret(ctx, ca, secretLocalReader, localReaderUser); err != nil {
		return EnableResult{}, err
	}

	ac := new(action.Configuration)
	debug := func(format string, v ...any) { log.Debug(fmt.Sprintf(format, v...)) }
	if err := ac.Init(c.Getter, c.Namespace, "secret", debug); err != nil {
		return EnableResult{}, fmt.Errorf("enable %s: helm: %w", c.Context, err)
	}
	res := EnableResult{Release: releaseName, CreatedCA: created}
	var rel *release.Release
	hist := action.NewHistory(ac)
	hist.Max = 1
	_, err = hist.Run(releaseName)
	switch {
	case errors.Is(err, driver.ErrReleaseNotFound):
		log.Info("installing the clustermesh chart", "context", c.Context, "cluster", cfg.ClusterName, "id", cfg.ClusterID)
		in := action.NewInstall(ac)
		in.ReleaseName, in.Namespace, in.CreateNamespace = releaseName, c.Namespace, true
		in.Wait, in.Timeout = cfg.Wait, cfg.Timeout
		rel, err = in.RunWithContext(ctx, chrt, vals)
	case err == nil:
		log.Info("upgrading the clustermesh chart", "context", c.Context, "cluster", cfg.ClusterName, "id", cfg.ClusterID)
		up := action.NewUpgrade(ac)
		up.Namespace = c.Namespace
		up.Wait, up.Timeout = cfg.Wait, cfg.Timeout
		res.Upgraded = true
		rel, err = up.RunWithContext(ctx, releaseName, chrt, vals)
	}
	if err != nil {
		return res, fmt.Errorf("enable %s: helm: %w", c.Context, err)
	}
	res.Revision = rel.Version
	log.Info("clustermesh enabled", "context", c.Context, "release", rel.Name, "revision", rel.Version, "status", rel.Info.Status)
	return res, nil
}

// expectedEndpointHosts returns the hosts other clusters will dial to reach
// the clustermesh-apiserver as far as they are known before the chart is
// installed: the node InternalIPs for a NodePort Service, and the addresses
// of the Service when it exists already (an upgrade, a load balancer that
// has its ingress). The server certificate is issued for them here, before
// the apiserver pod starts: when only connect added them, the agents of the
// other cluster dialled a certificate without them ("valid for 127.0.0.1,
// ::1, not <node IP>") until the kubelet refreshed the Secret volume, up to
// a minute later. Hosts that cannot be known yet are left to connect.
func (c *Cluster) expectedEndpointHosts(ctx context.Context, chrt *chart.Chart, vals map[string]any, log *slog.Logger) []string {
	var hosts []string
	if eps, err := c.endpoints(ctx, Info{}); err == nil {
		hosts = endpointHosts(eps)
	}
	merged, err := chartutil.CoalesceValues(chrt, vals)
	if err != nil {
		return hosts
	}
	if typ, _ := merged.PathValue("apiserver.service.type"); typ != string(corev1.ServiceTypeNodePort) {
		return hosts
	}
	addrs, err := c.nodeAddresses(ctx)
	if err != nil {
		log.Info("no node address for the server certificate yet; connect adds them", "context", c.Context, "error", err)
		return hosts
	}
	return append(hosts, addrs...)
}

// checkIdentity refuses to change the name or ID of an enabled cluster:
// remote clusters and allocated identities depend on them.
func (c *Cluster) checkIdentity(ctx context.Context, cfg EnableConfig) error {
	cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, configMapConfig, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("enable %s: %w", c.Context, err)
	}
	info, err := parseInfo(c.Context, cm)
	if err != nil {
		return err
	}
	if info.Name != cfg.ClusterName || info.ID != cfg.ClusterID {
		return fmt.Errorf("enable %s: %w: it is %s (ID %d), asked for %s (ID %d)", c.Context, ErrClusterIdentityChange,
			info.Name, info.ID, cfg.ClusterName, cfg.ClusterID)
	}
	if info.MaxConnectedClusters != cfg.MaxConnectedClusters {
		return fmt.Errorf("enable %s: %w: it has %d, asked for %d", c.Context, ErrMaxConnectedMismatch, info.MaxConnectedClusters, cfg.MaxConnectedClusters)
	}
	return nil
}

func (c *Cluster) ensureNamespace(ctx context.Context) error {
	_, err := c.Client.CoreV1().Namespaces().Get(ctx, c.Namespace, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: c.Namespace}}
		_, err = c.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil
		}
	}
	if err != nil {
		return fmt.Errorf("context %q: namespace %s: %w", c.Context, c.Namespace, err)
	}
	return nil
}

func setPath(m map[string]any, key string, val any) {
	start := 0
	for i := 0; i < len(key); i++ {
		if key[i] != '.' {
			continue
		}
		p := key[start:i]
		next, ok := m[p].(map[string]any)
		if !ok {
			next = map[string]any{}
			m[p] = next
		}
		m, start = next, i+1
	}
	m[key[start:]] = val
}
