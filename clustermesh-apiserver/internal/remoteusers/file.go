package remoteusers

import (
	"errors"
	"fmt"
	"slices"

	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// ErrMalformed is wrapped by every error about the content of a users file.
var ErrMalformed = errors.New("malformed remote users file")

// File is the format of the users file (users.yaml of the
// clustermesh-remote-users ConfigMap):
//
//	clusters: [c2, c3]      # read as remote-<cluster> (Cilium's "cluster" auth mode)
//	legacyClusters: [c4]    # read as the shared user "remote" (Cilium's "legacy" mode)
type File struct {
	// Clusters get a read-only etcd user remote-<cluster>.
	Clusters []string `json:"clusters"`
	// LegacyClusters read as the one user "remote" (client certificate
	// CN=remote), which exists while this list is not empty.
	LegacyClusters []string `json:"legacyClusters,omitempty"`
}

// Wanted is what a users file asks for, each list sorted and without
// duplicates.
type Wanted struct {
	Clusters []string
	Legacy   []string
}

// Parse decodes a users file of cluster own. Unknown fields, invalid
// cluster names, own, and a cluster in both lists are errors wrapping
// ErrMalformed.
func Parse(data []byte, own string) (Wanted, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return Wanted{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	for _, c := range append(slices.Clone(f.Clusters), f.LegacyClusters...) {
		if err := wire.ValidateClusterName(c); err != nil {
			return Wanted{}, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if c == own {
			return Wanted{}, fmt.Errorf("%w: %q is this cluster", ErrMalformed, c)
		}
	}
	w := Wanted{Clusters: sortedSet(f.Clusters), Legacy: sortedSet(f.LegacyClusters)}
	for _, c := range w.Legacy {
		if slices.Contains(w.Clusters, c) {
			return Wanted{}, fmt.Errorf("%w: %q is in both clusters and legacyClusters", ErrMalformed, c)
		}
	}
	return w, nil
}

func sortedSet(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return slices.Compact(out)
}
