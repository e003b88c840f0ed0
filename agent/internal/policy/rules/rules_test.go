package rules

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

var opts = Options{ClusterName: "c1", DefaultLocalCluster: true}

func cnp(spec string) string {
	return `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"shop","uid":"x","labels":{"a":"b"}},"spec":` + spec + `}`
}

func knp(spec string) string {
	return `{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":"p","namespace":"shop"},"spec":` + spec + `}`
}

func TestRefused(t *testing.T) {
	cases := []struct {
		name  string
		obj   string
		want  error
		field string
	}{
		{"L7 http rules", cnp(`{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"method":"GET"}]}}]}]}`), ErrUnsupported, "spec.ingress[0].toPorts[0].rules"},
		{"toFQDNs", cnp(`{"endpointSelector":{},"egress":[{"toFQDNs":[{"matchName":"example.com"}]}]}`), ErrUnsupported, "spec.egress[0].toFQDNs"},
		{"toServices", cnp(`{"endpointSelector":{},"egress":[{"toServices":[{"k8sService":{"serviceName":"a"}}]}]}`), ErrUnsupported, "spec.egress[0].toServices"},
		{"icmps", cnp(`{"endpointSelector":{},"ingress":[{"icmps":[{"fields":[{"type":8}]}]}]}`), ErrUnsupported, "spec.ingress[0].icmps"},
		{"fromRequires", cnp(`{"endpointSelector":{},"ingress":[{"fromRequires":[{}]}]}`), ErrUnsupported, "spec.ingress[0].fromRequires"},
		{"cidr group", cnp(`{"endpointSelector":{},"ingress":[{"fromCIDRSet":[{"cidrGroupRef":"g"}]}]}`), ErrUnsupported, "spec.ingress[0].fromCIDRSet[0].cidrGroupRef"},
		{"L7 in second of specs", `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"p"},"specs":[{"endpointSelector":{}},{"endpointSelector":{},"egress":[{"toPorts":[{"rules":{"dns":[{}]}}]}]}]}`, ErrUnsupported, "specs[1].egress[0].toPorts[0].rules"},
		{"unknown field in rule", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoint":[{}]}]}`), ErrInvalid, "spec"},
		{"unknown field in spec", cnp(`{"endpointSelector":{},"ingres":[{}]}`), ErrInvalid, "spec"},
		{"unknown field at top", `{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":"p","namespace":"a"},"spec":{"endpointSelector":{}},"extra":1}`, ErrInvalid, ""},
		{"unknown field in knp", knp(`{"podSelector":{},"ingress":[{"form":[]}]}`), ErrInvalid, "spec"},
		{"unknown protocol", cnp(`{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"ICMP"}]}]}]}`), ErrUnsupported, "spec.ingress[0].toPorts[0].ports[0].protocol"},
		{"bad operator", cnp(`{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"Gt","values":["1"]}]}}`), ErrInvalid, "spec.endpointSelector"},
		{"unknown entity", cnp(`{"endpointSelector":{},"ingress":[{"fromEntities":["galaxy"]}]}`), ErrInvalid, "spec.ingress[0].fromEntities[0]"},
		{"except outside cidr", cnp(`{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["11.0.0.0/16"]}]}]}`), ErrInvalid, "spec.egress[0].toCIDRSet[0]"},
		{"endPort below port", cnp(`{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"90","endPort":80}]}]}]}`), ErrInvalid, "spec.ingress[0].toPorts[0].ports[0]"},
		{"endPort with named port", knp(`{"podSelector":{},"ingress":[{"ports":[{"port":"http","endPort":90}]}]}`), ErrInvalid, "spec.ingress[0].ports[0]"},
		{"missing endpointSelector", cnp(`{"ingress":[{}]}`), ErrInvalid, "spec.endpointSelector"},
		{"node selector", cnp(`{"nodeSelector":{},"ingress":[{}]}`), ErrUnsupported, "spec.nodeSelector"},
		{"unknown kind", `{"apiVersion":"cilium.io/v2","kind":"CiliumEgressGatewayPolicy","metadata":{"name":"p"}}`, ErrUnsupported, "kind"},
		{"not json", `{"apiVersion":`, ErrInvalid, ""},
		{"clusterwide with namespace", `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"p","namespace":"a"},"spec":{"endpointSelector":{}}}`, ErrInvalid, "metadata.namespace"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.obj), opts)
			var re *RefusedError
			if !errors.As(err, &re) || !errors.Is(err, tc.want) {
				t.Fatalf("err = %v, want a *RefusedError wrapping %v", err, tc.want)
			}
			if re.Field != tc.field {
				t.Errorf("field = %q, want %q (%v)", re.Field, tc.field, err)
			}
		})
	}
}

