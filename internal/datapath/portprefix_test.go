package datapath

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestPortPrefixes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lo, hi uint16
		want   []PortPrefix
	}{
		{"one port", 80, 80, []PortPrefix{{80, 16}}},
		{"aligned pair", 80, 81, []PortPrefix{{80, 15}}},
		{"unaligned pair", 81, 82, []PortPrefix{{81, 16}, {82, 16}}},
		{"every port", 0, 65535, []PortPrefix{{0, 0}}},
		{"upper half", 32768, 65535, []PortPrefix{{32768, 1}}},
		{"1-65535", 1, 65535, nil}, // checked by coverage below
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := PortPrefixes(tc.lo, tc.hi)
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("PortPrefixes(%d, %d) = %v, want %v", tc.lo, tc.hi, got, tc.want)
			}
			checkCover(t, tc.lo, tc.hi, got)
		})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		a, b := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		checkCover(t, min(a, b), max(a, b), PortPrefixes(min(a, b), max(a, b)))
	}
}

// checkCover fails unless the prefixes cover lo..hi exactly, without overlap,
// in at most 2*16 prefixes.
func checkCover(t *testing.T, lo, hi uint16, ps []PortPrefix) {
	t.Helper()
	if len(ps) > 32 {
		t.Errorf("%d-%d: %d prefixes", lo, hi, len(ps))
	}
	covered := map[uint32]int{}
	for _, p := range ps {
		size := uint32(1) << (16 - p.Bits)
		if uint32(p.Port)%size != 0 {
			t.Fatalf("%d-%d: prefix %d/%d not aligned", lo, hi, p.Port, p.Bits)
		}
		for x := uint32(p.Port); x < uint32(p.Port)+size; x++ {
			covered[x]++
		}
	}
	for x := uint32(0); x < 65536; x++ {
		in := x >= uint32(lo) && x <= uint32(hi)
		if n := covered[x]; (in && n != 1) || (!in && n != 0) {
			t.Fatalf("%d-%d: port %d covered %d times", lo, hi, x, n)
		}
	}
}

func TestPolicyKeyMapKeys(t *testing.T) {
	for _, tc := range []struct {
		name string
		key  PolicyKey
		want int
	}{
		{"every protocol", PolicyKey{Peer: 2}, 1},
		{"every port", PolicyKey{Proto: ipproto.TCP}, 1},
		{"one port", PolicyKey{Proto: ipproto.TCP, Port: 80, EndPort: 80}, 1},
		{"aligned range", PolicyKey{Proto: ipproto.TCP, Port: 80, EndPort: 83}, 1},
		{"unaligned range", PolicyKey{Proto: ipproto.UDP, Port: 81, EndPort: 82}, 2},
		{"1-65535", PolicyKey{Proto: ipproto.TCP, Port: 1, EndPort: 65535}, 16},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.key.MapKeys(); got != tc.want {
				t.Errorf("MapKeys() = %d, want %d", got, tc.want)
			}
		})
	}
}
