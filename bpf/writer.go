package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Writer implements datapath.Writer on a Datapath's pinned maps. It keeps a
// small index (service and backend ids) that it rebuilds from the maps when
// created, so a restarted agent continues where the previous one stopped.
// Like every datapath.Writer it is used by one goroutine at a time.
type Writer struct {
	d        *Datapath
	log      *slog.Logger
	services map[datapath.Frontend]*svcState
	svcIDs   idAlloc
	beIDs    idAlloc
	noBatch  map[*ebpf.Map]bool // maps whose kernel rejected batch operations
}

var _ datapath.Writer = (*Writer)(nil)

// svcState is what the writer knows about a programmed service.
type svcState struct {
	id       uint32
	nslots   uint32
	nbe      uint32
	backends map[netip.AddrPort]uint32 // backend ids
	values   map[uint32]cmBackendValue // as written to cm_backends
	slots    []uint32                  // backend id per slot; nil: unknown (restored)
	// list is the backend list last applied when it was "simple" (IPv4, no
	// duplicates), enabling the fast path of planServiceFast; nil otherwise.
	list []datapath.Backend
}

// NewWriter returns a Writer for d's maps, indexing what they already hold.
func NewWriter(d *Datapath, log *slog.Logger) (*Writer, error) {
	w := &Writer{d: d, log: log, noBatch: map[*ebpf.Map]bool{}}
	if err := w.restore(); err != nil {
		return nil, err
	}
	return w, nil
}

// restore rebuilds the service index from the maps.
func (w *Writer) restore() error {
	o := &w.d.objs
	w.services = map[datapath.Frontend]*svcState{}
	byID := map[uint32]*svcState{}
	w.svcIDs.reset()
	w.beIDs.reset()
	var sk cmSvcKey
	var sv cmSvcValue
	it := o.CmServices.Iterate()
	for it.Next(&sk, &sv) {
		st := &svcState{id: sv.SvcId, nslots: sv.Nslots, nbe: sv.Nbackends,
			backends: map[netip.AddrPort]uint32{}, values: map[uint32]cmBackendValue{}}
		w.services[frontendFrom(sk)] = st
		byID[sv.SvcId] = st
		w.svcIDs.mark(sv.SvcId)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read services: %w", err)
	}
	var id uint32
	var bv cmBackendValue
	var orphans []uint32
	it = o.CmBackends.Iterate()
	for it.Next(&id, &bv) {
		st := byID[bv.SvcId]
		if st == nil {
			orphans = append(orphans, id)
			continue
		}
		st.backends[netip.AddrPortFrom(addrFrom(bv.Ip), portFrom(bv.Port))] = id
		st.values[id] = bv
		w.beIDs.mark(id)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read backends: %w", err)
	}
	// Left by an Apply that failed half-way; nothing refers to them.
	return batchDelete(w, o.CmBackends, orphans)
}

func frontendFrom(k cmSvcKey) datapath.Frontend {
	return datapath.Frontend{
		Addr:  netip.AddrPortFrom(addrFrom(k.Vip), portFrom(k.Port)),
		Proto: datapath.Proto(k.Proto),
	}
}

func svcKey(f datapath.Frontend) cmSvcKey {
	return cmSvcKey{Vip: be32(f.Addr.Addr()), Port: be16(f.Addr.Port()), Proto: uint8(f.Proto)}
}

// plan holds the map operations of one Apply, grouped per map so that each
// group is one batch syscall.
type plan struct {
	epK     []uint32
	epV     []cmEndpointValue
	epDel   []uint32
	tunK    []cmLpm4Key
	tunV    []cmTunnelValue
	tunDel  []cmLpm4Key
	ipcK    []cmLpm4Key
	ipcV    []cmIpcacheValue
	ipcDel  []cmLpm4Key
	beK     []uint32
	beV     []cmBackendValue
	beDel   []uint32
	slotK   []cmSlotKey
	slotV   []uint32
	slotDel []cmSlotKey
	svcK    []cmSvcKey
	svcV    []cmSvcValue
	svcDel  []cmSvcKey
	states  map[datapath.Frontend]*svcState // services after the batch (nil: deleted)
	freeSvc []uint32
	freeBe  []uint32
	skipped int
}

