package cidridentity

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
)

// ErrExhausted is returned when an acquisition would exceed the bound on
// CIDR identities.
var ErrExhausted = errors.New("CIDR identities exhausted")

// DefaultMax is the default bound on CIDR identities held at once.
const DefaultMax = 1 << 16

// Identity is the CIDR identity of one prefix.
type Identity struct {
	ID     selector.ID
	Prefix netip.Prefix
	Labels selector.Labels
}

type entry struct {
	id   selector.ID
	refs int
}

// Allocator hands out CIDR identities. Safe for concurrent use.
type Allocator struct {
	max int

	mu       sync.Mutex
	byPrefix map[netip.Prefix]*entry      // guarded by mu
	used     map[selector.ID]netip.Prefix // guarded by mu
	// next is the number to try first (guarded by mu): numbers are handed
	// out in increasing order and reused only after wrapping around, so a
	// freed number whose ipcache entry is still being removed is not given
	// to another prefix at once.
	next selector.ID
	// restored are the numbers an earlier agent gave prefixes (Restore),
	// kept for them: its ipcache and policy entries stay right while the
	// policies are read again. Guarded by mu.
	restored   map[netip.Prefix]selector.ID
	restoredID map[selector.ID]struct{}
}

// The numbers of CIDR identities: the local scope's 24 bits (0 unused).
const (
	firstID = selector.IdentityScopeLocal + 1
	lastID  = selector.IdentityScopeLocal | 0xffffff
)

// New returns an allocator holding at most max identities (DefaultMax if
// max ≤ 0).
func New(max int) *Allocator {
	if max <= 0 {
		max = DefaultMax
	}
	return &Allocator{max: max, byPrefix: map[netip.Prefix]*entry{}, used: map[selector.ID]netip.Prefix{}, next: firstID}
}

// Acquire takes one reference on the identity of every prefix and returns
// the identities it created (those no policy named before). It is all or
// nothing: when the bound would be exceeded nothing changes.
func (a *Allocator) Acquire(ps []netip.Prefix) ([]Identity, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	fresh := 0
	seen := make(map[netip.Prefix]bool, len(ps))
	for _, p := range ps {
		p = p.Masked()
		if _, ok := a.byPrefix[p]; !ok && !seen[p] {
			fresh++
		}
		seen[p] = true
	}
	if len(a.byPrefix)+fresh > a.max {
		return nil, fmt.Errorf("acquire %d new prefixes with %d held: %w (at most %d)", fresh, len(a.byPrefix), ErrExhausted, a.max)
	}
	var out []Identity
	for _, p := range ps {
		p = p.Masked()
		if e, ok := a.byPrefix[p]; ok {
			e.refs++
			continue
		}
		id := a.allocate(p)
		a.used[id] = p
		a.byPrefix[p] = &entry{id: id, refs: 1}
		out = append(out, Identity{ID: id, Prefix: p, Labels: selector.CIDRLabels(p)})
	}
	return out, nil
}

// allocate returns the number for p: its restored number if it has one,
// else the next number neither used nor restored for another prefix. The
// caller holds mu and has checked the bound (max is far below the 2^24
// numbers, so one is free).
func (a *Allocator) allocate(p netip.Prefix) selector.ID {
	if id, ok := a.restored[p]; ok {
		if _, taken := a.used[id]; !taken {
			return id
		}
	}
	for {
		id := a.next
		if a.next++; a.next > lastID {
			a.next = firstID
		}
		_, taken := a.used[id]
		_, kept := a.restoredID[id]
		if !taken && !kept {
			return id
		}
	}
}

// Restore gives the allocator the numbers an earlier agent gave prefixes
// (its programmed CIDR entries): each prefix gets its number again, and no
// other prefix gets one of them. Call it before the first Acquire; numbers
// outside the local scope are ignored.
func (a *Allocator) Restore(m map[netip.Prefix]selector.ID) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.restored, a.restoredID = map[netip.Prefix]selector.ID{}, map[selector.ID]struct{}{}
	for p, id := range m {
		if id >= firstID && id <= lastID {
			a.restored[p.Masked()], a.restoredID[id] = id, struct{}{}
		}
	}
}

// Release drops one reference on the identity of every prefix and returns
// the identities no policy names any more (freed).
func (a *Allocator) Release(ps []netip.Prefix) []Identity {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []Identity
	for _, p := range ps {
		p = p.Masked()
		e, ok := a.byPrefix[p]
		if !ok {
			continue
		}
		if e.refs--; e.refs > 0 {
			continue
		}
		delete(a.byPrefix, p)
		delete(a.used, e.id)
		out = append(out, Identity{ID: e.id, Prefix: p})
	}
	return out
}

// Lookup returns the identity of the longest prefix in use that contains
// addr.
func (a *Allocator) Lookup(addr netip.Addr) (Identity, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for b := addr.BitLen(); b >= 0; b-- {
		p, err := addr.Prefix(b)
		if err != nil {
			return Identity{}, false
		}
		if e, ok := a.byPrefix[p]; ok {
			return Identity{ID: e.id, Prefix: p, Labels: selector.CIDRLabels(p)}, true
		}
	}
	return Identity{}, false
}

// Prefix returns the prefix of CIDR identity id.
func (a *Allocator) Prefix(id selector.ID) (netip.Prefix, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.used[id]
	return p, ok
}

// Max returns the bound on identities held at once.
func (a *Allocator) Max() int { return a.max }

// Len returns the number of identities held.
func (a *Allocator) Len() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.byPrefix)
}
