package wire

import (
	"cmp"
	"fmt"
	"slices"
	"strings"
)

// Label keys and sources that identities carry.
const (
	// LabelSourceK8s is the source of labels taken from Kubernetes.
	LabelSourceK8s = "k8s"
	// ClusterLabelKey names the cluster an identity belongs to.
	ClusterLabelKey = "io.cilium.k8s.policy.cluster"
	// NamespaceLabelKey names the namespace of the pods of an identity.
	NamespaceLabelKey = "io.kubernetes.pod.namespace"
)

// Label is one security-relevant label: source:key=value.
type Label struct {
	Source string
	Key    string
	Value  string
}

// Labels is the label set of an identity, sorted by Key with unique keys
// (Cilium keys its label maps by Key). Its wire form is the concatenation of
// "source:key=value;" in that order, for example
// "k8s:app=web;k8s:io.cilium.k8s.policy.cluster=c1;k8s:io.kubernetes.pod.namespace=shop;".
type Labels []Label

// NewLabels sorts a copy of ls and checks it; see Labels.Validate.
func NewLabels(ls ...Label) (Labels, error) {
	out := slices.Clone(Labels(ls))
	slices.SortFunc(out, compareLabels)
	if err := out.Validate(); err != nil {
		return nil, err
	}
	return out, nil
}

func compareLabels(a, b Label) int {
	if c := cmp.Compare(a.Key, b.Key); c != 0 {
		return c
	}
	return cmp.Compare(a.Source, b.Source)
}

// Validate checks that ls is sorted with unique keys and that every label
// can be written and read back: a non-empty source without ':', '=' or ';',
// a non-empty key without '=' or ';', a value without ';'. Errors wrap
// ErrInvalid.
func (ls Labels) Validate() error {
	for i, l := range ls {
		switch {
		case l.Source == "" || strings.ContainsAny(l.Source, ":=;"):
			return fmt.Errorf("%w: label %d: bad source %q", ErrInvalid, i, l.Source)
		case l.Key == "" || strings.ContainsAny(l.Key, "=;"):
			return fmt.Errorf("%w: label %d: bad key %q", ErrInvalid, i, l.Key)
		case strings.Contains(l.Value, ";"):
			return fmt.Errorf("%w: label %d: value %q contains ';'", ErrInvalid, i, l.Value)
		}
		if i > 0 {
			if ls[i-1].Key == l.Key {
				return fmt.Errorf("%w: duplicate label key %q", ErrInvalid, l.Key)
			}
			if compareLabels(ls[i-1], l) > 0 {
				return fmt.Errorf("%w: labels not sorted at %q", ErrInvalid, l.Key)
			}
		}
	}
	return nil
}

// Get returns the value of the label with the given source and key.
func (ls Labels) Get(source, key string) (string, bool) {
	for _, l := range ls {
		if l.Key == key && l.Source == source {
			return l.Value, true
		}
	}
	return "", false
}

// Format returns the wire form of ls. It does not check ls; writers use
// MarshalIdentity, which does.
func (ls Labels) Format() string {
	var b strings.Builder
	for _, l := range ls {
		b.WriteString(l.Source)
		b.WriteByte(':')
		b.WriteString(l.Key)
		b.WriteByte('=')
		b.WriteString(l.Value)
		b.WriteByte(';')
	}
	return b.String()
}

// String returns the wire form of ls.
func (ls Labels) String() string { return ls.Format() }

