package policysync

import (
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Writer is what the syncer needs of the datapath (bpf.PolicyWriter).
type Writer interface {
	Apply(datapath.PolicyBatch) error
}

// DefaultDeny names the drops no deny rule decided (default deny).
const DefaultDeny = "(default deny)"

// Syncer turns diffs into policy batches. Safe for concurrent use.
type Syncer struct {
	w   Writer
	cfg Config

	mu     sync.Mutex
	ruleID map[rules.Ref]uint32 // guarded by mu; ids are never reused
	byID   map[uint32]rules.Ref // guarded by mu
	modes  map[uint32][2]bool   // guarded by mu: default deny per subject, as resolved
	// anyPolicy: a policy exists, so a pod whose identity is unknown is in
	// default deny both ways.
	anyPolicy bool
	drops     map[DropKey]uint64
	dropVec   *prometheus.CounterVec
	mapUse
}

// DropKey is what drops are counted by.
type DropKey struct {
	// Policy is the deny rule's policy, or DefaultDeny.
	Policy     string
	Egress     bool
	SrcCluster uint32
}

// New returns a Syncer writing to w; reg may be nil.
func New(cfg Config, w Writer, reg prometheus.Registerer) *Syncer {
	s := &Syncer{
		w: w, cfg: cfg, ruleID: map[rules.Ref]uint32{}, byID: map[uint32]rules.Ref{},
		mapUse: newMapUse(),
		modes:  map[uint32][2]bool{}, drops: map[DropKey]uint64{},
		dropVec: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "clustermesh_agent_policy_drops_total",
			Help: "Packets dropped by network policy, by deciding policy (\"(default deny)\" when no deny rule matched), direction and source cluster ID.",
		}, []string{"policy", "direction", "source_cluster"}),
	}
	if reg != nil {
		reg.MustRegister(s.dropVec)
		s.registerMapUse(reg)
	}
	return s
}

// SetAnyPolicy says whether any policy is loaded: while one is, pods whose
// identity is not known yet (0) are in default deny in both directions and
// reached only through rules that admit every peer.
func (s *Syncer) SetAnyPolicy(on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.anyPolicy == on {
		return nil
	}
	if err := s.w.Apply(datapath.PolicyBatch{Modes: []datapath.PolicyMode{{Subject: 0, Ingress: on, Egress: on}}}); err != nil {
		return fmt.Errorf("apply unknown-identity mode: %w", err)
	}
	s.anyPolicy = on
	return nil
}

// Apply programs a diff. A subject whose policy would overflow the
// datapath's capacity is refused instead (see capacity.go). On error the
// diff may be half-applied; applying it again is safe.
func (s *Syncer) Apply(d policy.Diff) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	subs := s.bySubject(d)
	for _, sc := range subs {
		for _, c := range sc.changes {
			m := s.modes[sc.id]
			m[c.Direction] = c.Enforced && !c.Removed
			s.modes[sc.id] = m
		}
	}
	// First take the newly refused subjects out, so that what the others
	// add fits; then the rest of the diff; then whoever fits again.
	var out, b datapath.PolicyBatch
	places := s.place(subs)
	for i, sc := range subs {
		switch places[i] {
		case programmed:
			for _, c := range sc.changes {
				s.addChange(&b, c)
			}
			m := s.modes[sc.id]
			b.Modes = append(b.Modes, datapath.PolicyMode{Subject: sc.id, Ingress: m[rules.Ingress], Egress: m[rules.Egress]})
		case refusedNow:
			s.refuse(&out, sc, true)
		case stillRefused:
			s.refuse(&b, sc, false)
		}
		if m := s.modes[sc.id]; !m[0] && !m[1] {
			delete(s.modes, sc.id)
		}
	}
	for _, batch := range []*datapath.PolicyBatch{&out, &b} {
		if len(batch.Upserts)+len(batch.Deletes)+len(batch.Modes) == 0 {
			continue
		}
		slices.SortFunc(batch.Deletes, comparePolicyKeys)
		slices.SortFunc(batch.Upserts, func(x, y datapath.PolicyEntry) int { return comparePolicyKeys(x.Key, y.Key) })
		if err := s.w.Apply(*batch); err != nil {
			return fmt.Errorf("apply policy: %w", err)
		}
	}
	return s.readmit()
}

func (s *Syncer) addChange(b *datapath.PolicyBatch, c policy.Change) {
	egress := c.Direction == rules.Egress
	for _, k := range c.Deletes {
		b.Deletes = append(b.Deletes, key(c.Endpoint, egress, k))
	}
	for k, e := range c.Upserts {
		b.Upserts = append(b.Upserts, datapath.PolicyEntry{Key: key(c.Endpoint, egress, k), Deny: e.Deny, Rule: s.id(e.Rule)})
	}
}

func (s *Syncer) id(r rules.Ref) uint32 {
	if id, ok := s.ruleID[r]; ok {
		return id
	}
	id := uint32(len(s.ruleID) + 1)
	s.ruleID[r] = id
	s.byID[id] = r
	return id
}

// key converts a resolved key: one datapath key per resolved key.
func key(ep policy.ID, egress bool, k policy.Key) datapath.PolicyKey {
	pk := datapath.PolicyKey{Subject: uint32(ep), Egress: egress, Peer: uint32(k.Peer.ID), Proto: k.Proto, Port: k.Port, EndPort: k.EndPort}
	if pk.Port != 0 && pk.EndPort == 0 {
		pk.EndPort = pk.Port
	}
	return pk
}

// Rule returns the rule a datapath rule id stands for.
func (s *Syncer) Rule(id uint32) (rules.Ref, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.byID[id]
	return r, ok
}

// HandleDrop counts one drop event.
func (s *Syncer) HandleDrop(d datapath.Drop) {
	s.mu.Lock()
	k := DropKey{Policy: DefaultDeny, Egress: d.Egress, SrcCluster: d.SrcCluster}
	if d.Reason == datapath.DropPolicyDeny {
		if r, ok := s.byID[d.Rule]; ok {
			k.Policy = r.Policy
		}
	}
	s.drops[k]++
	s.mu.Unlock()
	dir := "ingress"
	if d.Egress {
		dir = "egress"
	}
	s.dropVec.WithLabelValues(k.Policy, dir, fmt.Sprint(d.SrcCluster)).Inc()
}

// Drops returns the drop counts.
func (s *Syncer) Drops() map[DropKey]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return maps.Clone(s.drops)
}

func comparePolicyKeys(a, b datapath.PolicyKey) int {
	return cmp.Or(cmp.Compare(a.Subject, b.Subject), cmpBool(a.Egress, b.Egress), cmp.Compare(a.Peer, b.Peer),
		cmp.Compare(a.Proto, b.Proto), cmp.Compare(a.Port, b.Port), cmp.Compare(a.EndPort, b.EndPort))
}

func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return 1
	}
	return -1
}
