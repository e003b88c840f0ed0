package mesh

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// DefaultNamespace is where enable installs the chart.
const DefaultNamespace = "clustermesh-system"

// Names of the objects the chart and the CLI share (see deploy/charts).
const (
	configMapConfig   = "clustermesh-config"
	configMapUsers    = "clustermesh-remote-users"
	usersKey          = "users.yaml"
	secretCA          = "clustermesh-ca"
	secretServer      = "clustermesh-apiserver-server-cert"
	secretAdmin       = "clustermesh-apiserver-admin-cert"
	secretLocalReader = "clustermesh-apiserver-local-reader-cert"
	// localReaderUser is etcdserver.LocalReaderUser, which the apiserver
	// creates (the CLI does not link the etcd server; a test checks they
	// agree).
	localReaderUser      = "local-reader"
	secretRemoteClusters = "clustermesh-remote-clusters"
	serviceAPIServer     = "clustermesh-apiserver"
	releaseName          = "clustermesh"
	// RemoteClustersDir is where the agent mounts the remote-clusters Secret.
	RemoteClustersDir = "/var/lib/clustermesh/remote-clusters"
)

// Errors the CLI reports; each is wrapped with the clusters concerned.
var (
	ErrClusterNameConflict   = errors.New("cluster names are equal")
	ErrClusterIDConflict     = errors.New("cluster IDs are equal")
	ErrInvalidClusterID      = errors.New("invalid cluster ID")
	ErrMaxConnectedMismatch  = errors.New("maxConnectedClusters differ")
	ErrNotEnabled            = errors.New("clustermesh is not enabled in this cluster")
	ErrUnreachable           = errors.New("cannot reach the cluster's kube-apiserver")
	ErrNoEndpoint            = errors.New("no endpoint for the clustermesh-apiserver")
	ErrEndpointUnreachable   = errors.New("clustermesh-apiserver endpoint unreachable")
	ErrClusterIdentityChange = errors.New("cluster is already enabled with another name or ID")
	ErrNotReady              = errors.New("mesh not ready")
	ErrUsage                 = errors.New("invalid arguments")
)

// Target says how to reach one cluster: a kubeconfig context.
type Target struct {
	// Kubeconfig is an explicit kubeconfig path; empty means the KUBECONFIG
	// list or ~/.kube/config.
	Kubeconfig string
	// Context is the kubeconfig context; empty means the current one.
	Context string
	// Namespace holds the release (default DefaultNamespace).
	Namespace string
}

// Cluster is an open connection to one cluster's Kubernetes API.
type Cluster struct {
	Target
	Getter genericclioptions.RESTClientGetter
	REST   *rest.Config
	Client kubernetes.Interface
}

// Open builds the clients of t. It does not contact the cluster.
func Open(t Target) (*Cluster, error) {
	if t.Namespace == "" {
		t.Namespace = DefaultNamespace
	}
	f := genericclioptions.NewConfigFlags(false)
	f.KubeConfig, f.Context, f.Namespace = &t.Kubeconfig, &t.Context, &t.Namespace
	cfg, err := f.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", t.Context, err)
	}
	if t.Context == "" {
		raw, err := f.ToRawKubeConfigLoader().RawConfig()
		if err == nil {
			t.Context = raw.CurrentContext
		}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("context %q: %w", t.Context, err)
	}
	return &Cluster{Target: t, Getter: f, REST: cfg, Client: cs}, nil
}

func (c *Cluster) String() string { return c.Context }

// Info is a cluster's identity in the mesh, from the chart's ConfigMap.
type Info struct {
	Name                 string `json:"name"`
	ID                   uint32 `json:"id"`
	MaxConnectedClusters int    `json:"maxConnectedClusters"`
	// Endpoints are set with an external etcd; else the Service is used.
	Endpoints []string `json:"endpoints,omitempty"`
}

// ReadInfo reads the cluster's name, ID and maxConnectedClusters.
func (c *Cluster) ReadInfo(ctx context.Context) (Info, error) {
	cm, err := c.Client.CoreV1().ConfigMaps(c.Namespace).Get(ctx, configMapConfig, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Info{}, fmt.Errorf("context %q (namespace %s): %w; run clustermesh enable first", c.Context, c.Namespace, ErrNotEnabled)
	}
	if err != nil {
		return Info{}, fmt.Errorf("context %q: read %s: %w", c.Context, configMapConfig, reachErr(err))
	}
	return parseInfo(c.Context, cm)
}

// reachErr wraps err with ErrUnreachable when no kube-apiserver answered
// (no API status: connection refused, timeout, DNS, TLS).
func reachErr(err error) error {
	var st apierrors.APIStatus
	if errors.As(err, &st) {
		return err
	}
	return fmt.Errorf("%w: %w", ErrUnreachable, err)
}

func parseInfo(context string, cm *corev1.ConfigMap) (Info, error) {
	id, err := strconv.ParseUint(cm.Data["cluster-id"], 10, 32)
	if err != nil {
		return Info{}, fmt.Errorf("context %q: cluster-id %q: %w", context, cm.Data["cluster-id"], ErrInvalidClusterID)
	}
	maxc, err := strconv.Atoi(cm.Data["max-connected-clusters"])
	if err != nil {
		return Info{}, fmt.Errorf("context %q: max-connected-clusters %q: %w", context, cm.Data["max-connected-clusters"], err)
	}
	info := Info{Name: cm.Data["cluster-name"], ID: uint32(id), MaxConnectedClusters: maxc}
	if ep := cm.Data["endpoints"]; ep != "" {
		info.Endpoints = splitComma(ep)
	}
	return info, nil
}

func splitComma(s string) []string {
	var out []string
	start := 0
	for i := 0; i <= len(s); i++ {
		if i == len(s) || s[i] == ',' {
			if i > start {
				out = append(out, s[start:i])
			}
			start = i + 1
		}
	}
	return out
}
