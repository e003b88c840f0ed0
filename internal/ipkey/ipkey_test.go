package ipkey

import (
	"net/netip"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	tests := []struct {
		name   string
		prefix netip.Prefix
		addr   netip.Addr
	}{
		{name: "ipv4 host", prefix: netip.MustParsePrefix("10.2.3.4/32"), addr: netip.MustParseAddr("192.168.1.2")},
		{name: "ipv4 cidr", prefix: netip.MustParsePrefix("10.2.0.0/16"), addr: netip.MustParseAddr("0.0.0.0")},
		{name: "ipv4 default route", prefix: netip.MustParsePrefix("0.0.0.0/0"), addr: netip.MustParseAddr("255.255.255.255")},
		{name: "ipv6", prefix: netip.MustParsePrefix("fd00::5/128"), addr: netip.MustParseAddr("fc00::1")},
		{name: "ipv6 cidr", prefix: netip.MustParsePrefix("fd00::/64"), addr: netip.MustParseAddr("fc00::1")},
		{name: "ipv4-mapped ipv6 stays ipv6", prefix: netip.MustParsePrefix("::ffff:10.0.0.1/128"), addr: netip.MustParseAddr("::ffff:1.2.3.4")},
		{name: "unmasked bits kept", prefix: netip.PrefixFrom(netip.MustParseAddr("10.1.2.3"), 8), addr: netip.MustParseAddr("::")},
		{name: "invalid", prefix: netip.Prefix{}, addr: netip.Addr{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := FromPrefix(tc.prefix).Prefix(); got != tc.prefix {
				t.Errorf("prefix %v came back as %v", tc.prefix, got)
			}
			if got, want := FromPrefix(tc.prefix).IsSingleIP(), tc.prefix.IsSingleIP(); got != want {
				t.Errorf("prefix %v: IsSingleIP %v, want %v", tc.prefix, got, want)
			}
			if got := FromAddr(tc.addr).Addr(); got != tc.addr {
				t.Errorf("addr %v came back as %v", tc.addr, got)
			}
		})
	}
	if FromAddr(netip.MustParseAddr("10.0.0.1")) == FromAddr(netip.MustParseAddr("::ffff:10.0.0.1")) {
		t.Error("an IPv4 address and its IPv4-mapped IPv6 form are one key")
	}
	if got := FromAddr(netip.MustParseAddr("fe80::1%eth0")).Addr(); got != netip.MustParseAddr("fe80::1") {
		t.Errorf("zone not dropped: %v", got)
	}
}
