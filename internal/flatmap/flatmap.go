package flatmap

import (
	"iter"
	"math/bits"
)

const (
	empty = 0
	// maxLoadNum/maxLoadDen is the load above which the table grows.
	maxLoadNum, maxLoadDen = 4, 5
	// reserveNum/reserveDen is the load a Reserve'd count fills.
	reserveNum, reserveDen = 3, 4
	minCap                 = 8
)

// Map maps K to V. The zero Map is not usable: make one with New. It is not
// safe for concurrent use.
type Map[K comparable, V any] struct {
	hash  func(K) uint64
	ctrl  []uint8 // per slot: empty, or 0x80 | 7 bits of the key's hash
	slots []slot[K, V]
	n     int
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
func (m *Map[K, V]) Len() int { return m.n }

// home is the first slot of a key with hash h in a table of c slots.
func home(h uint64, c int) int {
	hi, _ := bits.Mul64(h, uint64(c))
	return int(hi)
}

func tag(h uint64) uint8 { return 0x80 | uint8(h&0x7f) }

// find returns the slot of k, or the empty slot where it would go.
func (m *Map[K, V]) find(k K) (int, bool) {
	h := m.hash(k)
	c := len(m.ctrl)
	t := tag(h)
	for i := home(h, c); ; {
		switch m.ctrl[i] {
		case empty:
			return i, false
		case t:
			if m.slots[i].k == k {
				return i, true
			}
		}
		if i++; i == c {
			i = 0
		}
	}
}

// Get returns the value of k.
func (m *Map[K, V]) Get(k K) (V, bool) {
	if m.n == 0 {
		var zero V
		return zero, false
	}
	i, ok := m.find(k)
	if !ok {
		var zero V
		return zero, false
	}
	return m.slots[i].v, true
}

// Set sets the value of k.
func (m *Map[K, V]) Set(k K, v V) {
	if (m.n+1)*maxLoadDen > len(m.ctrl)*maxLoadNum {
		m.resize(max(minCap, 2*len(m.ctrl), (m.n+1)*reserveDen/reserveNum+1))
	}
	i, ok := m.find(k)
	if !ok {
		m.ctrl[i] = tag(m.hash(k))
		m.n++
	}
	m.slots[i] = slot[K, V]{k: k, v: v}
}

// Delete removes k and returns the value it had.
func (m *Map[K, V]) Delete(k K) (V, bool) {
	var zero V
	if m.n == 0 {
		return zero, false
	}
	i, ok := m.find(k)
	if !ok {
		return zero, false
	}
	old := m.slots[i].v
	m.n--
	// Backward shift: move later entries of the probe run into the hole
	// unless that would put one before its home slot.
	c := len(m.ctrl)
	for j := i; ; {
		if j++; j == c {
			j = 0
		}
		if m.ctrl[j] == empty {
			break
		}
		h := home(m.hash(m.slots[j].k), c)
		if inRange(i, h, j) {
			continue // h in (i, j]: the entry at j stays reachable
		}
		m.ctrl[i], m.slots[i] = m.ctrl[j], m.slots[j]
		i = j
	}
	m.ctrl[i], m.slots[i] = empty, slot[K, V]{}
	return old, true
}

// inRange reports whether h lies cyclically in (i, j].
func inRange(i, h, j int) bool {
	if i <= j {
		return i < h && h <= j
	}
	return i < h || h <= j
}

// Reserve makes room for n entries in all without growth: a table that
// would grow on the way to n is rebuilt once at the size for n.
func (m *Map[K, V]) Reserve(n int) {
	if n*maxLoadDen <= len(m.ctrl)*maxLoadNum {
		return
	}
	m.resize(max(minCap, n*reserveDen/reserveNum+1))
}

func (m *Map[K, V]) resize(c int) {
	old, oldCtrl := m.slots, m.ctrl
	m.ctrl, m.slots = make([]uint8, c), make([]slot[K, V], c)
	for i, t := range oldCtrl {
		if t == empty {
			continue
		}
		j, _ := m.find(old[i].k)
		m.ctrl[j], m.slots[j] = t, old[i]
	}
}

// Clear removes every entry and frees the table.
func (m *Map[K, V]) Clear() { m.ctrl, m.slots, m.n = nil, nil, 0 }

// All yields every entry, in no particular order. The map must not be
// changed during the iteration (collect keys to delete first).
func (m *Map[K, V]) All() iter.Seq2[K, V] {
	return func(yield func(K, V) bool) {
		for i, t := range m.ctrl {
			if t != empty && !yield(m.slots[i].k, m.slots[i].v) {
				return
			}
		}
	}
}

// Keys yields every key; see All.
func (m *Map[K, V]) Keys() iter.Seq[K] {
	return func(yield func(K) bool) {
		for i, t := range m.ctrl {
			if t != empty && !yield(m.slots[i].k) {
				return
			}
		}
	}
}
