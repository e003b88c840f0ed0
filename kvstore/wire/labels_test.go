package wire

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

func TestLabelsFormatParse(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   Labels
		format string // canonical form, "" when it equals in
	}{
		{"empty", "", Labels{}, ""},
		{"golden", goldenIdentity, goldenIdentityValue().Labels, ""},
		{"unsorted is sorted", "k8s:b=2;k8s:a=1;", Labels{{"k8s", "a", "1"}, {"k8s", "b", "2"}}, "k8s:a=1;k8s:b=2;"},
		{"empty value", "reserved:host=;", Labels{{"reserved", "host", ""}}, ""},
		{"colon in key", "cidr:fd00::/64=;", Labels{{"cidr", "fd00::/64", ""}}, ""},
		{"equals and colon in value", "k8s:a=b=c:d;", Labels{{"k8s", "a", "b=c:d"}}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseLabels(tt.in)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Parse = %#v, want %#v", got, tt.want)
			}
			want := tt.format
			if want == "" {
				want = tt.in
			}
			if f := got.Format(); f != want {
				t.Errorf("Format = %q, want %q", f, want)
			}
		})
	}
}

func TestNewLabels(t *testing.T) {
	ls, err := NewLabels(Label{"k8s", NamespaceLabelKey, "shop"}, Label{"k8s", "app", "web"}, Label{"k8s", ClusterLabelKey, "c1"})
	if err != nil {
		t.Fatal(err)
	}
	if got := ls.Format(); got != goldenIdentity {
		t.Errorf("got %q", got)
	}
	if v, ok := ls.Get("k8s", ClusterLabelKey); !ok || v != "c1" {
		t.Errorf("Get = %q %v", v, ok)
	}
	tests := []struct {
		name string
		l    []Label
	}{
		{"empty source", []Label{{"", "a", "b"}}},
		{"colon in source", []Label{{"k:8s", "a", "b"}}},
		{"empty key", []Label{{"k8s", "", "b"}}},
		{"equals in key", []Label{{"k8s", "a=b", "c"}}},
		{"semicolon in value", []Label{{"k8s", "a", "b;c"}}},
		{"duplicate key", []Label{{"k8s", "a", "1"}, {"container", "a", "2"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := NewLabels(tt.l...); !errors.Is(err, ErrInvalid) {
				t.Errorf("err = %v", err)
			}
		})
	}
}

func TestTimestamp(t *testing.T) {
	at := time.Date(2026, 11, 23, 16, 40, 0, 0, time.FixedZone("x", 3600))
	b := FormatTimestamp(at)
	if string(b) != "2026-11-23T15:40:00Z" {
		t.Errorf("got %s", b)
	}
	tests := []struct {
		name string
		in   string
		want error
	}{
		{"utc", "2026-11-23T15:40:00Z", nil},
		{"offset and fraction", "2026-11-23T16:40:00.123+01:00", nil},
		{"garbage", "yesterday", ErrMalformed},
		{"too large", string(make([]byte, 65)), ErrTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseTimestamp([]byte(tt.in))
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
