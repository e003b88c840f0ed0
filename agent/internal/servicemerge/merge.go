package servicemerge

import (
	"math"
	"net/netip"
	"slices"
	"sync"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// Name identifies a Service across clusters.
type Name struct{ Namespace, Name string }

func (n Name) String() string { return n.Namespace + "/" + n.Name }

// PortKey matches service ports to backend ports: by name and protocol.
type PortKey struct {
	Name  string
	Proto ipproto.Proto
}

// ServicePort is a port of a Service (Port is the frontend port) or of an
// EndpointSlice (Port is the backend port).
type ServicePort struct {
	Name  string
	Proto ipproto.Proto
	Port  uint16
}

// LocalService is what the merge needs of a Service of the agent's cluster.
type LocalService struct {
	ClusterIPs []netip.Addr
	Ports      []ServicePort
	Annotations
	// ProxyOnly, when not empty, says why beside kube-proxy (Config.Proxy)
	// a Service that is not global stays the node's service proxy's: a
	// behaviour of kube-proxy the datapath does not have (sessionAffinity
	// ClientIP, internalTrafficPolicy Local) or a Service that names
	// another proxy (service.kubernetes.io/service-proxy-name).
	ProxyOnly string
}

// Endpoint is one address of an EndpointSlice. Usable is true when the
// endpoint is ready, or serving while terminating.
type Endpoint struct {
	Addr   netip.Addr
	Usable bool
}

// EndpointSlice is what the merge needs of a local EndpointSlice.
type EndpointSlice struct {
	Ports     []ServicePort
	Endpoints []Endpoint
}

// RemoteService is a remote cluster's export of a global service: its
// backends per port. The slices need not be sorted.
type RemoteService struct {
	ClusterID uint32
	Shared    bool
	Backends  map[PortKey][]netip.AddrPort
}

// Sink receives the computed services; the datapath reconciler implements it.
// UpsertService hands over a whole service (the sink may keep its backend
// slice: the merger does not touch it again); PatchService the backends of
// an emitted frontend that changed since (added or changed ones to upsert,
// removed ones to delete), so one backend change costs the same whatever
// the service's size.
type Sink interface {
	UpsertService(datapath.Service)
	DeleteService(datapath.Frontend)
	PatchService(datapath.ServicePatch)
}

// Config configures a Merger.
type Config struct {
	// ClusterID is the agent's own cluster ID, put on local backends.
	ClusterID uint32
	// FailbackShare is the share of the previous peak of ready local backends
	// that must be ready again before an affinity=local frontend drops its
	// remote backends (see the package doc). 0 < share ≤ 1.
	FailbackShare float64
	// Proxy is set beside kube-proxy (the agent's coexistence mode): a
	// Service that is not global and has a ProxyOnly reason is not emitted,
	// kube-proxy keeps serving it. Every other Service with a ClusterIP is
	// emitted, so that a pod's traffic to it is translated (and its egress
	// decided against the backend) before kube-proxy would see it.
	Proxy bool
	// GlobalOnly emits only global services (beside kube-proxy with
	// --coexist-services=global: kube-proxy keeps serving the others, and a
	// pod's egress to them is decided against world).
	GlobalOnly bool
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{FailbackShare: 0.5} }

// RegisterFlags registers the merge options on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.Float64Var(&c.FailbackShare, "failback-share", c.FailbackShare,
		"share of the previous ready local backend count that must be ready before an affinity=local service stops using remote backends")
}

// Snapshot is one Service as programmed (see Merger.Snapshot).
type Snapshot struct {
	Name     Name
	Services []datapath.Service
}

// Merger merges local and remote services. It is safe for concurrent use.
type Merger struct {
	cfg  Config
	sink Sink

	mu    sync.Mutex
	svcs  map[Name]*service // guarded by mu
	dirty map[Name]struct{} // guarded by mu
	kick  chan struct{}     // buffered(1): tells Run (or the worker reading Ready) that dirty is non-empty
}

type service struct {
	local   *LocalService
	slices  map[string]EndpointSlice
	ports   map[PortKey]*portState
	remotes map[string]*RemoteService // by cluster name

	// full: recompute and emit every frontend at the next flush (a
	// service-level change); otherwise changed lists the backends whose
	// selection may have changed since the last flush.
	full    bool
	changed map[epKey]struct{}
	out     []emitted // frontends last emitted, sorted by frontend
}

// emitted is a frontend as last emitted and the port it serves.
type emitted struct {
	fe   datapath.Frontend
	port PortKey
}

