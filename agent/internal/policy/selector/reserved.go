package selector

import (
	"errors"
	"fmt"
)

// ID is a numeric security identity.
type ID uint32

// Reserved identities, with Cilium's numbers.
const (
	IDHost          ID = 1
	IDWorld         ID = 2
	IDUnmanaged     ID = 3
	IDHealth        ID = 4
	IDInit          ID = 5
	IDRemoteNode    ID = 6
	IDKubeAPIServer ID = 7
)

var reservedNames = map[ID]string{
	IDHost: "host", IDWorld: "world", IDUnmanaged: "unmanaged", IDHealth: "health",
	IDInit: "init", IDRemoteNode: "remote-node", IDKubeAPIServer: "kube-apiserver",
}

// Reserved returns the label sets of the reserved identities: one
// "reserved:<name>" label each.
func Reserved() map[ID]Labels {
	out := make(map[ID]Labels, len(reservedNames))
	for id, name := range reservedNames {
		out[id] = NewLabels(Label{Source: SourceReserved, Key: name})
	}
	return out
}

// ErrUnknownEntity is returned for an entity name Cilium does not define.
var ErrUnknownEntity = errors.New("unknown entity")

// Entity names of fromEntities/toEntities.
const (
	EntityAll           = "all"
	EntityWorld         = "world"
	EntityCluster       = "cluster"
	EntityHost          = "host"
	EntityRemoteNode    = "remote-node"
	EntityInit          = "init"
	EntityHealth        = "health"
	EntityUnmanaged     = "unmanaged"
	EntityKubeAPIServer = "kube-apiserver"
	EntityNone          = "none"
)

func reservedSel(name string) Selector {
	return build([]Requirement{{Source: SourceReserved, Key: name, Op: OpExists}})
}

// EntitySelectors returns the selectors an entity stands for. all is the
// empty selector (every identity, world included); cluster is the reserved
// identities of the cluster plus every identity labelled with the local
// cluster's name; none selects nothing (nil, no error).
func EntitySelectors(entity, localCluster string) ([]Selector, error) {
	switch entity {
	case EntityAll:
		return []Selector{{}}, nil
	case EntityWorld, EntityHost, EntityRemoteNode, EntityInit, EntityHealth, EntityUnmanaged, EntityKubeAPIServer:
		return []Selector{reservedSel(entity)}, nil
	case EntityCluster:
		return []Selector{
			reservedSel(EntityHost), reservedSel(EntityRemoteNode), reservedSel(EntityInit),
			reservedSel(EntityHealth), reservedSel(EntityUnmanaged), reservedSel(EntityKubeAPIServer),
			build([]Requirement{{Source: SourceK8s, Key: ClusterLabel, Op: OpIn, Values: []string{localCluster}}}),
		}, nil
	case EntityNone:
		return nil, nil
	}
	return nil, fmt.Errorf("entity %q: %w", entity, ErrUnknownEntity)
}
