package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// parsePrefix accepts a CIDR or a bare address (a host prefix).
func parsePrefix(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// subtract returns disjoint prefixes covering p minus every prefix of except.
// Every except must lie inside p (checked by the caller).
func subtract(p netip.Prefix, except []netip.Prefix) []netip.Prefix {
	var overlapping []netip.Prefix
	for _, e := range except {
		if e.Bits() <= p.Bits() && e.Contains(p.Addr()) {
			return nil // p is wholly excluded
		}
		if p.Overlaps(e) {
			overlapping = append(overlapping, e)
		}
	}
	if len(overlapping) == 0 {
		return []netip.Prefix{p}
	}
	lo, hi := halves(p)
	return append(subtract(lo, overlapping), subtract(hi, overlapping)...)
}

// halves splits p into its two sub-prefixes one bit longer.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	bits := p.Bits() + 1
	lo := netip.PrefixFrom(p.Addr(), bits)
	b := p.Addr().AsSlice()
	i := (bits - 1) / 8
	b[i] |= 0x80 >> ((bits - 1) % 8)
	a, _ := netip.AddrFromSlice(b)
	return lo, netip.PrefixFrom(a, bits)
}

// cidrSet resolves one cidr with its except list.
func cidrSet(cidr string, except []string) ([]netip.Prefix, error) {
	p, err := parsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("cidr %q: %w", cidr, err)
	}
	ex := make([]netip.Prefix, 0, len(except))
	for _, s := range except {
		e, err := parsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("except %q: %w", s, err)
		}
		if e.Addr().Is4() != p.Addr().Is4() || e.Bits() < p.Bits() || !p.Contains(e.Addr()) {
			return nil, fmt.Errorf("except %q is not inside cidr %q", s, cidr)
		}
		ex = append(ex, e)
	}
	return subtract(p, ex), nil
}

// everyAddress is the CIDR peer set the identity-keyed datapath enforces
// exactly: every address of both families, which is the world entity
// (Cilium: a CIDR selects only peers outside the cluster-managed
// endpoints, and 0.0.0.0/0 with ::/0 is reserved:world).
var everyAddress = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}

// errCIDRNotExact says why a CIDR peer other than every address is
// refused.
const errCIDRNotExact = "CIDR peers are enforced only as every address of both families " +
	"(0.0.0.0/0 with ::/0, the world entity): the datapath keys policy by identity and has no " +
	"identity per prefix, so any other prefix or an except would be enforced wider or narrower " +
	"than written; use fromEntities/toEntities world or endpoint selectors"

// cidrPeers turns a rule's CIDR peers (already normalized) into the world
// selector when they are every address of both families; anything else
// cannot be enforced exactly and is refused (ok false).
func cidrPeers(ps []netip.Prefix) (world, ok bool) {
	if len(ps) == 0 {
		return false, true
	}
	if slices.Equal(ps, everyAddress) {
		return true, true
	}
	return false, false
}

// normalize sorts prefixes and drops those covered by another.
func normalize(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	out := ps[:0]
	for _, p := range ps {
		if len(out) > 0 {
			last := out[len(out)-1]
			if last.Bits() <= p.Bits() && last.Contains(p.Addr()) {
				continue
			}
		}
		out = append(out, p)
	}
	return out
}
