package policy

import (
	"maps"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func http(port uint16) []NamedPort {
	return []NamedPort{{Name: "http", Port: port, Proto: ipproto.TCP}}
}

// TestNamedPortsResolvePerIdentity checks that a name resolves for an
// identity only when all its endpoints agree, for ingress (the subject's
// own endpoints) and egress (the peer's), and never to a union.
func TestNamedPortsResolvePerIdentity(t *testing.T) {
	namedIn := cnp("named-in", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPorts":[{"ports":[{"port":"http","protocol":"TCP"}]}]}]}`)
	namedOut := cnp("named-out", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEndpoints":[{"matchLabels":{"app":"web"}}],"toPorts":[{"ports":[{"port":"http"}]}]}]}`)
	udpOnly := cnp("named-udp", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPorts":[{"ports":[{"port":"http","protocol":"UDP"}]}]}]}`)
	cases := []struct {
		name      string
		policy    string
		endpoints []EndpointPorts // besides the fixture's
		flows     []flow
		conflicts map[ID][]string
	}{
		{name: "ingress: every endpoint of the subject agrees", policy: namedIn,
			endpoints: []EndpointPorts{{ID: web1, Ports: http(8080)}},
			flows: []flow{
				{name: "8080", src: client2, dst: web1, port: 8080, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-in ingress[0]"},
				{name: "9090", src: client2, dst: web1, port: 9090, proto: ipproto.TCP},
			}},
		{name: "ingress: endpoints disagree, nothing resolves", policy: namedIn,
			endpoints: []EndpointPorts{{ID: web1, Ports: http(8081)}},
			flows: []flow{
				{name: "8080", src: client2, dst: web1, port: 8080, proto: ipproto.TCP},
				{name: "8081", src: client2, dst: web1, port: 8081, proto: ipproto.TCP},
			},
			conflicts: map[ID][]string{web1: {"http: 8080/TCP on 1 of 2 endpoints, 8081/TCP on 1 of 2 endpoints"}}},
		{name: "ingress: an endpoint without the name, nothing resolves", policy: namedIn,
			endpoints: []EndpointPorts{{ID: web1}},
			flows:     []flow{{name: "8080", src: client2, dst: web1, port: 8080, proto: ipproto.TCP}},
			conflicts: map[ID][]string{web1: {"http: 8080/TCP on 1 of 2 endpoints"}}},
		{name: "ingress: protocol of the rule must match the port's", policy: udpOnly,
			flows: []flow{
				{name: "8080/TCP", src: client2, dst: web1, port: 8080, proto: ipproto.TCP},
				{name: "8080/UDP", src: client2, dst: web1, port: 8080, proto: ipproto.UDP},
			}},
		{name: "egress: the peer's own port", policy: namedOut,
			flows: []flow{
				{name: "c1 web 8080", src: client1, dst: web1, port: 8080, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-out egress[0]"},
				{name: "c1 web 9090 is c3's http", src: client1, dst: web1, port: 9090, proto: ipproto.TCP},
			}},
		{name: "egress: a peer whose endpoints disagree gets no key", policy: namedOut,
			endpoints: []EndpointPorts{{ID: web1, Ports: http(9090)}},
			flows: []flow{
				{name: "8080", src: client1, dst: web1, port: 8080, proto: ipproto.TCP},
				{name: "9090", src: client1, dst: web1, port: 9090, proto: ipproto.TCP},
			},
			conflicts: map[ID][]string{web1: {"http: 8080/TCP on 1 of 2 endpoints, 9090/TCP on 1 of 2 endpoints"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, false, tc.policy)
			for _, ep := range tc.endpoints {
				e.UpdateEndpointPorts(EndpointPorts{}, ep)
			}
			for _, f := range tc.flows {
				res := e.Trace(Flow{Src: f.src, Dst: f.dst, Port: f.port, Proto: f.proto})
				rule := ""
				if refs := res.DecidedBy(); len(refs) > 0 {
					rule = refs[0].String()
				}
				if res.Allowed != f.allowed || rule != f.rule {
					t.Errorf("%s: allowed %v by %q, want %v by %q", f.name, res.Allowed, rule, f.allowed, f.rule)
				}
			}
			got := e.NamedPortConflicts()
			if !maps.EqualFunc(got, tc.conflicts, slices.Equal) && (len(got) != 0 || len(tc.conflicts) != 0) {
				t.Errorf("conflicts %v, want %v", got, tc.conflicts)
			}
		})
	}
}

// TestNamedPortUpdates checks the diffs when endpoints come and go: an
// identity's name resolves once its endpoints agree and is withdrawn when
// a disagreeing endpoint appears.
func TestNamedPortUpdates(t *testing.T) {
	e := New(Config{ClusterName: "c1"})
	for _, id := range fixture() {
		e.UpsertIdentity(id)
	}
	pol, err := rules.Decode([]byte(cnp("named-in", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPorts":[{"ports":[{"port":"http"}]}]}]}`)), rules.Options{ClusterName: "c1"})
	if err != nil {
		t.Fatal(err)
	}
	state := map[ID]EndpointPolicy{}
	Apply(state, e.UpsertPolicy(pol))
	key := Key{Proto: ipproto.TCP, Port: 8080, EndPort: 8080}
	has := func() bool { _, ok := state[web1][rules.Ingress].Entries[key]; return ok }
	if has() {
		t.Fatal("a key before any endpoint declared the name")
	}
	a := EndpointPorts{ID: web1, Ports: http(8080)}
	b := EndpointPorts{ID: web1, Ports: http(8081)}
	bare := EndpointPorts{ID: web1}
	steps := []struct {
		name     string
		old, cur EndpointPorts
		want     bool
	}{
		{name: "an endpoint without named ports", cur: bare, want: false},
		{name: "first endpoint naming the port: the bare one disagrees", cur: a, want: false},
		{name: "the bare endpoint leaves", old: bare, want: true},
		{name: "second endpoint agrees", cur: a, want: true},
		{name: "second endpoint changes its port", old: a, cur: b, want: false},
		{name: "the disagreeing endpoint leaves", old: b, want: true},
		{name: "the endpoint drops its ports", old: a, cur: bare, want: false},
		{name: "and names them again", old: bare, cur: a, want: true},
		{name: "the endpoint moves to another identity", old: a, cur: EndpointPorts{ID: client1, Ports: http(8080)}, want: false},
	}
	for _, s := range steps {
		Apply(state, e.UpdateEndpointPorts(s.old, s.cur))
		if has() != s.want {
			t.Fatalf("%s: key present %v, want %v (state %v)", s.name, has(), s.want, state[web1][rules.Ingress].Entries)
		}
		if !equalStates(state, e.Snapshot()) {
			t.Fatalf("%s: diffs disagree with the resolved state", s.name)
		}
	}
}

// TestNamedPortWildcardAndSelector checks that a peer's named-port key
// wanted by both a rule for every peer and a selector rule stays when the
// selector stops selecting the peer.
func TestNamedPortWildcardAndSelector(t *testing.T) {
	e := newEngine(t, false,
		cnp("any", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toPorts":[{"ports":[{"port":"http"}]}]}]}`),
		cnp("web", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEndpoints":[{"matchLabels":{"app":"web"}}],"toPorts":[{"ports":[{"port":"http"}]}]}]}`))
	state := e.Snapshot()
	key := Key{Peer: Peer{ID: web3}, Proto: ipproto.TCP, Port: 9090, EndPort: 9090}
	if _, ok := state[client1][rules.Egress].Entries[key]; !ok {
		t.Fatalf("no key %+v", key)
	}
	relabelled := pod(web3, "c3", "shop", "db")
	Apply(state, e.UpsertIdentity(relabelled))
	if !equalStates(state, e.Snapshot()) {
		t.Fatal("diffs disagree with the resolved state")
	}
	if ent, ok := state[client1][rules.Egress].Entries[key]; !ok || ent.Rule.Policy != "cnp/shop/any" {
		t.Fatalf("key %+v = %+v, %v; want it kept by cnp/shop/any", key, ent, ok)
	}
}
