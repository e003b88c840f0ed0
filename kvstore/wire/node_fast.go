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
	_, ok = s.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) { // compared without allocating
		case "Name":
			n.Name, ok = s.str()
			return 1 << 0, ok
		case "Cluster":
			n.Cluster, ok = s.str()
			return 1 << 1, ok
		case "IPAddresses":
			n.IPAddresses, ok = s.nodeAddresses()
			return 1 << 2, ok
		case "IPv4AllocCIDR":
			n.IPv4AllocCIDR, ok = s.cidr()
			return 1 << 3, ok
		case "IPv4SecondaryAllocCIDRs":
			n.IPv4SecondaryAllocCIDRs, ok = s.cidrs()
			return 1 << 4, ok
		case "IPv6AllocCIDR":
			n.IPv6AllocCIDR, ok = s.cidr()
			return 1 << 5, ok
		case "IPv6SecondaryAllocCIDRs":
			n.IPv6SecondaryAllocCIDRs, ok = s.cidrs()
			return 1 << 6, ok
		case "IPv4HealthIP":
			return 1 << 7, s.addr(&n.IPv4HealthIP)
		case "IPv6HealthIP":
			return 1 << 8, s.addr(&n.IPv6HealthIP)
		case "IPv4IngressIP":
			return 1 << 9, s.addr(&n.IPv4IngressIP)
		case "IPv6IngressIP":
			return 1 << 10, s.addr(&n.IPv6IngressIP)
		case "ClusterID":
			v, ok := s.uint(math.MaxUint32)
			n.ClusterID = uint32(v)
			return 1 << 11, ok
		case "Source":
			n.Source, ok = s.source()
			return 1 << 12, ok
		case "EncryptionKey":
			v, ok := s.uint(math.MaxUint8)
			n.EncryptionKey = uint8(v)
			return 1 << 13, ok
		case "Labels":
			n.Labels, ok = s.stringMap()
			return 1 << 14, ok
		case "Annotations":
			n.Annotations, ok = s.stringMap()
			return 1 << 15, ok
		case "NodeIdentity":
			v, ok := s.uint(math.MaxUint32)
			n.NodeIdentity = uint32(v)
			return 1 << 16, ok
		case "WireguardPubKey":
			n.WireguardPubKey, ok = s.str()
			return 1 << 17, ok
		case "BootID":
			n.BootID, ok = s.str()
			return 1 << 18, ok
		}
		return 0, false
	})
	return n, ok && s.end()
}

// nodeAddresses reads IPAddresses: null or a list of {"Type":…,"IP":…}.
func (s *scanner) nodeAddresses() ([]NodeAddress, bool) { return scanList(s, s.nodeAddress) }

func (s *scanner) nodeAddress() (a NodeAddress, ok bool) {
	_, ok = s.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) {
		case "Type":
			a.Type, ok = s.addressType()
			return 1 << 0, ok
		case "IP":
			return 1 << 1, s.addr(&a.IP)
		}
		return 0, false
	})
	return a, ok
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
		p, err := netip.ParsePrefix(string(v))
		return CIDR{p.Masked()}, err == nil
	}
	var ip, mask []byte
	var maskBuf [16]byte
	seen, ok := s.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) {
		case "IP":
			ip, ok = s.raw()
			return 1 << 0, ok
		case "Mask":
			var m []byte
			if m, ok = s.raw(); ok {
				mask, ok = decodeMask(m, &maskBuf)
			}
			return 1 << 1, ok
		}
		return 0, false
	})
	if !ok || seen != 1<<0|1<<1 {
		return CIDR{}, false
	}
	p, err := ipNetPrefix(string(ip), mask)
	return CIDR{p}, err == nil
}

// cidrs reads a list of CIDRs: null or a list.
func (s *scanner) cidrs() ([]CIDR, bool) { return scanList(s, s.cidr) }

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
