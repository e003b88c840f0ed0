package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/pflag"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/localcluster"
	"github.com/clustermesh/clustermesh/agent/internal/localidentity"
	"github.com/clustermesh/clustermesh/agent/internal/policy/rules"
	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/agent/internal/statusapi"
	"github.com/clustermesh/clustermesh/agent/internal/statusreport"
	"github.com/clustermesh/clustermesh/agent/internal/svcresolver"
	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
	"github.com/clustermesh/clustermesh/internal/httpserve"
	"github.com/clustermesh/clustermesh/internal/kubereach"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// ErrConfig is returned for unusable flags.
var ErrConfig = errors.New("invalid agent config")

// Config is the whole agent configuration.
type Config struct {
	NodeName             string
	ClusterName          string
	ClusterID            uint32
	MaxConnectedClusters int
	Kubeconfig           string
	Datapath             string // bpf or memory
	// Mode is ModeCoexist (beside a primary CNI and kube-proxy: only the
	// mesh's traffic) or ModeFull (the agent forwards all pod traffic and
	// load-balances every ClusterIP Service).
	Mode string
	// CoexistServices is, beside kube-proxy, which Services the agent
	// translates for its pods: CoexistServicesAll (every Service with a
	// ClusterIP but those kube-proxy keeps, so a pod's egress to one is
	// decided against its backend) or CoexistServicesGlobal (global ones
	// only, the rest decided against world).
	CoexistServices string
	StateDir        string
	StatusSocket    string
	MetricsAddress  string
	// PprofAddress serves net/http/pprof ("": off, the default).
	PprofAddress string
	// StatusNamespace holds the agent's status ConfigMap ("" disables it).
	StatusNamespace string
	// KVStoreConfig is the etcd client config of the own cluster's
	// clustermesh-apiserver, from which the agent reads its pods'
	// identities ("": they stay 0, unknown; docs/policy.md).
	KVStoreConfig string

	Remote remotecluster.Config
	// Policy holds --policy-default-local-cluster.
	Policy rules.Options
	Merge  servicemerge.Config
	Sync   dpsync.Config
	BPF    bpf.Config
	// Tunnel is the bpf datapath's vxlan device (created by default).
	Tunnel bpf.TunnelConfig
	// OwnerDaemonSet names the agent's DaemonSet in StatusNamespace: when
	// the agent stops while it is gone or being deleted (the release is
	// uninstalled), it cleans the node up (see cleanup.go). "" never does.
	OwnerDaemonSet string
}

// The agent's modes.
const (
	ModeCoexist = "coexist"
	ModeFull    = "full"
)

// The values of --coexist-services.
const (
	CoexistServicesAll    = "all"
	CoexistServicesGlobal = "global"
)

// DefaultStatusSocket is where the agent serves its status API.
const DefaultStatusSocket = "/var/run/clustermesh/agent.sock"

// DefaultConfig returns the defaults.
func DefaultConfig() Config {
	return Config{
		MaxConnectedClusters: wire.DefaultMaxConnectedClusters,
		Datapath:             "bpf",
		Mode:                 ModeCoexist,
		CoexistServices:      CoexistServicesAll,
		Tunnel:               bpf.DefaultTunnelConfig(),
		StateDir:             "/var/lib/clustermesh",
		StatusSocket:         DefaultStatusSocket,
		MetricsAddress:       ":9962",
		Remote:               remotecluster.DefaultConfig(),
		Merge:                servicemerge.DefaultConfig(),
		Sync:                 dpsync.DefaultConfig(),
		Policy:               rules.DefaultOptions(),
	}
}

