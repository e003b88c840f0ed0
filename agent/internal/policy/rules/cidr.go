package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
)

// MaxCIDRPrefixes bounds the distinct CIDR prefixes (except prefixes
// included) one policy may name: each becomes a CIDR identity and an
// ipcache entry, and a policy over the bound is refused rather than
// half-programmed.
const MaxCIDRPrefixes = 1024

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

// cidrPeer is one CIDR peer as written: a prefix and the prefixes inside it
// it excludes.
type cidrPeer struct {
	prefix netip.Prefix
	except []netip.Prefix
}

// cidrSet parses one cidr with its except list.
func cidrSet(cidr string, except []string) (cidrPeer, error) {
	p, err := parsePrefix(cidr)
	if err != nil {
		return cidrPeer{}, fmt.Errorf("cidr %q: %w", cidr, err)
	}
	c := cidrPeer{prefix: p, except: make([]netip.Prefix, 0, len(except))}
	for _, s := range except {
		e, err := parsePrefix(s)
		if err != nil {
			return cidrPeer{}, fmt.Errorf("except %q: %w", s, err)
		}
		if e.Addr().Is4() != p.Addr().Is4() || e.Bits() < p.Bits() || !p.Contains(e.Addr()) {
			return cidrPeer{}, fmt.Errorf("except %q is not inside cidr %q", s, cidr)
		}
		if !slices.Contains(c.except, e) {
			c.except = append(c.except, e)
		}
	}
	return c, nil
}

// isEveryAddress reports whether c is 0.0.0.0/0 or ::/0 without except.
func (c cidrPeer) isEveryAddress() bool { return c.prefix.Bits() == 0 && len(c.except) == 0 }

// cidrs adds a rule's CIDR peers (field: the first CIDR field), as Cilium
// does: each peer selects the CIDR identities of its prefix and of every
// narrower prefix in use, minus those of its except prefixes; every prefix
// named (except prefixes too) needs a CIDR identity (Peers.CIDRs). Every
// address of both families without except (0.0.0.0/0 with ::/0) is the
// world entity, which selects the world identity and every CIDR identity.
func (t *translator) cidrs(r *Rule, field string, peers []cidrPeer) error {
	if len(peers) == 0 {
		return nil
	}
	v4 := slices.ContainsFunc(peers, func(c cidrPeer) bool { return c.isEveryAddress() && c.prefix.Addr().Is4() })
	v6 := slices.ContainsFunc(peers, func(c cidrPeer) bool { return c.isEveryAddress() && c.prefix.Addr().Is6() })
	if v4 && v6 {
		sels, err := selector.EntitySelectors(selector.EntityWorld, t.opts.ClusterName)
		if err != nil {
			return t.refuse(field, err.Error(), ErrInvalid)
		}
		r.Peers.Selectors = append(r.Peers.Selectors, sels...)
		return nil
	}
	for _, c := range peers {
		r.Peers.Selectors = append(r.Peers.Selectors, selector.CIDRSelector(c.prefix, c.except))
		for _, p := range append([]netip.Prefix{c.prefix}, c.except...) {
			if !slices.Contains(r.Peers.CIDRs, p) {
				r.Peers.CIDRs = append(r.Peers.CIDRs, p)
			}
		}
	}
	if t.prefixes == nil {
		t.prefixes = map[netip.Prefix]struct{}{}
	}
	for _, p := range r.Peers.CIDRs {
		t.prefixes[p] = struct{}{}
	}
	if len(t.prefixes) > MaxCIDRPrefixes {
		return t.refuse(field, fmt.Sprintf("more than %d CIDR prefixes (except prefixes included) in one policy: "+
			"each needs an identity and an ipcache entry; split the policy", MaxCIDRPrefixes), ErrUnsupported)
	}
	return nil
}

// Prefixes returns every CIDR prefix the policy's rules name (except
// prefixes included), each once, sorted.
func (p Policy) Prefixes() []netip.Prefix {
	var out []netip.Prefix
	for _, s := range p.Specs {
		for _, r := range s.Rules {
			out = append(out, r.Peers.CIDRs...)
		}
	}
	slices.SortFunc(out, ComparePrefixes)
	return slices.Compact(out)
}

// ComparePrefixes orders prefixes by address, then length.
func ComparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}
