package policy

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/cidridentity"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// TestCIDRPeers: CIDR identities from the allocator resolve as peers of
// the CIDR rules that select them and of the world entity, trace decides
// by them, and a freed identity takes its keys with it.
func TestCIDRPeers(t *testing.T) {
	e := newEngine(t, true, cnp("ext", `{"endpointSelector":{"matchLabels":{"app":"web"}},`+
		`"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]},{"cidr":"2001:db8::/32"}],"toPorts":[{"ports":[{"port":"443","protocol":"TCP"}]}]}],`+
		`"ingress":[{"fromEntities":["world"]}]}`))
	alloc := cidridentity.New(0)
	created, err := alloc.Acquire([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.1.0.0/16"),
		netip.MustParsePrefix("10.1.2.0/24"), netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("2001:db8:5::/48"),
		netip.MustParsePrefix("192.0.2.0/24")})
	if err != nil {
		t.Fatal(err)
	}
	id := map[string]ID{}
	for _, c := range created {
		id[c.Prefix.String()] = c.ID
		e.UpsertIdentity(Identity{ID: c.ID, Labels: c.Labels})
	}
	peers := func(dir rules.Direction) []ID {
		ep, _ := e.Endpoint(web1)
		var out []ID
		for k := range maps.Keys(ep[dir].Entries) {
			if !slices.Contains(out, k.Peer.ID) {
				out = append(out, k.Peer.ID)
			}
		}
		slices.Sort(out)
		return out
	}
	sorted := func(ids ...ID) []ID { slices.Sort(ids); return ids }
	if got, want := peers(rules.Egress), sorted(id["10.0.0.0/8"], id["10.9.0.0/16"], id["2001:db8:5::/48"]); !slices.Equal(got, want) {
		t.Errorf("egress peers %v, want %v (10/8 and the prefixes in use inside it but not in the except, and the IPv6 one)", got, want)
	}
	world := []ID{selector.IDWorld}
	for _, c := range created {
		world = append(world, c.ID)
	}
	if got, want := peers(rules.Ingress), sorted(world...); !slices.Equal(got, want) {
		t.Errorf("ingress (world entity) peers %v, want world and every CIDR identity %v", got, want)
	}
	for _, tc := range []struct {
		prefix  string
		allowed bool
	}{{"10.9.0.0/16", true}, {"10.1.2.0/24", false}, {"10.1.0.0/16", false}, {"192.0.2.0/24", false}} {
		r := e.Trace(Flow{Src: web1, Dst: id[tc.prefix], Port: 443, Proto: ipproto.TCP})
		if r.Allowed != tc.allowed {
			t.Errorf("trace web → %s: allowed %v (%s), want %v", tc.prefix, r.Allowed, r.Egress.Reason, tc.allowed)
		}
	}
	for _, c := range alloc.Release([]netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("10.9.0.0/16")}) {
		e.DeleteIdentity(c.ID)
	}
	if got, want := peers(rules.Egress), []ID{id["2001:db8:5::/48"]}; !slices.Equal(got, want) {
		t.Errorf("egress peers after release %v, want %v", got, want)
	}
}
