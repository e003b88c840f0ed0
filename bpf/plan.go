package bpf

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// plan holds the map operations of one Apply, grouped per map so that each
// group is one batch syscall.
type plan struct {
	epK     []uint32
	epV     []cmEndpointValue
	epDel   []uint32
	ep6K    []cmIn6
	ep6V    []cmEndpointValue
	ep6Del  []cmIn6
	tunK    []cmLpm4Key
	tunV    []cmTunnelValue
	tunDel  []cmLpm4Key
	tun6K   []cmLpm6Key
	tun6V   []cmTunnelValue
	tun6Del []cmLpm6Key
	ipcK    []cmLpm4Key
	ipcV    []cmIpcacheValue
	ipcDel  []cmLpm4Key
	ipc6K   []cmLpm6Key
	ipc6V   []cmIpcacheValue
	ipc6Del []cmLpm6Key
	beK     []uint32
	beV     []cmBackendValue
	beDel   []uint32
	be6K    []uint32
	be6V    []cmBackend6Value
	be6Del  []uint32
	slotK   []cmSlotKey
	slotV   []uint32
	slotDel []cmSlotKey
	svcK    []cmSvcKey
	svcV    []cmSvcValue
	svcDel  []cmSvcKey
	svc6K   []cmSvc6Key
	svc6V   []cmSvcValue
	svc6Del []cmSvc6Key
	states  map[datapath.Frontend]*svcState // services after the batch (nil: deleted)
	freeSvc []uint32
	freeBe  []uint32
	skipped int
	fast    int // services planned by planServiceFast
}

func (p *plan) putBackend(st *svcState, id uint32, v beVal) {
	if st.v6 {
		p.be6K = append(p.be6K, id)
		p.be6V = append(p.be6V, cmBackend6Value{Ip: in6(v.addr.Addr()), Port: be16(v.addr.Port()),
			Weight: v.weight, ClusterId: v.cluster, SvcId: st.id, Index: v.index})
		return
	}
	p.beK = append(p.beK, id)
	p.beV = append(p.beV, cmBackendValue{Ip: be32(v.addr.Addr()), Port: be16(v.addr.Port()),
		Weight: v.weight, ClusterId: v.cluster, SvcId: st.id, Index: v.index})
}

func (p *plan) delBackend(st *svcState, id uint32) {
	if st.v6 {
		p.be6Del = append(p.be6Del, id)
	} else {
		p.beDel = append(p.beDel, id)
	}
	p.freeBe = append(p.freeBe, id)
}

func (p *plan) putService(fe datapath.Frontend, st *svcState) {
	v := cmSvcValue{SvcId: st.id, Nslots: st.nslots, Nbackends: st.nbe}
	if st.v6 {
		p.svc6K = append(p.svc6K, svc6Key(fe))
		p.svc6V = append(p.svc6V, v)
	} else {
		p.svcK = append(p.svcK, svcKey(fe))
		p.svcV = append(p.svcV, v)
	}
}

func (p *plan) delService(fe datapath.Frontend, st *svcState) {
	if st.v6 {
		p.svc6Del = append(p.svc6Del, svc6Key(fe))
	} else {
		p.svcDel = append(p.svcDel, svcKey(fe))
	}
	for i := uint32(0); i < st.nslots; i++ {
		p.slotDel = append(p.slotDel, cmSlotKey{SvcId: st.id, Slot: i})
	}
	for _, id := range st.backends {
		p.delBackend(st, id)
	}
	p.freeSvc = append(p.freeSvc, st.id)
}

func (w *Writer) planEndpoints(p *plan, b datapath.Batch) {
	up := map[netip.Addr]bool{}
	for _, e := range b.UpsertEndpoints {
		v := cmEndpointValue{Ifindex: uint32(e.IfIndex)}
		switch {
		case e.IP.Is4():
			p.epK = append(p.epK, be32(e.IP))
			p.epV = append(p.epV, v)
		case e.IP.Is6() && !e.IP.Is4In6():
			p.ep6K = append(p.ep6K, in6(e.IP))
			p.ep6V = append(p.ep6V, v)
		default:
			p.skipped++
			continue
		}
		up[e.IP] = true
	}
	for _, ip := range b.DeleteEndpoints {
		switch {
		case up[ip]:
		case ip.Is4():
			p.epDel = append(p.epDel, be32(ip))
		case ip.Is6():
			p.ep6Del = append(p.ep6Del, in6(ip))
		}
	}
}

