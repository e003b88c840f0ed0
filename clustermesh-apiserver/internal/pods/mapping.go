package pods

import (
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// Published reports whether pod gets ipcache entries: it has an IP of its
// own (not the host network) and has not terminated (its IPs may already be
// reused).
func Published(pod *corev1.Pod) bool {
	if pod.Spec.HostNetwork {
		return false
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return false
	}
	return len(PodIPs(pod)) > 0
}

// PodIPs returns the pod's valid, distinct IPs from status.podIPs (or
// status.podIP), in order.
func PodIPs(pod *corev1.Pod) []netip.Addr {
	raw := make([]string, 0, len(pod.Status.PodIPs)+1)
	for _, ip := range pod.Status.PodIPs {
		raw = append(raw, ip.IP)
	}
	if len(raw) == 0 && pod.Status.PodIP != "" {
		raw = append(raw, pod.Status.PodIP)
	}
	var out []netip.Addr
	for _, s := range raw {
		a, err := netip.ParseAddr(s)
		if err != nil || a.Zone() != "" {
			continue
		}
		a = a.Unmap()
		dup := false
		for _, o := range out {
			dup = dup || o == a
		}
		if !dup {
			out = append(out, a)
		}
	}
	return out
}

// NamedPorts returns the named container ports of pod, first occurrence of
// a name winning, in spec order.
func NamedPorts(pod *corev1.Pod) []wire.NamedPort {
	var out []wire.NamedPort
	seen := map[string]bool{}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == "" || seen[p.Name] || p.ContainerPort <= 0 || p.ContainerPort > 65535 {
				continue
			}
			proto := wire.Protocol(strings.ToUpper(string(p.Protocol)))
			if proto == "" {
				proto = wire.TCP
			}
			if !proto.Valid() {
				continue
			}
			seen[p.Name] = true
			out = append(out, wire.NamedPort{Name: p.Name, Port: uint16(p.ContainerPort), Protocol: proto})
		}
	}
	return out
}

// Entries returns the ipcache entries of a published pod with identity id,
// one per pod IP.
func Entries(pod *corev1.Pod, id uint32) []wire.IPIdentityPair {
	host, _ := netip.ParseAddr(pod.Status.HostIP)
	ports := NamedPorts(pod)
	var out []wire.IPIdentityPair
	for _, ip := range PodIPs(pod) {
		out = append(out, wire.IPIdentityPair{
			IP:                ip,
			HostIP:            host.Unmap(),
			ID:                id,
			K8sNamespace:      pod.Namespace,
			K8sPodName:        pod.Name,
			K8sServiceAccount: pod.Spec.ServiceAccountName,
			NamedPorts:        ports,
		})
	}
	return out
}
