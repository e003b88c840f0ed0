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
// Selectors on reserved labels are left alone. CIDR peers (cidr minus its
// except ranges, as disjoint prefixes) select only peers outside the mesh,
// as in Cilium; the identity-keyed datapath enforces exactly only every
// address of both families (0.0.0.0/0 with ::/0), which becomes the world
// entity, so any other CIDR peer refuses the policy (ErrUnsupported).
package rules