// underlay reports whether a is a usable tunnel endpoint: IPv4 (the vxlan
// underlay is IPv4) or unset.
func underlay(a netip.Addr) bool { return !a.IsValid() || a.Is4() }

func (w *Writer) planRoutes(p *plan, b datapath.Batch) {
	up := map[netip.Prefix]bool{}
	for _, t := range b.UpsertTunnels {
		v := cmTunnelValue{NodeIp: be32(t.NodeIP), ClusterId: t.ClusterID}
		switch {
		case !t.NodeIP.Is4() || !t.CIDR.IsValid():
			p.skipped++
			continue
		case t.CIDR.Addr().Is4():
			p.tunK = append(p.tunK, lpmKey(t.CIDR))
			p.tunV = append(p.tunV, v)
		default:
			p.tun6K = append(p.tun6K, lpm6Key(t.CIDR))
			p.tun6V = append(p.tun6V, v)
		}
		up[t.CIDR.Masked()] = true
	}
	for _, c := range b.DeleteTunnels {
		switch {
		case !c.IsValid() || up[c.Masked()]:
		case c.Addr().Is4():
			p.tunDel = append(p.tunDel, lpmKey(c))
		default:
			p.tun6Del = append(p.tun6Del, lpm6Key(c))
		}
	}
	clear(up)
	for _, e := range b.UpsertIPCache {
		if !e.Prefix.IsValid() || !underlay(e.TunnelEndpoint) {
			p.skipped++
			continue
		}
		v := cmIpcacheValue{Identity: e.Identity, ClusterId: e.ClusterID}
		if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.IsUnspecified() {
			v.TunnelEp = be32(e.TunnelEndpoint)
		}
		if e.Prefix.Addr().Is4() {
			p.ipcK = append(p.ipcK, lpmKey(e.Prefix))
			p.ipcV = append(p.ipcV, v)
		} else {
			p.ipc6K = append(p.ipc6K, lpm6Key(e.Prefix))
			p.ipc6V = append(p.ipc6V, v)
		}
		up[e.Prefix.Masked()] = true
	}
	for _, c := range b.DeleteIPCache {
		switch {
		case !c.IsValid() || up[c.Masked()]:
		case c.Addr().Is4():
			p.ipcDel = append(p.ipcDel, lpmKey(c))
		default:
			p.ipc6Del = append(p.ipc6Del, lpm6Key(c))
		}
	}
}

func (w *Writer) planServices(p *plan, b datapath.Batch) {
	last := map[datapath.Frontend]int{} // later upserts of a frontend win
	for i, s := range b.UpsertServices {
		last[s.Frontend] = i
	}
	for _, fe := range b.DeleteServices {
		if _, up := last[fe]; up {
			continue
		}
		old := w.services[fe]
		if old == nil || p.states[fe] == nil && hasKey(p.states, fe) {
			continue
		}
		p.states[fe] = nil
		p.delService(fe, old)
	}
	for i, s := range b.UpsertServices {
		if last[s.Frontend] != i {
			continue
		}
		fe := s.Frontend
		if !fe.Addr.IsValid() || fe.Addr.Addr().Is4In6() {
			p.skipped++
			continue
		}
		old := w.services[fe]
		if old != nil {
			if st := w.planServiceFast(p, old, s.Backends); st != nil {
				p.states[fe] = st
				continue
			}
		}
		v6 := fe.Addr.Addr().Is6()
		simple := true
		st := &svcState{
			v6:       v6,
			backends: make(map[netip.AddrPort]uint32, len(s.Backends)),
			values:   make(map[uint32]beVal, len(s.Backends)),
		}
		if old != nil {
			st.id = old.id
		} else {
			st.id = w.svcIDs.get()
		}
		weights := make([]uint16, 0, len(s.Backends))
		ids := make([]uint32, 0, len(s.Backends))
		for i, be := range s.Backends {
			if be.Addr.Addr().Is6() != v6 || be.Addr.Addr().Is4In6() {
				p.skipped++
				simple = false
				continue
			}
			if _, dup := st.backends[be.Addr]; dup {
				simple = false
				continue
			}
			id, ok := uint32(0), false
			if old != nil {
				id, ok = old.backends[be.Addr]
			}
			if !ok {
				id = w.beIDs.get()
			}
			v := beVal{addr: be.Addr, weight: be.Weight, cluster: be.ClusterID, index: uint32(i)}
			st.backends[be.Addr] = id
			st.values[id] = v
			if old == nil || old.values[id] != v {
				p.putBackend(st, id, v)
			}
			weights = append(weights, be.Weight)
			ids = append(ids, id)
		}
		var oldSlots []uint32
		if old != nil {
			oldSlots = old.slots
		}
		st.slots = stableSlots(oldSlots, ids, slotTable(weights))
		for i, id := range st.slots {
			if i >= len(oldSlots) || oldSlots[i] != id {
				p.slotK = append(p.slotK, cmSlotKey{SvcId: st.id, Slot: uint32(i)})
				p.slotV = append(p.slotV, id)
			}
		}
		st.nslots, st.nbe = uint32(len(st.slots)), uint32(len(ids))
		if simple {
			st.list = slices.Clone(s.Backends)
		}
		if old == nil || old.nslots != st.nslots || old.nbe != st.nbe {
			p.putService(fe, st)
		}
		if old != nil {
			for i := st.nslots; i < old.nslots; i++ {
				p.slotDel = append(p.slotDel, cmSlotKey{SvcId: st.id, Slot: i})
			}
			for addr, id := range old.backends {
				if _, kept := st.backends[addr]; !kept {
					p.delBackend(old, id)
				}
			}
		}
		p.states[fe] = st
	}
}

