package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/netns"
)

// Addresses of the datacenter network: a bridge in the datacenter
// namespace, the gateway address on it (where the forwarders listen) and
// the nodes' underlay addresses, all inside namespaces the harness made.
var (
	underlay = netip.MustParsePrefix("172.30.0.0/24")
	gateway  = netip.MustParseAddr("172.30.0.1")
)

// Ports the echo servers listen on inside every pod.
const (
	HTTPPort = 8080
	UDPPort  = 8081
)

// PinRoot holds one directory per run with every node's bpffs pin dir.
const PinRoot = "/run/clustermesh-test"

// PodNamespace is the Kubernetes namespace of the harness's pods.
const PodNamespace = "e2e"

// ClusterSpec names one cluster and its ID.
type ClusterSpec struct {
	Name string
	ID   uint32
}

// Config shapes a mesh.
type Config struct {
	// Prefix starts every namespace name: "cmt" for tests, "cmd" for the demo.
	Prefix string
	// Clusters default to c1, c2 and c3 with IDs 1, 2 and 255.
	Clusters []ClusterSpec
	// NodesPerCluster defaults to 2; every node gets one echo pod.
	NodesPerCluster int
	// KubeBinDir holds kube-apiserver and kube-controller-manager.
	KubeBinDir string
	// Bins are the built binaries (Build).
	Bins Binaries
	// Dir receives data, certificates and logs.
	Dir string
	// CTEntries sizes each agent's CT maps (default 4096).
	CTEntries int
	// AgentArgs are extra flags for every agent.
	AgentArgs []string
	// Mode is the agents' --mode: "full" (default; the harness has no
	// other CNI) or "coexist".
	Mode string
	// Join is JoinCLI (default) or JoinDirect.
	Join string
	// Connection is ConnectionKVStoreMesh (default) or ConnectionDirect:
	// how the agents read the remote clusters (kvstoremesh.go).
	Connection string
	// ExternalEtcd gives a cluster (by name) an etcd the test runs: its
	// clustermesh-apiserver uses it through --kvstore-config (see
	// external.go); with JoinCLI the cluster is enabled in the chart's
	// external etcd mode.
	ExternalEtcd map[string]EtcdMembers
	Log          *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Prefix == "" {
		c.Prefix = "cmt"
	}
	if len(c.Clusters) == 0 {
		c.Clusters = []ClusterSpec{{"c1", 1}, {"c2", 2}, {"c3", 255}}
	}
	if c.NodesPerCluster == 0 {
		c.NodesPerCluster = 2
	}
	if c.CTEntries == 0 {
		c.CTEntries = 4096
	}
	if c.Mode == "" {
		c.Mode = "full"
	}
	if c.Join == "" {
		c.Join = JoinCLI
	}
	if c.Connection == "" {
		c.Connection = ConnectionKVStoreMesh
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

// Mesh is a running set of clusters. Close tears all of it down.
type Mesh struct {
	cfg Config
	Run string // random id of this run, part of every name
	// Kubeconfig has a context per cluster, named after it.
	Kubeconfig string
	DC         *NS // the datacenter namespace with the underlay bridge
	Clusters   []*Cluster

	mu       sync.Mutex
	cleanups []func() // undo steps, run last-first by Close; guarded by mu
	nextIP   netip.Addr

	fwdCtx    context.Context
	fwdCancel context.CancelFunc
	fwdWG     sync.WaitGroup // the forwarders' Run goroutines
}

// Cluster is one cluster of the mesh.
type Cluster struct {
	Name      string
	ID        uint32
	CP        *kubetest.ControlPlane
	APIServer *Process
	Nodes     []*Node
	// ConfigDir is the agents' --clustermesh-config (the mounted Secret).
	ConfigDir string

	mesh            *Mesh
	dir             string
	etcdPort        int
	apiArgs         []string   // the clustermesh-apiserver's flags
	apiHealth       string     // its /readyz URL
	remoteDir       string     // the apiserver's --remote-config-dir
	advertise       string     // the etcd's address on the bridge (JoinCLI: the load balancer's)
	lb              *Forwarder // forwards advertise to the etcd
	agentKubeconfig string     // kube-apiserver through the gateway
	ownKVStore      string     // the agents' --kvstore-config (embedded etcd only)
}

// Start builds the mesh: control planes, apiservers, nodes with agents, one
// echo pod per node, and joins every pair of clusters. On error everything
// started so far is torn down.
func Start(ctx context.Context, cfg Config) (_ *Mesh, err error) {
	cfg.setDefaults()
	switch {
	case cfg.Connection != ConnectionKVStoreMesh && cfg.Connection != ConnectionDirect:
		return nil, fmt.Errorf("connection mode %q: want %s or %s", cfg.Connection, ConnectionKVStoreMesh, ConnectionDirect)
	case cfg.Connection == ConnectionKVStoreMesh && (cfg.Join != JoinCLI || len(cfg.ExternalEtcd) > 0):
		return nil, ErrKVStoreMeshNeedsCLI
	}
	m := &Mesh{cfg: cfg, Run: randomID(), nextIP: gateway}
	m.fwdCtx, m.fwdCancel = context.WithCancel(context.Background())
	m.onClose(func() { m.fwdCancel(); m.fwdWG.Wait() })
	defer func() {
		if err != nil {
			m.Close()
		}
	}()
	log := cfg.Log
	if m.DC, err = m.newNS("dc"); err != nil {
		return nil, err
	}
	br := cfg.Prefix + "-br"
	if err := m.DC.Batch("link set lo up", netns.AddBridge(br), "link set "+br+" up",
		fmt.Sprintf("addr add %s/%d dev %s", gateway, underlay.Bits(), br)); err != nil {
		return nil, err
	}
	pinDir := filepath.Join(PinRoot, m.Run)
	m.onClose(func() { _ = os.RemoveAll(pinDir) })

	log.Info("starting Kubernetes control planes", "clusters", len(cfg.Clusters))
	cps := make([]*kubetest.ControlPlane, len(cfg.Clusters))
	errs := make([]error, len(cfg.Clusters))
	var wg sync.WaitGroup
	for i, cs := range cfg.Clusters {
		wg.Go(func() {
			cps[i], errs[i] = kubetest.Start(ctx, kubetest.Config{
				BinDir: cfg.KubeBinDir, Dir: filepath.Join(cfg.Dir, cs.Name, "kube"), Name: cs.Name,
				ServiceCIDR: fmt.Sprintf("10.96.%d.0/24", cs.ID),
			}, log)
		})
	}
	wg.Wait()
	for i, cp := range cps {
		if cp != nil {
			m.onClose(cp.Stop)
		}
		if errs[i] != nil {
			return nil, fmt.Errorf("cluster %s: %w", cfg.Clusters[i].Name, errs[i])
		}
	}
	for i, cs := range cfg.Clusters {
		c := &Cluster{Name: cs.Name, ID: cs.ID, CP: cps[i], mesh: m, dir: filepath.Join(cfg.Dir, cs.Name)}
		c.ConfigDir = filepath.Join(c.dir, "clustermesh-config")
		if err := os.MkdirAll(c.ConfigDir, 0o700); err != nil {
			return nil, err
		}
		m.Clusters = append(m.Clusters, c)
	}
	if err := m.writeKubeconfig(); err != nil {
		return nil, err
	}
	if cfg.Join == JoinCLI {
		log.Info("clustermesh enable in every cluster, then connect --connection-mode mesh", "agents", cfg.Connection)
		for i, c := range m.Clusters {
			if ms := cfg.ExternalEtcd[c.Name]; ms != nil {
				err = m.enableExternal(ctx, c, ms)
			} else {
				err = m.enableCLI(ctx, c, netip.AddrFrom4([4]byte{172, 30, 0, byte(200 + i)}))
			}
			if err != nil {
				return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
			}
		}
		args := []string{"connect", "--context=" + m.Clusters[0].Name, "--connection-mode=mesh", "--skip-endpoint-check"}
		for _, c := range m.Clusters[1:] {
			args = append(args, "--destination-context="+c.Name)
		}
		if _, err := m.CLI(ctx, args...); err != nil {
			return nil, err
		}
	}
	for _, c := range m.Clusters {
		if err := m.startCluster(ctx, c); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
		}
	}
	log.Info("starting nodes and agents")
	for _, c := range m.Clusters {
		if err := kubetest.EnsureNamespace(ctx, c.CP.Client, PodNamespace); err != nil {
			return nil, err
		}
		for j := range cfg.NodesPerCluster {
			n, err := m.addNode(ctx, c, fmt.Sprintf("n%d", j+1), j+1)
			if err != nil {
				return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
			}
			if _, err := n.AddPod(ctx, "echo-"+n.Name, map[string]string{"app": "echo"}); err != nil {
				return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
			}
		}
	}
	log.Info("joining every pair of clusters")
	for _, r := range m.Clusters {
		if cfg.Join == JoinCLI {
			if err := r.MountRemoteClusters(ctx); err != nil {
				return nil, fmt.Errorf("cluster %s: %w", r.Name, err)
			}
			continue
		}
		for _, e := range m.Clusters {
			if r != e {
				if err := m.copyRemoteConfig(ctx, r, e); err != nil {
					return nil, err
				}
			}
		}
	}
	return m, nil
}

// onClose registers an undo step.
func (m *Mesh) onClose(f func()) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.cleanups = append(m.cleanups, f)
}

