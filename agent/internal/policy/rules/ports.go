package rules

import (
	"fmt"
	"strconv"

	"github.com/clustermesh/clustermesh/internal/ipproto"
)

// portSpec validates one port entry. port is "" or "0" (every port), a
// number, or an IANA service name (a named port).
func portSpec(port string, endPort int32, proto ipproto.Proto) (Port, error) {
	if port == "" || port == "0" {
		if endPort != 0 {
			return Port{}, fmt.Errorf("endPort %d without a port", endPort)
		}
		return Port{Proto: proto}, nil
	}
	if n, err := strconv.Atoi(port); err == nil {
		return numericPort(n, endPort, proto)
	}
	if !isServiceName(port) {
		return Port{}, fmt.Errorf("port %q is neither a number in 1-65535 nor a port name", port)
	}
	if endPort != 0 {
		return Port{}, fmt.Errorf("endPort %d with named port %q", endPort, port)
	}
	return Port{Name: port, Proto: proto}, nil
}

func numericPort(n int, endPort int32, proto ipproto.Proto) (Port, error) {
	if n < 1 || n > 65535 {
		return Port{}, fmt.Errorf("port %d out of range 1-65535", n)
	}
	end := int(endPort)
	if end == 0 {
		end = n
	}
	if end < n || end > 65535 {
		return Port{}, fmt.Errorf("endPort %d must be in %d-65535", endPort, n)
	}
	return Port{Port: uint16(n), EndPort: uint16(end), Proto: proto}, nil
}

// isServiceName checks an IANA service name as Kubernetes does for named
// ports: 1-15 lower-case letters, digits and '-', at least one letter, no
// leading, trailing or doubled '-'.
func isServiceName(s string) bool {
	if len(s) == 0 || len(s) > 15 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9':
		case c == '-':
			if s[i-1] == '-' {
				return false
			}
		default:
			return false
		}
	}
	return letter
}