// maxFastChanges bounds the backends a change may touch to take the fast path.
const maxFastChanges = 16

// planServiceFast plans a change of an existing service that replaces or
// edits a few backends in place (same list length, same weights): it
// compares the lists, then touches only the changed backends and their
// slots, instead of rebuilding the service's index. It never edits old, the
// state last applied: it returns a changed copy that Apply installs only once
// the kernel took the whole batch, so a failed Apply leaves the index as it
// was and the next Apply of the same list plans the change again. It
// returns nil, planning nothing, when the change does not fit.
func (w *Writer) planServiceFast(p *plan, old *svcState, list []datapath.Backend) *svcState {
	st := old
	if st.list == nil || st.slots == nil || len(st.list) != len(list) {
		return nil
	}
	var diff []int
	for i := range list {
		if list[i] != st.list[i] {
			if len(diff) == maxFastChanges {
				return nil
			}
			diff = append(diff, i)
		}
	}
	// Every changed entry keeps its weight, is of the service's family and
	// brings either its own address back or one the service does not have
	// yet; no address leaves one changed position for another.
	seen := map[netip.AddrPort]bool{}
	for _, i := range diff {
		nb, ob := list[i], st.list[i]
		if nb.Weight != ob.Weight || nb.Addr.Addr().Is6() != st.v6 || nb.Addr.Addr().Is4In6() ||
			seen[nb.Addr] || seen[ob.Addr] {
			return nil
		}
		if _, taken := st.backends[nb.Addr]; taken && nb.Addr != ob.Addr {
			return nil
		}
		seen[nb.Addr], seen[ob.Addr] = true, true
	}
	st = old.clone()
	for _, i := range diff {
		nb, ob := list[i], st.list[i]
		oldID := st.backends[ob.Addr]
		id := oldID
		if nb.Addr != ob.Addr {
			id = w.beIDs.get()
			delete(st.backends, ob.Addr)
			delete(st.values, oldID)
			p.delBackend(st, oldID)
			for pos, sid := range st.slots {
				if sid == oldID {
					st.slots[pos] = id
					p.slotK = append(p.slotK, cmSlotKey{SvcId: st.id, Slot: uint32(pos)})
					p.slotV = append(p.slotV, id)
				}
			}
		}
		v := beVal{addr: nb.Addr, weight: nb.Weight, cluster: nb.ClusterID, index: uint32(i)}
		st.backends[nb.Addr] = id
		st.values[id] = v
		st.list[i] = nb
		p.putBackend(st, id, v)
	}
	p.fast++
	return st
}

// clone returns a copy of st that shares nothing mutable with it.
func (st *svcState) clone() *svcState {
	c := *st
	c.backends = maps.Clone(st.backends)
	c.values = maps.Clone(st.values)
	c.slots = slices.Clone(st.slots)
	c.list = slices.Clone(st.list)
	return &c
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}
