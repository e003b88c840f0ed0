package bpf

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

func TestPortPrefixes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lo, hi uint16
		want   []portPrefix
	}{
		{"one port", 80, 80, []portPrefix{{80, 16}}},
		{"aligned pair", 80, 81, []portPrefix{{80, 15}}},
		{"unaligned pair", 81, 82, []portPrefix{{81, 16}, {82, 16}}},
		{"every port", 0, 65535, []portPrefix{{0, 0}}},
		{"upper half", 32768, 65535, []portPrefix{{32768, 1}}},
		{"1-65535", 1, 65535, nil}, // checked by coverage below
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := portPrefixes(tc.lo, tc.hi)
			if tc.want != nil && !slices.Equal(got, tc.want) {
				t.Errorf("portPrefixes(%d, %d) = %v, want %v", tc.lo, tc.hi, got, tc.want)
			}
			checkCover(t, tc.lo, tc.hi, got)
		})
	}
	r := rand.New(rand.NewPCG(1, 2))
	for range 200 {
		a, b := uint16(r.IntN(65536)), uint16(r.IntN(65536))
		checkCover(t, min(a, b), max(a, b), portPrefixes(min(a, b), max(a, b)))
	}
}

// checkCover fails unless the prefixes cover lo..hi exactly, without overlap,
// in at most 2*16 prefixes.
func checkCover(t *testing.T, lo, hi uint16, ps []portPrefix) {
	t.Helper()
	if len(ps) > 32 {
		t.Errorf("%d-%d: %d prefixes", lo, hi, len(ps))
	}
	covered := map[uint32]int{}
	for _, p := range ps {
		size := uint32(1) << (16 - p.bits)
		if uint32(p.port)%size != 0 {
			t.Fatalf("%d-%d: prefix %d/%d not aligned", lo, hi, p.port, p.bits)
		}
		for x := uint32(p.port); x < uint32(p.port)+size; x++ {
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

func TestMapKeys(t *testing.T) {
	for _, tc := range []struct {
		name    string
		key     datapath.PolicyKey
		deny    bool
		lens    []uint32
		wantErr bool
	}{
		{name: "every protocol", key: datapath.PolicyKey{Subject: 1, Peer: 2}, lens: []uint32{polFixedBits}},
		{name: "one protocol", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.UDP}, lens: []uint32{polFixedBits + 8}},
		{name: "one port", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 80}, deny: true, lens: []uint32{polFullBits}},
		{name: "range", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 83}, lens: []uint32{polFullBits - 2}},
		{name: "port without protocol", key: datapath.PolicyKey{Subject: 1, Port: 80, EndPort: 80}, wantErr: true},
		{name: "reversed range", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, Port: 80, EndPort: 79}, wantErr: true},
		{name: "end port alone", key: datapath.PolicyKey{Subject: 1, Proto: ipproto.TCP, EndPort: 79}, wantErr: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := validKey(tc.key); (err != nil) != tc.wantErr {
				t.Fatalf("validKey: %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				return
			}
			mks := mapKeys(tc.key, tc.deny)
			if len(mks) != len(tc.lens) {
				t.Fatalf("%d map keys, want %d", len(mks), len(tc.lens))
			}
			for i, mk := range mks {
				if mk.Prefixlen != tc.lens[i] || (mk.Deny == 1) != tc.deny || mk.Subject != hton32(tc.key.Subject) {
					t.Errorf("map key %d = %+v", i, mk)
				}
			}
		})
	}
}
