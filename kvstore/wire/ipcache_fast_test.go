package wire

import (
	"net"
	"net/netip"
	"reflect"
	"testing"
)

func TestIPIdentityPairFastPath(t *testing.T) {
	marshalled, err := MarshalIPIdentityPair(IPIdentityPair{IP: netip.MustParseAddr("fd00::700"), Mask: net.CIDRMask(120, 128), ID: 70000,
		HostIP: netip.MustParseAddr("fd00::1"), Key: 3, Metadata: "meta", K8sPodName: "p\u00e9", NamedPorts: []NamedPort{{"a", 1, UDP}, {"b", 65535, SCTP}}})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		value string
		fast  bool // whether the fast path handles it
	}{
		{"golden pod", goldenIPPod, true},
		{"golden cidr", goldenIPCIDR, true},
		{"written by MarshalIPIdentityPair", string(marshalled), true},
		{"white space", " {\n\t\"IP\" : \"10.1.0.7\" , \"ID\" : 7 }\r\n", true},
		{"empty named ports", `{"IP":"10.1.0.7","ID":7,"NamedPorts":[]}`, true},
		{"escaped string", `{"IP":"10.1.0.7","ID":7,"Metadata":"a\"b"}`, false},
		{"HTML-escaped by encoding/json", `{"IP":"10.1.0.7","ID":7,"Metadata":"\u003c"}`, false},
		{"lower-case key", `{"ip":"10.1.0.7","ID":7}`, false},
		{"unknown key", `{"IP":"10.1.0.7","ID":7,"CiliumIP":""}`, false},
		{"duplicate key", `{"IP":"10.1.0.7","ID":7,"ID":8}`, false},
		{"leading zero", `{"IP":"10.1.0.7","ID":07}`, false},
		{"fraction", `{"IP":"10.1.0.7","ID":7.0}`, false},
		{"exponent", `{"IP":"10.1.0.7","ID":7e0}`, false},
		{"negative", `{"IP":"10.1.0.7","ID":-7}`, false},
		{"overflow", `{"IP":"10.1.0.7","ID":4294967296}`, false},
		{"null IP", `{"IP":null,"ID":7}`, false},
		{"bad IP", `{"IP":"10.1.0.x","ID":7}`, false},
		{"invalid UTF-8", "{\"IP\":\"10.1.0.7\",\"ID\":7,\"Metadata\":\"\xff\"}", false},
		{"trailing data", `{"IP":"10.1.0.7","ID":7}x`, false},
		{"array", `[]`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fast, ok := decodeIPIdentityPairFast([]byte(tt.value), true)
			if ok != tt.fast {
				t.Fatalf("fast path ok = %v, want %v", ok, tt.fast)
			}
			if ok {
				sameAsJSON(t, []byte(tt.value), fast)
			}
			sameWithoutNames(t, []byte(tt.value), fast, ok)
		})
	}
}

func TestParseIPv4(t *testing.T) {
	for _, s := range []string{
		"10.1.0.7", "0.0.0.0", "255.255.255.255", "1.2.3.4", "256.1.1.1", "01.1.1.1", "1.1.1", "1.1.1.1.1", "1..1.1",
		"1.1.1.", ".1.1.1", "1.1.1.1 ", "", "::1", "fd00::1", "::ffff:1.2.3.4", "1.2.3.4%eth0", "1000.1.1.1", "0.00.0.0",
	} {
		got, ok := parseIPv4([]byte(s))
		want, err := netip.ParseAddr(s)
		if ok && (err != nil || got != want) {
			t.Errorf("parseIPv4(%q) = %v, ParseAddr = %v, %v", s, got, want, err)
		}
		if !ok && err == nil && want.Is4() {
			t.Errorf("parseIPv4(%q) refuses what ParseAddr reads as %v", s, want)
		}
	}
}

// FuzzParseIPv4 checks the IPv4 parser against netip.ParseAddr: whatever it
// accepts, ParseAddr reads as the same address.
func FuzzParseIPv4(f *testing.F) {
	for _, s := range []string{"10.1.0.7", "255.255.255.255", "01.1.1.1", "1.1.1.1.1", "::ffff:1.2.3.4"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		got, ok := parseIPv4(v)
		if !ok {
			return
		}
		want, err := netip.ParseAddr(string(v))
		if err != nil || got != want {
			t.Fatalf("parseIPv4(%q) = %v, ParseAddr = %v, %v", v, got, want, err)
		}
	})
}

// sameWithoutNames checks the fast path without names against the one with:
// it accepts the same values and decodes them alike, but for the names.
func sameWithoutNames(t *testing.T, value []byte, full IPIdentityPair, fullOK bool) {
	t.Helper()
	lean, ok := decodeIPIdentityPairFast(value, false)
	if ok != fullOK {
		t.Fatalf("without names ok = %v, with names %v, for %s", ok, fullOK, value)
	}
	full.Metadata, full.K8sNamespace, full.K8sPodName, full.K8sServiceAccount = "", "", "", ""
	if ok && !reflect.DeepEqual(lean, full) {
		t.Fatalf("without names\n got %#v\nwant %#v", lean, full)
	}
}
