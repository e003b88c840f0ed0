package servicemerge

import (
	"cmp"
	"context"
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
type Sink interface {
	UpsertService(datapath.Service)
	DeleteService(datapath.Frontend)
}

// Config configures a Merger.
type Config struct {
	// ClusterID is the agent's own cluster ID, put on local backends.
	ClusterID uint32
	// FailbackShare is the share of the previous peak of ready local backends
	// that must be ready again before an affinity=local frontend drops its
	// remote backends (see the package doc). 0 < share ≤ 1.
	FailbackShare float64
	// GlobalOnly emits only global services (the agent's coexistence mode:
	// kube-proxy keeps serving the others).
	GlobalOnly bool
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config { return Config{FailbackShare: 0.5} }

// RegisterFlags registers the merge options on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.Float64Var(&c.FailbackShare, "failback-share", c.FailbackShare,
		"share of the previous ready local backend count that must be ready before an affinity=local service stops using remote backends")
}

// Snapshot is one Service as last emitted.
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
	kick  chan struct{}     // buffered(1): tells Run that dirty is non-empty
}

type service struct {
	local   *LocalService
	slices  map[string]EndpointSlice
	ports   map[PortKey]*portState
	remotes map[string]*RemoteService // by cluster name
	out     []datapath.Service        // last emitted, sorted by frontend
}

// portState holds the local backends of one port and the failover state.
type portState struct {
	all   map[netip.AddrPort]int32 // local endpoints, any readiness (refcount over slices)
	ready map[netip.AddrPort]int32 // usable local endpoints (refcount over slices)
	list  []netip.AddrPort         // keys of ready, sorted

	failedOver bool
	peak       int // peak ready count of the current local episode
	ref        int // peak of the episode before the failover
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
		s = &service{slices: map[string]EndpointSlice{}, ports: map[PortKey]*portState{}, remotes: map[string]*RemoteService{}}
		m.svcs[n] = s
	}
	return s
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
	m.get(n).local = &ls
	m.markLocked(n)
}

// DeleteLocalService removes a Service of the agent's cluster.
func (m *Merger) DeleteLocalService(n Name) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.svcs[n]; s != nil {
		s.local = nil
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
	old := expand(s.slices[slice])
	cur := expand(es)
	changed := false
	for k, usable := range old {
		if nu, ok := cur[k]; !ok || nu != usable {
			s.port(k.port).remove(k.ap, usable)
			changed = true
		}
	}
	for k, usable := range cur {
		if ou, ok := old[k]; !ok || ou != usable {
			s.port(k.port).add(k.ap, usable)
			changed = true
		}
	}
	s.slices[slice] = EndpointSlice{Ports: slices.Clone(es.Ports), Endpoints: slices.Clone(es.Endpoints)}
	if changed {
		m.markLocked(n)
	}
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
	}
	delete(s.slices, slice)
	m.markLocked(n)
}

// SetRemote sets (adds or replaces) a remote cluster's export of a service.
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
	m.get(n).remotes[cluster] = &rs
	m.markLocked(n)
}

// DeleteRemote removes a remote cluster's export of a service.
func (m *Merger) DeleteRemote(n Name, cluster string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if s := m.svcs[n]; s != nil {
		if _, ok := s.remotes[cluster]; ok {
			delete(s.remotes, cluster)
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
	if !usable {
		return
	}
	p.ready[ap]++
	if p.ready[ap] == 1 {
		i, _ := slices.BinarySearchFunc(p.list, ap, netip.AddrPort.Compare)
		p.list = slices.Insert(p.list, i, ap)
	}
}

func (p *portState) remove(ap netip.AddrPort, usable bool) {
	if p.all[ap]--; p.all[ap] <= 0 {
		delete(p.all, ap)
	}
	if !usable {
		return
	}
	if p.ready[ap]--; p.ready[ap] > 0 {
		return
	}
	delete(p.ready, ap)
	if i, ok := slices.BinarySearchFunc(p.list, ap, netip.AddrPort.Compare); ok {
		p.list = slices.Delete(p.list, i, i+1)
	}
}

// Run flushes dirty services until ctx is done.
func (m *Merger) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.kick:
			m.Flush()
		}
	}
}

