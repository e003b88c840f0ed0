package dpsync

import (
	"hash/maphash"
	"iter"
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/flatmap"
	"github.com/clustermesh/clustermesh/internal/ipkey"
)

// table holds the claims on prefixes of one kind: every cluster ID may claim
// a prefix once. Which claim is programmed is decided by the trust rules
// (decide).
//
// The reconciler keeps what the maps need, not a copy of the sources'
// entries: the first claim of a prefix is held in m in a compact form C
// without pointers, in a flat table sized to the entries (a remote's 250,000
// ipcache entries cost ≈ 58 bytes each, against ≈ 118 in a Go map, and the
// garbage collector does not scan them); further claims of the prefix (the
// own cluster's beside a remote's, or conflicting remotes: rare) are in more.
type table[T any, C any] struct {
	m     *flatmap.Map[ipkey.Prefix, C]
	more  map[ipkey.Prefix][]C // other claims of a key of m, oldest first
	dirty map[netip.Prefix]struct{}
	peak  int // most keys dirty at once since the last flush
	enc   func(T) C
	dec   func(netip.Prefix, C) T
	id    func(C) uint32
	own   uint32
}

func newTable[T any, C any](enc func(T) C, dec func(netip.Prefix, C) T, id func(C) uint32, own uint32) table[T, C] {
	seed := maphash.MakeSeed()
	hash := func(k ipkey.Prefix) uint64 { return maphash.Comparable(seed, k) }
	return table[T, C]{m: flatmap.New[ipkey.Prefix, C](hash), more: map[ipkey.Prefix][]C{}, dirty: map[netip.Prefix]struct{}{}, enc: enc, dec: dec, id: id, own: own}
}

// grow makes room for n more keys at once, instead of through repeated
// growth while a large remote is listed.
func (t *table[T, C]) grow(n int) { t.m.Reserve(t.m.Len() + n) }

// cleared is called after a flush emptied dirty: a map keeps the room of
// its largest size, so the one that held many keys is dropped. The next is
// made with room for as many, up to maxDirtyRoom: during a cold sync every
// flush takes thousands of keys, and growing the set again from nothing
// for each cost a few percent of the sync's CPU.
func (t *table[T, C]) cleared() {
	if t.peak > 1024 {
		t.dirty = make(map[netip.Prefix]struct{}, min(t.peak, maxDirtyRoom))
	}
	t.peak = 0
}

// maxDirtyRoom bounds the room a dirty set is made with (≈ 40 bytes each):
// what a burst of changes leaves behind stays small.
const maxDirtyRoom = 16384

func (t *table[T, C]) len() int { return t.m.Len() }

func (t *table[T, C]) has(p netip.Prefix) bool {
	_, ok := t.m.Get(ipkey.FromPrefix(p))
	return ok
}

// keys yields every claimed prefix.
func (t *table[T, C]) keys() iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		for k := range t.m.Keys() {
			if !yield(k.Prefix()) {
				return
			}
		}
	}
}

// claims returns the claims on p: the first (programmed when valid) and
// the others.
func (t *table[T, C]) claims(p netip.Prefix) (first C, more []C, ok bool) {
	k := ipkey.FromPrefix(p)
	first, ok = t.m.Get(k)
	if !ok {
		return first, nil, false
	}
	return first, t.more[k], true
}

// claim returns cluster id's claim on p.
func (t *table[T, C]) claim(p netip.Prefix, id uint32) (v T, ok bool) {
	k := ipkey.FromPrefix(p)
	first, ok := t.m.Get(k)
	if !ok {
		return v, false
	}
	if t.id(first) == id {
		return t.dec(p, first), true
	}
	if i := indexOf(t.more[k], func(c C) bool { return t.id(c) == id }); i >= 0 {
		return t.dec(p, t.more[k][i]), true
	}
	return v, false
}

// each calls f with every claim on p, the first (programmed when valid)
// first.
func (t *table[T, C]) each(p netip.Prefix, f func(T)) {
	k := ipkey.FromPrefix(p)
	c, ok := t.m.Get(k)
	if !ok {
		return
	}
	f(t.dec(p, c))
	for _, o := range t.more[k] {
		f(t.dec(p, o))
	}
}

// upsert sets v's claim on p and returns the claim of v's cluster it
// replaces (had: there was one), found by the same lookup.
func (t *table[T, C]) upsert(p netip.Prefix, v T) (prev C, had bool) {
	t.dirty[p] = struct{}{}
	t.peak = max(t.peak, len(t.dirty))
	k, c := ipkey.FromPrefix(p), t.enc(v)
	first, added := t.m.Ref(k) // one lookup for the common first claim
	id := t.id(c)
	if added || t.id(*first) == id {
		prev, had = *first, !added
		*first = c
		return prev, had
	}
	more := t.more[k]
	for i, o := range more {
		if t.id(o) == id {
			more[i] = c
			return o, true
		}
	}
	if id == t.own { // the own cluster's claim goes first
		t.more[k] = append([]C{*first}, more...)
		*first = c
		return prev, false
	}
	t.more[k] = append(more, c)
	return prev, false
}

// delete withdraws cluster id's claim on p and returns it (had: there was
// one).
func (t *table[T, C]) delete(p netip.Prefix, id uint32) (old C, had bool) {
	k := ipkey.FromPrefix(p)
	first, ok := t.m.Get(k)
	if !ok {
		return old, false
	}
	more := t.more[k]
	i := -1 // the claim of id: -1 first, else its index in more
	if t.id(first) != id {
		i = indexOf(more, func(o C) bool { return t.id(o) == id })
		if i < 0 {
			return old, false
		}
		old = more[i]
	} else {
		old = first
	}
	t.dirty[p] = struct{}{} // every claim counts in the decision
	if i < 0 {
		if len(more) == 0 {
			t.m.Delete(k)
			return old, true
		}
		// Promote the own cluster's claim if any, else the oldest.
		i = max(0, indexOf(more, func(o C) bool { return t.id(o) == t.own }))
		t.m.Set(k, more[i])
	}
	more = append(more[:i], more[i+1:]...)
	if len(more) == 0 {
		delete(t.more, k)
	} else {
		t.more[k] = more
	}
	return old, true
}

func indexOf[C any](s []C, f func(C) bool) int {
	for i, v := range s {
		if f(v) {
			return i
		}
	}
	return -1
}
