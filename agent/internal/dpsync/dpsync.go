package dpsync

import (
	"context"
	"iter"
	"log/slog"
	"net/netip"
	"runtime"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/internal/backoff"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipkey"
)

// Config configures a Reconciler.
type Config struct {
	// ClusterID is the agent's own cluster: its claims win over remote ones.
	ClusterID uint32
	// BatchWindow is how long a flush waits for more changes after the first
	// one; 0 applies as soon as the previous batch is done.
	BatchWindow time.Duration
	// RetryMin and RetryMax bound the backoff of failed Apply calls.
	RetryMin, RetryMax time.Duration
	// Trust limits what remote clusters may claim.
	Trust TrustConfig
	// ClusterCIDRs are the primary CNI's address ranges for the own
	// cluster's traffic (coexistence mode, --cluster-cidrs; ranges.go):
	// set, they and the local prefixes get world entries so that an
	// address outside them has none.
	ClusterCIDRs []netip.Prefix
	// SyncGCPercent is the Go GC percent while a large initial listing is
	// synced (syncgc.go); 0 leaves the GC alone.
	SyncGCPercent int
}

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{RetryMin: 10 * time.Millisecond, RetryMax: 10 * time.Second, Trust: DefaultTrustConfig(), SyncGCPercent: 400}
}

// RegisterFlags registers the reconciler options on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.DurationVar(&c.BatchWindow, "datapath-batch-window", c.BatchWindow,
		"how long to wait for more changes before applying a datapath batch (0: apply as soon as the previous batch is done)")
	fs.IntVar(&c.SyncGCPercent, "datapath-sync-gc-percent", c.SyncGCPercent,
		"the Go GC percent while an initial listing of 10,000 entries or more is synced, until the sync's memory is returned (at most 30 s), under a soft memory limit of 640 bytes per listed entry over the memory at its start: less CPU for the sync (bench/README.md); 0: leave the GC alone; a higher GOGC and a lower GOMEMLIMIT are kept")
	c.Trust.RegisterFlags(fs)
	fs.Func("cluster-cidrs", "coexist mode: comma-separated CIDRs the primary CNI uses for the own cluster's traffic (pod IP pools, overlay and bridge gateway addresses; the nodes' spec.podCIDRs are added); set, a pod's ingress policy decides world (addresses outside them and every identity) on the host's path too (docs/policy.md)", func(s string) error {
		ps, err := ParsePrefixes(s)
		c.ClusterCIDRs = append(c.ClusterCIDRs, ps...)
		return err
	})
}

// Reconciler owns the desired datapath state and applies it. Its methods are
// safe for concurrent use; Run applies.
type Reconciler struct {
	cfg   Config
	w     datapath.Writer
	log   *slog.Logger
	clock clock.Clock

	mu          sync.Mutex
	tunnels     table[datapath.TunnelEntry, tunnelClaim]          // guarded by mu
	ipcache     table[datapath.IPCacheEntry, ipClaim]             // guarded by mu
	services    map[datapath.Frontend]*desiredService             // guarded by mu
	endpoints   map[netip.Addr]datapath.Endpoint                  // guarded by mu
	dirtySvc    map[datapath.Frontend]struct{}                    // guarded by mu: whole services
	dirtyBe     map[datapath.Frontend]map[netip.AddrPort]struct{} // guarded by mu: backends of services not in dirtySvc
	dirtyEp     map[netip.Addr]struct{}                           // guarded by mu
	restored    datapath.State                                    // guarded by mu: programmed, not yet re-claimed
	holding     map[uint32]bool                                   // guarded by mu: cluster IDs whose restored entries are held
	stats       Stats                                             // guarded by mu
	trim        bool                                              // guarded by mu: a source synced; return memory after the next flush
	gcRelaxed   bool                                              // guarded by mu: the GC percent is SyncGCPercent (syncgc.go)
	gcPrev      int                                               // guarded by mu: the GC percent before
	gcPrevLimit int64                                             // guarded by mu: the memory limit before
	gcBase      int64                                             // guarded by mu: the memory in use when the GC was relaxed
	gcEntries   int                                               // guarded by mu: the entries reserved since
	gcSince     time.Time                                         // guarded by mu: the last large listing's Reserve

	local        localSet                  // guarded by mu: the local cluster's prefixes
	refused      map[refusalKey][]Refusal  // guarded by mu: remote claims not programmed, as of the last flush
	ipcacheCIDRs map[netip.Prefix]struct{} // guarded by mu: claimed ipcache keys that are not host prefixes
	cidrs        map[netip.Prefix]uint32   // guarded by mu: prefixes of CIDR identities (UpsertCIDR)
	ranges       map[netip.Prefix]struct{} // the cluster ranges (Config.ClusterCIDRs), fixed at New

	built   uint64        // guarded by mu: the batches built (empty ones too)
	waiters []flushWaiter // guarded by mu: AfterFlush callbacks not yet called

	// step is held while a batch is built and applied: by Run's worker
	// (an upstream flush, then the batch) or by a source that applies a
	// steady change itself (inline.go). Batches are applied one at a
	// time, in the order they are built. Taken before mu.
	step   sync.Mutex
	steady map[uint32]bool // guarded by mu: clusters whose changes may be applied inline (Steady)
	runCtx context.Context // guarded by mu: Run's, while it runs (nil: no inline apply)

	kick  chan struct{} // buffered(1): something is dirty
	up    Upstream      // flushed before every batch, under step; set before Run
	nodes NodeRefs      // guarded by mu: told the nodes remote claims name (CountNodes)
}

