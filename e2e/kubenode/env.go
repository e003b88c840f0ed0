package kubenode

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/clustermesh/clustermesh/e2e/harness"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/netns"
)

// StateRoot holds every run's node state (see the package doc); a bpffs or
// overlay left mounted under it is unmounted by hack/cleanup.sh.
const StateRoot = "/run/clustermesh-test"

var gateway = netip.MustParseAddr("172.31.0.1")

// kernelTunables are the sysctls every kubelet sets to its own values at
// start (there is no option to leave them): Close puts back what it found.
var kernelTunables = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes",
}

// Config says where the binaries and images are and where to work.
type Config struct {
	KubeBinDir string // kube-apiserver, -controller-manager, -scheduler, kubelet, kube-proxy
	// Images are OCI archives to import into every node's containerd; the
	// first one whose name contains "pause" is the sandbox image.
	Images []Image
	Dir    string // logs and kubeconfigs
	Run    string // names namespaces cme-<Run>-* and StateRoot/kube-<Run>
	Log    *slog.Logger
}

// Image is one archive and the reference it holds.
type Image struct {
	Archive, Ref string
}

// Env is the running clusters.
type Env struct {
	cfg      Config
	DC       *netns.NS
	Clusters []*Cluster
	state    string // StateRoot/kube-<Run>
	sysctls  map[string]string

	fwdCtx    context.Context
	fwdCancel context.CancelFunc
	fwdWG     sync.WaitGroup

	mu      sync.Mutex
	closers []func() // run in reverse by Close; guarded by mu
}

// Cluster is one control plane and its nodes.
type Cluster struct {
	Name    string
	ID      int
	CP      *kubetest.ControlPlane
	Sched   *harness.Process
	Nodes   []*Node
	APIAddr string // the kube-apiserver as the nodes reach it (gateway:port)
	env     *Env
	dir     string
}

// Start brings up one cluster per name (IDs 1, 2, ...) with one node each.
// On error everything started so far is removed.
func Start(ctx context.Context, cfg Config, names ...string) (_ *Env, err error) {
	for _, b := range []string{"kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"} {
		if _, err := os.Stat(filepath.Join(cfg.KubeBinDir, b)); err != nil {
			return nil, fmt.Errorf("kubenode: %w", err)
		}
	}
	e := &Env{cfg: cfg, state: filepath.Join(StateRoot, "kube-"+cfg.Run)}
	e.fwdCtx, e.fwdCancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			e.Close()
		}
	}()
	if e.sysctls, err = readSysctls(); err != nil {
		return e, err
	}
	e.onClose(e.restoreSysctls)
	if err := os.MkdirAll(e.state, 0o700); err != nil {
		return e, err
	}
	e.onClose(func() { _ = os.RemoveAll(e.state) })
	e.onClose(func() { removeContainerLogLinks(cfg.Dir) })
	if e.DC, err = e.newNS("dc"); err != nil {
		return e, err
	}
	if err := e.DC.Batch("link set lo up", netns.AddBridge("cme-br"), "link set cme-br up",
		"addr add "+gateway.String()+"/24 dev cme-br"); err != nil {
		return e, err
	}
	for i, name := range names {
		c, err := e.startCluster(ctx, name, i+1)
		if err != nil {
			return e, fmt.Errorf("start cluster %q: %w", name, err)
		}
		e.Clusters = append(e.Clusters, c)
	}
	return e, nil
}

// Close stops every process and removes every namespace, mount and
// directory Start made, in reverse order. It is safe to call twice.
func (e *Env) Close() {
	e.mu.Lock()
	cs := e.closers
	e.closers = nil
	e.mu.Unlock()
	for _, f := range slices.Backward(cs) {
		f()
	}
	e.fwdCancel()
	e.fwdWG.Wait()
}

func (e *Env) onClose(f func()) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.closers = append(e.closers, f)
}

func (e *Env) newNS(suffix string) (*netns.NS, error) {
	n, err := netns.Add("cme-" + e.cfg.Run + "-" + suffix)
	if err != nil {
		return nil, err
	}
	e.onClose(n.Remove)
	return n, nil
}

