package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/health"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/remoteusers"
	"github.com/clustermesh/clustermesh/clustermesh-apiserver/internal/statusreport"
	"github.com/clustermesh/clustermesh/internal/httpserve"
	"github.com/clustermesh/clustermesh/internal/kubereach"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/internal/runner"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/kvstoremesh"
	"github.com/clustermesh/clustermesh/kvstore/remoteconn"
)

// Main runs the clustermesh-apiserver described by cfg until ctx is done.
func Main(ctx context.Context, cfg Config, log *slog.Logger) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	kvcfg, etcd, stop, err := kvstoreConfig(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stop()
	kv, err := kvstore.New(ctx, kvcfg, log.With("component", "kvstore"))
	if err != nil {
		return fmt.Errorf("connect kvstore: %w", err)
	}
	defer kv.Close()
	kube, err := kubeClient(cfg.Kubeconfig)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s, err := New(ctx, cfg, Deps{
		KV: kv, Kube: kube, NewStore: SyncStoreFactory(kv, log, reg), Clock: clock.RealClock{}, Registry: reg, Log: log,
	})
	if err != nil {
		return err
	}
	reach := kubereach.New(kubereach.Config{}, kubereach.ProbeVersion(kube.Discovery()), log.With("component", "kube-apiserver"), clock.RealClock{})
	runners := []runner.Part{{Name: "server", Run: s.Run}, {Name: "kube-apiserver reachability", Run: reach.Run}}
	users, err := remoteUsers(ctx, cfg, etcd, kv, reg, log.With("component", "remote-users"))
	if err != nil {
		return err
	}
	if users != nil {
		runners = append(runners, runner.Part{Name: "remote-users", Run: users.Run})
	}
	ensureLocalReader(ctx, etcd, kv, log)
	mesh, err := startKVStoreMesh(cfg, kv, log.With("component", "kvstoremesh"))
	if err != nil {
		return err
	}
	if mesh != nil {
		runners = append(runners, runner.Part{Name: "kvstoremesh", Run: mesh.Run})
	}
	if cfg.StatusNamespace != "" {
		report := func(ctx context.Context) meshstatus.APIServerReport {
			r := s.Report(ctx)
			if mesh != nil {
				r.KVStoreMesh = cachedRemotes(mesh.Status())
			}
			if users != nil {
				if err := users.LastError(); err != nil {
					r.LastError = err.Error()
				}
			}
			return r
		}
		pub, err := statusreport.New(statusreport.Config{Namespace: cfg.StatusNamespace, Interval: cfg.StatusInterval},
			kube.CoreV1(), report, clock.RealClock{}, log.With("component", "status"))
		if err != nil {
			return fmt.Errorf("--status-namespace: %w", err)
		}
		runners = append(runners, runner.Part{Name: "status", Run: pub.Run})
	}
	hs, err := httpserve.Listen(cfg.HealthAddress, health.Handler(s.Live, s.Ready), log.With("server", "health"))
	if err != nil {
		return fmt.Errorf("--health-address: %w", err)
	}
	runners = append(runners, runner.Part{Name: "health", Run: hs.Run})
	if cfg.MetricsAddress != "" {
		ms, err := httpserve.Listen(cfg.MetricsAddress, health.MetricsHandler(reg), log.With("server", "metrics"))
		if err != nil {
			return fmt.Errorf("--metrics-address: %w", err)
		}
		runners = append(runners, runner.Part{Name: "metrics", Run: ms.Run})
	}
	if cfg.PprofAddress != "" {
		ps, err := httpserve.Listen(cfg.PprofAddress, httpserve.Pprof(), log.With("server", "pprof"))
		if err != nil {
			return fmt.Errorf("--pprof-address: %w", err)
		}
		runners = append(runners, runner.Part{Name: "pprof", Run: ps.Run})
	}
	return runner.All(ctx, runners...)
}

