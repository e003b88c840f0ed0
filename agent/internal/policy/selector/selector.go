package selector

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Operator is a matchExpressions operator.
type Operator string

// The operators of Kubernetes label selectors.
const (
	OpIn           Operator = "In"
	OpNotIn        Operator = "NotIn"
	OpExists       Operator = "Exists"
	OpDoesNotExist Operator = "DoesNotExist"
)

// Requirement is one term of a selector; all terms must hold.
type Requirement struct {
	Source string // SourceAny matches every source
	Key    string
	Op     Operator
	Values []string // sorted; empty for Exists and DoesNotExist
}

// Expression is a matchExpressions entry as written in a policy.
type Expression struct {
	Key      string   `json:"key"`
	Operator Operator `json:"operator"`
	Values   []string `json:"values,omitempty"`
}

// Selector selects label sets. The zero Selector selects every label set.
type Selector struct {
	reqs []Requirement // sorted by String
	str  string
}

// New builds a selector from matchLabels and matchExpressions. Keys without a
// source match any source.
func New(matchLabels map[string]string, exprs []Expression) (Selector, error) {
	reqs := make([]Requirement, 0, len(matchLabels)+len(exprs))
	for k, v := range matchLabels {
		src, key := splitSource(k, SourceAny)
		if key == "" {
			return Selector{}, fmt.Errorf("matchLabels key %q: %w: empty key", k, ErrInvalidLabel)
		}
		reqs = append(reqs, Requirement{Source: src, Key: key, Op: OpIn, Values: []string{v}})
	}
	for _, e := range exprs {
		src, key := splitSource(e.Key, SourceAny)
		if key == "" {
			return Selector{}, fmt.Errorf("matchExpressions key %q: %w: empty key", e.Key, ErrInvalidLabel)
		}
		switch e.Operator {
		case OpIn, OpNotIn:
			if len(e.Values) == 0 {
				return Selector{}, fmt.Errorf("matchExpressions %q %s: %w: needs values", e.Key, e.Operator, ErrInvalidLabel)
			}
		case OpExists, OpDoesNotExist:
			if len(e.Values) != 0 {
				return Selector{}, fmt.Errorf("matchExpressions %q %s: %w: takes no values", e.Key, e.Operator, ErrInvalidLabel)
			}
		default:
			return Selector{}, fmt.Errorf("matchExpressions %q: %w: unknown operator %q", e.Key, ErrInvalidLabel, e.Operator)
		}
		vals := slices.Clone(e.Values)
		sort.Strings(vals)
		reqs = append(reqs, Requirement{Source: src, Key: key, Op: e.Operator, Values: slices.Compact(vals)})
	}
	return build(reqs), nil
}

// MustNew is New for literals; it panics on error.
func MustNew(matchLabels map[string]string, exprs ...Expression) Selector {
	s, err := New(matchLabels, exprs)
	if err != nil {
		panic(err)
	}
	return s
}

func build(reqs []Requirement) Selector {
	strs := make([]string, len(reqs))
	idx := make([]int, len(reqs))
	for i, r := range reqs {
		strs[i] = r.String()
		idx[i] = i
	}
	sort.Slice(idx, func(a, b int) bool { return strs[idx[a]] < strs[idx[b]] })
	sorted := make([]Requirement, 0, len(reqs))
	parts := make([]string, 0, len(reqs))
	for _, i := range idx {
		if len(parts) > 0 && parts[len(parts)-1] == strs[i] {
			continue
		}
		sorted = append(sorted, reqs[i])
		parts = append(parts, strs[i])
	}
	return Selector{reqs: sorted, str: "{" + strings.Join(parts, ",") + "}"}
}

// String renders the requirement canonically.
func (r Requirement) String() string {
	k := r.Source + ":" + r.Key
	switch r.Op {
	case OpExists:
		return k
	case OpDoesNotExist:
		return "!" + k
	case OpNotIn:
		return k + " notin (" + strings.Join(r.Values, " ") + ")"
	}
	if len(r.Values) == 1 {
		return k + "=" + r.Values[0]
	}
	return k + " in (" + strings.Join(r.Values, " ") + ")"
}

// String renders the selector canonically: equal selectors have equal
// strings, so the string is a cache key.
func (s Selector) String() string {
	if s.str == "" {
		return "{}"
	}
	return s.str
}

// Requirements returns the terms of the selector.
func (s Selector) Requirements() []Requirement { return slices.Clone(s.reqs) }

// And returns s with the extra requirement r.
func (s Selector) And(r Requirement) Selector {
	slices.Sort(r.Values)
	return build(append(slices.Clone(s.reqs), r))
}

// HasKey reports whether a term of s is about key (without source), from the
// given source or from any source.
func (s Selector) HasKey(key string) bool {
	return slices.ContainsFunc(s.reqs, func(r Requirement) bool { return r.Key == key })
}

// HasKeyPrefix reports whether a term's key starts with prefix.
func (s Selector) HasKeyPrefix(prefix string) bool {
	return slices.ContainsFunc(s.reqs, func(r Requirement) bool { return strings.HasPrefix(r.Key, prefix) })
}

// HasSource reports whether a term names the source explicitly.
func (s Selector) HasSource(source string) bool {
	return slices.ContainsFunc(s.reqs, func(r Requirement) bool { return r.Source == source })
}

// Matches reports whether the label set satisfies every term.
func (s Selector) Matches(l Labels) bool {
	for _, r := range s.reqs {
		if !r.matches(l) {
			return false
		}
	}
	return true
}

func (r Requirement) matches(l Labels) bool {
	vals := l.lookup(r.Source, r.Key)
	switch r.Op {
	case OpExists:
		return len(vals) > 0
	case OpDoesNotExist:
		return len(vals) == 0
	case OpIn:
		return slices.ContainsFunc(vals, func(v string) bool { _, ok := slices.BinarySearch(r.Values, v); return ok })
	case OpNotIn:
		return !slices.ContainsFunc(vals, func(v string) bool { _, ok := slices.BinarySearch(r.Values, v); return ok })
	}
	return false
}

// Without returns s without the terms about key (from any source).
func (s Selector) Without(key string) Selector {
	return build(slices.DeleteFunc(slices.Clone(s.reqs), func(r Requirement) bool { return r.Key == key }))
}
