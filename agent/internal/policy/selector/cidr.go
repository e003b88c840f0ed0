package selector

import (
	"net/netip"
	"strconv"
	"strings"
)

// SourceCIDR is the label source of CIDR identities ("cidr:10.0.0.0/8").
const SourceCIDR = "cidr"

// IdentityScopeLocal marks identities allocated by this agent alone (CIDR
// identities), as Cilium's local scope: numbers with bit 24 set, outside
// every cluster's 24-bit range, so they never travel in a VNI, are never
// published to the kvstore and no remote can claim them.
const IdentityScopeLocal ID = 1 << 24

// IsLocalScope reports whether id is a node-local (CIDR) identity.
func IsLocalScope(id ID) bool { return id&0xff000000 == IdentityScopeLocal }

// CIDRLabelKey is the label key of prefix p as Cilium writes it: the
// masked address and length; for IPv6 every ':' becomes '-' (a selector key
// cannot hold ':'), with a '0' added where the address would start or end
// with '-' ("2001-db8--0/32", "0--0/0").
func CIDRLabelKey(p netip.Prefix) string {
	p = p.Masked()
	a := p.Addr().String()
	if p.Addr().Is6() {
		a = strings.ReplaceAll(a, ":", "-")
		if strings.HasPrefix(a, "-") {
			a = "0" + a
		}
		if strings.HasSuffix(a, "-") {
			a += "0"
		}
	}
	return a + "/" + strconv.Itoa(p.Bits())
}

// CIDRLabels returns the labels of the CIDR identity of p: "cidr:" labels
// of p and of every shorter prefix that contains it (down to length 0),
// so that a selector of a wider prefix selects it, and reserved:world
// (a CIDR identity stands for addresses outside the cluster).
func CIDRLabels(p netip.Prefix) Labels {
	p = p.Masked()
	ls := make([]Label, 0, p.Bits()+2)
	for b := p.Bits(); b >= 0; b-- {
		q, _ := p.Addr().Prefix(b)
		ls = append(ls, Label{Source: SourceCIDR, Key: CIDRLabelKey(q)})
	}
	ls = append(ls, Label{Source: SourceReserved, Key: EntityWorld})
	return NewLabels(ls...)
}

// CIDRSelector selects the CIDR identities of p and of every prefix inside
// it, except those of the except prefixes and of prefixes inside them.
func CIDRSelector(p netip.Prefix, except []netip.Prefix) Selector {
	reqs := make([]Requirement, 0, 1+len(except))
	reqs = append(reqs, Requirement{Source: SourceCIDR, Key: CIDRLabelKey(p), Op: OpExists})
	for _, e := range except {
		reqs = append(reqs, Requirement{Source: SourceCIDR, Key: CIDRLabelKey(e), Op: OpDoesNotExist})
	}
	return build(reqs)
}
