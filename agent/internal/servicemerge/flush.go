package servicemerge

import (
	"cmp"
	"context"
	"math"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Ready receives when services are dirty: a worker that calls Flush itself
// (dpsync.Reconciler.Pull) waits on it instead of running Run. Use one or
// the other.
func (m *Merger) Ready() <-chan struct{} { return m.kick }

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

// Flush hands every dirty service's changes to the sink now. The affinity
// and failover rule is evaluated per port; when it changes a port's weights,
// or the service itself changed, every frontend of the service is
// recomputed and upserted whole; otherwise only the changed backends are
// resolved and patched into the frontends they belong to.
func (m *Merger) Flush() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for n := range m.dirty {
		s := m.svcs[n]
		delete(m.dirty, n)
		if s == nil {
			continue
		}
		if m.reweigh(s) || s.full {
			m.emitAll(s)
		} else {
			m.emitChanged(s)
		}
		s.full = false
		clear(s.changed)
		if s.local == nil && len(s.slices) == 0 && len(s.remotes) == 0 {
			delete(m.svcs, n)
		}
	}
}

// programmed reports whether s has frontends at all: a local Service that
// is global, or that kube-proxy does not keep (Config.Proxy, GlobalOnly).
func (m *Merger) programmed(s *service) bool {
	switch {
	case s.local == nil:
		return false
	case s.local.Global:
		return true
	case m.cfg.GlobalOnly:
		return false
	}
	return !m.cfg.Proxy || s.local.ProxyOnly == ""
}

// reweigh applies the affinity and failover rule to every port of s and
// reports whether a port's weights differ from the last flush.
func (m *Merger) reweigh(s *service) bool {
	if !m.programmed(s) {
		return false
	}
	changed := false
	for _, sp := range s.local.Ports {
		pk := PortKey{sp.Name, sp.Proto}
		ps := s.port(pk)
		if ps.emitted && ps.weighed {
			continue // a second service port with the same key
		}
		lw, rw := m.weights(s.local.Affinity, ps, s.remoteCount(pk))
		if !ps.emitted || lw != ps.lw || rw != ps.rw {
			changed = true
		}
		ps.emitted, ps.weighed, ps.lw, ps.rw = true, true, lw, rw
	}
	for _, sp := range s.local.Ports {
		s.port(PortKey{sp.Name, sp.Proto}).weighed = false
	}
	return changed
}

// remoteCount is the number of remote backends of port pk.
func (s *service) remoteCount(pk PortKey) int {
	if !s.local.Global {
		return 0
	}
	n := 0
	for _, rs := range s.remotes {
		if rs.Shared {
			n += len(rs.Backends[pk])
		}
	}
	return n
}

// emitAll recomputes every frontend of s and upserts it whole.
func (m *Merger) emitAll(s *service) {
	var out []built
	if m.programmed(s) {
		out = m.compute(s)
	}
	for _, old := range s.out {
		if _, found := slices.BinarySearchFunc(out, old.fe, cmpBuilt); !found {
			m.sink.DeleteService(old.fe)
		}
	}
	s.out = s.out[:0]
	for _, b := range out {
		m.sink.UpsertService(b.svc)
		s.out = append(s.out, emitted{b.svc.Frontend, b.port})
	}
}

// emitChanged resolves every changed backend for the frontends of its port
// and patches them: O(changed backends · remote clusters · log backends).
func (m *Merger) emitChanged(s *service) {
	if len(s.changed) == 0 || len(s.out) == 0 {
		return
	}
	patches := make([]datapath.ServicePatch, len(s.out))
	for k := range s.changed {
		b, ok := m.resolve(s, k)
		for i, e := range s.out {
			if e.port != k.port || e.fe.Addr.Addr().Is4() != k.ap.Addr().Is4() {
				continue
			}
			if ok {
				patches[i].Upsert = append(patches[i].Upsert, b)
			} else {
				patches[i].Delete = append(patches[i].Delete, k.ap)
			}
		}
	}
	for i, p := range patches {
		if len(p.Upsert)+len(p.Delete) > 0 {
			p.Frontend = s.out[i].fe
			m.sink.PatchService(p)
		}
	}
}

// resolve returns backend k.ap of port k.port as compute places it: the
// local endpoint if it is ready, else the export of the remote with the
// lowest cluster ID that has it.
func (m *Merger) resolve(s *service, k epKey) (datapath.Backend, bool) {
	ps := s.port(k.port)
	if ps.ready[k.ap] > 0 {
		return datapath.Backend{Addr: k.ap, ClusterID: m.cfg.ClusterID, Weight: ps.lw}, true
	}
	if !s.local.Global {
		return datapath.Backend{}, false
	}
	found := false
	var id uint32
	for _, rs := range s.remotes {
		if !rs.Shared || found && rs.ClusterID >= id {
			continue
		}
		if _, ok := slices.BinarySearchFunc(rs.Backends[k.port], k.ap, netip.AddrPort.Compare); ok {
			found, id = true, rs.ClusterID
		}
	}
	return datapath.Backend{Addr: k.ap, ClusterID: id, Weight: ps.rw}, found
}

