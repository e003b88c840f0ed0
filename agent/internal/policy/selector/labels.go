package selector

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Label sources, as Cilium names them.
const (
	SourceK8s      = "k8s"
	SourceReserved = "reserved"
	SourceAny      = "any"
)

// Well-known label keys (without source).
const (
	// ClusterLabel carries the name of an identity's cluster.
	ClusterLabel = "io.cilium.k8s.policy.cluster"
	// NamespaceLabel carries a pod's namespace.
	NamespaceLabel = "io.kubernetes.pod.namespace"
	// NamespaceLabelsPrefix prefixes the labels of a pod's namespace.
	NamespaceLabelsPrefix = "io.cilium.k8s.namespace.labels."
)

// ErrInvalidLabel is returned for a label or selector that cannot be parsed.
var ErrInvalidLabel = errors.New("invalid label")

// Label is one label of an identity.
type Label struct {
	Source string
	Key    string
	Value  string
}

// String renders the label as "source:key=value" ("source:key" when the
// value is empty).
func (l Label) String() string {
	if l.Value == "" {
		return l.Source + ":" + l.Key
	}
	return l.Source + ":" + l.Key + "=" + l.Value
}

// Labels is the immutable label set of an identity: one slice sorted by key
// and source (an identity's few labels in one allocation; the strings are
// the caller's, not copied).
type Labels struct {
	sorted []Label // by key, then source; one label per key and source
}

// NewLabels builds a label set. A second label with the same source and key
// replaces the first.
func NewLabels(ls ...Label) Labels {
	out := make([]Label, 0, len(ls))
	for _, l := range ls {
		i, found := slices.BinarySearchFunc(out, l, compareKeySource)
		if found {
			out[i] = l
			continue
		}
		out = slices.Insert(out, i, l)
	}
	return Labels{sorted: out}
}

func compareKeySource(a, b Label) int {
	if c := strings.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return strings.Compare(a.Source, b.Source)
}

// ofKey returns the labels of key, one per source.
func (l Labels) ofKey(key string) []Label {
	i, _ := slices.BinarySearchFunc(l.sorted, key, func(lb Label, k string) int { return strings.Compare(lb.Key, k) })
	j := i
	for j < len(l.sorted) && l.sorted[j].Key == key {
		j++
	}
	return l.sorted[i:j]
}

// ParseLabels parses labels written "source:key=value" ("k8s:app=web",
// "reserved:host"); a label without a source gets SourceK8s.
func ParseLabels(ss ...string) (Labels, error) {
	ls := make([]Label, 0, len(ss))
	for _, s := range ss {
		src, rest := splitSource(s, SourceK8s)
		key, val, _ := strings.Cut(rest, "=")
		if key == "" {
			return Labels{}, fmt.Errorf("parse label %q: %w: empty key", s, ErrInvalidLabel)
		}
		ls = append(ls, Label{Source: src, Key: key, Value: val})
	}
	return NewLabels(ls...), nil
}

// MustParseLabels is ParseLabels for literals in tests and tables; it panics
// on error.
func MustParseLabels(ss ...string) Labels {
	l, err := ParseLabels(ss...)
	if err != nil {
		panic(err)
	}
	return l
}

// lookup returns the values of key from source (any source for SourceAny).
func (l Labels) lookup(source, key string) []string {
	var out []string
	for _, lb := range l.ofKey(key) {
		if source == SourceAny || lb.Source == source {
			out = append(out, lb.Value)
		}
	}
	return out
}

// Get returns the value of key from any source, preferring k8s.
func (l Labels) Get(key string) (string, bool) {
	vs := l.ofKey(key)
	if len(vs) == 0 {
		return "", false
	}
	for _, v := range vs {
		if v.Source == SourceK8s {
			return v.Value, true
		}
	}
	return vs[0].Value, true
}

// List returns the labels sorted by their string form.
func (l Labels) List() []Label {
	out := slices.Clone(l.sorted)
	slices.SortFunc(out, func(a, b Label) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// String renders the sorted labels, comma-separated.
func (l Labels) String() string {
	ls := l.List()
	ss := make([]string, len(ls))
	for i, lb := range ls {
		ss[i] = lb.String()
	}
	return strings.Join(ss, ",")
}

// Equal reports whether both sets hold the same labels.
func (l Labels) Equal(o Labels) bool { return l.String() == o.String() }

// splitSource splits "src:key" into its source and key; a key without ':'
// gets def.
func splitSource(s, def string) (string, string) {
	if src, rest, ok := strings.Cut(s, ":"); ok {
		return src, rest
	}
	return def, s
}
