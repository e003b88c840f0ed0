package policysync

import (
	"cmp"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/internal/datapath"
)

// Config configures a Syncer.
type Config struct {
	// Capacity is how many policy map keys the datapath holds for all
	// subjects together (bpf.PolicyWriter.Capacity); 0: unbounded.
	Capacity int
	// Resolved gives a subject's whole resolved policy (the engine). With a
	// Capacity it is needed to take a refused subject's keys out and to put
	// them back once they fit.
	Resolved Resolved
	// Log receives a warning per refused subject; nil discards.
	Log *slog.Logger
}

// Resolved is what the syncer reads of the engine.
type Resolved interface {
	Endpoint(id policy.ID) (policy.EndpointPolicy, bool)
}

// mapUse accounts for the datapath's policy map. Each subject (local
// identity) needs the map keys of its resolved policy (an upper bound:
// datapath.PolicyKey.MapKeys). A subject is programmed whole or not at all:
// one whose policy would overflow the map is refused, its keys taken out
// and its directions that have any policy put in default deny (narrower
// than its policy, never wider), until enough keys are free again.
// Subjects already programmed and not changed keep their keys; among the
// changed ones the lowest identity is served first. The fields are
// guarded by Syncer.mu.
type mapUse struct {
	need     map[uint32][2]int   // map keys of each subject's resolved policy, per direction
	refused  map[uint32]struct{} // subjects not programmed
	used     int                 // Σ need of the programmed subjects
	final    int                 // during Apply: used once the diff is applied
	peak     int                 // during Apply: keys in the map once the upserts are written
	refusals uint64              // times a subject was refused
}

func newMapUse() mapUse {
	return mapUse{need: map[uint32][2]int{}, refused: map[uint32]struct{}{}}
}

// subjectChange is one subject's part of a diff.
type subjectChange struct {
	id      uint32
	changes []policy.Change
	old     int    // map keys before the diff
	cur     [2]int // map keys after, per direction
	add     int    // map keys written before the deletes
}

// bySubject splits d by subject, in ascending order, counts map keys and
// prepares the placement of the subjects (place).
func (s *Syncer) bySubject(d policy.Diff) []subjectChange {
	idx := map[uint32]int{}
	var out []subjectChange
	for _, c := range d {
		id := uint32(c.Endpoint)
		i, ok := idx[id]
		if !ok {
			i = len(out)
			idx[id] = i
			n := s.need[id]
			out = append(out, subjectChange{id: id, old: n[0] + n[1], cur: n})
		}
		sc := &out[i]
		sc.changes = append(sc.changes, c)
		egress := c.Direction == rules.Egress
		var replaced map[policy.Key]struct{}
		if len(c.Replaced) > 0 {
			replaced = make(map[policy.Key]struct{}, len(c.Replaced))
			for _, k := range c.Replaced {
				replaced[k] = struct{}{}
			}
		}
		for k := range c.Upserts {
			if _, ok := replaced[k]; !ok {
				n := key(c.Endpoint, egress, k).MapKeys()
				sc.cur[c.Direction] += n
				sc.add += n
			}
		}
		for _, k := range c.Deletes {
			sc.cur[c.Direction] -= key(c.Endpoint, egress, k).MapKeys()
		}
	}
	slices.SortFunc(out, func(a, b subjectChange) int { return cmp.Compare(a.id, b.id) })
	// The changed subjects are placed anew: the untouched programmed ones
	// keep theirs. The newly refused go out before the others' upserts.
	s.final, s.peak = s.used, s.used
	for _, sc := range out {
		if _, refused := s.refused[sc.id]; !refused {
			s.final -= sc.old
		}
	}
	return out
}

type placement int

const (
	programmed placement = iota
	refusedNow
	stillRefused
)

// place records the subjects' new needs and decides, per subject of subs,
// whether its change is programmed: first by the map's use once the diff
// is applied, then by its use while the programmed subjects' upserts
// precede their deletes (after the newly refused are taken out). A
// subject that fits the first but not the second is refused too: taken
// out, then programmed whole again by readmit.
func (s *Syncer) place(subs []subjectChange) []placement {
	out := make([]placement, len(subs))
	c := s.cfg.Capacity
	for i, sc := range subs {
		curN := sc.cur[0] + sc.cur[1]
		if curN == 0 {
			delete(s.need, sc.id)
		} else {
			s.need[sc.id] = sc.cur
		}
		if _, refused := s.refused[sc.id]; refused {
			if curN > 0 {
				out[i] = stillRefused
				continue
			}
			delete(s.refused, sc.id)
			continue
		}
		if c == 0 || s.final+curN <= c {
			s.final += curN
			s.used += curN - sc.old
			continue
		}
		out[i] = s.refuseNow(sc)
	}
	for i, sc := range subs {
		if out[i] != programmed || c == 0 {
			continue
		}
		if s.peak+sc.add <= c {
			s.peak += sc.add
			continue
		}
		s.used -= sc.cur[0] + sc.cur[1]
		s.used += sc.old
		out[i] = s.refuseNow(sc)
	}
	return out
}

// refuseNow takes a programmed subject out of the accounting.
func (s *Syncer) refuseNow(sc subjectChange) placement {
	s.used -= sc.old
	s.peak -= sc.old
	s.refused[sc.id] = struct{}{}
	s.refusals++
	return refusedNow
}