func cmpFrontend(a, b datapath.Frontend) int {
	if c := a.Addr.Compare(b.Addr); c != 0 {
		return c
	}
	return cmp.Compare(a.Proto, b.Proto)
}

// built is a computed frontend and the port it serves.
type built struct {
	svc  datapath.Service
	port PortKey
}

func cmpBuilt(b built, f datapath.Frontend) int { return cmpFrontend(b.svc.Frontend, f) }

type remoteList struct {
	clusterID uint32
	list      []netip.AddrPort
}

// compute returns the frontends of s sorted by frontend, with the weights
// of the last reweigh. Local backends come first (sorted), then the remote
// ones by cluster ID (each sorted); an address is listed once, where
// resolve places it.
func (m *Merger) compute(s *service) []built {
	ls := s.local
	var out []built
	for _, sp := range ls.Ports {
		pk := PortKey{sp.Name, sp.Proto}
		ps := s.port(pk)
		local := make([]netip.AddrPort, 0, len(ps.ready))
		for ap := range ps.ready {
			local = append(local, ap)
		}
		slices.SortFunc(local, netip.AddrPort.Compare)
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
		listed := func(ri int, ap netip.AddrPort) bool {
			if ps.ready[ap] > 0 {
				return true
			}
			for _, r := range remotes[:ri] {
				if _, ok := slices.BinarySearchFunc(r.list, ap, netip.AddrPort.Compare); ok {
					return true
				}
			}
			return false
		}
		for _, ip := range ls.ClusterIPs {
			svc := datapath.Service{Frontend: datapath.Frontend{Addr: netip.AddrPortFrom(ip, sp.Port), Proto: sp.Proto}}
			svc.Backends = make([]datapath.Backend, 0, len(local)+nRemote)
			for _, ap := range local {
				if ap.Addr().Is4() == ip.Is4() {
					svc.Backends = append(svc.Backends, datapath.Backend{Addr: ap, ClusterID: m.cfg.ClusterID, Weight: ps.lw})
				}
			}
			for ri, r := range remotes {
				for _, ap := range r.list {
					if ap.Addr().Is4() == ip.Is4() && !listed(ri, ap) {
						svc.Backends = append(svc.Backends, datapath.Backend{Addr: ap, ClusterID: r.clusterID, Weight: ps.rw})
					}
				}
			}
			out = append(out, built{svc, pk})
		}
	}
	slices.SortStableFunc(out, func(a, b built) int { return cmpFrontend(a.svc.Frontend, b.svc.Frontend) })
	return slices.CompactFunc(out, func(a, b built) bool { return a.svc.Frontend == b.svc.Frontend })
}

// weights applies the affinity and the anti-flood failback rule of one port
// and returns the weights of its local and remote backends.
func (m *Merger) weights(a Affinity, ps *portState, nRemote int) (local, remote uint16) {
	nLocal := len(ps.ready)
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

// Kept is a local Service not emitted because kube-proxy keeps it, and why
// (LocalService.ProxyOnly).
type Kept struct {
	Name   Name
	Reason string
}

// ProxyOnly returns the Services kube-proxy keeps beside the agent
// (Config.Proxy without GlobalOnly), sorted by name. It costs O(services):
// it is for status requests.
func (m *Merger) ProxyOnly() []Kept {
	if !m.cfg.Proxy || m.cfg.GlobalOnly {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Kept
	for n, s := range m.svcs {
		if s.local != nil && !m.programmed(s) {
			out = append(out, Kept{n, s.local.ProxyOnly})
		}
	}
	slices.SortFunc(out, func(a, b Kept) int { return cmpName(a.Name, b.Name) })
	return out
}

func cmpName(a, b Name) int {
	return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
}

// Snapshot returns every programmed service, sorted by name: the frontends
// last flushed, recomputed from the current backends with the weights of
// the last flush (a change not flushed yet may show). It costs
// O(backends · log backends): it is for status requests, not for the event
// path.
func (m *Merger) Snapshot() []Snapshot {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Snapshot, 0, len(m.svcs))
	for n, s := range m.svcs {
		if len(s.out) == 0 || !m.programmed(s) {
			continue
		}
		var svcs []datapath.Service
		for _, b := range m.compute(s) {
			if _, found := slices.BinarySearchFunc(s.out, b.svc.Frontend, func(e emitted, f datapath.Frontend) int { return cmpFrontend(e.fe, f) }); found {
				svcs = append(svcs, b.svc)
			}
		}
		out = append(out, Snapshot{Name: n, Services: svcs})
	}
	slices.SortFunc(out, func(a, b Snapshot) int { return cmpName(a.Name, b.Name) })
	return out
}