// Flush recomputes every dirty service now and hands the result to the sink.
func (m *Merger) Flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.dirty {
		s := m.svcs[n]
		delete(m.dirty, n)
		if s == nil {
			continue
		}
		out := m.compute(s)
		for _, old := range s.out {
			if _, found := slices.BinarySearchFunc(out, old.Frontend, cmpService); !found {
				m.sink.DeleteService(old.Frontend)
			}
		}
		for _, svc := range out {
			m.sink.UpsertService(svc)
		}
		s.out = out
		if s.local == nil && len(s.slices) == 0 && len(s.remotes) == 0 {
			delete(m.svcs, n)
		}
	}
}

func cmpFrontend(a, b datapath.Frontend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Proto, b.Proto)
}

func cmpService(s datapath.Service, f datapath.Frontend) int { return cmpFrontend(s.Frontend, f) }

type remoteList struct {
	clusterID uint32
	list      []netip.AddrPort
}

// compute returns the services of s sorted by frontend.
func (m *Merger) compute(s *service) []datapath.Service {
	if s.local == nil || m.cfg.GlobalOnly && !s.local.Global {
		return nil
	}
	ls := s.local
	var out []datapath.Service
	for _, sp := range ls.Ports {
		pk := PortKey{sp.Name, sp.Proto}
		ps := s.port(pk)
		var remotes []remoteList
		nRemote := 0
		if ls.Global {
			for _, rs := range s.remotes {
				if rs.Shared && len(rs.Backends[pk]) > 0 {
					remotes = append(remotes, remoteList{rs.ClusterID, rs.Backends[pk]})
					nRemote += len(rs.Backends[pk])
				}
			}
			slices.SortFunc(remotes, func(a, b remoteList) int { return cmp.Compare(a.clusterID, b.clusterID) })
		}
		lw, rw := m.weights(ls.Affinity, ps, nRemote)
		for _, ip := range ls.ClusterIPs {
			svc := datapath.Service{Frontend: datapath.Frontend{Addr: netip.AddrPortFrom(ip, sp.Port), Proto: sp.Proto}}
			svc.Backends = make([]datapath.Backend, 0, len(ps.list)+nRemote)
			for _, ap := range ps.list {
				if ap.Addr().Is4() == ip.Is4() {
					svc.Backends = append(svc.Backends, datapath.Backend{Addr: ap, ClusterID: m.cfg.ClusterID, Weight: lw})
				}
			}
			for _, r := range remotes {
				for _, ap := range r.list {
					if ap.Addr().Is4() == ip.Is4() {
						svc.Backends = append(svc.Backends, datapath.Backend{Addr: ap, ClusterID: r.clusterID, Weight: rw})
					}
				}
			}
			out = append(out, svc)
		}
	}
	slices.SortFunc(out, func(a, b datapath.Service) int { return cmpFrontend(a.Frontend, b.Frontend) })
	return slices.CompactFunc(out, func(a, b datapath.Service) bool { return a.Frontend == b.Frontend })
}

// weights applies the affinity and the anti-flood failback rule of one port
// and returns the weights of its local and remote backends.
func (m *Merger) weights(a Affinity, ps *portState, nRemote int) (local, remote uint16) {
	nLocal := len(ps.list)
	switch a {
	case AffinityRemote:
		if nRemote > 0 {
			return 0, 1
		}
		return 1, 0
	case AffinityLocal:
		if !ps.failedOver {
			if nLocal > 0 || nRemote == 0 {
				ps.peak = max(ps.peak, nLocal)
				return 1, 0
			}
			ps.failedOver, ps.ref, ps.peak = true, ps.peak, 0
			return 1, 1
		}
		if nLocal >= m.failbackTarget(ps) || nRemote == 0 {
			ps.failedOver, ps.peak = false, nLocal
			return 1, 0
		}
		return 1, 1
	default:
		return 1, 1
	}
}

func (m *Merger) failbackTarget(ps *portState) int {
	t := int(math.Ceil(m.cfg.FailbackShare * float64(ps.ref)))
	return max(1, min(t, len(ps.all)))
}

// Snapshot returns every service as last emitted, sorted by name.
func (m *Merger) Snapshot() []Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Snapshot, 0, len(m.svcs))
	for n, s := range m.svcs {
		if len(s.out) == 0 {
			continue
		}
		svcs := make([]datapath.Service, len(s.out))
		for i, svc := range s.out {
			svcs[i] = datapath.Service{Frontend: svc.Frontend, Backends: slices.Clone(svc.Backends)}
		}
		out = append(out, Snapshot{Name: n, Services: svcs})
	}
	slices.SortFunc(out, func(a, b Snapshot) int {
		return cmp.Or(cmp.Compare(a.Name.Namespace, b.Name.Namespace), cmp.Compare(a.Name.Name, b.Name.Name))
	})
	return out
}
