package policysync

import (
	"fmt"
	"maps"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/datapath"
)

// boundedRecorder is a recorder with the kernel's limit: a batch whose
// upserts (written before its deletes, as the bpf PolicyWriter does) take
// the map keys over capacity fails there, half-applied.
type boundedRecorder struct {
	recorder
	capacity int
	overflow int // batches that hit the limit
}

func (r *boundedRecorder) mapKeys() int {
	n := 0
	for k := range r.entries {
		n += k.MapKeys()
	}
	return n
}

func (r *boundedRecorder) Apply(b datapath.PolicyBatch) error {
	for _, e := range b.Upserts {
		_, had := r.entries[e.Key]
		r.entries[e.Key] = e
		if !had && r.mapKeys() > r.capacity {
			delete(r.entries, e.Key)
			r.overflow++
			return fmt.Errorf("update policy key: map full")
		}
	}
	b.Upserts = nil
	return r.recorder.Apply(b)
}

const (
	api1 policy.ID = 1<<16 | 258
	cl2a policy.ID = 2<<16 | 300 + iota
	cl2b
	cl2c
	cl2d
)

// TestSyncerCapacity runs the syncer against a map of 10 keys: a subject
// whose policy does not fit is refused whole (no key of it programmed, in
// default deny where it has policy), counted and listed, never half-applied
// and never wider than its policy; it is programmed again once it fits.
func TestSyncerCapacity(t *testing.T) {
	e := policy.New(policy.Config{ClusterName: "c1"})
	rec := &boundedRecorder{recorder: recorder{entries: map[datapath.PolicyKey]datapath.PolicyEntry{}, modes: map[uint32]datapath.PolicyMode{}}, capacity: 10}
	reg := prometheus.NewRegistry()
	s := New(Config{Capacity: 10, Resolved: e}, rec, reg)
	apply := func(t *testing.T, d policy.Diff) {
		t.Helper()
		if err := s.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []policy.Identity{ident(web1, "c1", "web"), ident(api1, "c1", "api"),
		ident(cl2a, "c2", "client"), ident(cl2b, "c2", "client"), ident(cl2c, "c2", "client"), ident(cl2d, "c2", "client")} {
		apply(t, e.UpsertIdentity(id))
	}
	apply(t, e.UpsertIdentity(policy.Identity{ID: 2, Labels: selector.Reserved()[2]})) // world
	webPolicy := `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}`
	// 81-82 is two port prefixes: two map keys per client.
	apiPolicy := func(lo int) string {
		return fmt.Sprintf(`{"endpointSelector":{"matchLabels":{"app":"api"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"%d","endPort":%d,"protocol":"TCP"}]}]}],"egressDeny":[{"toEntities":["world"]}]}`, lo, lo+1)
	}
	steps := []struct {
		name    string
		do      func(t *testing.T) policy.Diff
		refused []RefusedSubject
		used    int
	}{
		{"web: 4 clients on one port", func(t *testing.T) policy.Diff { return e.UpsertPolicy(decode(t, "web", webPolicy)) }, nil, 4},
		{"api needs 8+1 more: refused", func(t *testing.T) policy.Diff { return e.UpsertPolicy(decode(t, "api", apiPolicy(81))) },
			[]RefusedSubject{{Subject: uint32(api1), Keys: 9}}, 4},
		{"a client gone: api fits", func(t *testing.T) policy.Diff { return e.DeleteIdentity(cl2d) }, nil, 3 + 7},
		{"the client back: web first, api refused again", func(t *testing.T) policy.Diff { return e.UpsertIdentity(ident(cl2d, "c2", "client")) },
			[]RefusedSubject{{Subject: uint32(api1), Keys: 9}}, 4},
		{"web's policy gone: api programmed", func(t *testing.T) policy.Diff { return e.DeletePolicy("cnp/shop/web") }, nil, 9},
		{"api's ports moved: fits after, not during the change; refused and programmed again in one apply",
			func(t *testing.T) policy.Diff { return e.UpsertPolicy(decode(t, "api", apiPolicy(83))) }, nil, 9},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			apply(t, st.do(t))
			u := s.MapUse()
			if !slices.Equal(u.Refused, st.refused) || u.Used != st.used || u.Capacity != 10 {
				t.Errorf("map use = %+v, want used %d, refused %v", u, st.used, st.refused)
			}
			if rec.overflow > 0 {
				t.Fatalf("%d batches overflowed the map", rec.overflow)
			}
			if n := rec.mapKeys(); n != u.Used {
				t.Errorf("%d map keys programmed, syncer counts %d", n, u.Used)
			}
			checkWithRefused(t, s, rec, e, st.refused)
		})
	}
	if got := refusalsMetric(t, reg); got != 3 {
		t.Errorf("refusals counted %v, want 3", got)
	}
}

// refusalsMetric reads clustermesh_agent_policy_identity_refusals_total.
func refusalsMetric(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "clustermesh_agent_policy_identity_refusals_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("refusal counter not registered")
	return 0
}

// checkWithRefused checks the programmed state against the engine: every
// subject but the refused ones as resolved; a refused one without any key
// and in default deny in each direction its policy touches.
func checkWithRefused(t *testing.T, s *Syncer, rec *boundedRecorder, e *policy.Engine, refused []RefusedSubject) {
	t.Helper()
	snap := e.Snapshot()
	closed := map[uint32]datapath.PolicyMode{}
	for _, r := range refused {
		ep := snap[policy.ID(r.Subject)]
		closed[r.Subject] = datapath.PolicyMode{Subject: r.Subject,
			Ingress: ep[rules.Ingress].Enforced || len(ep[rules.Ingress].Entries) > 0,
			Egress:  ep[rules.Egress].Enforced || len(ep[rules.Egress].Entries) > 0}
		delete(snap, policy.ID(r.Subject))
	}
	refs, deny, modes := model(snap)
	maps.Copy(modes, closed)
	if !maps.Equal(rec.modes, modes) {
		t.Errorf("modes = %v, want %v", rec.modes, modes)
	}
	if len(rec.entries) != len(refs) {
		t.Errorf("%d entries programmed, want %d", len(rec.entries), len(refs))
	}
	for pk, ref := range refs {
		got, ok := rec.entries[pk]
		gotRef, known := s.Rule(got.Rule)
		if !ok || !known || gotRef != ref || got.Deny != deny[pk] {
			t.Errorf("key %+v: programmed %+v (rule %v), want deny=%v rule %v", pk, got, gotRef, deny[pk], ref)
		}
	}
}
