package rules

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"reflect"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"sigs.k8s.io/yaml"

	"github.com/clustermesh/clustermesh/deploy"
	"github.com/clustermesh/clustermesh/internal/kubetest"
)

var crdFiles = []string{"crds/ciliumnetworkpolicies.yaml", "crds/ciliumclusterwidenetworkpolicies.yaml"}

func loadCRD(t *testing.T, path string) map[string]any {
	t.Helper()
	data, err := fs.ReadFile(deploy.ChartFS(), path)
	if err != nil {
		t.Fatal(err)
	}
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var obj map[string]any
	if err := json.Unmarshal(js, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// TestCRDRuleSchemasAgree keeps the two policy CRDs on one rule schema.
func TestCRDRuleSchemasAgree(t *testing.T) {
	var schemas []any
	for _, f := range crdFiles {
		crd := loadCRD(t, f)
		v, _, err := unstructured.NestedSlice(crd, "spec", "versions")
		if err != nil || len(v) != 1 {
			t.Fatalf("%s: versions %v %v", f, v, err)
		}
		props, _, _ := unstructured.NestedMap(v[0].(map[string]any), "schema", "openAPIV3Schema", "properties")
		items, _, _ := unstructured.NestedMap(props, "specs", "items")
		if !reflect.DeepEqual(props["spec"], items) {
			t.Fatalf("%s: spec and specs[] schemas differ", f)
		}
		schemas = append(schemas, props["spec"])
	}
	if !reflect.DeepEqual(schemas[0], schemas[1]) {
		t.Fatal("CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy rule schemas differ")
	}
}

// TestCRDsOnAPIServer installs the CRDs into a real kube-apiserver, creates
// valid and invalid policies, and decodes what the API server stored: the
// schema rejects malformed L3/L4 fields, and keeps unknown and unsupported
// fields so that the decoder refuses them instead of their being pruned.
func TestCRDsOnAPIServer(t *testing.T) {
	cp := kubetest.StartForTest(t, kubetest.Config{Name: "policy"})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := dynamic.NewForConfig(cp.REST)
	if err != nil {
		t.Fatal(err)
	}
	crdGVR := schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}
	for _, f := range crdFiles {
		if _, err := dc.Resource(crdGVR).Create(ctx, &unstructured.Unstructured{Object: loadCRD(t, f)}, metav1.CreateOptions{}); err != nil {
			t.Fatalf("install %s: %v", f, err)
		}
	}
	if err := kubetest.EnsureNamespace(ctx, cp.Client, "shop"); err != nil {
		t.Fatal(err)
	}
	cnpGVR := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumnetworkpolicies"}
	ccnpGVR := schema.GroupVersionResource{Group: "cilium.io", Version: "v2", Resource: "ciliumclusterwidenetworkpolicies"}
	waitServed(ctx, t, dc, cnpGVR, "shop")
	waitServed(ctx, t, dc, ccnpGVR, "")

	cases := []struct {
		name     string
		kind     string // "cnp" or "ccnp"
		spec     string
		rejected bool  // by the API server
		decode   error // nil, ErrUnsupported or ErrInvalid, for accepted objects
	}{
		{name: "cross-cluster allow", kind: "cnp", spec: `{"spec":{"endpointSelector":{"matchLabels":{"app":"web"}},"ingress":[{"fromEndpoints":[{"matchLabels":{"app":"client","io.cilium.k8s.policy.cluster":"c2"}}],"toPorts":[{"ports":[{"port":"80","endPort":90,"protocol":"TCP"}]}]}]}}`},
		{name: "clusterwide specs with every address and entities", kind: "ccnp", spec: `{"specs":[{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"0.0.0.0/0"},{"cidr":"::/0"}]},{"toEntities":["world","cluster"]}]},{"endpointSelector":{"matchExpressions":[{"key":"app","operator":"Exists"}]},"ingressDeny":[{"fromCIDR":["0.0.0.0/0","::/0"]}],"enableDefaultDeny":{"ingress":false}}]}`},
		{name: "cidr with except", kind: "ccnp", spec: `{"specs":[{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["10.1.0.0/16"]}]}]}]}`},
		{name: "named port", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"http"}]}]}]}}`},
		{name: "L7 rules are stored then refused", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"TCP"}],"rules":{"http":[{"method":"GET"}]}}]}]}}`, decode: ErrUnsupported},
		{name: "toFQDNs stored then refused", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"egress":[{"toFQDNs":[{"matchName":"example.com"}]}]}}`, decode: ErrUnsupported},
		{name: "typo in rule kept and refused, not pruned", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"fromEndpoint":[{"matchLabels":{"app":"x"}}]}]}}`, decode: ErrInvalid},
		{name: "typo in selector kept and refused", kind: "ccnp", spec: `{"spec":{"endpointSelector":{"matchLabel":{"app":"x"}},"ingress":[{}]}}`, decode: ErrInvalid},
		{name: "unknown protocol", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"80","protocol":"ICMPX"}]}]}]}}`, rejected: true},
		{name: "port above 65535", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"99999"}]}]}]}}`, rejected: true},
		{name: "bad port name", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"toPorts":[{"ports":[{"port":"Http_Bad"}]}]}]}}`, rejected: true},
		{name: "endPort above 65535", kind: "ccnp", spec: `{"spec":{"endpointSelector":{},"egress":[{"toPorts":[{"ports":[{"port":"80","endPort":70000}]}]}]}}`, rejected: true},
		{name: "unknown operator", kind: "cnp", spec: `{"spec":{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"Gt","values":["1"]}]}}}`, rejected: true},
		{name: "In without values is refused by the decoder", kind: "cnp", spec: `{"spec":{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"In"}]}}}`, decode: ErrInvalid},
		{name: "Exists with values is refused by the decoder", kind: "cnp", spec: `{"spec":{"endpointSelector":{"matchExpressions":[{"key":"a","operator":"Exists","values":["x"]}]}}}`, decode: ErrInvalid},
		{name: "bad CIDR", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"egress":[{"toCIDR":["10.0.0.0/33"]}]}}`, rejected: true},
		{name: "bad except", kind: "ccnp", spec: `{"spec":{"endpointSelector":{},"egress":[{"toCIDRSet":[{"cidr":"10.0.0.0/8","except":["nope"]}]}]}}`, rejected: true},
		{name: "no subject selector", kind: "cnp", spec: `{"spec":{"ingress":[{}]}}`, rejected: true},
		{name: "unknown entity", kind: "cnp", spec: `{"spec":{"endpointSelector":{},"ingress":[{"fromEntities":["galaxy"]}]}}`, rejected: true},
		{name: "matchLabels value not a string", kind: "cnp", spec: `{"spec":{"endpointSelector":{"matchLabels":{"app":7}}}}`, rejected: true},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var obj map[string]any
			if err := json.Unmarshal([]byte(tc.spec), &obj); err != nil {
				t.Fatal(err)
			}
			name := "p" + string(rune('a'+i))
			obj["metadata"] = map[string]any{"name": name}
			var ri dynamic.ResourceInterface
			if tc.kind == "cnp" {
				obj["apiVersion"], obj["kind"] = "cilium.io/v2", KindCiliumNetworkPolicy
				obj["metadata"].(map[string]any)["namespace"] = "shop"
				ri = dc.Resource(cnpGVR).Namespace("shop")
			} else {
				obj["apiVersion"], obj["kind"] = "cilium.io/v2", KindCiliumClusterwideNetworkPolicy
				ri = dc.Resource(ccnpGVR)
			}
			created, err := ri.Create(ctx, &unstructured.Unstructured{Object: obj}, metav1.CreateOptions{})
			if tc.rejected {
				if err == nil || !(apierrors.IsInvalid(err) || apierrors.IsBadRequest(err)) {
					t.Fatalf("API server accepted or failed otherwise: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("API server rejected a valid policy: %v", err)
			}
			got, err := ri.Get(ctx, created.GetName(), metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			p, err := DecodeUnstructured(got.Object, Options{ClusterName: "c1", DefaultLocalCluster: true})
			if tc.decode == nil {
				if err != nil || len(p.Specs) == 0 {
					t.Fatalf("decode stored object: %v", err)
				}
				return
			}
			if !errors.Is(err, tc.decode) {
				t.Fatalf("decode stored object: %v, want %v", err, tc.decode)
			}
		})
	}
}

// waitServed polls until the API server serves the custom resource (the
// CRD is established and discovery caught up).
func waitServed(ctx context.Context, t *testing.T, dc dynamic.Interface, gvr schema.GroupVersionResource, ns string) {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		var err error
		if ns != "" {
			_, err = dc.Resource(gvr).Namespace(ns).List(ctx, metav1.ListOptions{})
		} else {
			_, err = dc.Resource(gvr).List(ctx, metav1.ListOptions{})
		}
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s never served: %v", gvr.Resource, err)
		case <-tick.C:
		}
	}
}
