package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
)

// Node is a node of a cluster, at NodeKey(Cluster, Name). The JSON keys are
// the Go field names, and no field is omitted when empty, exactly as Cilium's
// pkg/node/types.Node (which has no JSON tags): unset IPs are "", unset
// CIDRs, lists and maps are null.
//
// WARNING - STABLE WIRE API.
type Node struct {
	Name        string
	Cluster     string
	IPAddresses []NodeAddress

	IPv4AllocCIDR           CIDR
	IPv4SecondaryAllocCIDRs []CIDR
	IPv6AllocCIDR           CIDR
	IPv6SecondaryAllocCIDRs []CIDR

	IPv4HealthIP  netip.Addr
	IPv6HealthIP  netip.Addr
	IPv4IngressIP netip.Addr
	IPv6IngressIP netip.Addr

	ClusterID uint32
	// Source says where the node's data came from: one of Cilium's
	// source values (NodeSource*); readers do not check it.
	Source        string
	EncryptionKey uint8
	Labels        map[string]string
	Annotations   map[string]string
	// NodeIdentity is Cilium's numeric identity of the node, 0 if none.
	NodeIdentity    uint32
	WireguardPubKey string
	BootID          string
}

// Node Source values, as Cilium's pkg/source names them.
const (
	// NodeSourceKubernetes: derived from Kubernetes objects (our apiserver
	// publishes Node objects with it).
	NodeSourceKubernetes = "k8s"
	// NodeSourceCustomResource: derived from a CiliumNode (what Cilium's
	// clustermesh-apiserver publishes).
	NodeSourceCustomResource = "custom-resource"
	// NodeSourceLocal: a node written by its own agent.
	NodeSourceLocal = "local"
	// NodeSourceKVStore: read from a kvstore.
	NodeSourceKVStore = "kvstore"
	// NodeSourceClusterMesh: what a Cilium reader sets on remote nodes.
	NodeSourceClusterMesh = "clustermesh"
)

// NodeAddress is one address of a node.
type NodeAddress struct {
	Type NodeAddressType
	IP   netip.Addr
}

// NodeAddressType says what an address of a node is.
type NodeAddressType string

// Address types a Node carries in IPAddresses (Kubernetes' node address
// types, plus Cilium's own internal IP of the cilium_host interface).
const (
	NodeInternalIP       NodeAddressType = "InternalIP"
	NodeExternalIP       NodeAddressType = "ExternalIP"
	NodeCiliumInternalIP NodeAddressType = "CiliumInternalIP"
)

// Validate checks the fields of n on their own (not against a remote): name,
// cluster name, addresses, CIDRs of the right family without host bits.
// Errors wrap ErrInvalid.
func (n *Node) Validate() error {
	if err := n.validate(); err != nil {
		return fmt.Errorf("node %s/%s: %w: %w", n.Cluster, n.Name, ErrInvalid, err)
	}
	return nil
}

func (n *Node) validate() error {
	if err := validateObjectName("name", n.Name); err != nil {
		return err
	}
	if err := ValidateClusterName(n.Cluster); err != nil {
		return err
	}
	for i, a := range n.IPAddresses {
		if a.Type == "" || len(a.Type) > 64 {
			return fmt.Errorf("IPAddresses[%d]: bad type %q", i, a.Type)
		}
		if err := validateAddr(a.IP, 0); err != nil {
			return fmt.Errorf("IPAddresses[%d]: %w", i, err)
		}
	}
	if err := validateOptionalPrefix("IPv4AllocCIDR", n.IPv4AllocCIDR.Prefix, 4); err != nil {
		return err
	}
	if err := validateOptionalPrefix("IPv6AllocCIDR", n.IPv6AllocCIDR.Prefix, 6); err != nil {
		return err
	}
	for i, c := range n.IPv4SecondaryAllocCIDRs {
		if err := validatePrefix(c.Prefix, 4); err != nil {
			return fmt.Errorf("IPv4SecondaryAllocCIDRs[%d]: %w", i, err)
		}
	}
	for i, c := range n.IPv6SecondaryAllocCIDRs {
		if err := validatePrefix(c.Prefix, 6); err != nil {
			return fmt.Errorf("IPv6SecondaryAllocCIDRs[%d]: %w", i, err)
		}
	}
	for _, f := range []struct {
		name   string
		ip     netip.Addr
		family int
	}{
		{"IPv4HealthIP", n.IPv4HealthIP, 4},
		{"IPv6HealthIP", n.IPv6HealthIP, 6},
		{"IPv4IngressIP", n.IPv4IngressIP, 4},
		{"IPv6IngressIP", n.IPv6IngressIP, 6},
	} {
		if f.ip.IsValid() {
			if err := validateAddr(f.ip, f.family); err != nil {
				return fmt.Errorf("%s: %w", f.name, err)
			}
		}
	}
	return nil
}

