package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Writer implements datapath.Writer on a Datapath's pinned maps. It keeps a
// small index (service and backend ids, what it last wrote per service) that
// it rebuilds from the maps when created, so a restarted agent continues
// where the previous one stopped. Like every datapath.Writer it is used by
// one goroutine at a time.
type Writer struct {
	d        *Datapath
	log      *slog.Logger
	services map[datapath.Frontend]*svcState
	svcIDs   idAlloc // shared by both address families (cm_lb_slots is shared)
	beIDs    idAlloc
	noBatch  map[*ebpf.Map]bool // maps whose kernel rejected batch operations
	// stale: an Apply failed and the index could not be re-read from the
	// maps; the next Apply re-reads it before planning.
	stale   bool
	patched int // services changed slot by slot by planPatch (for tests)
	// fault, set by tests only, may fail step "step N" of Apply or "restore".
	fault func(step string) error
}

var _ datapath.Writer = (*Writer)(nil)

// beVal is a backend as written to cm_backends or cm_backends6.
type beVal struct {
	addr    netip.AddrPort
	weight  uint16
	cluster uint32
	index   uint32
}

// svcState is what the writer knows about a programmed service.
type svcState struct {
	id       uint32
	v6       bool // IPv6 frontend: cm_services6 and cm_backends6
	nslots   uint32
	nbe      uint32
	backends map[netip.AddrPort]uint32 // backend ids
	values   map[uint32]beVal          // as written
	slots    []uint32                  // backend id per slot; nil: unknown (restored)
	// slotOf is the inverse of slots for planPatch, built on first use.
	slotOf map[uint32]uint32
	// nextIndex is above every backend's index: a backend a patch adds
	// goes last in the service's order.
	nextIndex uint32
	// unit is the non-zero weight the backends share (0: none has one);
	// mixed: their non-zero weights differ. Unless mixed, each backend of
	// non-zero weight holds exactly one slot.
	unit  uint16
	mixed bool
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
	if w.fault != nil {
		if err := w.fault("restore"); err != nil {
			return err
		}
	}
	ix, err := readIndex(&w.d.objs.cmMaps)
	if err != nil {
		return err
	}
	w.services = ix.services
	w.svcIDs.reset()
	w.beIDs.reset()
	for _, st := range ix.services {
		w.svcIDs.mark(st.id)
		for _, id := range st.backends {
			w.beIDs.mark(id)
		}
	}
	// Left by an Apply that failed half-way; nothing refers to them.
	o := &w.d.objs
	return errors.Join(batchDelete(w, o.CmBackends, ix.orphans), batchDelete(w, o.CmBackends6, ix.orphans6))
}

// index is the service state read from the maps.
type index struct {
	services          map[datapath.Frontend]*svcState
	orphans, orphans6 []uint32 // backends of no service
}

