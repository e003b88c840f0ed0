package remotecluster

import (
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// kind is one of the watched prefixes of a remote.
type kind uint8

const (
	kindNodes kind = iota
	kindIdentities
	kindIPCache
	kindServices
	numKinds
)

func (k kind) String() string {
	switch k {
	case kindNodes:
		return "nodes"
	case kindIdentities:
		return "identities"
	case kindIPCache:
		return "ipcache"
	default:
		return "services"
	}
}

func (k kind) wire() wire.Kind {
	switch k {
	case kindNodes:
		return wire.KindNodes
	case kindIdentities:
		return wire.KindIdentities
	case kindIPCache:
		return wire.KindIP
	default:
		return wire.KindServices
	}
}

type (
	ipKey  = netip.Prefix
	svcKey = servicemerge.Name
)

type nodeEntry struct {
	tunnels []netip.Prefix
	gen     uint32
}

// store is what one kind of one remote has delivered: per key, the session
// (gen) that last saw it, and for nodes the tunnel CIDRs claimed. Only one of
// the maps is used, by the kind's watch goroutine; counters are atomics for
// Status.
type store struct {
	kind       kind
	nodes      map[string]nodeEntry
	ipcache    map[ipKey]uint32
	identities map[uint32]uint32
	services   map[svcKey]uint32

	synced                   atomic.Bool
	entries, invalid, events atomic.Uint64
	lastEvent                atomic.Int64 // unix nanoseconds
}

func (s *store) status() KindStatus {
	ks := KindStatus{
		Kind: s.kind.String(), Synced: s.synced.Load(),
		Entries: s.entries.Load(), Invalid: s.invalid.Load(), Events: s.events.Load(),
	}
	if t := s.lastEvent.Load(); t != 0 {
		ks.LastEvent = time.Unix(0, t)
	}
	return ks
}

// handler applies the events of one kind of one session.
type handler struct {
	r   *remote
	s   *store
	rem wire.Remote
	gen uint32
}

func (h *handler) event() {
	h.s.events.Add(1)
	h.s.lastEvent.Store(h.r.m.clock.Now().UnixNano())
}

func (h *handler) upsert(key string, value []byte) {
	h.event()
	dp := h.r.m.dp
	switch h.s.kind {
	case kindNodes:
		n, err := wire.DecodeNode(h.rem, key, value)
		if err != nil {
			h.invalid(key, err)
			h.removeNode(key)
			return
		}
		want := nodeTunnels(n, h.rem.ID)
		cidrs := make([]netip.Prefix, len(want))
		for i, t := range want {
			cidrs[i] = t.CIDR
		}
		prev, had := h.s.nodes[key]
		for _, p := range prev.tunnels {
			if !containsPrefix(cidrs, p) {
				dp.DeleteTunnel(p, h.rem.ID)
			}
		}
		for _, t := range want {
			dp.UpsertTunnel(t)
		}
		if !had {
			h.s.entries.Add(1)
		}
		h.s.nodes[key] = nodeEntry{tunnels: cidrs, gen: h.gen}
	case kindIPCache:
		p, err := wire.DecodeIPIdentityPair(h.rem, key, value)
		if err != nil {
			h.invalid(key, err)
			if pfx, ok := ipKeyPrefix(key); ok {
				h.removeIP(pfx)
			}
			return
		}
		pfx := p.Prefix()
		dp.UpsertIPCache(datapath.IPCacheEntry{Prefix: pfx, Identity: p.ID, TunnelEndpoint: p.HostIP, ClusterID: h.rem.ID})
		if _, had := h.s.ipcache[pfx]; !had {
			h.s.entries.Add(1)
		}
		h.s.ipcache[pfx] = h.gen
	case kindIdentities:
		id, err := wire.DecodeIdentity(h.rem, key, value)
		if err != nil {
			h.invalid(key, err)
			if _, n, err := wire.ParseIdentityKey(key); err == nil {
				h.removeIdentity(n)
			}
			return
		}
		if _, had := h.s.identities[id.ID]; !had {
			h.s.entries.Add(1)
		}
		h.s.identities[id.ID] = h.gen
	case kindServices:
		cs, err := wire.DecodeService(h.rem, key, value)
		if err != nil {
			h.invalid(key, err)
			if _, ns, name, err := wire.ParseServiceKey(key); err == nil {
				h.removeService(svcKey{Namespace: ns, Name: name})
			}
			return
		}
		n := svcKey{Namespace: cs.Namespace, Name: cs.Name}
		h.r.m.svcs.SetRemote(n, h.r.name, remoteService(cs, h.rem.ID))
		if _, had := h.s.services[n]; !had {
			h.s.entries.Add(1)
		}
		h.s.services[n] = h.gen
	}
}

func (h *handler) delete(key string) {
	h.event()
	switch h.s.kind {
	case kindNodes:
		h.removeNode(key)
	case kindIPCache:
		if pfx, ok := ipKeyPrefix(key); ok {
			h.removeIP(pfx)
		}
	case kindIdentities:
		if _, n, err := wire.ParseIdentityKey(key); err == nil {
			h.removeIdentity(n)
		}
	case kindServices:
		if _, ns, name, err := wire.ParseServiceKey(key); err == nil {
			h.removeService(svcKey{Namespace: ns, Name: name})
		}
	}
}

// sweep removes what earlier sessions delivered and this one's first
// listing did not.
func (h *handler) sweep() { h.removeIf(func(gen uint32) bool { return gen < h.gen }) }

// drain removes everything.
func (h *handler) drain() { h.removeIf(func(uint32) bool { return true }) }

func (h *handler) removeIf(stale func(gen uint32) bool) {
	for k, e := range h.s.nodes {
		if stale(e.gen) {
			h.removeNode(k)
		}
	}
	for k, gen := range h.s.ipcache {
		if stale(gen) {
			h.removeIP(k)
		}
	}
	for k, gen := range h.s.identities {
		if stale(gen) {
			h.removeIdentity(k)
		}
	}
	for k, gen := range h.s.services {
		if stale(gen) {
			h.removeService(k)
		}
	}
}

func (h *handler) removeNode(key string) {
	prev, ok := h.s.nodes[key]
	if !ok {
		return
	}
	for _, p := range prev.tunnels {
		h.r.m.dp.DeleteTunnel(p, h.rem.ID)
	}
	delete(h.s.nodes, key)
	h.s.entries.Add(^uint64(0))
}

func (h *handler) removeIP(p netip.Prefix) {
	if _, ok := h.s.ipcache[p]; !ok {
		return
	}
	h.r.m.dp.DeleteIPCache(p, h.rem.ID)
	delete(h.s.ipcache, p)
	h.s.entries.Add(^uint64(0))
}

func (h *handler) removeIdentity(id uint32) {
	if _, ok := h.s.identities[id]; !ok {
		return
	}
	delete(h.s.identities, id)
	h.s.entries.Add(^uint64(0))
}

func (h *handler) removeService(n svcKey) {
	if _, ok := h.s.services[n]; !ok {
		return
	}
	h.r.m.svcs.DeleteRemote(n, h.r.name)
	delete(h.s.services, n)
	h.s.entries.Add(^uint64(0))
}

// invalid counts a dropped value and logs the first ones of each kind, then
// every 1000th, so a hostile remote cannot flood the log.
func (h *handler) invalid(key string, err error) {
	n := h.s.invalid.Add(1)
	if n <= 10 || n%1000 == 0 {
		h.r.log.Warn("dropping invalid entry from remote cluster", "kind", h.s.kind.String(), "key", key, "error", err, "invalid_total", n)
	}
}

// ipKeyPrefix returns the prefix an ipcache key names.
func ipKeyPrefix(key string) (netip.Prefix, bool) {
	_, s, err := wire.ParseIPKey(key)
	if err != nil {
		return netip.Prefix{}, false
	}
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		return p, err == nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, a.BitLen()), true
}

