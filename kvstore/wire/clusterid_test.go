package wire

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
)

func ExampleClusterIDOf() {
	id := uint32(196915)
	fmt.Println(ClusterIDOf(id, 255), LocalIDOf(id, 255))
	made, _ := MakeIdentity(3, 307, 255)
	fmt.Println(made)
	lo, hi := IdentityRange(3, 255)
	fmt.Println(lo, hi)
	// Output:
	// 3 307
	// 196915
	// 196864 262143
}

func TestIdentityMath(t *testing.T) {
	tests := []struct {
		name           string
		cluster        uint32
		local          uint32
		max            int
		want           uint32
		wantLo, wantHi uint32 // IdentityRange
		fullLo         uint32 // ClusterIdentityRange low end
	}{
		{"255: cluster 3", 3, 307, 255, 196915, 3<<16 | 256, 4<<16 - 1, 3 << 16},
		{"255: cluster 1 first", 1, 256, 255, 65792, 65792, 131071, 65536},
		{"255: cluster 255 last", 255, 65535, 255, 1<<24 - 1, 255<<16 | 256, 1<<24 - 1, 255 << 16},
		{"511: cluster 3", 3, 307, 511, 3<<15 | 307, 3<<15 | 256, 4<<15 - 1, 3 << 15},
		{"511: cluster 511 last", 511, 32767, 511, 1<<24 - 1, 511<<15 | 256, 1<<24 - 1, 511 << 15},
		{"0 means 255", 3, 307, 0, 196915, 3<<16 | 256, 4<<16 - 1, 3 << 16},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MakeIdentity(tt.cluster, tt.local, tt.max)
			if err != nil || got != tt.want {
				t.Fatalf("MakeIdentity = %d, %v; want %d", got, err, tt.want)
			}
			if c := ClusterIDOf(got, tt.max); c != tt.cluster {
				t.Errorf("ClusterIDOf = %d", c)
			}
			if l := LocalIDOf(got, tt.max); l != tt.local {
				t.Errorf("LocalIDOf = %d", l)
			}
			if lo, hi := IdentityRange(tt.cluster, tt.max); lo != tt.wantLo || hi != tt.wantHi {
				t.Errorf("IdentityRange = %d..%d, want %d..%d", lo, hi, tt.wantLo, tt.wantHi)
			}
			if lo, hi := ClusterIdentityRange(tt.cluster, tt.max); lo != tt.fullLo || hi != tt.wantHi {
				t.Errorf("ClusterIdentityRange = %d..%d, want %d..%d", lo, hi, tt.fullLo, tt.wantHi)
			}
		})
	}
}

func TestMakeIdentityRefuses(t *testing.T) {
	tests := []struct {
		name           string
		cluster, local uint32
		max            int
	}{
		{"local too big for 16 bits", 1, 1 << 16, 255},
		{"local too big for 15 bits", 1, 1 << 15, 511},
		{"cluster above 255", 256, 300, 255},
		{"cluster above 511", 512, 300, 511},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := MakeIdentity(tt.cluster, tt.local, tt.max); !errors.Is(err, ErrInvalid) {
				t.Errorf("err = %v, want ErrInvalid", err)
			}
		})
	}
}

func TestValidateCluster(t *testing.T) {
	tests := []struct {
		name string
		cn   string
		id   uint32
		max  int
		want error
	}{
		{"ok", "c1", 1, 255, nil},
		{"ok 511", "eu-west-1", 511, 511, nil},
		{"ok 32 chars", strings.Repeat("a", 32), 7, 255, nil},
		{"id 0 outside a mesh", "default", 0, 255, nil},
		{"default with id", "default", 1, 255, ErrInvalidClusterName},
		{"33 chars", strings.Repeat("a", 33), 7, 255, ErrInvalidClusterName},
		{"upper case", "C1", 1, 255, ErrInvalidClusterName},
		{"leading dash", "-c1", 1, 255, ErrInvalidClusterName},
		{"trailing dash", "c1-", 1, 255, ErrInvalidClusterName},
		{"dot", "c.1", 1, 255, ErrInvalidClusterName},
		{"empty", "", 1, 255, ErrInvalidClusterName},
		{"single char", "a", 1, 255, nil},
		{"id 256 with 255", "c1", 256, 255, ErrInvalidClusterID},
		{"id 512 with 511", "c1", 512, 511, ErrInvalidClusterID},
		{"max 256", "c1", 1, 256, ErrInvalidMaxConnectedClusters},
		{"max 0", "c1", 1, 0, ErrInvalidMaxConnectedClusters},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateCluster(tt.cn, tt.id, tt.max)
			if tt.want == nil && err != nil || tt.want != nil && !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestValidateClusterID(t *testing.T) {
	tests := []struct {
		name string
		id   uint32
		max  int
		ok   bool
	}{
		{"0 reserved", 0, 255, false},
		{"1", 1, 255, true},
		{"255", 255, 255, true},
		{"256 with 255", 256, 255, false},
		{"256 with 511", 256, 511, true},
		{"511", 511, 511, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidateClusterID(tt.id, tt.max)
			if (err == nil) != tt.ok {
				t.Errorf("err = %v", err)
			}
			if err != nil && !errors.Is(err, ErrInvalidClusterID) {
				t.Errorf("err %v does not wrap ErrInvalidClusterID", err)
			}
		})
	}
}

// TestIsClusterNameMatchesRegexp checks the hand-written matcher against the
// regexp of DESIGN §3 on every string of up to 3 characters over an alphabet
// that covers each character class.
func TestIsClusterNameMatchesRegexp(t *testing.T) {
	re := regexp.MustCompile(`^([a-z0-9][-a-z0-9]*)?[a-z0-9]$`)
	alphabet := []string{"a", "z", "0", "9", "-", "A", ".", "_", "\xff"}
	var walk func(prefix string, depth int)
	walk = func(prefix string, depth int) {
		if got, want := isClusterName(prefix), re.MatchString(prefix); got != want {
			t.Errorf("isClusterName(%q) = %v, regexp says %v", prefix, got, want)
		}
		if depth == 0 {
			return
		}
		for _, c := range alphabet {
			walk(prefix+c, depth-1)
		}
	}
	walk("", 3)
}
