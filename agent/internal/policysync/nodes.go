package policysync

import (
	"encoding/binary"
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

	mu sync.Mutex
	// index4 and index6 give each node's slot in refs: one look-up per Ref,
	// and an IPv4 node (every node the datapath can trust) by a 4-byte key
	// (a cold sync names each node many times).
	index4 map[uint32]int32     // guarded by mu
	index6 map[netip.Addr]int32 // guarded by mu
	refs   []nodeRefs           // guarded by mu: the nodes' counts; free slots are zero
	free   []int32              // guarded by mu: free slots of refs
	dirty  []int32              // guarded by mu: slots whose owner may differ from the one written (never freed while dirty)
}

// nodeRefs counts the references of one node. Nearly every node is named by
// one cluster only: that cluster and its count are kept inline, any other
// cluster in more.
type nodeRefs struct {
	ip      netip.Addr
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
	return &NodeTrust{w: w, maxConnected: maxConnectedClusters, index4: map[uint32]int32{}, index6: map[netip.Addr]int32{}}
}

// Ref adds delta references of cluster to node ip; Flush writes the change.
func (n *NodeTrust) Ref(ip netip.Addr, cluster uint32, delta int) {
	if !ip.IsValid() || cluster == 0 || delta == 0 {
		return
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	i, ok := n.slot(ip)
	if !ok {
		i = n.alloc(ip)
	}
	r := &n.refs[i]
	before, okBefore := r.owner()
	r.add(cluster, int32(delta))
	if after, okAfter := r.owner(); (before != after || okBefore != okAfter) && !r.dirty {
		r.dirty = true
		n.dirty = append(n.dirty, i)
	}
	if r.cluster == 0 && r.more == nil && r.written == 0 && !r.dirty {
		n.release(i)
	}
}

// slot returns ip's slot in refs.
func (n *NodeTrust) slot(ip netip.Addr) (int32, bool) {
	if ip.Is4() {
		i, ok := n.index4[v4Key(ip)]
		return i, ok
	}
	i, ok := n.index6[ip]
	return i, ok
}

func v4Key(ip netip.Addr) uint32 {
	b := ip.As4()
	return binary.BigEndian.Uint32(b[:])
}

// alloc returns a new slot for ip.
func (n *NodeTrust) alloc(ip netip.Addr) int32 {
	var i int32
	if k := len(n.free); k > 0 {
		i, n.free = n.free[k-1], n.free[:k-1]
		n.refs[i] = nodeRefs{ip: ip}
	} else {
		i = int32(len(n.refs))
		n.refs = append(n.refs, nodeRefs{ip: ip})
	}
	if ip.Is4() {
		n.index4[v4Key(ip)] = i
	} else {
		n.index6[ip] = i
	}
	return i
}

// release frees slot i, whose node no cluster names and the datapath does
// not trust.
func (n *NodeTrust) release(i int32) {
	if ip := n.refs[i].ip; ip.Is4() {
		delete(n.index4, v4Key(ip))
	} else {
		delete(n.index6, ip)
	}
	n.refs[i] = nodeRefs{}
	if int(i) == len(n.refs)-1 {
		n.refs = n.refs[:i]
		return
	}
	n.free = append(n.free, i)
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
	for _, i := range n.dirty {
		r := &n.refs[i]
		c, ok := r.owner()
		switch {
		case ok && c != r.written:
			lo, hi := wire.ClusterIdentityRange(c, n.maxConnected)
			b.UpsertNodes = append(b.UpsertNodes, datapath.TrustedNode{IP: r.ip, ClusterID: c, IdentityLo: lo, IdentityHi: hi + 1})
		case !ok && r.written != 0:
			b.DeleteNodes = append(b.DeleteNodes, r.ip)
		}
	}
	if len(b.UpsertNodes)+len(b.DeleteNodes) > 0 {
		if err := n.w.Apply(b); err != nil {
			return fmt.Errorf("apply %d trusted and %d untrusted nodes: %w", len(b.UpsertNodes), len(b.DeleteNodes), err)
		}
	}
	for _, i := range n.dirty {
		r := &n.refs[i]
		r.written, _ = r.owner()
		r.dirty = false
		if r.cluster == 0 && r.more == nil {
			n.release(i)
		}
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
	for _, r := range n.refs {
		if r.written != 0 {
			out[r.ip] = r.written
		}
	}
	return out
}
