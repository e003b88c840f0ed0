package rules

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
)

// cidrFixture is a set of identities: the CIDR identities of the prefixes
// in use (named by prefix), the reserved world identity, a local and a
// remote pod.
func cidrFixture() map[string]selector.Labels {
	ids := map[string]selector.Labels{
		"world":      selector.Reserved()[selector.IDWorld],
		"host":       selector.Reserved()[selector.IDHost],
		"pod-c1":     selector.MustParseLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1"),
		"pod-c2":     selector.MustParseLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c2"),
		"cidr-empty": selector.MustParseLabels("k8s:io.kubernetes.pod.namespace=shop"),
	}
	for _, p := range []string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.0.2.0/24", "192.0.2.10/32",
		"2001:db8::/32", "2001:db8:1::/48", "2001:db8:2::1/128", "::/0"} {
		ids[p] = selector.CIDRLabels(netip.MustParsePrefix(p))
	}
	delete(ids, "cidr-empty")
	return ids
}

// TestCIDRPeerSets: CIDR peers select the CIDR identities of their prefix
// and of every narrower prefix in use, minus the except prefixes' (and
// those inside them), per family; every address of both families and the
// world entity select the world identity and every CIDR identity; no CIDR
// peer selects an endpoint of any cluster or a reserved identity other
// than world.
func TestCIDRPeerSets(t *testing.T) {
	ids := cidrFixture()
	cases := []struct {
		name     string
		obj      string
		want     []string
		prefixes []string
	}{
		{"nested prefixes", cnp(`{"endpointSelector":{},"egress":[{"toCIDR":["10.0.0.0/8"]}]}`),
			[]string{"10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16"}, []string{"10.0.0.0/8"}},
		{"except removes the prefix and those inside it", cnp(`{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}]}]}`),
			[]string{"10.0.0.0/8", "10.2.0.0/16"}, []string{"10.0.0.0/8", "10.1.0.0/16"}},
		{"two excepts", cnp(`{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.2.0/24","10.2.0.0/16"]}]}]}`),
			[]string{"10.0.0.0/8", "10.1.0.0/16"}, []string{"10.0.0.0/8", "10.1.2.0/24", "10.2.0.0/16"}},
		{"bare address", cnp(`{"endpointSelector":{},"ingress":[{"fromCIDR":["192.0.2.10"]}]}`),
			[]string{"192.0.2.10/32"}, []string{"192.0.2.10/32"}},
		{"ipv6 with except", cnp(`{"endpointSelector":{},"ingress":[{"fromCIDRSet":[{"cidr":"2001:db8::/32","except":["2001:db8:1::/48"]}]}]}`),
			[]string{"2001:db8:2::1/128", "2001:db8::/32"}, []string{"2001:db8::/32", "2001:db8:1::/48"}},
		{"every ipv4 address alone", cnp(`{"endpointSelector":{},"egress":[{"toCIDR":["0.0.0.0/0"]}]}`),
			[]string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.0.2.0/24", "192.0.2.10/32"}, []string{"0.0.0.0/0"}},
		{"every ipv6 address except one prefix", cnp(`{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"::/0","except":["2001:db8::/32"]}]}]}`),
			[]string{"::/0"}, []string{"::/0", "2001:db8::/32"}},
		{"every address of both families is world", cnp(`{"endpointSelector":{},"egress":[{"toCIDR":["0.0.0.0/0","::/0"]}]}`),
			[]string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.0.2.0/24", "192.0.2.10/32",
				"2001:db8:1::/48", "2001:db8:2::1/128", "2001:db8::/32", "::/0", "world"}, nil},
		{"entity world", cnp(`{"endpointSelector":{},"egress":[{"toEntities":["world"]}]}`),
			[]string{"0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.2.0.0/16", "192.0.2.0/24", "192.0.2.10/32",
				"2001:db8:1::/48", "2001:db8:2::1/128", "2001:db8::/32", "::/0", "world"}, nil},
		{"entity cluster selects no CIDR identity", cnp(`{"endpointSelector":{},"egress":[{"toEntities":["cluster"]}]}`),
			[]string{"host", "pod-c1"}, nil},
		{"endpoint selectors select no CIDR identity", cnp(`{"endpointSelector":{},"egress":[{"toEndpoints":[{}]}]}`),
			[]string{"pod-c1"}, nil},
		{"ipBlock with except", knp(`{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"10.1.0.0/16","except":["10.1.2.0/24"]}}]}]}`),
			[]string{"10.1.0.0/16"}, []string{"10.1.0.0/16", "10.1.2.0/24"}},
		{"a prefix in use and a wider one", cnp(`{"endpointSelector":{},"egress":[{"toCIDR":["192.0.2.0/24","192.0.2.10/32"]}]}`),
			[]string{"192.0.2.0/24", "192.0.2.10/32"}, []string{"192.0.2.0/24", "192.0.2.10/32"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustDecode(t, tc.obj, opts)
			r := p.Specs[0].Rules[0]
			var got []string
			for name, ls := range ids {
				if slices.ContainsFunc(r.Peers.Selectors, func(s selector.Selector) bool { return s.Matches(ls) }) {
					got = append(got, name)
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("selected %v, want %v", got, tc.want)
			}
			var prefixes []string
			for _, q := range p.Prefixes() {
				prefixes = append(prefixes, q.String())
			}
			if !slices.Equal(prefixes, tc.prefixes) {
				t.Errorf("prefixes %v, want %v", prefixes, tc.prefixes)
			}
		})
	}
}

func TestCIDRLabelKey(t *testing.T) {
	cases := []struct{ prefix, want string }{
		{"10.1.0.0/16", "10.1.0.0/16"},
		{"0.0.0.0/0", "0.0.0.0/0"},
		{"2001:db8::/32", "2001-db8--0/32"},
		{"::/0", "0--0/0"},
		{"::1/128", "0--1/128"},
		{"2001:db8:1:2:3:4:5:6/128", "2001-db8-1-2-3-4-5-6/128"},
	}
	for _, tc := range cases {
		t.Run(tc.prefix, func(t *testing.T) {
			if got := selector.CIDRLabelKey(netip.MustParsePrefix(tc.prefix)); got != tc.want {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}
