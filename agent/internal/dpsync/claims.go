package dpsync

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipkey"
)

// tunnelClaim is what the tunnel table keeps of a datapath.TunnelEntry
// (its CIDR is the key).
type tunnelClaim struct {
	node    ipkey.Addr
	cluster uint32
}

func encTunnel(e datapath.TunnelEntry) tunnelClaim {
	return tunnelClaim{node: ipkey.FromAddr(e.NodeIP), cluster: e.ClusterID}
}

func decTunnel(p netip.Prefix, c tunnelClaim) datapath.TunnelEntry {
	return datapath.TunnelEntry{CIDR: p, NodeIP: c.node.Addr(), ClusterID: c.cluster}
}

// ipClaim is what the ipcache table keeps of a datapath.IPCacheEntry (its
// prefix is the key).
type ipClaim struct {
	tunnel   ipkey.Addr
	identity uint32
	cluster  uint32
}

func encIPCache(e datapath.IPCacheEntry) ipClaim {
	return ipClaim{tunnel: ipkey.FromAddr(e.TunnelEndpoint), identity: e.Identity, cluster: e.ClusterID}
}

func decIPCache(p netip.Prefix, c ipClaim) datapath.IPCacheEntry {
	return datapath.IPCacheEntry{Prefix: p, Identity: c.identity, TunnelEndpoint: c.tunnel.Addr(), ClusterID: c.cluster}
}