// RegisterFlags registers every agent flag on fs.
func (c *Config) RegisterFlags(fs *pflag.FlagSet) {
	fs.StringVar(&c.NodeName, "node-name", c.NodeName, "name of this node (its Kubernetes Node)")
	fs.StringVar(&c.ClusterName, "cluster-name", c.ClusterName, "name of the agent's own cluster")
	fs.Uint32Var(&c.ClusterID, "cluster-id", c.ClusterID, "ID of the agent's own cluster (1..max-connected-clusters)")
	fs.IntVar(&c.MaxConnectedClusters, "max-connected-clusters", c.MaxConnectedClusters, "255 or 511; must match every remote cluster")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig of the own cluster (empty: in-cluster config)")
	fs.StringVar(&c.Datapath, "datapath", c.Datapath, "datapath implementation: bpf or memory")
	fs.StringVar(&c.Mode, "mode", c.Mode, "coexist: beside a primary CNI and kube-proxy, handle only traffic to remote pod CIDRs and pods' traffic to ClusterIP Services (--coexist-services) and hand the rest to the host stack; full: forward all pod traffic and load-balance every ClusterIP Service")
	fs.StringVar(&c.CoexistServices, "coexist-services", c.CoexistServices, "coexist mode: the ClusterIP Services the agent translates for its pods: all (every one kube-proxy does not keep: sessionAffinity ClientIP, internalTrafficPolicy Local, another service proxy; a pod's egress to a Service is decided against its backend) or global (global Services only; egress to the others is decided against world)")
	fs.StringVar(&c.OwnerDaemonSet, "owner-daemonset", c.OwnerDaemonSet, "the agent's DaemonSet in --status-namespace: stopping while it is deleted (uninstall) cleans the node up (empty: never)")
	fs.StringVar(&c.StateDir, "state-dir", c.StateDir, "directory for the agent's persistent state")
	fs.StringVar(&c.StatusSocket, "status-socket", c.StatusSocket, "unix socket of the status API")
	fs.StringVar(&c.MetricsAddress, "metrics-address", c.MetricsAddress, "listen address of the Prometheus metrics endpoint and of /healthz and /readyz (empty: disabled)")
	fs.StringVar(&c.KVStoreConfig, "kvstore-config", c.KVStoreConfig, "etcd client config (endpoints, trusted-ca-file, cert-file, key-file) of the own cluster's clustermesh-apiserver: the identities of this node's pods are read from it (empty: unknown, identity 0)")
	fs.StringVar(&c.PprofAddress, "pprof-address", c.PprofAddress, httpserve.PprofFlagUsage)
	fs.StringVar(&c.StatusNamespace, "status-namespace", c.StatusNamespace, "namespace of the own cluster where the agent publishes its status ConfigMap (empty: not published)")
	c.Remote.RegisterFlags(fs)
	c.Policy.RegisterFlags(fs)
	c.Merge.RegisterFlags(fs)
	c.Sync.RegisterFlags(fs)
	gfs := flag.NewFlagSet("bpf", flag.ContinueOnError)
	c.BPF.RegisterFlags(gfs)
	c.Tunnel.RegisterFlags(gfs)
	fs.AddGoFlagSet(gfs)
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	if c.NodeName == "" {
		return fmt.Errorf("%w: --node-name is required", ErrConfig)
	}
	if c.ClusterID == 0 {
		return fmt.Errorf("%w: --cluster-id must be set (1..%d) in a mesh", ErrConfig, c.MaxConnectedClusters)
	}
	if err := wire.ValidateCluster(c.ClusterName, c.ClusterID, c.MaxConnectedClusters); err != nil {
		return fmt.Errorf("%w: %w", ErrConfig, err)
	}
	if c.Datapath != "bpf" && c.Datapath != "memory" {
		return fmt.Errorf("%w: --datapath %q (want bpf or memory)", ErrConfig, c.Datapath)
	}
	if c.Mode != ModeCoexist && c.Mode != ModeFull {
		return fmt.Errorf("%w: --mode %q (want %s or %s)", ErrConfig, c.Mode, ModeCoexist, ModeFull)
	}
	if c.CoexistServices != CoexistServicesAll && c.CoexistServices != CoexistServicesGlobal {
		return fmt.Errorf("%w: --coexist-services %q (want %s or %s)", ErrConfig, c.CoexistServices, CoexistServicesAll, CoexistServicesGlobal)
	}
	if len(c.Sync.ClusterCIDRs) > 0 && c.Mode != ModeCoexist {
		return fmt.Errorf("%w: --cluster-cidrs applies to --mode=%s (in %s mode every source without a pod identity is world)", ErrConfig, ModeCoexist, c.Mode)
	}
	if c.OwnerDaemonSet != "" && c.StatusNamespace == "" {
		return fmt.Errorf("%w: --owner-daemonset needs --status-namespace", ErrConfig)
	}
	if c.Remote.Dir == "" {
		return fmt.Errorf("%w: --clustermesh-config is required", ErrConfig)
	}
	return nil
}

