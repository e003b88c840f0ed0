package policy

import (
	"maps"
	"slices"
	"sync"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
)

// Config configures an Engine.
type Config struct {
	// ClusterName: identities labelled with it are local endpoints, whose
	// policy is resolved.
	ClusterName string
}

// Engine holds identities and policies and the resolved policy of every
// local endpoint. It is safe for concurrent use.
type Engine struct {
	cfg Config

	mu       sync.Mutex
	ids      map[ID]*Identity
	policies map[string]*compiled
	sels     map[string]*selEntry // selector cache, by canonical selector
	resolved map[ID]EndpointPolicy
	ports    map[ID]*portTally // named ports of the endpoints of each identity with named ports
	portless map[ID]int        // each identity's endpoints without named ports
}

// selEntry is one cached selector and the identities it selects.
type selEntry struct {
	sel   selector.Selector
	ids   map[ID]struct{}
	refs  int
	specs map[*compiledSpec]int // specs that use it as a peer selector
}

type compiled struct {
	key   string
	specs []*compiledSpec
}

type compiledSpec struct {
	policy      string
	index       int
	subject     *selEntry
	defaultDeny [2]bool
	rules       []compiledRule
	// egressNamed: an egress rule has named ports; named-port changes of
	// any identity may change this spec's entries.
	egressNamed bool
}

type compiledRule struct {
	rules.Rule
	peers []*selEntry
}

// New returns an empty engine.
func New(cfg Config) *Engine {
	return &Engine{
		cfg:      cfg,
		ids:      map[ID]*Identity{},
		policies: map[string]*compiled{},
		sels:     map[string]*selEntry{},
		resolved: map[ID]EndpointPolicy{},
		ports:    map[ID]*portTally{},
		portless: map[ID]int{},
	}
}

func (e *Engine) isLocal(i *Identity) bool {
	if i == nil {
		return false
	}
	v, ok := i.Labels.Get(selector.ClusterLabel)
	return ok && v == e.cfg.ClusterName
}

// UpsertIdentity adds or replaces an identity.
func (e *Engine) UpsertIdentity(id Identity) Diff {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.ids[id.ID]
	if old != nil && old.equal(&id) {
		return nil
	}
	cur := &id
	e.ids[id.ID] = cur
	return e.identityChanged(old, cur, id.ID)
}

// DeleteIdentity removes an identity.
func (e *Engine) DeleteIdentity(id ID) Diff {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.ids[id]
	if old == nil {
		return nil
	}
	delete(e.ids, id)
	return e.identityChanged(old, nil, id)
}

// identityChanged updates the selector cache for one identity and the
// resolved state. The identity's own endpoint is recomputed whole; every
// other endpoint that has it as a peer only gets the keys of that peer
// replaced.
func (e *Engine) identityChanged(old, cur *Identity, id ID) Diff {
	full := map[ID]struct{}{}
	if e.isLocal(old) || e.isLocal(cur) {
		full[id] = struct{}{}
	}
	type flip struct {
		s   *selEntry
		now bool
	}
	var flips []flip
	delta := map[ID]struct{}{}
	for _, s := range e.sels {
		_, was := s.ids[id]
		now := cur != nil && s.sel.Matches(cur.Labels)
		if was != now {
			flips = append(flips, flip{s, now})
			for spec := range s.specs {
				e.addSubjects(delta, spec)
			}
		}
	}
	for s := range full {
		delete(delta, s)
	}
	before := make(map[ID][2]map[Key]Entry, len(delta))
	for s := range delta {
		before[s] = e.peerEntries(s, id)
	}
	for _, f := range flips {
		if f.now {
			f.s.ids[id] = struct{}{}
		} else {
			delete(f.s.ids, id)
		}
	}
	d := e.recompute(full)
	for _, s := range slices.Sorted(maps.Keys(delta)) {
		after := e.peerEntries(s, id)
		ep, ok := e.resolved[s]
		if !ok {
			continue // every local identity is resolved on upsert; defensive
		}
		for dir := range ep {
			c, changed := diffDir(s, rules.Direction(dir),
				DirPolicy{Enforced: ep[dir].Enforced, Entries: before[s][dir]},
				DirPolicy{Enforced: ep[dir].Enforced, Entries: after[dir]}, false)
			if !changed {
				continue
			}
			for _, k := range c.Deletes {
				delete(ep[dir].Entries, k)
			}
			maps.Copy(ep[dir].Entries, c.Upserts)
			d = append(d, c)
		}
	}
	return d
}

func (e *Engine) addSubjects(affected map[ID]struct{}, spec *compiledSpec) {
	for id := range spec.subject.ids {
		if e.isLocal(e.ids[id]) {
			affected[id] = struct{}{}
		}
	}
}

