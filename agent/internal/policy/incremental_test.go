package policy

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// gen makes random identities and policies from small pools so that
// selectors overlap often.
type gen struct{ r *rand.Rand }

func (g gen) pick(xs ...string) string { return xs[g.r.IntN(len(xs))] }

func (g gen) identity(id ID) Identity {
	if g.r.IntN(4) == 0 { // a CIDR identity
		return Identity{ID: id, Labels: selector.CIDRLabels(netip.MustParsePrefix(g.pick("10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "2001:db8::/32")))}
	}
	ls := []string{
		"k8s:app=" + g.pick("web", "client", "other"),
		"k8s:io.kubernetes.pod.namespace=" + g.pick("shop", "dev"),
		"k8s:io.cilium.k8s.policy.cluster=" + g.pick("c1", "c1", "c2", "c3"),
	}
	if g.r.IntN(2) == 0 {
		ls = append(ls, "k8s:tier="+g.pick("gold", "silver"))
	}
	return Identity{ID: id, Labels: selector.MustParseLabels(ls...)}
}

// endpoint makes the ipcache entry of an endpoint of a random identity,
// with or without a named port "http" on one of a few numbers.
func (g gen) endpoint() EndpointPorts {
	ep := EndpointPorts{ID: ID(1000 + g.r.IntN(30))}
	if g.r.IntN(3) != 0 {
		ep.Ports = []NamedPort{{Name: "http", Port: uint16(8000 + g.r.IntN(2)), Proto: ipproto.TCP}}
	}
	return ep
}

func (g gen) selector() string {
	parts := []string{}
	if g.r.IntN(2) == 0 {
		parts = append(parts, fmt.Sprintf(`"matchLabels":{"app":%q}`, g.pick("web", "client", "other")))
	}
	if g.r.IntN(2) == 0 {
		op := g.pick("In", "NotIn", "Exists", "DoesNotExist")
		key := g.pick("io.cilium.k8s.policy.cluster", "tier", "k8s:app")
		vals := ""
		if op == "In" || op == "NotIn" {
			vals = fmt.Sprintf(`,"values":[%q]`, g.pick("c1", "c2", "gold", "web"))
		}
		parts = append(parts, fmt.Sprintf(`"matchExpressions":[{"key":%q,"operator":%q%s}]`, key, op, vals))
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func (g gen) rule(peerField, entField, cidrField string) string {
	var parts []string
	switch g.r.IntN(4) {
	case 0:
		parts = append(parts, fmt.Sprintf(`%q:[%s]`, peerField, g.selector()))
	case 1:
		parts = append(parts, fmt.Sprintf(`%q:[%q]`, entField, g.pick("world", "cluster", "host", "all", "remote-node")))
	case 2:
		parts = append(parts, fmt.Sprintf(`%q:[%s]`, cidrField, g.pick(`{"cidr":"0.0.0.0/0"},{"cidr":"::/0"}`,
			`{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}`, `{"cidr":"0.0.0.0/0"}`, `{"cidr":"2001:db8::/32"},{"cidr":"10.1.0.0/16"}`)))
	}
	switch g.r.IntN(4) {
	case 0:
		parts = append(parts, fmt.Sprintf(`"toPorts":[{"ports":[{"port":"%d","endPort":%d,"protocol":%q}]}]`, 80+g.r.IntN(3), 85, g.pick("TCP", "UDP", "ANY")))
	case 1:
		parts = append(parts, `"toPorts":[{"ports":[{"port":"http"}]}]`)
	}
	return "{" + strings.Join(parts, ",") + "}"
}

func (g gen) policy(name string) rules.Policy {
	var lists []string
	for _, l := range []struct{ name, peer, ent, cidr string }{
		{"ingress", "fromEndpoints", "fromEntities", "fromCIDRSet"},
		{"ingressDeny", "fromEndpoints", "fromEntities", "fromCIDRSet"},
		{"egress", "toEndpoints", "toEntities", "toCIDRSet"},
		{"egressDeny", "toEndpoints", "toEntities", "toCIDRSet"},
	} {
		if g.r.IntN(3) == 0 {
			continue
		}
		var rs []string
		for range 1 + g.r.IntN(2) {
			rs = append(rs, g.rule(l.peer, l.ent, l.cidr))
		}
		lists = append(lists, fmt.Sprintf(`%q:[%s]`, l.name, strings.Join(rs, ",")))
	}
	spec := fmt.Sprintf(`{"endpointSelector":%s%s}`, g.selector(), prefixComma(strings.Join(lists, ",")))
	kind, ns := "CiliumNetworkPolicy", `,"namespace":"shop"`
	if g.r.IntN(3) == 0 {
		kind, ns = "CiliumClusterwideNetworkPolicy", ""
	}
	obj := fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":%q,"metadata":{"name":%q%s},"spec":%s}`, kind, name, ns, spec)
	p, err := rules.Decode([]byte(obj), rules.Options{ClusterName: "c1", DefaultLocalCluster: g.r.IntN(2) == 0})
	if err != nil {
		panic(fmt.Sprintf("%s: %v", obj, err))
	}
	return p
}

func prefixComma(s string) string {
	if s == "" {
		return ""
	}
	return "," + s
}

// normalized drops endpoints with no entries and no enforcement, so that a
// state built from diffs and a resolved state compare equal.
func normalized(s map[ID]EndpointPolicy) map[ID]EndpointPolicy {
	out := map[ID]EndpointPolicy{}
	for id, ep := range s {
		keep := false
		for d := range ep {
			if ep[d].Entries == nil {
				ep[d].Entries = map[Key]Entry{}
			}
			keep = keep || ep[d].Enforced || len(ep[d].Entries) > 0
		}
		if keep {
			out[id] = ep
		}
	}
	return out
}

func equalStates(a, b map[ID]EndpointPolicy) bool {
	return maps.EqualFunc(normalized(a), normalized(b), func(x, y EndpointPolicy) bool {
		return x[0].Enforced == y[0].Enforced && x[1].Enforced == y[1].Enforced &&
			maps.Equal(x[0].Entries, y[0].Entries) && maps.Equal(x[1].Entries, y[1].Entries)
	})
}

// TestIncrementalEqualsFullRecompute applies random identity and policy
// changes; after every step the state folded from the diffs must equal the
// engine's resolved state, and at checkpoints both must equal a fresh engine
// fed the same final inputs.
func TestIncrementalEqualsFullRecompute(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3, 42, 1234} {
		t.Run(fmt.Sprint("seed ", seed), func(t *testing.T) {
			g := gen{r: rand.New(rand.NewPCG(seed, 0))}
			e := New(Config{ClusterName: "c1"})
			model := map[ID]EndpointPolicy{}
			ids := map[ID]Identity{}
			pols := map[string]rules.Policy{}
			eps := make([]EndpointPorts, 40) // endpoints by slot; zero: none
			compared := 0                    // comparisons with policies and endpoints
			for id, l := range selector.Reserved() {
				ids[id] = Identity{ID: id, Labels: l}
				Apply(model, e.UpsertIdentity(ids[id]))
			}
			for step := range 400 {
				var d Diff
				switch op := g.r.IntN(13); {
				case op >= 10: // an endpoint's named ports
					slot := g.r.IntN(40)
					cur := EndpointPorts{}
					if g.r.IntN(4) != 0 {
						cur = g.endpoint()
					}
					d = e.UpdateEndpointPorts(eps[slot], cur)
					eps[slot] = cur
				case op < 4:
					id := ID(1000 + g.r.IntN(30))
					ids[id] = g.identity(id)
					d = e.UpsertIdentity(ids[id])
				case op < 5:
					id := ID(1000 + g.r.IntN(30))
					delete(ids, id)
					d = e.DeleteIdentity(id)
				case op < 8:
					p := g.policy(fmt.Sprint("p", g.r.IntN(8)))
					pols[p.Key] = p
					d = e.UpsertPolicy(p)
				default:
					keys := slices.Sorted(maps.Keys(pols))
					if len(keys) == 0 {
						continue
					}
					k := keys[g.r.IntN(len(keys))]
					delete(pols, k)
					d = e.DeletePolicy(k)
				}
				Apply(model, d)
				if !equalStates(model, e.Snapshot()) {
					t.Fatalf("step %d: state folded from diffs differs from the resolved state", step)
				}
				if step%10 != 9 {
					continue
				}
				fresh := New(Config{ClusterName: "c1"})
				for _, i := range ids {
					fresh.UpsertIdentity(i)
				}
				for _, p := range pols {
					fresh.UpsertPolicy(p)
				}
				for _, ep := range eps {
					fresh.UpdateEndpointPorts(EndpointPorts{}, ep)
				}
				if !equalStates(fresh.Snapshot(), e.Snapshot()) {
					t.Fatalf("step %d: incremental state differs from a full recompute", step)
				}
				if len(pols) > 0 && len(e.Snapshot()) > 0 {
					compared++
				}
			}
			if compared == 0 {
				t.Fatal("generator produced nothing to compare")
			}
		})
	}
}

// TestDiffIsNarrow checks that an identity change only touches the
// endpoints whose policy refers to it.
func TestDiffIsNarrow(t *testing.T) {
	e := newEngine(t, false,
		cnp("web", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}]}]}`),
		cnp("client", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEntities":["world"]}]}`))
	newClient := pod(250, "c2", "shop", "client")
	d := e.UpsertIdentity(newClient)
	if len(d) != 1 || d[0].Endpoint != web1 || d[0].Direction != rules.Ingress || len(d[0].Deletes) != 0 {
		t.Fatalf("diff %+v, want one ingress upsert on web1", d)
	}
	want := Key{Peer: Peer{ID: 250}}
	if ent, ok := d[0].Upserts[want]; !ok || len(d[0].Upserts) != 1 || ent.Deny || ent.Rule.String() != "cnp/shop/web ingress[0]" {
		t.Fatalf("upserts %+v, want only %+v", d[0].Upserts, want)
	}
	if d := e.UpsertIdentity(newClient); d != nil {
		t.Fatalf("unchanged identity produced %+v", d)
	}
	d = e.DeleteIdentity(250)
	if len(d) != 1 || !slices.Equal(d[0].Deletes, []Key{want}) || len(d[0].Upserts) != 0 {
		t.Fatalf("delete diff %+v", d)
	}
	d = e.DeleteIdentity(web1)
	if len(d) != 2 || !d[0].Removed || !d[1].Removed {
		t.Fatalf("removing an endpoint must remove both directions: %+v", d)
	}
	if _, ok := e.Endpoint(web1); ok {
		t.Fatal("removed endpoint still resolved")
	}
}

// TestReadersGetCopies checks that callers cannot change the engine's state
// through what Endpoint and Snapshot return.
func TestReadersGetCopies(t *testing.T) {
	e := newEngine(t, true, cnp("web", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client"}}]}]}`))
	ep, ok := e.Endpoint(web1)
	if !ok || len(ep[rules.Ingress].Entries) != 1 {
		t.Fatalf("endpoint %+v", ep)
	}
	clear(ep[rules.Ingress].Entries)
	e.Snapshot()[web1][rules.Ingress].Entries[Key{Peer: Peer{ID: 4242}}] = Entry{}
	again, _ := e.Endpoint(web1)
	if len(again[rules.Ingress].Entries) != 1 {
		t.Fatalf("engine state changed through a copy: %+v", again)
	}
	if !e.Trace(Flow{Src: client1, Dst: web1, Port: 80, Proto: ipproto.TCP}).Allowed {
		t.Fatal("trace no longer allows the client")
	}
}