// mergeConfig is the service merger's configuration for the mode: beside
// kube-proxy it leaves to it the Services it keeps (and, with
// --coexist-services=global, every Service that is not global).
func (c *Config) mergeConfig() servicemerge.Config {
	m := c.Merge
	m.Proxy = c.Mode == ModeCoexist
	m.GlobalOnly = m.Proxy && c.CoexistServices == CoexistServicesGlobal
	return m
}

// Run runs the agent until ctx is done or a component fails.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	w, dp, closeWriter, err := openWriter(cfg, log)
	if err != nil {
		return err
	}
	defer closeWriter()

	clk := clock.RealClock{}
	cfg.Sync.ClusterID, cfg.Merge.ClusterID = cfg.ClusterID, cfg.ClusterID
	cfg.Merge = cfg.mergeConfig()
	rec := dpsync.New(cfg.Sync, w, log.With("component", "dpsync"), clk)
	var restored datapath.State
	if st, err := rec.Restore(); err != nil {
		log.Warn("cannot read back the datapath; starting empty", "error", err)
	} else {
		restored = st
		log.Info("restored datapath state", "tunnels", len(st.Tunnels), "ipcache", len(st.IPCache), "services", len(st.Services), "endpoints", len(st.Endpoints))
	}
	merger := servicemerge.New(cfg.Merge, rec)

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	kcfg, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("kubeconfig: %w", err)
	}
	kube, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(kcfg)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	pol, err := newPolicyPlane(cfg, dp, rec, restoredCIDRs(restored), kube, dyn, reg, log.With("component", "policy"))
	if err != nil {
		return fmt.Errorf("policy datapath: %w", err)
	}
	// The reconciler's worker flushes the merger and the node trust: no
	// worker of their own.
	rec.Pull(trustFlush{Upstream: merger, trust: pol.trust, log: log.With("component", "nodetrust")})
	rec.CountNodes(pol.trust)
	// One resolver for every etcd the agent dials: Service names of the
	// form <name>.<namespace>.svc resolve through the apiserver, since a
	// host-network agent may have no cluster DNS.
	dial := svcresolver.New(kube.CoreV1()).Dial
	var ownSynced atomic.Bool
	var mgr *remotecluster.Manager // set before any part runs
	var runs []runner.Part
	var ids *localidentity.Watcher
	var local *localcluster.Watcher
	if cfg.KVStoreConfig != "" {
		kc, err := kvstore.LoadConfig(cfg.KVStoreConfig)
		if err != nil {
			return fmt.Errorf("load --kvstore-config %q: %w", cfg.KVStoreConfig, err)
		}
		kc.Dial = dial
		ids = localidentity.New(localidentity.Config{
			ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters,
			OnChange:        func(ip netip.Addr) { local.Reidentify(ip) },
			OnSynced:        func() { local.OwnPodsSynced() },
			OnIdentity:      pol.identity,
			OnEndpointPorts: pol.watch.UpdateEndpointPorts,
		}, func(ctx context.Context) (*kvstore.Client, error) {
			return kvstore.New(ctx, kc, log.With("component", "kvstore"))
		}, log.With("component", "localidentity"))
		runs = append(runs, runner.Part{Name: "localidentity", Run: ids.Run})
	}
	world := &worldIngress{mode: cfg.Mode, ranges: rec.ClusterCIDRs(), log: log.With("component", "world-ingress")}
	if dp != nil {
		world.turnOn = dp.SetCoexistWorld
	}
	local = localcluster.New(localcluster.Config{
		NodeName: cfg.NodeName, ClusterID: cfg.ClusterID, Identity: identityFunc(ids), OwnPods: ownPods(ids),
		// Beside a primary CNI, it connects the cluster's own nodes.
		NodeTunnels: cfg.Mode == ModeFull,
		OnSynced: func() {
			ownSynced.Store(true)
			world.ownSynced(rec)
		},
		// The restore hold (in the remote manager) releases the own
		// cluster's restored entries once its pods' entries are in.
		OnIPCacheSynced: func() { mgr.OwnSynced() },
	}, kube, merger, rec, log.With("component", "localcluster"), reg)

	rcfg := cfg.Remote
	rcfg.ClusterName, rcfg.ClusterID, rcfg.MaxConnectedClusters, rcfg.StateDir = cfg.ClusterName, cfg.ClusterID, cfg.MaxConnectedClusters, cfg.StateDir
	rcfg.LocalPodCIDRs, rcfg.Dial = local.PodCIDRs, dial
	rcfg.Identities = pol.watch
	mgr = remotecluster.New(rcfg, rec, merger, log.With("component", "remotecluster"), clk)
	pol.policiesSynced = mgr.PoliciesSynced
	reg.MustRegister(mgr.Collector())

	status := statusapi.New(statusapi.Config{Socket: cfg.StatusSocket, ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID, NodeName: cfg.NodeName,
		BesideKubeProxy: cfg.Mode == ModeCoexist},
		mgr, merger, rec, log.With("component", "status"))
	status.SetPolicy(pol)
	world.podCIDRs = local.PodCIDRs
	status.SetWorldIngress(world.Status)
	if ids != nil {
		pol.podIPs, pol.identityOf = local.PodIPs, ids.Identity
	}

	reach := kubereach.New(kubereach.Config{}, kubereach.ProbeVersion(kube.Discovery()), log.With("component", "kube-apiserver"), clk)
	runs = append(runs, []runner.Part{{Name: "dpsync", Run: rec.Run},
		{Name: "localcluster", Run: local.Run}, {Name: "remotecluster", Run: mgr.Run}, {Name: "status", Run: status.Run},
		{Name: "kube-apiserver reachability", Run: reach.Run}}...)
	h := health{ownSynced: ownSynced.Load, remotes: mgr}
	runs = append(runs, pol.parts(func() bool { return len(h.notReady()) == 0 })...)
	if cfg.StatusNamespace != "" {
		pub := statusreport.New(statusreport.Config{Namespace: cfg.StatusNamespace, Cluster: cfg.ClusterName, Node: cfg.NodeName, Nodes: local.NodeCount,
			RefusedPolicies: pol.refusedReport, WorldIngress: world.Report},
			mgr, kube.CoreV1(), log.With("component", "statusreport"), clk)
		runs = append(runs, runner.Part{Name: "statusreport", Run: pub.Run})
	}
	for _, l := range []struct {
		name, flag, addr string
		h                http.Handler
	}{
		{"metrics", "--metrics-address", cfg.MetricsAddress, metricsHandler(reg, h)},
		{"pprof", "--pprof-address", cfg.PprofAddress, httpserve.Pprof()},
	} {
		if l.addr == "" {
			continue
		}
		srv, err := httpserve.Listen(l.addr, l.h, log.With("server", l.name))
		if err != nil {
			return fmt.Errorf("%s: %w", l.flag, err)
		}
		runs = append(runs, runner.Part{Name: l.name, Run: srv.Run})
	}
	log.Info("clustermesh-agent running", "cluster", cfg.ClusterName, "cluster_id", cfg.ClusterID, "node", cfg.NodeName, "datapath", cfg.Datapath, "mode", cfg.Mode)
	var owner *ownerWatch
	if cfg.Datapath == "bpf" && cfg.OwnerDaemonSet != "" {
		owner = newOwnerWatch(kube, cfg.StatusNamespace, cfg.OwnerDaemonSet, log)
		runs = append(runs, runner.Part{Name: "owner daemonset", Run: owner.Run})
	}
	err = runner.All(ctx, runs...)
	if owner != nil && ctx.Err() != nil {
		closeWriter()
		if uerr := cleanupIfUninstalled(owner, cfg, log); uerr != nil {
			return errors.Join(err, uerr)
		}
	}
	return err
}

