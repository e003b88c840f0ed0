package wire

import (
	"encoding/base64"
	"math"
	"net/netip"
)

// decodeNodeFast parses the shape in which Cilium and clustermesh write node
// values, without reflection: about five times cheaper than encoding/json,
// which took ≈ 7 µs per node and a tenth of a cold sync's CPU (25,000 nodes
// in the target of DESIGN §7).
//
// It accepts the strict subset of JSON that decodeIPIdentityPairFast
// accepts (keys exactly the field names of Node, each at most once; strings
// without escapes, in valid UTF-8; unsigned integers in plain decimal), with
// null only where Cilium writes it: CIDRs, lists and maps. Anything else,
// unknown keys included, reports ok == false and the caller falls back to
// encoding/json, so the fast path never decides what is malformed. It must
// never accept input that encoding/json decodes differently;
// FuzzNodeFastPath checks that.
func decodeNodeFast(b []byte) (n Node, ok bool) {
	s := scanner{b: b}
	if !s.consume('{') {
		return n, false
	}
	if s.consume('}') {
		return n, s.end()
	}
	var seen uint32
	for {
		key, ok := s.raw()
		if !ok || !s.consume(':') {
			return n, false
		}
		var bit uint32
		switch string(key) { // compared without allocating
		case "Name":
			bit = 1 << 0
			n.Name, ok = s.str()
		case "Cluster":
			bit = 1 << 1
			n.Cluster, ok = s.str()
		case "IPAddresses":
			bit = 1 << 2
			n.IPAddresses, ok = s.nodeAddresses()
		case "IPv4AllocCIDR":
			bit = 1 << 3
			n.IPv4AllocCIDR, ok = s.cidr()
		case "IPv4SecondaryAllocCIDRs":
			bit = 1 << 4
			n.IPv4SecondaryAllocCIDRs, ok = s.cidrs()
		case "IPv6AllocCIDR":
			bit = 1 << 5
			n.IPv6AllocCIDR, ok = s.cidr()
		case "IPv6SecondaryAllocCIDRs":
			bit = 1 << 6
			n.IPv6SecondaryAllocCIDRs, ok = s.cidrs()
		case "IPv4HealthIP":
			bit, ok = 1<<7, s.addr(&n.IPv4HealthIP)
		case "IPv6HealthIP":
			bit, ok = 1<<8, s.addr(&n.IPv6HealthIP)
		case "IPv4IngressIP":
			bit, ok = 1<<9, s.addr(&n.IPv4IngressIP)
		case "IPv6IngressIP":
			bit, ok = 1<<10, s.addr(&n.IPv6IngressIP)
		case "ClusterID":
			var v uint64
			v, ok = s.uint(math.MaxUint32)
			bit, n.ClusterID = 1<<11, uint32(v)
		case "Source":
			bit = 1 << 12
			n.Source, ok = s.source()
		case "EncryptionKey":
			var v uint64
			v, ok = s.uint(math.MaxUint8)
			bit, n.EncryptionKey = 1<<13, uint8(v)
		case "Labels":
			bit = 1 << 14
			n.Labels, ok = s.stringMap()
		case "Annotations":
			bit = 1 << 15
			n.Annotations, ok = s.stringMap()
		case "NodeIdentity":
			var v uint64
			v, ok = s.uint(math.MaxUint32)
			bit, n.NodeIdentity = 1<<16, uint32(v)
		case "WireguardPubKey":
			bit = 1 << 17
			n.WireguardPubKey, ok = s.str()
		case "BootID":
			bit = 1 << 18
			n.BootID, ok = s.str()
		default:
			return n, false
		}
		if !ok || seen&bit != 0 {
			return n, false
		}
		seen |= bit
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			return n, s.end()
		}
		return n, false
	}
}

// nodeAddresses reads IPAddresses: null (nil), or a list (non-nil, as
// encoding/json makes it) of {"Type":…,"IP":…} objects.
func (s *scanner) nodeAddresses() ([]NodeAddress, bool) {
	if s.null() {
		return nil, true
	}
	if !s.consume('[') {
		return nil, false
	}
	out := []NodeAddress{}
	if s.consume(']') {
		return out, true
	}
	for {
		a, ok := s.nodeAddress()
		if !ok {
			return nil, false
		}
		out = append(out, a)
		if s.consume(',') {
			continue
		}
		return out, s.consume(']')
	}
}

