package dpsync

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// desiredService is the desired backend list of one frontend. A patch
// edits it in O(changed backends): pos, built on the first patch, finds a
// backend by address, and a deleted backend's place is taken by the last
// one, so the order is that of the last whole upsert, then of the patches.
type desiredService struct {
	backends []datapath.Backend
	pos      map[netip.AddrPort]int // index in backends; nil until the first patch
}

func (d *desiredService) index() {
	if d.pos != nil {
		return
	}
	d.pos = make(map[netip.AddrPort]int, len(d.backends))
	for i, b := range d.backends {
		if _, dup := d.pos[b.Addr]; !dup {
			d.pos[b.Addr] = i
		}
	}
}

// get returns the backend with address a.
func (d *desiredService) get(a netip.AddrPort) (datapath.Backend, bool) {
	d.index()
	i, ok := d.pos[a]
	if !ok {
		return datapath.Backend{}, false
	}
	return d.backends[i], true
}

// patch applies p: deletes, then upserts.
func (d *desiredService) patch(p datapath.ServicePatch) {
	d.index()
	for _, a := range p.Delete {
		i, ok := d.pos[a]
		if !ok {
			continue
		}
		delete(d.pos, a)
		last := len(d.backends) - 1
		if i != last {
			d.backends[i] = d.backends[last]
			d.pos[d.backends[i].Addr] = i
		}
		d.backends = d.backends[:last]
	}
	for _, b := range p.Upsert {
		if i, ok := d.pos[b.Addr]; ok {
			d.backends[i] = b
			continue
		}
		d.pos[b.Addr] = len(d.backends)
		d.backends = append(d.backends, b)
	}
}
