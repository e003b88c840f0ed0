package ipproto

import "fmt"

// Proto is an L4 protocol number as carried in the IP header; Any (0)
// stands for every protocol in a policy key.
type Proto uint8

// The protocols.
const (
	Any    Proto = 0
	ICMP   Proto = 1
	TCP    Proto = 6
	UDP    Proto = 17
	ICMPv6 Proto = 58
	SCTP   Proto = 132
)

var names = map[Proto]string{Any: "ANY", ICMP: "ICMP", TCP: "TCP", UDP: "UDP", ICMPv6: "ICMPv6", SCTP: "SCTP"}

func (p Proto) String() string {
	if n, ok := names[p]; ok {
		return n
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Parse parses a protocol name as String prints it (ANY, ICMP, TCP, UDP,
// ICMPv6, SCTP). Callers restrict the set to what their context allows.
func Parse(s string) (Proto, error) {
	for p, n := range names {
		if n == s {
			return p, nil
		}
	}
	return 0, fmt.Errorf("unknown protocol %q", s)
}
