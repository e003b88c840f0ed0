package bpf

import (
	"errors"
	"fmt"
	"log/slog"
	"math/bits"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// The policy map key's fixed part (direction, verdict class, subject, peer)
// and the full key, in bits (see src/policy.h).
const (
	polFixedBits = 104
	polFullBits  = 128
)

// PolicyWriter programs the policy maps of a Datapath: cm_policy (an LPM
// trie of (subject, direction, verdict class, peer, protocol, port prefix)),
// cm_pol_mode (default deny per subject and direction) and cm_nodes (the
// nodes whose VNI identities are believed). A port range is written as the
// port prefixes that cover it; two keys may share a prefix (80-81 and 81),
// so every map key remembers the policy keys that own it and is deleted with
// the last. Like the Writer it is used by one goroutine at a time.
type PolicyWriter struct {
	d   *Datapath
	log *slog.Logger
	// keys: the verdict last written per policy key.
	keys map[datapath.PolicyKey]verdict
	// owners: per map key, the policy keys that expand to it and their rules.
	owners map[cmPolicyKey]ownerSet
	// stale: map keys found at start and not written since (Sweep deletes them).
	stale      map[cmPolicyKey]struct{}
	staleModes map[uint32]struct{}
	staleNodes map[uint32]struct{}
	noBatch    map[*ebpf.Map]bool // maps whose kernel rejected batch operations
}

func (w *PolicyWriter) unbatched() map[*ebpf.Map]bool { return w.noBatch }

// NewPolicyWriter returns a PolicyWriter for d's maps. What the maps hold
// from an earlier agent keeps being enforced until Sweep, which the caller
// runs once it has applied its whole desired state.
func NewPolicyWriter(d *Datapath, log *slog.Logger) (*PolicyWriter, error) {
	w := &PolicyWriter{
		d: d, log: log,
		keys:       map[datapath.PolicyKey]verdict{},
		owners:     map[cmPolicyKey]ownerSet{},
		stale:      map[cmPolicyKey]struct{}{},
		staleModes: map[uint32]struct{}{},
		staleNodes: map[uint32]struct{}{},
		noBatch:    map[*ebpf.Map]bool{},
	}
	o := &d.objs
	var k cmPolicyKey
	var v cmPolicyValue
	it := o.CmPolicy.Iterate()
	for it.Next(&k, &v) {
		w.stale[k] = struct{}{}
	}
	var id uint32
	var mv cmPolModeValue
	it2 := o.CmPolMode.Iterate()
	for it2.Next(&id, &mv) {
		w.staleModes[id] = struct{}{}
	}
	var nv cmNodeValue
	it3 := o.CmNodes.Iterate()
	for it3.Next(&id, &nv) {
		w.staleNodes[id] = struct{}{}
	}
	if err := errors.Join(it.Err(), it2.Err(), it3.Err()); err != nil {
		return nil, fmt.Errorf("read policy maps: %w", err)
	}
	return w, nil
}

// ErrBadPolicyKey is returned for a key the datapath cannot hold.
var ErrBadPolicyKey = errors.New("invalid policy key")

// Apply writes a batch: nodes and entries first, then modes (so an endpoint
// switched to default deny finds its allow entries), then deletes. Trusted
// nodes go in one batch syscall each way (a cold sync trusts thousands); a
// node that is not IPv4 is skipped and logged, as the tunnel and ipcache
// entries naming it are (the underlay is IPv4), so it never holds back the
// others. On error the part applied stays applied; the batch can be retried.
func (w *PolicyWriter) Apply(b datapath.PolicyBatch) error {
	o := &w.d.objs
	if len(b.UpsertNodes) > 0 {
		keys, vals := make([]uint32, 0, len(b.UpsertNodes)), make([]cmNodeValue, 0, len(b.UpsertNodes))
		var skipped []netip.Addr
		for _, n := range b.UpsertNodes {
			if !n.IP.Is4() {
				skipped = append(skipped, n.IP)
				continue
			}
			keys = append(keys, be32(n.IP))
			vals = append(vals, cmNodeValue{ClusterId: n.ClusterID, IdLo: n.IdentityLo, IdHi: n.IdentityHi})
		}
		if len(skipped) > 0 {
			w.log.Warn("skipped trusted nodes this datapath cannot hold: the underlay is IPv4", "count", len(skipped), "first", skipped[0])
		}
		if err := batchUpdate(w, o.CmNodes, keys, vals); err != nil {
			return fmt.Errorf("update %d trusted nodes: %w", len(keys), err)
		}
		for _, k := range keys {
			delete(w.staleNodes, k)
		}
	}
	for _, e := range b.Upserts {
		if err := w.upsert(e); err != nil {
			return err
		}
	}
	for _, m := range b.Modes {
		if err := w.setMode(m); err != nil {
			return err
		}
	}
	for _, k := range b.Deletes {
		if err := w.delete(k); err != nil {
			return err
		}
	}
	var del []uint32
	for _, ip := range b.DeleteNodes {
		if ip.Is4() {
			del = append(del, be32(ip))
		}
	}
	if err := batchDelete(w, o.CmNodes, del); err != nil {
		return fmt.Errorf("delete %d trusted nodes: %w", len(del), err)
	}
	return nil
}

func (w *PolicyWriter) setMode(m datapath.PolicyMode) error {
	mp := w.d.objs.CmPolMode
	delete(w.staleModes, m.Subject)
	if !m.Ingress && !m.Egress {
		if err := mp.Delete(&m.Subject); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy mode of %d: %w", m.Subject, err)
		}
		return nil
	}
	var v cmPolModeValue
	if m.Ingress {
		v.Enforced[0] = 1
	}
	if m.Egress {
		v.Enforced[1] = 1
	}
	if err := mp.Update(&m.Subject, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update policy mode of %d: %w", m.Subject, err)
	}
	return nil
}