// forward makes target (on loopback) reachable at the gateway, same port.
func (e *Env) forward(target string) (string, error) {
	f, addr, err := harness.ForwardSamePort(e.DC, gateway, target)
	if err != nil {
		return "", err
	}
	e.fwdWG.Go(func() {
		if err := f.Run(e.fwdCtx); err != nil {
			e.cfg.Log.Warn("forwarder stopped", "addr", addr, "error", err)
		}
	})
	return addr, nil
}

func (e *Env) startCluster(ctx context.Context, name string, id int) (*Cluster, error) {
	c := &Cluster{Name: name, ID: id, env: e, dir: filepath.Join(e.cfg.Dir, name)}
	cp, err := kubetest.Start(ctx, kubetest.Config{
		BinDir: e.cfg.KubeBinDir, Dir: filepath.Join(c.dir, "control-plane"), Name: name,
		ServiceCIDR: fmt.Sprintf("10.96.%d.0/24", id),
		Controllers: []string{
			"endpointslice-controller", "serviceaccount-controller", "serviceaccount-token-controller",
			"namespace-controller", "garbage-collector-controller", "service-cidr-controller",
			"deployment-controller", "replicaset-controller", "daemonset-controller",
			// Removes the not-ready taint the kubelet registers with.
			"node-lifecycle-controller",
		},
	}, e.cfg.Log)
	if cp != nil {
		e.onClose(cp.Stop)
	}
	if err != nil {
		return nil, err
	}
	c.CP = cp
	host := strings.TrimPrefix(cp.REST.Host, "https://")
	if c.APIAddr, err = e.forward(host); err != nil {
		return nil, err
	}
	if c.Sched, err = harness.StartProcess("kube-scheduler", filepath.Join(c.dir, "kube-scheduler.log"), nil,
		filepath.Join(e.cfg.KubeBinDir, "kube-scheduler"),
		"--kubeconfig="+cp.Kubeconfig(), "--leader-elect=false", "--secure-port=0", "--v=1"); err != nil {
		return nil, err
	}
	e.onClose(c.Sched.Kill)
	if err := c.publishAPIServer(ctx); err != nil {
		return nil, err
	}
	n, err := e.addNode(ctx, c, 1)
	if err != nil {
		return nil, fmt.Errorf("node %d: %w", 1, err)
	}
	c.Nodes = append(c.Nodes, n)
	return c, nil
}

// Kubeconfig is the admin kubeconfig of the cluster (loopback).
func (c *Cluster) Kubeconfig() string { return c.CP.Kubeconfig() }

// ServiceIP is the cluster's first service address (the kubernetes Service).
func (c *Cluster) ServiceIP() netip.Addr { return netip.AddrFrom4([4]byte{10, 96, byte(c.ID), 1}) }

// apiPort is the kube-apiserver's port (the same on loopback and gateway).
func (c *Cluster) apiPort() int {
	_, p, _ := net.SplitHostPort(c.APIAddr)
	n, _ := strconv.Atoi(p)
	return n
}

// containerLogLinks is where every kubelet links its containers' logs (not
// configurable); the links of a killed kubelet stay behind.
const containerLogLinks = "/var/log/containers"

// removeContainerLogLinks removes the links into dir, and the directory when
// that leaves it empty.
func removeContainerLogLinks(dir string) {
	ents, _ := os.ReadDir(containerLogLinks)
	for _, ent := range ents {
		p := filepath.Join(containerLogLinks, ent.Name())
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, dir+"/") {
			_ = os.Remove(p)
		}
	}
	_ = os.Remove(containerLogLinks) // only when empty
}

func readSysctls() (map[string]string, error) {
	m := map[string]string{}
	for _, k := range kernelTunables {
		b, err := os.ReadFile("/proc/sys/" + k)
		if err != nil {
			return nil, fmt.Errorf("read sysctl %q: %w", k, err)
		}
		m[k] = strings.TrimSpace(string(b))
	}
	return m, nil
}

func (e *Env) restoreSysctls() {
	for k, v := range e.sysctls {
		if err := os.WriteFile("/proc/sys/"+k, []byte(v), 0o644); err != nil {
			e.cfg.Log.Warn("restore sysctl", "key", k, "error", err)
		}
	}
}

// ctr runs ctr against a node's containerd.
func ctr(sock string, args ...string) ([]byte, error) {
	out, err := exec.Command("ctr", append([]string{"--address", sock, "--namespace", "k8s.io"}, args...)...).CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("ctr %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return out, nil
}
