package ciliuminterop

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Report is the tool's read output: what Cilium's code made of each remote
// cluster, and every warning or error it logged (a value refused by one of
// Cilium's validators is always logged).
type Report struct {
	Clusters map[string]*ClusterReport `json:"clusters"`
	Warnings []string                  `json:"warnings"`
}

// ClusterReport is one remote cluster as Cilium decoded it.
type ClusterReport struct {
	Config struct {
		ID           uint32 `json:"id"`
		Capabilities struct {
			SyncedCanaries        bool   `json:"syncedCanaries"`
			Cached                bool   `json:"cached"`
			MaxConnectedClusters  uint32 `json:"maxConnectedClusters"`
			ServiceExportsEnabled *bool  `json:"serviceExportsEnabled"`
		} `json:"capabilities"`
	} `json:"config"`
	// Synced: nodes, services, ipcache, identities, serviceexports.
	Synced   map[string]bool           `json:"synced"`
	Nodes    map[string]NodeSummary    `json:"nodes"`    // by <cluster>/<node>
	Services map[string]ServiceSummary `json:"services"` // by <cluster>/<ns>/<name>
	// IPCache is keyed as Cilium's ipcache is: the IP (or prefix) with
	// "@<cluster id>" appended.
	IPCache    map[string]IPSummary `json:"ipcache"`
	Identities map[string]string    `json:"identities"` // numeric id -> label string
}

// NodeSummary is what Cilium parsed of a node.
type NodeSummary struct {
	Cluster       string   `json:"cluster"`
	ClusterID     uint32   `json:"clusterID"`
	Source        string   `json:"source"`
	Addresses     []string `json:"addresses"` // Type=IP
	IPv4AllocCIDR string   `json:"ipv4AllocCIDR"`
	IPv6AllocCIDR string   `json:"ipv6AllocCIDR"`
	IPv4HealthIP  string   `json:"ipv4HealthIP"`
	IPv6HealthIP  string   `json:"ipv6HealthIP"`
}

// ServiceSummary is what Cilium parsed of a service: ip -> port name ->
// "TCP:80".
type ServiceSummary struct {
	Shared    bool                         `json:"shared"`
	ClusterID uint32                       `json:"clusterID"`
	Frontends map[string]map[string]string `json:"frontends"`
	Backends  map[string]map[string]string `json:"backends"`
}

// IPSummary is what Cilium's IPIdentityWatcher handed to its ipcache.
type IPSummary struct {
	ID         uint32   `json:"id"`
	HostIP     string   `json:"hostIP"`
	Namespace  string   `json:"namespace"`
	Pod        string   `json:"pod"`
	NamedPorts []string `json:"namedPorts"` // name=port/protocol number
}

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// Binary returns the path of the tool, building it on first use. It skips
// t in -short mode, and when the tool cannot be built outside CI.
func Binary(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the Cilium interop tool (builds Cilium's code); skipped in -short mode")
	}
	if p := os.Getenv("CILIUM_INTEROP_BIN"); p != "" {
		return p
	}
	buildOnce.Do(func() { buildPath, buildErr = build() })
	if buildErr != nil {
		testenv.Unavailable(t, buildErr.Error())
	}
	return buildPath
}

// build compiles tools/ciliuminterop into the user cache directory (the
// Go build cache makes later builds cheap). Each process builds to a name
// of its own and renames it over the shared one, so concurrent test
// binaries never run a half-written file and leave one copy behind.
func build() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("locate the source tree")
	}
	src := filepath.Join(filepath.Dir(file), "..", "..", "tools", "ciliuminterop")
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	out := filepath.Join(cache, "clustermesh", "ciliuminterop")
	tmp := out + "." + strconv.Itoa(os.Getpid())
	cmd := exec.Command("go", "build", "-o", tmp, ".")
	cmd.Dir = src
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build the Cilium interop tool in %s: %v\n%s", src, err, b)
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("install the Cilium interop tool: %w", err)
	}
	return out, nil
}

// ReadConfig says what Read runs Cilium's reader on.
type ReadConfig struct {
	// Dir is the --clustermesh-config directory (kvstore.WriteConfigFiles).
	Dir string
	// Name and ID are those of the (Cilium) cluster that reads.
	Name string
	ID   uint32
	// WaitFor are the remote clusters that must sync completely.
	WaitFor []string
	// Timeout bounds the wait (the tool's default, 2 minutes, when 0).
	Timeout time.Duration
}

// Read runs Cilium's agent-side reader until every cluster of cfg.WaitFor
// is synced (or the tool's timeout) and returns its report. A report is
// returned whenever the tool printed one; err says the tool failed.
func Read(ctx context.Context, t testing.TB, cfg ReadConfig) (Report, error) {
	t.Helper()
	args := []string{"read", "--clustermesh-config", cfg.Dir, "--cluster-name", cfg.Name, "--cluster-id", strconv.FormatUint(uint64(cfg.ID), 10)}
	for _, c := range cfg.WaitFor {
		args = append(args, "--wait-for", c)
	}
	if cfg.Timeout > 0 {
		args = append(args, "--timeout", cfg.Timeout.String())
	}
	var rep Report
	out, err := run(ctx, Binary(t), args...)
	if jerr := json.Unmarshal(out, &rep); jerr != nil && err == nil {
		err = fmt.Errorf("decode report: %w", jerr)
	}
	return rep, err
}

// Write stores the tool's dump of Cilium cluster name (ID id) into the etcd
// that the client config file etcdConfig points at, and returns the keys
// written.
func Write(ctx context.Context, t testing.TB, etcdConfig, name string, id uint32) ([]string, error) {
	t.Helper()
	out, err := run(ctx, Binary(t), "write", "--etcd-config", etcdConfig, "--cluster-name", name, "--cluster-id", strconv.FormatUint(uint64(id), 10))
	if err != nil {
		return nil, err
	}
	var d struct {
		Keys []string `json:"keys"`
	}
	if err := json.Unmarshal(out, &d); err != nil {
		return nil, fmt.Errorf("decode dump: %w", err)
	}
	return d.Keys, nil
}

func run(ctx context.Context, bin string, args ...string) ([]byte, error) {
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.Bytes(), fmt.Errorf("ciliuminterop %s: %w: %s", args[0], err, stderr.String())
	}
	return stdout.Bytes(), nil
}
