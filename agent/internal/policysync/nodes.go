package policysync

import (
	"fmt"
	"net/netip"
	"sync"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// NodeTrust keeps the datapath's trusted nodes: the underlay addresses of
// remote nodes, from the tunnel routes and ipcache entries that name them,
// each allowed to claim (in the VNI) the identities of its cluster only. An
// address named by two clusters is trusted by neither.
//
// Ref only counts; Flush writes the nodes whose trust changed since the
// last Flush in one batch (the reconciler's worker calls it before every
// datapath batch, so a node is trusted no later than the entries naming it
// are programmed, and untrusted no later than they are removed).
type NodeTrust struct {
	w            Writer
	maxConnected int

	mu    sync.Mutex
	nodes map[netip.Addr]nodeRefs // guarded by mu
	dirty []netip.Addr            // guarded by mu: nodes whose owner may differ from the one written
}

// nodeRefs counts the references of one node. Nearly every node is named by
// one cluster only: that cluster and its count are kept inline, any other
// cluster in more.
type nodeRefs struct {
	cluster uint32 // 0: none inline
	refs    int32
	written uint32 // the cluster the datapath trusts the node for; 0: not trusted
	dirty   bool   // listed in NodeTrust.dirty
	more    map[uint32]int32
}

// owner returns the one cluster that names the node.
func (r *nodeRefs) owner() (uint32, bool) {
	switch {
	case r.cluster != 0 && len(r.more) == 0:
		return r.cluster, true
	case r.cluster == 0 && len(r.more) == 1:
		for c := range r.more {
			return c, true
		}
	}
	return 0, false
}

// add adds delta references of cluster.
func (r *nodeRefs) add(cluster uint32, delta int32) {
	if r.cluster == cluster || (r.cluster == 0 && r.more[cluster] == 0) {
		r.cluster = cluster
		if r.refs += delta; r.refs <= 0 {
			r.cluster, r.refs = 0, 0
		}
		return
	}
	if r.more == nil {
		r.more = map[uint32]int32{}
	}
	if r.more[cluster] += delta; r.more[cluster] <= 0 {
		delete(r.more, cluster)
	}
	if len(r.more) == 0 {
		r.more = nil
	}
}

// NewNodeTrust returns a NodeTrust writing to w.
func NewNodeTrust(w Writer, maxConnectedClusters int) *NodeTrust {
	return &NodeTrust{w: w, maxConnected: maxConnectedClusters, nodes: map[netip.Addr]nodeRefs{}}
}

// Ref adds delta references of cluster to node ip; Flush writes the change.
func (n *NodeTrust) Ref(ip netip.Addr, cluster uint32, delta int) {
	if !ip.IsValid() || cluster == 0 || delta == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	r := n.nodes[ip]
	before, okBefore := r.owner()
	r.add(cluster, int32(delta))
	if after, okAfter := r.owner(); (before != after || okBefore != okAfter) && !r.dirty {
		r.dirty = true
		n.dirty = append(n.dirty, ip)
	}
	if r.cluster == 0 && r.more == nil && r.written == 0 && !r.dirty {
		delete(n.nodes, ip)
		return
	}
	n.nodes[ip] = r
}

// Flush writes, in one batch, the nodes whose trust changed since the last
// Flush. After a failed write it keeps them for the next Flush.
func (n *NodeTrust) Flush() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if len(n.dirty) == 0 {
		return nil
	}
	var b datapath.PolicyBatch
	for _, ip := range n.dirty {
		r := n.nodes[ip]
		c, ok := r.owner()
		switch {
		case ok && c != r.written:
			lo, hi := wire.ClusterIdentityRange(c, n.maxConnected)
			b.UpsertNodes = append(b.UpsertNodes, datapath.TrustedNode{IP: ip, ClusterID: c, IdentityLo: lo, IdentityHi: hi + 1})
		case !ok && r.written != 0:
			b.DeleteNodes = append(b.DeleteNodes, ip)
		}
	}
	if len(b.UpsertNodes)+len(b.DeleteNodes) > 0 {
		if err := n.w.Apply(b); err != nil {
			return fmt.Errorf("apply %d trusted and %d untrusted nodes: %w", len(b.UpsertNodes), len(b.DeleteNodes), err)
		}
	}
	for _, ip := range n.dirty {
		r := n.nodes[ip]
		r.written, _ = r.owner()
		r.dirty = false
		if r.cluster == 0 && r.more == nil {
			delete(n.nodes, ip)
			continue
		}
		n.nodes[ip] = r
	}
	n.dirty = n.dirty[:0]
	if cap(n.dirty) > 1024 {
		n.dirty = nil // a cold sync's list: return it
	}
	return nil
}

// Trusted returns the nodes the datapath trusts and their clusters.
func (n *NodeTrust) Trusted() map[netip.Addr]uint32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[netip.Addr]uint32{}
	for ip, r := range n.nodes {
		if r.written != 0 {
			out[ip] = r.written
		}
	}
	return out
}
