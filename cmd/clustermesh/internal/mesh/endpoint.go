package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// maxNodeEndpoints bounds how many node addresses a NodePort endpoint lists.
const maxNodeEndpoints = 5

// endpoints returns the etcd client URLs under which other clusters reach
// c's clustermesh-apiserver: the external etcd endpoints, or from the
// Service: load balancer ingress, node InternalIPs with the node port, or
// the ClusterIP.
func (c *Cluster) endpoints(ctx context.Context, info Info) ([]string, error) {
	if len(info.Endpoints) > 0 {
		return info.Endpoints, nil
	}
	svc, err := c.Client.CoreV1().Services(c.Namespace).Get(ctx, serviceAPIServer, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %q: service %s: %w", c.Context, serviceAPIServer, err)
	}
	if len(svc.Spec.Ports) == 0 {
		return nil, fmt.Errorf("context %q: service %s has no port: %w", c.Context, serviceAPIServer, ErrNoEndpoint)
	}
	port := svc.Spec.Ports[0]
	var hosts []string
	hostPort := port.Port
	switch svc.Spec.Type {
	case corev1.ServiceTypeLoadBalancer:
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				hosts = append(hosts, in.IP)
			} else if in.Hostname != "" {
				hosts = append(hosts, in.Hostname)
			}
		}
		if len(hosts) == 0 {
			return nil, fmt.Errorf("context %q: service %s: %w: the load balancer has no ingress address yet", c.Context, serviceAPIServer, ErrNoEndpoint)
		}
	case corev1.ServiceTypeNodePort:
		if port.NodePort == 0 {
			return nil, fmt.Errorf("context %q: service %s: %w: no node port allocated", c.Context, serviceAPIServer, ErrNoEndpoint)
		}
		hostPort = port.NodePort
		if hosts, err = c.nodeAddresses(ctx); err != nil {
			return nil, err
		}
	default:
		if svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone {
			return nil, fmt.Errorf("context %q: service %s: %w: no cluster IP", c.Context, serviceAPIServer, ErrNoEndpoint)
		}
		hosts = []string{svc.Spec.ClusterIP}
	}
	var urls []string
	for _, h := range hosts {
		urls = append(urls, "https://"+net.JoinHostPort(h, strconv.Itoa(int(hostPort))))
	}
	return urls, nil
}

// nodeAddresses lists the InternalIPs of ready nodes (all nodes if none is
// ready), sorted, at most maxNodeEndpoints.
func (c *Cluster) nodeAddresses(ctx context.Context) ([]string, error) {
	nodes, err := c.Client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("context %q: list nodes: %w", c.Context, err)
	}
	var ready, all []string
	for _, n := range nodes.Items {
		ip := ""
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				ip = a.Address
				break
			}
		}
		if ip == "" {
			continue
		}
		all = append(all, ip)
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready = append(ready, ip)
			}
		}
	}
	if len(ready) > 0 {
		all = ready
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("context %q: %w: service type NodePort but no node has an InternalIP", c.Context, ErrNoEndpoint)
	}
	slices.Sort(all)
	all = slices.Compact(all)
	if len(all) > maxNodeEndpoints {
		all = all[:maxNodeEndpoints]
	}
	return all, nil
}

// endpointHosts returns the host parts of endpoint URLs.
func endpointHosts(urls []string) []string {
	var hosts []string
	for _, u := range urls {
		if p, err := url.Parse(u); err == nil && p.Hostname() != "" {
			hosts = append(hosts, p.Hostname())
		}
	}
	return hosts
}

// dialAny succeeds when a TCP connection to one of the endpoints opens.
func dialAny(ctx context.Context, urls []string, timeout time.Duration) error {
	var errs []error
	for _, u := range urls {
		p, err := url.Parse(u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		d := net.Dialer{Timeout: timeout}
		conn, err := d.DialContext(ctx, "tcp", p.Host)
		if err == nil {
			conn.Close()
			return nil
		}
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}
