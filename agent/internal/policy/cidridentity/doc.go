// Package cidridentity allocates the CIDR identities of network policy, as
// Cilium's local identity allocator does: every prefix a policy's
// fromCIDR/toCIDR/fromCIDRSet/toCIDRSet/ipBlock names (except prefixes
// included) gets a node-local identity (selector.IdentityScopeLocal plus a
// counter) labelled "cidr:<prefix>" for the prefix and every wider prefix
// and reserved:world (selector.CIDRLabels). Identities are reference
// counted by the policies that name the prefix and freed with the last
// one; they are never published to the kvstore.
package cidridentity
