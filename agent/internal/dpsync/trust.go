package dpsync

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/internal/datapath"
)

// ReservedHostIdentity is Cilium's reserved identity of the local host: a
// remote entry carrying it would grant an address the trust of this node.
const ReservedHostIdentity = 1

// Reason says why a remote's claim on a prefix is not programmed.
type Reason string

// The reasons of the trust rules (DESIGN §8), in the order they are checked.
const (
	// ReasonOverBroad: a default route, or shorter than the minimum length.
	ReasonOverBroad Reason = "over-broad prefix"
	// ReasonLocal: the prefix overlaps the local cluster's pod CIDRs, node
	// IPs or own entries, where the local cluster always wins.
	ReasonLocal Reason = "overlaps the local cluster"
	// ReasonHostIdentity: an ipcache entry with the reserved host identity.
	ReasonHostIdentity Reason = "reserved host identity"
	// ReasonNotOwned: an ipcache CIDR outside the remote's nodes' pod CIDRs
	// and outside the allow-list.
	ReasonNotOwned Reason = "outside the remote's pod CIDRs and the allow-list"
	// ReasonConflict: another remote claims the same prefix; both are
	// withdrawn.
	ReasonConflict Reason = "claimed by another remote"
)

// TrustConfig sets the limits of what a remote may claim.
type TrustConfig struct {
	// AllowedPrefixes are prefixes a remote's ipcache CIDR entries may lie
	// in besides its nodes' pod CIDRs.
	AllowedPrefixes []netip.Prefix
	// MinPrefixLenV4 and MinPrefixLenV6 refuse remote tunnel and ipcache
	// prefixes shorter than this (a /0 is always refused).
	MinPrefixLenV4, MinPrefixLenV6 int
}

// DefaultTrustConfig returns the defaults: nothing allowed beyond the pod
// CIDRs, prefixes at least /16 (IPv4) and /48 (IPv6).
func DefaultTrustConfig() TrustConfig {
	return TrustConfig{MinPrefixLenV4: 16, MinPrefixLenV6: 48}
}

// RegisterFlags registers the trust options on fs.
func (c *TrustConfig) RegisterFlags(fs *pflag.FlagSet) {
	fs.Func("remote-allowed-prefixes", "comma-separated CIDRs where remote ipcache CIDR entries may lie besides their nodes' pod CIDRs", func(s string) error {
		ps, err := ParsePrefixes(s)
		c.AllowedPrefixes = append(c.AllowedPrefixes, ps...)
		return err
	})
	fs.IntVar(&c.MinPrefixLenV4, "remote-min-prefix-length-v4", c.MinPrefixLenV4, "refuse remote IPv4 tunnel and ipcache prefixes shorter than this")
	fs.IntVar(&c.MinPrefixLenV6, "remote-min-prefix-length-v6", c.MinPrefixLenV6, "refuse remote IPv6 tunnel and ipcache prefixes shorter than this")
}

// Refusal is a remote's claim that is not programmed, and why.
type Refusal struct {
	Kind      string // "tunnel" or "ipcache"
	Prefix    netip.Prefix
	ClusterID uint32
	Reason    Reason
	// Claimants are the cluster IDs claiming the prefix, sorted (a conflict
	// lists both sides).
	Claimants []uint32
}

// localSet is the local cluster's prefixes: every node's pod CIDRs and
// addresses, by node name.
type localSet struct {
	byNode map[string][]netip.Prefix
	all    prefixSet
	delta  []netip.Prefix // added or removed since the last re-evaluation
}

func (l *localSet) set(node string, ps []netip.Prefix) {
	old := l.byNode[node]
	for _, p := range old {
		l.all.add(p, -1)
	}
	ps = slices.Clone(ps)
	for i, p := range ps {
		ps[i] = p.Masked()
		l.all.add(ps[i], 1)
	}
	if len(ps) == 0 {
		delete(l.byNode, node)
	} else {
		l.byNode[node] = ps
	}
	for _, p := range old {
		if !slices.Contains(ps, p) {
			l.delta = append(l.delta, p)
		}
	}
	for _, p := range ps {
		if !slices.Contains(old, p) {
			l.delta = append(l.delta, p)
		}
	}
	l.all.index()
}

