package localcluster

import (
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// The own cluster's nodes in the ipcache, as Cilium gives them: the
// InternalIP and ExternalIP addresses of this node are host (1), those of
// every other node remote-node (6), with the own cluster ID and no tunnel
// endpoint (a node is reached over the underlay). fromEntities/toEntities
// host, remote-node and cluster select them; a CIDR prefix around them
// does not (the own claim wins over CIDR entries, dpsync).

// nodeAddrs returns a node's InternalIP and ExternalIP addresses, without
// repeats (nil for no node).
func nodeAddrs(node *corev1.Node) []netip.Addr {
	if node == nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range node.Status.Addresses {
		if a.Type != corev1.NodeInternalIP && a.Type != corev1.NodeExternalIP {
			continue
		}
		if ip, err := netip.ParseAddr(a.Address); err == nil && !slices.Contains(out, ip.Unmap()) {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// setNodeAddrs records the addresses of node name (nil: gone) and
// reconciles the ipcache entry of every address it gained or lost
// (reconcileIP decides each address: a pod of this node, a node, another
// node's pod, or nothing).
func (w *Watcher) setNodeAddrs(name string, addrs []netip.Addr) {
	w.mu.Lock()
	prev := w.nodeAddrs[name]
	if len(addrs) == 0 {
		delete(w.nodeAddrs, name)
	} else {
		w.nodeAddrs[name] = addrs
	}
	w.mu.Unlock()
	for _, ip := range prev {
		if !slices.Contains(addrs, ip) {
			_ = w.reconcileIP(ipKey(ip)) // never fails
		}
	}
	for _, ip := range addrs {
		_ = w.reconcileIP(ipKey(ip))
	}
}

// nodeEntryLocked returns the ipcache entry of ip if it is an address of
// a node of the own cluster: host for this node (which wins when another
// node lists the same address), remote-node for the others. w.mu is held.
func (w *Watcher) nodeEntryLocked(ip netip.Addr) (datapath.IPCacheEntry, bool) {
	e := datapath.IPCacheEntry{Prefix: netip.PrefixFrom(ip, ip.BitLen()), ClusterID: w.cfg.ClusterID}
	if slices.Contains(w.nodeAddrs[w.cfg.NodeName], ip) {
		e.Identity = wire.IdentityHost
		return e, true
	}
	for _, addrs := range w.nodeAddrs {
		if slices.Contains(addrs, ip) {
			e.Identity = wire.IdentityRemoteNode
			return e, true
		}
	}
	return datapath.IPCacheEntry{}, false
}
