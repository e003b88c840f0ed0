package pods

import (
	"regexp"
	"strings"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Label keys Cilium derives for a pod's identity (pkg/k8s/apis/cilium.io).
const (
	// ciliumKeyPrefix: pod labels under it are Cilium's to set; a pod's own
	// are dropped (it must not claim another cluster or service account).
	ciliumKeyPrefix = "io.cilium.k8s"
	// NamespaceLabelsPrefix carries each label of the pod's namespace:
	// io.cilium.k8s.namespace.labels.<key>=<value>.
	NamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
	// ServiceAccountLabelKey names the pod's service account.
	ServiceAccountLabelKey = "io.cilium.k8s.policy.serviceaccount"
)

// labelRule is one entry of Cilium's default identity label filter
// (pkg/labelsfilter, defaultLabelPrefixCfg): a regular expression that
// must match at the start of the key, including or ignoring it.
type labelRule struct {
	re     *regexp.Regexp
	ignore bool
}

// defaultLabelRules are Cilium 1.18's defaults: the namespace, namespace
// labels, app.kubernetes.io, cluster and service account are included;
// other io.kubernetes and kubernetes.io keys, per-pod keys of StatefulSets
// and indexed Jobs, Job controller UIDs, beta.kubernetes.io and k8s.io
// keys, revision hashes, annotations and etcd_node are ignored.
var defaultLabelRules = func() []labelRule {
	var rules []labelRule
	for _, e := range []string{
		regexp.QuoteMeta(wire.NamespaceLabelKey),
		regexp.QuoteMeta(strings.TrimSuffix(NamespaceLabelsPrefix, ".")),
		regexp.QuoteMeta("app.kubernetes.io"),
		regexp.QuoteMeta(wire.ClusterLabelKey),
		regexp.QuoteMeta(ServiceAccountLabelKey),
		`!io\.kubernetes`,
		`!kubernetes\.io`,
		"!" + regexp.QuoteMeta("statefulset.kubernetes.io/pod-name"),
		"!" + regexp.QuoteMeta("apps.kubernetes.io/pod-index"),
		"!" + regexp.QuoteMeta("batch.kubernetes.io/job-completion-index"),
		"!" + regexp.QuoteMeta("batch.kubernetes.io/controller-uid"),
		`!.*beta\.kubernetes\.io`,
		`!k8s\.io`,
		`!pod-template-generation`,
		`!pod-template-hash`,
		`!controller-revision-hash`,
		`!controller-uid`,
		`!annotation.*`,
		`!etcd_node`,
	} {
		r := labelRule{}
		if r.ignore = strings.HasPrefix(e, "!"); r.ignore {
			e = e[1:]
		}
		r.re = regexp.MustCompile(e)
		rules = append(rules, r)
	}
	return rules
}()

// IsSecurityLabel reports whether a label key takes part in an identity
// under Cilium's default filter: the longest including rule that matches
// at the start of the key must be longer than the shortest ignoring one
// (a key no rule ignores is kept). So app, example.com/team,
// topology.kubernetes.io/zone and app.kubernetes.io/name count;
// pod-template-hash, kubernetes.io/hostname and
// statefulset.kubernetes.io/pod-name do not.
func IsSecurityLabel(key string) bool {
	included, ignored := 0, 0
	for _, r := range defaultLabelRules {
		loc := r.re.FindStringIndex(key)
		if loc == nil || loc[0] != 0 {
			continue
		}
		if r.ignore {
			if ignored == 0 || loc[1] < ignored {
				ignored = loc[1]
			}
		} else if loc[1] > included {
			included = loc[1]
		}
	}
	return ignored == 0 || included > ignored
}

// Identity is what a pod's identity is made of.
type Identity struct {
	PodLabels       map[string]string
	Namespace       string
	NamespaceLabels map[string]string
	ServiceAccount  string
	Cluster         string
}

// SecurityLabels returns the identity labels of a pod as Cilium computes
// them (SanitizePodLabels, then its default filter): the pod's labels
// without Cilium's own keys, the namespace's labels as
// io.cilium.k8s.namespace.labels.<key>, the namespace, the service account
// (when set) and the cluster, filtered by IsSecurityLabel, all with source
// k8s, in wire order. Formatted (Labels.Format) this is the identity's
// label string. Labels a kvstore value cannot carry ('=' or ';' in a key,
// ';' in a value) are dropped.
func SecurityLabels(id Identity) (wire.Labels, error) {
	m := make(map[string]string, len(id.PodLabels)+len(id.NamespaceLabels)+3)
	for k, v := range id.PodLabels {
		if !strings.HasPrefix(k, ciliumKeyPrefix) {
			m[k] = v
		}
	}
	for k, v := range id.NamespaceLabels {
		m[NamespaceLabelsPrefix+k] = v
	}
	m[wire.NamespaceLabelKey] = id.Namespace
	if id.ServiceAccount != "" {
		m[ServiceAccountLabelKey] = id.ServiceAccount
	} else {
		delete(m, ServiceAccountLabelKey)
	}
	m[wire.ClusterLabelKey] = id.Cluster
	ls := make(wire.Labels, 0, len(m))
	for k, v := range m {
		if IsSecurityLabel(k) && !strings.ContainsAny(k, "=;") && !strings.Contains(v, ";") {
			ls = append(ls, wire.Label{Source: wire.LabelSourceK8s, Key: k, Value: v})
		}
	}
	return wire.NewLabels(ls...)
}
