package kvstore

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"sigs.k8s.io/yaml"
)

// Defaults of the optional Config fields.
const (
	// DefaultListPageSize is large because etcd counts the rest of the
	// listed range for every page (RangeResponse.count): a list of n keys
	// in pages of p walks etcd's index about n²/2p times. For 300,000 keys
	// (bench/peer), pages of 50,000 instead of 10,000 cut etcd's CPU for
	// the listing by ≈ 20–50 %; the client's CPU moved by at most ≈ 5 %
	// (larger receive buffers). A page of typical values stays far below
	// the client's 256 MiB receive limit.
	DefaultListPageSize      = 50000
	DefaultLeaseTTL          = 15 * time.Minute
	DefaultMaxKeysPerLease   = 1000
	DefaultKeepaliveInterval = 15 * time.Second
	DefaultKeepaliveTimeout  = 5 * time.Second
	DefaultDialTimeout       = 5 * time.Second
)

// ErrConfig is returned for a configuration that cannot be used.
var ErrConfig = errors.New("invalid kvstore config")

// Config is an etcd client configuration in the file format of Cilium's
// remote-cluster configs (one file per cluster in --clustermesh-config), plus
// optional tuning. Zero values of the options take the defaults above.
type Config struct {
	Endpoints     []string `json:"endpoints"`
	TrustedCAFile string   `json:"trusted-ca-file,omitempty"`
	CertFile      string   `json:"cert-file,omitempty"`
	KeyFile       string   `json:"key-file,omitempty"`

	// QPS limits the unary requests per second of the client (lists, puts,
	// deletes, status probes); 0 means unlimited. Watch and lease keepalive
	// streams are not limited.
	QPS float64 `json:"qps,omitempty"`
	// ListPageSize is the number of keys per page of a list.
	ListPageSize int64 `json:"list-page-size,omitempty"`
	// LeaseTTL is the TTL of the leases that hold written keys.
	LeaseTTL Duration `json:"lease-ttl,omitempty"`
	// MaxKeysPerLease bounds how many keys share one lease.
	MaxKeysPerLease int `json:"max-keys-per-lease,omitempty"`
	// KeepaliveInterval is the gRPC keepalive period of the connection; it
	// is also how often a watch checks the etcd cluster ID and revision.
	KeepaliveInterval Duration `json:"keepalive-interval,omitempty"`
	// KeepaliveTimeout is how long a keepalive may stay unanswered before
	// the connection is considered dead.
	KeepaliveTimeout Duration `json:"keepalive-timeout,omitempty"`
	// DialTimeout bounds connecting and every request of the status probe.
	DialTimeout Duration `json:"dial-timeout,omitempty"`

	// Dial, when set, opens the connections to the endpoints instead of a
	// plain TCP dial through system DNS (see Dialer). It is not part of
	// the file format.
	Dial Dialer `json:"-"`
}

// WithDefaults returns cfg with every unset option set to its default.
func (cfg Config) WithDefaults() Config {
	if cfg.ListPageSize <= 0 {
		cfg.ListPageSize = DefaultListPageSize
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = Duration(DefaultLeaseTTL)
	}
	if cfg.MaxKeysPerLease <= 0 {
		cfg.MaxKeysPerLease = DefaultMaxKeysPerLease
	}
	if cfg.KeepaliveInterval <= 0 {
		cfg.KeepaliveInterval = Duration(DefaultKeepaliveInterval)
	}
	if cfg.KeepaliveTimeout <= 0 {
		cfg.KeepaliveTimeout = Duration(DefaultKeepaliveTimeout)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = Duration(DefaultDialTimeout)
	}
	return cfg
}

// Validate reports a config that cannot work.
func (cfg Config) Validate() error {
	if len(cfg.Endpoints) == 0 {
		return fmt.Errorf("%w: no endpoints", ErrConfig)
	}
	if cfg.QPS < 0 {
		return fmt.Errorf("%w: negative qps", ErrConfig)
	}
	return nil
}

// ParseConfig parses a YAML (or JSON) etcd client config.
func ParseConfig(data []byte) (Config, error) {
	var cfg Config
	if err := yaml.Unmarshal(data, &cfg); err != nil {
		return Config{}, fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// WriteConfigFiles writes, into dir, what a remote cluster needs to read
// an etcd: a config file named name with endpoints, in the format
// ParseConfig reads (and an agent's --clustermesh-config holds), and the
// CA, certificate and key files rc names, copied next to it as
// name.etcd-client-ca.crt, name.etcd-client.crt and name.etcd-client.key.
// Each file is written to a temporary name and renamed, the config last, so
// a reader watching dir never sees a partial file or a config without its
// files.
func WriteConfigFiles(dir, name string, endpoints []string, rc Config) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	out := Config{Endpoints: endpoints}
	for _, f := range []struct {
		src string
		dst *string
		ext string
	}{
		{rc.TrustedCAFile, &out.TrustedCAFile, ".etcd-client-ca.crt"},
		{rc.CertFile, &out.CertFile, ".etcd-client.crt"},
		{rc.KeyFile, &out.KeyFile, ".etcd-client.key"},
	} {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return fmt.Errorf("client config %s: %w", name, err)
		}
		*f.dst = filepath.Join(dir, name+f.ext)
		if err := writeFileAtomic(*f.dst, data); err != nil {
			return err
		}
	}
	data, err := yaml.Marshal(out)
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, name), data)
}

func writeFileAtomic(path string, data []byte) error {
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// LoadConfig reads and parses the etcd client config file at path.
func LoadConfig(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("read kvstore config: %w", err)
	}
	cfg, err := ParseConfig(data)
	if err != nil {
		return Config{}, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, nil
}

// Duration is a time.Duration that reads from "1m30s" strings or from a
// number of seconds, and writes as a string.
type Duration time.Duration

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// MarshalJSON writes d as a duration string.
func (d Duration) MarshalJSON() ([]byte, error) {
	return json.Marshal(time.Duration(d).String())
}

// UnmarshalJSON reads "90s"-style strings or plain numbers of seconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		if v, err := time.ParseDuration(s); err == nil {
			*d = Duration(v)
			return nil
		}
		secs, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("duration %q: %w", s, err)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	var secs float64
	if err := json.Unmarshal(b, &secs); err != nil {
		return fmt.Errorf("duration %s: %w", b, err)
	}
	*d = Duration(secs * float64(time.Second))
	return nil
}