// Upstream is a stage before the reconciler whose changes are pulled in
// before every batch, by whoever builds it (Run's worker, or a source
// applying a steady change itself: inline.go), one at a time: the service
// merger's changes reach the datapath without a worker of their own (one
// goroutine hand-off fewer on the service path).
type Upstream interface {
	// Ready receives when the upstream has changes to flush.
	Ready() <-chan struct{}
	// Flush hands the changes in through the reconciler's methods.
	Flush()
}

// Pull makes Run flush u before every batch and wake up when u is ready.
// Call it before Run.
func (r *Reconciler) Pull(u Upstream) { r.up = u }

// Stats counts the reconciler's work.
type Stats struct {
	Batches, Failures uint64
	// Inline counts the steps taken by a source itself rather than by
	// Run's worker (inline.go), empty ones too.
	Inline uint64
	// Trims counts the times the freed memory of an initial sync was
	// returned to the operating system (see Release).
	Trims     uint64
	LastError string
}

// New returns a Reconciler applying to w.
func New(cfg Config, w datapath.Writer, log *slog.Logger, clk clock.Clock) *Reconciler {
	d := DefaultConfig()
	if cfg.RetryMin <= 0 {
		cfg.RetryMin = d.RetryMin
	}
	if cfg.RetryMax < cfg.RetryMin {
		cfg.RetryMax = max(d.RetryMax, cfg.RetryMin)
	}
	if cfg.Trust.MinPrefixLenV4 == 0 && cfg.Trust.MinPrefixLenV6 == 0 {
		cfg.Trust.MinPrefixLenV4, cfg.Trust.MinPrefixLenV6 = d.Trust.MinPrefixLenV4, d.Trust.MinPrefixLenV6
	}
	own := cfg.ClusterID
	ranges := make(map[netip.Prefix]struct{}, len(cfg.ClusterCIDRs))
	for _, p := range cfg.ClusterCIDRs {
		ranges[p.Masked()] = struct{}{}
	}
	r := &Reconciler{
		cfg: cfg, w: w, log: log, clock: clk,
		tunnels:   newTable(encTunnel, decTunnel, func(c tunnelClaim) uint32 { return c.cluster }, own),
		ipcache:   newTable(encIPCache, decIPCache, func(c ipClaim) uint32 { return c.cluster }, own),
		services:  map[datapath.Frontend]*desiredService{},
		endpoints: map[netip.Addr]datapath.Endpoint{},
		dirtySvc:  map[datapath.Frontend]struct{}{},
		dirtyBe:   map[datapath.Frontend]map[netip.AddrPort]struct{}{},
		dirtyEp:   map[netip.Addr]struct{}{},
		restored:  datapath.NewState(),
		holding:   map[uint32]bool{},
		steady:    map[uint32]bool{},
		kick:      make(chan struct{}, 1),

		local:        localSet{byNode: map[string][]netip.Prefix{}, all: newPrefixSet(nil)},
		refused:      map[refusalKey][]Refusal{},
		ipcacheCIDRs: map[netip.Prefix]struct{}{},
		cidrs:        map[netip.Prefix]uint32{},
		ranges:       ranges,
	}
	r.markRangesLocked() // not shared yet
	return r
}

