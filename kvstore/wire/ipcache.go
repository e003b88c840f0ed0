package wire

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
)

// IPIdentityPair maps an IP (or, with a Mask, a CIDR) to its security
// identity and the node hosting it, at IPKey(IP) (or IPPrefixKey). JSON keys
// and omitempty choices are those of Cilium's pkg/identity.IPIdentityPair.
//
// WARNING - STABLE WIRE API.
type IPIdentityPair struct {
	IP netip.Addr `json:"IP"`
	// Mask is nil for a host entry (written as null), else the CIDR's mask.
	Mask net.IPMask `json:"Mask"`
	// HostIP is the node hosting the IP: the tunnel endpoint.
	HostIP netip.Addr `json:"HostIP"`
	// ID is the numeric security identity.
	ID uint32 `json:"ID"`
	// Key is the index of the encryption key, 0 for none.
	Key               uint8       `json:"Key"`
	Metadata          string      `json:"Metadata"`
	K8sNamespace      string      `json:"K8sNamespace,omitempty"`
	K8sPodName        string      `json:"K8sPodName,omitempty"`
	K8sServiceAccount string      `json:"K8sServiceAccount,omitempty"`
	NamedPorts        []NamedPort `json:"NamedPorts,omitempty"`
}

// NamedPort is a named container port of the pod owning the IP.
type NamedPort struct {
	Name     string   `json:"Name"`
	Port     uint16   `json:"Port"`
	Protocol Protocol `json:"Protocol"`
}

// IsHost reports whether the pair is for a single IP (no Mask), as Cilium's
// IsHost does.
func (p *IPIdentityPair) IsHost() bool { return p.Mask == nil }

// Prefix returns the IP as a prefix: /32 or /128 for a host entry.
func (p *IPIdentityPair) Prefix() netip.Prefix {
	if p.IsHost() {
		return netip.PrefixFrom(p.IP, p.IP.BitLen())
	}
	ones, _ := p.Mask.Size()
	return netip.PrefixFrom(p.IP, ones)
}

// KeySuffix returns the last part of the pair's key: the IP for a host
// entry, "ip/bits" for a CIDR entry (Cilium's PrefixString).
func (p *IPIdentityPair) KeySuffix() string {
	if p.IsHost() {
		return p.IP.String()
	}
	return p.Prefix().String()
}

// hasKeySuffix reports whether KeySuffix is suffix, without allocating.
func (p *IPIdentityPair) hasKeySuffix(suffix string) bool {
	var buf [64]byte
	if p.IsHost() {
		return string(p.IP.AppendTo(buf[:0])) == suffix
	}
	return string(p.Prefix().AppendTo(buf[:0])) == suffix
}

// Validate checks the fields of p on their own (not against a remote): IP,
// mask, host IP, identity within 24 bits, named ports. Identity 0
// (IdentityUnknown) is valid: Cilium writes it for an endpoint whose
// identity is not resolved yet. Errors wrap ErrInvalid.
func (p *IPIdentityPair) Validate() error {
	if err := p.validate(); err != nil {
		return fmt.Errorf("ipcache entry %s: %w: %w", p.IP, ErrInvalid, err)
	}
	return nil
}

func (p *IPIdentityPair) validate() error {
	if err := validateAddr(p.IP, 0); err != nil {
		return err
	}
	if !p.IsHost() {
		bits, err := maskBits(p.Mask, p.IP)
		if err != nil {
			return fmt.Errorf("mask: %w", err)
		}
		if pfx := netip.PrefixFrom(p.IP, bits); pfx.Masked() != pfx {
			return fmt.Errorf("%s has host bits set", pfx)
		}
	}
	if p.HostIP.IsValid() {
		if err := validateAddr(p.HostIP, 0); err != nil {
			return fmt.Errorf("HostIP: %w", err)
		}
	}
	if p.ID > MaxIdentity {
		return fmt.Errorf("identity %d is not a valid numeric identity", p.ID)
	}
	for i, np := range p.NamedPorts {
		switch {
		case np.Name == "" || len(np.Name) > 63:
			return fmt.Errorf("NamedPorts[%d]: bad name %q", i, np.Name)
		case np.Port == 0:
			return fmt.Errorf("NamedPorts[%d]: port 0", i)
		case !np.Protocol.Valid():
			return fmt.Errorf("NamedPorts[%d]: protocol %q is not TCP, UDP or SCTP", i, np.Protocol)
		}
	}
	return nil
}

