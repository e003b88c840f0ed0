package etcdserver

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"

	"github.com/clustermesh/clustermesh/internal/pki"
	"github.com/clustermesh/clustermesh/kvstore"
)

// Errors of the embedded server.
var (
	ErrConfig      = errors.New("invalid etcd server config")
	ErrStopped     = errors.New("etcd server stopped")
	ErrClusterName = errors.New("invalid cluster name")
)

// AdminUser is the etcd user the apiserver writes as (etcd's root user).
const AdminUser = "root"

// RemoteUser returns the etcd user name of the remote cluster cluster.
func RemoteUser(cluster string) string { return "remote-" + cluster }

// LegacyRemoteUser is the one user every remote cluster reads as in
// Cilium's "legacy" auth mode (its default in 1.18): client certificates
// with CN=remote. Per-cluster users (RemoteUser, Cilium's "cluster" mode)
// can be revoked one by one; the legacy user only as a whole.
const LegacyRemoteUser = "remote"

// Config configures one embedded etcd member.
type Config struct {
	// ClusterName is the mesh cluster whose state this etcd serves; the
	// remote users may read its canaries and cluster config. Required
	// unless DisableAuth.
	ClusterName string
	// Name is the member name (default "etcd").
	Name string
	// DataDir holds etcd's data. Required.
	DataDir string
	// CertDir holds the CA, server, admin and remote-user certificates
	// (default DataDir + "-pki").
	CertDir string
	// ClientURL and PeerURL are the listen (and advertised) URLs; port 0
	// or an empty value (https://127.0.0.1:0) picks a free port.
	ClientURL string
	PeerURL   string
	// Hosts are extra names or IPs for the server certificate.
	Hosts []string
	// CAFile and CAKeyFile name an existing CA. When empty, CertDir/ca.crt
	// and ca.key are used, and created if missing.
	CAFile    string
	CAKeyFile string
	// ServerCertFile and ServerKeyFile name the certificate served to
	// clients, signed by the CA above; it must cover 127.0.0.1 (the admin
	// client dials it) besides the addresses remote clusters dial. etcd
	// reads both files again on every TLS handshake, so replacing them (a
	// Kubernetes Secret mount swaps them atomically) rotates the served
	// certificate without restart. When empty, a certificate is issued into
	// CertDir. Peers always use the issued certificate. The admin
	// certificate is CertDir/root.crt and root.key, issued when missing.
	ServerCertFile string
	ServerKeyFile  string
	// InitialCluster is etcd's "name=peerURL,..." list for multi-member
	// clusters (default: this member alone). InitialClusterToken defaults to
	// "clustermesh-" + ClusterName + a random suffix, so that an etcd
	// bootstrapped on a new data dir has a new etcd cluster ID (readers
	// notice a replaced etcd by that ID); etcd reads it only when it
	// bootstraps. ClusterState is "new" (default) or "existing".
	InitialCluster      string
	InitialClusterToken string
	ClusterState        string
	// DisableAuth leaves etcd authentication off (TLS stays on).
	DisableAuth bool
	// UnsafeNoFsync skips fsync (tests and benchmarks on tmpfs only).
	UnsafeNoFsync bool
	// HeartbeatInterval and ElectionTimeout tune raft (defaults 100ms, 1s).
	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	// StartTimeout bounds waiting for the member to be ready (default 60s).
	StartTimeout time.Duration
}

var clusterNameRE = regexp.MustCompile(`^([a-z0-9][-a-z0-9]*)?[a-z0-9]$`)

// ValidClusterName reports whether name is a valid mesh cluster name.
func ValidClusterName(name string) error {
	if len(name) > 32 || !clusterNameRE.MatchString(name) {
		return fmt.Errorf("%w: %q", ErrClusterName, name)
	}
	return nil
}