func (r *Reconciler) kickLocked() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Restore reads back the programmed state. Call it once, before any source
// hands in entries. Every cluster ID found is held until Release.
func (r *Reconciler) Restore() (datapath.State, error) {
	st, err := r.w.Dump()
	if err != nil {
		return datapath.State{}, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restored = st
	for _, e := range st.Tunnels {
		r.holding[e.ClusterID] = true
	}
	for _, e := range st.IPCache {
		r.holding[e.ClusterID] = true
	}
	for _, s := range st.Services {
		for _, b := range s.Backends {
			r.holding[b.ClusterID] = true
		}
	}
	if len(st.Services)+len(st.Endpoints) > 0 {
		r.holding[r.cfg.ClusterID] = true
	}
	return st, nil
}

// Holding returns the cluster IDs whose restored entries are still held.
func (r *Reconciler) Holding() []uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]uint32, 0, len(r.holding))
	for id := range r.holding {
		out = append(out, id)
	}
	slices.Sort(out)
	return out
}

// Release ends the hold on the restored entries of cluster id: those that no
// source claims are deleted at the next flush. A source calls it when it has
// delivered its full state, so the transient memory of its initial listing
// (list pages, decoded values, the cold sync's batches) is garbage once the
// next flush is applied: Run then returns the freed memory to the operating
// system once (debug.FreeOSMemory after a collection that empties the
// sync.Pools: two forced collections per sync, none in steady state), else
// the process keeps the peak of the sync resident.
func (r *Reconciler) Release(id uint32) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.trim = true
	r.kickLocked()
	if !r.holding[id] {
		return
	}
	delete(r.holding, id)
	for p, e := range r.restored.Tunnels {
		if e.ClusterID == id {
			r.tunnels.dirty[p] = struct{}{}
		}
	}
	for p, e := range r.restored.IPCache {
		if e.ClusterID == id {
			r.ipcache.dirty[p] = struct{}{}
		}
	}
	for f, s := range r.restored.Services {
		if id == r.cfg.ClusterID || slices.ContainsFunc(s.Backends, func(b datapath.Backend) bool { return b.ClusterID == id }) {
			r.dirtySvc[f] = struct{}{}
		}
	}
	if id == r.cfg.ClusterID {
		for ip := range r.restored.Endpoints {
			r.dirtyEp[ip] = struct{}{}
		}
	}
	r.kickLocked()
}

// Reserve makes room for about tunnels and ipcache more claims at once: a
// source that knows how many entries its initial listing holds saves the
// tables' repeated growth (and the garbage of it) during a cold sync.
func (r *Reconciler) Reserve(tunnels, ipcache int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tunnels.grow(tunnels)
	r.ipcache.grow(ipcache)
	r.relaxGCLocked(tunnels + ipcache)
}

// UpsertTunnel claims a tunnel entry for e.ClusterID.
func (r *Reconciler) UpsertTunnel(e datapath.TunnelEntry) {
	r.mu.Lock()
	ctx, inline := r.inlineLocked(e.ClusterID)
	prev, had := r.tunnels.upsert(e.CIDR, e)
	r.refNodeLocked(e.ClusterID, prev.node, had, ipkey.FromAddr(e.NodeIP))
	r.handOffUnlock(ctx, inline)
}

