// Package rules decodes network policies and translates them into one
// internal rule form that the resolver in package policy evaluates.
//
// Sources: Kubernetes NetworkPolicy (networking.k8s.io/v1), and the L3/L4 part
// of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2)
// with Cilium's field names and meaning. Decoding is strict: an unknown field
// anywhere, or a field the datapath cannot enforce (L7 rules, toFQDNs,
// toServices, ICMP rules, fromRequires, CIDR groups, node selectors,
// authentication, ...), refuses the policy as a whole with a *RefusedError
// (errors.Is ErrUnsupported or ErrInvalid). A policy is never half-applied.
//
// Translation does what Cilium's Kubernetes layer does to selectors: the
// subject of a namespaced policy is restricted to its namespace; a peer
// endpoint selector without a namespace term is restricted to the policy's
// namespace (CiliumNetworkPolicy, NetworkPolicy) or to endpoints that have a
// namespace (CiliumClusterwideNetworkPolicy); with Options.DefaultLocalCluster
// (Cilium's --policy-default-local-cluster, default true since 1.19) a peer
// selector without a cluster term is restricted to the local cluster.
// Selectors on reserved labels are left alone. CIDR peers (fromCIDR,
// toCIDR, fromCIDRSet, toCIDRSet, ipBlock; with except) become selectors of
// CIDR labels (selector.CIDRSelector): they select the CIDR identities of
// the prefix and of every narrower prefix in use, minus the except
// prefixes', i.e. only peers outside the mesh, as in Cilium. Every prefix
// named needs a CIDR identity (Policy.Prefixes); more than MaxCIDRPrefixes
// in one policy refuse it (ErrUnsupported). Every address of both families
// (0.0.0.0/0 with ::/0, without except) is the world entity.
package rules
