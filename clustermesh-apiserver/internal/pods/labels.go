package pods

import (
	"strings"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// noiseKeys are label keys that say nothing about what a pod is, only which
// revision or instance of a workload it belongs to. Keeping them would give
// every rollout (or every pod) its own identity. Same spirit as Cilium's
// default identity-relevant label filter.
var noiseKeys = map[string]bool{
	"pod-template-hash":        true, // Deployment → ReplicaSet revision
	"pod-template-generation":  true, // DaemonSet revision (legacy)
	"controller-revision-hash": true, // StatefulSet / DaemonSet revision
	"controller-uid":           true, // Job (legacy, pre batch.kubernetes.io/)
	"job-name":                 true, // Job (legacy)
	"etcd_node":                true, // etcd-operator per-member label
}

// IsSecurityLabel reports whether a pod label key takes part in the pod's
// identity. Dropped, besides noiseKeys:
//   - keys under the Kubernetes-reserved domains kubernetes.io, k8s.io and
//     their subdomains (statefulset.kubernetes.io/pod-name,
//     apps.kubernetes.io/pod-index, batch.kubernetes.io/job-name,
//     batch.kubernetes.io/controller-uid, ...), except app.kubernetes.io/*,
//     the recommended application labels, which are kept;
//   - keys starting with io.kubernetes (the namespace label is added by us);
//   - keys starting with io.cilium.k8s.policy. (cluster and service-account
//     labels are ours to set; a pod must not claim another cluster);
//   - keys starting with annotation.
func IsSecurityLabel(key string) bool {
	if noiseKeys[key] {
		return false
	}
	if strings.HasPrefix(key, "io.kubernetes") || strings.HasPrefix(key, "io.cilium.k8s.policy.") ||
		strings.HasPrefix(key, "annotation.") {
		return false
	}
	domain, _, hasDomain := strings.Cut(key, "/")
	if !hasDomain {
		return true
	}
	if domain == "app.kubernetes.io" {
		return true
	}
	for _, reserved := range []string{"kubernetes.io", "k8s.io"} {
		if domain == reserved || strings.HasSuffix(domain, "."+reserved) {
			return false
		}
	}
	return true
}

// SecurityLabels returns the identity labels of a pod: its security labels
// as k8s: labels, plus its namespace and cluster, in wire order. Formatted
// (Labels.Format) this is the identity's label string, e.g.
// k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;
// Labels a kvstore value cannot carry (a ';' in the value) are dropped.
func SecurityLabels(podLabels map[string]string, namespace, cluster string) (wire.Labels, error) {
	ls := make(wire.Labels, 0, len(podLabels)+2)
	for k, v := range podLabels {
		if IsSecurityLabel(k) && !strings.ContainsAny(k, "=;") && !strings.Contains(v, ";") {
			ls = append(ls, wire.Label{Source: wire.LabelSourceK8s, Key: k, Value: v})
		}
	}
	ls = append(ls,
		wire.Label{Source: wire.LabelSourceK8s, Key: wire.NamespaceLabelKey, Value: namespace},
		wire.Label{Source: wire.LabelSourceK8s, Key: wire.ClusterLabelKey, Value: cluster})
	return wire.NewLabels(ls...)
}
