package bpf

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TunnelConfig says which vxlan external device carries the node's tunnel
// traffic and whether the agent creates (and owns) it.
type TunnelConfig struct {
	// Device is the name of the device; "" means no tunnel.
	Device string
	// Create creates Device when it is missing and marks it as ours (its
	// alias is OwnerAlias), so that CleanupTunnel removes it. false: Device
	// must exist and is left alone.
	Create bool
	// Port is the UDP port of a created device (Linux's vxlan default
	// differs; Cilium uses 8472).
	Port int
	// Underlay is the device whose MTU a created device derives its own
	// from ("": the device of the IPv4 default route, else the only device
	// with a global IPv4 address).
	Underlay string
}

// Tunnel defaults.
const (
	DefaultTunnelDevice = "cm_vxlan"
	DefaultTunnelPort   = 8472
	// OwnerAlias is the alias of the devices the agent created.
	OwnerAlias = "clustermesh-agent"
	// vxlanOverhead is what vxlan over IPv4 adds to a packet: outer IPv4
	// (20), UDP (8), vxlan (8) and inner Ethernet (14).
	vxlanOverhead = 50
)

// ErrTunnelDevice is returned when the tunnel device cannot be used.
var ErrTunnelDevice = errors.New("unusable tunnel device")

// RegisterFlags registers the tunnel's flags on fs, defaulting to c's values.
func (c *TunnelConfig) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Device, "tunnel-device", c.Device, "vxlan external device of the node's tunnel (empty: no tunnel)")
	fs.BoolVar(&c.Create, "tunnel-create", c.Create, "create the tunnel device when missing (and remove it at cleanup); false: it must exist and is left alone")
	fs.IntVar(&c.Port, "tunnel-port", c.Port, "UDP port of the tunnel device the agent creates")
	fs.StringVar(&c.Underlay, "tunnel-underlay-device", c.Underlay, "device the tunnel's MTU derives from (empty: the default route's)")
}

// DefaultTunnelConfig returns the defaults: the agent creates and owns
// cm_vxlan on port 8472.
func DefaultTunnelConfig() TunnelConfig {
	return TunnelConfig{Device: DefaultTunnelDevice, Create: true, Port: DefaultTunnelPort}
}

// EnsureTunnel returns the ifindex of the tunnel device in the calling
// thread's network namespace, creating it (vxlan external on c.Port, MTU of
// the underlay minus the vxlan overhead, alias OwnerAlias) when c.Create and
// it is missing, and turns ARP off on it (see noARP). An existing device must be a vxlan external device (and,
// when we would have created it, on c.Port).
func EnsureTunnel(c TunnelConfig, log *slog.Logger) (int, error) {
	lk, err := netlink.LinkByName(c.Device)
	if err == nil {
		vx, ok := lk.(*netlink.Vxlan)
		if !ok || !vx.FlowBased {
			return 0, fmt.Errorf("%w: %s is a %s device, want vxlan external", ErrTunnelDevice, c.Device, lk.Type())
		}
		if c.Create && vx.Port != c.Port {
			return 0, fmt.Errorf("%w: %s uses UDP port %d, want %d (--tunnel-port)", ErrTunnelDevice, c.Device, vx.Port, c.Port)
		}
		if err := noARP(lk); err != nil {
			return 0, fmt.Errorf("set %s arp off: %w", c.Device, err)
		}
		if lk.Attrs().Flags&net.FlagUp == 0 {
			if err := netlink.LinkSetUp(lk); err != nil {
				return 0, fmt.Errorf("set %s up: %w", c.Device, err)
			}
		}
		return lk.Attrs().Index, nil
	}
	var nf netlink.LinkNotFoundError
	if !errors.As(err, &nf) {
		return 0, fmt.Errorf("find tunnel device %q: %w", c.Device, err)
	}
	if !c.Create {
		return 0, fmt.Errorf("%w: %s does not exist (--tunnel-create=false)", ErrTunnelDevice, c.Device)
	}
	under, err := underlayDevice(c.Underlay)
	if err != nil {
		return 0, err
	}
	mtu := under.Attrs().MTU - vxlanOverhead
	vx := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: c.Device, MTU: mtu}, FlowBased: true, Port: c.Port}
	if err := netlink.LinkAdd(vx); err != nil {
		return 0, fmt.Errorf("create tunnel device %q: %w", c.Device, err)
	}
	lk, err = netlink.LinkByName(c.Device)
	if err == nil {
		err = netlink.LinkSetAlias(lk, OwnerAlias)
	}
	if err == nil {
		err = noARP(lk)
	}
	if err == nil {
		err = netlink.LinkSetUp(lk)
	}
	if err != nil {
		_ = netlink.LinkDel(vx)
		return 0, fmt.Errorf("set up tunnel device %q: %w", c.Device, err)
	}
	log.Info("created tunnel device", "device", c.Device, "port", c.Port, "mtu", mtu, "underlay", under.Attrs().Name)
	return lk.Attrs().Index, nil
}

// noARP turns ARP (and IPv6 neighbour discovery) off on the tunnel device:
// the destinations routed into it are resolved by its egress program (the
// tunnel key), not by neighbours on a link; the inner destination MAC is
// the device's own, which the receiving node's ingress program accepts.
func noARP(lk netlink.Link) error {
	if lk.Attrs().RawFlags&unix.IFF_NOARP != 0 {
		return nil
	}
	return netlink.LinkSetARPOff(lk)
}

// CleanupTunnel removes the device named name if the agent created it (its
// alias is OwnerAlias) and reports whether it did; from a device of someone
// else it removes only the agent's routes (RouteProtocol).
func CleanupTunnel(name string) (bool, error) {
	if name == "" {
		return false, nil
	}
	lk, err := netlink.LinkByName(name)
	if err != nil {
		return false, nil // gone already
	}
	if lk.Attrs().Alias != OwnerAlias {
		return false, SyncTunnelRoutes(lk.Attrs().Index, nil)
	}
	if err := netlink.LinkDel(lk); err != nil {
		return false, fmt.Errorf("delete tunnel device %q: %w", name, err)
	}
	return true, nil
}

// underlayDevice returns the named device, or the device of the IPv4
// default route, or the only other device with a global IPv4 address.
func underlayDevice(name string) (netlink.Link, error) {
	if name != "" {
		lk, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("find underlay device %q: %w", name, err)
		}
		return lk, nil
	}
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if (r.Dst == nil || isZeroMask(r.Dst.Mask)) && r.LinkIndex > 0 {
			return netlink.LinkByIndex(r.LinkIndex)
		}
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	var found []int
	for _, a := range addrs {
		if a.Scope == unix.RT_SCOPE_UNIVERSE && !a.IP.IsLoopback() && a.LinkIndex > 0 && !slices.Contains(found, a.LinkIndex) {
			found = append(found, a.LinkIndex)
		}
	}
	if len(found) != 1 {
		return nil, fmt.Errorf("%w: no default route and %d devices with a global IPv4 address: set --tunnel-underlay-device", ErrTunnelDevice, len(found))
	}
	return netlink.LinkByIndex(found[0])
}

func isZeroMask(m net.IPMask) bool {
	ones, _ := m.Size()
	return ones == 0
}
