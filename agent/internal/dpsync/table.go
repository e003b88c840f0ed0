package dpsync

// table holds the claims on keys of one kind: every cluster ID may claim a key
// once; the own cluster's claim wins, otherwise the oldest.
type table[K comparable, T any] struct {
	m     map[K]claims[T]
	dirty map[K]struct{}
	id    func(T) uint32
	own   uint32
}

type claims[T any] struct {
	first T
	more  *[]T // other claims, oldest first; nil in the common case
}

func newTable[K comparable, T any](id func(T) uint32, own uint32) table[K, T] {
	return table[K, T]{m: map[K]claims[T]{}, dirty: map[K]struct{}{}, id: id, own: own}
}

func (t *table[K, T]) get(k K) (T, bool) {
	c, ok := t.m[k]
	return c.first, ok
}

func (t *table[K, T]) upsert(k K, v T) {
	t.dirty[k] = struct{}{}
	c, ok := t.m[k]
	if !ok {
		t.m[k] = claims[T]{first: v}
		return
	}
	id := t.id(v)
	if t.id(c.first) == id {
		c.first = v
		t.m[k] = c
		return
	}
	if c.more != nil {
		for i, o := range *c.more {
			if t.id(o) == id {
				(*c.more)[i] = v
				return
			}
		}
	} else {
		c.more = new([]T)
	}
	if id == t.own {
		*c.more = append([]T{c.first}, *c.more...)
		c.first = v
	} else {
		*c.more = append(*c.more, v)
	}
	t.m[k] = c
}

func (t *table[K, T]) delete(k K, id uint32) {
	c, ok := t.m[k]
	if !ok {
		return
	}
	if t.id(c.first) == id {
		t.dirty[k] = struct{}{}
		if c.more == nil || len(*c.more) == 0 {
			delete(t.m, k)
			return
		}
		// Promote the own cluster's claim if any, else the oldest.
		i := 0
		for j, o := range *c.more {
			if t.id(o) == t.own {
				i = j
				break
			}
		}
		c.first = (*c.more)[i]
		*c.more = append((*c.more)[:i], (*c.more)[i+1:]...)
		if len(*c.more) == 0 {
			c.more = nil
		}
		t.m[k] = c
		return
	}
	if c.more == nil {
		return
	}
	for i, o := range *c.more {
		if t.id(o) == id {
			*c.more = append((*c.more)[:i], (*c.more)[i+1:]...)
			if len(*c.more) == 0 {
				c.more = nil
				t.m[k] = c
			}
			return
		}
	}
}

func (t *table[K, T]) values() []T {
	out := make([]T, 0, len(t.m))
	for _, c := range t.m {
		out = append(out, c.first)
	}
	return out
}
