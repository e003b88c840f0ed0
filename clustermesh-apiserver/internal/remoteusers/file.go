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
// clustermesh-remote-users ConfigMap): clusters: [c2, c3].
type File struct {
	// Clusters get a read-only etcd user remote-<cluster>.
	Clusters []string `json:"clusters"`
}

// Parse decodes a users file of cluster own and returns its clusters,
// sorted and without duplicates. Unknown fields, invalid cluster names and
// own are errors wrapping ErrMalformed.
func Parse(data []byte, own string) ([]string, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	for _, c := range f.Clusters {
		if err := wire.ValidateClusterName(c); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if c == own {
			return nil, fmt.Errorf("%w: %q is this cluster", ErrMalformed, c)
		}
	}
	out := slices.Clone(f.Clusters)
	slices.Sort(out)
	return slices.Compact(out), nil
}
