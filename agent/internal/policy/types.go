package policy

import (
	"maps"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// ID is a numeric security identity.
type ID = selector.ID

// PortProto is one resolved named port.
type PortProto struct {
	Port  uint16
	Proto ipproto.Proto
}

// Identity is a security identity: its number and labels. The named
// ports of its endpoints come from their ipcache entries
// (UpdateEndpointPorts).
type Identity struct {
	ID     ID
	Labels selector.Labels
}

func (i *Identity) equal(o *Identity) bool { return i.Labels.Equal(o.Labels) }

// Peer is the remote side of a key: an identity, or (zero value) every
// peer.
type Peer struct {
	ID ID
}

// Key is one resolved policy key. Port 0 means every port; Proto 0 every
// protocol.
type Key struct {
	Peer    Peer
	Proto   ipproto.Proto
	Port    uint16
	EndPort uint16
}

// Entry is the verdict of a key and the rule that produced it.
type Entry struct {
	Deny bool
	Rule rules.Ref
}

// DirPolicy is the resolved policy of one endpoint in one direction.
type DirPolicy struct {
	Enforced bool // default deny
	Entries  map[Key]Entry
}

// EndpointPolicy is indexed by rules.Direction.
type EndpointPolicy [2]DirPolicy

// Change is what a datapath writer applies for one endpoint and direction.
type Change struct {
	Endpoint  ID
	Direction rules.Direction
	// Removed: the endpoint is gone; drop all its state (Deletes lists it).
	Removed  bool
	Enforced bool
	Upserts  map[Key]Entry
	Deletes  []Key
	// Replaced lists the keys of Upserts that existed with another entry
	// (the rest are new): a writer that counts keys needs it.
	Replaced []Key
}

// Diff is the ordered list of changes of one update.
type Diff []Change

func diffDir(id ID, d rules.Direction, old, cur DirPolicy, removed bool) (Change, bool) {
	c := Change{Endpoint: id, Direction: d, Removed: removed, Enforced: cur.Enforced}
	for k, e := range cur.Entries {
		o, ok := old.Entries[k]
		if ok && o == e {
			continue
		}
		if c.Upserts == nil {
			c.Upserts = map[Key]Entry{}
		}
		c.Upserts[k] = e
		if ok {
			c.Replaced = append(c.Replaced, k)
		}
	}
	for k := range old.Entries {
		if _, ok := cur.Entries[k]; !ok {
			c.Deletes = append(c.Deletes, k)
		}
	}
	changed := len(c.Upserts) > 0 || len(c.Deletes) > 0 || old.Enforced != cur.Enforced || removed
	return c, changed
}

// Apply folds a diff into a state map as a datapath writer would; tests use
// it to check that diffs reproduce the resolved state.
func Apply(state map[ID]EndpointPolicy, d Diff) {
	for _, c := range d {
		ep := state[c.Endpoint]
		dp := DirPolicy{Enforced: c.Enforced, Entries: maps.Clone(ep[c.Direction].Entries)}
		if dp.Entries == nil {
			dp.Entries = map[Key]Entry{}
		}
		for _, k := range c.Deletes {
			delete(dp.Entries, k)
		}
		maps.Copy(dp.Entries, c.Upserts)
		ep[c.Direction] = dp
		if c.Removed {
			delete(state, c.Endpoint)
			continue
		}
		state[c.Endpoint] = ep
	}
}
