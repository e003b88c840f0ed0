package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/clustermesh/clustermesh/bpf"
)

// Cleanup detaches the agent's programs, removes its pins and, when the
// agent created it, the tunnel device: what `clustermesh-agent cleanup`
// runs and what the agent itself runs when it stops because its release is
// uninstalled. Run it in the node's network namespace.
func Cleanup(pinDir string, tunnel bpf.TunnelConfig, log *slog.Logger) error {
	if err := bpf.Cleanup(pinDir); err != nil {
		return err
	}
	removed, err := bpf.CleanupTunnel(tunnel.Device)
	if err != nil {
		return err
	}
	log.Info("removed the datapath", "pin_dir", pinDir, "tunnel_device_removed", removed)
	return nil
}

// ownerWatch follows the agent's DaemonSet so that a stopping agent knows
// whether its release is being uninstalled, even when the uninstall has
// already removed its RBAC or service account by then: `helm uninstall` and
// `clustermesh disable` delete the DaemonSet and then its pods (the
// garbage collector acts on the same delete event the watch receives, and
// the kubelet stops the pod later still), while a rolling update, a node
// drain or an evicted pod leave it in place, and then the datapath must
// stay programmed so that traffic keeps flowing until the next agent adopts
// it. This is decided by the stopping agent on each node rather than by a
// Helm pre-delete hook (a Job runs on one node, not on each) or a preStop
// hook (which runs on every restart too).
type ownerWatch struct {
	kube      kubernetes.Interface
	namespace string
	name      string
	log       *slog.Logger

	mu       sync.Mutex
	seen     bool // guarded by mu: the DaemonSet was seen, alive
	deleting bool // guarded by mu: it was deleted or has a deletion timestamp
}

func newOwnerWatch(kube kubernetes.Interface, namespace, name string, log *slog.Logger) *ownerWatch {
	return &ownerWatch{kube: kube, namespace: namespace, name: name, log: log}
}

// Run follows the DaemonSet until ctx is done.
func (o *ownerWatch) Run(ctx context.Context) error {
	lw := cache.NewListWatchFromClient(o.kube.AppsV1().RESTClient(), "daemonsets", o.namespace,
		fields.OneTermEqualSelector("metadata.name", o.name))
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: lw,
		ObjectType:    &appsv1.DaemonSet{},
		Handler: cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { o.observe(obj, false) },
			UpdateFunc: func(_, obj any) { o.observe(obj, false) },
			DeleteFunc: func(obj any) { o.observe(obj, true) },
		},
	})
	ctrl.RunWithContext(ctx)
	return nil
}

func (o *ownerWatch) observe(obj any, deleted bool) {
	ds, ok := obj.(*appsv1.DaemonSet)
	o.mu.Lock()
	defer o.mu.Unlock()
	if deleted || ok && ds.DeletionTimestamp != nil {
		o.deleting = true
	} else if ok {
		o.seen = true
	}
}

// uninstalled reports whether the DaemonSet is gone or being deleted: from
// the watch, else from a last GET (not found, or the release's credentials
// gone: unauthorized or forbidden). When nothing can be told, it reports
// false: the datapath stays (the safe side for traffic; `clustermesh-agent
// cleanup` removes it by hand).
func (o *ownerWatch) uninstalled(ctx context.Context) bool {
	o.mu.Lock()
	deleting := o.deleting
	o.mu.Unlock()
	if deleting {
		return true
	}
	ds, err := o.kube.AppsV1().DaemonSets(o.namespace).Get(ctx, o.name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err), apierrors.IsUnauthorized(err), apierrors.IsForbidden(err):
		return true
	case err != nil:
		o.log.Warn("cannot tell whether the release is uninstalled; keeping the datapath", "daemonset", o.name, "error", err)
		return false
	}
	return ds.DeletionTimestamp != nil
}

// cleanupIfUninstalled runs Cleanup when the agent stops because its
// release is uninstalled (see ownerWatch).
func cleanupIfUninstalled(o *ownerWatch, cfg Config, log *slog.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !o.uninstalled(ctx) {
		return nil
	}
	log.Info("the agent's DaemonSet is deleted: removing the datapath from this node", "daemonset", cfg.OwnerDaemonSet)
	if err := Cleanup(cfg.BPF.PinDir, cfg.Tunnel, log); err != nil {
		return fmt.Errorf("clean up after uninstall: %w", err)
	}
	return nil
}