// Apply implements datapath.Writer. All upserts are written before any
// delete, and within a service backends before slots before the frontend, so
// a packet never finds a slot without its backend. IPv6 entries are skipped
// (logged): this datapath is IPv4 only.
func (w *Writer) Apply(ctx context.Context, b datapath.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p := &plan{states: map[datapath.Frontend]*svcState{}}
	w.planEndpoints(p, b)
	w.planRoutes(p, b)
	w.planServices(p, b)
	if p.skipped > 0 {
		w.log.Warn("skipped non-IPv4 datapath entries", "count", p.skipped)
	}
	o := &w.d.objs
	steps := []func() error{
		func() error { return batchUpdate(w, o.CmEndpoints, p.epK, p.epV) },
		func() error { return batchUpdate(w, o.CmTunnel, p.tunK, p.tunV) },
		func() error { return batchUpdate(w, o.CmIpcache, p.ipcK, p.ipcV) },
		func() error { return batchUpdate(w, o.CmBackends, p.beK, p.beV) },
		func() error { return batchUpdate(w, o.CmLbSlots, p.slotK, p.slotV) },
		func() error { return batchUpdate(w, o.CmServices, p.svcK, p.svcV) },
		func() error { return batchDelete(w, o.CmServices, p.svcDel) },
		func() error { return batchDelete(w, o.CmLbSlots, p.slotDel) },
		func() error { return batchDelete(w, o.CmBackends, p.beDel) },
		func() error { return batchDelete(w, o.CmIpcache, p.ipcDel) },
		func() error { return batchDelete(w, o.CmTunnel, p.tunDel) },
		func() error { return batchDelete(w, o.CmEndpoints, p.epDel) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			if rerr := w.restore(); rerr != nil {
				err = errors.Join(err, rerr)
			}
			return fmt.Errorf("apply: %w", err)
		}
	}
	for fe, st := range p.states {
		if st == nil {
			delete(w.services, fe)
		} else {
			w.services[fe] = st
		}
	}
	for _, id := range p.freeSvc {
		w.svcIDs.free(id)
	}
	for _, id := range p.freeBe {
		w.beIDs.free(id)
	}
	return nil
}

func (w *Writer) planEndpoints(p *plan, b datapath.Batch) {
	up := map[netip.Addr]bool{}
	for _, e := range b.UpsertEndpoints {
		if !e.IP.Is4() {
			p.skipped++
			continue
		}
		up[e.IP] = true
		p.epK = append(p.epK, be32(e.IP))
		p.epV = append(p.epV, cmEndpointValue{Ifindex: uint32(e.IfIndex)})
	}
	for _, ip := range b.DeleteEndpoints {
		if ip.Is4() && !up[ip] {
			p.epDel = append(p.epDel, be32(ip))
		}
	}
}

