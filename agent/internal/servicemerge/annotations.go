package servicemerge

import "github.com/clustermesh/clustermesh/internal/annotation"

// Annotations are the mesh options of a local Service, as annotation.Parse
// reads them (the parser the clustermesh-apiserver uses too).
type Annotations = annotation.Service

// Affinity says which backends a global service prefers for new connections.
type Affinity = annotation.ServiceAffinity

// The affinities of DESIGN §4. AffinityNone is the default.
const (
	AffinityNone   = annotation.AffinityNone
	AffinityLocal  = annotation.AffinityLocal
	AffinityRemote = annotation.AffinityRemote
)
