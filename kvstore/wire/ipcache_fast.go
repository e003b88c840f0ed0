package wire

import (
	"encoding/base64"
	"math"
	"net/netip"
	"unicode/utf8"
)

// decodeIPIdentityPairFast parses the shape in which Cilium and clustermesh
// write ipcache values, without reflection: it is ~5x cheaper than
// encoding/json, and ipcache entries are by far the most numerous values a
// reader decodes (250k in the cold-sync target of DESIGN §7).
//
// It accepts a strict subset of JSON: one object whose keys are exactly the
// field names of IPIdentityPair, each at most once; strings without escapes
// or control characters and in valid UTF-8; unsigned integers without sign,
// fraction, exponent or leading zero; null only for Mask and NamedPorts.
// Anything else reports ok == false and the caller falls back to
// encoding/json, so the fast path never decides what is malformed. It must
// never accept input that encoding/json decodes differently;
// FuzzIPIdentityPairFastPath checks that.
//
// Without names, the strings a reader of routes does not need (Metadata,
// K8sNamespace, K8sPodName, K8sServiceAccount) are read and checked as
// with them but not copied: they stay empty.
func decodeIPIdentityPairFast(b []byte, names bool) (p IPIdentityPair, ok bool) {
	s := scanner{b: b}
	name := func(dst *string) bool {
		if names {
			*dst, ok = s.str()
			return ok
		}
		_, ok = s.raw()
		return ok
	}
	_, ok = s.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) { // compared without allocating
		case "IP":
			return 1 << 0, s.addr(&p.IP)
		case "Mask":
			if s.null() {
				return 1 << 1, true
			}
			var m string
			if m, ok = s.str(); ok {
				p.Mask, ok = decodeBase64(m)
			}
			return 1 << 1, ok
		case "HostIP":
			return 1 << 2, s.addr(&p.HostIP)
		case "ID":
			n, ok := s.uint(math.MaxUint32)
			p.ID = uint32(n)
			return 1 << 3, ok
		case "Key":
			n, ok := s.uint(math.MaxUint8)
			p.Key = uint8(n)
			return 1 << 4, ok
		case "Metadata":
			return 1 << 5, name(&p.Metadata)
		case "K8sNamespace":
			return 1 << 6, name(&p.K8sNamespace)
		case "K8sPodName":
			return 1 << 7, name(&p.K8sPodName)
		case "K8sServiceAccount":
			return 1 << 8, name(&p.K8sServiceAccount)
		case "NamedPorts":
			p.NamedPorts, ok = s.namedPorts()
			return 1 << 9, ok
		}
		return 0, false
	})
	return p, ok && s.end()
}

// object reads an object whose members field reads: for each key it returns
// the key's bit and whether it read the value; ok false for an unknown key.
// Each key may come once. seen has the bits of the keys read.
func (s *scanner) object(field func(key []byte) (bit uint32, ok bool)) (seen uint32, ok bool) {
	if !s.consume('{') {
		return 0, false
	}
	if s.consume('}') {
		return 0, true
	}
	for {
		key, ok := s.raw()
		if !ok || !s.consume(':') {
			return seen, false
		}
		bit, ok := field(key)
		if !ok || bit == 0 || seen&bit != 0 {
			return seen, false
		}
		seen |= bit
		if !s.consume(',') {
			return seen, s.consume('}')
		}
	}
}

func decodeBase64(s string) ([]byte, bool) {
	// As encoding/json decodes []byte: a non-nil slice, empty for "".
	out := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
	n, err := base64.StdEncoding.Decode(out, []byte(s))
	return out[:n], err == nil
}

