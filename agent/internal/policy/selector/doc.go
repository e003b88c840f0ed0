// Package selector holds the label side of network policy: the labels of a
// security identity (each with a source: k8s, reserved, ...), label selectors
// with Kubernetes' matchLabels and matchExpressions (In, NotIn, Exists,
// DoesNotExist), the reserved identities with Cilium's numbers, and the policy
// entities (all, world, cluster, host, remote-node, ...) as selectors, and
// the labels and selectors of CIDR identities (cidr.go).
//
// A selector key may name a source ("k8s:app", "reserved:host") or not
// ("app"); without one, or with "any:", it matches a label of that key from
// any source, as in Cilium. Label keys never contain ':' in Kubernetes, so the
// first ':' of a key separates the source.
package selector
