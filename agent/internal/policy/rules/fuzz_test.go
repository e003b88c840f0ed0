package rules

import (
	"errors"
	"testing"
)

// FuzzDecode feeds untrusted objects to the decoder: it must never panic,
// every failure is a *RefusedError, and an accepted policy is well-formed.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		cnp(`{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchExpressions":[{"key":"io.cilium.k8s.policy.cluster","operator":"In","values":["c2"]}]}],"toPorts":[{"ports":[{"port":"80","endPort":90,"protocol":"TCP"}]}]}]}`),
		cnp(`{"endpointSelector":{},"egressDeny":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}]}],"egress":[{"toEntities":["world","cluster"]}]}`),
		knp(`{"podSelector":{},"policyTypes":["Ingress","Egress"],"ingress":[{"from":[{"namespaceSelector":{}},{"ipBlock":{"cidr":"192.0.2.0/24","except":["192.0.2.0/28"]}}],"ports":[{"port":"http"}]}]}`),
		knp(`{"podSelector":{},"ingress":[{"from":[{"ipBlock":{"cidr":"0.0.0.0/0"}},{"ipBlock":{"cidr":"::/0"}}]}]}`),
		`{"apiVersion":"cilium.io/v2","kind":"CiliumClusterwideNetworkPolicy","metadata":{"name":"x"},"specs":[{"endpointSelector":{},"ingress":[{}]}]}`,
		cnp(`{"endpointSelector":{},"ingress":[{"toPorts":[{"rules":{"http":[{}]}}]}]}`),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Decode(data, opts)
		if err != nil {
			var re *RefusedError
			if !errors.As(err, &re) || !(errors.Is(err, ErrInvalid) || errors.Is(err, ErrUnsupported)) {
				t.Fatalf("error %v is not a RefusedError with a sentinel", err)
			}
			return
		}
		if p.Key == "" || len(p.Specs) == 0 {
			t.Fatalf("accepted policy without key or specs: %+v", p)
		}
		for _, s := range p.Specs {
			for _, r := range s.Rules {
				for _, port := range r.Ports {
					if port.Name == "" && port.EndPort < port.Port {
						t.Fatalf("port range %d-%d", port.Port, port.EndPort)
					}
				}
			}
		}
	})
}
