package bpf

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// RouteProtocol is the rtnetlink protocol of the routes SyncTunnelRoutes
// adds (`ip route show proto 193`): it tells ours from everyone else's.
const RouteProtocol = 193

// SyncTunnelRoutes makes the routes into the tunnel device ifindex (in the
// calling thread's network namespace) exactly cidrs, both families: missing
// ones are added (`<cidr> dev <tunnel> proto 193 scope link`), ours that are
// not wanted are deleted, routes of others are left alone. In coexistence
// mode the agent routes the remote clusters' pod CIDRs so: the host stack
// forwards the mesh's traffic (its conntrack and FORWARD rules see both
// directions) and the device's egress program (HookTunnelEgress) sets the
// tunnel key.
func SyncTunnelRoutes(ifindex int, cidrs []netip.Prefix) error {
	have, err := tunnelRoutes(ifindex)
	if err != nil {
		return err
	}
	want := map[netip.Prefix]bool{}
	var errs []error
	for _, c := range cidrs {
		c = c.Masked()
		want[c] = true
		if have[c] {
			continue
		}
		if err := netlink.RouteReplace(tunnelRoute(ifindex, c)); err != nil {
			errs = append(errs, fmt.Errorf("add route %s into the tunnel device: %w", c, err))
		}
	}
	for c := range have {
		if !want[c] {
			if err := netlink.RouteDel(tunnelRoute(ifindex, c)); err != nil && !errors.Is(err, unix.ESRCH) {
				errs = append(errs, fmt.Errorf("delete route %s from the tunnel device: %w", c, err))
			}
		}
	}
	return errors.Join(errs...)
}

// tunnelRoutes lists our routes (RouteProtocol) through ifindex.
func tunnelRoutes(ifindex int) (map[netip.Prefix]bool, error) {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_ALL,
		&netlink.Route{LinkIndex: ifindex, Protocol: RouteProtocol, Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_OIF|netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes of the tunnel device: %w", err)
	}
	have := map[netip.Prefix]bool{}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ones, _ := r.Dst.Mask.Size()
		if a, ok := netip.AddrFromSlice(r.Dst.IP); ok {
			have[netip.PrefixFrom(a.Unmap(), ones)] = true
		}
	}
	return have, nil
}

func tunnelRoute(ifindex int, c netip.Prefix) *netlink.Route {
	return &netlink.Route{
		LinkIndex: ifindex, Protocol: RouteProtocol, Scope: netlink.SCOPE_LINK, Table: unix.RT_TABLE_MAIN,
		Dst: &net.IPNet{IP: c.Addr().AsSlice(), Mask: net.CIDRMask(c.Bits(), c.Addr().BitLen())},
	}
}
