package remotecluster

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"unique"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/agent/internal/policywatch"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipkey"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/watchstore"
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

// kindStore is what a remote needs of the watchstore.Store of one kind.
type kindStore interface {
	RunOn(ctx context.Context, c *kvstore.Client) error
	Drain()
	Stats() watchstore.Stats
}

// newKindStore returns the store of kind k of r, reading cfg's prefix, and
// its observer's base. Its decoder validates against r.rem and its observer
// programs r.rem.ID; Connected sets it before the store runs.
func newKindStore(r *remote, k kind, cfg watchstore.Config) (kindStore, *observerBase) {
	log := r.log.With("kind", k.String())
	switch k {
	case kindNodes:
		o := &nodeObserver{observerBase: observerBase{r: r}, claims: map[ipkey.Prefix][]tunnelClaim{}}
		return watchstore.New(nil, cfg, func(key string, v []byte) (nodeEntry, error) {
			n, err := wire.DecodeNode(r.rem, key, v)
			return nodeEntry{routes: nodeRoutes(n)}, err
		}, o, log), &o.observerBase
	case kindIdentities:
		o := &identityObserver{observerBase{r: r}}
		return watchstore.New(nil, cfg, func(key string, v []byte) (identityEntry, error) {
			id, err := wire.DecodeIdentity(r.rem, key, v)
			return identityEntry{id: id.ID, labels: policywatch.IdentityLabels(id.Labels)}, err
		}, o, log), &o.observerBase
	case kindIPCache:
		o := &ipObserver{observerBase: observerBase{r: r}}
		return watchstore.New(nil, cfg, func(key string, v []byte) (ipEntry, error) {
			p, err := wire.DecodeIPIdentityPairRoute(r.rem, key, v)
			// The one place a remote ipcache identity becomes the one
			// programmed: host (1) is remote-node (6), 0 stays 0.
			return ipEntry{id: wire.RemoteIPCacheIdentity(p.ID), hostIP: ipkey.FromAddr(p.HostIP), ports: internPorts(p.NamedPorts)}, err
		}, o, log), &o.observerBase
	default:
		o := &serviceObserver{observerBase{r: r}}
		return watchstore.New(nil, cfg, func(key string, v []byte) (wire.ClusterService, error) { return wire.DecodeService(r.rem, key, v) }, o, log), &o.observerBase
	}
}

// observerBase reports the end of a run's initial listing to the session.
type observerBase struct {
	r *remote
	// synced is called when the current session's listing is complete;
	// set by the session before it runs the store.
	synced func()
}

func (o *observerBase) OnSync() {
	if o.synced != nil {
		o.synced()
	}
}

// reserver is implemented by a datapath sink that sizes its tables ahead of
// a large listing (dpsync.Reconciler).
type reserver interface {
	Reserve(tunnels, ipcache int)
}

// nodeObserver routes each node's pod CIDRs to it, except those that
// overlap the local cluster's pod CIDRs (refused, see overlap.go). Two nodes
// of one remote may claim the same CIDR (a misconfiguration, or a node
// renamed): the tunnel stays while any of them holds it, and goes to the
// node whose key sorts first, whatever the order of events. What a node
// claimed before an update comes from its previous value.
type nodeObserver struct {
	observerBase
	claims map[ipkey.Prefix][]tunnelClaim // CIDR -> claims, by node key
}

// tunnelClaim is one node's claim on a CIDR: the node's name (claimKey)
// and the underlay address the CIDR routes to.
type tunnelClaim struct {
	key  string
	node ipkey.Addr
}

// claimKey is what a claim keeps of a node's key: its name, which sorts the
// nodes of one remote as their keys do (the rest is the store's prefix and
// the remote's name); a copy, not the listed key's allocation.
func claimKey(key string) string {
	if _, name, err := wire.ParseNodeKey(key); err == nil {
		return name
	}
	return key // not reached: the decoder refused such a key
}

// Reserve implements watchstore.Reserver: about one pod CIDR per node.
func (o *nodeObserver) Reserve(n int) {
	if len(o.claims) == 0 {
		o.claims = make(map[ipkey.Prefix][]tunnelClaim, n)
	}
	if rs, ok := o.r.m.dp.(reserver); ok {
		rs.Reserve(n, 0)
	}
}

