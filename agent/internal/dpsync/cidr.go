package dpsync

import (
	"maps"
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// WorldIdentity is Cilium's reserved identity of addresses outside the
// cluster, which the datapath also gives addresses it has no entry for.
const WorldIdentity = 2

// CIDRClusterID is the cluster ID of the ipcache entries of CIDR
// identities in the datapath: they belong to no cluster. Their restored
// entries are held until Release(CIDRClusterID), which the policy plane
// calls once the policies are synced.
const CIDRClusterID = 0

// UpsertCIDR programs prefix p with the CIDR identity of network policy.
// Cilium's CIDR identities stand for addresses outside the cluster, so a
// CIDR prefix never takes an address of the local cluster: a prefix that
// lies inside a local pod CIDR or node address is not programmed, and the
// local prefixes inside a programmed one get an entry of their own with
// the world identity (what the datapath gives them without CIDR entries).
// Any claim of a cluster (own or a remote's accepted claim) on the same
// prefix wins over the CIDR entry; longer prefixes (pods) win by the
// longest prefix match. CIDR identities are not a cluster's: no remote
// claim can carry one (they lie outside every cluster's identity range).
func (r *Reconciler) UpsertCIDR(p netip.Prefix, identity uint32) {
	r.mu.Lock()
	p = p.Masked()
	r.cidrs[p] = identity
	r.markCIDRLocked(p)
	r.kickLocked()
	r.mu.Unlock()
}

// DeleteCIDR withdraws the CIDR entry of p.
func (r *Reconciler) DeleteCIDR(p netip.Prefix) {
	r.mu.Lock()
	p = p.Masked()
	delete(r.cidrs, p)
	r.markCIDRLocked(p)
	r.kickLocked()
	r.mu.Unlock()
}

// markCIDRLocked marks p dirty, and the local prefixes inside it (their
// world entries depend on p).
func (r *Reconciler) markCIDRLocked(p netip.Prefix) {
	r.ipcache.dirty[p] = struct{}{}
	for q := range r.local.all.count {
		if p.Bits() <= q.Bits() && p.Contains(q.Addr()) {
			r.ipcache.dirty[q] = struct{}{}
		}
	}
}

// markLocalCIDRsLocked marks what a change of the local prefixes changed
// may change: the changed prefixes (world entries) and the CIDR prefixes
// overlapping them.
func (r *Reconciler) markLocalCIDRsLocked(changed *prefixSet) {
	if !r.worldEntries() {
		return
	}
	for q := range changed.count {
		r.ipcache.dirty[q] = struct{}{}
	}
	for p := range r.cidrs {
		if changed.overlaps(p) {
			r.ipcache.dirty[p] = struct{}{}
		}
	}
}

// ipcacheEntry is the programmed ipcache entry of p: a cluster's winning
// claim, else a CIDR entry or the world entry of a local prefix inside a
// CIDR prefix; with cluster ranges (ranges.go), of every local prefix and
// range.
func (r *Reconciler) ipcacheEntry(p netip.Prefix) (datapath.IPCacheEntry, bool) {
	if e, ok := r.ipcacheWinner(p); ok {
		return e, true
	}
	if !r.worldEntries() {
		return datapath.IPCacheEntry{}, false
	}
	if _, isRange := r.ranges[p]; isRange || r.local.all.count[p] > 0 {
		if len(r.ranges) > 0 || r.inCIDR(p) {
			return datapath.IPCacheEntry{Prefix: p, Identity: WorldIdentity, ClusterID: CIDRClusterID}, true
		}
		return datapath.IPCacheEntry{}, false
	}
	if id, ok := r.cidrs[p]; ok && !r.local.all.within(p) {
		return datapath.IPCacheEntry{Prefix: p, Identity: id, ClusterID: CIDRClusterID}, true
	}
	return datapath.IPCacheEntry{}, false
}

// inCIDR reports whether a CIDR prefix contains p.
func (r *Reconciler) inCIDR(p netip.Prefix) bool {
	for b := 0; b <= p.Bits(); b++ {
		q, err := p.Addr().Prefix(b)
		if err != nil {
			return false
		}
		if _, ok := r.cidrs[q]; ok {
			return true
		}
	}
	return false
}

// cidrKeys returns the keys that may have a CIDR or world entry.
func (r *Reconciler) cidrKeys() []netip.Prefix {
	if !r.worldEntries() {
		return nil
	}
	out := make([]netip.Prefix, 0, len(r.cidrs))
	for p := range maps.Keys(r.cidrs) {
		if !r.ipcache.has(p) {
			out = append(out, p)
		}
	}
	for q := range r.local.all.count {
		if _, isCIDR := r.cidrs[q]; !isCIDR && !r.ipcache.has(q) {
			out = append(out, q)
		}
	}
	for q := range r.ranges {
		_, isCIDR := r.cidrs[q]
		if !isCIDR && r.local.all.count[q] == 0 && !r.ipcache.has(q) {
			out = append(out, q)
		}
	}
	return out
}

// within reports whether a prefix of s contains p.
func (s *prefixSet) within(p netip.Prefix) bool {
	for _, b := range s.bits {
		if b > p.Bits() {
			break
		}
		if q, err := p.Addr().Prefix(b); err == nil && s.count[q] > 0 {
			return true
		}
	}
	return false
}
