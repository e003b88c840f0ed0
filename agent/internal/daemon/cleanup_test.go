package daemon

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/bpf"
	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/netnstest"
	"github.com/clustermesh/clustermesh/internal/testenv"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
)

// TestCleanupOnUninstall runs the whole agent on the bpf datapath in a
// network namespace against a real kube-apiserver: it creates its tunnel
// device and pins; stopped while its DaemonSet exists (a restart or an
// upgrade) it leaves them; stopped after the DaemonSet was deleted (helm
// uninstall, clustermesh disable) it removes them.
func TestCleanupOnUninstall(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.RequireCommand(t, "ip")
	cp := kubetest.StartForTest(t, kubetest.Config{Name: "c1"})
	ctx := context.Background()
	kcfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	const namespace, dsName = "clustermesh-system", "clustermesh-agent"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"app": "agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: dsName, Namespace: namespace},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: "clustermesh-agent"}}},
			},
		},
	}
	if _, err := kube.AppsV1().DaemonSets(namespace).Create(ctx, ds, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	ns := netnstest.NewNS(t, netnstest.RandomID()+"-agent")
	if err := ns.Batch("link set lo up", "link add ul0 mtu 1500 type veth peer name ul1", "link set ul0 up", "addr add 192.0.2.10/24 dev ul0"); err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	cfg := DefaultConfig()
	cfg.NodeName, cfg.ClusterName, cfg.ClusterID = "n1", "c1", 1
	cfg.Kubeconfig, cfg.StateDir, cfg.StatusSocket = cp.Kubeconfig(), state, filepath.Join(state, "agent.sock")
	cfg.MetricsAddress, cfg.Remote.Dir = "", t.TempDir()
	cfg.StatusNamespace, cfg.OwnerDaemonSet = namespace, dsName
	cfg.BPF = bpf.Config{PinDir: "/run/clustermesh-test/" + netnstest.RandomID() + "-agent", CTEntries: 1024}
	t.Cleanup(func() {
		_ = ns.Do(func() error { return Cleanup(cfg.BPF.PinDir, cfg.Tunnel, etcdserver.TestLogger()) })
	})

	tunnelExists := func() bool {
		_, err := ns.IP("link", "show", cfg.Tunnel.Device)
		return err == nil
	}
	pinned := func() bool {
		_, err := os.Stat(filepath.Join(cfg.BPF.PinDir, "maps", "cm_config"))
		return err == nil
	}
	// run starts the agent in ns, waits until its datapath is up, runs
	// between, then stops it and returns Run's error.
	run := func(between func()) error {
		rctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		var runErr error
		wg.Go(func() { runErr = ns.Do(func() error { return Run(rctx, cfg, etcdserver.TestLogger()) }) })
		deadline := time.Now().Add(60 * time.Second)
		for !(tunnelExists() && pinned()) && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if !tunnelExists() || !pinned() {
			cancel()
			wg.Wait()
			return fmt.Errorf("datapath not up: tunnel %v, pins %v, Run: %v", tunnelExists(), pinned(), runErr)
		}
		between()
		cancel()
		wg.Wait()
		return runErr
	}

	for _, tc := range []struct {
		name      string
		deleteDS  bool
		wantAfter bool // tunnel device and pins still there after the stop
	}{
		{name: "restart keeps the datapath", deleteDS: false, wantAfter: true},
		{name: "uninstall removes the datapath", deleteDS: true, wantAfter: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := run(func() {
				if tc.deleteDS {
					if err := kube.AppsV1().DaemonSets(namespace).Delete(ctx, dsName, metav1.DeleteOptions{}); err != nil {
						t.Error(err)
					}
				}
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Fatalf("Run: %v", err)
			}
			if got := tunnelExists(); got != tc.wantAfter {
				t.Errorf("tunnel device %s exists after stop: %v, want %v", cfg.Tunnel.Device, got, tc.wantAfter)
			}
			if got := pinned(); got != tc.wantAfter {
				t.Errorf("pins under %s exist after stop: %v, want %v", cfg.BPF.PinDir, got, tc.wantAfter)
			}
			if _, err := os.Stat(cfg.BPF.PinDir); tc.wantAfter == errors.Is(err, os.ErrNotExist) {
				t.Errorf("pin dir after stop: %v, want present=%v", err, tc.wantAfter)
			}
		})
	}
}