// Close tears down everything Start and later calls made, last first. It is
// safe to call twice.
func (m *Mesh) Close() {
	m.mu.Lock()
	cs := m.cleanups
	m.cleanups = nil
	m.mu.Unlock()
	for _, f := range slices.Backward(cs) {
		f()
	}
}

func (m *Mesh) newNS(suffix string) (*NS, error) {
	n, err := netns.Add(m.cfg.Prefix + "-" + m.Run + "-" + suffix)
	if err != nil {
		return nil, err
	}
	m.onClose(n.Remove)
	return n, nil
}

// forward makes target (on loopback) reachable at the gateway address with
// the same port.
func (m *Mesh) forward(target string) (string, error) {
	_, addr, err := m.forwarder(target)
	return addr, err
}

// forwarder is forward, returning the running forwarder too.
func (m *Mesh) forwarder(target string) (*Forwarder, string, error) {
	f, addr, err := ForwardSamePort(m.DC, gateway, target)
	if err != nil {
		return nil, "", err
	}
	m.fwdWG.Go(func() {
		if err := f.Run(m.fwdCtx); err != nil {
			m.cfg.Log.Warn("forwarder stopped", "addr", addr, "error", err)
		}
	})
	return f, addr, nil
}

// startCluster starts the cluster's clustermesh-apiserver with a read-only
// etcd user for every other cluster.
func (m *Mesh) startCluster(ctx context.Context, c *Cluster) error {
	u, err := url.Parse(c.CP.REST.Host)
	if err != nil {
		return err
	}
	kubeAddr, err := m.forward(u.Host)
	if err != nil {
		return err
	}
	kc, err := clientcmd.LoadFromFile(c.CP.Kubeconfig())
	if err != nil {
		return err
	}
	for _, cl := range kc.Clusters {
		cl.Server = "https://" + kubeAddr
	}
	c.agentKubeconfig = filepath.Join(c.dir, "agent-kubeconfig")
	if err := clientcmd.WriteToFile(*kc, c.agentKubeconfig); err != nil {
		return err
	}
	if ms := m.cfg.ExternalEtcd[c.Name]; ms != nil {
		return m.startExternal(ctx, c, ms)
	}
	ports, err := freePorts(2)
	if err != nil {
		return err
	}
	c.etcdPort = ports[0]
	etcdAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0]))
	var users []string
	args := []string{"--etcd-tls-dir=" + c.tlsDir()}
	if m.cfg.Join == JoinCLI {
		if err := c.mountRemoteUsers(ctx); err != nil {
			return err
		}
		args = append(args, "--remote-users-file="+c.usersFile(), "--status-namespace="+meshNamespace)
		f, err := ListenIn(m.DC, c.advertise, etcdAddr)
		if err != nil {
			return fmt.Errorf("load balancer %s: %w", c.advertise, err)
		}
		c.lb = f
		m.fwdWG.Go(func() { _ = f.Run(m.fwdCtx) })
		if c.kvstoremesh() {
			if err := c.mountCache(ctx); err != nil {
				return err
			}
			if err := os.MkdirAll(c.kvstoremeshDir(), 0o700); err != nil {
				return err
			}
			args = append(args, "--kvstoremesh-config="+c.kvstoremeshDir())
		}
	} else {
		if c.lb, c.advertise, err = m.forwarder(etcdAddr); err != nil {
			return err
		}
		for _, o := range m.Clusters {
			if o != c {
				users = append(users, o.Name)
			}
		}
		args = append(args, "--remote-clusters="+strings.Join(users, ","))
	}
	c.remoteDir = filepath.Join(c.dir, "remotes")
	c.apiArgs = append(args,
		"--cluster-name="+c.Name, "--cluster-id="+strconv.Itoa(int(c.ID)),
		"--kubeconfig="+c.CP.Kubeconfig(),
		"--etcd-data-dir="+c.EtcdDataDir(),
		"--etcd-listen-address="+etcdAddr, "--etcd-advertise-address="+c.advertise,
		"--remote-config-dir="+c.remoteDir,
		"--health-address=127.0.0.1:"+strconv.Itoa(ports[1]), "--metrics-address=",
	)
	c.apiHealth = "http://127.0.0.1:" + strconv.Itoa(ports[1]) + "/readyz"
	if err := c.StartAPIServer(ctx); err != nil {
		return err
	}
	return c.writeOwnKVStoreConfig()
}