// UpsertPolicy adds or replaces a translated policy (by its key).
func (e *Engine) UpsertPolicy(p rules.Policy) Diff {
	e.mu.Lock()
	defer e.mu.Unlock()
	affected := map[ID]struct{}{}
	if old := e.policies[p.Key]; old != nil {
		e.release(old, affected)
	}
	c := &compiled{key: p.Key}
	for i, s := range p.Specs {
		cs := &compiledSpec{policy: p.Key, index: i, subject: e.acquire(s.Subject), defaultDeny: s.DefaultDeny}
		for _, r := range s.Rules {
			cr := compiledRule{Rule: r}
			for _, sel := range r.Peers.Selectors {
				se := e.acquire(sel)
				se.specs[cs]++
				cr.peers = append(cr.peers, se)
			}
			if r.Direction == rules.Egress && slices.ContainsFunc(r.Ports, func(p rules.Port) bool { return p.Name != "" }) {
				cs.egressNamed = true
			}
			cs.rules = append(cs.rules, cr)
		}
		c.specs = append(c.specs, cs)
		e.addSubjects(affected, cs)
	}
	e.policies[p.Key] = c
	return e.recompute(affected)
}

// DeletePolicy removes a policy by key.
func (e *Engine) DeletePolicy(key string) Diff {
	e.mu.Lock()
	defer e.mu.Unlock()
	old := e.policies[key]
	if old == nil {
		return nil
	}
	affected := map[ID]struct{}{}
	e.release(old, affected)
	delete(e.policies, key)
	return e.recompute(affected)
}

// release drops a compiled policy's selector references, collecting the
// endpoints it selected.
func (e *Engine) release(c *compiled, affected map[ID]struct{}) {
	for _, cs := range c.specs {
		e.addSubjects(affected, cs)
		for _, r := range cs.rules {
			for _, se := range r.peers {
				if se.specs[cs]--; se.specs[cs] == 0 {
					delete(se.specs, cs)
				}
				e.unref(se)
			}
		}
		e.unref(cs.subject)
	}
}

func (e *Engine) acquire(sel selector.Selector) *selEntry {
	k := sel.String()
	if se := e.sels[k]; se != nil {
		se.refs++
		return se
	}
	se := &selEntry{sel: sel, ids: map[ID]struct{}{}, refs: 1, specs: map[*compiledSpec]int{}}
	for id, i := range e.ids {
		if sel.Matches(i.Labels) {
			se.ids[id] = struct{}{}
		}
	}
	e.sels[k] = se
	return se
}

func (e *Engine) unref(se *selEntry) {
	if se.refs--; se.refs == 0 {
		delete(e.sels, se.sel.String())
	}
}

// recompute resolves the affected endpoints again and returns the changes,
// ordered by endpoint and direction.
func (e *Engine) recompute(affected map[ID]struct{}) Diff {
	var d Diff
	for _, id := range slices.Sorted(maps.Keys(affected)) {
		old := e.resolved[id]
		var cur EndpointPolicy
		removed := !e.isLocal(e.ids[id])
		if removed {
			delete(e.resolved, id)
		} else {
			cur = e.resolve(id)
			e.resolved[id] = cur
		}
		for _, dir := range []rules.Direction{rules.Ingress, rules.Egress} {
			if c, ok := diffDir(id, dir, old[dir], cur[dir], removed); ok {
				d = append(d, c)
			}
		}
	}
	return d
}

// Endpoint returns a copy of the resolved policy of a local endpoint.
func (e *Engine) Endpoint(id ID) (EndpointPolicy, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	ep, ok := e.resolved[id]
	return ep.clone(), ok
}

// Snapshot returns a copy of the resolved policy of every local endpoint.
func (e *Engine) Snapshot() map[ID]EndpointPolicy {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make(map[ID]EndpointPolicy, len(e.resolved))
	for id, ep := range e.resolved {
		out[id] = ep.clone()
	}
	return out
}

func (ep EndpointPolicy) clone() EndpointPolicy {
	for d := range ep {
		ep[d].Entries = maps.Clone(ep[d].Entries)
	}
	return ep
}

// Selected returns the identities a selector selects (from the cache when a
// policy uses it).
func (e *Engine) Selected(sel selector.Selector) []ID {
	e.mu.Lock()
	defer e.mu.Unlock()
	if se := e.sels[sel.String()]; se != nil {
		return slices.Sorted(maps.Keys(se.ids))
	}
	var out []ID
	for id, i := range e.ids {
		if sel.Matches(i.Labels) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

// Identity returns a copy of an identity the engine knows.
func (e *Engine) Identity(id ID) (Identity, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	i, ok := e.ids[id]
	if !ok {
		return Identity{}, false
	}
	return *i, true
}