// identityFunc returns the pod identity lookup of ids (nil: none).
func identityFunc(ids *localidentity.Watcher) func(netip.Addr) uint32 {
	if ids == nil {
		return nil
	}
	return ids.Identity
}

// ownPods is ids as the own cluster's pod entries (nil: none).
func ownPods(ids *localidentity.Watcher) localcluster.OwnPods {
	if ids == nil {
		return nil
	}
	return ids
}

// metricsHandler serves /metrics from reg and the health probes.
func metricsHandler(reg *prometheus.Registry, h health) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", h.healthz)
	mux.HandleFunc("/readyz", h.readyz)
	return mux
}

// openWriter returns the datapath writer and a function that releases it
// (keeping what is programmed).
func openWriter(cfg Config, log *slog.Logger) (datapath.Writer, *bpf.Datapath, func(), error) {
	if cfg.Datapath == "memory" {
		return memory.New(), nil, func() {}, nil
	}
	bcfg := cfg.BPF
	bcfg.Coexist = cfg.Mode == ModeCoexist
	blog := log.With("component", "bpf")
	dp, err := bpf.Open(bcfg, blog)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("open bpf datapath: %w", err)
	}
	tunnelIdx := 0
	if cfg.Tunnel.Device != "" {
		idx, err := bpf.EnsureTunnel(cfg.Tunnel, blog)
		if err == nil {
			err = dp.Attach(bpf.HookTunnel, idx)
		}
		if err == nil {
			err = dp.Attach(bpf.HookTunnelEgress, idx)
		}
		if err != nil {
			dp.Close()
			return nil, nil, nil, fmt.Errorf("tunnel device %q: %w", cfg.Tunnel.Device, err)
		}
		tunnelIdx = idx
	}
	w, err := bpf.NewWriter(dp, blog)
	if err != nil {
		dp.Close()
		return nil, nil, nil, fmt.Errorf("bpf writer: %w", err)
	}
	aw := &attachingWriter{Writer: w, dp: dp}
	if bcfg.Coexist && tunnelIdx != 0 {
		if aw.routes, err = newTunnelRoutes(w, tunnelIdx, cfg.ClusterID); err != nil {
			dp.Close()
			return nil, nil, nil, err
		}
	}
	blog.Info("datapath open", "attach", dp.AttachMode(), "mode", cfg.Mode, "tunnel", cfg.Tunnel.Device)
	var once sync.Once
	return aw, dp, func() { once.Do(func() { dp.Close() }) }, nil
}

