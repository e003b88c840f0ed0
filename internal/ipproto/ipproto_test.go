package ipproto

import "testing"

func TestParseString(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   string
		want Proto
		err  bool
	}{
		{name: "tcp", in: "TCP", want: TCP},
		{name: "udp", in: "UDP", want: UDP},
		{name: "sctp", in: "SCTP", want: SCTP},
		{name: "any", in: "ANY", want: Any},
		{name: "icmpv6", in: "ICMPv6", want: ICMPv6},
		{name: "lower case is not a name", in: "tcp", err: true},
		{name: "empty", in: "", err: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if tc.err {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
			if got.String() != tc.in {
				t.Fatalf("%v.String() = %q, want %q", got, got.String(), tc.in)
			}
		})
	}
	if s := Proto(99).String(); s != "proto(99)" {
		t.Fatalf("Proto(99).String() = %q", s)
	}
}