// DeleteTunnel withdraws cluster id's claim on cidr.
func (r *Reconciler) DeleteTunnel(cidr netip.Prefix, id uint32) {
	r.mu.Lock()
	ctx, inline := r.inlineLocked(id)
	if old, had := r.tunnels.delete(cidr, id); had {
		r.refNodeLocked(id, old.node, true, ipkey.Addr{})
	}
	r.handOffUnlock(ctx, inline)
}

// UpsertIPCache claims an ipcache entry for e.ClusterID.
func (r *Reconciler) UpsertIPCache(e datapath.IPCacheEntry) {
	r.mu.Lock()
	ctx, inline := r.inlineLocked(e.ClusterID)
	prev, had := r.ipcache.upsert(e.Prefix, e)
	r.refNodeLocked(e.ClusterID, prev.tunnel, had, ipkey.FromAddr(e.TunnelEndpoint))
	if !e.Prefix.IsSingleIP() {
		r.ipcacheCIDRs[e.Prefix] = struct{}{}
	}
	r.handOffUnlock(ctx, inline)
}

// IPCacheClaim returns cluster id's claim on p, as last handed in.
func (r *Reconciler) IPCacheClaim(p netip.Prefix, id uint32) (datapath.IPCacheEntry, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ipcache.claim(p, id)
}

// DeleteIPCache withdraws cluster id's claim on p.
func (r *Reconciler) DeleteIPCache(p netip.Prefix, id uint32) {
	r.mu.Lock()
	ctx, inline := r.inlineLocked(id)
	if old, had := r.ipcache.delete(p, id); had {
		r.refNodeLocked(id, old.tunnel, true, ipkey.Addr{})
	}
	if !r.ipcache.has(p) {
		delete(r.ipcacheCIDRs, p)
	}
	r.handOffUnlock(ctx, inline)
}

// UpsertService sets a whole service (servicemerge.Sink). The reconciler
// takes s.Backends over: the caller must not change it afterwards.
func (r *Reconciler) UpsertService(s datapath.Service) {
	r.mu.Lock()
	r.services[s.Frontend] = &desiredService{backends: s.Backends}
	r.dirtySvc[s.Frontend] = struct{}{}
	delete(r.dirtyBe, s.Frontend)
	r.kickLocked()
	r.mu.Unlock()
}

// DeleteService removes a service (servicemerge.Sink).
func (r *Reconciler) DeleteService(f datapath.Frontend) {
	r.mu.Lock()
	delete(r.services, f)
	r.dirtySvc[f] = struct{}{}
	delete(r.dirtyBe, f)
	r.kickLocked()
	r.mu.Unlock()
}

// PatchService changes some backends of a service (servicemerge.Sink), in
// O(changed backends): the next flush hands the datapath a patch of the
// backends changed since the last one, not the whole service.
func (r *Reconciler) PatchService(p datapath.ServicePatch) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.kickLocked()
	d := r.services[p.Frontend]
	if d == nil {
		d = &desiredService{}
		r.services[p.Frontend] = d
		r.dirtySvc[p.Frontend] = struct{}{}
	}
	d.patch(p)
	if _, whole := r.dirtySvc[p.Frontend]; !whole {
		r.markBackendsLocked(p)
	}
}

func (r *Reconciler) markBackendsLocked(p datapath.ServicePatch) {
	set := r.dirtyBe[p.Frontend]
	if set == nil {
		set = map[netip.AddrPort]struct{}{}
		r.dirtyBe[p.Frontend] = set
	}
	for _, a := range p.Delete {
		set[a] = struct{}{}
	}
	for _, b := range p.Upsert {
		set[b.Addr] = struct{}{}
	}
}

// UpsertEndpoint sets a local endpoint.
func (r *Reconciler) UpsertEndpoint(e datapath.Endpoint) {
	r.mu.Lock()
	r.endpoints[e.IP] = e
	r.dirtyEp[e.IP] = struct{}{}
	r.kickLocked()
	r.mu.Unlock()
}

// DeleteEndpoint removes a local endpoint.
func (r *Reconciler) DeleteEndpoint(ip netip.Addr) {
	r.mu.Lock()
	delete(r.endpoints, ip)
	r.dirtyEp[ip] = struct{}{}
	r.kickLocked()
	r.mu.Unlock()
}