// withDefaults resolves defaults and free ports.
func (cfg Config) withDefaults() (Config, error) {
	if cfg.DataDir == "" {
		return cfg, fmt.Errorf("%w: no data dir", ErrConfig)
	}
	if !cfg.DisableAuth {
		if err := ValidClusterName(cfg.ClusterName); err != nil {
			return cfg, fmt.Errorf("%w: %w", ErrConfig, err)
		}
	}
	if cfg.Name == "" {
		cfg.Name = "etcd"
	}
	if cfg.CertDir == "" {
		cfg.CertDir = filepath.Clean(cfg.DataDir) + "-pki"
	}
	var err error
	if cfg.ClientURL, err = resolveURL(cfg.ClientURL); err != nil {
		return cfg, err
	}
	if cfg.PeerURL, err = resolveURL(cfg.PeerURL); err != nil {
		return cfg, err
	}
	if cfg.InitialCluster == "" {
		cfg.InitialCluster = cfg.Name + "=" + cfg.PeerURL
	}
	if cfg.InitialClusterToken == "" {
		cfg.InitialClusterToken = newClusterToken(cfg.ClusterName)
	}
	if cfg.ClusterState == "" {
		cfg.ClusterState = embed.ClusterStateFlagNew
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 100 * time.Millisecond
	}
	if cfg.ElectionTimeout <= 0 {
		cfg.ElectionTimeout = time.Second
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	return cfg, nil
}

// newClusterToken returns an initial cluster token unique to one
// bootstrap: the etcd cluster ID derives from it and the peer URLs, and an
// apiserver restarted on an empty data dir on the same ports must not look
// like the etcd it replaces.
func newClusterToken(cluster string) string {
	return "clustermesh-" + cluster + "-" + rand.Text()[:16]
}

// resolveURL fills in https://127.0.0.1 and replaces port 0 by a free port.
func resolveURL(s string) (string, error) {
	if s == "" {
		s = "https://127.0.0.1:0"
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("%w: url %q", ErrConfig, s)
	}
	if u.Port() == "" || u.Port() == "0" {
		port, err := freePort(u.Hostname())
		if err != nil {
			return "", err
		}
		u.Host = net.JoinHostPort(u.Hostname(), fmt.Sprint(port))
	}
	return u.String(), nil
}

// choosesPorts reports whether withDefaults picks a port of cfg's URLs.
func choosesPorts(cfg Config) bool {
	for _, s := range []string{cfg.ClientURL, cfg.PeerURL} {
		if s == "" {
			return true
		}
		if u, err := url.Parse(s); err == nil && (u.Port() == "" || u.Port() == "0") {
			return true
		}
	}
	return false
}

func isAddrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}

// freePort is FreePort; tests replace it.
var freePort = FreePort