// attachingWriter attaches the endpoint program to the host veth of every
// local endpoint it programs (Attach is idempotent; a failure fails the
// batch, which is retried) and, in coexistence mode, keeps the routes of
// remote pod CIDRs into the tunnel device.
type attachingWriter struct {
	*bpf.Writer
	dp     *bpf.Datapath
	routes *tunnelRoutes // nil: no routes (full mode, no tunnel)
}

func (w *attachingWriter) Apply(ctx context.Context, b datapath.Batch) error {
	for _, e := range b.UpsertEndpoints {
		if err := w.dp.Attach(bpf.HookEndpoint, e.IfIndex); err != nil {
			return err
		}
	}
	if err := w.Writer.Apply(ctx, b); err != nil {
		return err
	}
	if w.routes != nil && len(b.UpsertTunnels)+len(b.DeleteTunnels) > 0 {
		return w.routes.apply(b)
	}
	return nil
}

// tunnelRoutes are the routes into the tunnel device of the pod CIDRs of
// remote clusters (coexistence mode: the primary CNI routes the own
// cluster's), kept equal to the tunnel entries programmed.
type tunnelRoutes struct {
	ifindex    int
	ownCluster uint32
	mu         sync.Mutex
	cidrs      map[netip.Prefix]bool // guarded by mu
}

// newTunnelRoutes starts from the tunnel entries the datapath holds (they
// survive a restart, and the agent's batches carry only changes) and syncs
// the routes to them.
func newTunnelRoutes(w *bpf.Writer, ifindex int, ownCluster uint32) (*tunnelRoutes, error) {
	st, err := w.Dump()
	if err != nil {
		return nil, fmt.Errorf("read tunnel entries: %w", err)
	}
	r := &tunnelRoutes{ifindex: ifindex, ownCluster: ownCluster, cidrs: map[netip.Prefix]bool{}}
	for _, t := range st.Tunnels {
		if t.ClusterID != ownCluster {
			r.cidrs[t.CIDR] = true
		}
	}
	return r, r.sync()
}

func (r *tunnelRoutes) apply(b datapath.Batch) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range b.DeleteTunnels {
		delete(r.cidrs, c)
	}
	for _, t := range b.UpsertTunnels {
		if t.ClusterID != r.ownCluster {
			r.cidrs[t.CIDR] = true
		} else {
			delete(r.cidrs, t.CIDR)
		}
	}
	return r.sync()
}

// sync is called with mu held (or before r is shared).
func (r *tunnelRoutes) sync() error {
	if err := bpf.SyncTunnelRoutes(r.ifindex, slices.Collect(maps.Keys(r.cidrs))); err != nil {
		return fmt.Errorf("routes into the tunnel device: %w", err)
	}
	return nil
}
