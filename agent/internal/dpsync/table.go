package dpsync

// table holds the claims on keys of one kind: every cluster ID may claim a key
// once. Which claim is programmed is decided by the trust rules (decide).
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

// each calls f with every claim on k.
func (t *table[K, T]) each(k K, f func(T)) {
	c, ok := t.m[k]
	if !ok {
		return
	}
	f(c.first)
	if c.more != nil {
		for _, v := range *c.more {
			f(v)
		}
	}
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
			t.dirty[k] = struct{}{} // every claim counts in the decision
			*c.more = append((*c.more)[:i], (*c.more)[i+1:]...)
			if len(*c.more) == 0 {
				c.more = nil
				t.m[k] = c
			}
			return
		}
	}
}