func (s *scanner) nodeAddress() (a NodeAddress, ok bool) {
	if !s.consume('{') {
		return a, false
	}
	if s.consume('}') {
		return a, true
	}
	var seen uint8
	for {
		key, ok := s.raw()
		if !ok || !s.consume(':') {
			return a, false
		}
		var bit uint8
		switch string(key) {
		case "Type":
			bit = 1 << 0
			a.Type, ok = s.addressType()
		case "IP":
			bit, ok = 1<<1, s.addr(&a.IP)
		default:
			return a, false
		}
		if !ok || seen&bit != 0 {
			return a, false
		}
		seen |= bit
		if s.consume(',') {
			continue
		}
		return a, s.consume('}')
	}
}

// cidr reads a CIDR as CIDR.UnmarshalJSON does: null, "ip/bits" or
// {"IP":…,"Mask":…} with both keys, each once; false for anything it
// would refuse (encoding/json then reports why).
func (s *scanner) cidr() (CIDR, bool) {
	if s.null() {
		return CIDR{}, true
	}
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '"' {
		v, ok := s.raw()
		if !ok {
			return CIDR{}, false
		}
		p, err := netip.ParsePrefix(string(v)) // no copy on the heap
		return CIDR{p.Masked()}, err == nil
	}
	if !s.consume('{') {
		return CIDR{}, false
	}
	var ip, mask []byte
	var maskBuf [16]byte
	var seen uint8
	for {
		key, ok := s.raw()
		if !ok || !s.consume(':') {
			return CIDR{}, false
		}
		var bit uint8
		switch string(key) {
		case "IP":
			bit = 1 << 0
			ip, ok = s.raw()
		case "Mask":
			bit = 1 << 1
			var m []byte
			if m, ok = s.raw(); ok {
				mask, ok = decodeMask(m, &maskBuf)
			}
		default:
			return CIDR{}, false
		}
		if !ok || seen&bit != 0 {
			return CIDR{}, false
		}
		seen |= bit
		if s.consume(',') {
			continue
		}
		if !s.consume('}') || seen != 1<<0|1<<1 {
			return CIDR{}, false
		}
		p, err := ipNetPrefix(string(ip), mask)
		return CIDR{p}, err == nil
	}
}

// cidrs reads a list of CIDRs: null (nil) or a list (non-nil).
func (s *scanner) cidrs() ([]CIDR, bool) {
	if s.null() {
		return nil, true
	}
	if !s.consume('[') {
		return nil, false
	}
	out := []CIDR{}
	if s.consume(']') {
		return out, true
	}
	for {
		c, ok := s.cidr()
		if !ok {
			return nil, false
		}
		out = append(out, c)
		if s.consume(',') {
			continue
		}
		return out, s.consume(']')
	}
}

// stringMap reads a map of strings: null (nil) or an object (non-nil);
// a key given twice keeps its last value, as with encoding/json.
func (s *scanner) stringMap() (map[string]string, bool) {
	if s.null() {
		return nil, true
	}
	if !s.consume('{') {
		return nil, false
	}
	m := map[string]string{}
	if s.consume('}') {
		return m, true
	}
	for {
		k, ok := s.str()
		if !ok || !s.consume(':') {
			return nil, false
		}
		v, ok := s.str()
		if !ok {
			return nil, false
		}
		m[k] = v
		if s.consume(',') {
			continue
		}
		return m, s.consume('}')
	}
}

// addressType reads a NodeAddressType; the common ones are not copied.
func (s *scanner) addressType() (NodeAddressType, bool) {
	v, ok := s.raw()
	if !ok {
		return "", false
	}
	switch string(v) { // compared without allocating
	case string(NodeInternalIP):
		return NodeInternalIP, true
	case string(NodeExternalIP):
		return NodeExternalIP, true
	case string(NodeCiliumInternalIP):
		return NodeCiliumInternalIP, true
	}
	return NodeAddressType(v), true
}

// source reads a node's Source; Cilium's values are not copied.
func (s *scanner) source() (string, bool) {
	v, ok := s.raw()
	if !ok {
		return "", false
	}
	for _, known := range [...]string{"", NodeSourceKubernetes, NodeSourceCustomResource, NodeSourceLocal, NodeSourceKVStore, NodeSourceClusterMesh} {
		if string(v) == known {
			return known, true
		}
	}
	return string(v), true
}

// decodeMask decodes a base64 mask as encoding/json decodes []byte, into
// buf when it fits (only its length in bits is kept).
func decodeMask(m []byte, buf *[16]byte) ([]byte, bool) {
	if base64.StdEncoding.DecodedLen(len(m)) > len(buf) {
		return decodeBase64(string(m))
	}
	n, err := base64.StdEncoding.Decode(buf[:], m)
	return buf[:n], err == nil
}
