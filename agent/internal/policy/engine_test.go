package policy

import (
	"fmt"
	"strings"
	"testing"

	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

const (
	web1    ID = 100 // c1 shop app=web, named port http=8080/TCP
	client1 ID = 101 // c1 shop app=client
	dev1    ID = 102 // c1 dev app=client, namespace label team=dev
	client2 ID = 200 // c2 shop app=client
	other2  ID = 201 // c2 shop app=other
	client3 ID = 300 // c3 shop app=client
	web3    ID = 301 // c3 shop app=web, named port http=9090/TCP
)

func pod(id ID, cluster, ns, app string) Identity {
	return Identity{ID: id, Labels: selector.MustParseLabels(
		"k8s:app="+app, "k8s:io.kubernetes.pod.namespace="+ns, "k8s:io.cilium.k8s.policy.cluster="+cluster,
		"k8s:io.cilium.k8s.namespace.labels.team="+ns)}
}

func fixture() []Identity {
	ids := []Identity{
		pod(web1, "c1", "shop", "web"),
		pod(client1, "c1", "shop", "client"),
		pod(dev1, "c1", "dev", "client"),
		pod(client2, "c2", "shop", "client"),
		pod(other2, "c2", "shop", "other"),
		pod(client3, "c3", "shop", "client"),
		pod(web3, "c3", "shop", "web"),
	}
	for id, l := range selector.Reserved() {
		ids = append(ids, Identity{ID: id, Labels: l})
	}
	return ids
}

// fixturePorts are the ipcache entries of the fixture's pods that have
// named ports: one endpoint each.
func fixturePorts() []EndpointPorts {
	return []EndpointPorts{
		{ID: web1, Ports: []NamedPort{{Name: "http", Port: 8080, Proto: ipproto.TCP}}},
		{ID: web3, Ports: []NamedPort{{Name: "http", Port: 9090, Proto: ipproto.TCP}}},
	}
}

func cnp(name, spec string) string {
	return fmt.Sprintf(`{"apiVersion":"cilium.io/v2","kind":"CiliumNetworkPolicy","metadata":{"name":%q,"namespace":"shop"},"spec":%s}`, name, spec)
}

func knp(name, spec string) string {
	return fmt.Sprintf(`{"apiVersion":"networking.k8s.io/v1","kind":"NetworkPolicy","metadata":{"name":%q,"namespace":"shop"},"spec":%s}`, name, spec)
}

type flow struct {
	name     string
	src, dst ID
	port     uint16
	proto    ipproto.Proto
	allowed  bool
	rule     string // deciding rule, "" for a default verdict
}

func newEngine(t *testing.T, defaultLocal bool, policies ...string) *Engine {
	t.Helper()
	e := New(Config{ClusterName: "c1"})
	for _, id := range fixture() {
		e.UpsertIdentity(id)
	}
	for _, ep := range fixturePorts() {
		e.UpdateEndpointPorts(EndpointPorts{}, ep)
	}
	for _, p := range policies {
		pol, err := rules.Decode([]byte(p), rules.Options{ClusterName: "c1", DefaultLocalCluster: defaultLocal})
		if err != nil {
			t.Fatal(err)
		}
		e.UpsertPolicy(pol)
	}
	return e
}

func TestResolveAndTrace(t *testing.T) {
	webOnlyFromC2Clients := cnp("web", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}]}]}]}`)
	fromClients := cnp("clients", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client"}}]}]}`)
	cases := []struct {
		name         string
		defaultLocal bool
		policies     []string
		flows        []flow
	}{
		{name: "no policy is default allow", defaultLocal: true, flows: []flow{
			{name: "c2 client", src: client2, dst: web1, port: 80, proto: ipproto.TCP, allowed: true},
		}},
		{name: "backend allows only app=client of c2", defaultLocal: true, policies: []string{webOnlyFromC2Clients}, flows: []flow{
			{name: "c2 client passes", src: client2, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/web ingress[0]"},
			{name: "c3 client denied", src: client3, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "c2 other denied", src: other2, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "c1 client denied", src: client1, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "wrong port", src: client2, dst: web1, port: 81, proto: ipproto.TCP},
			{name: "wrong protocol", src: client2, dst: web1, port: 80, proto: ipproto.UDP},
			{name: "egress of the client is not selected", src: client1, dst: client2, port: 80, proto: ipproto.TCP, allowed: true},
		}},
		{name: "default-local-cluster on: local clients only", defaultLocal: true, policies: []string{fromClients}, flows: []flow{
			{name: "c1 client", src: client1, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/clients ingress[0]"},
			{name: "c2 client", src: client2, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "c3 client", src: client3, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "other namespace", src: dev1, dst: web1, port: 80, proto: ipproto.TCP},
		}},
		{name: "default-local-cluster off: clients of every cluster", defaultLocal: false, policies: []string{fromClients}, flows: []flow{
			{name: "c1 client", src: client1, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/clients ingress[0]"},
			{name: "c2 client", src: client2, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/clients ingress[0]"},
			{name: "c3 client", src: client3, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/clients ingress[0]"},
			{name: "other namespace", src: dev1, dst: web1, port: 80, proto: ipproto.TCP},
		}},
		{name: "default-local-cluster on: an Exists cluster term selects every cluster", defaultLocal: true, policies: []string{
			cnp("every", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client"},"matchExpressions":[{"key":"io.cilium.k8s.policy.cluster","operator":"Exists"}]}]}]}`)}, flows: []flow{
			{name: "c1 client", src: client1, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/every ingress[0]"},
			{name: "c3 client", src: client3, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/every ingress[0]"},
			{name: "c2 other", src: other2, dst: web1, port: 80, proto: ipproto.TCP},
		}},
		{name: "deny wins over allow", defaultLocal: false, policies: []string{fromClients,
			cnp("no-c3", `{"endpointSelector":{},"ingressDeny":[{"fromEndpoints":[{"matchLabels":{"io.cilium.k8s.policy.cluster":"c3"}}]}]}`)}, flows: []flow{
			{name: "c2 allowed", src: client2, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/clients ingress[0]"},
			{name: "c3 denied by the deny rule", src: client3, dst: web1, port: 80, proto: ipproto.TCP, rule: "cnp/shop/no-c3 ingressDeny[0]"},
		}},
		{name: "port deny beats wider allow", defaultLocal: true, policies: []string{
			cnp("all", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEntities":["all"]}],"ingressDeny":[{"toPorts":[{"ports":[{"port":"22"}]}]}]}`)}, flows: []flow{
			{name: "22 denied", src: client2, dst: web1, port: 22, proto: ipproto.TCP, rule: "cnp/shop/all ingressDeny[0]"},
			{name: "22/udp denied (ANY)", src: client2, dst: web1, port: 22, proto: ipproto.UDP, rule: "cnp/shop/all ingressDeny[0]"},
			{name: "23 allowed", src: client2, dst: web1, port: 23, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/all ingress[0]"},
			{name: "world allowed", src: selector.IDWorld, dst: web1, port: 443, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/all ingress[0]"},
		}},
		{name: "named port resolved against the destination", defaultLocal: false, policies: []string{
			cnp("named-in", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"toPorts":[{"ports":[{"port":"http","protocol":"TCP"}]}]}]}`),
			cnp("named-out", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEndpoints":[{"matchLabels":{"app":"web"}}],"toPorts":[{"ports":[{"port":"http"}]}]}]}`)}, flows: []flow{
			{name: "ingress 8080 is http of web1", src: client2, dst: web1, port: 8080, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-in ingress[0]"},
			{name: "ingress 80 is not", src: client2, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "egress to c3 web uses its 9090", src: client1, dst: web3, port: 9090, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-out egress[0]"},
			{name: "egress to c3 web on 8080 denied", src: client1, dst: web3, port: 8080, proto: ipproto.TCP},
			{name: "egress to c1 web on 8080", src: client1, dst: web1, port: 8080, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-out egress[0] & cnp/shop/named-in ingress[0]"},
		}},
		{name: "endPort range", defaultLocal: true, policies: []string{
			cnp("range", `{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{}],"toPorts":[{"ports":[{"port":"8000","endPort":8100,"protocol":"TCP"}]}]}]}`)}, flows: []flow{
			{name: "low end", src: client1, dst: web1, port: 8000, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/range ingress[0]"},
			{name: "inside", src: client1, dst: web1, port: 8050, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/range ingress[0]"},
			{name: "high end", src: client1, dst: web1, port: 8100, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/range ingress[0]"},
			{name: "above", src: client1, dst: web1, port: 8101, proto: ipproto.TCP},
			{name: "below", src: client1, dst: web1, port: 7999, proto: ipproto.TCP},
		}},
		{name: "entities", defaultLocal: true, policies: []string{
			cnp("ent", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toEntities":["cluster"]},{"toEntities":["world"]}],"ingress":[{"fromEntities":["host","remote-node"]}]}`)}, flows: []flow{
			{name: "egress to host via cluster", src: client1, dst: selector.IDHost, proto: ipproto.TCP, port: 1, allowed: true, rule: "cnp/shop/ent egress[0]"},
			{name: "egress to local pod via cluster", src: client1, dst: web1, proto: ipproto.TCP, port: 80, allowed: true, rule: "cnp/shop/ent egress[0]"},
			{name: "egress to remote pod is not cluster", src: client1, dst: client2, proto: ipproto.TCP, port: 80},
			{name: "egress to world", src: client1, dst: selector.IDWorld, proto: ipproto.UDP, port: 53, allowed: true, rule: "cnp/shop/ent egress[1]"},
			{name: "ingress from host", src: selector.IDHost, dst: client1, proto: ipproto.TCP, port: 80, allowed: true, rule: "cnp/shop/ent ingress[0]"},
			{name: "ingress from remote-node", src: selector.IDRemoteNode, dst: client1, proto: ipproto.TCP, port: 80, allowed: true, rule: "cnp/shop/ent ingress[0]"},
			{name: "ingress from world denied", src: selector.IDWorld, dst: client1, proto: ipproto.TCP, port: 80},
		}},
		{name: "every address of both families is the world entity", defaultLocal: true, policies: []string{
			cnp("cidr", `{"endpointSelector":{"matchLabels":{"app":"web"}},"egress":[{"toCIDR":["0.0.0.0/0","::/0"],"toPorts":[{"ports":[{"port":"443","protocol":"TCP"}]}]}]}`)}, flows: []flow{
			{name: "world on 443", src: web1, dst: selector.IDWorld, port: 443, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/cidr egress[0]"},
			{name: "world on 22", src: web1, dst: selector.IDWorld, port: 22, proto: ipproto.TCP},
			{name: "a pod is not a CIDR peer", src: web1, dst: client1, port: 443, proto: ipproto.TCP},
			{name: "a remote pod is not a CIDR peer", src: web1, dst: client2, port: 443, proto: ipproto.TCP},
			{name: "the host is not a CIDR peer", src: web1, dst: selector.IDHost, port: 443, proto: ipproto.TCP},
		}},
		{name: "egress named port to the wildcard peer resolves per peer identity", defaultLocal: true, policies: []string{
			cnp("named-any", `{"endpointSelector":{"matchLabels":{"app":"client"}},"egress":[{"toPorts":[{"ports":[{"port":"http","protocol":"TCP"}]}]}]}`)}, flows: []flow{
			{name: "8080 of c1 web", src: client1, dst: web1, port: 8080, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-any egress[0]"},
			{name: "9090 of c3 web", src: client1, dst: web3, port: 9090, proto: ipproto.TCP, allowed: true, rule: "cnp/shop/named-any egress[0]"},
			{name: "9090 is not http of c1 web", src: client1, dst: web1, port: 9090, proto: ipproto.TCP},
			{name: "8080 of a peer without named ports", src: client1, dst: client2, port: 8080, proto: ipproto.TCP},
			{name: "80 is no named port", src: client1, dst: web1, port: 80, proto: ipproto.TCP},
		}},
		{name: "NetworkPolicy namespaceSelector and Egress-only types", defaultLocal: true, policies: []string{
			knp("ns", `{"podSelector":{"matchLabels":{"app":"web"}},"ingress":[{"from":[{"namespaceSelector":{"matchLabels":{"team":"dev"}}}],"ports":[{"port":80}]}]}`),
			knp("eg", `{"podSelector":{"matchLabels":{"app":"client"}},"policyTypes":["Egress"]}`)}, flows: []flow{
			{name: "dev namespace allowed", src: dev1, dst: web1, port: 80, proto: ipproto.TCP, allowed: true, rule: "knp/shop/ns ingress[0]"},
			{name: "same namespace not selected", src: client1, dst: web1, port: 80, proto: ipproto.TCP},
			{name: "client egress default deny", src: client1, dst: client2, port: 80, proto: ipproto.TCP},
			{name: "client ingress still default allow", src: web1, dst: client1, port: 80, proto: ipproto.TCP, allowed: true},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEngine(t, tc.defaultLocal, tc.policies...)
			for _, f := range tc.flows {
				t.Run(f.name, func(t *testing.T) {
					res := e.Trace(Flow{Src: f.src, Dst: f.dst, Port: f.port, Proto: f.proto})
					var refs []string
					for _, r := range res.DecidedBy() {
						refs = append(refs, r.String())
					}
					rule := strings.Join(refs, " & ")
					if res.Allowed != f.allowed {
						t.Fatalf("allowed = %v, want %v: egress %q, ingress %q", res.Allowed, f.allowed, res.Egress.Reason, res.Ingress.Reason)
					}
					if rule != f.rule {
						t.Fatalf("deciding rule %q, want %q (egress %q, ingress %q)", rule, f.rule, res.Egress.Reason, res.Ingress.Reason)
					}
				})
			}
		})
	}
}
