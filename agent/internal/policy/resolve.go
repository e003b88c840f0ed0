package policy

import (
	"slices"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// resolve computes the policy of local endpoint id from the cached
// selections.
func (e *Engine) resolve(id ID) EndpointPolicy {
	var ep EndpointPolicy
	for d := range ep {
		ep[d].Entries = map[Key]Entry{}
	}
	for _, p := range e.policies {
		for _, cs := range p.specs {
			if _, ok := cs.subject.ids[id]; !ok {
				continue
			}
			for d, on := range cs.defaultDeny {
				if on {
					ep[d].Enforced = true
				}
			}
			for _, r := range cs.rules {
				ref := rules.Ref{Policy: cs.policy, Spec: cs.index, Direction: r.Direction, Deny: r.Deny, Index: r.Index}
				e.addRule(ep[r.Direction].Entries, id, r, Entry{Deny: r.Deny, Rule: ref})
			}
		}
	}
	return ep
}

// peerEntries computes the keys of peer id alone in the policy of local
// endpoint s (the keys whose Peer.ID is id): those of rules selecting it,
// and those an egress named port of a rule for every peer resolves to it.
func (e *Engine) peerEntries(s, id ID) [2]map[Key]Entry {
	out := [2]map[Key]Entry{{}, {}}
	peer := Peer{ID: id}
	for _, p := range e.policies {
		for _, cs := range p.specs {
			if _, ok := cs.subject.ids[s]; !ok {
				continue
			}
			for _, r := range cs.rules {
				ref := rules.Ref{Policy: cs.policy, Spec: cs.index, Direction: r.Direction, Deny: r.Deny, Index: r.Index}
				ent := Entry{Deny: r.Deny, Rule: ref}
				if !slices.ContainsFunc(r.peers, func(se *selEntry) bool { _, ok := se.ids[id]; return ok }) {
					if r.Peers.All && r.Direction == rules.Egress {
						for _, port := range r.Ports {
							if port.Name != "" {
								e.addNamedPort(out[r.Direction], s, r.Direction, peer, port, ent)
							}
						}
					}
					continue
				}
				if len(r.Ports) == 0 {
					put(out[r.Direction], Key{Peer: peer}, ent)
					continue
				}
				for _, port := range r.Ports {
					e.addPort(out[r.Direction], s, r.Direction, peer, port, ent)
				}
			}
		}
	}
	return out
}

func (e *Engine) addRule(entries map[Key]Entry, subject ID, r compiledRule, ent Entry) {
	peers := make([]Peer, 0, 1)
	if r.Peers.All {
		peers = append(peers, Peer{})
	}
	for _, se := range r.peers {
		for id := range se.ids {
			peers = append(peers, Peer{ID: id})
		}
	}
	for _, peer := range peers {
		if len(r.Ports) == 0 {
			put(entries, Key{Peer: peer}, ent)
			continue
		}
		for _, port := range r.Ports {
			e.addPort(entries, subject, r.Direction, peer, port, ent)
		}
	}
}

var anyProtos = []ipproto.Proto{ipproto.TCP, ipproto.UDP, ipproto.SCTP}

// addPort adds the keys of one port entry of a rule for peer.
func (e *Engine) addPort(entries map[Key]Entry, subject ID, dir rules.Direction, peer Peer, port rules.Port, ent Entry) {
	if port.Name != "" {
		e.addNamedPort(entries, subject, dir, peer, port, ent)
		return
	}
	if port.Port == 0 {
		put(entries, Key{Peer: peer, Proto: port.Proto}, ent)
		return
	}
	protos := []ipproto.Proto{port.Proto}
	if port.Proto == ipproto.Any {
		protos = anyProtos
	}
	for _, pr := range protos {
		put(entries, Key{Peer: peer, Proto: pr, Port: port.Port, EndPort: port.EndPort}, ent)
	}
}

// addNamedPort resolves a port name against the destination of the
// traffic: for ingress the subject's own endpoints; for egress the peer
// identity's. An egress rule for every
// peer becomes one key per identity the name resolves for (a key for
// every peer would open that port towards identities that do not name
// it).
func (e *Engine) addNamedPort(entries map[Key]Entry, subject ID, dir rules.Direction, peer Peer, port rules.Port, ent Entry) {
	add := func(peer Peer, owner ID) {
		if pp, ok := e.resolvedPort(owner, port.Name); ok && (port.Proto == ipproto.Any || port.Proto == pp.Proto) {
			put(entries, Key{Peer: peer, Proto: pp.Proto, Port: pp.Port, EndPort: pp.Port}, ent)
		}
	}
	switch {
	case dir == rules.Ingress:
		add(peer, subject)
	case peer.ID != 0:
		add(peer, peer.ID)
	default:
		for id := range e.ports {
			add(Peer{ID: id}, id)
		}
	}
}

// put records ent for k: deny wins over allow; between equal verdicts the
// lowest rule reference is kept so the result does not depend on order.
func put(entries map[Key]Entry, k Key, ent Entry) {
	old, ok := entries[k]
	switch {
	case !ok, ent.Deny && !old.Deny:
		entries[k] = ent
	case ent.Deny == old.Deny && ent.Rule.Compare(old.Rule) < 0:
		entries[k] = ent
	}
}