// scanner reads the JSON subset of decodeIPIdentityPairFast.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// consume skips white space and then c, if c is next.
func (s *scanner) consume(c byte) bool {
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

// end reports whether only white space is left.
func (s *scanner) end() bool {
	s.ws()
	return s.i == len(s.b)
}

func (s *scanner) null() bool {
	s.ws()
	if len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "null" {
		s.i += 4
		return true
	}
	return false
}

// str reads a string without escapes or control characters, in valid UTF-8.
func (s *scanner) str() (string, bool) {
	v, ok := s.raw()
	if !ok {
		return "", false
	}
	return string(v), true
}

// raw is str without the copy: the bytes between the quotes.
func (s *scanner) raw() ([]byte, bool) {
	if !s.consume('"') {
		return nil, false
	}
	start := s.i
	for s.i < len(s.b) {
		c := s.b[s.i]
		switch {
		case c == '"':
			v := s.b[start:s.i]
			s.i++
			return v, utf8.Valid(v)
		case c == '\\' || c < 0x20:
			return nil, false
		}
		s.i++
	}
	return nil, false
}

// uint reads a non-negative integer up to max, written without leading zero,
// fraction or exponent.
func (s *scanner) uint(max uint64) (uint64, bool) {
	s.ws()
	start := s.i
	var n uint64
	for s.i < len(s.b) && '0' <= s.b[s.i] && s.b[s.i] <= '9' {
		n = n*10 + uint64(s.b[s.i]-'0')
		s.i++
		if n > max || s.i-start > 10 {
			return 0, false
		}
	}
	digits := s.i - start
	if digits == 0 || digits > 1 && s.b[start] == '0' {
		return 0, false
	}
	if s.i < len(s.b) {
		switch s.b[s.i] {
		case '.', 'e', 'E':
			return 0, false
		}
	}
	return n, true
}

// addr reads an IP as netip.Addr.UnmarshalText does ("" is the zero Addr).
func (s *scanner) addr(a *netip.Addr) bool {
	v, ok := s.raw()
	if !ok {
		return false
	}
	if len(v) == 0 {
		*a = netip.Addr{}
		return true
	}
	if ip, ok := parseIPv4(v); ok {
		*a = ip
		return true
	}
	var err error
	*a, err = netip.ParseAddr(string(v))
	return err == nil
}

// parseIPv4 parses the dotted decimal form that netip.ParseAddr accepts
// for IPv4 (four fields of 0–255 without leading zeros) without copying v
// to a string; false for anything else, which ParseAddr then decides.
func parseIPv4(v []byte) (netip.Addr, bool) {
	var out [4]byte
	field, digits, val := 0, 0, 0
	for i, c := range v {
		switch {
		case '0' <= c && c <= '9':
			if digits > 0 && val == 0 { // leading zero
				return netip.Addr{}, false
			}
			val = val*10 + int(c-'0')
			digits++
			if val > 255 {
				return netip.Addr{}, false
			}
		case c == '.' && digits > 0 && field < 3 && i < len(v)-1:
			out[field] = byte(val)
			field, digits, val = field+1, 0, 0
		default:
			return netip.Addr{}, false
		}
	}
	if field != 3 || digits == 0 {
		return netip.Addr{}, false
	}
	out[3] = byte(val)
	return netip.AddrFrom4(out), true
}

func (s *scanner) namedPorts() ([]NamedPort, bool) { return scanList(s, s.namedPort) }

// scanList reads null (a nil slice) or a list (non-nil, as encoding/json
// makes it) of elements that elem reads.
func scanList[T any](s *scanner, elem func() (T, bool)) ([]T, bool) {
	if s.null() {
		return nil, true
	}
	if !s.consume('[') {
		return nil, false
	}
	out := []T{}
	if s.consume(']') {
		return out, true
	}
	for {
		e, ok := elem()
		if !ok {
			return nil, false
		}
		out = append(out, e)
		if s.consume(',') {
			continue
		}
		return out, s.consume(']')
	}
}

func (s *scanner) namedPort() (np NamedPort, ok bool) {
	_, ok = s.object(func(key []byte) (bit uint32, ok bool) {
		switch string(key) {
		case "Name":
			np.Name, ok = s.str()
			return 1 << 0, ok
		case "Port":
			n, ok := s.uint(math.MaxUint16)
			np.Port = uint16(n)
			return 1 << 1, ok
		case "Protocol":
			v, ok := s.str()
			np.Protocol = Protocol(v)
			return 1 << 2, ok
		}
		return 0, false
	})
	return np, ok
}