func readIndex(o *cmMaps) (*index, error) {
	ix := &index{services: map[datapath.Frontend]*svcState{}}
	byID := map[uint32]*svcState{}
	add := func(fe datapath.Frontend, sv cmSvcValue, v6 bool) {
		st := &svcState{id: sv.SvcId, v6: v6, nslots: sv.Nslots, nbe: sv.Nbackends,
			backends: map[netip.AddrPort]uint32{}, values: map[uint32]beVal{}}
		ix.services[fe] = st
		byID[sv.SvcId] = st
	}
	var sk cmSvcKey
	var sk6 cmSvc6Key
	var sv cmSvcValue
	it := o.CmServices.Iterate()
	for it.Next(&sk, &sv) {
		add(frontendFrom(sk), sv, false)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	it = o.CmServices6.Iterate()
	for it.Next(&sk6, &sv) {
		add(frontend6From(sk6), sv, true)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read services: %w", err)
	}
	attach := func(id, svcID uint32, v beVal) bool {
		st := byID[svcID]
		if st == nil {
			return false
		}
		st.backends[v.addr] = id
		st.values[id] = v
		st.nextIndex = max(st.nextIndex, v.index+1)
		st.noteWeight(v.weight)
		return true
	}
	var id uint32
	var bv cmBackendValue
	var bv6 cmBackend6Value
	it = o.CmBackends.Iterate()
	for it.Next(&id, &bv) {
		if !attach(id, bv.SvcId, backendFrom(bv)) {
			ix.orphans = append(ix.orphans, id)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	it = o.CmBackends6.Iterate()
	for it.Next(&id, &bv6) {
		if !attach(id, bv6.SvcId, backend6From(bv6)) {
			ix.orphans6 = append(ix.orphans6, id)
		}
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read backends: %w", err)
	}
	return ix, nil
}

// Apply implements datapath.Writer. All upserts are written before any
// delete, and within a service backends before slots before the frontend, so
// a packet never finds a slot without its backend. Entries the datapath
// cannot hold (an IPv6 tunnel endpoint, a backend of the other family than
// its frontend) are skipped and logged.
//
// The plan is computed from b and the index of what was last applied, which
// Apply never edits before the kernel took the whole batch. When a step
// fails, the index is re-read from the maps (now, or at the start of the
// next Apply if that fails too), so retrying the same change applies it.
func (w *Writer) Apply(ctx context.Context, b datapath.Batch) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if w.stale {
		if err := w.restore(); err != nil {
			return fmt.Errorf("apply: %w", err)
		}
		w.stale = false
	}
	if one, err := w.applyRoute(&b); one {
		return err
	}
	p := &plan{states: map[datapath.Frontend]*svcState{}}
	w.planEndpoints(p, b)
	w.planRoutes(p, b)
	w.planServices(p, b)
	if p.skipped > 0 {
		w.log.Warn("skipped datapath entries this datapath cannot hold", "count", p.skipped)
	}
	o := &w.d.objs
	steps := []func() error{
		func() error { return batchUpdate(w, o.CmEndpoints, p.epK, p.epV) },
		func() error { return batchUpdate(w, o.CmEndpoints6, p.ep6K, p.ep6V) },
		func() error { return batchUpdate(w, o.CmTunnel, p.tunK, p.tunV) },
		func() error { return batchUpdate(w, o.CmTunnel6, p.tun6K, p.tun6V) },
		func() error { return batchUpdate(w, o.CmIpcache, p.ipcK, p.ipcV) },
		func() error { return batchUpdate(w, o.CmIpcache6, p.ipc6K, p.ipc6V) },
		func() error { return batchUpdate(w, o.CmBackends, p.beK, p.beV) },
		func() error { return batchUpdate(w, o.CmBackends6, p.be6K, p.be6V) },
		func() error { return batchUpdate(w, o.CmLbSlots, p.slotK, p.slotV) },
		func() error { return batchUpdate(w, o.CmServices, p.svcK, p.svcV) },
		func() error { return batchUpdate(w, o.CmServices6, p.svc6K, p.svc6V) },
		func() error { return batchDelete(w, o.CmServices, p.svcDel) },
		func() error { return batchDelete(w, o.CmServices6, p.svc6Del) },
		func() error { return batchDelete(w, o.CmLbSlots, p.slotDel) },
		func() error { return batchDelete(w, o.CmBackends, p.beDel) },
		func() error { return batchDelete(w, o.CmBackends6, p.be6Del) },
		func() error { return batchDelete(w, o.CmIpcache, p.ipcDel) },
		func() error { return batchDelete(w, o.CmIpcache6, p.ipc6Del) },
		func() error { return batchDelete(w, o.CmTunnel, p.tunDel) },
		func() error { return batchDelete(w, o.CmTunnel6, p.tun6Del) },
		func() error { return batchDelete(w, o.CmEndpoints, p.epDel) },
		func() error { return batchDelete(w, o.CmEndpoints6, p.ep6Del) },
	}
	for i, step := range steps {
		err := step()
		if err == nil && w.fault != nil {
			err = w.fault(fmt.Sprintf("step %d", i))
		}
		if err != nil {
			return w.failed(err)
		}
	}
	w.patched += p.patched
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

// failed ends an Apply whose step failed: the index is re-read from the
// maps (or, when that fails too, at the start of the next Apply).
func (w *Writer) failed(err error) error {
	if rerr := w.restore(); rerr != nil {
		w.stale = true
		err = errors.Join(err, rerr)
	}
	return fmt.Errorf("apply: %w", err)
}

// applyRoute applies b when it is one tunnel or ipcache upsert or delete
// and nothing else, the common steady-state change, without a plan: the
// one plain update or delete the plan would hold, encoded as planRoutes
// encodes it. It reports whether b was such a batch.
func (w *Writer) applyRoute(b *datapath.Batch) (bool, error) {
	if len(b.UpsertTunnels)+len(b.DeleteTunnels)+len(b.UpsertIPCache)+len(b.DeleteIPCache) != 1 ||
		len(b.UpsertServices)+len(b.DeleteServices)+len(b.PatchServices)+len(b.UpsertEndpoints)+len(b.DeleteEndpoints) != 0 {
		return false, nil
	}
	o := &w.d.objs
	var err error
	switch {
	case len(b.UpsertIPCache) == 1:
		e := b.UpsertIPCache[0]
		v, ok := ipcacheValue(e)
		err = upsertRoute(w, o.CmIpcache, o.CmIpcache6, e.Prefix, v, ok)
	case len(b.UpsertTunnels) == 1:
		t := b.UpsertTunnels[0]
		v, ok := tunnelValue(t)
		err = upsertRoute(w, o.CmTunnel, o.CmTunnel6, t.CIDR, v, ok)
	case len(b.DeleteIPCache) == 1:
		err = deleteRoute(w, o.CmIpcache, o.CmIpcache6, b.DeleteIPCache[0])
	default:
		err = deleteRoute(w, o.CmTunnel, o.CmTunnel6, b.DeleteTunnels[0])
	}
	if err == nil && w.fault != nil {
		err = w.fault("route")
	}
	if err != nil {
		return true, w.failed(err)
	}
	return true, nil
}

// upsertRoute writes v under prefix p into m4 or m6, by its address
// family; !ok: an entry the datapath cannot hold, skipped and logged.
func upsertRoute[V any](w *Writer, m4, m6 *ebpf.Map, p netip.Prefix, v V, ok bool) error {
	switch {
	case !ok:
		w.log.Warn("skipped datapath entries this datapath cannot hold", "count", 1)
		return nil
	case p.Addr().Is4():
		return batchUpdate(w, m4, []cmLpm4Key{lpmKey(p)}, []V{v})
	default:
		return batchUpdate(w, m6, []cmLpm6Key{lpm6Key(p)}, []V{v})
	}
}

// deleteRoute deletes prefix p from m4 or m6, by its address family.
func deleteRoute(w *Writer, m4, m6 *ebpf.Map, p netip.Prefix) error {
	switch {
	case !p.IsValid():
		return nil
	case p.Addr().Is4():
		return batchDelete(w, m4, []cmLpm4Key{lpmKey(p)})
	default:
		return batchDelete(w, m6, []cmLpm6Key{lpm6Key(p)})
	}
}

// Dump implements datapath.Writer by reading every map back.
func (w *Writer) Dump() (datapath.State, error) { return dumpMaps(&w.d.objs.cmMaps) }

// dumpMaps reads the state held in the maps of o.
func dumpMaps(o *cmMaps) (datapath.State, error) {
	s := datapath.NewState()
	var lk cmLpm4Key
	var lk6 cmLpm6Key
	var tv cmTunnelValue
	it := o.CmTunnel.Iterate()
	for it.Next(&lk, &tv) {
		p := prefixFrom(lk)
		s.Tunnels[p] = datapath.TunnelEntry{CIDR: p, NodeIP: addrFrom(tv.NodeIp), ClusterID: tv.ClusterId}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump tunnels: %w", err)
	}
	it = o.CmTunnel6.Iterate()
	for it.Next(&lk6, &tv) {
		p := prefix6From(lk6)
		s.Tunnels[p] = datapath.TunnelEntry{CIDR: p, NodeIP: addrFrom(tv.NodeIp), ClusterID: tv.ClusterId}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump tunnels: %w", err)
	}
	var iv cmIpcacheValue
	ipc := func(p netip.Prefix, v cmIpcacheValue) {
		e := datapath.IPCacheEntry{Prefix: p, Identity: v.Identity, ClusterID: v.ClusterId}
		if v.TunnelEp != 0 {
			e.TunnelEndpoint = addrFrom(v.TunnelEp)
		}
		s.IPCache[p] = e
	}
	it = o.CmIpcache.Iterate()
	for it.Next(&lk, &iv) {
		ipc(prefixFrom(lk), iv)
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump ipcache: %w", err)
	}
	it = o.CmIpcache6.Iterate()
	for it.Next(&lk6, &iv) {
		ipc(prefix6From(lk6), iv)
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump ipcache: %w", err)
	}
	var ip uint32
	var ip6 cmIn6
	var ev cmEndpointValue
	it = o.CmEndpoints.Iterate()
	for it.Next(&ip, &ev) {
		a := addrFrom(ip)
		s.Endpoints[a] = datapath.Endpoint{IP: a, IfIndex: int(ev.Ifindex)}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump endpoints: %w", err)
	}
	it = o.CmEndpoints6.Iterate()
	for it.Next(&ip6, &ev) {
		a := addr6From(ip6)
		s.Endpoints[a] = datapath.Endpoint{IP: a, IfIndex: int(ev.Ifindex)}
	}
	if err := it.Err(); err != nil {
		return s, fmt.Errorf("dump endpoints: %w", err)
	}
	ix, err := readIndex(o)
	if err != nil {
		return s, fmt.Errorf("dump: %w", err)
	}
	for fe, st := range ix.services {
		vals := make([]beVal, 0, len(st.values))
		for _, v := range st.values {
			vals = append(vals, v)
		}
		slices.SortFunc(vals, func(a, b beVal) int { return int(a.index) - int(b.index) })
		svc := datapath.Service{Frontend: fe}
		for _, v := range vals {
			svc.Backends = append(svc.Backends, datapath.Backend{Addr: v.addr, ClusterID: v.cluster, Weight: v.weight})
		}
		s.Services[fe] = svc
	}
	return s, nil
}