// Run applies dirty entries until ctx is done.
func (r *Reconciler) Run(ctx context.Context) error {
	r.mu.Lock()
	r.runCtx = ctx
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		r.runCtx = nil
		r.mu.Unlock()
	}()
	retry := backoff.New(backoff.Policy{Min: r.cfg.RetryMin, Max: r.cfg.RetryMax}, r.clock)
	var upReady <-chan struct{} // nil without an upstream: never ready
	if r.up != nil {
		upReady = r.up.Ready()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-upReady:
		}
		if r.cfg.BatchWindow > 0 {
			select {
			case <-ctx.Done():
				return nil
			case <-r.clock.After(r.cfg.BatchWindow):
			}
		}
		r.step.Lock()
		if r.up != nil {
			r.up.Flush()
			select { // what the upstream handed in goes into this batch
			case <-r.kick:
			default:
			}
		}
		err := r.flushLocked(ctx)
		r.step.Unlock()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			wait := retry.Failure()
			r.log.Warn("datapath apply failed, retrying", "error", err, "retry_in", wait)
			select {
			case <-ctx.Done():
				return nil
			case <-r.clock.After(wait):
			}
			r.mu.Lock()
			r.kickLocked()
			r.mu.Unlock()
			continue
		}
		retry.Success()
		r.trimAfterSync()
	}
}

// trimAfterSync returns freed memory to the operating system after the
// flush that followed a Release, unless more is dirty already (then after
// the flush that applies it).
func (r *Reconciler) trimAfterSync() {
	r.mu.Lock()
	if !r.trim || r.dirtyLocked() {
		r.restoreGCLocked(true)
		r.mu.Unlock()
		return
	}
	r.trim = false
	r.restoreGCLocked(false)
	// Nothing is dirty: the room that cleared left for the sync's flushes
	// goes back too.
	r.tunnels.dirty, r.ipcache.dirty = map[netip.Prefix]struct{}{}, map[netip.Prefix]struct{}{}
	r.mu.Unlock()
	start := r.clock.Now()
	// A first collection moves what sync.Pools hold (the gRPC client's
	// receive buffers of the listing's pages, megabytes each) to their
	// victim caches; FreeOSMemory's own collection then frees them before
	// it returns the free pages. With one collection they outlive the trim,
	// and the next collection frees them into pages the process keeps
	// resident (below the heap goal nothing returns them).
	runtime.GC()
	debug.FreeOSMemory()
	r.log.Debug("returned the freed memory of a sync to the OS", "took", r.clock.Since(start))
	r.mu.Lock()
	r.stats.Trims++
	r.mu.Unlock()
}

func (r *Reconciler) dirtyLocked() bool {
	return len(r.tunnels.dirty)+len(r.ipcache.dirty)+len(r.dirtySvc)+len(r.dirtyBe)+len(r.dirtyEp) > 0
}

// flushWaiter is an AfterFlush callback, called once batch gen is applied.
type flushWaiter struct {
	gen uint64
	fn  func(at time.Time)
}

// AfterFlush calls fn (on the goroutine that applied the batch, Run's as a
// rule: it must not block) with the time the first flush that contains
// everything handed in before AfterFlush returned: a source that has
// delivered its full state learns when the datapath holds it.
func (r *Reconciler) AfterFlush(fn func(at time.Time)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.waiters = append(r.waiters, flushWaiter{gen: r.built + 1, fn: fn})
	r.kickLocked()
}

// Flush applies everything dirty now, as one batch. On error the batch's keys
// stay dirty.
func (r *Reconciler) Flush(ctx context.Context) error {
	r.step.Lock()
	defer r.step.Unlock()
	return r.flushLocked(ctx)
}

// flushLocked is Flush, the caller holding r.step.
func (r *Reconciler) flushLocked(ctx context.Context) error {
	r.mu.Lock()
	b := r.buildLocked()
	r.built++
	gen := r.built
	r.mu.Unlock()
	if b.Empty() {
		r.flushed(gen)
		return nil
	}
	err := r.w.Apply(ctx, b)
	r.mu.Lock()
	r.stats.Batches++
	if err != nil {
		r.stats.Failures++
		r.stats.LastError = err.Error()
		r.redirtyLocked(&b)
		r.mu.Unlock()
		return err
	}
	r.mu.Unlock()
	r.flushed(gen)
	return nil
}

