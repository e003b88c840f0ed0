package selector

import (
	"errors"
	"slices"
	"testing"
)

// threeClusters is a fixture of identities in clusters c1, c2, c3 plus the
// reserved identities.
func threeClusters() map[ID]Labels {
	ids := Reserved()
	add := func(id ID, ls ...string) { ids[id] = MustParseLabels(ls...) }
	add(100, "k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1", "k8s:io.cilium.k8s.namespace.labels.team=a")
	add(101, "k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1", "k8s:io.cilium.k8s.namespace.labels.team=a")
	add(200, "k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c2", "k8s:io.cilium.k8s.namespace.labels.team=a")
	add(201, "k8s:app=other", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c2", "k8s:io.cilium.k8s.namespace.labels.team=a")
	add(202, "k8s:app=client", "k8s:tier=gold", "k8s:io.kubernetes.pod.namespace=ops", "k8s:io.cilium.k8s.policy.cluster=c2", "k8s:io.cilium.k8s.namespace.labels.team=b")
	add(300, "k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c3", "k8s:io.cilium.k8s.namespace.labels.team=a")
	add(301, "container:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c3")
	return ids
}

func selected(s Selector, ids map[ID]Labels) []ID {
	var out []ID
	for id, l := range ids {
		if s.Matches(l) {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func TestSelectorIdentitySets(t *testing.T) {
	ids := threeClusters()
	all := selected(Selector{}, ids)
	cases := []struct {
		name   string
		labels map[string]string
		exprs  []Expression
		want   []ID
	}{
		{name: "empty selects everything", want: all},
		{name: "app=client in every cluster and source", labels: map[string]string{"app": "client"}, want: []ID{101, 200, 202, 300, 301}},
		{name: "k8s source excludes container source", labels: map[string]string{"k8s:app": "client"}, want: []ID{101, 200, 202, 300}},
		{name: "any source prefix", labels: map[string]string{"any:app": "client"}, want: []ID{101, 200, 202, 300, 301}},
		{name: "cluster label", labels: map[string]string{"app": "client", "io.cilium.k8s.policy.cluster": "c2"}, want: []ID{200, 202}},
		{name: "cluster label with k8s prefix", labels: map[string]string{"k8s:io.cilium.k8s.policy.cluster": "c3"}, want: []ID{300, 301}},
		{name: "namespace", labels: map[string]string{"io.kubernetes.pod.namespace": "ops"}, want: []ID{202}},
		{name: "namespace labels", labels: map[string]string{"io.cilium.k8s.namespace.labels.team": "a", "app": "client"}, want: []ID{101, 200, 300}},
		{name: "In", exprs: []Expression{{Key: "io.cilium.k8s.policy.cluster", Operator: OpIn, Values: []string{"c1", "c3"}}}, want: []ID{100, 101, 300, 301}},
		{name: "NotIn includes identities without the key", exprs: []Expression{{Key: "app", Operator: OpNotIn, Values: []string{"client", "web"}}}, want: []ID{1, 2, 3, 4, 5, 6, 7, 201}},
		{name: "Exists", exprs: []Expression{{Key: "tier", Operator: OpExists}}, want: []ID{202}},
		{name: "DoesNotExist", exprs: []Expression{{Key: "io.cilium.k8s.policy.cluster", Operator: OpDoesNotExist}}, want: []ID{1, 2, 3, 4, 5, 6, 7}},
		{name: "reserved source", labels: map[string]string{"reserved:world": ""}, want: []ID{IDWorld}},
		{name: "matchLabels and expressions AND", labels: map[string]string{"app": "client"}, exprs: []Expression{{Key: "k8s:io.cilium.k8s.policy.cluster", Operator: OpNotIn, Values: []string{"c1"}}}, want: []ID{200, 202, 300, 301}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := New(tc.labels, tc.exprs)
			if err != nil {
				t.Fatal(err)
			}
			if got := selected(s, ids); !slices.Equal(got, tc.want) {
				t.Errorf("%s selects %v, want %v", s, got, tc.want)
			}
		})
	}
}

func TestSelectorInvalid(t *testing.T) {
	cases := []struct {
		name  string
		exprs []Expression
	}{
		{name: "In without values", exprs: []Expression{{Key: "a", Operator: OpIn}}},
		{name: "NotIn without values", exprs: []Expression{{Key: "a", Operator: OpNotIn}}},
		{name: "Exists with values", exprs: []Expression{{Key: "a", Operator: OpExists, Values: []string{"x"}}}},
		{name: "DoesNotExist with values", exprs: []Expression{{Key: "a", Operator: OpDoesNotExist, Values: []string{"x"}}}},
		{name: "unknown operator", exprs: []Expression{{Key: "a", Operator: "Gt", Values: []string{"1"}}}},
		{name: "empty key", exprs: []Expression{{Key: "k8s:", Operator: OpExists}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(nil, tc.exprs); !errors.Is(err, ErrInvalidLabel) {
				t.Fatalf("err = %v, want ErrInvalidLabel", err)
			}
		})
	}
}

func TestSelectorStringIsCanonical(t *testing.T) {
	a := MustNew(map[string]string{"b": "2", "a": "1"}, Expression{Key: "c", Operator: OpIn, Values: []string{"y", "x", "x"}})
	b := MustNew(map[string]string{"a": "1", "b": "2"}, Expression{Key: "c", Operator: OpIn, Values: []string{"x", "y"}})
	if a.String() != b.String() {
		t.Fatalf("%s != %s", a, b)
	}
	if a.String() == MustNew(map[string]string{"k8s:a": "1", "b": "2"}).String() {
		t.Fatal("source must be part of the canonical form")
	}
}

func TestEntities(t *testing.T) {
	ids := threeClusters()
	cases := []struct {
		entity string
		want   []ID
	}{
		{EntityAll, selected(Selector{}, ids)},
		{EntityWorld, []ID{IDWorld}},
		{EntityHost, []ID{IDHost}},
		{EntityRemoteNode, []ID{IDRemoteNode}},
		{EntityCluster, []ID{1, 3, 4, 5, 6, 7, 100, 101}},
		{EntityKubeAPIServer, []ID{IDKubeAPIServer}},
		{EntityNone, nil},
	}
	for _, tc := range cases {
		t.Run(tc.entity, func(t *testing.T) {
			sels, err := EntitySelectors(tc.entity, "c1")
			if err != nil {
				t.Fatal(err)
			}
			var got []ID
			for id, l := range ids {
				if slices.ContainsFunc(sels, func(s Selector) bool { return s.Matches(l) }) {
					got = append(got, id)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("entity %s selects %v, want %v", tc.entity, got, tc.want)
			}
		})
	}
	if _, err := EntitySelectors("galaxy", "c1"); !errors.Is(err, ErrUnknownEntity) {
		t.Fatalf("err = %v, want ErrUnknownEntity", err)
	}
}
