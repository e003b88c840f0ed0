package dpsync

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/ipkey"
)

// NodeRefs counts the underlay addresses remote claims name: a tunnel
// route's node, an ipcache entry's tunnel endpoint (policysync.NodeTrust,
// the policy's trusted nodes).
type NodeRefs interface {
	// Ref adds delta references of cluster to node.
	Ref(node netip.Addr, cluster uint32, delta int)
}

// CountNodes makes the reconciler tell n which node every remote claim
// names, as the claim is set, changed or withdrawn: under the reconciler's
// lock, from the claim it replaces (no copy of the claims elsewhere and no
// second look-up). Call it before any source hands a claim in. The own
// cluster's claims are not counted.
func (r *Reconciler) CountNodes(n NodeRefs) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.nodes = n
}

// refNodeLocked counts cur, named now by cluster's claim (invalid: the
// claim is withdrawn), in place of old, named by the claim it replaced
// (had: there was one).
func (r *Reconciler) refNodeLocked(cluster uint32, old ipkey.Addr, had bool, cur ipkey.Addr) {
	if r.nodes == nil || cluster == r.cfg.ClusterID || (had && old == cur) {
		return
	}
	if cur != (ipkey.Addr{}) {
		r.nodes.Ref(cur.Addr(), cluster, 1)
	}
	if had && old != (ipkey.Addr{}) {
		r.nodes.Ref(old.Addr(), cluster, -1)
	}
}
