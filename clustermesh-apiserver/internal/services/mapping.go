package services

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"

	"github.com/clustermesh/clustermesh/internal/annotation"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Value maps an exported Service, with its parsed annotations, and its
// EndpointSlices to the ClusterService published for it.
func Value(svc *corev1.Service, ann annotation.Service, slices []*discoveryv1.EndpointSlice, cluster string, clusterID uint32) wire.ClusterService {
	out := wire.ClusterService{
		Cluster: cluster, Namespace: svc.Namespace, Name: svc.Name, ClusterID: clusterID,
		Frontends:       map[string]wire.Ports{},
		Backends:        map[string]wire.Ports{},
		Labels:          copyMap(svc.Labels),
		Selector:        copyMap(svc.Spec.Selector),
		IncludeExternal: ann.Global,
		Shared:          ann.Exported(),
	}
	frontPorts := wire.Ports{}
	for _, p := range svc.Spec.Ports {
		if p.Port > 0 && p.Port <= 65535 {
			frontPorts[p.Name] = wire.PortConfig{Protocol: protocol(p.Protocol), Port: uint16(p.Port)}
		}
	}
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if ip, ok := parseIP(s); ok {
			out.Frontends[ip] = frontPorts
		}
	}
	for _, es := range slices {
		if es.AddressType != discoveryv1.AddressTypeIPv4 && es.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		ports := wire.Ports{}
		for _, p := range es.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
				continue
			}
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			proto := corev1.ProtocolTCP
			if p.Protocol != nil {
				proto = *p.Protocol
			}
			ports[name] = wire.PortConfig{Protocol: protocol(proto), Port: uint16(*p.Port)}
		}
		if len(ports) == 0 {
			continue
		}
		for _, ep := range es.Endpoints {
			if !Usable(ep.Conditions) {
				continue
			}
			for _, a := range ep.Addresses {
				ip, ok := parseIP(a)
				if !ok {
					continue
				}
				if out.Backends[ip] == nil {
					out.Backends[ip] = wire.Ports{}
				}
				for name, pc := range ports {
					out.Backends[ip][name] = pc
				}
				if ep.Hostname != nil && *ep.Hostname != "" {
					if out.Hostnames == nil {
						out.Hostnames = map[string]string{}
					}
					out.Hostnames[ip] = *ep.Hostname
				}
				if ep.Zone != nil && *ep.Zone != "" {
					if out.Zones == nil {
						out.Zones = map[string]wire.BackendZone{}
					}
					z := wire.BackendZone{Zone: *ep.Zone}
					if ep.Hints != nil {
						for _, fz := range ep.Hints.ForZones {
							z.ForZones = append(z.ForZones, wire.ForZone{Name: fz.Name})
						}
					}
					out.Zones[ip] = z
				}
			}
		}
	}
	return out
}

// Usable reports whether an endpoint is exported as a backend: ready (an
// unset condition counts as ready, as the API says), or serving while
// terminating.
func Usable(c discoveryv1.EndpointConditions) bool {
	if c.Ready == nil || *c.Ready {
		return true
	}
	return c.Serving != nil && *c.Serving && c.Terminating != nil && *c.Terminating
}

func protocol(p corev1.Protocol) wire.Protocol {
	if p == "" {
		return wire.TCP
	}
	return wire.Protocol(strings.ToUpper(string(p)))
}

func parseIP(s string) (string, bool) {
	ip, err := netip.ParseAddr(s)
	if err != nil || ip.Zone() != "" {
		return "", false
	}
	return ip.Unmap().String(), true
}

func copyMap(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}
