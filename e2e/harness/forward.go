package harness

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Forwarder accepts TCP connections on a listener that lives in a namespace
// (the datacenter namespace's gateway address) and joins each to a new
// connection to target on the host's loopback, so that agents inside node
// namespaces reach the kube-apiservers and etcds that listen on 127.0.0.1.
type Forwarder struct {
	ln     net.Listener
	target string

	mu      sync.Mutex
	clients map[string]netip.Addr // upstream local address → client address; guarded by mu
}

// ListenIn opens a listener on addr inside ns.
func ListenIn(ns *NS, addr, target string) (*Forwarder, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", addr)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &Forwarder{ln: ln, target: target}, nil
}

// ForwardSamePort opens a forwarder on gw, in ns, with the port of target
// (a loopback address), and returns it and the address it listens on.
func ForwardSamePort(ns *NS, gw netip.Addr, target string) (*Forwarder, string, error) {
	_, port, err := net.SplitHostPort(target)
	if err != nil {
		return nil, "", err
	}
	addr := net.JoinHostPort(gw.String(), port)
	f, err := ListenIn(ns, addr, target)
	if err != nil {
		return nil, "", fmt.Errorf("forward %s: %w", target, err)
	}
	return f, addr, nil
}

// Run forwards until ctx is done and returns after every connection it
// forwarded has been closed.
func (f *Forwarder) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	stop := context.AfterFunc(ctx, func() { f.ln.Close() })
	defer stop()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() { f.serve(ctx, c) })
	}
}

func (f *Forwarder) serve(ctx context.Context, c net.Conn) {
	defer c.Close()
	d := net.Dialer{Timeout: 5 * time.Second}
	up, err := d.DialContext(ctx, "tcp", f.target)
	if err != nil {
		return
	}
	defer up.Close()
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		f.track(up, ap.Addr())
		defer f.track(up, netip.Addr{})
	}
	stop := context.AfterFunc(ctx, func() { c.Close(); up.Close() })
	defer stop()
	var wg sync.WaitGroup
	wg.Go(func() {
		_, _ = io.Copy(up, c)
		if tc, ok := up.(*net.TCPConn); ok {
			_ = tc.CloseWrite()
		}
	})
	_, _ = io.Copy(c, up)
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
	wg.Wait()
}
