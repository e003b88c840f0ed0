package remotecluster

import (
	"encoding/json"
	"unique"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// internPorts returns the interned JSON of a pod's named ports; the zero
// handle for none.
func internPorts(ports []wire.NamedPort) unique.Handle[string] {
	if len(ports) == 0 {
		return unique.Handle[string]{}
	}
	b, err := json.Marshal(ports)
	if err != nil { // a slice of plain structs always marshals
		return unique.Handle[string]{}
	}
	return unique.Make(string(b))
}

// portsOf returns the named ports an interned handle holds.
func portsOf(h unique.Handle[string]) []wire.NamedPort {
	if h == (unique.Handle[string]{}) {
		return nil
	}
	var ports []wire.NamedPort
	if err := json.Unmarshal([]byte(h.Value()), &ports); err != nil {
		return nil // written by internPorts from decoded values
	}
	return ports
}