func (o *nodeObserver) OnUpsert(key string, n, prev nodeEntry, hadPrev bool) {
	key = claimKey(key)
	if hadPrev {
		for _, t := range prev.routes {
			if !slices.ContainsFunc(n.routes, func(w nodeRoute) bool { return w.cidr == t.cidr }) {
				o.setClaim(t.cidr, key, ipkey.Addr{})
			}
		}
	}
	local := o.r.m.localPodCIDRs()
	for _, t := range n.routes {
		if _, bad := overlapping(t.cidr.Prefix(), local); bad {
			o.setClaim(t.cidr, key, ipkey.Addr{}) // claimed before the local CIDR was known
			continue
		}
		o.setClaim(t.cidr, key, t.node)
	}
}

func (o *nodeObserver) OnDelete(key string, n nodeEntry) {
	key = claimKey(key)
	for _, t := range n.routes {
		o.setClaim(t.cidr, key, ipkey.Addr{})
	}
}

// setClaim sets (node valid) or withdraws node key's claim on p and
// programs the winning claim if it changed.
func (o *nodeObserver) setClaim(p ipkey.Prefix, key string, node ipkey.Addr) {
	cs := o.claims[p]
	var before ipkey.Addr
	if len(cs) > 0 {
		before = cs[0].node
	}
	i, found := slices.BinarySearchFunc(cs, key, func(c tunnelClaim, k string) int { return strings.Compare(c.key, k) })
	set := node != ipkey.Addr{}
	switch {
	case set && found:
		cs[i].node = node
	case set:
		cs = slices.Insert(cs, i, tunnelClaim{key: strings.Clone(key), node: node})
	case found:
		cs = slices.Delete(cs, i, i+1)
	default:
		return
	}
	if len(cs) == 0 {
		delete(o.claims, p)
		o.r.m.dp.DeleteTunnel(p.Prefix(), o.r.rem.ID)
		return
	}
	o.claims[p] = cs
	if cs[0].node != before {
		o.r.m.dp.UpsertTunnel(datapath.TunnelEntry{CIDR: p.Prefix(), NodeIP: cs[0].node.Addr(), ClusterID: o.r.rem.ID})
	}
}

// identityObserver hands identities to the policy engine (Config.Identities):
// remote identities carry their cluster ID in their numeric value and need
// no datapath state of their own.
type identityObserver struct{ observerBase }

// identityEntry is what the agent keeps of a remote identity: its labels in
// the policy engine's form, which the engine keeps too (one copy, shared).
type identityEntry struct {
	id     uint32
	labels selector.Labels
}

func (o *identityObserver) OnUpsert(_ string, id identityEntry, _ identityEntry, _ bool) {
	if s := o.r.m.cfg.Identities; s != nil {
		s.UpsertIdentityLabels(id.id, id.labels)
	}
}

func (o *identityObserver) OnDelete(_ string, id identityEntry) {
	if s := o.r.m.cfg.Identities; s != nil {
		s.DeleteIdentity(id.id)
	}
}

// ipEntry is what the agent keeps of a remote ipcache entry: the store
// holds one per remote pod IP, so only the fields the datapath and policy
// need (the decoded IPIdentityPair is about four times larger): 24 bytes
// and a handle of the pod's named ports, interned (the pods of one
// workload share one copy; zero: none). The prefix is not held: the store's
// key names it (wire.IPKeyPrefix).
type ipEntry struct {
	hostIP ipkey.Addr
	id     uint32
	ports  unique.Handle[string]
}

// ipObserver programs the ipcache. A host entry may be written under two
// keys, "<ip>" and "<ip>/32" (or "/128"), that map to one datapath entry:
// it stays while either key holds it, and the value of "<ip>" wins.
type ipObserver struct {
	observerBase
	peek func(key string) (ipEntry, bool) // the store's other entries; valid in callbacks
}

// SetPeek implements watchstore.Peeker.
func (o *ipObserver) SetPeek(peek func(key string) (ipEntry, bool)) { o.peek = peek }

// Reserve implements watchstore.Reserver.
func (o *ipObserver) Reserve(n int) {
	if rs, ok := o.r.m.dp.(reserver); ok {
		rs.Reserve(0, n)
	}
}

func (o *ipObserver) OnUpsert(key string, e, prev ipEntry, hadPrev bool) {
	p, ok := o.prefix(key)
	if !ok {
		return
	}
	if !hadPrev {
		prev = ipEntry{}
	}
	o.endpointPorts(p, prev, e)
	o.program(key, p, e)
}

// prefix is the prefix of key: the entry keeps none, the key names it
// (the decoder checked that the value agrees).
func (o *ipObserver) prefix(key string) (netip.Prefix, bool) {
	p, err := wire.IPKeyPrefix(key)
	if err != nil { // the decoder refused such a key: not reached
		o.r.log.Error("ipcache entry without a prefix", "key", key, "error", err)
		return netip.Prefix{}, false
	}
	return p, true
}

