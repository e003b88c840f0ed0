package memory

import (
	"context"
	"net/netip"
	"slices"
	"sync"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Datapath holds the programmed state in maps. It is safe for concurrent use,
// so tests may read it while the agent writes.
type Datapath struct {
	mu      sync.Mutex
	state   datapath.State
	applied int           // batches applied; guarded by mu
	notify  chan struct{} // closed and replaced on every Apply; guarded by mu
}

// New returns an empty in-memory datapath.
func New() *Datapath {
	return &Datapath{state: datapath.NewState(), notify: make(chan struct{})}
}

// Apply implements datapath.Writer.
func (d *Datapath) Apply(_ context.Context, b datapath.Batch) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, p := range b.DeleteTunnels {
		delete(d.state.Tunnels, p)
	}
	for _, t := range b.UpsertTunnels {
		d.state.Tunnels[t.CIDR] = t
	}
	for _, p := range b.DeleteIPCache {
		delete(d.state.IPCache, p)
	}
	for _, e := range b.UpsertIPCache {
		d.state.IPCache[e.Prefix] = e
	}
	for _, f := range b.DeleteServices {
		delete(d.state.Services, f)
	}
	for _, s := range b.UpsertServices {
		s.Backends = slices.Clone(s.Backends)
		d.state.Services[s.Frontend] = s
	}
	for _, p := range b.PatchServices {
		s := d.state.Services[p.Frontend]
		s.Frontend, s.Backends = p.Frontend, p.Patch(s.Backends)
		d.state.Services[p.Frontend] = s
	}
	for _, ip := range b.DeleteEndpoints {
		delete(d.state.Endpoints, ip)
	}
	for _, e := range b.UpsertEndpoints {
		d.state.Endpoints[e.IP] = e
	}
	d.applied++
	close(d.notify)
	d.notify = make(chan struct{})
	return nil
}

// Dump implements datapath.Writer; the returned State is a copy.
func (d *Datapath) Dump() (datapath.State, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := datapath.NewState()
	for k, v := range d.state.Tunnels {
		out.Tunnels[k] = v
	}
	for k, v := range d.state.IPCache {
		out.IPCache[k] = v
	}
	for k, v := range d.state.Services {
		v.Backends = slices.Clone(v.Backends)
		out.Services[k] = v
	}
	for k, v := range d.state.Endpoints {
		out.Endpoints[k] = v
	}
	return out, nil
}

// Changed returns a channel that is closed at the next Apply, so tests can wait
// for the datapath to change without polling on a timer.
func (d *Datapath) Changed() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.notify
}

// Service returns the programmed service for f, if any.
func (d *Datapath) Service(f datapath.Frontend) (datapath.Service, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	s, ok := d.state.Services[f]
	s.Backends = slices.Clone(s.Backends)
	return s, ok
}

// IPCache returns the programmed ipcache entry for p, if any.
func (d *Datapath) IPCache(p netip.Prefix) (datapath.IPCacheEntry, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	e, ok := d.state.IPCache[p]
	return e, ok
}
