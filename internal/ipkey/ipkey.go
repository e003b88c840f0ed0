package ipkey

import "net/netip"

// Addr is an address without pointers and without zone; the zero Addr is
// the invalid netip.Addr.
type Addr struct {
	a    [16]byte
	kind uint8 // 0 invalid, 4 or 6
}

// FromAddr converts a (its zone is dropped).
func FromAddr(a netip.Addr) Addr {
	switch {
	case a.Is4():
		return Addr{a: a.As16(), kind: 4}
	case a.IsValid():
		return Addr{a: a.As16(), kind: 6}
	}
	return Addr{}
}

// Addr converts back.
func (c Addr) Addr() netip.Addr {
	switch c.kind {
	case 4:
		return netip.AddrFrom16(c.a).Unmap()
	case 6:
		return netip.AddrFrom16(c.a)
	}
	return netip.Addr{}
}

// Prefix is a prefix without pointers; the zero Prefix is the invalid
// netip.Prefix.
type Prefix struct {
	Addr
	bits uint8
}

// FromPrefix converts p.
func FromPrefix(p netip.Prefix) Prefix {
	if !p.IsValid() {
		return Prefix{}
	}
	return Prefix{Addr: FromAddr(p.Addr()), bits: uint8(p.Bits())}
}

// IsSingleIP reports whether k holds exactly one address, as
// netip.Prefix.IsSingleIP, without converting back.
func (k Prefix) IsSingleIP() bool {
	return (k.kind == 4 && k.bits == 32) || (k.kind == 6 && k.bits == 128)
}

// Prefix converts back.
func (k Prefix) Prefix() netip.Prefix {
	if k.kind == 0 {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(k.Addr.Addr(), int(k.bits))
}