func (w *PolicyWriter) upsert(e datapath.PolicyEntry) error {
	if err := validKey(e.Key); err != nil {
		return err
	}
	v := verdict{rule: e.Rule, deny: e.Deny}
	if old, ok := w.keys[e.Key]; ok {
		if old == v {
			return nil
		}
		if old.deny != e.Deny {
			if err := w.delete(e.Key); err != nil {
				return err
			}
		}
	}
	for _, mk := range mapKeys(e.Key, e.Deny) {
		own := w.owners[mk]
		own.set(e.Key, e.Rule)
		w.owners[mk] = own
		if err := w.writeKey(mk, own); err != nil {
			return err
		}
	}
	w.keys[e.Key] = v
	return nil
}

func (w *PolicyWriter) delete(k datapath.PolicyKey) error {
	old, ok := w.keys[k]
	if !ok {
		return nil
	}
	for _, mk := range mapKeys(k, old.deny) {
		own := w.owners[mk]
		if !own.remove(k) {
			w.owners[mk] = own
			if err := w.writeKey(mk, own); err != nil {
				return err
			}
			continue
		}
		delete(w.owners, mk)
		if err := w.d.objs.CmPolicy.Delete(&mk); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete policy key: %w", err)
		}
	}
	delete(w.keys, k)
	return nil
}

// writeKey writes a map key with the lowest rule id of its owners (so the
// value does not depend on the order of updates).
func (w *PolicyWriter) writeKey(mk cmPolicyKey, own ownerSet) error {
	v := cmPolicyValue{Rule: own.minRule()}
	if err := w.d.objs.CmPolicy.Update(&mk, &v, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("update policy key: %w", err)
	}
	delete(w.stale, mk)
	return nil
}

// verdict is what was written for a policy key.
type verdict struct {
	rule uint32
	deny bool
}

type owner struct {
	key  datapath.PolicyKey
	rule uint32
}

// ownerSet holds the policy keys that expand to one map key: almost always
// one (inline, no allocation); more when port ranges of one peer share a
// prefix. The zero value is empty.
type ownerSet struct {
	first owner
	has   bool
	more  []owner
}

// set adds k or updates its rule.
func (o *ownerSet) set(k datapath.PolicyKey, rule uint32) {
	switch {
	case !o.has:
		o.first, o.has = owner{k, rule}, true
		return
	case o.first.key == k:
		o.first.rule = rule
		return
	}
	for i := range o.more {
		if o.more[i].key == k {
			o.more[i].rule = rule
			return
		}
	}
	o.more = append(o.more, owner{k, rule})
}

// remove drops k and reports whether the set is empty.
func (o *ownerSet) remove(k datapath.PolicyKey) bool {
	if o.has && o.first.key == k {
		if len(o.more) == 0 {
			*o = ownerSet{}
			return true
		}
		o.first, o.more = o.more[len(o.more)-1], o.more[:len(o.more)-1]
		return false
	}
	for i := range o.more {
		if o.more[i].key == k {
			o.more = append(o.more[:i], o.more[i+1:]...)
			break
		}
	}
	return !o.has
}

