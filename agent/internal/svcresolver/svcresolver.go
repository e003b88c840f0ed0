package svcresolver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"

	"github.com/clustermesh/clustermesh/kvstore"
)

// Errors of resolving a Service name.
var (
	// ErrServiceNotFound: the host names a Service that does not exist.
	ErrServiceNotFound = errors.New("service not found")
	// ErrNoClusterIP: the Service has no usable ClusterIP (headless,
	// ExternalName, or not yet allocated).
	ErrNoClusterIP = errors.New("service has no ClusterIP")
)

// ServiceName returns the namespace and name of a Service DNS name
// <name>.<namespace>.svc[.<cluster domain>]; ok is false for any other
// host (IP addresses, other DNS names, <name>.<namespace> alone).
func ServiceName(host string) (namespace, name string, ok bool) {
	labels := strings.Split(strings.TrimSuffix(host, "."), ".")
	if len(labels) < 3 || labels[2] != "svc" {
		return "", "", false
	}
	if len(validation.IsDNS1035Label(labels[0])) > 0 || len(validation.IsDNS1123Label(labels[1])) > 0 {
		return "", "", false
	}
	return labels[1], labels[0], true
}

// Resolver maps Service DNS names to ClusterIPs through the kube-apiserver.
type Resolver struct {
	services corev1client.ServicesGetter
}

// New returns a Resolver that reads Services through services (the agent's
// client: the apiserver stays the one owner of the address).
func New(services corev1client.ServicesGetter) *Resolver {
	return &Resolver{services: services}
}

// ClusterIP returns the ClusterIP of Service namespace/name. Errors wrap
// ErrServiceNotFound, ErrNoClusterIP, or the apiserver's error.
func (r *Resolver) ClusterIP(ctx context.Context, namespace, name string) (netip.Addr, error) {
	svc, err := r.services.Services(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return netip.Addr{}, fmt.Errorf("%w: %s/%s", ErrServiceNotFound, namespace, name)
	case err != nil:
		return netip.Addr{}, fmt.Errorf("get service %s/%s: %w", namespace, name, err)
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
		return netip.Addr{}, fmt.Errorf("%w: %s/%s", ErrNoClusterIP, namespace, name)
	}
	ip, err := netip.ParseAddr(svc.Spec.ClusterIP)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%w: %s/%s: %w", ErrNoClusterIP, namespace, name, err)
	}
	return ip, nil
}

// DialAddr returns the address to dial for addr (host:port): the
// Service's ClusterIP and the port when the host is a Service DNS name,
// addr itself otherwise.
func (r *Resolver) DialAddr(ctx context.Context, addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, nil // not host:port: left to the dialer to reject
	}
	ns, name, ok := ServiceName(host)
	if !ok {
		return addr, nil
	}
	ip, err := r.ClusterIP(ctx, ns, name)
	if err != nil {
		return "", fmt.Errorf("resolve %q: %w", host, err)
	}
	return net.JoinHostPort(ip.String(), port), nil
}

// Dial is a kvstore.Dialer: it dials a Service DNS name at its ClusterIP.
// When the Service cannot be resolved through the apiserver it falls back
// to system DNS (cluster DNS may serve the name), and when that fails too
// the error names both causes, the Service lookup first.
func (r *Resolver) Dial(ctx context.Context, addr string) (net.Conn, error) {
	target, rerr := r.DialAddr(ctx, addr)
	if rerr == nil {
		return kvstore.DialTCP(ctx, target)
	}
	conn, err := kvstore.DialTCP(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%w (system DNS: %w)", rerr, err)
	}
	return conn, nil
}

var _ kvstore.Dialer = (*Resolver)(nil).Dial
