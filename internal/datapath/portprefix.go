package datapath

import (
	"math/bits"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// PortPrefix is an aligned block of destination ports: the ports whose
// first Bits bits (of 16) equal Port's.
type PortPrefix struct {
	Port uint16
	Bits int // significant bits, 0..16
}

// PortPrefixes returns the fewest prefixes of the 16-bit port space that
// cover lo..hi exactly (at most 30).
func PortPrefixes(lo, hi uint16) []PortPrefix {
	var out []PortPrefix
	cur, end := uint32(lo), uint32(hi)
	for cur <= end {
		// The largest aligned block at cur that stays within end.
		size := uint32(1) << bits.TrailingZeros32(cur|1<<16)
		for cur+size-1 > end {
			size >>= 1
		}
		out = append(out, PortPrefix{Port: uint16(cur), Bits: 16 - bits.TrailingZeros32(size)})
		cur += size
	}
	return out
}

// MapKeys returns how many entries of the eBPF policy map k takes at most:
// one per port prefix of its range, one for a whole protocol or every
// protocol. Two keys with overlapping ranges of the same peer may share an
// entry, so the sum over keys is an upper bound of the map's use.
func (k PolicyKey) MapKeys() int {
	if k.Proto == ipproto.Any || k.Port == 0 || k.EndPort <= k.Port {
		return 1
	}
	return len(PortPrefixes(k.Port, k.EndPort))
}