// nodeTunnels routes each pod CIDR of n to its InternalIP of the same
// family (else ExternalIP, else any address of the other family).
func nodeTunnels(n wire.Node, id uint32) []datapath.TunnelEntry {
	pick := func(v6 bool) netip.Addr {
		for _, t := range []wire.NodeAddressType{wire.NodeInternalIP, wire.NodeExternalIP} {
			for _, a := range n.IPAddresses {
				if a.Type == t && a.IP.IsValid() && a.IP.Is6() == v6 {
					return a.IP
				}
			}
		}
		return netip.Addr{}
	}
	v4, v6 := pick(false), pick(true)
	var out []datapath.TunnelEntry
	add := func(p netip.Prefix) {
		if !p.IsValid() {
			return
		}
		ip := v4
		if p.Addr().Is6() {
			ip = v6
		}
		if !ip.IsValid() {
			ip = v4
			if !ip.IsValid() {
				ip = v6
			}
		}
		if ip.IsValid() {
			out = append(out, datapath.TunnelEntry{CIDR: p.Masked(), NodeIP: ip, ClusterID: id})
		}
	}
	add(n.IPv4AllocCIDR.Prefix)
	add(n.IPv6AllocCIDR.Prefix)
	for _, c := range n.IPv4SecondaryAllocCIDRs {
		add(c.Prefix)
	}
	for _, c := range n.IPv6SecondaryAllocCIDRs {
		add(c.Prefix)
	}
	return out
}

func containsPrefix(l []netip.Prefix, p netip.Prefix) bool {
	for _, q := range l {
		if q == p {
			return true
		}
	}
	return false
}

// remoteService converts a remote's export for the merger; ports of
// protocols the datapath cannot carry (SCTP) are skipped.
func remoteService(cs wire.ClusterService, id uint32) servicemerge.RemoteService {
	rs := servicemerge.RemoteService{ClusterID: id, Shared: cs.Shared, Backends: map[servicemerge.PortKey][]netip.AddrPort{}}
	for ipStr, ports := range cs.Backends {
		ip, err := netip.ParseAddr(ipStr)
		if err != nil {
			continue
		}
		for name, pc := range ports {
			proto, err := datapath.ParseProto(string(pc.Protocol))
			if err != nil || pc.Port == 0 {
				continue
			}
			pk := servicemerge.PortKey{Name: name, Proto: proto}
			rs.Backends[pk] = append(rs.Backends[pk], netip.AddrPortFrom(ip, pc.Port))
		}
	}
	return rs
}