// portState holds the local backends of one port, the failover state and
// the weights last emitted.
type portState struct {
	all   map[netip.AddrPort]int32 // local endpoints, any readiness (refcount over slices)
	ready map[netip.AddrPort]int32 // usable local endpoints (refcount over slices)

	failedOver bool
	peak       int // peak ready count of the current local episode
	ref        int // peak of the episode before the failover

	emitted bool   // lw and rw hold the weights of the last flush
	weighed bool   // during reweigh: already weighed in this flush
	lw, rw  uint16 // weights of local and remote backends
}

// New returns a Merger emitting to sink.
func New(cfg Config, sink Sink) *Merger {
	if cfg.FailbackShare <= 0 || cfg.FailbackShare > 1 || math.IsNaN(cfg.FailbackShare) {
		cfg.FailbackShare = DefaultConfig().FailbackShare
	}
	return &Merger{
		cfg:   cfg,
		sink:  sink,
		svcs:  map[Name]*service{},
		dirty: map[Name]struct{}{},
		kick:  make(chan struct{}, 1),
	}
}

func (m *Merger) get(n Name) *service {
	s := m.svcs[n]
	if s == nil {
		s = &service{slices: map[string]EndpointSlice{}, ports: map[PortKey]*portState{},
			remotes: map[string]*RemoteService{}, changed: map[epKey]struct{}{}}
		m.svcs[n] = s
	}
	return s
}

// change records that the selection of backend k of s may have changed.
func (s *service) change(k epKey) {
	if !s.full {
		s.changed[k] = struct{}{}
	}
}

// changeAll makes the next flush recompute every frontend of s.
func (s *service) changeAll() {
	s.full = true
	clear(s.changed)
}

func (m *Merger) markLocked(n Name) {
	m.dirty[n] = struct{}{}
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// SetLocalService sets (adds or replaces) a Service of the agent's cluster.
func (m *Merger) SetLocalService(n Name, ls LocalService) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ls.ClusterIPs = slices.Clone(ls.ClusterIPs)
	ls.Ports = slices.Clone(ls.Ports)
	s := m.get(n)
	s.local = &ls
	s.changeAll()
	m.markLocked(n)
}

// DeleteLocalService removes a Service of the agent's cluster.
func (m *Merger) DeleteLocalService(n Name) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.svcs[n]; s != nil {
		s.local = nil
		s.changeAll()
		m.markLocked(n)
	}
}

type epKey struct {
	port PortKey
	ap   netip.AddrPort
}

func expand(es EndpointSlice) map[epKey]bool {
	out := make(map[epKey]bool, len(es.Endpoints)*len(es.Ports))
	for _, p := range es.Ports {
		pk := PortKey{p.Name, p.Proto}
		for _, e := range es.Endpoints {
			if e.Addr.IsValid() {
				out[epKey{pk, netip.AddrPortFrom(e.Addr, p.Port)}] = e.Usable
			}
		}
	}
	return out
}

// SetEndpointSlice sets (adds or replaces) one EndpointSlice of a local
// Service. Only the endpoints that differ from the previous version of the
// slice are touched.
func (m *Merger) SetEndpointSlice(n Name, slice string, es EndpointSlice) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.get(n)
	prev, had := s.slices[slice]
	if had && m.setInPlace(n, s, prev, es) {
		return
	}
	old := expand(prev)
	cur := expand(es)
	changed := false
	for k, usable := range old {
		if nu, ok := cur[k]; !ok || nu != usable {
			s.port(k.port).remove(k.ap, usable)
			if usable {
				s.change(k)
			}
			changed = true
		}
	}
	for k, usable := range cur {
		if ou, ok := old[k]; !ok || ou != usable {
			s.port(k.port).add(k.ap, usable)
			if usable {
				s.change(k)
			}
			changed = true
		}
	}
	s.slices[slice] = EndpointSlice{Ports: slices.Clone(es.Ports), Endpoints: slices.Clone(es.Endpoints)}
	if changed {
		m.markLocked(n)
	}
}

// maxInPlace bounds the endpoints a slice update may change to take the
// in-place path.
const maxInPlace = 8

