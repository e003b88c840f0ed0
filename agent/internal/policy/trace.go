package policy

import (
	"fmt"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// Flow is the traffic a Trace evaluates.
type Flow struct {
	Src, Dst ID
	Port     uint16
	Proto    ipproto.Proto
}

// Verdict is the decision in one direction.
type Verdict struct {
	// Evaluated is false when that side is not a local endpoint: its own
	// cluster enforces it.
	Evaluated bool
	Allowed   bool
	// Rule decided the verdict; nil for default allow or default deny.
	Rule   *rules.Ref
	Reason string
}

// TraceResult is the verdict of a flow: egress at the source, ingress at
// the destination.
type TraceResult struct {
	Allowed         bool
	Egress, Ingress Verdict
}

// Trace evaluates a flow against the resolved state.
func (e *Engine) Trace(f Flow) TraceResult {
	e.mu.Lock()
	defer e.mu.Unlock()
	eg := e.verdict(f.Src, rules.Egress, f.Dst, f.Port, f.Proto)
	in := e.verdict(f.Dst, rules.Ingress, f.Src, f.Port, f.Proto)
	return TraceResult{Allowed: (!eg.Evaluated || eg.Allowed) && (!in.Evaluated || in.Allowed), Egress: eg, Ingress: in}
}

func (e *Engine) verdict(ep ID, dir rules.Direction, peer ID, port uint16, proto ipproto.Proto) Verdict {
	pol, ok := e.resolved[ep]
	if !ok {
		return Verdict{Reason: fmt.Sprintf("identity %d is not a local endpoint; its %s is enforced by its own cluster", ep, dir)}
	}
	dp := pol[dir]
	var deny, allow *rules.Ref
	for k, ent := range dp.Entries {
		if !k.matches(peer, port, proto) {
			continue
		}
		r := ent.Rule
		best := &allow
		if ent.Deny {
			best = &deny
		}
		if *best == nil || r.Compare(**best) < 0 {
			*best = &r
		}
	}
	switch {
	case deny != nil:
		return Verdict{Evaluated: true, Rule: deny, Reason: "denied by " + deny.String()}
	case allow != nil:
		return Verdict{Evaluated: true, Allowed: true, Rule: allow, Reason: "allowed by " + allow.String()}
	case dp.Enforced:
		return Verdict{Evaluated: true, Reason: fmt.Sprintf("default deny: a policy selects the endpoint for %s and no rule allows this", dir)}
	}
	return Verdict{Evaluated: true, Allowed: true, Reason: fmt.Sprintf("default allow: no policy selects the endpoint for %s", dir)}
}

func (k Key) matches(peer ID, port uint16, proto ipproto.Proto) bool {
	if k.Peer.ID != 0 && k.Peer.ID != peer {
		return false
	}
	if k.Proto != ipproto.Any && k.Proto != proto {
		return false
	}
	return k.Port == 0 || (port >= k.Port && port <= k.EndPort)
}

// DecidedBy returns the rules behind the result: for a denied flow the rule
// of the first denying side (egress before ingress; none for default deny),
// for an allowed flow the allowing rules of both sides.
func (r TraceResult) DecidedBy() []rules.Ref {
	var out []rules.Ref
	for _, v := range []Verdict{r.Egress, r.Ingress} {
		if !v.Evaluated {
			continue
		}
		if !r.Allowed && !v.Allowed {
			if v.Rule != nil {
				return []rules.Ref{*v.Rule}
			}
			return nil
		}
		if r.Allowed && v.Rule != nil {
			out = append(out, *v.Rule)
		}
	}
	return out
}