// prefixSet is a counted set of prefixes with an overlap query.
type prefixSet struct {
	count  map[netip.Prefix]int
	bits   []int          // distinct lengths in count, sorted
	sorted []netip.Prefix // keys of count by address
}

func newPrefixSet(ps []netip.Prefix) prefixSet {
	s := prefixSet{count: map[netip.Prefix]int{}}
	for _, p := range ps {
		s.add(p, 1)
	}
	s.index()
	return s
}

func (s *prefixSet) add(p netip.Prefix, n int) {
	if s.count[p] += n; s.count[p] <= 0 {
		delete(s.count, p)
	}
}

func (s *prefixSet) index() {
	s.sorted, s.bits = s.sorted[:0], s.bits[:0]
	for p := range s.count {
		s.sorted = append(s.sorted, p)
		if !slices.Contains(s.bits, p.Bits()) {
			s.bits = append(s.bits, p.Bits())
		}
	}
	slices.SortFunc(s.sorted, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	slices.Sort(s.bits)
}

// overlaps reports whether p contains a prefix of s or lies in one.
func (s *prefixSet) overlaps(p netip.Prefix) bool {
	if s.within(p) {
		return true
	}
	i, _ := slices.BinarySearchFunc(s.sorted, p.Addr(), func(q netip.Prefix, a netip.Addr) int { return q.Addr().Compare(a) })
	return i < len(s.sorted) && p.Contains(s.sorted[i].Addr())
}

// SetLocalNode records the prefixes of a node of the local cluster (its
// pod CIDRs and its addresses as host prefixes); nil forgets the node.
// Remote claims overlapping them are refused.
func (r *Reconciler) SetLocalNode(name string, prefixes []netip.Prefix) {
	r.mu.Lock()
	r.local.set(name, prefixes)
	r.kickLocked()
	r.mu.Unlock()
}

// checkRemote returns why remote claim of cluster id on p (identity: of an
// ipcache entry, 0 for a tunnel) is refused, "" if it is not.
func (r *Reconciler) checkRemote(tunnel bool, p netip.Prefix, id, identity uint32) Reason {
	minLen := r.cfg.Trust.MinPrefixLenV4
	if p.Addr().Is6() {
		minLen = r.cfg.Trust.MinPrefixLenV6
	}
	switch {
	case p.Bits() == 0 || p.Bits() < minLen:
		return ReasonOverBroad
	case r.local.all.overlaps(p):
		return ReasonLocal
	case !tunnel && identity == ReservedHostIdentity:
		return ReasonHostIdentity
	case !tunnel && !p.IsSingleIP() && !r.ownedBy(p, id):
		return ReasonNotOwned
	}
	return ""
}

// ownedBy reports whether p lies in a pod CIDR that cluster id claims for
// one of its nodes, or in the allow-list.
func (r *Reconciler) ownedBy(p netip.Prefix, id uint32) bool {
	for _, a := range r.cfg.Trust.AllowedPrefixes {
		if a.Bits() <= p.Bits() && a.Contains(p.Addr()) {
			return true
		}
	}
	for b := p.Bits(); b >= 0; b-- {
		q, err := p.Addr().Prefix(b)
		if err != nil {
			continue
		}
		found := false
		r.tunnels.each(q, func(e datapath.TunnelEntry) { found = found || e.ClusterID == id })
		if found {
			return true
		}
	}
	return false
}

// decide returns the programmed value of key p of tab among its claims, and
// records the refused claims: the own cluster's claim wins; remote claims
// that break a rule are refused; two or more remaining remote claims
// conflict and are all withdrawn (the outcome does not depend on which came
// first, and no remote can take over another's address).
func decide[T any, C any](r *Reconciler, kind string, tab *table[T, C], p netip.Prefix, check func(*Reconciler, netip.Prefix, T) Reason) (T, bool) {
	if len(r.refused) > 0 { // hashing the key costs more than this check
		delete(r.refused, refusalKey{kind, p})
	}
	var own, win T
	var hasOwn bool
	var buf [2]uint32
	valid := buf[:0] // no allocation for the common single claim
	var refused []Refusal
	first, more, ok := tab.claims(p)
	if !ok {
		return own, false
	}
	for i := -1; i < len(more); i++ {
		c := first
		if i >= 0 {
			c = more[i]
		}
		id, e := tab.id(c), tab.dec(p, c)
		if id == r.cfg.ClusterID {
			own, hasOwn = e, true
			continue
		}
		if reason := check(r, p, e); reason != "" {
			refused = append(refused, Refusal{Kind: kind, Prefix: p, ClusterID: id, Reason: reason})
			continue
		}
		valid = append(valid, id)
		win = e
	}
	switch {
	case hasOwn:
		for _, id := range valid {
			refused = append(refused, Refusal{Kind: kind, Prefix: p, ClusterID: id, Reason: ReasonLocal})
		}
		win = own
	case len(valid) > 1:
		claimants := slices.Clone(valid) // valid stays on the stack
		slices.Sort(claimants)
		for _, id := range claimants {
			refused = append(refused, Refusal{Kind: kind, Prefix: p, ClusterID: id, Reason: ReasonConflict, Claimants: claimants})
		}
	}
	if len(refused) > 0 {
		slices.SortFunc(refused, func(a, b Refusal) int { return cmp.Compare(a.ClusterID, b.ClusterID) })
		r.refused[refusalKey{kind, p}] = refused
	}
	if hasOwn || len(valid) == 1 {
		return win, true
	}
	var zero T
	return zero, false
}

type refusalKey struct {
	kind   string
	prefix netip.Prefix
}

// tunnelWinner is the programmed tunnel of p.
func (r *Reconciler) tunnelWinner(p netip.Prefix) (datapath.TunnelEntry, bool) {
	return decide(r, "tunnel", &r.tunnels, p, checkTunnel)
}

// ipcacheWinner is the programmed ipcache entry of p.
func (r *Reconciler) ipcacheWinner(p netip.Prefix) (datapath.IPCacheEntry, bool) {
	return decide(r, "ipcache", &r.ipcache, p, checkIPCache)
}

func checkTunnel(r *Reconciler, p netip.Prefix, e datapath.TunnelEntry) Reason {
	return r.checkRemote(true, p, e.ClusterID, 0)
}

func checkIPCache(r *Reconciler, p netip.Prefix, e datapath.IPCacheEntry) Reason {
	return r.checkRemote(false, p, e.ClusterID, e.Identity)
}

// reevaluateLocked marks dirty what the trust rules may now decide
// otherwise: the claimed keys that overlap local prefixes added or removed
// since the last flush, and the ipcache CIDR entries (whose ownership
// depends on the tunnels) after a tunnel claim changed.
func (r *Reconciler) reevaluateLocked() {
	if len(r.local.delta) > 0 {
		changed := newPrefixSet(r.local.delta)
		r.local.delta = r.local.delta[:0]
		markOverlapping(&r.tunnels, &changed)
		markOverlapping(&r.ipcache, &changed)
		r.markLocalCIDRsLocked(&changed)
	}
	if len(r.tunnels.dirty) > 0 {
		for p := range r.ipcacheCIDRs {
			r.ipcache.dirty[p] = struct{}{}
		}
	}
}

func markOverlapping[T any, C any](t *table[T, C], s *prefixSet) {
	for p := range t.keys() {
		if s.overlaps(p) {
			t.dirty[p] = struct{}{}
		}
	}
}

// Refusals returns the remote claims that are not programmed, by cluster
// ID then prefix, as of the last flush.
func (r *Reconciler) Refusals() []Refusal {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Refusal
	for _, rs := range r.refused {
		out = append(out, rs...)
	}
	slices.SortFunc(out, func(a, b Refusal) int {
		return cmp.Or(cmp.Compare(a.ClusterID, b.ClusterID), strings.Compare(a.Kind, b.Kind), a.Prefix.Addr().Compare(b.Prefix.Addr()), cmp.Compare(a.Prefix.Bits(), b.Prefix.Bits()))
	})
	return out
}