// ParseLabels reads the wire form of a label set: entries
// "source:key=value;", the source up to the first ':', the key up to the
// next '='. Entries in any order are accepted and returned sorted; a
// missing ':' or '=', a missing final ';', empty sources or keys and
// duplicate keys are refused with ErrInvalid.
func ParseLabels(s string) (Labels, error) {
	if s == "" {
		return Labels{}, nil
	}
	if !strings.HasSuffix(s, ";") {
		return nil, fmt.Errorf("%w: label string does not end with ';'", ErrInvalid)
	}
	entries := strings.Split(s[:len(s)-1], ";")
	ls := make(Labels, 0, len(entries))
	for _, e := range entries {
		source, rest, ok := strings.Cut(e, ":")
		if !ok {
			return nil, fmt.Errorf("%w: label %q has no source", ErrInvalid, e)
		}
		key, value, ok := strings.Cut(rest, "=")
		if !ok {
			return nil, fmt.Errorf("%w: label %q has no '='", ErrInvalid, e)
		}
		ls = append(ls, Label{Source: source, Key: key, Value: value})
	}
	slices.SortFunc(ls, compareLabels)
	if err := ls.Validate(); err != nil {
		return nil, err
	}
	return ls, nil
}

// Identity is a numeric security identity and its labels, stored at
// IdentityKey(ID) with the label string as value.
type Identity struct {
	ID     uint32
	Labels Labels
}

// MarshalIdentity returns the value to store at IdentityKey(id.ID): the
// label string. It refuses (ErrInvalid) an identity 0 or above 24 bits,
// labels that Validate refuses, and labels without the cluster label.
func MarshalIdentity(id Identity) ([]byte, error) {
	if id.ID == 0 || id.ID > MaxIdentity {
		return nil, fmt.Errorf("identity %d: %w: not a valid numeric identity", id.ID, ErrInvalid)
	}
	if err := id.Labels.Validate(); err != nil {
		return nil, fmt.Errorf("identity %d: %w", id.ID, err)
	}
	if _, ok := id.Labels.Get(LabelSourceK8s, ClusterLabelKey); !ok {
		return nil, fmt.Errorf("identity %d: %w: no %s:%s label", id.ID, ErrInvalid, LabelSourceK8s, ClusterLabelKey)
	}
	b := []byte(id.Labels.Format())
	if len(b) > MaxValueSize {
		return nil, fmt.Errorf("identity %d: %w: %d bytes", id.ID, ErrTooLarge, len(b))
	}
	return b, nil
}

// DecodeIdentity decodes and validates the value of an identity key (state
// or kvstoremesh cache) read from remote r: the id must lie in r's range
// (ClusterIdentityRange) and the labels must name r as the cluster.
func DecodeIdentity(r Remote, key string, value []byte) (Identity, error) {
	if len(value) > MaxValueSize {
		return Identity{}, fmt.Errorf("identity %q: %w: %d bytes", key, ErrTooLarge, len(value))
	}
	if err := r.validate(); err != nil {
		return Identity{}, err
	}
	cluster, id, err := ParseIdentityKey(key)
	if err != nil {
		return Identity{}, err
	}
	if cluster != "" && cluster != r.Name {
		return Identity{}, fmt.Errorf("identity %q: %w: key is for cluster %q, connection for %q", key, ErrWrongCluster, cluster, r.Name)
	}
	if lo, hi := ClusterIdentityRange(r.ID, r.MaxConnectedClusters); id < lo || id > hi {
		return Identity{}, fmt.Errorf("identity %q: %w: %d not in %d..%d of cluster %q", key, ErrIdentityOutOfRange, id, lo, hi, r.Name)
	}
	ls, err := ParseLabels(string(value))
	if err != nil {
		return Identity{}, fmt.Errorf("identity %q: %w", key, err)
	}
	c, ok := ls.Get(LabelSourceK8s, ClusterLabelKey)
	if !ok {
		return Identity{}, fmt.Errorf("identity %q: %w: no %s:%s label", key, ErrWrongCluster, LabelSourceK8s, ClusterLabelKey)
	}
	if c != r.Name {
		return Identity{}, fmt.Errorf("identity %q: %w: labels say cluster %q, connection for %q", key, ErrWrongCluster, c, r.Name)
	}
	return Identity{ID: id, Labels: ls}, nil
}
