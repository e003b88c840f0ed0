package daemon

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/clustermesh/clustermesh/internal/kubetest"
	"github.com/clustermesh/clustermesh/internal/meshstatus"
	"github.com/clustermesh/clustermesh/kvstore"
	"github.com/clustermesh/clustermesh/kvstore/etcdserver"
	"github.com/clustermesh/clustermesh/kvstore/wire"
)

// TestStatusReportAndProbes runs the whole agent against a real
// kube-apiserver (its own cluster) and an embedded etcd playing remote c2:
// the agent becomes ready, publishes a status ConfigMap showing c2 ready
// with its entry counts, and answers /healthz and /readyz. c2's config
// names its etcd by a Service name the host cannot resolve
// (c2-etcd.default.svc, ClusterIP 127.100.0.20 from a loopback service
// range, where the etcd listens): the agent dials it through the
// kube-apiserver (svcresolver).
func TestStatusReportAndProbes(t *testing.T) {
	cp := kubetest.StartForTest(t, kubetest.Config{Name: "c1", ServiceCIDR: "127.100.0.0/24"})
	log := etcdserver.TestLogger()

	const etcdIP, etcdName = "127.100.0.20", "c2-etcd.default.svc"
	srv := etcdserver.StartTest(t, etcdserver.Config{ClusterName: "c2", ClientURL: "https://" + etcdIP + ":0", Hosts: []string{etcdName}})
	ctx := context.Background()
	admin, err := kvstore.New(ctx, srv.AdminConfig(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	put := func(key string, value []byte, err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := admin.Etcd().Put(ctx, key, string(value)); err != nil {
			t.Fatal(err)
		}
	}
	cc, err := json.Marshal(wire.ClusterConfig{ID: 2, Capabilities: wire.Capabilities{SyncedCanaries: true, MaxConnectedClusters: 255}})
	put(wire.ClusterConfigKey("c2"), cc, err)
	for i := range 3 {
		v, err := wire.MarshalNode(wire.Node{Name: fmt.Sprintf("n%d", i), Cluster: "c2", ClusterID: 2,
			IPAddresses:   []wire.NodeAddress{{Type: wire.NodeInternalIP, IP: netip.MustParseAddr(fmt.Sprintf("192.168.2.%d", i+1))}},
			IPv4AllocCIDR: wire.MustParseCIDR(fmt.Sprintf("10.2.%d.0/24", i)),
		})
		put(wire.NodeKey("c2", fmt.Sprintf("n%d", i)), v, err)
	}
	for i := range 5 {
		ip := netip.MustParseAddr(fmt.Sprintf("10.2.0.%d", i+10))
		v, err := wire.MarshalIPIdentityPair(wire.IPIdentityPair{IP: ip, HostIP: netip.MustParseAddr("192.168.2.1"), ID: 2<<16 | 256})
		put(wire.IPKey(ip), v, err)
	}
	for _, k := range wire.Kinds() {
		put(wire.SyncedKey("c2", k), wire.FormatTimestamp(time.Now()), nil)
	}
	rcfg, err := srv.EnsureRemoteUser(ctx, "c1")
	if err != nil {
		t.Fatal(err)
	}
	rcfg.Endpoints = []string{strings.Replace(rcfg.Endpoints[0], etcdIP, etcdName, 1)}
	dir := t.TempDir()
	data, err := json.Marshal(rcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "c2"), data, 0o600); err != nil {
		t.Fatal(err)
	}
	// The certificates `clustermesh connect` stores beside the config.
	for _, n := range []string{"c2.etcd-client-ca.crt", "c2.etcd-client.crt", "c2.etcd-client.key"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("-"), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	kcfg, err := clientcmd.BuildConfigFromFlags("", cp.Kubeconfig())
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(kcfg)
	if err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "c2-etcd", Namespace: "default"},
		Spec:       corev1.ServiceSpec{ClusterIP: etcdIP, Ports: []corev1.ServicePort{{Port: 2379}}},
	}
	if _, err := kube.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	port, err := etcdserver.FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	state := t.TempDir()
	cfg := DefaultConfig()
	cfg.NodeName, cfg.ClusterName, cfg.ClusterID = "node-a", "c1", 1
	cfg.Kubeconfig, cfg.Datapath, cfg.StateDir = cp.Kubeconfig(), "memory", state
	cfg.StatusSocket = filepath.Join(state, "agent.sock")
	cfg.MetricsAddress = fmt.Sprintf("127.0.0.1:%d", port)
	cfg.StatusNamespace = "default"
	cfg.Remote.Dir = dir

	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var runErr error
	wg.Go(func() { runErr = Run(rctx, cfg, log) })
	defer func() {
		cancel()
		wg.Wait()
		if runErr != nil {
			t.Errorf("Run: %v", runErr)
		}
	}()

	get := func(path string) (int, string) {
		resp, err := http.Get("http://" + cfg.MetricsAddress + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	eventually := func(what string, cond func() (bool, string)) {
		t.Helper()
		deadline := time.Now().Add(60 * time.Second)
		for {
			ok, last := cond()
			if ok {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: timed out; last %s", what, last)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	eventually("healthz", func() (bool, string) { code, body := get("/healthz"); return code == http.StatusOK, body })
	eventually("readyz", func() (bool, string) { code, body := get("/readyz"); return code == http.StatusOK, body })

	eventually("status ConfigMap", func() (bool, string) {
		reps, err := meshstatus.List(ctx, kube.CoreV1(), "default")
		if err != nil {
			return false, err.Error()
		}
		if len(reps.Agents) != 1 {
			return false, fmt.Sprintf("%+v", reps)
		}
		a := reps.Agents[0]
		if a.Node != "node-a" || a.Cluster != "c1" || len(a.Remotes) != 1 {
			return false, fmt.Sprintf("%+v", a)
		}
		r := a.Remotes[0]
		ok := r.Name == "c2" && r.ClusterID == 2 && r.Connected && r.Ready && r.Invalid == 0 &&
			r.Entries[meshstatus.KindNodes] == 3 && r.Entries[meshstatus.KindIPCache] == 5 &&
			r.Entries[meshstatus.KindServices] == 0 && r.Synced[meshstatus.KindIdentities] && len(r.Synced) == 4
		return ok, fmt.Sprintf("%+v", r)
	})
}