// MarshalIPIdentityPair encodes p as Cilium does, after checking it with
// Validate.
func MarshalIPIdentityPair(p IPIdentityPair) ([]byte, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(&p)
	if err != nil {
		return nil, fmt.Errorf("ipcache entry %s: %w", p.IP, err)
	}
	if len(b) > MaxValueSize {
		return nil, fmt.Errorf("ipcache entry %s: %w: %d bytes", p.IP, ErrTooLarge, len(b))
	}
	return b, nil
}

// DecodeIPIdentityPair decodes and validates the value of an ipcache key
// (state or kvstoremesh cache) read from remote r. The identity must belong
// to r's range (ClusterIdentityRange) or lie below FirstLocalID: Cilium's
// reserved identities 1..255 are not scoped by cluster, and 0 means "not
// known yet" (Cilium's validator accepts every ID below 256 too). What a
// reader programs for a decoded ID is RemoteIPCacheIdentity's business.
func DecodeIPIdentityPair(r Remote, key string, value []byte) (IPIdentityPair, error) {
	return decodeIPIdentityPair(r, key, value, true)
}

// DecodeIPIdentityPairRoute is DecodeIPIdentityPair for a reader of routes
// and identities only (the agent's remote ipcache): the value is checked
// alike, but Metadata, K8sNamespace, K8sPodName and K8sServiceAccount come
// back empty, so the pod's names are not copied for every entry.
func DecodeIPIdentityPairRoute(r Remote, key string, value []byte) (IPIdentityPair, error) {
	return decodeIPIdentityPair(r, key, value, false)
}

func decodeIPIdentityPair(r Remote, key string, value []byte, names bool) (IPIdentityPair, error) {
	if len(value) > MaxValueSize {
		return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w: %d bytes", key, ErrTooLarge, len(value))
	}
	if err := r.validate(); err != nil {
		return IPIdentityPair{}, err
	}
	cluster, suffix, err := ParseIPKey(key)
	if err != nil {
		return IPIdentityPair{}, err
	}
	if cluster != "" && cluster != r.Name {
		return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w: key is for cluster %q, connection for %q", key, ErrWrongCluster, cluster, r.Name)
	}
	p, ok := decodeIPIdentityPairFast(value, names)
	if !ok {
		var slow IPIdentityPair // on the heap only here: p stays on the stack
		if err := json.Unmarshal(value, &slow); err != nil {
			return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w: %v", key, ErrMalformed, err)
		}
		p = slow
		if !names {
			p.Metadata, p.K8sNamespace, p.K8sPodName, p.K8sServiceAccount = "", "", "", ""
		}
	}
	if err := p.Validate(); err != nil {
		return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w", key, err)
	}
	if len(p.NamedPorts) == 0 {
		p.NamedPorts = nil // omitempty: [] and absent read alike
	}
	if !p.hasKeySuffix(suffix) {
		return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w: value is for %s", key, ErrKeyMismatch, p.KeySuffix())
	}
	lo, hi := ClusterIdentityRange(r.ID, r.MaxConnectedClusters)
	if p.ID >= FirstLocalID && (p.ID < lo || p.ID > hi) {
		return IPIdentityPair{}, fmt.Errorf("ipcache %q: %w: identity %d not in %d..%d of cluster %q", key, ErrIdentityOutOfRange, p.ID, lo, hi, r.Name)
	}
	return p, nil
}

// Identities with a meaning of their own in remote ipcache entries
// (Cilium's pkg/identity numbering).
const (
	// IdentityUnknown is written for an endpoint whose identity is not
	// resolved yet; it selects nothing but the IP still routes to HostIP.
	IdentityUnknown uint32 = 0
	// IdentityHost is reserved:host: the node itself, as seen by the node.
	IdentityHost uint32 = 1
	// IdentityRemoteNode is reserved:remote-node: another node.
	IdentityRemoteNode uint32 = 6
)

// RemoteIPCacheIdentity returns the identity a reader programs for an
// ipcache entry of a remote cluster that carries id, as Cilium's
// IPIdentityWatcher does: a remote's host (1) is a remote node (6) here,
// never this node; every other ID, 0 included, is kept.
func RemoteIPCacheIdentity(id uint32) uint32 {
	if id == IdentityHost {
		return IdentityRemoteNode
	}
	return id
}