// flushed calls the AfterFlush callbacks that batch gen completes.
func (r *Reconciler) flushed(gen uint64) {
	r.mu.Lock()
	if len(r.waiters) == 0 {
		r.mu.Unlock()
		return
	}
	at := r.clock.Now()
	var done []flushWaiter
	r.waiters = slices.DeleteFunc(r.waiters, func(w flushWaiter) bool {
		if w.gen <= gen {
			done = append(done, w)
			return true
		}
		return false
	})
	r.mu.Unlock()
	for _, w := range done {
		w.fn(at)
	}
}

// Stats returns the reconciler's counters.
func (r *Reconciler) Stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.stats
}

func (r *Reconciler) buildLocked() datapath.Batch {
	var b datapath.Batch
	r.reevaluateLocked()
	// Sized for the dirty entries (mostly upserts): a cold sync's batches
	// hold tens of thousands, grown from nothing they were copied ~15 times.
	if n := len(r.tunnels.dirty); n > 0 {
		b.UpsertTunnels = make([]datapath.TunnelEntry, 0, n)
	}
	if n := len(r.ipcache.dirty); n > 0 {
		b.UpsertIPCache = make([]datapath.IPCacheEntry, 0, n)
	}
	defer r.tunnels.cleared()
	for p := range r.tunnels.dirty {
		delete(r.tunnels.dirty, p)
		e, ok := r.tunnelWinner(p)
		old, restored := r.restored.Tunnels[p]
		switch {
		case ok && restored && old == e:
			delete(r.restored.Tunnels, p)
		case ok:
			delete(r.restored.Tunnels, p)
			b.UpsertTunnels = append(b.UpsertTunnels, e)
		case restored && r.holding[old.ClusterID]:
		default:
			delete(r.restored.Tunnels, p)
			b.DeleteTunnels = append(b.DeleteTunnels, p)
		}
	}
	defer r.ipcache.cleared()
	for p := range r.ipcache.dirty {
		delete(r.ipcache.dirty, p)
		e, ok := r.ipcacheEntry(p)
		old, restored := r.restored.IPCache[p]
		switch {
		case ok && restored && old == e:
			delete(r.restored.IPCache, p)
		case ok:
			delete(r.restored.IPCache, p)
			b.UpsertIPCache = append(b.UpsertIPCache, e)
		case restored && r.holding[old.ClusterID]:
		default:
			delete(r.restored.IPCache, p)
			b.DeleteIPCache = append(b.DeleteIPCache, p)
		}
	}
	own := r.cfg.ClusterID
	for f := range r.dirtyBe {
		// A restored service's change is a whole upsert (held backends
		// are merged into it); a whole service needs no patch too.
		_, restored := r.restored.Services[f]
		_, whole := r.dirtySvc[f]
		if restored || whole {
			delete(r.dirtyBe, f)
			r.dirtySvc[f] = struct{}{}
		}
	}
	for f, set := range r.dirtyBe {
		delete(r.dirtyBe, f)
		d := r.services[f]
		if d == nil {
			continue
		}
		p := datapath.ServicePatch{Frontend: f}
		for a := range set {
			if be, ok := d.get(a); ok {
				p.Upsert = append(p.Upsert, be)
			} else {
				p.Delete = append(p.Delete, a)
			}
		}
		b.PatchServices = append(b.PatchServices, p)
	}
	for f := range r.dirtySvc {
		delete(r.dirtySvc, f)
		d, ok := r.services[f]
		var s datapath.Service
		if ok {
			// A copy: the batch is applied outside the lock, while
			// patches may change d.
			s = datapath.Service{Frontend: f, Backends: slices.Clone(d.backends)}
		}
		old, restored := r.restored.Services[f]
		if restored {
			// Keep restored backends of held clusters; forget the others.
			old.Backends = slices.DeleteFunc(old.Backends, func(b datapath.Backend) bool { return !r.holding[b.ClusterID] })
			if len(old.Backends) == 0 && !r.holding[own] {
				delete(r.restored.Services, f)
				restored = false
			} else {
				r.restored.Services[f] = old
			}
		}
		switch {
		case ok && restored:
			s = mergeRestored(s, old.Backends)
			b.UpsertServices = append(b.UpsertServices, s)
		case ok:
			b.UpsertServices = append(b.UpsertServices, s)
		case restored && r.holding[own]:
		case restored:
			// Desired gone, own cluster released: only held remote backends
			// remain, but a frontend exists only for a local Service.
			delete(r.restored.Services, f)
			b.DeleteServices = append(b.DeleteServices, f)
		default:
			b.DeleteServices = append(b.DeleteServices, f)
		}
	}
	for ip := range r.dirtyEp {
		delete(r.dirtyEp, ip)
		e, ok := r.endpoints[ip]
		old, restored := r.restored.Endpoints[ip]
		switch {
		case ok && restored && old == e:
			delete(r.restored.Endpoints, ip)
		case ok:
			delete(r.restored.Endpoints, ip)
			b.UpsertEndpoints = append(b.UpsertEndpoints, e)
		case restored && r.holding[own]:
		default:
			delete(r.restored.Endpoints, ip)
			b.DeleteEndpoints = append(b.DeleteEndpoints, ip)
		}
	}
	return b
}

