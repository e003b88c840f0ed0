package annotation

import (
	"errors"
	"fmt"
	"strings"
)

// The Service annotations, with Cilium's legacy aliases. The current name
// wins over its alias when both are set.
const (
	Global        = "service.cilium.io/global"
	GlobalAlias   = "io.cilium/global-service"
	Shared        = "service.cilium.io/shared"
	SharedAlias   = "io.cilium/shared-service"
	Affinity      = "service.cilium.io/affinity"
	AffinityAlias = "io.cilium/service-affinity"
)

// ErrInvalid: an annotation has a value that is not one of its documented
// values; Parse then uses the value of the safe side (see Service).
var ErrInvalid = errors.New("invalid annotation value")

// ServiceAffinity says which backends a global service prefers for new
// connections.
type ServiceAffinity uint8

// The affinities of DESIGN §4. AffinityNone is the default.
const (
	AffinityNone ServiceAffinity = iota
	AffinityLocal
	AffinityRemote
)

func (a ServiceAffinity) String() string {
	switch a {
	case AffinityLocal:
		return "local"
	case AffinityRemote:
		return "remote"
	default:
		return "none"
	}
}

// Service holds the mesh options of a Service.
//
// Values are compared without letter case and surrounding space. Absent,
// an option takes its default: not global, shared, affinity none. Malformed,
// it takes the safe side, which is the same for every reader: not global,
// NOT shared (nothing is exported that its owner did not clearly ask to
// export), affinity none.
type Service struct {
	Global   bool
	Shared   bool
	Affinity ServiceAffinity
}

// Exported reports whether the cluster publishes the service's own
// backends to the mesh: global and shared.
func (s Service) Exported() bool { return s.Global && s.Shared }

// Parse reads the mesh annotations of a Service from its annotation map.
// It returns one error (wrapping ErrInvalid and naming the annotation) per
// malformed value; callers report and count them.
func Parse(a map[string]string) (Service, []error) {
	out := Service{Shared: true}
	var errs []error
	invalid := func(k, v, using string) {
		errs = append(errs, fmt.Errorf("%s: %w %q, using %s", k, ErrInvalid, v, using))
	}
	if k, v, ok := lookup(a, Global, GlobalAlias); ok {
		b, valid := parseBool(v)
		if !valid {
			invalid(k, v, "false")
		}
		out.Global = b
	}
	if k, v, ok := lookup(a, Shared, SharedAlias); ok {
		b, valid := parseBool(v)
		if !valid {
			invalid(k, v, "false")
		}
		out.Shared = b
	}
	if k, v, ok := lookup(a, Affinity, AffinityAlias); ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "local":
			out.Affinity = AffinityLocal
		case "remote":
			out.Affinity = AffinityRemote
		case "none", "":
			out.Affinity = AffinityNone
		default:
			invalid(k, v, "none")
		}
	}
	return out, errs
}

// lookup returns the annotation under name, or else under alias.
func lookup(a map[string]string, name, alias string) (key, value string, ok bool) {
	if v, ok := a[name]; ok {
		return name, v, true
	}
	v, ok := a[alias]
	return alias, v, ok
}

// parseBool accepts "true" and "false"; anything else is false and invalid.
func parseBool(v string) (b, valid bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true":
		return true, true
	case "false":
		return false, true
	}
	return false, false
}