func (w *Writer) planRoutes(p *plan, b datapath.Batch) {
	up := map[netip.Prefix]bool{}
	for _, t := range b.UpsertTunnels {
		if !is4(t.CIDR) || !t.NodeIP.Is4() {
			p.skipped++
			continue
		}
		up[t.CIDR.Masked()] = true
		p.tunK = append(p.tunK, lpmKey(t.CIDR))
		p.tunV = append(p.tunV, cmTunnelValue{NodeIp: be32(t.NodeIP), ClusterId: t.ClusterID})
	}
	for _, c := range b.DeleteTunnels {
		if is4(c) && !up[c.Masked()] {
			p.tunDel = append(p.tunDel, lpmKey(c))
		}
	}
	clear(up)
	for _, e := range b.UpsertIPCache {
		if !is4(e.Prefix) || (e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.Is4()) {
			p.skipped++
			continue
		}
		v := cmIpcacheValue{Identity: e.Identity, ClusterId: e.ClusterID}
		if e.TunnelEndpoint.IsValid() && !e.TunnelEndpoint.IsUnspecified() {
			v.TunnelEp = be32(e.TunnelEndpoint)
		}
		up[e.Prefix.Masked()] = true
		p.ipcK = append(p.ipcK, lpmKey(e.Prefix))
		p.ipcV = append(p.ipcV, v)
	}
	for _, c := range b.DeleteIPCache {
		if is4(c) && !up[c.Masked()] {
			p.ipcDel = append(p.ipcDel, lpmKey(c))
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
		p.svcDel = append(p.svcDel, svcKey(fe))
		for i := uint32(0); i < old.nslots; i++ {
			p.slotDel = append(p.slotDel, cmSlotKey{SvcId: old.id, Slot: i})
		}
		for _, id := range old.backends {
			p.beDel = append(p.beDel, id)
			p.freeBe = append(p.freeBe, id)
		}
		p.freeSvc = append(p.freeSvc, old.id)
	}
	for i, s := range b.UpsertServices {
		if last[s.Frontend] != i {
			continue
		}
		fe := s.Frontend
		if !fe.Addr.Addr().Is4() {
			p.skipped++
			continue
		}
		old := w.services[fe]
		if old != nil && w.planServiceFast(p, fe, old, s.Backends) {
			p.states[fe] = old
			continue
		}
		simple := true
		st := &svcState{
			backends: make(map[netip.AddrPort]uint32, len(s.Backends)),
			values:   make(map[uint32]cmBackendValue, len(s.Backends)),
		}
		if old != nil {
			st.id = old.id
		} else {
			st.id = w.svcIDs.get()
		}
		weights := make([]uint16, 0, len(s.Backends))
		ids := make([]uint32, 0, len(s.Backends))
		for i, be := range s.Backends {
			if !be.Addr.Addr().Is4() {
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
			v := cmBackendValue{
				Ip: be32(be.Addr.Addr()), Port: be16(be.Addr.Port()), Weight: be.Weight,
				ClusterId: be.ClusterID, SvcId: st.id, Index: uint32(i),
			}
			st.backends[be.Addr] = id
			st.values[id] = v
			if old == nil || old.values[id] != v {
				p.beK = append(p.beK, id)
				p.beV = append(p.beV, v)
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
			p.svcK = append(p.svcK, svcKey(fe))
			p.svcV = append(p.svcV, cmSvcValue{SvcId: st.id, Nslots: st.nslots, Nbackends: st.nbe})
		}
		if old != nil {
			for i := st.nslots; i < old.nslots; i++ {
				p.slotDel = append(p.slotDel, cmSlotKey{SvcId: st.id, Slot: i})
			}
			for addr, id := range old.backends {
				if _, kept := st.backends[addr]; !kept {
					p.beDel = append(p.beDel, id)
					p.freeBe = append(p.freeBe, id)
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
// slots, instead of rebuilding the service's index. It mutates st (which a
// failed Apply discards through restore) and reports false, planning
// nothing, when the change does not fit.
func (w *Writer) planServiceFast(p *plan, fe datapath.Frontend, st *svcState, list []datapath.Backend) bool {
	if st.list == nil || st.slots == nil || len(st.list) != len(list) {
		return false
	}
	var diff []int
	for i := range list {
		if list[i] != st.list[i] {
			if len(diff) == maxFastChanges {
				return false
			}
			diff = append(diff, i)
		}
	}
	// Every changed entry keeps its weight, is IPv4 and brings either its
	// own address back or one the service does not have yet; no address
	// leaves one changed position for another.
	seen := map[netip.AddrPort]bool{}
	for _, i := range diff {
		nb, ob := list[i], st.list[i]
		if nb.Weight != ob.Weight || !nb.Addr.Addr().Is4() || seen[nb.Addr] || seen[ob.Addr] {
			return false
		}
		if _, taken := st.backends[nb.Addr]; taken && nb.Addr != ob.Addr {
			return false
		}
		seen[nb.Addr], seen[ob.Addr] = true, true
	}
	for _, i := range diff {
		nb, ob := list[i], st.list[i]
		oldID := st.backends[ob.Addr]
		id := oldID
		if nb.Addr != ob.Addr {
			id = w.beIDs.get()
			delete(st.backends, ob.Addr)
			delete(st.values, oldID)
			p.beDel = append(p.beDel, oldID)
			p.freeBe = append(p.freeBe, oldID)
			for pos, sid := range st.slots {
				if sid == oldID {
					st.slots[pos] = id
					p.slotK = append(p.slotK, cmSlotKey{SvcId: st.id, Slot: uint32(pos)})
					p.slotV = append(p.slotV, id)
				}
			}
		}
		v := cmBackendValue{
			Ip: be32(nb.Addr.Addr()), Port: be16(nb.Addr.Port()), Weight: nb.Weight,
			ClusterId: nb.ClusterID, SvcId: st.id, Index: uint32(i),
		}
		st.backends[nb.Addr] = id
		st.values[id] = v
		st.list[i] = nb
		p.beK = append(p.beK, id)
		p.beV = append(p.beV, v)
	}
	return true
}

func hasKey[K comparable, V any](m map[K]V, k K) bool {
	_, ok := m[k]
	return ok
}

// Dump implements datapath.Writer by reading every map back.
func (w *Writer) Dump() (datapath.State, error) {
	o := &w.d.objs
	s := datapath.NewState()
	var lk cmLpm4Key
	var tv cmTunnelValue
	it := o.CmTunnel.Iterate()
	for it.Next(&lk, &tv) {
		p := prefixFrom(lk)
		s.Tunnels[p] = datapath.TunnelEntry{CIDR: p, NodeIP: addrFrom(tv.NodeIp), ClusterID: tv.ClusterId}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump tunnels: %w", err)
	}
	var iv cmIpcacheValue
	it = o.CmIpcache.Iterate()
	for it.Next(&lk, &iv) {
		p := prefixFrom(lk)
		e := datapath.IPCacheEntry{Prefix: p, Identity: iv.Identity, ClusterID: iv.ClusterId}
		if iv.TunnelEp != 0 {
			e.TunnelEndpoint = addrFrom(iv.TunnelEp)
		}
		s.IPCache[p] = e
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump ipcache: %w", err)
	}
	var ip uint32
	var ev cmEndpointValue
	it = o.CmEndpoints.Iterate()
	for it.Next(&ip, &ev) {
		a := addrFrom(ip)
		s.Endpoints[a] = datapath.Endpoint{IP: a, IfIndex: int(ev.Ifindex)}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump endpoints: %w", err)
	}
	var sk cmSvcKey
	var sv cmSvcValue
	byID := map[uint32]datapath.Frontend{}
	it = o.CmServices.Iterate()
	for it.Next(&sk, &sv) {
		fe := frontendFrom(sk)
		byID[sv.SvcId] = fe
		s.Services[fe] = datapath.Service{Frontend: fe}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump services: %w", err)
	}
	type indexed struct {
		idx uint32
		be  datapath.Backend
	}
	backends := map[datapath.Frontend][]indexed{}
	var id uint32
	var bv cmBackendValue
	it = o.CmBackends.Iterate()
	for it.Next(&id, &bv) {
		fe, ok := byID[bv.SvcId]
		if !ok {
			continue
		}
		backends[fe] = append(backends[fe], indexed{bv.Index, datapath.Backend{
			Addr:      netip.AddrPortFrom(addrFrom(bv.Ip), portFrom(bv.Port)),
			ClusterID: bv.ClusterId,
			Weight:    bv.Weight,
		}})
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump backends: %w", err)
	}
	for fe, list := range backends {
		slices.SortFunc(list, func(a, b indexed) int { return int(a.idx) - int(b.idx) })
		svc := s.Services[fe]
		for _, x := range list {
			svc.Backends = append(svc.Backends, x.be)
		}
		s.Services[fe] = svc
	}
	return s, nil
}

// batchUnsupported reports whether err says the map type has no batch ops.
func batchUnsupported(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, syscall.Errno(524)) /* ENOTSUPP */ || errors.Is(err, unix.EOPNOTSUPP)
}

// batchUpdate writes keys[i] = vals[i] in one syscall, or one by one where
// the kernel has no batch update for the map's type.
func batchUpdate[K, V any](w *Writer, m *ebpf.Map, keys []K, vals []V) error {
	if len(keys) == 0 {
		return nil
	}
	if !w.noBatch[m] {
		_, err := m.BatchUpdate(keys, vals, nil)
		if err == nil {
			return nil
		}
		if !batchUnsupported(err) {
			return fmt.Errorf("update %s: %w", m, err)
		}
		w.noBatch[m] = true
	}
	for i := range keys {
		if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
			return fmt.Errorf("update %s: %w", m, err)
		}
	}
	return nil
}

// batchDelete deletes keys; absent keys are not an error.
func batchDelete[K any](w *Writer, m *ebpf.Map, keys []K) error {
	for len(keys) > 0 && !w.noBatch[m] {
		n, err := m.BatchDelete(keys, nil)
		switch {
		case err == nil:
			return nil
		case errors.Is(err, ebpf.ErrKeyNotExist) && n < len(keys):
			keys = keys[n+1:]
		case batchUnsupported(err):
			w.noBatch[m] = true
		default:
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	for i := range keys {
		if err := m.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete from %s: %w", m, err)
		}
	}
	return nil
}

// idAlloc hands out non-zero ids, moving forward so that an id freed by a
// deleted service or backend is not reused soon (CT entries may still name it).
type idAlloc struct {
	used map[uint32]bool
	next uint32
}

func (a *idAlloc) reset() {
	a.used = map[uint32]bool{}
}

func (a *idAlloc) mark(id uint32) {
	a.used[id] = true
	a.next = max(a.next, id)
}

func (a *idAlloc) get() uint32 {
	for {
		a.next++
		if a.next != 0 && !a.used[a.next] {
			a.used[a.next] = true
			return a.next
		}
	}
}

func (a *idAlloc) free(id uint32) { delete(a.used, id) }
