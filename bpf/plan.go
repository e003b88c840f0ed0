package bpf

import (
	"cmp"
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
	patched int // services planned by planPatch, slot by slot
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

// tunnelValue is t's value in cm_tunnel or cm_tunnel6; false for an entry
// the datapath cannot hold.
func tunnelValue(t datapath.TunnelEntry) (cmTunnelValue, bool) {
	if !t.NodeIP.Is4() || !t.CIDR.IsValid() {
		return cmTunnelValue{}, false
	}
	return cmTunnelValue{NodeIp: be32(t.NodeIP), ClusterId: t.ClusterID}, true
}

// ipcacheValue is e's value in cm_ipcache or cm_ipcache6; false for an
// entry the datapath cannot hold.
func ipcacheValue(e datapath.IPCacheEntry) (cmIpcacheValue, bool) {
	if !e.Prefix.IsValid() || !underlay(e.TunnelEndpoint) {
		return cmIpcacheValue{}, false
	}
	v := cmIpcacheValue{Identity: e.Identity, ClusterId: e.ClusterID}
	if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.IsUnspecified() {
		v.TunnelEp = be32(e.TunnelEndpoint)
	}
	return v, true
}

func (w *Writer) planRoutes(p *plan, b datapath.Batch) {
	// up holds the upserted prefixes only when deletes are to be checked
	// against them: a cold sync's batches upsert hundreds of thousands of
	// prefixes and delete none.
	up := map[netip.Prefix]bool{}
	trackTun, trackIPC := len(b.DeleteTunnels) > 0, len(b.DeleteIPCache) > 0
	for _, t := range b.UpsertTunnels {
		v, ok := tunnelValue(t)
		switch {
		case !ok:
			p.skipped++
			continue
		case t.CIDR.Addr().Is4():
			p.tunK = append(p.tunK, lpmKey(t.CIDR))
			p.tunV = append(p.tunV, v)
		default:
			p.tun6K = append(p.tun6K, lpm6Key(t.CIDR))
			p.tun6V = append(p.tun6V, v)
		}
		if trackTun {
			up[t.CIDR.Masked()] = true
		}
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
	if len(b.UpsertIPCache) > 0 { // mostly IPv4; grown from nothing, a cold sync's were copied ~15 times
		p.ipcK = slices.Grow(p.ipcK, len(b.UpsertIPCache))
		p.ipcV = slices.Grow(p.ipcV, len(b.UpsertIPCache))
	}
	for _, e := range b.UpsertIPCache {
		v, ok := ipcacheValue(e)
		if !ok {
			p.skipped++
			continue
		}
		if e.Prefix.Addr().Is4() {
			p.ipcK = append(p.ipcK, lpmKey(e.Prefix))
			p.ipcV = append(p.ipcV, v)
		} else {
			p.ipc6K = append(p.ipc6K, lpm6Key(e.Prefix))
			p.ipc6V = append(p.ipc6V, v)
		}
		if trackIPC {
			up[e.Prefix.Masked()] = true
		}
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
	ups, patches := foldPatches(b)
	last := map[datapath.Frontend]int{} // later upserts of a frontend win
	for i, s := range ups {
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
	for i, s := range ups {
		if last[s.Frontend] != i {
			continue
		}
		if !validFrontend(s.Frontend) {
			p.skipped++
			continue
		}
		p.states[s.Frontend] = w.planService(p, s.Frontend, w.services[s.Frontend], s.Backends)
	}
	for _, pt := range patches {
		if !validFrontend(pt.Frontend) {
			p.skipped++
			continue
		}
		w.planPatch(p, pt)
	}
}

func validFrontend(fe datapath.Frontend) bool { return fe.Addr.IsValid() && !fe.Addr.Addr().Is4In6() }

// foldPatches returns the batch's service upserts and the patches left to
// plan as patches, one per frontend: a patch of a frontend that the batch
// also upserts or deletes is folded into that upsert (or becomes one), and
// patches of one frontend are composed, so a patch always applies to the
// state last applied.
func foldPatches(b datapath.Batch) ([]datapath.Service, []datapath.ServicePatch) {
	if len(b.PatchServices) == 0 {
		return b.UpsertServices, nil
	}
	up := map[datapath.Frontend]int{}
	for i, s := range b.UpsertServices {
		up[s.Frontend] = i
	}
	del := map[datapath.Frontend]bool{}
	for _, fe := range b.DeleteServices {
		del[fe] = true
	}
	ups := b.UpsertServices
	var patches []datapath.ServicePatch
	pending := map[datapath.Frontend]int{} // frontend → its patch in patches
	for _, pt := range b.PatchServices {
		i, ok := up[pt.Frontend]
		switch {
		case ok:
			if len(ups) > 0 && &ups[0] == &b.UpsertServices[0] {
				ups = slices.Clone(ups)
			}
			ups[i].Backends = pt.Patch(slices.Clone(ups[i].Backends))
		case del[pt.Frontend]:
			up[pt.Frontend] = len(ups)
			ups = append(slices.Clip(ups), datapath.Service{Frontend: pt.Frontend, Backends: pt.Patch(nil)})
		default:
			if j, ok := pending[pt.Frontend]; ok {
				patches[j] = composePatches(patches[j], pt)
			} else {
				pending[pt.Frontend] = len(patches)
				patches = append(patches, pt)
			}
		}
	}
	return ups, patches
}

// composePatches returns the one patch that does what a then b do.
func composePatches(a, b datapath.ServicePatch) datapath.ServicePatch {
	gone := make(map[netip.AddrPort]bool, len(b.Delete))
	for _, addr := range b.Delete {
		gone[addr] = true
	}
	out := datapath.ServicePatch{Frontend: a.Frontend, Delete: append(slices.Clone(a.Delete), b.Delete...)}
	for _, be := range a.Upsert {
		if !gone[be.Addr] {
			out.Upsert = append(out.Upsert, be)
		}
	}
	out.Upsert = append(out.Upsert, b.Upsert...)
	return out
}

// planService plans a service to hold exactly backends, diffed against old
// (the state last applied, nil for a new service), and returns its state
// after the batch. It costs O(backends) in Go and writes only the backends
// and slots that change.
func (w *Writer) planService(p *plan, fe datapath.Frontend, old *svcState, backends []datapath.Backend) *svcState {
	v6 := fe.Addr.Addr().Is6()
	st := &svcState{
		v6:        v6,
		backends:  make(map[netip.AddrPort]uint32, len(backends)),
		values:    make(map[uint32]beVal, len(backends)),
		nextIndex: uint32(len(backends)),
	}
	if old != nil {
		st.id = old.id
	} else {
		st.id = w.svcIDs.get()
	}
	weights := make([]uint16, 0, len(backends))
	ids := make([]uint32, 0, len(backends))
	for i, be := range backends {
		if be.Addr.Addr().Is6() != v6 || be.Addr.Addr().Is4In6() {
			p.skipped++
			continue
		}
		if _, dup := st.backends[be.Addr]; dup {
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
		st.noteWeight(be.Weight)
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
	return st
}

// noteWeight records a backend's weight in the unit/mixed summary.
func (st *svcState) noteWeight(w uint16) {
	switch {
	case w == 0 || st.mixed:
	case st.unit == 0:
		st.unit = w
	case st.unit != w:
		st.mixed, st.unit = true, 0
	}
}

// planPatch plans a patch of a service. When the service's slot table is
// known and every selectable backend holds exactly one slot (all non-zero
// weights equal: the merger's weights are 0 and 1) and the patch keeps it
// so, the patch costs O(changed backends): a backend that leaves the table
// gives its slot to the table's last backend, which leaves the last slot
// (swap with last); one that joins appends a slot. Flows already pinned to
// a backend by cm_lb_ct keep it; new flows hash over the new table, as with
// any change of the table's size. Otherwise the service is rebuilt from
// its index and the patch through planService.
//
// The fast case edits the service's index in place while planning: if any
// step of the Apply then fails, Apply re-reads the whole index from the
// maps, so nothing of a failed patch survives in it and retrying the batch
// plans the patch again against what the kernel holds.
func (w *Writer) planPatch(p *plan, pt datapath.ServicePatch) {
	fe := pt.Frontend
	st := w.services[fe]
	if st == nil || st.slots == nil || !st.patchFits(pt) {
		var list []datapath.Backend
		if st != nil {
			list = st.list()
		}
		p.states[fe] = w.planService(p, fe, st, pt.Patch(list))
		return
	}
	if st.slotOf == nil {
		st.slotOf = make(map[uint32]uint32, len(st.slots))
		for pos, id := range st.slots {
			st.slotOf[id] = uint32(pos)
		}
	}
	oldN := uint32(len(st.slots))
	touched := map[uint32]struct{}{}
	for _, a := range pt.Delete {
		id, ok := st.backends[a]
		if !ok {
			continue
		}
		if st.values[id].weight != 0 {
			st.leaveSlots(id, touched)
		}
		delete(st.backends, a)
		delete(st.values, id)
		p.delBackend(st, id)
	}
	for _, be := range pt.Upsert {
		if be.Addr.Addr().Is6() != st.v6 || be.Addr.Addr().Is4In6() {
			p.skipped++
			continue
		}
		v := beVal{addr: be.Addr, weight: be.Weight, cluster: be.ClusterID}
		id, ok := st.backends[be.Addr]
		if ok {
			old := st.values[id]
			v.index = old.index
			if v == old {
				continue
			}
			switch {
			case old.weight != 0 && v.weight == 0:
				st.leaveSlots(id, touched)
			case old.weight == 0 && v.weight != 0:
				st.joinSlots(id, touched)
			}
		} else {
			id = w.beIDs.get()
			v.index = st.nextIndex
			st.nextIndex++
			st.backends[be.Addr] = id
			if v.weight != 0 {
				st.joinSlots(id, touched)
			}
		}
		st.values[id] = v
		st.noteWeight(v.weight)
		p.putBackend(st, id, v)
	}
	if len(st.slots) == 0 {
		st.unit = 0
	}
	newN := uint32(len(st.slots))
	for pos := range touched {
		if pos < newN {
			p.slotK = append(p.slotK, cmSlotKey{SvcId: st.id, Slot: pos})
			p.slotV = append(p.slotV, st.slots[pos])
		}
	}
	for pos := newN; pos < oldN; pos++ {
		p.slotDel = append(p.slotDel, cmSlotKey{SvcId: st.id, Slot: pos})
	}
	if nbe := uint32(len(st.backends)); newN != st.nslots || nbe != st.nbe {
		st.nslots, st.nbe = newN, nbe
		p.putService(fe, st)
	}
	p.states[fe] = st
	p.patched++
}

// patchFits reports whether pt can be applied slot by slot: the service
// has one slot per selectable backend and keeps it so.
func (st *svcState) patchFits(pt datapath.ServicePatch) bool {
	if st.mixed {
		return false
	}
	unit := st.unit
	for _, be := range pt.Upsert {
		switch {
		case be.Weight == 0:
		case unit == 0:
			unit = be.Weight
		case be.Weight != unit:
			return false
		}
	}
	return true
}

// leaveSlots gives backend id's slot to the table's last backend.
func (st *svcState) leaveSlots(id uint32, touched map[uint32]struct{}) {
	pos, last := st.slotOf[id], uint32(len(st.slots)-1)
	if pos != last {
		mv := st.slots[last]
		st.slots[pos] = mv
		st.slotOf[mv] = pos
		touched[pos] = struct{}{}
	}
	st.slots = st.slots[:last]
	delete(st.slotOf, id)
}

// joinSlots appends a slot for backend id.
func (st *svcState) joinSlots(id uint32, touched map[uint32]struct{}) {
	pos := uint32(len(st.slots))
	st.slots = append(st.slots, id)
	st.slotOf[id] = pos
	touched[pos] = struct{}{}
}

// list returns the service's backends in their order (by index).
func (st *svcState) list() []datapath.Backend {
	vals := make([]beVal, 0, len(st.values))
	for _, v := range st.values {
		vals = append(vals, v)
	}
	slices.SortFunc(vals, func(a, b beVal) int { return cmp.Compare(a.index, b.index) })
	out := make([]datapath.Backend, len(vals))
	for i, v := range vals {
		out[i] = datapath.Backend{Addr: v.addr, ClusterID: v.cluster, Weight: v.weight}
	}
	return out
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}
