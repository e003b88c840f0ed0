package dpsync

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Cluster ranges (coexistence mode). Beside a primary CNI the own cluster's
// traffic reaches a pod through the host from addresses the agent may not
// know (another node's overlay or bridge gateway address, a pod IPAM that
// ignores spec.podCIDR): taking every address without an ipcache entry for
// world would cut it. Once the user lists the primary CNI's ranges
// (Config.ClusterCIDRs, --cluster-cidrs), every one of them and every
// local prefix (the nodes' pod CIDRs and addresses, SetLocalNode) gets an
// entry of its own, below any claim: the world identity, as Cilium gives
// the addresses of a pod CIDR without an endpoint. An address outside all
// of them then has no entry, and the datapath (bpf.SetCoexistWorld) decides
// it as world; one inside keeps the identity of its entry (world), which
// beside a primary CNI stays the CNI's to decide.

// ParsePrefixes parses a comma-separated list of CIDRs, masked ("" is
// none); the first bad one is the error.
func ParsePrefixes(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("parse %q: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// ClusterCIDRs returns the configured cluster ranges, sorted (none: world
// is not decided beside a primary CNI).
func (r *Reconciler) ClusterCIDRs() []netip.Prefix {
	out := make([]netip.Prefix, 0, len(r.ranges))
	for p := range r.ranges {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return out
}

// markRangesLocked marks the cluster ranges dirty (at New: programmed by the
// first flush).
func (r *Reconciler) markRangesLocked() {
	for p := range r.ranges {
		r.ipcache.dirty[p] = struct{}{}
	}
	if len(r.ranges) > 0 {
		r.kickLocked()
	}
}

// worldEntries reports whether some prefixes may have a CIDR or world entry
// of their own.
func (r *Reconciler) worldEntries() bool {
	return len(r.cidrs) > 0 || len(r.ranges) > 0
}
