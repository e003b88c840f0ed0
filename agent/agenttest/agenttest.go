package agenttest

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/clustermesh/clustermesh/agent/internal/dpsync"
	"github.com/clustermesh/clustermesh/agent/internal/remotecluster"
	"github.com/clustermesh/clustermesh/agent/internal/servicemerge"
	"github.com/clustermesh/clustermesh/internal/datapath"
	"github.com/clustermesh/clustermesh/internal/datapath/memory"
)

// Config describes the agent under test.
type Config struct {
	// Dir is the remote-cluster config directory.
	Dir         string
	ClusterName string
	ClusterID   uint32
	// CacheConfig, when set, reads every remote of Dir through this
	// kvstoremesh cache (the agent's --clustermesh-cache-config).
	CacheConfig string
	// Writer, if set, is the datapath the control plane programs (the
	// eBPF writer in bench/); nil uses a new in-memory one (Datapath).
	Writer datapath.Writer
}

// ControlPlane is a running control plane on an in-memory datapath.
type ControlPlane struct {
	// Datapath is where the control plane applies its state; nil when
	// Config.Writer was given.
	Datapath *memory.Datapath
	mgr      *remotecluster.Manager
	rec      *dpsync.Reconciler
	cancel   context.CancelFunc
	wg       sync.WaitGroup
}

// Start starts a control plane; Stop ends it.
func Start(cfg Config, log *slog.Logger) *ControlPlane {
	c := &ControlPlane{}
	w := cfg.Writer
	if w == nil {
		c.Datapath = memory.New()
		w = c.Datapath
	}
	rec := dpsync.New(dpsync.Config{ClusterID: cfg.ClusterID}, w, log, clock.RealClock{})
	c.rec = rec
	merger := servicemerge.New(servicemerge.Config{ClusterID: cfg.ClusterID}, rec)
	rec.Pull(merger)
	c.mgr = remotecluster.New(remotecluster.Config{Dir: cfg.Dir, CacheConfig: cfg.CacheConfig, ClusterName: cfg.ClusterName, ClusterID: cfg.ClusterID,
		MaxConnectedClusters: 255, BackoffMin: 50 * time.Millisecond, BackoffMax: time.Second}, rec, merger, log, clock.RealClock{})
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	c.wg.Go(func() { _ = rec.Run(ctx) })
	c.wg.Go(func() { _ = c.mgr.Run(ctx) })
	return c
}

// Stop stops the control plane and waits for its goroutines.
func (c *ControlPlane) Stop() { c.cancel(); c.wg.Wait() }

// Ready reports whether every configured remote cluster is ready (and at
// least one is configured).
func (c *ControlPlane) Ready() bool {
	s := c.mgr.Status()
	for _, r := range s {
		if !r.Ready {
			return false
		}
	}
	return len(s) > 0
}

// Trims returns how often the reconciler returned the freed memory of a
// sync to the operating system (dpsync.Stats.Trims).
func (c *ControlPlane) Trims() uint64 { return c.rec.Stats().Trims }

// Batches returns how many batches the reconciler applied and how many of
// those steps a source took itself (dpsync.Stats.Inline).
func (c *ControlPlane) Batches() (all, inline uint64) {
	st := c.rec.Stats()
	return st.Batches, st.Inline
}
