package remotecluster

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/clustermesh/clustermesh/kvstore/watchstore"
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

// overlap describes the remote's node pod CIDRs that overlap the local
// cluster's, against the local CIDRs known now (so that the status is right
// whichever cluster's nodes were seen first), or returns "".
func (r *remote) overlap() string {
	local := r.m.localPodCIDRs()
	if len(local) == 0 {
		return ""
	}
	r.mu.Lock()
	nodes, _ := r.stores[kindNodes].(*watchstore.Store[nodeEntry])
	r.mu.Unlock()
	if nodes == nil {
		return ""
	}
	type hit struct{ key, text string }
	var hits []hit
	nodes.Range(func(key string, n nodeEntry) bool {
		for _, t := range n.routes {
			if l, bad := overlapping(t.cidr.Prefix(), local); bad {
				hits = append(hits, hit{key, fmt.Sprintf("%s of node %s overlaps %s", t.cidr.Prefix(), nodeName(key), l)})
			}
		}
		return true
	})
	slices.SortStableFunc(hits, func(a, b hit) int { return strings.Compare(a.key, b.key) })
	found := make([]string, len(hits))
	for i, h := range hits {
		found[i] = h.text
	}
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