// StartAPIServer starts the cluster's clustermesh-apiserver (with its
// embedded etcd, on the same data directory and ports as before) and waits
// until it is ready. extra flags come after the usual ones, so they win.
func (c *Cluster) StartAPIServer(ctx context.Context, extra ...string) error {
	p, err := StartProcess("clustermesh-apiserver "+c.Name, filepath.Join(c.dir, "clustermesh-apiserver.log"), nil, c.mesh.cfg.Bins.APIServer,
		append(slices.Clone(c.apiArgs), extra...)...)
	if err != nil {
		return err
	}
	c.APIServer = p
	c.mesh.onClose(func() { p.Stop(5 * time.Second) })
	return waitHTTP(ctx, p, c.apiHealth, 60*time.Second)
}

// KillAPIServer kills the cluster's clustermesh-apiserver and with it the
// etcd it embeds (SIGKILL: no lease revoked, no goodbye).
func (c *Cluster) KillAPIServer() { c.APIServer.Kill() }

// Connect connects r and e both ways: with JoinCLI by `clustermesh
// connect` and mounting both remote-clusters Secrets again, else by
// copying the client configs their apiservers wrote.
func (m *Mesh) Connect(ctx context.Context, r, e *Cluster) error {
	if m.cfg.Join == JoinCLI {
		if _, err := m.CLI(ctx, "connect", "--context="+r.Name, "--destination-context="+e.Name, "--skip-endpoint-check"); err != nil {
			return err
		}
		return errors.Join(r.Mount(ctx), e.Mount(ctx))
	}
	return errors.Join(m.copyRemoteConfig(ctx, r, e), m.copyRemoteConfig(ctx, e, r))
}

