package rules

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/spf13/pflag"

	"github.com/clustermesh/clustermesh/agent/internal/policy/selector"
	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// Sentinels for refused policies; a *RefusedError wraps one of them.
var (
	// ErrUnsupported: the policy uses a feature the datapath cannot enforce.
	ErrUnsupported = errors.New("not enforceable by the datapath")
	// ErrInvalid: the policy is malformed (unknown field, bad value).
	ErrInvalid = errors.New("invalid policy")
)

// RefusedError says why a policy was refused as a whole.
type RefusedError struct {
	Policy string // key of the policy, e.g. "cnp/shop/allow-web"
	Field  string // JSON path of the offending field, e.g. "spec.egress[0].toFQDNs"
	Reason string
	Err    error // ErrUnsupported or ErrInvalid
}

func (e *RefusedError) Error() string {
	where := e.Field
	if where != "" {
		where = " at " + where
	}
	return fmt.Sprintf("policy %q refused%s: %s: %v", e.Policy, where, e.Reason, e.Err)
}

func (e *RefusedError) Unwrap() error { return e.Err }

// Direction is ingress or egress.
type Direction uint8

// Directions.
const (
	Ingress Direction = iota
	Egress
)

func (d Direction) String() string {
	if d == Egress {
		return "egress"
	}
	return "ingress"
}

// ParseProtocol parses a policy's protocol: TCP, UDP, SCTP or ANY ("" is
// def).
func ParseProtocol(s string, def ipproto.Proto) (ipproto.Proto, bool) {
	if s == "" {
		return def, true
	}
	p, err := ipproto.Parse(s)
	if err != nil {
		return 0, false
	}
	switch p {
	case ipproto.TCP, ipproto.UDP, ipproto.SCTP, ipproto.Any:
		return p, true
	}
	return 0, false
}

// Port is one toPorts entry: a port range or a named port, with a protocol.
// Port 0 with no Name means every port.
type Port struct {
	Port    uint16
	EndPort uint16 // ≥ Port; equal to Port for a single port; 0 with Port 0
	Name    string // named port, resolved against the destination endpoint
	Proto   ipproto.Proto
}

// Peers is the set of peers a rule applies to.
type Peers struct {
	// All: every peer, identity or address (an L4-only rule, entity all, an
	// empty NetworkPolicy from/to).
	All bool
	// Selectors select peer identities. A CIDR peer is a selector of CIDR
	// labels (selector.CIDRSelector); every address of both families is
	// the world entity's selector.
	Selectors []selector.Selector
	// CIDRs are the prefixes the CIDR selectors name (except prefixes
	// included): each needs a CIDR identity for them to select anything.
	CIDRs []netip.Prefix
}

// Rule is one ingress, ingressDeny, egress or egressDeny entry.
type Rule struct {
	Direction Direction
	Deny      bool
	Index     int // position in its list (ingress, ingressDeny, ...)
	Peers     Peers
	Ports     []Port // empty: every port and protocol
}

// Spec is one subject selector with its rules (a CiliumNetworkPolicy may hold
// several in "specs").
type Spec struct {
	Subject selector.Selector
	// DefaultDeny per Direction: the spec puts its subjects in default-deny
	// for that direction.
	DefaultDeny [2]bool
	Rules       []Rule
}

// Policy is a translated policy.
type Policy struct {
	Key   string // "knp/<ns>/<name>", "cnp/<ns>/<name>", "ccnp/<name>"
	Specs []Spec
}

// Ref names the rule that decided a verdict.
type Ref struct {
	Policy    string
	Spec      int
	Direction Direction
	Deny      bool
	Index     int
}

// String renders the reference as "<policy> [specs[i].]<list>[<index>]".
func (r Ref) String() string {
	list := r.Direction.String()
	if r.Deny {
		list += "Deny"
	}
	spec := ""
	if r.Spec > 0 {
		spec = fmt.Sprintf("specs[%d].", r.Spec)
	}
	return fmt.Sprintf("%s %s%s[%d]", r.Policy, spec, list, r.Index)
}

// Compare orders references (policy, spec, direction, deny, index).
func (r Ref) Compare(o Ref) int {
	switch {
	case r.Policy != o.Policy:
		if r.Policy < o.Policy {
			return -1
		}
		return 1
	case r.Spec != o.Spec:
		return r.Spec - o.Spec
	case r.Direction != o.Direction:
		return int(r.Direction) - int(o.Direction)
	case r.Deny != o.Deny:
		if r.Deny {
			return 1
		}
		return -1
	}
	return r.Index - o.Index
}

// Options are the cluster-dependent parts of translation.
type Options struct {
	// ClusterName is the local cluster (entity cluster, default-local-cluster).
	ClusterName string
	// DefaultLocalCluster restricts peer selectors without a cluster term to
	// the local cluster (Cilium's --policy-default-local-cluster).
	DefaultLocalCluster bool
}

// DefaultOptions returns the defaults: DefaultLocalCluster on, as in Cilium
// 1.19. ClusterName comes from the agent's cluster configuration.
func DefaultOptions() Options { return Options{DefaultLocalCluster: true} }

// RegisterFlags registers --policy-default-local-cluster on fs.
func (o *Options) RegisterFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&o.DefaultLocalCluster, "policy-default-local-cluster", o.DefaultLocalCluster,
		"peer selectors without an io.cilium.k8s.policy.cluster term select endpoints of the local cluster only (false: of every connected cluster)")
}
