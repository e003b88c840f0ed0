package kvstore

import (
	"context"
	"net"
	"strings"
)

// Dialer opens the TCP connection to one etcd endpoint. addr is the
// endpoint's host:port as written in the config; a Dialer may connect to
// another address for that host (the agent dials a Kubernetes Service name
// at its ClusterIP), but TLS still verifies the server certificate for the
// host of the endpoint, never for the dialled address.
type Dialer func(ctx context.Context, addr string) (net.Conn, error)

// dialer returns cfg.Dial, or a plain TCP dialer (system DNS) when unset.
func (cfg Config) dialer() Dialer {
	if cfg.Dial != nil {
		return cfg.Dial
	}
	return DialTCP
}

// DialTCP dials addr over TCP, resolving its host through the system
// resolver: the default Dialer.
func DialTCP(ctx context.Context, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, "tcp", addr)
}

// grpcDial is cfg's Dialer as the etcd client's gRPC dialer. gRPC hands it
// the resolved address of an endpoint: host:port for TCP endpoints, and
// unix:path (or unix://path) for unix sockets, which it dials directly.
func (cfg Config) grpcDial() func(context.Context, string) (net.Conn, error) {
	dial := cfg.dialer()
	return func(ctx context.Context, addr string) (net.Conn, error) {
		if path, ok := strings.CutPrefix(addr, "unix:"); ok {
			var d net.Dialer
			return d.DialContext(ctx, "unix", strings.TrimPrefix(path, "//"))
		}
		return dial(ctx, addr)
	}
}