// FreePort returns a TCP port on host that was free a moment ago.
func FreePort(host string) (int, error) {
	if host == "" {
		host = "127.0.0.1"
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("find free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Server is a running (or stopped) embedded etcd member.
type Server struct {
	cfg Config
	log *slog.Logger
	ca  *pki.CA

	caFile, serverCert, serverKey, adminCert, adminKey string

	mu   sync.Mutex
	etcd *embed.Etcd // nil while stopped
}

// Start starts one member, waits until it serves (which needs a quorum in
// a multi-member cluster: start the members concurrently, see StartCluster)
// and, unless auth is disabled, sets up the root user and enables auth.
func Start(ctx context.Context, cfg Config, log *slog.Logger) (*Server, error) {
	given := cfg
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: log.With("etcd", cfg.Name)}
	if err := s.ensureCerts(); err != nil {
		return nil, err
	}
	// A port chosen here was free a moment ago; another process may have
	// taken it since. Such a port is chosen again (etcd listens before it
	// writes anything into the data directory).
	for attempt := 1; ; attempt++ {
		err := s.start(ctx)
		if err == nil {
			break
		}
		if attempt == 5 || !isAddrInUse(err) || !choosesPorts(given) {
			return nil, err
		}
		s.log.Debug("chosen port taken meanwhile; choosing again", "error", err)
		if s.cfg, err = given.withDefaults(); err != nil {
			return nil, err
		}
	}
	if !cfg.DisableAuth {
		if err := s.setupAuth(ctx); err != nil {
			s.Stop()
			return nil, err
		}
	}
	return s, nil
}

func (s *Server) ensureCerts() error {
	cfg := s.cfg
	if err := os.MkdirAll(cfg.CertDir, 0o700); err != nil {
		return fmt.Errorf("create cert dir: %w", err)
	}
	caFile, caKey := cfg.CAFile, cfg.CAKeyFile
	if caFile == "" {
		caFile, caKey = filepath.Join(cfg.CertDir, "ca.crt"), filepath.Join(cfg.CertDir, "ca.key")
	}
	ca, err := pki.LoadCA(caFile, caKey)
	if err != nil {
		if cfg.CAFile != "" || !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("etcd ca: %w", err)
		}
		if ca, err = pki.NewCA("clustermesh-etcd-ca-" + cfg.ClusterName); err != nil {
			return err
		}
		if caFile, _, err = ca.WriteCA(cfg.CertDir, "ca"); err != nil {
			return err
		}
	}
	s.ca, s.caFile = ca, caFile
	if (cfg.ServerCertFile == "") != (cfg.ServerKeyFile == "") {
		return fmt.Errorf("%w: server certificate and key must be given together", ErrConfig)
	}
	if cfg.ServerCertFile != "" {
		if err := checkServedCert(cfg.ServerCertFile, cfg.ServerKeyFile, ca, s.dialURL()); err != nil {
			return err
		}
	}
	hosts := append([]string(nil), cfg.Hosts...)
	for _, u := range []string{cfg.ClientURL, cfg.PeerURL} {
		if pu, err := url.Parse(u); err == nil {
			hosts = append(hosts, pu.Hostname())
		}
	}
	srv, err := ca.IssueServer("etcd-"+cfg.Name, hosts...)
	if err != nil {
		return err
	}
	if s.serverCert, s.serverKey, err = srv.Write(cfg.CertDir, "server-"+cfg.Name); err != nil {
		return err
	}
	s.adminCert, s.adminKey, err = s.clientCert(AdminUser)
	return err
}

// clientCert returns the certificate files of user, issuing them if missing.
func (s *Server) clientCert(user string) (certFile, keyFile string, err error) {
	certFile = filepath.Join(s.cfg.CertDir, user+".crt")
	keyFile = filepath.Join(s.cfg.CertDir, user+".key")
	if _, err1 := os.Stat(certFile); err1 == nil {
		if _, err2 := os.Stat(keyFile); err2 == nil {
			return certFile, keyFile, nil
		}
	}
	kp, err := s.ca.IssueClient(user)
	if err != nil {
		return "", "", err
	}
	return kp.Write(s.cfg.CertDir, user)
}

func (s *Server) start(ctx context.Context) error {
	cfg := s.cfg
	ec := embed.NewConfig()
	ec.Name = cfg.Name
	ec.Dir = cfg.DataDir
	cu, _ := url.Parse(cfg.ClientURL)
	pu, _ := url.Parse(cfg.PeerURL)
	ec.ListenClientUrls, ec.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	ec.ListenPeerUrls, ec.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	ec.InitialCluster = cfg.InitialCluster
	ec.InitialClusterToken = cfg.InitialClusterToken
	ec.ClusterState = cfg.ClusterState
	tlsInfo := func() (ti transport.TLSInfo) {
		ti.CertFile, ti.KeyFile, ti.TrustedCAFile, ti.ClientCertAuth = s.serverCert, s.serverKey, s.caFile, true
		return ti
	}
	ec.ClientTLSInfo = tlsInfo()
	if cfg.ServerCertFile != "" {
		ec.ClientTLSInfo.CertFile, ec.ClientTLSInfo.KeyFile = cfg.ServerCertFile, cfg.ServerKeyFile
	}
	ec.PeerTLSInfo = tlsInfo()
	ec.UnsafeNoFsync = cfg.UnsafeNoFsync
	ec.TickMs = uint(cfg.HeartbeatInterval / time.Millisecond)
	ec.ElectionMs = uint(cfg.ElectionTimeout / time.Millisecond)
	ec.EnableGRPCGateway = false
	ec.Logger = "zap"
	ec.ZapLoggerBuilder = embed.NewZapLoggerBuilder(kvstore.ZapLogger(s.log, zapcore.ErrorLevel))
	e, err := embed.StartEtcd(ec)
	if err != nil {
		return fmt.Errorf("start etcd %s: %w", cfg.Name, err)
	}
	t := time.NewTimer(cfg.StartTimeout)
	defer t.Stop()
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return fmt.Errorf("start etcd %s: %w", cfg.Name, err)
	case <-ctx.Done():
		e.Close()
		return fmt.Errorf("start etcd %s: %w", cfg.Name, ctx.Err())
	case <-t.C:
		e.Close()
		return fmt.Errorf("start etcd %s: not ready after %s", cfg.Name, cfg.StartTimeout)
	}
	s.mu.Lock()
	s.etcd = e
	s.mu.Unlock()
	s.log.Debug("etcd ready", "client", cfg.ClientURL, "peer", cfg.PeerURL)
	return nil
}

