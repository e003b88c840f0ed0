package selector

import (
	"slices"
	"testing"
)

func TestLabels(t *testing.T) {
	l := NewLabels(
		Label{Source: "k8s", Key: "app", Value: "web"},
		Label{Source: "container", Key: "app", Value: "other"},
		Label{Source: "k8s", Key: NamespaceLabel, Value: "shop"},
		Label{Source: "k8s", Key: "tier", Value: "old"},
		Label{Source: "k8s", Key: "tier", Value: "front"}, // replaces "old"
		Label{Source: "reserved", Key: "host"},
	)
	for _, tc := range []struct {
		name, source, key string
		want              []string
	}{
		{"one source", "k8s", "app", []string{"web"}},
		{"the other source", "container", "app", []string{"other"}},
		{"any source", SourceAny, "app", []string{"other", "web"}},
		{"replaced", "k8s", "tier", []string{"front"}},
		{"empty value", "reserved", "host", []string{""}},
		{"missing key", "k8s", "zone", nil},
		{"missing source", "reserved", "app", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := l.lookup(tc.source, tc.key); !slices.Equal(got, tc.want) {
				t.Errorf("lookup(%q, %q) = %q, want %q", tc.source, tc.key, got, tc.want)
			}
		})
	}
	if v, ok := l.Get("app"); !ok || v != "web" {
		t.Errorf("Get(app) = %q, %v; want the k8s value web", v, ok)
	}
	if v, ok := l.Get("zone"); ok {
		t.Errorf("Get(zone) = %q, want none", v)
	}
	if got, want := l.String(), "container:app=other,k8s:app=web,k8s:io.kubernetes.pod.namespace=shop,k8s:tier=front,reserved:host"; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
	if !l.Equal(MustParseLabels("k8s:tier=front", "reserved:host", "container:app=other", "app=web", "k8s:io.kubernetes.pod.namespace=shop")) {
		t.Error("the same labels in another order are not Equal")
	}
}
