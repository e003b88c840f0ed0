package remotecluster

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"strings"
)

// ErrPodCIDROverlap says that a remote node's pod CIDR overlaps the local
// cluster's pod CIDRs: pod CIDRs must be unique across the mesh, and such a
// CIDR is refused (never routed to the remote node), so local pods stay
// reachable. It is reported in the remote's status.
var ErrPodCIDROverlap = errors.New("pod CIDR overlaps the local cluster's pod CIDRs")

// overlapping returns the local CIDR that p overlaps, if any.
func overlapping(p netip.Prefix, local []netip.Prefix) (netip.Prefix, bool) {
	for _, l := range local {
		if l.Overlaps(p) {
			return l, true
		}
	}
	return netip.Prefix{}, false
}

func (m *Manager) localPodCIDRs() []netip.Prefix {
	if m.cfg.LocalPodCIDRs == nil {
		return nil
	}
	return m.cfg.LocalPodCIDRs()
}

// setNodeCIDRs records the pod CIDRs of the remote's node key (nil: the
// node is gone) and returns the previous ones.
func (r *remote) setNodeCIDRs(key string, cidrs []netip.Prefix) []netip.Prefix {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.nodeCIDRs[key]
	if cidrs == nil {
		delete(r.nodeCIDRs, key)
		return prev
	}
	if r.nodeCIDRs == nil {
		r.nodeCIDRs = map[string][]netip.Prefix{}
	}
	r.nodeCIDRs[key] = cidrs
	return prev
}

// overlap describes the remote's node pod CIDRs that overlap the local
// cluster's, against the local CIDRs known now (so that the status is right
// whichever cluster's nodes were seen first), or returns "".
func (r *remote) overlap() string {
	local := r.m.localPodCIDRs()
	if len(local) == 0 {
		return ""
	}
	r.mu.Lock()
	keys := slices.Sorted(maps.Keys(r.nodeCIDRs))
	var found []string
	for _, k := range keys {
		for _, p := range r.nodeCIDRs[k] {
			if l, bad := overlapping(p, local); bad {
				found = append(found, fmt.Sprintf("%s of node %s overlaps %s", p, nodeName(k), l))
			}
		}
	}
	r.mu.Unlock()
	if len(found) == 0 {
		return ""
	}
	more := ""
	if len(found) > 3 {
		more = fmt.Sprintf(" (and %d more)", len(found)-3)
		found = found[:3]
	}
	return fmt.Sprintf("%v: %s%s; pod CIDRs must be unique across the mesh", ErrPodCIDROverlap, strings.Join(found, ", "), more)
}

// nodeName is the last element of a node key (cilium/state/nodes/v1/<cluster>/<node>).
func nodeName(key string) string {
	return key[strings.LastIndex(key, "/")+1:]
}