// endpointPorts tells the policy engine about a pod entry's identity and
// named ports (prefix entries are no pods). Both keys of a pod ("<ip>" and
// "<ip>/32") count, alike.
func (o *ipObserver) endpointPorts(p netip.Prefix, old, cur ipEntry) {
	s := o.r.m.cfg.Identities
	if s == nil || !p.IsSingleIP() {
		return
	}
	oldID, curID := old.id, cur.id
	if oldID != 0 || curID != 0 {
		s.UpdateEndpointPorts(oldID, portsOf(old.ports), curID, portsOf(cur.ports))
	}
}

func (o *ipObserver) program(key string, p netip.Prefix, e ipEntry) {
	if p.IsSingleIP() {
		if alt, masked := strings.CutSuffix(key, hostSuffix(p)); masked {
			if _, ok := o.peek(alt); ok {
				return // the entry of "<ip>" wins
			}
		}
	}
	o.r.m.dp.UpsertIPCache(datapath.IPCacheEntry{Prefix: p, Identity: e.id, TunnelEndpoint: e.hostIP.Addr(), ClusterID: o.r.rem.ID})
}

func (o *ipObserver) OnDelete(key string, e ipEntry) {
	p, ok := o.prefix(key)
	if !ok {
		return
	}
	o.endpointPorts(p, e, ipEntry{})
	if alt, masked := altIPKey(key, p); alt != "" {
		if other, ok := o.peek(alt); ok {
			if !masked {
				o.program(alt, p, other) // "<ip>" gone: "<ip>/32" holds the entry now
			}
			return
		}
	}
	o.r.m.dp.DeleteIPCache(p, o.r.rem.ID)
}

// altIPKey returns the other key of a host prefix p stored under key: for
// "<prefix>/<ip>" it is "<prefix>/<ip>/<bits>" and the reverse (masked
// true: key is the "/<bits>" form). "" for a prefix that is not a host.
func altIPKey(key string, p netip.Prefix) (alt string, masked bool) {
	if !p.IsSingleIP() {
		return "", false
	}
	suffix := hostSuffix(p)
	if k, ok := strings.CutSuffix(key, suffix); ok {
		return k, true
	}
	return key + suffix, false
}

// hostSuffix is the "/<bits>" of a host prefix.
func hostSuffix(p netip.Prefix) string {
	if p.Addr().Is4() {
		return "/32"
	}
	return "/128"
}

// serviceObserver hands global services to the merger.
type serviceObserver struct{ observerBase }

func (o *serviceObserver) OnUpsert(_ string, cs, _ wire.ClusterService, _ bool) {
	o.r.m.svcs.SetRemote(servicemerge.Name{Namespace: cs.Namespace, Name: cs.Name}, o.r.name, remoteService(cs, o.r.rem.ID))
}

func (o *serviceObserver) OnDelete(_ string, cs wire.ClusterService) {
	o.r.m.svcs.DeleteRemote(servicemerge.Name{Namespace: cs.Namespace, Name: cs.Name}, o.r.name)
}

func kindStatus(k kind, s kindStore) KindStatus {
	ks := KindStatus{Kind: k.String()}
	if s == nil {
		return ks
	}
	st := s.Stats()
	// A kind that waits for the canary of an emptied or replaced etcd
	// serves its previous state: it is not synced with the etcd it reads.
	ks.Synced, ks.WaitingForCanary = st.Synced && !st.WaitingForCanary, st.WaitingForCanary
	ks.Entries, ks.Invalid, ks.Events, ks.LastEvent = uint64(st.Entries), st.Invalid, st.Events, st.LastEvent
	return ks
}

// nodeEntry is what the agent keeps of a remote node: the routes of its pod
// CIDRs, not the decoded Node (≈ 350 bytes, and its name, addresses and
// labels behind pointers), which nothing else reads.
type nodeEntry struct {
	routes []nodeRoute
}

// nodeRoute is one pod CIDR of a node and the underlay address it routes to.
type nodeRoute struct {
	cidr ipkey.Prefix
	node ipkey.Addr
}

// nodeRoutes routes each pod CIDR of n to its InternalIP of the same
// family (else ExternalIP, else any address of the other family).
func nodeRoutes(n wire.Node) []nodeRoute {
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
	var out []nodeRoute
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
			out = append(out, nodeRoute{cidr: ipkey.FromPrefix(p.Masked()), node: ipkey.FromAddr(ip)})
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
	return slices.Clip(out)
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
