package daemon

import (
	"fmt"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/clustermesh/clustermesh/agent/internal/statusapi"
)

// worldIngress decides when the datapath takes a source without any
// ipcache entry for world on the host's path to a pod, and says where that
// stands (agent status, clustermesh status). In full mode it always does.
// Beside a primary CNI only with --cluster-cidrs, and only once the own
// cluster's state (its nodes' pod CIDRs and addresses, the ranges as world
// entries) is programmed: before, such a source may be the cluster's own.
type worldIngress struct {
	mode   string
	ranges []netip.Prefix
	// podCIDRs returns the own cluster's nodes' pod CIDRs seen so far.
	podCIDRs func() []netip.Prefix
	// turnOn sets the datapath's flags per family (nil: the memory
	// datapath).
	turnOn func(v4, v6 bool) error
	log    *slog.Logger

	mu  sync.Mutex
	on  bool  // guarded by mu: the datapath decides world
	err error // guarded by mu: turning it on failed
}

// afterFlush is what worldIngress needs of the datapath reconciler.
type afterFlush interface {
	AfterFlush(func(time.Time))
}

// ownSynced is called once the own cluster's state is handed in: the
// flush that programs it turns world on (coexist mode with ranges).
func (w *worldIngress) ownSynced(rec afterFlush) {
	if w.mode != ModeCoexist || len(w.ranges) == 0 {
		return
	}
	rec.AfterFlush(func(time.Time) {
		var err error
		if w.turnOn != nil {
			v4, v6 := w.families()
			err = w.turnOn(v4, v6)
		}
		w.mu.Lock()
		w.on, w.err = err == nil, err
		w.mu.Unlock()
		if err != nil {
			w.log.Error("cannot turn on the world decision beside the primary CNI; sources outside the cluster stay the host's path", "error", err)
			return
		}
		w.log.Info("world decided beside the primary CNI outside the cluster ranges", "cluster_cidrs", w.ranges)
	})
}

// families reports which families the ranges cover: world is decided
// only in those (a family without a range may hold the primary CNI's
// addresses anywhere).
func (w *worldIngress) families() (v4, v6 bool) {
	for _, p := range w.ranges {
		v4, v6 = v4 || p.Addr().Is4(), v6 || p.Addr().Is6()
	}
	return v4, v6
}

// Status returns the state for the agent's status.
func (w *worldIngress) Status() statusapi.WorldIngress {
	s := statusapi.WorldIngress{ClusterCIDRs: w.ranges}
	if w.podCIDRs != nil {
		s.NodePodCIDRs = len(w.podCIDRs())
	}
	s.Enforced, s.State = w.state()
	return s
}

// Report is the one-line state of the agent's status report (no counts:
// a node joining does not rewrite every agent's report).
func (w *worldIngress) Report() string {
	_, state := w.state()
	return state
}

// state reports whether world is decided, and why or why not.
func (w *worldIngress) state() (enforced bool, state string) {
	w.mu.Lock()
	on, err := w.on, w.err
	w.mu.Unlock()
	switch {
	case w.mode != ModeCoexist:
		return true, "full mode: every source without a pod identity is world (or remote-node)"
	case len(w.ranges) == 0:
		return false, "not decided beside the primary CNI: --cluster-cidrs is not set"
	case err != nil:
		return false, fmt.Sprintf("not decided: turning it on failed: %v", err)
	case !on:
		return false, "not decided yet: waiting for the own cluster's state to be programmed"
	}
	state = fmt.Sprintf("decided outside the cluster ranges (%s and the nodes' pod CIDRs)", prefixList(w.ranges))
	if v4, v6 := w.families(); !v4 || !v6 {
		state += map[bool]string{true: "; IPv6 not decided: no IPv6 range", false: "; IPv4 not decided: no IPv4 range"}[v4]
	}
	return true, state
}

func prefixList(ps []netip.Prefix) string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return strings.Join(out, ", ")
}
