package policy

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// NamedPort is one named container port of an endpoint.
type NamedPort struct {
	Name  string
	Port  uint16
	Proto ipproto.Proto
}

// EndpointPorts is what an ipcache entry of a pod says about its named
// ports: the pod's identity and its named container ports. The zero value
// (ID 0) is "no endpoint".
type EndpointPorts struct {
	ID    ID
	Ports []NamedPort
}

// portTally counts, for one identity with named ports, its endpoints that
// declare named ports and the names they declare; its endpoints without
// named ports are Engine.portless. A name resolves for the identity only
// when every endpoint of it declares the name with the same port and
// protocol: policy keys are per identity, so a name that means different
// ports on different endpoints (or is missing on some) cannot be enforced
// exactly and resolves to nothing (narrower, reported by
// NamedPortConflicts), never to the union (wider).
type portTally struct {
	endpoints int // with named ports
	names     map[string]map[PortProto]int
	resolved  map[string]PortProto // the names every endpoint agrees on
}

func (t *portTally) add(ports []NamedPort, n int) {
	t.endpoints += n
	for _, p := range ports {
		pp := PortProto{Port: p.Port, Proto: p.Proto}
		m := t.names[p.Name]
		if m == nil {
			m = map[PortProto]int{}
			t.names[p.Name] = m
		}
		if m[pp] += n; m[pp] == 0 {
			delete(m, pp)
		}
		if len(m) == 0 {
			delete(t.names, p.Name)
		}
	}
}

// resolve returns the names all endpoints (with and without named ports)
// agree on.
func (t *portTally) resolve(endpoints int) map[string]PortProto {
	out := map[string]PortProto{}
	for name, m := range t.names {
		if len(m) != 1 {
			continue
		}
		for pp, n := range m {
			if n == endpoints {
				out[name] = pp
			}
		}
	}
	return out
}

// UpdateEndpointPorts records that an endpoint's ipcache entry changed
// from old to cur (either may be the zero value: added or removed). When
// the names an identity resolves change, the endpoints whose policy uses
// named ports of it are recomputed. An endpoint without named ports of an
// identity none of whose endpoints names ports is one count.
func (e *Engine) UpdateEndpointPorts(old, cur EndpointPorts) Diff {
	e.mu.Lock()
	defer e.mu.Unlock()
	var changed map[ID]struct{}
	for _, u := range []struct {
		ep EndpointPorts
		n  int
	}{{old, -1}, {cur, 1}} {
		if u.ep.ID == 0 {
			continue
		}
		t := e.ports[u.ep.ID]
		if len(u.ep.Ports) == 0 {
			if e.portless[u.ep.ID] += u.n; e.portless[u.ep.ID] <= 0 {
				delete(e.portless, u.ep.ID)
			}
			if t == nil {
				continue
			}
		} else {
			if t == nil {
				t = &portTally{names: map[string]map[PortProto]int{}}
				e.ports[u.ep.ID] = t
			}
			t.add(u.ep.Ports, u.n)
		}
		r := t.resolve(t.endpoints + e.portless[u.ep.ID])
		if t.endpoints <= 0 {
			delete(e.ports, u.ep.ID)
			r = nil
		}
		if !maps.Equal(r, t.resolved) {
			t.resolved = r
			if changed == nil {
				changed = map[ID]struct{}{}
			}
			changed[u.ep.ID] = struct{}{}
		}
	}
	if len(changed) == 0 {
		return nil
	}
	full := map[ID]struct{}{}
	for id := range changed {
		if e.isLocal(e.ids[id]) {
			full[id] = struct{}{}
		}
	}
	for _, p := range e.policies {
		for _, spec := range p.specs {
			if spec.egressNamed {
				e.addSubjects(full, spec)
			}
		}
	}
	return e.recompute(full)
}

// resolvedPort returns the port a name resolves to for identity id.
func (e *Engine) resolvedPort(id ID, name string) (PortProto, bool) {
	t := e.ports[id]
	if t == nil {
		return PortProto{}, false
	}
	pp, ok := t.resolved[name]
	return pp, ok
}

// NamedPortConflicts lists, per identity, the port names some of its
// endpoints declare that resolve to nothing because its endpoints
// disagree: "http: 80/TCP on 2 of 3 endpoints, 8080/TCP on 1 of 3". Rules
// naming them add no key for that identity.
func (e *Engine) NamedPortConflicts() map[ID][]string {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := map[ID][]string{}
	for id, t := range e.ports {
		for _, name := range slices.Sorted(maps.Keys(t.names)) {
			if _, ok := t.resolved[name]; ok {
				continue
			}
			var parts []string
			for _, pp := range slices.SortedFunc(maps.Keys(t.names[name]), comparePortProto) {
				parts = append(parts, fmt.Sprintf("%d/%s on %d of %d endpoints", pp.Port, pp.Proto, t.names[name][pp], t.endpoints+e.portless[id]))
			}
			out[id] = append(out[id], name+": "+strings.Join(parts, ", "))
		}
	}
	return out
}

func comparePortProto(a, b PortProto) int {
	if a.Port != b.Port {
		return int(a.Port) - int(b.Port)
	}
	return int(a.Proto) - int(b.Proto)
}