// Disconnect disconnects r and e both ways (`clustermesh disconnect` with
// JoinCLI: the apiservers then also drop the read-only etcd users).
func (m *Mesh) Disconnect(ctx context.Context, r, e *Cluster) error {
	if m.cfg.Join == JoinCLI {
		if _, err := m.CLI(ctx, "disconnect", "--context="+r.Name, "--destination-context="+e.Name); err != nil {
			return err
		}
		return errors.Join(r.Mount(ctx), e.Mount(ctx))
	}
	return errors.Join(os.Remove(filepath.Join(r.ConfigDir, e.Name)), os.Remove(filepath.Join(e.ConfigDir, r.Name)))
}

// copyRemoteConfig lets the agents of reader r read cluster e: the client
// config e's apiserver wrote for user remote-<r> goes into r's
// --clustermesh-config directory.
func (m *Mesh) copyRemoteConfig(ctx context.Context, r, e *Cluster) error {
	if ms := m.cfg.ExternalEtcd[e.Name]; ms != nil {
		return m.connectExternal(ctx, r, e, ms)
	}
	src := filepath.Join(e.remoteDir, r.Name, e.Name)
	deadline := time.Now().Add(30 * time.Second)
	for {
		data, err := os.ReadFile(src)
		if err == nil {
			tmp := filepath.Join(r.ConfigDir, "."+e.Name+".tmp")
			if err := os.WriteFile(tmp, data, 0o600); err != nil {
				return err
			}
			return os.Rename(tmp, filepath.Join(r.ConfigDir, e.Name))
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("connect %s to %s: no client config from %s's apiserver: %w", r.Name, e.Name, e.Name, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Cluster returns the cluster named name, or nil.
func (m *Mesh) Cluster(name string) *Cluster {
	for _, c := range m.Clusters {
		if c.Name == name {
			return c
		}
	}
	return nil
}

// Pods returns every pod of the cluster, node by node.
func (c *Cluster) Pods() []*Pod {
	var out []*Pod
	for _, n := range c.Nodes {
		out = append(out, n.Pods...)
	}
	return out
}

// Pod returns the pod named name, or nil.
func (c *Cluster) Pod(name string) *Pod {
	for _, p := range c.Pods() {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// waitHTTP polls url until it answers 200, p exits or timeout passes.
func waitHTTP(ctx context.Context, p *Process, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := (&http.Client{Timeout: 2 * time.Second}).Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = errors.New(resp.Status)
		}
		if p.Exited() {
			return fmt.Errorf("%s exited: %s", p.Name, p.LogTail(2000))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready at %s: %v: %s", p.Name, url, err, p.LogTail(2000))
		case <-time.After(300 * time.Millisecond):
		}
	}
}

func randomID() string {
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// freePorts reserves n distinct loopback ports by binding and releasing them.
func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out, nil
}

var errNoAddress = errors.New("underlay is full")
