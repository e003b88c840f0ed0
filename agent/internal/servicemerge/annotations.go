package servicemerge

import (
	"fmt"
	"strings"
)

// Affinity says which backends a global service prefers for new connections.
type Affinity uint8

// The affinities of DESIGN §4. AffinityNone is the default.
const (
	AffinityNone Affinity = iota
	AffinityLocal
	AffinityRemote
)

func (a Affinity) String() string {
	switch a {
	case AffinityLocal:
		return "local"
	case AffinityRemote:
		return "remote"
	default:
		return "none"
	}
}

// The service annotations, with Cilium's legacy aliases.
const (
	AnnotationGlobal        = "service.cilium.io/global"
	AnnotationGlobalAlias   = "io.cilium/global-service"
	AnnotationShared        = "service.cilium.io/shared"
	AnnotationSharedAlias   = "io.cilium/shared-service"
	AnnotationAffinity      = "service.cilium.io/affinity"
	AnnotationAffinityAlias = "io.cilium/service-affinity"
)

// Annotations are the mesh options of a Service.
type Annotations struct {
	Global   bool     // default false
	Shared   bool     // default true
	Affinity Affinity // default none
}

// ParseAnnotations reads the mesh annotations of a Service. The current name
// wins over its alias. A value that cannot be parsed yields the documented
// default for that option and a warning; callers log and count warnings.
func ParseAnnotations(a map[string]string) (Annotations, []string) {
	out := Annotations{Shared: true}
	var warn []string
	lookup := func(name, alias string) (string, string, bool) {
		if v, ok := a[name]; ok {
			return name, v, true
		}
		v, ok := a[alias]
		return alias, v, ok
	}
	if k, v, ok := lookup(AnnotationGlobal, AnnotationGlobalAlias); ok {
		b, err := parseBool(v)
		if err != nil {
			warn = append(warn, fmt.Sprintf("%s: %v, using false", k, err))
		}
		out.Global = b
	}
	if k, v, ok := lookup(AnnotationShared, AnnotationSharedAlias); ok {
		b, err := parseBool(v)
		if err != nil {
			warn = append(warn, fmt.Sprintf("%s: %v, using true", k, err))
			b = true
		}
		out.Shared = b
	}
	if k, v, ok := lookup(AnnotationAffinity, AnnotationAffinityAlias); ok {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "local":
			out.Affinity = AffinityLocal
		case "remote":
			out.Affinity = AffinityRemote
		case "none", "":
			out.Affinity = AffinityNone
		default:
			warn = append(warn, fmt.Sprintf("%s: invalid value %q, using none", k, v))
		}
	}
	return out, warn
}

func parseBool(v string) (bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true":
		return true, nil
	case "false":
		return false, nil
	default:
		return false, fmt.Errorf("invalid value %q", v)
	}
}