func validateOptionalPrefix(field string, p netip.Prefix, family int) error {
	if p == (netip.Prefix{}) {
		return nil
	}
	if err := validatePrefix(p, family); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

// validateObjectName accepts what Kubernetes accepts as a name or namespace
// (at most 253 characters), without "/" so that it is one key segment.
func validateObjectName(field, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%s is empty", field)
	case len(s) > 253:
		return fmt.Errorf("%s is longer than 253 characters", field)
	case strings.ContainsAny(s, "/\x00"):
		return fmt.Errorf("%s %q contains '/' or NUL", field, s)
	}
	return nil
}

// MarshalNode encodes n as Cilium does, after checking it with Validate so
// that a writer never publishes a value readers drop.
func MarshalNode(n Node) ([]byte, error) {
	if err := n.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&n)
	if err != nil {
		return nil, fmt.Errorf("node %s/%s: %w", n.Cluster, n.Name, err)
	}
	if len(b) > MaxNodeValueSize {
		return nil, fmt.Errorf("node %s/%s: %w: %d bytes", n.Cluster, n.Name, ErrTooLarge, len(b))
	}
	return b, nil
}

// DecodeNode decodes and validates the value of a node key (state or
// kvstoremesh cache) read from remote r.
func DecodeNode(r Remote, key string, value []byte) (Node, error) {
	if len(value) > MaxNodeValueSize {
		return Node{}, fmt.Errorf("node %q: %w: %d bytes", key, ErrTooLarge, len(value))
	}
	if err := r.validate(); err != nil {
		return Node{}, err
	}
	cluster, name, err := ParseNodeKey(key)
	if err != nil {
		return Node{}, err
	}
	if cluster != r.Name {
		return Node{}, fmt.Errorf("node %q: %w: key is for cluster %q, connection for %q", key, ErrWrongCluster, cluster, r.Name)
	}
	n, ok := decodeNodeFast(value)
	if !ok {
		var slow Node // on the heap only here: n stays on the stack
		if err := json.Unmarshal(value, &slow); err != nil {
			return Node{}, fmt.Errorf("node %q: %w: %v", key, ErrMalformed, err)
		}
		n = slow
	}
	switch {
	case n.Cluster != r.Name:
		return Node{}, fmt.Errorf("node %q: %w: value says cluster %q, connection for %q", key, ErrWrongCluster, n.Cluster, r.Name)
	case n.Name != name:
		return Node{}, fmt.Errorf("node %q: %w: value says name %q", key, ErrKeyMismatch, n.Name)
	case n.ClusterID != r.ID:
		return Node{}, fmt.Errorf("node %q: %w: value says %d, cluster %q has %d", key, ErrClusterIDMismatch, n.ClusterID, r.Name, r.ID)
	}
	for i, a := range n.IPAddresses {
		// Cilium's reader unmaps IPv4-mapped IPv6 node addresses; do the same
		// rather than drop the node.
		if a.IP.Is4In6() && a.IP.Zone() == "" {
			n.IPAddresses[i].IP = a.IP.Unmap()
		}
	}
	if err := n.Validate(); err != nil {
		return Node{}, err
	}
	return n, nil
}
