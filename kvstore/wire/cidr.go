package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// CIDR is a pod CIDR of a Node. On the wire it is Cilium's *cidr.CIDR, that is
// a net.IPNet: {"IP":"10.1.0.0","Mask":"////AA=="} with the mask in base64,
// or null when unset (the zero CIDR). When reading, the string form
// "10.1.0.0/24" is accepted as well.
type CIDR struct {
	netip.Prefix
}

// MustParseCIDR parses "ip/bits" and panics on error; for tests and constants.
func MustParseCIDR(s string) CIDR { return CIDR{netip.MustParsePrefix(s)} }

type ipNetJSON struct {
	IP   string `json:"IP"`
	Mask []byte `json:"Mask"`
}

// MarshalJSON writes the net.IPNet object form, or null for the zero CIDR.
func (c CIDR) MarshalJSON() ([]byte, error) {
	if !c.IsValid() {
		return []byte("null"), nil
	}
	addr := c.Addr()
	return json.Marshal(ipNetJSON{
		IP:   addr.String(),
		Mask: net.CIDRMask(c.Bits(), addr.BitLen()),
	})
}

// UnmarshalJSON reads null, the net.IPNet object form or the string form.
// Host bits are cleared ("10.1.0.1/24" reads as 10.1.0.0/24), as Cilium's
// own reader does; Validate checks the rest.
func (c *CIDR) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	switch {
	case bytes.Equal(b, []byte("null")):
		*c = CIDR{}
		return nil
	case len(b) > 0 && b[0] == '"':
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return err
		}
		*c = CIDR{p.Masked()}
		return nil
	}
	var v ipNetJSON
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	p, err := ipNetPrefix(v.IP, v.Mask)
	if err != nil {
		return err
	}
	*c = CIDR{p}
	return nil
}

// ipNetPrefix is the prefix of the net.IPNet object form, host bits cleared.
func ipNetPrefix(ip string, mask []byte) (netip.Prefix, error) {
	addr, err := netip.ParseAddr(ip)
	if err != nil {
		return netip.Prefix{}, err
	}
	bits, err := maskBits(mask, addr)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(addr, bits).Masked(), nil
}

// maskBits returns the prefix length of a canonical (contiguous) mask of the
// right length for addr's family.
func maskBits(mask []byte, addr netip.Addr) (int, error) {
	ones, size := net.IPMask(mask).Size()
	if size == 0 {
		return 0, errors.New("non-canonical mask")
	}
	if size != addr.BitLen() {
		return 0, fmt.Errorf("%d-bit mask for a %d-bit address", size, addr.BitLen())
	}
	return ones, nil
}

// validatePrefix checks a prefix read from the wire: valid, no zone, no
// IPv4-mapped IPv6, no host bits set, and of the wanted family (4 or 6; 0:
// either).
func validatePrefix(p netip.Prefix, family int) error {
	if !p.IsValid() {
		return errors.New("invalid prefix")
	}
	if err := validateAddr(p.Addr(), family); err != nil {
		return err
	}
	if p.Masked() != p {
		return fmt.Errorf("%s has host bits set", p)
	}
	return nil
}

// validateAddr checks an address read from the wire: valid, no zone, not
// IPv4-mapped IPv6, and of the wanted family (4 or 6; 0: either).
func validateAddr(a netip.Addr, family int) error {
	switch {
	case !a.IsValid():
		return errors.New("invalid IP")
	case a.Zone() != "":
		return fmt.Errorf("IP %s has a zone", a)
	case a.Is4In6():
		return fmt.Errorf("IP %s is IPv4-mapped IPv6", a)
	case family == 4 && !a.Is4():
		return fmt.Errorf("IP %s is not IPv4", a)
	case family == 6 && !a.Is6():
		return fmt.Errorf("IP %s is not IPv6", a)
	}
	return nil
}