// mergeRestored appends the held restored backends that s lacks.
func mergeRestored(s datapath.Service, held []datapath.Backend) datapath.Service {
	if len(held) == 0 {
		return s
	}
	have := make(map[netip.AddrPort]bool, len(s.Backends))
	for _, b := range s.Backends {
		have[b.Addr] = true
	}
	out := slices.Clone(s.Backends)
	for _, b := range held {
		if !have[b.Addr] {
			out = append(out, b)
		}
	}
	return datapath.Service{Frontend: s.Frontend, Backends: out}
}

func (r *Reconciler) redirtyLocked(b *datapath.Batch) {
	for _, e := range b.UpsertTunnels {
		r.tunnels.dirty[e.CIDR] = struct{}{}
	}
	for _, p := range b.DeleteTunnels {
		r.tunnels.dirty[p] = struct{}{}
	}
	for _, e := range b.UpsertIPCache {
		r.ipcache.dirty[e.Prefix] = struct{}{}
	}
	for _, p := range b.DeleteIPCache {
		r.ipcache.dirty[p] = struct{}{}
	}
	for _, s := range b.UpsertServices {
		r.dirtySvc[s.Frontend] = struct{}{}
	}
	for _, f := range b.DeleteServices {
		r.dirtySvc[f] = struct{}{}
	}
	for _, p := range b.PatchServices {
		if _, whole := r.dirtySvc[p.Frontend]; !whole {
			r.markBackendsLocked(p)
		}
	}
	for _, e := range b.UpsertEndpoints {
		r.dirtyEp[e.IP] = struct{}{}
	}
	for _, ip := range b.DeleteEndpoints {
		r.dirtyEp[ip] = struct{}{}
	}
}

// Tunnels returns the desired tunnel entries (the claims that win).
func (r *Reconciler) Tunnels() []datapath.TunnelEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	return winners(r.tunnels.keys(), r.tunnels.len(), r.tunnelWinner)
}

// IPCache returns the desired ipcache entries (the claims that win, the
// CIDR entries and the world entries of local prefixes inside them).
func (r *Reconciler) IPCache() []datapath.IPCacheEntry {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := winners(r.ipcache.keys(), r.ipcache.len(), r.ipcacheEntry)
	return append(out, winners(slices.Values(r.cidrKeys()), 0, r.ipcacheEntry)...)
}

func winners[T any](keys iter.Seq[netip.Prefix], n int, win func(netip.Prefix) (T, bool)) []T {
	out := make([]T, 0, n)
	for p := range keys {
		if e, ok := win(p); ok {
			out = append(out, e)
		}
	}
	return out
}
