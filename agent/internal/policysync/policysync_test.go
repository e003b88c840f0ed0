package policysync

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/clustermesh/clustermesh/agent/internal/policy"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// recorder folds batches as the bpf PolicyWriter programs them.
type recorder struct {
	entries map[datapath.PolicyKey]datapath.PolicyEntry
	modes   map[uint32]datapath.PolicyMode
}

func (r *recorder) Apply(b datapath.PolicyBatch) error {
	for _, e := range b.Upserts {
		r.entries[e.Key] = e
	}
	for _, m := range b.Modes {
		if m.Ingress || m.Egress {
			r.modes[m.Subject] = m
		} else {
			delete(r.modes, m.Subject)
		}
	}
	for _, k := range b.Deletes {
		delete(r.entries, k)
	}
	return nil
}

const (
	web1    policy.ID = 1<<16 | 256
	client1 policy.ID = 1<<16 | 257
	client2 policy.ID = 2<<16 | 256
	client3 policy.ID = 3<<16 | 256
)

func ident(id policy.ID, cluster, app string) policy.Identity {
	return policy.Identity{ID: id, Labels: selector.MustParseLabels("k8s:app="+app,
		"k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster="+cluster)}
}

func decode(t *testing.T, name, spec string) rules.Policy {
	t.Helper()
	p, err := rules.Decode([]byte(fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":%q,"namespace":"shop"},"spec":%s}`, name, spec)),
		rules.Options{ClusterName: "c1", DefaultLocalCluster: true})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// model converts the engine's whole resolved state from scratch, as the
// datapath should hold it: one datapath key per resolved key.
func model(snap map[policy.ID]policy.EndpointPolicy) (map[datapath.PolicyKey]rules.Ref, map[datapath.PolicyKey]bool, map[uint32]datapath.PolicyMode) {
	refs := map[datapath.PolicyKey]rules.Ref{}
	deny := map[datapath.PolicyKey]bool{}
	modes := map[uint32]datapath.PolicyMode{}
	for id, ep := range snap {
		if ep[rules.Ingress].Enforced || ep[rules.Egress].Enforced {
			modes[uint32(id)] = datapath.PolicyMode{Subject: uint32(id), Ingress: ep[rules.Ingress].Enforced, Egress: ep[rules.Egress].Enforced}
		}
		for dir, dp := range ep {
			for k, e := range dp.Entries {
				pk := datapath.PolicyKey{Subject: uint32(id), Egress: dir == int(rules.Egress), Peer: uint32(k.Peer.ID),
					Proto: ipproto.Proto(k.Proto), Port: k.Port, EndPort: k.EndPort}
				if pk.Port != 0 && pk.EndPort == 0 {
					pk.EndPort = pk.Port
				}
				if _, dup := refs[pk]; dup {
					panic(fmt.Sprintf("two resolved keys map to %+v", pk))
				}
				refs[pk], deny[pk] = e.Rule, e.Deny
			}
		}
	}
	return refs, deny, modes
}

func check(t *testing.T, s *Syncer, rec *recorder, e *policy.Engine) {
	t.Helper()
	refs, deny, modes := model(e.Snapshot())
	if !maps.Equal(rec.modes, modes) {
		t.Errorf("modes = %v, want %v", rec.modes, modes)
	}
	if len(rec.entries) != len(refs) {
		t.Errorf("%d entries programmed, want %d:\n got %v\nwant %v", len(rec.entries), len(refs), rec.entries, refs)
	}
	for pk, ref := range refs {
		got, ok := rec.entries[pk]
		gotRef, known := s.Rule(got.Rule)
		if !ok || !known || gotRef != ref || got.Deny != deny[pk] {
			t.Errorf("key %+v: programmed %+v (rule %v), want deny=%v rule %v", pk, got, gotRef, deny[pk], ref)
		}
	}
}

// TestSyncerFollowsEngine applies the engine's diffs step by step and checks
// after each that the programmed state equals a from-scratch conversion of
// the engine's resolved state.
func TestSyncerFollowsEngine(t *testing.T) {
	e := policy.New(policy.Config{ClusterName: "c1"})
	rec := &recorder{entries: map[datapath.PolicyKey]datapath.PolicyEntry{}, modes: map[uint32]datapath.PolicyMode{}}
	reg := prometheus.NewRegistry()
	s := New(Config{}, rec, reg)
	apply := func(d policy.Diff) {
		t.Helper()
		if err := s.Apply(d); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []policy.Identity{ident(web1, "c1", "web"), ident(client1, "c1", "client"), ident(client2, "c2", "client"), ident(client3, "c3", "client")} {
		apply(e.UpsertIdentity(id))
	}
	for id, l := range selector.Reserved() {
		apply(e.UpsertIdentity(policy.Identity{ID: id, Labels: l}))
	}
	steps := []struct {
		name string
		do   func() policy.Diff
	}{
		{"allow c2 clients on TCP 80", func() policy.Diff {
			return e.UpsertPolicy(decode(t, "web", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"},{"port":"8000","endPort":8010,"protocol":"ANY"}]}]}]}`))
		}},
		{"world deny and allow", func() policy.Diff {
			return e.UpsertPolicy(decode(t, "world", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingressDeny":[{"fromCIDR":["0.0.0.0/0","::/0"],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}],"ingress":[{"fromEntities":["world"]}],"egress":[{"toEntities":["all"]}]}`))
		}},
		{"c2 client relabelled", func() policy.Diff { return e.UpsertIdentity(ident(client2, "c2", "other")) }},
		{"c2 client back", func() policy.Diff { return e.UpsertIdentity(ident(client2, "c2", "client")) }},
		{"world policy removed", func() policy.Diff { return e.DeletePolicy("cnp/shop/world") }},
		{"web gone", func() policy.Diff { return e.DeleteIdentity(web1) }},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			apply(st.do())
			check(t, s, rec, e)
		})
	}
	if len(rec.entries) != 0 || len(rec.modes) != 0 {
		t.Errorf("left programmed: %v %v", rec.entries, rec.modes)
	}

	t.Run("unknown identity mode", func(t *testing.T) {
		if err := s.SetAnyPolicy(true); err != nil {
			t.Fatal(err)
		}
		if m := rec.modes[0]; !m.Ingress || !m.Egress {
			t.Errorf("unknown identity mode with a policy: %+v, want default deny both ways", m)
		}
		if err := s.SetAnyPolicy(false); err != nil {
			t.Fatal(err)
		}
		if _, ok := rec.modes[0]; ok {
			t.Errorf("unknown identity still in default deny without policies")
		}
	})

	t.Run("drops counted by policy, direction, source cluster", func(t *testing.T) {
		denyID := s.id(rules.Ref{Policy: "cnp/shop/deny", Direction: rules.Ingress, Deny: true})
		for _, d := range []datapath.Drop{
			{Reason: datapath.DropPolicyDeny, Rule: denyID, SrcCluster: 2},
			{Reason: datapath.DropPolicyDeny, Rule: denyID, SrcCluster: 2},
			{Reason: datapath.DropPolicyDefault, SrcCluster: 3},
			{Reason: datapath.DropPolicyDefault, SrcCluster: 1, Egress: true},
			{Reason: datapath.DropPolicyDeny, Rule: 9999, SrcCluster: 2}, // unknown id: default bucket
		} {
			s.HandleDrop(d)
		}
		want := map[DropKey]uint64{
			{Policy: "cnp/shop/deny", SrcCluster: 2}:           2,
			{Policy: DefaultDeny, SrcCluster: 3}:               1,
			{Policy: DefaultDeny, SrcCluster: 1, Egress: true}: 1,
			{Policy: DefaultDeny, SrcCluster: 2}:               1,
		}
		if got := s.Drops(); !maps.Equal(got, want) {
			t.Errorf("drops = %v, want %v", got, want)
		}
		var m dto.Metric
		if err := s.dropVec.WithLabelValues("cnp/shop/deny", "ingress", "2").Write(&m); err != nil || m.GetCounter().GetValue() != 2 {
			t.Errorf("metric for cnp/shop/deny = %v (%v), want 2", m.GetCounter().GetValue(), err)
		}
	})
}

// nodeRecorder records trusted nodes as the datapath holds them, and the
// batches; with fail set, Apply fails.
type nodeRecorder struct {
	nodes   map[netip.Addr]datapath.TrustedNode
	batches int
	fail    bool
}

func (r *nodeRecorder) Apply(b datapath.PolicyBatch) error {
	if r.fail {
		return errors.New("map full")
	}
	r.batches++
	for _, n := range b.UpsertNodes {
		r.nodes[n.IP] = n
	}
	for _, ip := range b.DeleteNodes {
		delete(r.nodes, ip)
	}
	return nil
}

func TestNodeTrust(t *testing.T) {
	rec := &nodeRecorder{nodes: map[netip.Addr]datapath.TrustedNode{}}
	n := NewNodeTrust(rec, 255)
	a := netip.MustParseAddr("192.168.2.1")
	steps := []struct {
		name    string
		cluster uint32
		delta   int
		want    *datapath.TrustedNode
	}{
		{"named by a tunnel of c2", 2, 1, &datapath.TrustedNode{IP: a, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}},
		{"and an ipcache entry", 2, 1, &datapath.TrustedNode{IP: a, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}},
		{"claimed by c3 too: trusted by neither", 3, 1, nil},
		{"c2 lets go of one", 2, -1, nil},
		{"c2 lets go of the other: c3 alone", 2, -1, &datapath.TrustedNode{IP: a, ClusterID: 3, IdentityLo: 3 << 16, IdentityHi: 4 << 16}},
		{"c2 again: neither", 2, 1, nil},
		{"c3 lets go", 3, -1, &datapath.TrustedNode{IP: a, ClusterID: 2, IdentityLo: 2 << 16, IdentityHi: 3 << 16}},
		{"none left", 2, -1, nil},
	}
	for _, st := range steps {
		n.Ref(a, st.cluster, st.delta)
		if err := n.Flush(); err != nil {
			t.Fatal(err)
		}
		got, ok := rec.nodes[a]
		if (st.want == nil) == ok || (ok && got != *st.want) {
			t.Errorf("%s: programmed %+v (%v), want %+v", st.name, got, ok, st.want)
		}
	}
	if len(n.index4)+len(n.index6) != 0 || len(n.refs) != 0 {
		t.Errorf("kept %d nodes with no references", len(n.refs))
	}
}

// Ref only counts: one Flush writes every changed node in one batch, none
// when nothing changed, and after a failed write the next Flush writes.
func TestNodeTrustFlushBatches(t *testing.T) {
	rec := &nodeRecorder{nodes: map[netip.Addr]datapath.TrustedNode{}}
	n := NewNodeTrust(rec, 255)
	ips := []netip.Addr{netip.MustParseAddr("192.168.2.1"), netip.MustParseAddr("192.168.2.2"), netip.MustParseAddr("fd00::3")}
	for _, ip := range ips {
		for range 10 { // ten ipcache entries per node
			n.Ref(ip, 2, 1)
		}
	}
	if len(rec.nodes) != 0 {
		t.Fatalf("written before Flush: %v", rec.nodes)
	}
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.batches != 1 || len(rec.nodes) != len(ips) {
		t.Fatalf("after Flush: %d batches, %d nodes; want 1 batch, %d nodes", rec.batches, len(rec.nodes), len(ips))
	}
	n.Ref(ips[0], 2, 1)
	n.Ref(ips[0], 2, -1)
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.batches != 1 {
		t.Errorf("a change that leaves the owner wrote %d more batches", rec.batches-1)
	}
	for range 10 {
		n.Ref(ips[1], 2, -1)
	}
	rec.fail = true
	if err := n.Flush(); err == nil {
		t.Fatal("Flush with a failing writer returned no error")
	}
	rec.fail = false
	if err := n.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, ok := rec.nodes[ips[1]]; ok || len(rec.nodes) != 2 {
		t.Errorf("after the retry: %v, want %v untrusted", rec.nodes, ips[1])
	}
	if got := n.Trusted(); len(got) != 2 || got[ips[0]] != 2 || got[ips[2]] != 2 {
		t.Errorf("Trusted() = %v", got)
	}
}