func mustDecode(t *testing.T, obj string, o Options) Policy {
	t.Helper()
	p, err := Decode([]byte(obj), o)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestTooManyCIDRPrefixes: a policy naming more prefixes than an identity
// each can be given is refused, at the CIDR field where the bound is
// crossed.
func TestTooManyCIDRPrefixes(t *testing.T) {
	list := func(first, n int) string {
		var ps []string
		for i := first; i < first+n; i++ {
			ps = append(ps, fmt.Sprintf(`"10.%d.%d.0/24"`, i/256, i%256))
		}
		return strings.Join(ps, ",")
	}
	half := MaxCIDRPrefixes / 2
	// Ingress is translated before egress; a prefix named twice counts once.
	over := cnp(`{"endpointSelector":{},"ingress":[{"fromCIDR":[` + list(0, half) + `]}],"egress":[{"toCIDR":[` + list(half, half) + `]},{"toCIDR":["192.0.2.0/24"]}]}`)
	_, err := Decode([]byte(over), opts)
	var re *RefusedError
	if !errors.As(err, &re) || !errors.Is(err, ErrUnsupported) || re.Field != "spec.egress[1].toCIDR[0]" {
		t.Fatalf("err = %v, want ErrUnsupported at spec.egress[1].toCIDR[0]", err)
	}
	atBound := cnp(`{"endpointSelector":{},"ingress":[{"fromCIDR":[` + list(0, half) + `]}],"egress":[{"toCIDR":[` + list(half, half) + `]},{"toCIDR":[` + list(0, 1) + `]}]}`)
	p, err := Decode([]byte(atBound), opts)
	if err != nil {
		t.Fatalf("%d prefixes: %v", MaxCIDRPrefixes, err)
	}
	if n := len(p.Prefixes()); n != MaxCIDRPrefixes {
		t.Errorf("%d prefixes, want %d", n, MaxCIDRPrefixes)
	}
}

func TestKNPTranslation(t *testing.T) {
	ids := map[string]selector.Labels{
		"web-c1":    selector.MustParseLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1"),
		"client-c1": selector.MustParseLabels("k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c1"),
		"client-c2": selector.MustParseLabels("k8s:app=client", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c2"),
		"mon-c1":    selector.MustParseLabels("k8s:app=prom", "k8s:io.kubernetes.pod.namespace=mon", "k8s:io.cilium.k8s.policy.cluster=c1", "k8s:io.cilium.k8s.namespace.labels.team=ops"),
		"other-ns":  selector.MustParseLabels("k8s:app=client", "k8s:io.kubernetes.pod.namespace=dev", "k8s:io.cilium.k8s.policy.cluster=c1"),
		"world":     selector.Reserved()[selector.IDWorld],
	}
	names := func(sels []selector.Selector) []string {
		var out []string
		for n, l := range ids {
			if slices.ContainsFunc(sels, func(s selector.Selector) bool { return s.Matches(l) }) {
				out = append(out, n)
			}
		}
		slices.Sort(out)
		return out
	}
	cases := []struct {
		name     string
		spec     string
		subjects []string
		deny     [2]bool
		rules    int
		all      bool
		peers    []string
		ports    []Port
	}{
		{name: "empty podSelector selects the namespace, no rules denies ingress", spec: `{"podSelector":{}}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{true, false}},
		{name: "podSelector peer is same namespace and local cluster", spec: `{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"podSelector":{"matchLabels":{"app":"client"}}}],"ports":[{"port":80}]}]}`,
			subjects: []string{"web-c1"}, deny: [2]bool{true, false}, rules: 1, peers: []string{"client-c1"}, ports: []Port{{Port: 80, EndPort: 80, Proto: ipproto.TCP}}},
		{name: "namespaceSelector", spec: `{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"ops"}}}]}]}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{true, false}, rules: 1, peers: []string{"mon-c1"}},
		{name: "empty namespaceSelector is every namespace", spec: `{"podSelector":{},"ingress":[{"from":[{"namespaceSelector":{},"podSelector":{"matchLabels":{"app":"client"}}}]}]}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{true, false}, rules: 1, peers: []string{"client-c1", "other-ns"}},
		{name: "policyTypes Egress only ignores ingress rules; ipBlocks of every address are world", spec: `{"podSelector":{},"policyTypes":["Egress"],"ingress":[{}],"egress":[{"to":[{"ipBlock":{"cidr":"0.0.0.0/0"}},{"ipBlock":{"cidr":"::/0"}}],"ports":[{"protocol":"UDP","port":53,"endPort":54}]}]}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{false, true}, rules: 1, peers: []string{"world"}, ports: []Port{{Port: 53, EndPort: 54, Proto: ipproto.UDP}}},
		{name: "empty from admits everyone, named port", spec: `{"podSelector":{},"ingress":[{"ports":[{"port":"http"}]}]}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{true, false}, rules: 1, all: true, ports: []Port{{Name: "http", Proto: ipproto.TCP}}},
		{name: "egress rules imply Egress type", spec: `{"podSelector":{},"egress":[{}]}`,
			subjects: []string{"client-c1", "client-c2", "web-c1"}, deny: [2]bool{true, true}, rules: 1, all: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustDecode(t, knp(tc.spec), opts)
			if p.Key != "knp/shop/p" || len(p.Specs) != 1 {
				t.Fatalf("policy %+v", p)
			}
			s := p.Specs[0]
			if got := names([]selector.Selector{s.Subject}); !slices.Equal(got, tc.subjects) {
				t.Errorf("subjects %v, want %v", got, tc.subjects)
			}
			if s.DefaultDeny != tc.deny {
				t.Errorf("default deny %v, want %v", s.DefaultDeny, tc.deny)
			}
			if len(s.Rules) != tc.rules {
				t.Fatalf("%d rules, want %d", len(s.Rules), tc.rules)
			}
			if tc.rules == 0 {
				return
			}
			r := s.Rules[0]
			if r.Peers.All != tc.all {
				t.Errorf("all = %v", r.Peers.All)
			}
			if got := names(r.Peers.Selectors); len(r.Peers.Selectors) > 0 && !slices.Equal(got, tc.peers) {
				t.Errorf("peers %v, want %v", got, tc.peers)
			}
			if !slices.Equal(r.Ports, tc.ports) {
				t.Errorf("ports %+v, want %+v", r.Ports, tc.ports)
			}
		})
	}
}

// TestEveryAddressIsWorld: CIDR peers covering every address of both
// families, however written, are the world entity and nothing else.
func TestEveryAddressIsWorld(t *testing.T) {
	cases := []struct {
		name string
		obj  string
	}{
		{"toCIDR", cnp(`{"endpointSelector":{},"egress":[{"toCIDR":["0.0.0.0/0","::/0"]}]}`)},
		{"fromCIDRSet with a covered prefix", cnp(`{"endpointSelector":{},"ingress":[{"fromCIDRSet":[{"cidr":"::/0"},{"cidr":"0.0.0.0/0"},{"cidr":"10.0.0.0/8"}]}]}`)},
		{"toCIDR and toCIDRSet together", cnp(`{"endpointSelector":{},"egressDeny":[{"toCIDR":["0.0.0.0/0"],"toCIDRSet":[{"cidr":"::/0"}]}]}`)},
		{"two ipBlocks", knp(`{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"0.0.0.0/0"}},{"ipBlock":{"cidr":"::/0"}}]}]}`)},
	}
	world := selector.Reserved()[selector.IDWorld]
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustDecode(t, tc.obj, opts)
			r := p.Specs[0].Rules[0]
			if r.Peers.All || len(r.Peers.Selectors) != 1 || !r.Peers.Selectors[0].Matches(world) {
				t.Fatalf("peers %+v, want the world selector only", r.Peers)
			}
			for id, ls := range selector.Reserved() {
				if id != selector.IDWorld && r.Peers.Selectors[0].Matches(ls) {
					t.Errorf("the world selector matches reserved identity %d", id)
				}
			}
			pod := selector.MustParseLabels("k8s:app=web", "k8s:io.kubernetes.pod.namespace=shop", "k8s:io.cilium.k8s.policy.cluster=c2")
			if r.Peers.Selectors[0].Matches(pod) {
				t.Error("the world selector matches a remote pod")
			}
		})
	}
}

func TestCNPScoping(t *testing.T) {
	cases := []struct {
		name string
		obj  string
		o    Options
		want string // canonical peer selector of rule 0
	}{
		{"namespaced peer gets namespace and cluster", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"a"}}]}]}`), opts,
			"{any:app=a,k8s:io.cilium.k8s.policy.cluster=c1,k8s:io.kubernetes.pod.namespace=shop}"},
		{"default-local-cluster off", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"a"}}]}]}`), Options{ClusterName: "c1"},
			"{any:app=a,k8s:io.kubernetes.pod.namespace=shop}"},
		{"explicit cluster kept", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"io.cilium.k8s.policy.cluster":"c2"}}]}]}`), opts,
			"{any:io.cilium.k8s.policy.cluster=c2,k8s:io.kubernetes.pod.namespace=shop}"},
		{"explicit namespace kept", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"k8s:io.kubernetes.pod.namespace":"dev"}}]}]}`), opts,
			"{k8s:io.cilium.k8s.policy.cluster=c1,k8s:io.kubernetes.pod.namespace=dev}"},
		{"reserved selector untouched", cnp(`{"endpointSelector":{},"ingress":[{"fromEndpoints":[{"matchLabels":{"reserved:host":""}}]}]}`), opts,
			"{reserved:host=}"},
		{"clusterwide peer needs a namespace", `{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"p"},"spec":{"endpointSelector":{},"ingress":[{"fromEndpoints":[{}]}]}}`, opts,
			"{k8s:io.cilium.k8s.policy.cluster=c1,k8s:io.kubernetes.pod.namespace}"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := mustDecode(t, tc.obj, tc.o)
			if got := p.Specs[0].Rules[0].Peers.Selectors[0].String(); got != tc.want {
				t.Fatalf("peer %s, want %s", got, tc.want)
			}
		})
	}
}

func TestCNPDefaultDenyAndL4Only(t *testing.T) {
	p := mustDecode(t, cnp(`{"endpointSelector":{"matchLabels":{"io.kubernetes.pod.namespace":"other","app":"web"}},
		"ingressDeny":[{"toPorts":[{"ports":[{"port":"22"}]}]}],"egress":[{}],"enableDefaultDeny":{"egress":false}}`), opts)
	s := p.Specs[0]
	if s.DefaultDeny != [2]bool{true, false} {
		t.Errorf("default deny %v", s.DefaultDeny)
	}
	if !strings.Contains(s.Subject.String(), "k8s:io.kubernetes.pod.namespace=shop") || strings.Contains(s.Subject.String(), "other") {
		t.Errorf("subject %s must be forced into the policy namespace", s.Subject)
	}
	deny, eg := s.Rules[0], s.Rules[1]
	if !deny.Deny || !deny.Peers.All || !slices.Equal(deny.Ports, []Port{{Port: 22, EndPort: 22, Proto: ipproto.Any}}) {
		t.Errorf("L4-only deny rule %+v", deny)
	}
	if eg.Peers.All || len(eg.Peers.Selectors) != 0 || eg.Direction != Egress {
		t.Errorf("empty egress rule must select nothing: %+v", eg)
	}
}

func TestOptionsFlag(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want bool
	}{
		{"default on", nil, true},
		{"switched off", []string{"--policy-default-local-cluster=false"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := DefaultOptions()
			fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
			o.RegisterFlags(fs)
			if err := fs.Parse(tc.args); err != nil {
				t.Fatal(err)
			}
			if o.DefaultLocalCluster != tc.want {
				t.Fatalf("DefaultLocalCluster = %v, want %v", o.DefaultLocalCluster, tc.want)
			}
		})
	}
}
