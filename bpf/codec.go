package bpf

import (
	"encoding/binary"
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// Maps hold addresses and ports in network byte order inside fields that the
// generated Go types declare as host integers: convert through the bytes.

func be32(a netip.Addr) uint32 {
	b := a.As4()
	return binary.NativeEndian.Uint32(b[:])
}

func addrFrom(v uint32) netip.Addr {
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	return netip.AddrFrom4(b)
}

func be16(p uint16) uint16 {
	var b [2]byte
	binary.BigEndian.PutUint16(b[:], p)
	return binary.NativeEndian.Uint16(b[:])
}

func portFrom(v uint16) uint16 {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], v)
	return binary.BigEndian.Uint16(b[:])
}

func lpmKey(p netip.Prefix) cmLpm4Key {
	p = p.Masked()
	return cmLpm4Key{Prefixlen: uint32(p.Bits()), Addr: be32(p.Addr())}
}

func prefixFrom(k cmLpm4Key) netip.Prefix {
	return netip.PrefixFrom(addrFrom(k.Addr), int(k.Prefixlen))
}

// maxSlots bounds a service's selection table.
const maxSlots = 1 << 16

// slotTable returns, for each slot of a service's selection table, the index
// of the backend it selects: every backend of non-zero weight gets slots in
// proportion to its weight (weights reduced by their gcd, scaled down if the
// table would exceed maxSlots). Backends are interleaved so that a table
// prefix is itself balanced.
func slotTable(weights []uint16) []int {
	g := 0
	sum := 0
	for _, w := range weights {
		if w == 0 {
			continue
		}
		g = gcd(g, int(w))
	}
	if g == 0 {
		return nil
	}
	counts := make([]int, len(weights))
	for i, w := range weights {
		counts[i] = int(w) / g
		sum += counts[i]
	}
	if sum > maxSlots {
		total := sum
		sum = 0
		for i, w := range weights {
			if w == 0 {
				continue
			}
			counts[i] = max(1, counts[i]*maxSlots/total)
			sum += counts[i]
		}
	}
	out := make([]int, 0, sum)
	for len(out) < sum {
		for i := range counts {
			if counts[i] > 0 {
				out = append(out, i)
				counts[i]--
			}
		}
	}
	return out
}

func gcd(a, b int) int {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// stableSlots assigns backend ids to the slots of table (backend indexes into
// ids, as from slotTable) keeping every slot of old whose backend still wants
// that many slots, so that one backend change rewrites O(its slots) entries
// and the other backends keep their slots (and their flows' hash buckets
// where the table size is unchanged).
func stableSlots(old []uint32, ids []uint32, table []int) []uint32 {
	want := make(map[uint32]int, len(ids))
	for _, bi := range table {
		want[ids[bi]]++
	}
	out := make([]uint32, len(table))
	for pos := range min(len(out), len(old)) {
		if id := old[pos]; want[id] > 0 {
			out[pos] = id
			want[id]--
		}
	}
	// Fill the holes in table order, which interleaves backends.
	next := 0
	for _, bi := range table {
		id := ids[bi]
		if want[id] == 0 {
			continue
		}
		for out[next] != 0 {
			next++
		}
		out[next] = id
		want[id]--
	}
	return out
}

func in6(a netip.Addr) cmIn6 {
	b := a.As16()
	var r cmIn6
	for i := range r.W {
		r.W[i] = binary.NativeEndian.Uint32(b[4*i:])
	}
	return r
}

func addr6From(v cmIn6) netip.Addr {
	var b [16]byte
	for i, w := range v.W {
		binary.NativeEndian.PutUint32(b[4*i:], w)
	}
	return netip.AddrFrom16(b)
}

func lpm6Key(p netip.Prefix) cmLpm6Key {
	p = p.Masked()
	return cmLpm6Key{Prefixlen: uint32(p.Bits()), Addr: in6(p.Addr())}
}

func prefix6From(k cmLpm6Key) netip.Prefix {
	return netip.PrefixFrom(addr6From(k.Addr), int(k.Prefixlen))
}

func frontendFrom(k cmSvcKey) datapath.Frontend {
	return datapath.Frontend{
		Addr:  netip.AddrPortFrom(addrFrom(k.Vip), portFrom(k.Port)),
		Proto: ipproto.Proto(k.Proto),
	}
}

func frontend6From(k cmSvc6Key) datapath.Frontend {
	return datapath.Frontend{
		Addr:  netip.AddrPortFrom(addr6From(k.Vip), portFrom(k.Port)),
		Proto: ipproto.Proto(k.Proto),
	}
}

func svcKey(f datapath.Frontend) cmSvcKey {
	return cmSvcKey{Vip: be32(f.Addr.Addr()), Port: be16(f.Addr.Port()), Proto: uint8(f.Proto)}
}

func svc6Key(f datapath.Frontend) cmSvc6Key {
	return cmSvc6Key{Vip: in6(f.Addr.Addr()), Port: be16(f.Addr.Port()), Proto: uint8(f.Proto)}
}

func backendFrom(v cmBackendValue) beVal {
	return beVal{addr: netip.AddrPortFrom(addrFrom(v.Ip), portFrom(v.Port)), weight: v.Weight, cluster: v.ClusterId, index: v.Index}
}

func backend6From(v cmBackend6Value) beVal {
	return beVal{addr: netip.AddrPortFrom(addr6From(v.Ip), portFrom(v.Port)), weight: v.Weight, cluster: v.ClusterId, index: v.Index}
}
