package annotation

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		in      map[string]string
		want    Service
		invalid int
	}{
		{"none", nil, Service{Shared: true}, 0},
		{"global", map[string]string{Global: "true"}, Service{Global: true, Shared: true}, 0},
		{"global upper case and space", map[string]string{Global: " TRUE "}, Service{Global: true, Shared: true}, 0},
		{"aliases", map[string]string{GlobalAlias: "True", SharedAlias: "false", AffinityAlias: "local"},
			Service{Global: true, Affinity: AffinityLocal}, 0},
		{"name wins over alias", map[string]string{Global: "false", GlobalAlias: "true"}, Service{Shared: true}, 0},
		{"bad global", map[string]string{Global: "yes"}, Service{Shared: true}, 1},
		{"empty global", map[string]string{Global: ""}, Service{Shared: true}, 1},
		{"bad shared is not shared", map[string]string{Global: "true", Shared: "0"}, Service{Global: true}, 1},
		{"bad shared alias is not shared", map[string]string{Global: "true", SharedAlias: "nope"}, Service{Global: true}, 1},
		{"shared without global", map[string]string{Shared: "true"}, Service{Shared: true}, 0},
		{"bad affinity", map[string]string{Affinity: "nearest"}, Service{Shared: true}, 1},
		{"remote affinity", map[string]string{Affinity: "Remote"}, Service{Shared: true, Affinity: AffinityRemote}, 0},
		{"every value bad", map[string]string{Global: "1", Shared: "1", Affinity: "1"}, Service{}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := Parse(tt.in)
			if got != tt.want || len(errs) != tt.invalid {
				t.Fatalf("got %+v %v, want %+v with %d errors", got, errs, tt.want, tt.invalid)
			}
			for _, err := range errs {
				if !errors.Is(err, ErrInvalid) {
					t.Errorf("error %v does not wrap ErrInvalid", err)
				}
			}
		})
	}
}
