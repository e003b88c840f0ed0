package flatmap

import (
	"iter"
	"math/bits"
)

const (
	empty = 0
	// maxLoadNum/maxLoadDen is the load of the index above which it grows.
	maxLoadNum, maxLoadDen = 4, 5
	// reserveNum/reserveDen is the load of an index sized for a count.
	reserveNum, reserveDen = 3, 4
	minBuckets             = 8
	// shrinkMin is the capacity below which a table does not shrink.
	shrinkMin = 1024
)

// Map maps K to V. The zero Map is not usable: make one with New. It is not
// safe for concurrent use.
type Map[K comparable, V any] struct {
	hash  func(K) uint64
	ctrl  []uint8  // per bucket: empty, or 0x80 | 7 bits of the key's hash
	idx   []uint32 // per used bucket: the entry's position in slots
	slots []slot[K, V]
}

type slot[K comparable, V any] struct {
	k K
	v V
}

// New returns an empty map hashing keys with hash, which must spread its
// output over all 64 bits (a seeded hash/maphash function does).
func New[K comparable, V any](hash func(K) uint64) *Map[K, V] {
	return &Map[K, V]{hash: hash}
}

// Len returns the number of entries.
func (m *Map[K, V]) Len() int { return len(m.slots) }

// home is the first bucket of a key with hash h in an index of c buckets.
func home(h uint64, c int) int {
	hi, _ := bits.Mul64(h, uint64(c))
	return int(hi)
}

func tag(h uint64) uint8 { return 0x80 | uint8(h&0x7f) }

// find returns the bucket of k, or the empty bucket where it would go.
func (m *Map[K, V]) find(k K) (int, bool) {
	b, _, ok := m.findHash(k)
	return b, ok
}

// findHash is find that also returns the hash of k.
func (m *Map[K, V]) findHash(k K) (int, uint64, bool) {
	h := m.hash(k)
	c := len(m.ctrl)
	t := tag(h)
	for b := home(h, c); ; {
		switch m.ctrl[b] {
		case empty:
			return b, h, false
		case t:
			if m.slots[m.idx[b]].k == k {
				return b, h, true
			}
		}
		if b++; b == c {
			b = 0
		}
	}
}

// Get returns the value of k.
func (m *Map[K, V]) Get(k K) (V, bool) {
	if len(m.slots) == 0 {
		var zero V
		return zero, false
	}
	b, ok := m.find(k)
	if !ok {
		var zero V
		return zero, false
	}
	return m.slots[m.idx[b]].v, true
}

// Set sets the value of k.
func (m *Map[K, V]) Set(k K, v V) {
	p, _ := m.Ref(k)
	*p = v
}

// Ref returns a pointer to the value of k, adding k with the zero value
// first when it is absent (added): a read and a write of one key with one
// lookup. The pointer is valid until the map is next changed.
func (m *Map[K, V]) Ref(k K) (v *V, added bool) {
	n := len(m.slots)
	if (n+1)*maxLoadDen > len(m.ctrl)*maxLoadNum {
		m.rebuild(max(minBuckets, 2*len(m.ctrl), (n+1)*reserveDen/reserveNum+1))
	}
	b, h, ok := m.findHash(k)
	if ok {
		return &m.slots[m.idx[b]].v, false
	}
	m.ctrl[b], m.idx[b] = tag(h), uint32(n)
	m.slots = append(m.slots, slot[K, V]{k: k})
	return &m.slots[n].v, true
}

// Delete removes k and returns the value it had.
func (m *Map[K, V]) Delete(k K) (V, bool) {
	var zero V
	if len(m.slots) == 0 {
		return zero, false
	}
	b, ok := m.find(k)
	if !ok {
		return zero, false
	}
	i := m.idx[b]
	old := m.slots[i].v
	m.unlink(b)
	// The last entry fills the hole in the dense array.
	last := uint32(len(m.slots) - 1)
	if i != last {
		lb := m.bucketOf(last)
		m.slots[i], m.idx[lb] = m.slots[last], i
	}
	m.slots[last] = slot[K, V]{}
	m.slots = m.slots[:last]
	if c := cap(m.slots); c > shrinkMin && len(m.slots) < c/4 {
		// Most entries are gone (a large remote left): give the room back.
		m.slots = append(make([]slot[K, V], 0, 2*len(m.slots)), m.slots...)
		m.rebuild(max(minBuckets, 2*len(m.slots)*reserveDen/reserveNum+1))
	}
	return old, true
}

// unlink empties bucket b: later buckets of its probe run move back into the
// hole unless that would put one before its home bucket.
func (m *Map[K, V]) unlink(b int) {
	c := len(m.ctrl)
	for j := b; ; {
		if j++; j == c {
			j = 0
		}
		if m.ctrl[j] == empty {
			break
		}
		h := home(m.hash(m.slots[m.idx[j]].k), c)
		if inRange(b, h, j) {
			continue // h in (b, j]: the entry at j stays reachable
		}
		m.ctrl[b], m.idx[b] = m.ctrl[j], m.idx[j]
		b = j
	}
	m.ctrl[b], m.idx[b] = empty, 0
}

// bucketOf returns the bucket that points at slot i.
func (m *Map[K, V]) bucketOf(i uint32) int {
	c := len(m.ctrl)
	for b := home(m.hash(m.slots[i].k), c); ; {
		if m.ctrl[b] != empty && m.idx[b] == i {
			return b
		}
		if b++; b == c {
			b = 0
		}
	}
}

// inRange reports whether h lies cyclically in (b, j].
func inRange(b, h, j int) bool {
	if b <= j {
		return b < h && h <= j
	}
	return b < h || h <= j
}

// Reserve makes room for n entries in all: the dense array gets that
// capacity and 1/16 more, and the index its size for n (it grows at 4/3
// of that), so that filling it to n does not grow it, and neither do the
// first changes after a listing of n keys (growing copies the whole
// array: a pause of milliseconds in a table of 250,000).
func (m *Map[K, V]) Reserve(n int) {
	if n > cap(m.slots) {
		s := make([]slot[K, V], len(m.slots), n+n/16)
		copy(s, m.slots)
		m.slots = s
	}
	if n*maxLoadDen > len(m.ctrl)*maxLoadNum {
		m.rebuild(max(minBuckets, n*reserveDen/reserveNum+1))
	}
}

// rebuild makes an index of c buckets for the entries.
func (m *Map[K, V]) rebuild(c int) {
	m.ctrl, m.idx = make([]uint8, c), make([]uint32, c)
	for i := range m.slots {
		h := m.hash(m.slots[i].k)
		b := home(h, c)
		for m.ctrl[b] != empty {
			if b++; b == c {
				b = 0
			}
		}
		m.ctrl[b], m.idx[b] = tag(h), uint32(i)
	}
}

// Clear removes every entry and frees the table.
func (m *Map[K, V]) Clear() { m.ctrl, m.idx, m.slots = nil, nil, nil }

// All yields every entry, in no particular order. The map must not be
// changed during the iteration (collect keys to delete first).
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for i := range m.slots {
			if !yield(m.slots[i].k, m.slots[i].v) {
				return
			}
		}
	}
}

// Keys yields every key; see All.
func (m *Map[K, V]) Keys() iter.Seq[K] {
	return func(yield func(K) bool) {
		for i := range m.slots {
			if !yield(m.slots[i].k) {
				return
			}
		}
	}
}
