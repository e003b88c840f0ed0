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
type NodeTrust struct {
	w            Writer
	maxConnected int

	mu   sync.Mutex
	refs map[netip.Addr]map[uint32]int // guarded by mu: node → cluster → references
}

// NewNodeTrust returns a NodeTrust writing to w.
func NewNodeTrust(w Writer, maxConnectedClusters int) *NodeTrust {
	return &NodeTrust{w: w, maxConnected: maxConnectedClusters, refs: map[netip.Addr]map[uint32]int{}}
}

// Ref adds delta references of cluster to node ip.
func (n *NodeTrust) Ref(ip netip.Addr, cluster uint32, delta int) error {
	if !ip.IsValid() || cluster == 0 {
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	before, okBefore := n.owner(ip)
	m := n.refs[ip]
	if m == nil {
		m = map[uint32]int{}
		n.refs[ip] = m
	}
	if m[cluster] += delta; m[cluster] <= 0 {
		delete(m, cluster)
	}
	if len(m) == 0 {
		delete(n.refs, ip)
	}
	after, okAfter := n.owner(ip)
	var b datapath.PolicyBatch
	switch {
	case okAfter && (!okBefore || before != after):
		lo, hi := wire.ClusterIdentityRange(after, n.maxConnected)
		b.UpsertNodes = append(b.UpsertNodes, datapath.TrustedNode{IP: ip, ClusterID: after, IdentityLo: lo, IdentityHi: hi + 1})
	case okBefore && !okAfter:
		b.DeleteNodes = append(b.DeleteNodes, ip)
	default:
		return nil
	}
	if err := n.w.Apply(b); err != nil {
		return fmt.Errorf("apply trusted node %s: %w", ip, err)
	}
	return nil
}

// owner returns the one cluster that names ip; the caller holds mu.
func (n *NodeTrust) owner(ip netip.Addr) (uint32, bool) {
	m := n.refs[ip]
	if len(m) != 1 {
		return 0, false
	}
	for c := range m {
		return c, true
	}
	return 0, false
}

// Trusted returns the trusted nodes and their clusters.
func (n *NodeTrust) Trusted() map[netip.Addr]uint32 {
	n.mu.Lock()
	defer n.mu.Unlock()
	out := map[netip.Addr]uint32{}
	for ip := range n.refs {
		if c, ok := n.owner(ip); ok {
			out[ip] = c
		}
	}
	return out
}