// refuse writes a refused subject's state: its keys out (when it was
// programmed until now) and default deny in each direction with policy.
func (s *Syncer) refuse(b *datapath.PolicyBatch, sc subjectChange, refusedNow bool) {
	need, m := s.need[sc.id], s.modes[sc.id]
	if refusedNow {
		for _, c := range sc.changes {
			egress := c.Direction == rules.Egress
			for _, k := range c.Deletes {
				b.Deletes = append(b.Deletes, key(c.Endpoint, egress, k))
			}
		}
		if s.cfg.Resolved != nil {
			// Keys the diff adds were never written; deleting them is a no-op.
			ep, _ := s.cfg.Resolved.Endpoint(policy.ID(sc.id))
			for dir, dp := range ep {
				for k := range dp.Entries {
					b.Deletes = append(b.Deletes, key(policy.ID(sc.id), dir == int(rules.Egress), k))
				}
			}
		}
	}
	b.Modes = append(b.Modes, datapath.PolicyMode{Subject: sc.id,
		Ingress: m[rules.Ingress] || need[rules.Ingress] > 0, Egress: m[rules.Egress] || need[rules.Egress] > 0})
	if refusedNow {
		s.log().Warn("policy of a local identity refused: the policy map is full; its pods are in default deny",
			"identity", sc.id, "keys", need[0]+need[1], "used", s.used, "capacity", s.cfg.Capacity)
	}
}

// readmit programs the refused subjects that fit now, lowest identity
// first; the caller holds mu.
func (s *Syncer) readmit() error {
	if len(s.refused) == 0 || s.cfg.Resolved == nil {
		return nil
	}
	var b datapath.PolicyBatch
	var admitted []uint32
	for _, id := range slices.Sorted(maps.Keys(s.refused)) {
		need := s.need[id]
		n := need[0] + need[1]
		if s.used+n > s.cfg.Capacity {
			continue
		}
		ep, _ := s.cfg.Resolved.Endpoint(policy.ID(id))
		for dir, dp := range ep {
			for k, e := range dp.Entries {
				b.Upserts = append(b.Upserts, datapath.PolicyEntry{Key: key(policy.ID(id), dir == int(rules.Egress), k), Deny: e.Deny, Rule: s.id(e.Rule)})
			}
		}
		m := s.modes[id]
		b.Modes = append(b.Modes, datapath.PolicyMode{Subject: id, Ingress: m[rules.Ingress], Egress: m[rules.Egress]})
		s.used += n
		admitted = append(admitted, id)
	}
	if len(admitted) == 0 {
		return nil
	}
	slices.SortFunc(b.Upserts, func(x, y datapath.PolicyEntry) int { return comparePolicyKeys(x.Key, y.Key) })
	for _, id := range admitted {
		delete(s.refused, id)
	}
	if err := s.w.Apply(b); err != nil {
		return fmt.Errorf("apply readmitted policy: %w", err)
	}
	s.log().Info("policy of refused local identities programmed: the policy map has room again", "identities", admitted)
	return nil
}

func (s *Syncer) log() *slog.Logger {
	if s.cfg.Log == nil {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return s.cfg.Log
}

// RefusedSubject is a local identity whose policy does not fit the map.
type RefusedSubject struct {
	Subject uint32
	// Keys is how many map keys its policy needs.
	Keys int
}

// MapUse is the policy map's use.
type MapUse struct {
	Capacity int // 0: unbounded
	// Used counts the map keys of the programmed subjects (an upper bound).
	Used int
	// Refusals counts the times a subject was refused.
	Refusals uint64
	Refused  []RefusedSubject // by identity
}

// MapUse returns the policy map's use and the refused subjects.
func (s *Syncer) MapUse() MapUse {
	s.mu.Lock()
	defer s.mu.Unlock()
	u := MapUse{Capacity: s.cfg.Capacity, Used: s.used, Refusals: s.refusals}
	for _, id := range slices.Sorted(maps.Keys(s.refused)) {
		n := s.need[id]
		u.Refused = append(u.Refused, RefusedSubject{Subject: id, Keys: n[0] + n[1]})
	}
	return u
}

func (s *Syncer) registerMapUse(reg prometheus.Registerer) {
	read := func(f func(MapUse) float64) func() float64 { return func() float64 { return f(s.MapUse()) } }
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustermesh_agent_policy_map_keys",
			Help: "Policy map keys of the programmed local identities (an upper bound)."},
			read(func(u MapUse) float64 { return float64(u.Used) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustermesh_agent_policy_map_capacity",
			Help: "Capacity of the policy map in keys (--bpf-policy-entries); 0: unbounded."},
			read(func(u MapUse) float64 { return float64(u.Capacity) })),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "clustermesh_agent_policy_identities_refused",
			Help: "Local identities whose policy does not fit the policy map: in default deny in each direction with policy."},
			read(func(u MapUse) float64 { return float64(len(u.Refused)) })),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "clustermesh_agent_policy_identity_refusals_total",
			Help: "Times a local identity's policy was refused because the policy map was full."},
			read(func(u MapUse) float64 { return float64(u.Refusals) })),
	)
}