// setInPlace applies an update of a slice that keeps its ports and its
// addresses in place and changes the readiness of a few endpoints, without
// expanding either version into maps: the common update (a pod becomes
// ready or not) costs O(endpoints of the slice) and allocates nothing. It
// reports false, having changed nothing, when the update does not fit.
func (m *Merger) setInPlace(n Name, s *service, prev, es EndpointSlice) bool {
	if !slices.Equal(prev.Ports, es.Ports) || len(prev.Endpoints) != len(es.Endpoints) {
		return false
	}
	for i, sp := range es.Ports {
		if slices.Contains(es.Ports[i+1:], sp) {
			return false // expand counts repeated ports once: leave them to it
		}
	}
	var diff [maxInPlace]int
	nd := 0
	for i, e := range es.Endpoints {
		p := prev.Endpoints[i]
		if e.Addr != p.Addr {
			return false
		}
		if e.Usable == p.Usable {
			continue
		}
		if nd == maxInPlace || !e.Addr.IsValid() {
			return false
		}
		diff[nd] = i
		nd++
	}
	for _, i := range diff[:nd] {
		// expand keeps the last of repeated addresses: leave those to it.
		a := es.Endpoints[i].Addr
		if slices.ContainsFunc(es.Endpoints[:i], func(e Endpoint) bool { return e.Addr == a }) ||
			slices.ContainsFunc(es.Endpoints[i+1:], func(e Endpoint) bool { return e.Addr == a }) {
			return false
		}
	}
	for _, i := range diff[:nd] {
		e := es.Endpoints[i]
		for _, sp := range es.Ports {
			k := epKey{PortKey{sp.Name, sp.Proto}, netip.AddrPortFrom(e.Addr, sp.Port)}
			ps := s.port(k.port)
			ps.remove(k.ap, !e.Usable)
			ps.add(k.ap, e.Usable)
			s.change(k)
		}
		prev.Endpoints[i].Usable = e.Usable // prev's array is the merger's own copy
	}
	if nd > 0 {
		m.markLocked(n)
	}
	return true
}

// DeleteEndpointSlice removes one EndpointSlice of a local Service.
func (m *Merger) DeleteEndpointSlice(n Name, slice string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.svcs[n]
	if s == nil {
		return
	}
	old, ok := s.slices[slice]
	if !ok {
		return
	}
	for k, usable := range expand(old) {
		s.port(k.port).remove(k.ap, usable)
		if usable {
			s.change(k)
		}
	}
	delete(s.slices, slice)
	m.markLocked(n)
}

// SetRemote sets (adds or replaces) a remote cluster's export of a service.
// A remote's export is one kvstore value holding all its backends, so the
// merger compares it with the export it replaces (O(backends), no
// allocation beyond the sorted copy it keeps) and hands only the backends
// that differ on; a new remote, or a change of its cluster ID or of
// "shared", recomputes the whole service.
func (m *Merger) SetRemote(n Name, cluster string, rs RemoteService) {
	bs := make(map[PortKey][]netip.AddrPort, len(rs.Backends))
	for pk, l := range rs.Backends {
		l = slices.Clone(l)
		slices.SortFunc(l, netip.AddrPort.Compare)
		bs[pk] = slices.Compact(l)
	}
	rs.Backends = bs
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.get(n)
	old := s.remotes[cluster]
	s.remotes[cluster] = &rs
	switch {
	case old == nil || old.ClusterID != rs.ClusterID || old.Shared != rs.Shared:
		s.changeAll()
	case !s.full:
		for pk, l := range rs.Backends {
			diffSorted(old.Backends[pk], l, func(ap netip.AddrPort) { s.change(epKey{pk, ap}) })
		}
		for pk, l := range old.Backends {
			if _, ok := rs.Backends[pk]; !ok {
				for _, ap := range l {
					s.change(epKey{pk, ap})
				}
			}
		}
	}
	m.markLocked(n)
}

// diffSorted calls f for every address in exactly one of a and b (sorted,
// without duplicates).
func diffSorted(a, b []netip.AddrPort, f func(netip.AddrPort)) {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch c := a[i].Compare(b[j]); {
		case c == 0:
			i++
			j++
		case c < 0:
			f(a[i])
			i++
		default:
			f(b[j])
			j++
		}
	}
	for ; i < len(a); i++ {
		f(a[i])
	}
	for ; j < len(b); j++ {
		f(b[j])
	}
}

// DeleteRemote removes a remote cluster's export of a service.
func (m *Merger) DeleteRemote(n Name, cluster string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.svcs[n]; s != nil {
		if _, ok := s.remotes[cluster]; ok {
			delete(s.remotes, cluster)
			s.changeAll()
			m.markLocked(n)
		}
	}
}

func (s *service) port(pk PortKey) *portState {
	p := s.ports[pk]
	if p == nil {
		p = &portState{all: map[netip.AddrPort]int32{}, ready: map[netip.AddrPort]int32{}}
		s.ports[pk] = p
	}
	return p
}

func (p *portState) add(ap netip.AddrPort, usable bool) {
	p.all[ap]++
	if usable {
		p.ready[ap]++
	}
}

func (p *portState) remove(ap netip.AddrPort, usable bool) {
	if p.all[ap]--; p.all[ap] <= 0 {
		delete(p.all, ap)
	}
	if !usable {
		return
	}
	if p.ready[ap]--; p.ready[ap] <= 0 {
		delete(p.ready, ap)
	}
}