// Stop stops the member; its data dir, certificates and ports stay for
// Restart. Stopping a stopped server does nothing.
func (s *Server) Stop() {
	s.mu.Lock()
	e := s.etcd
	s.etcd = nil
	s.mu.Unlock()
	if e != nil {
		e.Close()
	}
}

// Restart starts a stopped member again on the same data dir and ports (it
// stops it first if it is running).
func (s *Server) Restart(ctx context.Context) error {
	s.Stop()
	return s.start(ctx)
}

// Running reports whether the member runs.
func (s *Server) Running() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.etcd != nil
}

// ClusterID returns the etcd cluster ID (0 when stopped).
func (s *Server) ClusterID() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.etcd == nil {
		return 0
	}
	return uint64(s.etcd.Server.Cluster().ID())
}

// Config returns the resolved configuration (ports filled in).
func (s *Server) Config() Config { return s.cfg }

// CA returns the certificate authority of this etcd.
func (s *Server) CA() *pki.CA { return s.ca }

// CAFile returns the path of the CA certificate clients must trust.
func (s *Server) CAFile() string { return s.caFile }

// Endpoints returns the client URL of this member.
func (s *Server) Endpoints() []string { return []string{s.cfg.ClientURL} }

// dialURL is the client URL local clients dial: ClientURL, with a loopback
// address instead of an unspecified one (0.0.0.0 or ::), which a
// certificate does not cover.
func (s *Server) dialURL() string {
	u, err := url.Parse(s.cfg.ClientURL)
	if err != nil {
		return s.cfg.ClientURL
	}
	if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsUnspecified() {
		lo := "127.0.0.1"
		if ip.To4() == nil {
			lo = "::1"
		}
		u.Host = net.JoinHostPort(lo, u.Port())
	}
	return u.String()
}

// checkServedCert checks that the certificate to serve loads, is signed by
// ca and covers the host local clients dial.
func checkServedCert(certFile, keyFile string, ca *pki.CA, dial string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("%w: server certificate: %w", ErrConfig, err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		return fmt.Errorf("%w: server certificate %s: %w", ErrConfig, certFile, err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: ca.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: server certificate %s is not for this etcd's CA: %w", ErrConfig, certFile, err)
	}
	if u, err := url.Parse(dial); err == nil {
		if err := leaf.VerifyHostname(u.Hostname()); err != nil {
			return fmt.Errorf("%w: server certificate %s must cover %s, which local clients dial: %w", ErrConfig, certFile, u.Hostname(), err)
		}
	}
	return nil
}

// AdminConfig returns a client config that acts as the root user. Its
// endpoint is the client URL, on loopback when etcd listens on all
// addresses.
func (s *Server) AdminConfig() kvstore.Config {
	return kvstore.Config{
		Endpoints:     []string{s.dialURL()},
		TrustedCAFile: s.caFile,
		CertFile:      s.adminCert,
		KeyFile:       s.adminKey,
	}
}

// ClientConfig returns a client config with a certificate for user (issued
// if missing), whatever permissions that user has in etcd.
func (s *Server) ClientConfig(user string) (kvstore.Config, error) {
	certFile, keyFile, err := s.clientCert(user)
	if err != nil {
		return kvstore.Config{}, err
	}
	return kvstore.Config{
		Endpoints:     []string{s.dialURL()},
		TrustedCAFile: s.caFile,
		CertFile:      certFile,
		KeyFile:       keyFile,
	}, nil
}

// JoinEndpoints returns the client URLs of several members.
func JoinEndpoints(servers ...*Server) []string {
	var eps []string
	for _, s := range servers {
		eps = append(eps, s.Endpoints()...)
	}
	return eps
}

func initialCluster(names, peerURLs []string) string {
	parts := make([]string, len(names))
	for i := range names {
		parts[i] = names[i] + "=" + peerURLs[i]
	}
	return strings.Join(parts, ",")
}
