package localcluster

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"
)

// routeIfIndex dumps the routing tables (RTM_GETROUTE) and returns the output
// interface of the host route (/32 or /128) to ip.
func routeIfIndex(ip netip.Addr) (int, error) {
	family, bits := syscall.AF_INET, 32
	if ip.Is6() && !ip.Is4In6() {
		family, bits = syscall.AF_INET6, 128
	}
	ip = ip.Unmap()
	rib, err := syscall.NetlinkRIB(syscall.RTM_GETROUTE, family)
	if err != nil {
		return 0, fmt.Errorf("dump routes: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(rib)
	if err != nil {
		return 0, fmt.Errorf("parse routes: %w", err)
	}
	for _, m := range msgs {
		if m.Header.Type != syscall.RTM_NEWROUTE || len(m.Data) < syscall.SizeofRtMsg {
			continue
		}
		rt := (*syscall.RtMsg)(unsafe.Pointer(&m.Data[0]))
		if int(rt.Dst_len) != bits {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(&m)
		if err != nil {
			continue
		}
		var dst netip.Addr
		oif := 0
		for _, a := range attrs {
			switch a.Attr.Type {
			case syscall.RTA_DST:
				dst, _ = netip.AddrFromSlice(a.Value)
			case syscall.RTA_OIF:
				if len(a.Value) >= 4 {
					oif = int(binary.NativeEndian.Uint32(a.Value))
				}
			}
		}
		if dst == ip && oif > 0 {
			return oif, nil
		}
	}
	return 0, fmt.Errorf("%s: %w", ip, ErrNoRoute)
}
