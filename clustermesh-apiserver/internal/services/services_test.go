package services

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/clustermesh/clustermesh/internal/annotation"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

func TestExportedAnnotationMatrix(t *testing.T) {
	for _, tc := range []struct {
		name        string
		annotations map[string]string
		typ         corev1.ServiceType
		global      bool
		exported    bool
	}{
		{"none", nil, "", false, false},
		{"global", map[string]string{annotation.Global: "true"}, "", true, true},
		{"global upper case", map[string]string{annotation.Global: "TRUE"}, "", true, true},
		{"global alias", map[string]string{annotation.GlobalAlias: "true"}, "", true, true},
		{"global false", map[string]string{annotation.Global: "false"}, "", false, false},
		{"global bad value", map[string]string{annotation.Global: "yes"}, "", false, false},
		{"global empty", map[string]string{annotation.Global: ""}, "", false, false},
		{"current name wins over alias", map[string]string{annotation.Global: "false", annotation.GlobalAlias: "true"}, "", false, false},
		{"shared true", map[string]string{annotation.Global: "true", annotation.Shared: "true"}, "", true, true},
		{"shared false", map[string]string{annotation.Global: "true", annotation.Shared: "false"}, "", true, false},
		{"shared alias false", map[string]string{annotation.Global: "true", annotation.SharedAlias: "false"}, "", true, false},
		{"shared bad value", map[string]string{annotation.Global: "true", annotation.Shared: "nope"}, "", true, false},
		{"shared without global", map[string]string{annotation.Shared: "true"}, "", false, false},
		{"affinity local", map[string]string{annotation.Global: "true", annotation.Affinity: "local"}, "", true, true},
		{"affinity bad value", map[string]string{annotation.Global: "true", annotation.AffinityAlias: "sideways"}, "", true, true},
		{"external name", map[string]string{annotation.Global: "true"}, corev1.ServiceTypeExternalName, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Annotations: tc.annotations}, Spec: corev1.ServiceSpec{Type: tc.typ}}
			ann, _ := annotation.Parse(svc.Annotations)
			if got := ann.Global; got != tc.global {
				t.Errorf("Global = %v, want %v", got, tc.global)
			}
			if got := Exported(svc, ann); got != tc.exported {
				t.Errorf("Exported = %v, want %v", got, tc.exported)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// must returns the annotations of a test Service known to be well formed.
func must(a annotation.Service, errs []error) annotation.Service {
	if len(errs) > 0 {
		panic(errs)
	}
	return a
}

func TestValue(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", Labels: map[string]string{"app": "web"},
			Annotations: map[string]string{annotation.Global: "true"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10", "fd00:96::10"},
			Selector: map[string]string{"app": "web"},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, Protocol: corev1.ProtocolTCP}, {Name: "dns", Port: 53, Protocol: corev1.ProtocolUDP}},
		},
	}
	ports := []discoveryv1.EndpointPort{{Name: ptr("http"), Port: ptr(int32(8080)), Protocol: ptr(corev1.ProtocolTCP)}, {Name: ptr("dns"), Port: ptr(int32(5353)), Protocol: ptr(corev1.ProtocolUDP)}}
	slices := []*discoveryv1.EndpointSlice{
		{
			AddressType: discoveryv1.AddressTypeIPv4, Ports: ports,
			Endpoints: []discoveryv1.Endpoint{
				{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}, Zone: ptr("z1")},
				{Addresses: []string{"10.0.0.2"}, Conditions: discoveryv1.EndpointConditions{}},                                                                                   // unknown: ready
				{Addresses: []string{"10.0.0.3"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(true), Terminating: ptr(true)}, Hostname: ptr("w3")}, // serving while terminating
				{Addresses: []string{"10.0.0.4"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false), Terminating: ptr(true)}},                     // terminating
				{Addresses: []string{"10.0.0.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(false), Serving: ptr(false)}},                                             // not ready
			},
		},
		{AddressType: discoveryv1.AddressTypeIPv6, Ports: ports, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"fd00::1"}}}},
		{AddressType: discoveryv1.AddressTypeFQDN, Ports: ports, Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"example.com"}}}},
	}
	b, err := wire.MarshalService(Value(svc, must(annotation.Parse(svc.Annotations)), slices, "c1", 7))
	if err != nil {
		t.Fatal(err)
	}
	be := `{"dns":{"Protocol":"UDP","Port":5353},"http":{"Protocol":"TCP","Port":8080}}`
	fe := `{"dns":{"Protocol":"UDP","Port":53},"http":{"Protocol":"TCP","Port":80}}`
	want := `{"cluster":"c1","namespace":"shop","name":"web",` +
		`"frontends":{"10.96.0.10":` + fe + `,"fd00:96::10":` + fe + `},` +
		`"backends":{"10.0.0.1":` + be + `,"10.0.0.2":` + be + `,"10.0.0.3":` + be + `,"fd00::1":` + be + `},` +
		`"hostnames":{"10.0.0.3":"w3"},"zones":{"10.0.0.1":{"zone":"z1","forZones":null}},` +
		`"labels":{"app":"web"},"selector":{"app":"web"},"includeExternal":true,"shared":true,"clusterID":7}`
	if string(b) != want {
		t.Fatalf("got  %s\nwant %s", b, want)
	}
	if _, err := wire.DecodeService(wire.Remote{Name: "c1", ID: 7}, wire.ServiceKey("c1", "shop", "web"), b); err != nil {
		t.Fatalf("a reader would drop it: %v", err)
	}
}
