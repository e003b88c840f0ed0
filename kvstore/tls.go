package kvstore

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"
)

// Errors that say which part of a TLS connection is wrong.
var (
	// ErrCAFile: trusted-ca-file cannot be read or holds no certificate.
	ErrCAFile = errors.New("trusted-ca-file unusable")
	// ErrClientCert: cert-file or key-file missing, unreadable or not a pair.
	ErrClientCert = errors.New("client certificate unusable")
	// ErrServerCertUntrusted: the server's certificate is not signed by
	// trusted-ca-file (wrong CA) or not valid for the endpoint's host.
	ErrServerCertUntrusted = errors.New("server certificate not trusted by trusted-ca-file")
	// ErrClientCertRejected: the server refused the client certificate (none
	// sent, or signed by a CA the server does not trust).
	ErrClientCertRejected = errors.New("server rejected the client certificate")
	// ErrTLSHandshake: any other TLS handshake failure.
	ErrTLSHandshake = errors.New("tls handshake failed")
	// ErrUnreachable: no endpoint accepted a connection.
	ErrUnreachable = errors.New("etcd unreachable")
)

// TLSConfig builds the client TLS configuration of cfg, or nil when cfg uses
// neither TLS files nor https endpoints.
func (cfg Config) TLSConfig() (*tls.Config, error) {
	useTLS := cfg.TrustedCAFile != "" || cfg.CertFile != "" || cfg.KeyFile != ""
	for _, ep := range cfg.Endpoints {
		if strings.HasPrefix(ep, "https://") || strings.HasPrefix(ep, "unixs://") {
			useTLS = true
		}
	}
	if !useTLS {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.TrustedCAFile != "" {
		pem, err := os.ReadFile(cfg.TrustedCAFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrCAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: %s holds no PEM certificate", ErrCAFile, cfg.TrustedCAFile)
		}
		tc.RootCAs = pool
	}
	switch {
	case cfg.CertFile == "" && cfg.KeyFile == "":
	case cfg.CertFile == "":
		return nil, fmt.Errorf("%w: key-file set without cert-file", ErrClientCert)
	case cfg.KeyFile == "":
		return nil, fmt.Errorf("%w: cert-file set without key-file", ErrClientCert)
	default:
		pair, err := tls.LoadX509KeyPair(cfg.CertFile, cfg.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrClientCert, err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}

// probeTLS connects to one endpoint, completes a TLS handshake and one HTTP
// request (GET /version), so that a client certificate the server rejects
// shows up here with a clear error instead of as a request timeout later.
func probeTLS(ctx context.Context, endpoint string, tc *tls.Config, timeout time.Duration, dial Dialer) error {
	host, err := endpointHost(endpoint)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	raw, err := dial(ctx, host)
	if err != nil {
		return fmt.Errorf("%w: %s: %w", ErrUnreachable, endpoint, err)
	}
	defer raw.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = raw.SetDeadline(dl)
	}
	c := tc.Clone()
	if c.ServerName == "" {
		c.ServerName, _, _ = net.SplitHostPort(host)
	}
	conn := tls.Client(raw, c)
	if err := conn.HandshakeContext(ctx); err != nil {
		return classifyTLSError(endpoint, err, len(c.Certificates) > 0)
	}
	// With TLS 1.3 the server checks the client certificate after the
	// client's handshake has completed: its verdict arrives on the first
	// read. Any answer other than a certificate alert (an HTTP response,
	// EOF from a gRPC-only port, silence until the deadline) means the
	// certificate was accepted.
	_ = conn.SetDeadline(time.Now().Add(min(timeout, 2*time.Second)))
	if _, err := conn.Write([]byte("GET /version HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n\r\n")); err != nil && isCertAlert(err) {
		return classifyTLSError(endpoint, err, len(c.Certificates) > 0)
	}
	if _, err := bufio.NewReader(conn).ReadByte(); err != nil && isCertAlert(err) {
		return classifyTLSError(endpoint, err, len(c.Certificates) > 0)
	}
	return nil
}

func classifyTLSError(endpoint string, err error, haveCert bool) error {
	var (
		unknownAuth x509.UnknownAuthorityError
		verifyErr   *tls.CertificateVerificationError
		hostErr     x509.HostnameError
	)
	switch {
	case errors.As(err, &unknownAuth), errors.As(err, &verifyErr), errors.As(err, &hostErr):
		return fmt.Errorf("%w: %s: %w", ErrServerCertUntrusted, endpoint, err)
	case isCertAlert(err):
		if !haveCert {
			return fmt.Errorf("%w: %s: no cert-file configured: %w", ErrClientCertRejected, endpoint, err)
		}
		return fmt.Errorf("%w: %s: cert-file not accepted (issued by a CA the server does not trust?): %w", ErrClientCertRejected, endpoint, err)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: %s: connection accepted, but no answer to the TLS handshake: %w", ErrUnreachable, endpoint, err)
	default:
		return fmt.Errorf("%w: %s: %w", ErrTLSHandshake, endpoint, err)
	}
}

// isCertAlert reports whether err is a TLS alert from the server about the
// client's certificate. crypto/tls does not export the type of received
// alerts, only their text.
func isCertAlert(err error) bool {
	msg := err.Error()
	if !strings.Contains(msg, "remote error: tls: ") {
		return false
	}
	for _, s := range []string{"certificate required", "bad certificate", "unknown certificate",
		"unsupported certificate", "revoked certificate", "expired certificate", "access denied"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

func endpointHost(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", fmt.Errorf("%w: endpoint %q: %w", ErrConfig, endpoint, err)
	}
	return u.Host, nil
}

// Diagnose connects afresh to every endpoint, as New does before it
// connects (TCP, then the TLS handshake and the server's verdict on the
// client certificate), and returns the most telling failure, or nil when
// an endpoint accepts. A request that timed out says only "context
// deadline exceeded"; this names the cause: connection refused, an
// untrusted certificate, a rejected client certificate.
func (c *Client) Diagnose(ctx context.Context) error {
	tc, err := c.cfg.TLSConfig()
	if err != nil {
		return err
	}
	if tc != nil {
		return probeEndpoints(ctx, c.cfg, tc)
	}
	var first error
	for _, ep := range c.cfg.Endpoints {
		host, err := endpointHost(ep)
		if err == nil {
			dctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout.D())
			var conn net.Conn
			if conn, err = c.cfg.dialer()(dctx, host); err == nil {
				conn.Close()
			}
			cancel()
		}
		if err == nil {
			return nil
		}
		if first == nil {
			first = fmt.Errorf("%w: %s: %w", ErrUnreachable, ep, err)
		}
	}
	return first
}
