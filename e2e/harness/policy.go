package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// writeOwnKVStoreConfig writes the client config the cluster's agents read
// their own pods' identities with (--kvstore-config), as the chart mounts
// it: the apiserver's etcd at its load balancer address, as the user
// local-reader, whose certificate the apiserver issued into its TLS
// directory. With an external etcd the agents get none.
func (c *Cluster) writeOwnKVStoreConfig() error {
	if c.etcdPort == 0 {
		return nil
	}
	dir := c.tlsDir()
	cfg := kvstore.Config{
		Endpoints:     []string{"https://" + c.advertise},
		TrustedCAFile: filepath.Join(dir, "ca.crt"),
		CertFile:      filepath.Join(dir, etcdserver.LocalReaderUser+".crt"),
		KeyFile:       filepath.Join(dir, etcdserver.LocalReaderUser+".key"),
	}
	data, err := json.Marshal(cfg)
	if err != nil {
		return err
	}
	path := filepath.Join(c.dir, "own-kvstore.yaml")
	if err := writeAtomic(path, data); err != nil {
		return fmt.Errorf("own kvstore config of %s: %w", c.Name, err)
	}
	c.ownKVStore = path
	return nil
}

// policyResources maps the policy kinds the agents watch to their resources.
var policyResources = map[string]schema.GroupVersionResource{
	"NetworkPolicy":                  {Group: "networking.k8s.io", Version: "v1", Resource: "networkpolicies"},
	"CiliumNetworkPolicy":            {Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"},
	"CiliumClusterwideNetworkPolicy": {Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"},
}

// policyClient returns the dynamic client of the kind of u, namespaced
// when u has a namespace.
func policyClient(cfg *rest.Config, u *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvr, ok := policyResources[u.GetKind()]
	if !ok {
		return nil, fmt.Errorf("apply policy: kind %q is no policy kind", u.GetKind())
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	if u.GetNamespace() != "" {
		return dyn.Resource(gvr).Namespace(u.GetNamespace()), nil
	}
	return dyn.Resource(gvr), nil
}

// ApplyPolicy creates or replaces the policy object written in manifest
// (YAML: a NetworkPolicy, CiliumNetworkPolicy or
// CiliumClusterwideNetworkPolicy) in c and returns it as stored.
func (c *Cluster) ApplyPolicy(ctx context.Context, manifest string) (*unstructured.Unstructured, error) {
	return ApplyPolicy(ctx, c.CP.REST, c.Name, manifest)
}

// DeletePolicy deletes the policy object u (as ApplyPolicy returned it);
// a missing one is no error.
func (c *Cluster) DeletePolicy(ctx context.Context, u *unstructured.Unstructured) error {
	return DeletePolicy(ctx, c.CP.REST, c.Name, u)
}

// ApplyPolicy creates or replaces the policy object written in manifest
// in the cluster named cluster whose kube-apiserver cfg reaches (the
// install test's clusters on kubelets are no Mesh's).
func ApplyPolicy(ctx context.Context, cfg *rest.Config, cluster, manifest string) (*unstructured.Unstructured, error) {
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(manifest), &u.Object); err != nil {
		return nil, fmt.Errorf("apply policy: %w", err)
	}
	rc, err := policyClient(cfg, u)
	if err != nil {
		return nil, err
	}
	old, err := rc.Get(ctx, u.GetName(), metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		out, err := rc.Create(ctx, u, metav1.CreateOptions{})
		if err != nil {
			return nil, fmt.Errorf("create %s %s in %s: %w", u.GetKind(), u.GetName(), cluster, err)
		}
		return out, nil
	case err != nil:
		return nil, fmt.Errorf("get %s %s in %s: %w", u.GetKind(), u.GetName(), cluster, err)
	}
	u.SetResourceVersion(old.GetResourceVersion())
	out, err := rc.Update(ctx, u, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("update %s %s in %s: %w", u.GetKind(), u.GetName(), cluster, err)
	}
	return out, nil
}

// DeletePolicy deletes the policy object u of the cluster cfg reaches; a
// missing one is no error.
func DeletePolicy(ctx context.Context, cfg *rest.Config, cluster string, u *unstructured.Unstructured) error {
	rc, err := policyClient(cfg, u)
	if err != nil {
		return err
	}
	if err := rc.Delete(ctx, u.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete %s %s in %s: %w", u.GetKind(), u.GetName(), cluster, err)
	}
	return nil
}

// EnsureNamespace creates the Kubernetes namespace name with labels in c
// unless it exists.
func (c *Cluster) EnsureNamespace(ctx context.Context, name string, labels map[string]string) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	if _, err := c.CP.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s in %s: %w", name, c.Name, err)
	}
	return nil
}