func kubeClient(kubeconfig string) (kubernetes.Interface, error) {
	var rc *rest.Config
	var err error
	if kubeconfig == "" {
		rc, err = rest.InClusterConfig()
	} else {
		rc, err = clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	if err != nil {
		return nil, fmt.Errorf("--kubeconfig: %w", err)
	}
	rc.QPS, rc.Burst = 100, 200
	return kubernetes.NewForConfig(rc)
}

// remoteUsers returns the reconciler of the remote users (nil when there
// are none to manage), after a first pass. In the embedded etcd it also
// issues their certificates and writes their client configs into
// --remote-config-dir; in an external etcd (etcd nil) it manages users and
// roles through the root client kv, and `clustermesh connect` issues the
// certificates.
func remoteUsers(ctx context.Context, cfg Config, etcd *etcdserver.Server, kv *kvstore.Client, reg prometheus.Registerer, log *slog.Logger) (*remoteusers.Reconciler, error) {
	if cfg.RemoteUsersFile == "" && len(cfg.RemoteClusters) == 0 {
		return nil, nil
	}
	rcfg := remoteusers.Config{
		Cluster: cfg.ClusterName, File: cfg.RemoteUsersFile, Static: cfg.RemoteClusters, Resync: cfg.RemoteUsersResync,
	}
	var users remoteusers.Users = remoteusers.External{Client: kv.Etcd(), Cluster: cfg.ClusterName}
	if etcd != nil {
		users = etcd
		advertise := cfg.EtcdAdvertise
		if advertise == "" {
			advertise = cfg.EtcdListenAddress
		}
		rcfg.OnEnsure = func(c string, rc kvstore.Config) error {
			return kvstore.WriteConfigFiles(filepath.Join(cfg.RemoteConfigDir, c), cfg.ClusterName, []string{"https://" + advertise}, rc)
		}
		rcfg.OnRemove = func(c string) error { return os.RemoveAll(filepath.Join(cfg.RemoteConfigDir, c)) }
	}
	r, err := remoteusers.New(rcfg, users, clock.RealClock{}, log, reg)
	if err != nil {
		return nil, err
	}
	// A bad users file or an etcd that refuses users must not keep the
	// apiserver from publishing: the error is logged, counted and reported
	// in the status; Run retries.
	if err := r.Reconcile(ctx); err != nil {
		log.Error("cannot reconcile the remote users", "error", err)
	}
	return r, nil
}

// ensureLocalReader makes sure that the user the cluster's own agents
// read its etcd as (their pods' identities; in kvstoremesh mode also the
// cache) exists. A failure is logged, not fatal: the apiserver publishes
// anyway, and agents that are denied access say so.
func ensureLocalReader(ctx context.Context, etcd *etcdserver.Server, kv *kvstore.Client, log *slog.Logger) {
	var err error
	if etcd != nil {
		_, err = etcd.EnsureLocalReaderUser(ctx)
	} else {
		err = etcdserver.EnsureLocalReaderUserOn(ctx, kv.Etcd())
	}
	switch {
	case errors.Is(err, etcdserver.ErrAuthDisabled):
		log.Info("etcd authentication is off: the cluster's agents read it without a user", "user", etcdserver.LocalReaderUser)
	case err != nil:
		log.Error("cannot create the etcd user the cluster's agents read as", "user", etcdserver.LocalReaderUser, "error", err)
	}
}

// startKVStoreMesh returns the kvstoremesh (nil when off).
func startKVStoreMesh(cfg Config, kv *kvstore.Client, log *slog.Logger) (*kvstoremesh.Mesh, error) {
	if cfg.KVStoreMesh.Dir == "" {
		return nil, nil
	}
	mcfg := cfg.KVStoreMesh
	mcfg.Own = remoteconn.Own{Name: cfg.ClusterName, ID: cfg.ClusterID, MaxConnectedClusters: cfg.MaxConnectedClusters}
	return kvstoremesh.New(mcfg, kv, log, clock.RealClock{}), nil
}

// kvstoreConfig returns the client config of the external etcd (and a nil
// server), or starts the embedded one and returns its admin config, the
// server and how to stop it.
func kvstoreConfig(ctx context.Context, cfg Config, log *slog.Logger) (kvstore.Config, *etcdserver.Server, func(), error) {
	if cfg.KVStoreConfig != "" {
		c, err := kvstore.LoadConfig(cfg.KVStoreConfig)
		if err != nil {
			return kvstore.Config{}, nil, nil, fmt.Errorf("--kvstore-config: %w", err)
		}
		return c, nil, func() {}, nil
	}
	advertise := cfg.EtcdAdvertise
	if advertise == "" {
		advertise = cfg.EtcdListenAddress
	}
	host, _, err := net.SplitHostPort(advertise)
	if err != nil {
		return kvstore.Config{}, nil, nil, fmt.Errorf("--etcd-advertise-address: %w", err)
	}
	ecfg := etcdserver.Config{
		ClusterName: cfg.ClusterName, DataDir: cfg.EtcdDataDir, CertDir: cfg.EtcdTLSDir,
		ClientURL: "https://" + cfg.EtcdListenAddress, Hosts: []string{host, "localhost", "127.0.0.1"},
	}
	if cfg.EtcdServerTLSDir != "" {
		ecfg.ServerCertFile = filepath.Join(cfg.EtcdServerTLSDir, "tls.crt")
		ecfg.ServerKeyFile = filepath.Join(cfg.EtcdServerTLSDir, "tls.key")
	}
	srv, err := etcdserver.Start(ctx, ecfg, log.With("component", "etcd"))
	if err != nil {
		return kvstore.Config{}, nil, nil, fmt.Errorf("embedded etcd: %w", err)
	}
	admin := srv.AdminConfig()
	// The admin connects locally whatever the listen address is.
	if _, port, err := net.SplitHostPort(cfg.EtcdListenAddress); err == nil {
		admin.Endpoints = []string{"https://" + net.JoinHostPort("127.0.0.1", port)}
	}
	return admin, srv, srv.Stop, nil
}
