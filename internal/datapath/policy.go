package datapath

import (
	"net/netip"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// PolicyKey is one resolved policy key of a local identity (the subject) in
// one direction: traffic with the peer identity (0: every peer) on a
// protocol (ipproto.Any: every protocol and port) and a destination port range
// (Port 0: every port; EndPort ≥ Port, equal for one port).
type PolicyKey struct {
	Subject uint32
	Egress  bool
	Peer    uint32
	Proto   ipproto.Proto
	Port    uint16
	EndPort uint16
}

// PolicyEntry is a key with its verdict and the id of the rule that decided
// it (drop events carry it back).
type PolicyEntry struct {
	Key  PolicyKey
	Deny bool
	Rule uint32
}

// PolicyMode says in which directions a local identity is in default deny
// (both false: default allow, the entry is removed).
type PolicyMode struct {
	Subject         uint32
	Ingress, Egress bool
}

// TrustedNode is a node whose underlay address may send tunnelled traffic:
// the source identity in the VNI is believed when it lies in
// [IdentityLo, IdentityHi) (the node's cluster's range) or is reserved.
type TrustedNode struct {
	IP                     netip.Addr
	ClusterID              uint32
	IdentityLo, IdentityHi uint32
}

// PolicyBatch is a set of policy changes applied together: upserts replace
// a key's verdict; deletes of absent keys are no-ops.
type PolicyBatch struct {
	Modes       []PolicyMode
	Upserts     []PolicyEntry
	Deletes     []PolicyKey
	UpsertNodes []TrustedNode
	DeleteNodes []netip.Addr
}

// DropReason says why the datapath dropped a packet.
type DropReason uint8

// Drop reasons.
const (
	DropPolicyDeny    DropReason = 1 // a deny rule matched
	DropPolicyDefault DropReason = 2 // default deny: no allow rule matched
)

func (r DropReason) String() string {
	switch r {
	case DropPolicyDeny:
		return "policy-deny"
	case DropPolicyDefault:
		return "default-deny"
	}
	return "unknown"
}

// Drop is a packet dropped by policy, as reported by the datapath.
type Drop struct {
	SrcIdentity, DstIdentity uint32
	SrcCluster               uint32
	// Rule is the deny rule's id (DropPolicyDeny); 0 for a default deny.
	Rule             uint32
	Src, Dst         netip.Addr
	SrcPort, DstPort uint16
	Proto            ipproto.Proto
	Egress           bool
	Reason           DropReason
}