// SetLabels replaces the labels of the pod's Pod object (its identity in
// its cluster changes with them).
func (p *Pod) SetLabels(ctx context.Context, labels map[string]string) error {
	pods := p.Node.Cluster.CP.Client.CoreV1().Pods(p.Namespace)
	obj, err := pods.Get(ctx, p.Name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("relabel pod %s/%s: %w", p.Node.Cluster.Name, p.Name, err)
	}
	obj.Labels = labels
	if _, err := pods.Update(ctx, obj, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("relabel pod %s/%s: %w", p.Node.Cluster.Name, p.Name, err)
	}
	return nil
}

// PolicyStatus is the policy part of `clustermesh-agent status -o json`.
type PolicyStatus struct {
	Policies uint32 `json:"policies"`
	Refused  []struct {
		Policy string `json:"policy"`
		Reason string `json:"reason"`
	} `json:"refused"`
	Drops []PolicyDrops `json:"drops"`
	// WorldIngress: whether ingress from world is decided on the host's
	// path (beside a primary CNI only with --cluster-cidrs).
	WorldIngress struct {
		Enforced bool   `json:"enforced"`
		State    string `json:"state"`
	} `json:"worldIngress"`
}

// PolicyDrops counts the drops of one policy, direction and source cluster.
type PolicyDrops struct {
	Policy        string `json:"policy"`
	Direction     string `json:"direction"`
	SourceCluster string `json:"sourceCluster"`
	Count         uint64 `json:"count,string"`
}

// DropCount returns the count of policy, direction and source cluster (0 when
// none was counted).
func (s PolicyStatus) DropCount(policy, direction, srcCluster string) uint64 {
	for _, d := range s.Drops {
		if d.Policy == policy && d.Direction == direction && d.SourceCluster == srcCluster {
			return d.Count
		}
	}
	return 0
}

// Trace is `clustermesh-agent policy trace -o json`.
type Trace struct {
	Allowed     bool         `json:"allowed"`
	SrcIdentity uint32       `json:"srcIdentity"`
	DstIdentity uint32       `json:"dstIdentity"`
	Egress      TraceVerdict `json:"egress"`
	Ingress     TraceVerdict `json:"ingress"`
	// Service is set when dst is a Service frontend the agent translates:
	// the flow is traced to each of its Backends.
	Service  string         `json:"service"`
	Backends []TraceBackend `json:"backends"`
}

// TraceBackend is the trace to one backend of a Service.
type TraceBackend struct {
	Address  string       `json:"address"`
	Identity uint32       `json:"identity"`
	Allowed  bool         `json:"allowed"`
	Egress   TraceVerdict `json:"egress"`
	Ingress  TraceVerdict `json:"ingress"`
}

// TraceVerdict is one side of a Trace.
type TraceVerdict struct {
	Evaluated bool   `json:"evaluated"`
	Allowed   bool   `json:"allowed"`
	Rule      string `json:"rule"`
	Reason    string `json:"reason"`
}

// PolicyTrace runs `clustermesh-agent policy trace` against n's agent for
// a flow from src to dst (each namespace/pod of n, an identity or labels
// k=v,...) on port dport ("8080/TCP"), in the format "json" (decoded into
// the Trace) or "table" (the text, for people).
func (n *Node) PolicyTrace(ctx context.Context, src, dst, dport, format string) (Trace, string, error) {
	cmd := exec.CommandContext(ctx, n.Cluster.mesh.cfg.Bins.Agent, "policy", "trace", "--status-socket="+n.StatusSocket,
		"--src="+src, "--dst="+dst, "--dport="+dport, "-o", format)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return Trace{}, string(out), fmt.Errorf("agent %s/%s policy trace %s → %s: %w: %s", n.Cluster.Name, n.Name, src, dst, err, strings.TrimSpace(string(out)))
	}
	var tr Trace
	if format == "json" {
		if err := json.Unmarshal(out, &tr); err != nil {
			return Trace{}, string(out), fmt.Errorf("agent %s/%s policy trace: %w", n.Cluster.Name, n.Name, err)
		}
	}
	return tr, string(out), nil
}
