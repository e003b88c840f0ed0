package kvstore

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zapcore"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
)

// Client is a connection to one etcd cluster.
type Client struct {
	cfg     Config
	log     *slog.Logger
	etcd    *clientv3.Client
	limiter *rate.Limiter // nil when unlimited

	mu        sync.Mutex
	clusterID uint64 // etcd cluster ID pinned by the first list of this connection
	lastErr   error
	lastErrAt time.Time
}

// New checks that cfg's TLS material is usable and that at least one
// endpoint completes a TLS handshake with it, then connects. Errors wrap
// ErrConfig, ErrCAFile, ErrClientCert, ErrServerCertUntrusted,
// ErrClientCertRejected, ErrTLSHandshake or ErrUnreachable.
func New(ctx context.Context, cfg Config, log *slog.Logger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.WithDefaults()
	tc, err := cfg.TLSConfig()
	if err != nil {
		return nil, err
	}
	if tc != nil {
		if err := probeEndpoints(ctx, cfg, tc); err != nil {
			return nil, err
		}
	}
	c := &Client{cfg: cfg, log: log}
	opts := []grpc.DialOption{
		grpc.WithContextDialer(cfg.grpcDial()),
		grpc.WithStaticStreamWindowSize(flowWindow),
		grpc.WithStaticConnWindowSize(flowWindow),
	}
	if cfg.QPS > 0 {
		burst := max(int(cfg.QPS), 1)
		c.limiter = rate.NewLimiter(rate.Limit(cfg.QPS), burst)
		opts = append(opts, grpc.WithChainUnaryInterceptor(c.rateLimit))
	}
	etcd, err := clientv3.New(clientv3.Config{
		Endpoints:            cfg.Endpoints,
		TLS:                  tc,
		DialTimeout:          cfg.DialTimeout.D(),
		DialKeepAliveTime:    cfg.KeepaliveInterval.D(),
		DialKeepAliveTimeout: cfg.KeepaliveTimeout.D(),
		PermitWithoutStream:  true,
		DialOptions:          opts,
		Context:              context.WithoutCancel(ctx),
		Logger:               ZapLogger(log.With("component", "etcd-client"), zapcore.ErrorLevel),
		MaxCallRecvMsgSize:   maxResponse,
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	c.etcd = etcd
	return c, nil
}

// flowWindow is the gRPC flow-control window of the connection and of each
// of its streams, fixed at the size gRPC's dynamic windows grow to at most.
// Dynamic windows estimate the bandwidth-delay product with a ping sent
// with nearly every data frame received until they reach that size, which
// a watch of small events never does: a write (ping and window update) per
// watched change, and an acknowledgement for etcd to send back, on the
// steady-state event path (bench/README.md, "The steady-state event path").
// A large listing is not slowed: its pages fit the window from the start.
const flowWindow = 16 << 20

// probeEndpoints succeeds when one endpoint completes a TLS handshake and a
// request; otherwise it returns the most telling failure: a TLS problem
// rather than an unreachable endpoint.
func probeEndpoints(ctx context.Context, cfg Config, tc *tls.Config) error {
	var first, tlsErr error
	for _, ep := range cfg.Endpoints {
		err := probeTLS(ctx, ep, tc, cfg.DialTimeout.D(), cfg.dialer())
		if err == nil {
			return nil
		}
		if first == nil {
			first = err
		}
		if tlsErr == nil && !errors.Is(err, ErrUnreachable) {
			tlsErr = err
		}
	}
	if tlsErr != nil {
		return tlsErr
	}
	return first
}

func (c *Client) rateLimit(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if err := c.limiter.Wait(ctx); err != nil {
		return fmt.Errorf("rate limit: %w", err)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// Close closes the connection.
func (c *Client) Close() error { return c.etcd.Close() }

// Etcd returns the underlying etcd client; unary requests through it are
// subject to the QPS limit.
func (c *Client) Etcd() *clientv3.Client { return c.etcd }

// Config returns the configuration of the client, defaults applied.
func (c *Client) Config() Config { return c.cfg }

// recordErr remembers the last error for Status.
func (c *Client) recordErr(err error) {
	c.mu.Lock()
	c.lastErr, c.lastErrAt = err, time.Now()
	c.mu.Unlock()
}

// pinClusterID pins id as the connection's etcd cluster ID if none is
// pinned yet and reports the previously pinned one.
func (c *Client) pinClusterID(id uint64) (prev uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	prev = c.clusterID
	if id != 0 {
		c.clusterID = id
	}
	return prev
}

// Status is the health of a connection.
type Status struct {
	Endpoints []EndpointStatus
	// ClusterID is the etcd cluster ID pinned by the first list (0 before).
	ClusterID uint64
	// LastError is the last error of a list, watch or lease operation.
	LastError   error
	LastErrorAt time.Time
}

// Healthy reports whether at least one endpoint answered the probe.
func (s Status) Healthy() bool {
	for _, e := range s.Endpoints {
		if e.Reachable {
			return true
		}
	}
	return false
}

// EndpointStatus is the result of a status probe of one endpoint.
type EndpointStatus struct {
	Endpoint  string
	Reachable bool
	Latency   time.Duration // of the status request
	Err       error
	ClusterID uint64
	MemberID  uint64
	Leader    uint64
	Revision  int64
	DBSize    int64
}

// Status probes every endpoint with a status request (bounded by the dial
// timeout) and reports the results with the pinned cluster ID and the last
// error seen by this client. The endpoints are probed concurrently: a dead
// member waits out its whole timeout, which must not leave the members
// after it without time (callers' deadlines are about one dial timeout).
func (c *Client) Status(ctx context.Context) Status {
	st := Status{Endpoints: make([]EndpointStatus, len(c.cfg.Endpoints))}
	var wg sync.WaitGroup
	for i, ep := range c.cfg.Endpoints {
		wg.Go(func() { st.Endpoints[i] = c.endpointStatus(ctx, ep) })
	}
	wg.Wait()
	c.mu.Lock()
	st.ClusterID, st.LastError, st.LastErrorAt = c.clusterID, c.lastErr, c.lastErrAt
	c.mu.Unlock()
	return st
}

func (c *Client) endpointStatus(ctx context.Context, ep string) EndpointStatus {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.DialTimeout.D())
	defer cancel()
	start := time.Now()
	m := c.etcd.Maintenance
	if len(c.cfg.Endpoints) == 1 {
		// Through the client's own connection: Maintenance.Status(ctx, ep)
		// dials (a TLS handshake on both sides) and closes a connection per
		// call, which a probe every few seconds per remote turns into a
		// steady handshake load on the etcd (250 remotes, 25 per second per
		// agent). With several endpoints, each must be asked itself.
		m = clientv3.NewMaintenanceFromMaintenanceClient(pb.NewMaintenanceClient(c.etcd.ActiveConnection()), c.etcd)
	}
	resp, err := m.Status(ctx, ep)
	es := EndpointStatus{Endpoint: ep, Latency: time.Since(start), Err: err}
	if err == nil {
		es.Reachable = true
		es.ClusterID = resp.Header.GetClusterId()
		es.MemberID = resp.Header.GetMemberId()
		es.Leader = resp.Leader
		es.Revision = resp.Header.GetRevision()
		es.DBSize = resp.DbSize
	}
	return es
}
