package statusapi

import (
	"fmt"
	"io"
	"net/netip"
	"strings"

	agentv1 "github.com/clustermesh/clustermesh/api/agent/v1"
)

// WorldIngress says whether a pod's ingress policy decides world on the
// host's path to it (docs/policy.md).
type WorldIngress struct {
	Enforced bool
	// State says why, or why not, in one sentence.
	State string
	// ClusterCIDRs are --cluster-cidrs (coexistence mode).
	ClusterCIDRs []netip.Prefix
	// NodePodCIDRs counts the own cluster's nodes' pod CIDRs.
	NodePodCIDRs int
}

// SetWorldIngress adds the state of the world decision to the policy
// status. Call it before Run.
func (s *Server) SetWorldIngress(f func() WorldIngress) { s.world = f }

func (s *Server) worldStatus() *agentv1.WorldIngress {
	if s.world == nil {
		return nil
	}
	w := s.world()
	out := &agentv1.WorldIngress{Enforced: w.Enforced, State: w.State, NodePodCidrs: uint32(w.NodePodCIDRs)}
	for _, p := range w.ClusterCIDRs {
		out.ClusterCidrs = append(out.ClusterCidrs, p.String())
	}
	return out
}

func printWorldIngress(w io.Writer, wi *agentv1.WorldIngress) {
	if wi == nil {
		return
	}
	verdict := "not enforced"
	if wi.GetEnforced() {
		verdict = "enforced"
	}
	fmt.Fprintf(w, "  world ingress: %s: %s\n", verdict, wi.GetState())
	if c := wi.GetClusterCidrs(); len(c) > 0 {
		fmt.Fprintf(w, "    cluster CIDRs: %s; node pod CIDRs: %d\n", strings.Join(c, ", "), wi.GetNodePodCidrs())
	}
}