func (o *ownerSet) minRule() uint32 {
	rule := o.first.rule
	for _, x := range o.more {
		rule = min(rule, x.rule)
	}
	return rule
}

// Sweep deletes what the maps held at start and no Apply wrote since.
func (w *PolicyWriter) Sweep() error {
	o := &w.d.objs
	var errs []error
	for k := range w.stale {
		if err := o.CmPolicy.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k := range w.staleModes {
		if err := o.CmPolMode.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for k := range w.staleNodes {
		if err := o.CmNodes.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	clear(w.stale)
	clear(w.staleModes)
	clear(w.staleNodes)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sweep policy maps: %w", err)
	}
	return nil
}

// PolicyMapMemlock returns the kernel memory cm_policy holds as the kernel
// accounts it (fdinfo memlock: its entries at the trie node's size; the
// trie's intermediate nodes are not counted).
func (d *Datapath) PolicyMapMemlock() (uint64, error) {
	info, err := d.objs.CmPolicy.Info()
	if err != nil {
		return 0, fmt.Errorf("read cm_policy info: %w", err)
	}
	m, ok := info.Memlock()
	if !ok {
		return 0, fmt.Errorf("read cm_policy info: %w", errors.ErrUnsupported)
	}
	return m, nil
}

// PolicyKeyPresent reports whether a lookup of each map key of k (verdict
// class deny) finds an entry in cm_policy: a longest-prefix match, so a
// wider entry of the same subject and peer counts too. A read of the kernel
// map, safe beside a writer; for tests and benchmarks.
func (d *Datapath) PolicyKeyPresent(k datapath.PolicyKey, deny bool) (bool, error) {
	if err := validKey(k); err != nil {
		return false, err
	}
	var v cmPolicyValue
	for _, mk := range mapKeys(k, deny) {
		err := d.objs.CmPolicy.Lookup(&mk, &v)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return false, nil
		}
		if err != nil {
			return false, fmt.Errorf("look up policy key: %w", err)
		}
	}
	return true, nil
}

// Capacity returns how many keys cm_policy holds at most.
func (w *PolicyWriter) Capacity() int { return int(w.d.objs.CmPolicy.MaxEntries()) }

// Entries returns the number of policy keys and of map keys written.
func (w *PolicyWriter) Entries() (keys, mapKeys int) { return len(w.keys), len(w.owners) }

func validKey(k datapath.PolicyKey) error {
	switch {
	case k.Port == 0 && k.EndPort != 0:
		return fmt.Errorf("%w: end port %d without a port", ErrBadPolicyKey, k.EndPort)
	case k.Port != 0 && k.EndPort < k.Port:
		return fmt.Errorf("%w: port range %d-%d", ErrBadPolicyKey, k.Port, k.EndPort)
	case k.Proto == ipproto.Any && k.Port != 0:
		return fmt.Errorf("%w: a port needs a protocol", ErrBadPolicyKey)
	}
	return nil
}

// mapKeys expands a policy key into the LPM keys that cover it.
func mapKeys(k datapath.PolicyKey, deny bool) []cmPolicyKey {
	base := cmPolicyKey{Subject: hton32(k.Subject), Peer: hton32(k.Peer), Proto: uint8(k.Proto)}
	if k.Egress {
		base.Egress = 1
	}
	if deny {
		base.Deny = 1
	}
	switch {
	case k.Proto == ipproto.Any:
		base.Prefixlen = polFixedBits
		base.Proto = 0
		return []cmPolicyKey{base}
	case k.Port == 0:
		base.Prefixlen = polFixedBits + 8
		return []cmPolicyKey{base}
	}
	var out []cmPolicyKey
	for _, pp := range datapath.PortPrefixes(k.Port, k.EndPort) {
		mk := base
		mk.Prefixlen = polFixedBits + 8 + uint32(pp.Bits)
		mk.Dport = be16(pp.Port)
		out = append(out, mk)
	}
	return out
}

// hton32 returns v with the byte order a network-order field needs on this
// (little-endian) host: the LPM trie compares the key's bytes in order.
func hton32(v uint32) uint32 { return bits.ReverseBytes32(v) }
